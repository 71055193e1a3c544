//! One segment of a partition log: a log file of whole batches named by its base offset, plus its offset and
//! time indexes. A segment is written only at its end, by the partition's one writer. Reads are positioned
//! reads into buffers (never a memory map of log data: an unreadable block must be an error the replica
//! repairs from its peers, not a SIGBUS), and every batch header read is checked before any of its fields
//! moves a cursor: the stamp checksum, a length that stays inside the segment and makes progress, and, for
//! data served or replicated, the whole batch's CRC.
//!
//! Opening a segment classifies what it finds ([`Opened`]): clean, a torn tail that was cut (only ever past
//! the durable watermark of an active segment, see `durable`), or damage, which the log turns into a cut
//! plus a repair marker (`replica::raft_log::repair`).

mod lookup;
mod recover;

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchHeader, HEADER_LEN};

use super::disk::{Disk, DiskFile};
use super::error::StorageError;
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::reader::ChunkReader;

/// File name stem of a segment: its base offset, zero-padded to 20 digits so names sort by offset.
pub fn file_stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

/// Sizes that shape a segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Roll to a new segment once this many bytes are written (bytes).
    pub segment_bytes: u32,
    /// Largest single batch (bytes): a segment may pass `segment_bytes` by at most one batch.
    pub batch_bytes_max: u32,
    /// Bytes of log between two index entries.
    pub index_interval_bytes: u32,
}

impl SegmentLimits {
    /// Largest size a segment reaches: a full segment plus one batch past the roll point (bytes).
    fn len_max(&self) -> u64 {
        u64::from(self.segment_bytes) + u64::from(self.batch_bytes_max)
    }

    /// Index entries an active segment has room for.
    fn index_capacity(&self) -> usize {
        (self.len_max() / u64::from(self.index_interval_bytes.max(1))) as usize + 2
    }
}

/// What one appended batch contributes, for the indexes and bookkeeping.
#[derive(Debug, Clone, Copy)]
pub struct BatchMeta {
    pub base_offset: u64,
    pub record_count: u32,
    pub raft_index: u64,
    pub raft_term: u64,
    pub max_timestamp: i64,
    pub len: u32,
}

impl BatchMeta {
    /// Meta of a stored batch header.
    pub fn of(h: &BatchHeader) -> Self {
        BatchMeta {
            base_offset: h.base_offset,
            record_count: h.record_count,
            raft_index: h.raft_index,
            raft_term: h.raft_term,
            max_timestamp: h.max_timestamp,
            len: h.batch_len,
        }
    }
}

/// What the log expects of a segment it opens.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Raft index its first batch should carry (for reporting damage at its start).
    pub raft_index: u64,
    /// Highest Raft term a batch may carry: the replica's persisted term (the state file is written before
    /// the entries of a new term).
    pub term_max: u64,
}

/// How an active segment's tail may be treated after an unclean stop.
#[derive(Debug, Clone, Copy)]
pub enum Tail {
    /// A sealed segment (fsynced when it was sealed): any bad batch is damage.
    Sealed,
    /// The active segment, fsynced up to `durable_len` when known: a bad batch at or past it is a torn
    /// write and is cut; below it, damage. `fsync_failed`: nothing past `durable_len` is trusted at all.
    Active {
        durable_len: Option<u32>,
        fsync_failed: bool,
    },
}

/// Damage found inside a segment: a batch that fsynced data should hold, unreadable or failing its checks.
#[derive(Debug, Clone)]
pub struct Damage {
    pub path: PathBuf,
    /// Byte position of the first damaged batch (the segment is valid before it).
    pub position: u64,
    /// Raft index that batch should have had.
    pub raft_index: u64,
    pub why: String,
}

/// A torn tail cut away during recovery.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub path: PathBuf,
    pub position: u64,
    pub cut_bytes: u64,
}

/// What opening a segment found.
#[derive(Debug, Clone)]
pub enum Opened {
    Clean,
    /// A torn tail past the durable watermark was cut.
    Cut(TornTail),
    /// Damage: the segment is open up to the damaged batch (its files still hold what follows; the log
    /// decides the cut).
    Damaged(Damage),
}

/// One segment.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    /// Raft index of the first batch (or of the next one, while empty).
    pub base_raft_index: u64,
    /// Offset after the last record.
    pub next_offset: u64,
    /// Raft index after the last batch.
    pub next_raft_index: u64,
    /// Raft term of the last batch (0 while empty).
    pub last_term: u64,
    /// Largest record timestamp (ms), `i64::MIN` while empty.
    pub max_timestamp: i64,
    /// Bytes of whole batches.
    pub len: u32,
    log_path: PathBuf,
    file: Arc<dyn DiskFile>,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u32,
    limits: SegmentLimits,
    sealed: bool,
    /// An index entry did not match the batch it points at: lookups scan from the segment's start (slow but
    /// right; the index is rebuilt at the next open). Set from readers, so atomic.
    index_suspect: AtomicBool,
    /// Whether opening it needed a CRC scan (no clean checkpoint, or indexes not to be trusted).
    pub scanned: bool,
}

/// The three file paths of a segment.
pub fn paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf, PathBuf) {
    let stem = file_stem(base_offset);
    (
        dir.join(format!("{stem}.log")),
        dir.join(format!("{stem}.index")),
        dir.join(format!("{stem}.timeindex")),
    )
}

/// The open files of a segment.
struct Files {
    log_path: PathBuf,
    file: Arc<dyn DiskFile>,
    index: OffsetIndex,
    time_index: TimeIndex,
}

impl Segment {
    /// Creates a new, empty active segment.
    pub fn create(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
        base_raft_index: u64,
        limits: SegmentLimits,
    ) -> Result<Self, StorageError> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let io = |e| StorageError::io(&log_path, e);
        let file = disk.open_log(&log_path, true).map_err(io)?;
        file.set_len(0).map_err(io)?;
        let cap = limits.index_capacity();
        let index = OffsetIndex::open(disk, &index_path, 0, cap)
            .map_err(|e| StorageError::io(&index_path, e))?;
        let time_index = TimeIndex::open(disk, &time_path, 0, cap)
            .map_err(|e| StorageError::io(&time_path, e))?;
        Ok(Segment::assemble(
            base_offset,
            base_raft_index,
            limits,
            false,
            Files {
                log_path,
                file,
                index,
                time_index,
            },
        ))
    }

    /// Records a batch written at `position` in the indexes and counters.
    fn note_appended(&mut self, m: &BatchMeta, position: u32) -> io::Result<()> {
        if self.index.is_empty() || self.bytes_since_index >= self.limits.index_interval_bytes {
            let rel_offset = (m.base_offset - self.base_offset) as u32;
            let pushed = self.index.push(OffsetEntry {
                rel_offset,
                rel_raft_index: (m.raft_index - self.base_raft_index) as u32,
                position,
            })?;
            if pushed {
                self.bytes_since_index = 0;
                if m.record_count > 0 {
                    self.time_index.push(TimeEntry {
                        timestamp_ms: m.max_timestamp,
                        rel_offset,
                    })?;
                }
            }
        }
        self.bytes_since_index += m.len;
        self.len = position + m.len;
        self.next_offset = m.base_offset + u64::from(m.record_count);
        self.next_raft_index = m.raft_index + 1;
        self.last_term = m.raft_term;
        if m.record_count > 0 {
            self.max_timestamp = self.max_timestamp.max(m.max_timestamp);
        }
        Ok(())
    }

    /// Whether appending `bytes` more must go to a new segment instead.
    pub fn must_roll_before(&self, bytes: u32) -> bool {
        self.len > 0
            && (u64::from(self.len) + u64::from(bytes) > u64::from(self.limits.segment_bytes)
                || self.index.is_full())
    }

    /// Appends whole batches, given as buffers (a broker stamp and the rest of each batch) and their metas.
    /// Not durable until [`Segment::file`]'s `sync_data`.
    pub fn append(
        &mut self,
        bufs: &[IoSlice<'_>],
        metas: &[BatchMeta],
    ) -> Result<(), StorageError> {
        assert!(!self.sealed, "append to a sealed segment");
        let total: u64 = metas.iter().map(|m| u64::from(m.len)).sum();
        // Positions are 32-bit (indexes hold them): a segment never passes that. The log rolls long
        // before; this refuses, rather than asserts, whatever would get here anyway.
        if u64::from(self.len) + total > u64::from(u32::MAX) {
            return Err(self.corrupt(
                self.len,
                format!("{total} bytes do not fit the segment (refused, nothing written)"),
            ));
        }
        if let Err(e) = self.file.write_all_vectored_at(bufs, u64::from(self.len)) {
            // A partial write may have reached the file: cut it so the file ends on a batch boundary.
            let _ = self.file.set_len(u64::from(self.len));
            return Err(StorageError::io(&self.log_path, e));
        }
        for m in metas {
            debug_assert!(
                self.len == 0 || m.raft_index == self.next_raft_index,
                "raft index gap"
            );
            if self.len == 0 {
                self.base_raft_index = m.raft_index;
            }
            self.note_appended(m, self.len)
                .map_err(|e| StorageError::io(&self.log_path, e))?;
        }
        Ok(())
    }

    /// The file, for fsync outside the log's lock.
    pub fn file(&self) -> Arc<dyn DiskFile> {
        self.file.clone()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn dir(&self) -> &Path {
        self.log_path.parent().expect("segment has a dir")
    }

    fn read_bytes(&self, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| StorageError::Unreadable {
                path: self.log_path.clone(),
                position: pos,
                source: e,
            })?;
        Ok(Bytes::from(buf))
    }

    /// The header at `pos` (a batch boundary below `len`): its stamp checksum holds and its length stays
    /// inside the segment, so a walk using it cannot loop or run off the end. The fields the stamp does not
    /// cover (timestamps, producer) are only as good as the batch CRC, which [`Segment::batch_at`] checks.
    pub fn header_at(&self, pos: u32) -> Result<BatchHeader, StorageError> {
        if u64::from(pos) + HEADER_LEN as u64 > u64::from(self.len) {
            return Err(self.corrupt(pos, "a batch header runs past the segment"));
        }
        let mut head = [0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut head, u64::from(pos))
            .map_err(|e| StorageError::Unreadable {
                path: self.log_path.clone(),
                position: u64::from(pos),
                source: e,
            })?;
        ferry_protocol::stamp::check(&head).map_err(|e| self.corrupt(pos, e))?;
        let h = BatchHeader::parse(&head).map_err(|e| self.corrupt(pos, e))?;
        if (h.batch_len as usize) < HEADER_LEN
            || u64::from(pos) + u64::from(h.batch_len) > u64::from(self.len)
        {
            return Err(self.corrupt(pos, "batch length runs past the segment"));
        }
        Ok(h)
    }

    /// The whole batch at `pos`, CRC-checked (never serve a batch that fails it).
    pub fn batch_at(&self, pos: u32) -> Result<(BatchHeader, Bytes), StorageError> {
        let h = self.header_at(pos)?;
        let bytes = self.read_bytes(u64::from(pos), h.batch_len as usize)?;
        let h = batch::validate_stored(&bytes).map_err(|e| self.corrupt(pos, e))?;
        Ok((h, bytes))
    }

    /// Whole batches from `pos` (a batch boundary), read with one positioned read of about `max_bytes`
    /// (the first batch whole even if larger), each checked like [`Segment::batch_at`]; batches are slices
    /// of that one buffer. Stops at the end of the segment. `first_offset`, when the caller knows it (the
    /// next offset of the batch before `pos`), is the offset the first batch must start at; at `pos` 0 it
    /// is the segment's base.
    pub fn batches_from(
        &self,
        pos: u32,
        max_bytes: u64,
        first_offset: Option<u64>,
    ) -> Result<Vec<(BatchHeader, Bytes)>, StorageError> {
        let mut out = Vec::new();
        if pos >= self.len {
            return Ok(out);
        }
        let first = self.header_at(pos)?;
        let span = u64::from(self.len - pos)
            .min(max_bytes.max(u64::from(first.batch_len)))
            .min(u64::from(u32::MAX));
        let buf = self.read_bytes(u64::from(pos), span as usize)?;
        let mut at = 0usize;
        // Offsets run on from batch to batch, and from the segment's base at its start. Stamps are checked
        // one by one; a stamp consistent with itself that says a wrong offset is caught only here (the
        // trusted open after a clean shutdown checks no header; found by the segment_recovery fuzz target).
        let mut offset = (pos == 0).then_some(self.base_offset).or(first_offset);
        while at + HEADER_LEN <= buf.len() {
            let here = pos + at as u32;
            let head = &buf[at..at + HEADER_LEN];
            ferry_protocol::stamp::check(head).map_err(|e| self.corrupt(here, e))?;
            let h = BatchHeader::parse(head).map_err(|e| self.corrupt(here, e))?;
            if (h.batch_len as usize) < HEADER_LEN
                || u64::from(here) + u64::from(h.batch_len) > u64::from(self.len)
            {
                return Err(self.corrupt(here, "batch length runs past the segment"));
            }
            let end = at + h.batch_len as usize;
            if end > buf.len() {
                break;
            }
            let bytes = buf.slice(at..end);
            let h = batch::validate_stored(&bytes).map_err(|e| self.corrupt(here, e))?;
            if let Some(o) = offset.filter(|o| *o != h.base_offset) {
                return Err(self.corrupt(
                    here,
                    format!(
                        "batch stamp says offset {} where {o} belongs",
                        h.base_offset
                    ),
                ));
            }
            offset = Some(h.next_offset());
            out.push((h, bytes));
            at = end;
        }
        Ok(out)
    }

    fn corrupt(&self, pos: u32, why: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position: u64::from(pos),
            why: why.to_string(),
        }
    }

    /// Cuts the log at `position` (a batch boundary): Raft replaced an uncommitted tail, or repair cut
    /// damage.
    pub fn truncate_at(&mut self, position: u32) -> Result<(), StorageError> {
        let position = position.min(self.len);
        // Re-derive counters from the batches that remain (before the cut, while they can still be read).
        let (next_offset, next_raft, last_term) = if position == 0 {
            (self.base_offset, self.base_raft_index, 0)
        } else {
            let floor = self
                .index
                .floor_for_offset(u32::MAX)
                .filter(|e| e.position < position);
            let mut pos = self.start_from(floor);
            let (mut no, mut nr, mut t) = (self.base_offset, self.base_raft_index, 0);
            while pos < position {
                let h = self.header_at(pos)?;
                no = h.next_offset();
                nr = h.raft_index + 1;
                t = h.raft_term;
                pos += h.batch_len;
            }
            (no, nr, t)
        };
        self.file
            .set_len(u64::from(position))
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.index.truncate_to_position(position);
        self.time_index
            .truncate_to_offset((next_offset - self.base_offset) as u32);
        self.len = position;
        self.next_offset = next_offset;
        self.next_raft_index = next_raft;
        self.last_term = last_term;
        self.bytes_since_index = self.index_interval_remainder();
        Ok(())
    }

    fn index_interval_remainder(&self) -> u32 {
        if self.index.is_empty() {
            0
        } else {
            self.len - self.index.get(self.index.len() - 1).position
        }
    }

    fn seal_indexes(&mut self) -> Result<(), StorageError> {
        self.index
            .seal()
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.time_index
            .seal()
            .map_err(|e| StorageError::io(&self.log_path, e))
    }

    /// Makes what recovery found durable: the log file and both indexes (the page cache after a crash is
    /// not the disk).
    pub fn sync_all(&mut self) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&self.log_path, e);
        self.file.sync_data().map_err(io)?;
        self.index.sync().map_err(io)?;
        self.time_index.sync().map_err(io)
    }

    /// Cuts the file to its batches: a file written with direct I/O ends in zero padding to a whole block
    /// (`direct`), which recovery would take for damage in a sealed segment and must not find after a
    /// clean shutdown. Durable with the next `sync_data`.
    pub fn fit_file(&self) -> Result<(), StorageError> {
        self.file
            .set_len(u64::from(self.len))
            .map_err(|e| StorageError::io(&self.log_path, e))
    }

    /// Makes the segment read-only: log cut to its batches and fsynced, indexes trimmed and fsynced.
    pub fn seal(&mut self) -> Result<(), StorageError> {
        self.fit_file()?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.seal_indexes()?;
        self.sealed = true;
        Ok(())
    }

    /// Clean shutdown of the active segment: indexes trimmed to their entries and fsynced, so the next open
    /// trusts them without a scan. No append may follow.
    pub fn close_indexes(&mut self) -> Result<(), StorageError> {
        self.sealed = true;
        self.seal_indexes()
    }

    /// Makes a sealed segment appendable again (Raft truncated back into it): indexes regain their room.
    pub fn unseal(&mut self, disk: &dyn Disk) -> Result<(), StorageError> {
        if !self.sealed {
            return Ok(());
        }
        let (_, ip, tp) = paths(self.dir(), self.base_offset);
        let cap = self.limits.index_capacity();
        let (n, nt) = (self.index.len(), self.time_index.len());
        self.index = OffsetIndex::open(disk, &ip, n, cap).map_err(|e| StorageError::io(&ip, e))?;
        self.time_index =
            TimeIndex::open(disk, &tp, nt, cap).map_err(|e| StorageError::io(&tp, e))?;
        self.sealed = false;
        Ok(())
    }

    /// Removes the segment's files.
    pub fn delete(self, disk: &dyn Disk) -> Result<(), StorageError> {
        delete_files(disk, self.dir(), self.base_offset)
    }
}

/// Removes the files of the segment with base offset `base_offset` in `dir` (those that exist).
pub fn delete_files(disk: &dyn Disk, dir: &Path, base_offset: u64) -> Result<(), StorageError> {
    let (l, i, t) = paths(dir, base_offset);
    for p in [l, i, t] {
        match disk.remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(&p, e)),
        }
    }
    Ok(())
}

/// The last Raft index of the intact batches at the start of a segment file that is not opened as part of
/// the log (evidence of how far the log reached, after damage before it): scans until the first bad batch.
pub fn last_intact_raft_index(disk: &dyn Disk, path: &Path) -> Option<u64> {
    let file = disk.open_log(path, false).ok()?;
    let file_len = file.len().ok()?;
    let mut reader = ChunkReader::new(file.as_ref(), file_len);
    let (mut pos, mut last) = (0u64, None);
    while pos < file_len {
        let Ok(head) = reader.get(pos, HEADER_LEN) else {
            break;
        };
        let Ok(h) = BatchHeader::parse(head) else {
            break;
        };
        if ferry_protocol::stamp::check(head).is_err()
            || (h.batch_len as usize) < HEADER_LEN
            || pos + u64::from(h.batch_len) > file_len
        {
            break;
        }
        let Ok(whole) = reader.get(pos, h.batch_len as usize) else {
            break;
        };
        if batch::validate_stored(whole).is_err() {
            break;
        }
        last = Some(h.raft_index);
        pos += u64::from(h.batch_len);
    }
    last
}
