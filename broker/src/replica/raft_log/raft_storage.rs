//! `raft::Storage` over a partition's segment log: the log IS the Raft log. A Raft entry is one batch; its
//! index and term are stamped in the batch header. Entries that are not client data (election no-ops,
//! configuration changes) are stored as control batches, which consumers never see.
//!
//! Recent entries are also kept in a small tail cache, so the commit path of a busy partition does not read
//! back what it has just written: on a leader the `Bytes` it proposed (also what it sends to followers), on a
//! follower a copy of each entry until it is applied.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchHeader};
use parking_lot::RwLock;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState as RaftInitial, StorageError as RaftStorageError};

use super::producers::{ProducerTable, REBUILD_SEGMENTS};
use super::state::RaftState;
use crate::storage::{
    Append, Disk, DiskFile, LogConfig, PartitionLog, Recovery, StorageError, WallClock,
};

/// Bytes of recent entries kept in the tail cache.
const TAIL_CACHE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Entries kept in the tail cache.
const TAIL_CACHE_ENTRIES_MAX: usize = 4096;

/// Where a persisted entry landed in the log.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub raft_index: u64,
    pub base_offset: u64,
    pub record_count: u32,
}

/// How far a scrub got: the next Raft index to check and what it must continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubCursor {
    pub next_raft_index: u64,
    /// Offset the next batch must start at (unknown: not checked).
    pub next_offset: Option<u64>,
    /// Term of the last batch checked (the next may not be older).
    pub term: u64,
}

/// What [`RaftLog::append_entries`] wrote: the file to fsync (if anything was written) and where entries landed.
pub type Appended = (Option<Arc<dyn DiskFile>>, Vec<Placed>);

/// The log and Raft state of one replica.
#[derive(Debug)]
pub struct RaftLog {
    pub log: PartitionLog,
    state: RaftState,
    /// Hard state as Raft last reported it (commit may be ahead of the file).
    hard_state: HardState,
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    tail: VecDeque<Entry>,
    tail_bytes: usize,
    /// Whether the tail cache keeps only entries not yet applied (a follower: nothing asks it for older ones).
    tail_until_applied: bool,
    /// Last Raft index known fsynced: a commit index written to the state file never passes it.
    durable_last: u64,
    /// Last Raft index whose entry (and every one before it) has been applied: a commit index written to the
    /// state file never passes it either, so a restart (`Config.applied` = the persisted commit) never skips
    /// applying a configuration change (M1 in the durability audit).
    applied: u64,
    /// Idempotent producers' recent batches, as the log holds them.
    pub producers: ProducerTable,
    /// While repairing a damaged log: the last Raft index it held (see [`super::repair`]).
    repair_until: Option<u64>,
    /// Terms and end offsets of the latest entries (Raft's term lookups, the high watermark).
    recent: super::recent::Recent,
    /// Retention passes run over this log since it was opened (a counter on `/metrics`, so a test or an
    /// operator can tell a pass ran rather than wait and hope).
    retention_passes: u64,
    /// Segments CRC-scanned when this log was opened: 0 after a clean shutdown (docs/design.md, Recovery).
    scanned_at_open: u64,
}

/// Shared handle: Raft reads through it, the replica driver writes through it.
#[derive(Debug, Clone)]
pub struct ReplicaStorage {
    core: Arc<RwLock<RaftLog>>,
    /// Damage a read for replication found (see `entries`): set once, read by the driver after every step
    /// (one atomic load), which then fences the replica so the scrub repairs it.
    damage: Arc<OnceLock<String>>,
}

fn to_raft_err(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl ReplicaStorage {
    /// Opens the replica in `dir`. A new replica starts with `initial_voters` as its configuration (every
    /// initial replica must start with the same one).
    pub fn open(
        disk: Arc<dyn Disk>,
        clock: Arc<dyn WallClock>,
        dir: &Path,
        config: LogConfig,
        initial_voters: &[u64],
    ) -> Result<(Self, Recovery), StorageError> {
        crate::storage::disk::create_dir_durable(disk.as_ref(), dir)
            .map_err(|e| StorageError::io(dir, e))?;
        let mut state = match RaftState::read(disk.as_ref(), dir)? {
            Some(s) => s,
            None => {
                let mut s = RaftState::default();
                s.conf_state.voters = initial_voters.to_vec();
                s.write(disk.as_ref(), dir)?;
                s
            }
        };
        let (mut log, recovery) = PartitionLog::open(
            disk.clone(),
            clock.clone(),
            dir,
            config,
            state.marker_index + 1,
            state.marker_offset,
            state.hard_state.term,
        )?;
        let mut repair_until = super::repair::read(disk.as_ref(), dir)?;
        if let Some(d) = &recovery.damage {
            // Fsynced data is damaged: this replica may have acknowledged what is lost. Record how far its
            // log reached before cutting anything, so it never votes with the shorter log (FAST'18).
            let until = d
                .evidence_raft_index
                .max(state.hard_state.commit)
                .max(repair_until.unwrap_or(0));
            super::repair::mark(disk.as_ref(), dir, until)?;
            repair_until = Some(until);
            log.finish_cut()?;
            tracing::error!(dir = %dir.display(), from = d.at.raft_index, until,
                "damaged log cut at open; repairing from peers (no votes until then)");
        }
        if log.first_raft_index() < state.marker_index + 1 {
            // The marker is written before segments are deleted or the log is reset: finish that work.
            log.align_start(state.marker_index + 1, state.marker_offset)?;
        }
        if log.first_raft_index() != state.marker_index + 1 {
            return Err(StorageError::Corrupt {
                path: dir.join(super::state::FILE_NAME),
                position: 0,
                why: format!(
                    "log starts at raft index {} but the state says {}",
                    log.first_raft_index(),
                    state.marker_index + 1
                ),
            });
        }
        let last = log.last_raft_index();
        if state.hard_state.commit > last {
            // Committed entries are fsynced before they commit: missing ones mean lost or damaged data.
            // Repair them from peers rather than refuse to start; never vote without them.
            let until = state.hard_state.commit.max(repair_until.unwrap_or(0));
            if repair_until.is_none() {
                tracing::error!(dir = %dir.display(), commit = state.hard_state.commit, last,
                    "committed entries are missing from the log; repairing from peers");
            }
            super::repair::mark(disk.as_ref(), dir, until)?;
            repair_until = Some(until);
            state.hard_state.commit = last;
            state.write(disk.as_ref(), dir)?;
        }
        // The producer table comes from the recent batch headers; damage there (in a segment trusted at open)
        // is cut for repair like damage found by recovery.
        let (headers, bad) = log.recent_headers(REBUILD_SEGMENTS);
        if let Some((from, e)) = bad {
            let until = last
                .max(state.hard_state.commit)
                .max(repair_until.unwrap_or(0));
            tracing::error!(dir = %dir.display(), from, until, "damaged batch header at open: {e}; repairing from peers");
            super::repair::mark(disk.as_ref(), dir, until)?;
            repair_until = Some(until);
            log.truncate_from_raft_index(from)?;
            if state.hard_state.commit > log.last_raft_index() {
                state.hard_state.commit = log.last_raft_index();
                state.write(disk.as_ref(), dir)?;
            }
        }
        let producers = ProducerTable::rebuild(&headers);
        let last = log.last_raft_index();
        // What recovery kept is fsynced by now (`PartitionLog::open`): it is what is durable.
        let durable_last = last;
        let applied = state.hard_state.commit;
        let core = RaftLog {
            producers,
            repair_until,
            log,
            hard_state: state.hard_state.clone(),
            state,
            disk,
            dir: dir.to_owned(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_until_applied: false,
            durable_last,
            applied,
            recent: Default::default(),
            retention_passes: 0,
            scanned_at_open: recovery.scanned_segments as u64,
        };
        Ok((
            ReplicaStorage {
                core: Arc::new(RwLock::new(core)),
                damage: Arc::new(OnceLock::new()),
            },
            recovery,
        ))
    }

    /// Damage a read for replication found, if any (see `entries`).
    pub fn damage(&self) -> Option<&str> {
        self.damage.get().map(String::as_str)
    }

    /// Read access to the log and state.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, RaftLog> {
        self.core.read()
    }

    /// Write access (the replica driver only).
    pub fn write(&self) -> parking_lot::RwLockWriteGuard<'_, RaftLog> {
        self.core.write()
    }
}

fn entry_type_byte(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_of(b: u8) -> Option<EntryType> {
    match b {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

impl RaftLog {
    /// The durable state.
    pub fn state(&self) -> &RaftState {
        &self.state
    }

    /// The hard state as last reported by Raft.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Writes Ready entries: truncates a replaced uncommitted tail, stamps and appends each entry. Returns the
    /// file to fsync and where data entries landed. Not durable until that fsync.
    pub fn append_entries(
        &mut self,
        entries: &[Entry],
        cache: bool,
    ) -> Result<Appended, StorageError> {
        let Some(first) = entries.first() else {
            return Ok((None, Vec::new()));
        };
        if first.index <= self.log.last_raft_index() {
            // Not against `hard_state.commit`: it already holds this Ready's commit, which may cover the very
            // entries that replace a conflicting tail. What was applied was committed before this Ready.
            assert!(
                first.index > self.applied,
                "raft never replaces committed (here: applied) entries"
            );
            self.log.truncate_from_raft_index(first.index)?;
            self.recent.truncate_from(first.index);
            // What replaced entries were fsynced as no longer is (L5 in the durability audit).
            self.durable_last = self.durable_last.min(first.index - 1);
            while self.tail.back().is_some_and(|e| e.index >= first.index) {
                let e = self.tail.pop_back().expect("checked");
                self.tail_bytes -= e.data.len();
            }
            // The replaced batches no longer count as written.
            self.producers = self.rebuilt_producers()?;
        }
        let mut next_offset = self.log.next_offset();
        let mut appends = Vec::with_capacity(entries.len());
        let mut placed = Vec::with_capacity(entries.len());
        for e in entries {
            let data: Bytes = e.data.clone();
            let (stored, h) = if e.get_entry_type() == EntryType::EntryNormal && !data.is_empty() {
                // On a follower the entry came off the network: its CRC is the only proof it is the batch
                // the producer built. On the leader this is the second check of the same bytes (the first
                // was `Broker::publish`'s `validate_records`); it stays, cheap next to the write and the fsync,
                // so that nothing reaches the disk unchecked whichever way it came.
                let h = batch::validate(&data).map_err(|why| StorageError::Corrupt {
                    path: self.dir.clone(),
                    position: e.index,
                    why: format!("raft entry {} is not a valid batch: {why}", e.index),
                })?;
                (data, h)
            } else {
                let c = batch::control_batch(
                    entry_type_byte(e.get_entry_type()),
                    &data,
                    self.log.clock().now_ms(),
                )
                .freeze();
                let h = BatchHeader::parse(&c).expect("control batch has a header");
                (c, h)
            };
            appends.push(Append::new(&stored, &h, next_offset, e.term, e.index)?);
            self.producers.record(&h, next_offset, e.index);
            placed.push(Placed {
                raft_index: e.index,
                base_offset: next_offset,
                record_count: h.record_count,
            });
            next_offset += u64::from(h.record_count);
            self.recent.push(e.index, e.term, next_offset);
        }
        let file = self.log.append(&appends)?;
        // The cache stays a contiguous suffix of the log. A leader keeps the entries it proposed (they are also
        // what it sends to lagging followers). A follower keeps a copy of each until it is applied, which is
        // the only time it asks for them: applying reads them back from the log otherwise (a read, a buffer
        // and a CRC pass per entry, on every follower). A copy, because a follower's entries are slices of
        // whole network receive buffers shared by many groups, which a cached slice would pin for as long as
        // the entry waits to commit (indefinitely without a quorum).
        self.tail_until_applied = !cache;
        for e in entries {
            let mut e = e.clone();
            if !cache {
                e.data = Bytes::copy_from_slice(&e.data);
            }
            self.tail_bytes += e.data.len();
            self.tail.push_back(e);
        }
        self.trim_tail();
        Ok((Some(file), placed))
    }

    /// Drops the cache's oldest entries beyond its bounds, and on a follower those already applied.
    fn trim_tail(&mut self) {
        while self.tail.front().is_some_and(|e| {
            self.tail.len() > TAIL_CACHE_ENTRIES_MAX
                || self.tail_bytes > TAIL_CACHE_BYTES_MAX
                || (self.tail_until_applied && e.index <= self.applied)
        }) {
            let e = self.tail.pop_front().expect("checked");
            self.tail_bytes -= e.data.len();
        }
    }

    /// Records Raft's hard state; writes the state file when term or vote changed (they must be durable
    /// before any message that depends on them is sent). A commit-only change stays in memory until the next
    /// write: commit can be re-learned, and is only ever persisted at or below what the log holds durably.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let must_write =
            hs.term != self.state.hard_state.term || hs.vote != self.state.hard_state.vote;
        self.hard_state = hs.clone();
        if must_write {
            self.state.hard_state = self.durable_hard_state();
            self.state.write(self.disk.as_ref(), &self.dir)?;
        }
        Ok(())
    }

    /// Records that the log is fsynced up to Raft index `upto` (everything written so far): the durable
    /// watermark moves first, so recovery never cuts what may be acknowledged from here on.
    pub fn mark_durable(&mut self, upto: u64) -> Result<(), StorageError> {
        self.log.mark_durable()?;
        self.durable_last = self.durable_last.max(upto).min(self.log.last_raft_index());
        Ok(())
    }

    /// Records, best effort, that an fsync of this log failed (recovery then trusts nothing unsynced).
    pub fn note_fsync_failed(&mut self) {
        self.log.note_fsync_failed();
    }

    /// The producer table as the log's recent headers say (after a truncation).
    fn rebuilt_producers(&self) -> Result<ProducerTable, StorageError> {
        match self.log.recent_headers(REBUILD_SEGMENTS) {
            (headers, None) => Ok(ProducerTable::rebuild(&headers)),
            (_, Some((_, e))) => Err(e),
        }
    }

    /// Records that every entry up to `index` has been applied.
    pub fn set_applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.trim_tail();
    }

    /// The hard state to write: Raft's, with the commit index clamped to the durable log (Raft re-learns a
    /// higher commit; a state file claiming more than the log holds would refuse to start) and to what has
    /// been applied (a restart starts applying after the persisted commit).
    fn durable_hard_state(&self) -> HardState {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.min(
            self.durable_last
                .min(self.applied)
                .max(self.state.marker_index),
        );
        hs
    }

    /// Records a new commit index (from a `LightReady`).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Persists a new configuration, applied from the entry at Raft index `index` (every entry before it
    /// was applied first), with the current hard state.
    pub fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<(), StorageError> {
        self.set_applied(index);
        self.state.conf_state = cs;
        self.state.hard_state = self.durable_hard_state();
        self.state.write(self.disk.as_ref(), &self.dir)
    }

    /// Offset after the batch with Raft index `raft_index` (the high watermark once it is committed).
    pub fn next_offset_after(&self, raft_index: u64) -> Result<u64, StorageError> {
        if raft_index == self.state.marker_index {
            return Ok(self.state.marker_offset);
        }
        if let Some((_, next)) = self.recent.get(raft_index) {
            return Ok(next);
        }
        match self.log.header_by_raft_index(raft_index)? {
            Some(h) => Ok(h.next_offset()),
            None => Err(StorageError::Failed(format!(
                "raft index {raft_index} is not in the log"
            ))),
        }
    }

    /// Applies retention: deletes old segments whose entries are all applied, moving the marker first.
    pub fn apply_retention(&mut self, applied: u64) -> Result<usize, StorageError> {
        self.retention_passes += 1;
        let Some((count, idx, term)) = self
            .log
            .retention_plan(self.log.clock().now_ms(), applied + 1)?
        else {
            return Ok(0);
        };
        let next = self.next_offset_after(idx)?;
        self.state.marker_index = idx;
        self.state.marker_term = term;
        self.state.marker_offset = next;
        self.state.hard_state = self.durable_hard_state();
        self.state.write(self.disk.as_ref(), &self.dir)?;
        self.log.delete_prefix(count)?;
        while self.tail.front().is_some_and(|e| e.index <= idx) {
            let e = self.tail.pop_front().expect("checked");
            self.tail_bytes -= e.data.len();
        }
        Ok(count)
    }

    /// Retention passes started over this log since it was opened.
    pub fn retention_passes(&self) -> u64 {
        self.retention_passes
    }

    /// Segments CRC-scanned when this log was opened (none after a clean shutdown).
    pub fn scanned_at_open(&self) -> u64 {
        self.scanned_at_open
    }

    /// Installs a data-less snapshot from the leader: the log restarts empty after the snapshot's index, at
    /// the offset its data names (8 bytes, little-endian).
    pub fn install_snapshot(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        let m = s.get_metadata();
        let offset = match s.data.get(..) {
            Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            _ => {
                return Err(StorageError::Failed(format!(
                    "a snapshot's data must be the 8-byte offset its log starts at, not {} bytes",
                    s.data.len()
                )))
            }
        };
        self.state.marker_index = m.index;
        self.state.marker_term = m.term;
        self.state.marker_offset = offset;
        self.state.conf_state = m.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(m.index);
        self.hard_state.term = self.hard_state.term.max(m.term);
        self.state.hard_state = self.hard_state.clone();
        // The marker first: a crash before the reset is finished at the next open (`align_start`).
        self.state.write(self.disk.as_ref(), &self.dir)?;
        self.log.reset(m.index + 1, offset)?;
        self.recent.clear();
        self.durable_last = m.index;
        self.applied = self.applied.max(m.index);
        self.producers = ProducerTable::default();
        self.tail.clear();
        self.tail_bytes = 0;
        Ok(())
    }

    /// While repairing: the Raft index the log must reach again before this replica votes or campaigns.
    pub fn repair_until(&self) -> Option<u64> {
        self.repair_until
    }

    /// Ends a repair once the log holds everything it held before the damage (and that much is committed).
    pub fn finish_repair_if_done(&mut self, committed: u64) -> Result<bool, StorageError> {
        match self.repair_until {
            Some(until) if self.log.last_raft_index() >= until && committed >= until => {
                super::repair::clear(self.disk.as_ref(), &self.dir)?;
                self.repair_until = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Cuts a damaged log at Raft index `from` (the first batch found damaged) and marks the replica
    /// repairing up to the last index it held. The replica must be stopped (this is done between two runs).
    pub fn cut_for_repair(&mut self, from: u64) -> Result<u64, StorageError> {
        let from = from.max(self.state.marker_index + 1);
        let until = self
            .log
            .last_raft_index()
            .max(self.repair_until.unwrap_or(0))
            .max(self.state.hard_state.commit);
        // The marker first: a crash after it and before the cut repairs again at the next open.
        super::repair::mark(self.disk.as_ref(), &self.dir, until)?;
        self.repair_until = Some(until);
        if from <= self.log.last_raft_index() {
            self.log.truncate_from_raft_index(from)?;
        }
        self.recent.clear();
        self.tail.clear();
        self.tail_bytes = 0;
        let last = self.log.last_raft_index();
        self.hard_state.commit = self.hard_state.commit.min(last);
        self.state.hard_state = self.hard_state.clone();
        self.state.hard_state.commit = self.state.hard_state.commit.min(last);
        self.state.write(self.disk.as_ref(), &self.dir)?;
        self.durable_last = last;
        self.producers = self.rebuilt_producers()?;
        Ok(until)
    }

    /// Checks batches from `at`, up to about `max_bytes` (the scrub): each whole (stamp and CRC), Raft
    /// indexes and offsets continuing each other, terms never going back nor past the replica's term.
    /// Answers where to go on (past the end: done), or the damage found.
    pub fn verify(&self, at: ScrubCursor, max_bytes: u64) -> Result<ScrubCursor, StorageError> {
        if at.next_raft_index > self.log.last_raft_index() {
            return Ok(at);
        }
        let batches = self
            .log
            .batches_by_raft_index(at.next_raft_index, u64::MAX, max_bytes)?;
        let mut cur = at;
        for (h, _) in &batches {
            let bad = |why: String| StorageError::Corrupt {
                path: self.dir.clone(),
                position: h.raft_index,
                why: format!("raft index {}: {why}", h.raft_index),
            };
            if cur.next_offset.is_some_and(|o| o != h.base_offset) {
                return Err(bad(format!(
                    "offset {} where {:?} belongs",
                    h.base_offset, cur.next_offset
                )));
            }
            if h.raft_term < cur.term || h.raft_term > self.hard_state.term {
                return Err(bad(format!(
                    "term {} after term {} (the replica is at term {})",
                    h.raft_term, cur.term, self.hard_state.term
                )));
            }
            cur = ScrubCursor {
                next_raft_index: h.raft_index + 1,
                next_offset: Some(h.next_offset()),
                term: h.raft_term,
            };
        }
        if batches.is_empty() {
            cur.next_raft_index += 1;
        }
        Ok(cur)
    }

    /// Where a scrub of this log starts.
    pub fn scrub_start(&self) -> ScrubCursor {
        ScrubCursor {
            next_raft_index: self.log.first_raft_index(),
            next_offset: Some(self.log.start_offset()),
            term: self.state.marker_term,
        }
    }

    /// Clean shutdown: the log's clean checkpoint and the latest commit index.
    pub fn close(&mut self) -> Result<(), StorageError> {
        self.log.close()?;
        // Everything written is fsynced by now: only what is applied bounds the commit written.
        self.durable_last = self.log.last_raft_index();
        self.state.hard_state = self.durable_hard_state();
        self.state.write(self.disk.as_ref(), &self.dir)
    }

    fn entry_from_stored(h: &BatchHeader, stored: Bytes) -> Result<Entry, StorageError> {
        let mut e = Entry {
            index: h.raft_index,
            term: h.raft_term,
            ..Default::default()
        };
        if h.is_control() {
            let (t, data) = batch::control_payload(&stored)
                .map_err(|why| StorageError::Failed(why.to_string()))?;
            let t = entry_type_of(t)
                .ok_or_else(|| StorageError::Failed(format!("unknown entry type {t}")))?;
            e.set_entry_type(t);
            e.data = data;
        } else {
            e.set_entry_type(EntryType::EntryNormal);
            e.data = stored;
        }
        Ok(e)
    }

    fn first_index(&self) -> u64 {
        self.state.marker_index + 1
    }
}

impl raft::Storage for ReplicaStorage {
    fn initial_state(&self) -> raft::Result<RaftInitial> {
        let c = self.core.read();
        Ok(RaftInitial {
            hard_state: c.state.hard_state.clone(),
            conf_state: c.state.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let c = self.core.read();
        if low < c.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        // Damage inside the log, found while a leader reads entries to send: any error but these two is
        // fatal inside raft-rs (a panic that would take the replica's task down with no repair). Where
        // raft-rs allows it, answer "not now" instead and leave the damage for the driver, which fences
        // the replica; the scrub then cuts the log and repairs it from the new leader.
        let can_defer = context.can_async();
        let to_raft_err = |e: StorageError| {
            if can_defer && matches!(e, StorageError::Corrupt { .. }) {
                let _ = self.damage.set(e.to_string());
                return raft::Error::Store(RaftStorageError::LogTemporarilyUnavailable);
            }
            to_raft_err(e)
        };
        assert!(
            high <= c.log.last_raft_index() + 1,
            "entries({low}, {high}) past the last index"
        );
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        let mut next = low;
        // Entries older than the tail cache come from the log.
        let cache_start = c.tail.front().map_or(u64::MAX, |e| e.index);
        while next < high && next < cache_start {
            let batches = c
                .log
                .batches_by_raft_index(next, high.min(cache_start), max_size)
                .map_err(to_raft_err)?;
            if batches.is_empty() {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            }
            for (h, b) in batches {
                size += b.len() as u64;
                next = h.raft_index + 1;
                out.push(RaftLog::entry_from_stored(&h, b).map_err(to_raft_err)?);
                if size > max_size {
                    return Ok(out);
                }
            }
        }
        if next < high {
            let skip = (next - cache_start) as usize;
            for (k, e) in c
                .tail
                .iter()
                .skip(skip)
                .take((high - next) as usize)
                .enumerate()
            {
                assert_eq!(
                    e.index,
                    next + k as u64,
                    "the tail cache is a contiguous suffix of the log"
                );
                size += e.data.len() as u64;
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.core.read();
        if idx == c.state.marker_index {
            return Ok(c.state.marker_term);
        }
        if idx < c.state.marker_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > c.log.last_raft_index() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if let Some(front) = c.tail.front() {
            if idx >= front.index {
                return Ok(c.tail[(idx - front.index) as usize].term);
            }
        }
        if let Some((term, _)) = c.recent.get(idx) {
            return Ok(term);
        }
        match c.log.header_by_raft_index(idx).map_err(to_raft_err)? {
            Some(h) => Ok(h.raft_term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().log.last_raft_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A data-less snapshot: "the log starts after the marker". The follower then catches up by append.
        let c = self.core.read();
        if c.state.marker_index == 0 {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut s = Snapshot::default();
        let m = s.mut_metadata();
        m.index = c.state.marker_index;
        m.term = c.state.marker_term;
        m.set_conf_state(c.state.conf_state.clone());
        s.data = Bytes::copy_from_slice(&c.state.marker_offset.to_le_bytes());
        Ok(s)
    }
}
