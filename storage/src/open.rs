//! Opening a partition log, and what recovery decides (docs/design.md, "Recovery").
//!
//! After a clean shutdown the checkpoint says the active segment is clean: nothing is scanned. After an
//! unclean stop the active segment is CRC-scanned; a bad batch at or past the durable watermark is a torn
//! write (never acknowledged here) and is cut; a bad batch below it, a bad batch in a sealed segment, a gap
//! between segments or a file shorter than its watermark is **damage**: data that was fsynced, and so may
//! have been acknowledged and committed, is unreadable or wrong. Damage is never cut silently: the log is cut
//! in memory at the first damaged batch and reported ([`Recovery::damage`]) with the highest Raft index
//! anything on disk shows the log once reached; the replica records that in its repair marker first (it
//! then neither votes nor campaigns until it holds that much again, from its peers), and only then are the
//! files cut ([`PartitionLog::finish_cut`]).
//!
//! Whatever recovery kept is made durable (segment, indexes, watermark, directory) before the log counts as
//! durable: after a process crash the page cache still serves writes the disk may never get.

use std::path::Path;
use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::clock::WallClock;
use super::disk::{create_dir_durable, Disk};
use super::durable::{DurableFile, Found, Watermark};
use super::error::StorageError;
use super::log::{LogConfig, PartitionLog, PendingCut};
use super::segment::{self, Damage, Expect, Opened, Segment, Tail, TornTail};

/// What opening a log found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub torn_tail: Option<TornTail>,
    pub scanned_segments: usize,
    /// Damage to fsynced data: the log is cut before it once [`PartitionLog::finish_cut`] runs.
    pub damage: Option<LogDamage>,
}

/// Damage found at open.
#[derive(Debug, Clone)]
pub struct LogDamage {
    /// Where, and why.
    pub at: Damage,
    /// The highest Raft index anything on disk shows this log once held (later segments, the watermark):
    /// the replica must hold that much again before it votes.
    pub evidence_raft_index: u64,
}

/// The part of the durable watermark that applies to the active segment with base `base`.
fn durable_len_for(found: Found, base: u64) -> (Option<u32>, bool) {
    match found {
        Found::Valid(w) if w.base_offset == base => (Some(w.len), w.fsync_failed),
        // Written before the roll that made this segment active: nothing of it was known durable.
        Found::Valid(w) if w.base_offset < base => (Some(0), false),
        _ => (None, false),
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`. `first_raft_index` is where Raft's log starts when the log holds
    /// no batches (after a snapshot marker), `start_offset` the offset it starts at then, `term_max` the
    /// replica's persisted Raft term (no batch may carry a later one).
    pub fn open(
        disk: Arc<dyn Disk>,
        clock: Arc<dyn WallClock>,
        dir: &Path,
        config: LogConfig,
        first_raft_index: u64,
        start_offset: u64,
        term_max: u64,
    ) -> Result<(Self, Recovery), StorageError> {
        create_dir_durable(disk.as_ref(), dir).map_err(|e| StorageError::io(dir, e))?;
        let mut bases: Vec<u64> = disk
            .list(dir)
            .map_err(|e| StorageError::io(dir, e))?
            .iter()
            .filter_map(|n| n.strip_suffix(".log").and_then(|s| s.parse().ok()))
            .collect();
        bases.sort_unstable();
        let checkpoint = Checkpoint::read(disk.as_ref(), dir);
        let found = DurableFile::read(disk.as_ref(), dir)?;
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        let mut damage: Option<(usize, Damage)> = None;
        for (i, &base) in bases.iter().enumerate() {
            let active = i + 1 == bases.len();
            let (trusted, tail) = trust_of(disk.as_ref(), dir, checkpoint, found, base, active)?;
            let expect = Expect {
                raft_index: segments
                    .last()
                    .map_or(first_raft_index, |p: &Segment| p.next_raft_index),
                term_max,
            };
            let (seg, opened) = Segment::open(
                disk.as_ref(),
                dir,
                base,
                expect,
                config.limits,
                trusted,
                tail,
            )?;
            recovery.scanned_segments += usize::from(seg.scanned);
            let gap = gap_before(segments.last(), &seg, first_raft_index);
            segments.push(seg);
            match (gap, opened) {
                (Some(d), _) => {
                    damage = Some((i, d));
                    break;
                }
                (None, Opened::Damaged(d)) => {
                    damage = Some((i, d));
                    break;
                }
                (None, Opened::Cut(t)) => recovery.torn_tail = Some(t),
                (None, Opened::Clean) => {}
            }
        }
        let mut pending_cut = None;
        if let Some((i, d)) = damage {
            let (mut cut, evidence) =
                plan_cut(disk.as_ref(), dir, &bases, &mut segments, i, &d, found);
            cut.first_raft_index = first_raft_index;
            tracing::error!(dir = %dir.display(), path = %d.path.display(), position = d.position,
                raft_index = d.raft_index, evidence, "damage in fsynced data: {}", d.why);
            recovery.damage = Some(LogDamage {
                at: d,
                evidence_raft_index: evidence,
            });
            pending_cut = Some(cut);
        }
        if segments.is_empty() {
            segments.push(Segment::create(
                disk.as_ref(),
                dir,
                start_offset,
                first_raft_index,
                config.limits,
            )?);
        }
        let durable = DurableFile::open(disk.as_ref(), dir)?;
        let mut log = PartitionLog {
            dir: dir.to_owned(),
            disk,
            clock,
            config,
            segments,
            active_since_ms: None,
            durable,
            watermark: Watermark::default(),
            pending_cut,
        };
        if log.pending_cut.is_none() {
            log.make_recovered_durable()?;
        }
        Ok((log, recovery))
    }

    /// Carries out the cut of damage found at open (after the replica recorded its repair marker), then
    /// makes the log durable as it now is.
    pub fn finish_cut(&mut self) -> Result<(), StorageError> {
        let Some(cut) = self.pending_cut.take() else {
            return Ok(());
        };
        for base in &cut.delete {
            segment::delete_files(self.disk.as_ref(), &self.dir, *base)?;
        }
        if let Some((i, pos)) = cut.truncate {
            let seg = &mut self.segments[i];
            seg.truncate_at(pos)?;
            if i == 0 && pos == 0 {
                seg.base_raft_index = cut.first_raft_index;
                seg.next_raft_index = cut.first_raft_index;
            }
        }
        let disk = self.disk.clone();
        let last = self.segments.len() - 1;
        self.segments[last].unseal(disk.as_ref())?;
        self.make_recovered_durable()
    }

    /// Whether damage found at open still awaits [`PartitionLog::finish_cut`].
    pub fn has_pending_cut(&self) -> bool {
        self.pending_cut.is_some()
    }

    /// Makes what recovery kept durable, then records the active segment as being written (unclean until a
    /// clean close) with its whole length durable.
    fn make_recovered_durable(&mut self) -> Result<(), StorageError> {
        let active = self.segments.last_mut().expect("at least one segment");
        active.sync_all()?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        let (base, len) = (active.base_offset, active.len);
        Checkpoint {
            active_base_offset: base,
            clean_len: 0,
            clean: false,
        }
        .write(self.disk.as_ref(), &self.dir)?;
        let last = self.last_raft_index();
        self.set_watermark(len, last, true)
    }
}

/// How far a segment may be trusted without a scan (a clean checkpoint), and how its tail is treated.
fn trust_of(
    disk: &dyn Disk,
    dir: &Path,
    checkpoint: Option<Checkpoint>,
    found: Found,
    base: u64,
    active: bool,
) -> Result<(Option<u32>, Tail), StorageError> {
    let tail = if active {
        let (durable_len, fsync_failed) = durable_len_for(found, base);
        Tail::Active {
            durable_len,
            fsync_failed,
        }
    } else {
        Tail::Sealed
    };
    let trusted = match checkpoint {
        // Sealed before the checkpoint's active segment: trusted whole (it was fsynced when sealed).
        Some(c) if base < c.active_base_offset => {
            let path = segment::paths(dir, base).0;
            let f = disk
                .open(&path, false)
                .map_err(|e| StorageError::io(&path, e))?;
            let len = f.len().map_err(|e| StorageError::io(&path, e))?;
            u32::try_from(len).ok()
        }
        Some(c) if base == c.active_base_offset && c.clean => Some(c.clean_len),
        _ => None,
    };
    Ok((trusted, tail))
}

/// Damage at the start of `seg` when it does not continue the segment before it (or, for the first, when
/// it starts past where Raft's log starts: entries are missing).
fn gap_before(prev: Option<&Segment>, seg: &Segment, first_raft_index: u64) -> Option<Damage> {
    if seg.len == 0 {
        return None;
    }
    let why = match prev {
        Some(p) if seg.base_raft_index != p.next_raft_index || seg.base_offset != p.next_offset => {
            format!(
                "segment starts at offset {} / raft index {} but the previous one ends at {} / {}",
                seg.base_offset, seg.base_raft_index, p.next_offset, p.next_raft_index
            )
        }
        None if seg.base_raft_index > first_raft_index => format!(
            "the log starts at raft index {} but Raft's log starts at {first_raft_index}",
            seg.base_raft_index
        ),
        _ => return None,
    };
    Some(Damage {
        path: seg.log_path().to_owned(),
        position: 0,
        raft_index: prev.map_or(first_raft_index, |p| p.next_raft_index),
        why,
    })
}

/// Cuts `segments` in memory at damage `d` in segment `i` and plans the file work; answers the plan and the
/// highest Raft index evidenced on disk (segments after the damage are scanned for it before they go).
fn plan_cut(
    disk: &dyn Disk,
    dir: &Path,
    bases: &[u64],
    segments: &mut Vec<Segment>,
    i: usize,
    d: &Damage,
    found: Found,
) -> (PendingCut, u64) {
    let mut evidence = d.raft_index;
    if let Found::Valid(w) = found {
        evidence = evidence.max(w.raft_index);
    }
    evidence = evidence.max(segments[i].next_raft_index.saturating_sub(1));
    let mut delete: Vec<u64> = bases[i + 1..].to_vec();
    for base in &delete {
        let path = segment::paths(dir, *base).0;
        if let Some(last) = segment::last_intact_raft_index(disk, &path) {
            evidence = evidence.max(last);
        }
    }
    let truncate = if d.position == 0 && i > 0 {
        // Nothing of this segment is kept: the one before becomes active again.
        segments.truncate(i);
        delete.insert(0, bases[i]);
        None
    } else {
        segments.truncate(i + 1);
        Some((i, d.position as u32))
    };
    let cut = PendingCut {
        delete,
        truncate,
        first_raft_index: 0,
    };
    (cut, evidence)
}
