//! One segment of a partition log: a log file of whole batches named by its base offset, plus its offset and
//! time indexes. A segment is written only at its end, by the partition's one writer, and read through one
//! read-only memory map that spans the segment's largest size, so reads hand out `Bytes` slices of the map
//! without copying records.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchHeader, HEADER_LEN};

use super::disk::{Disk, DiskFile};
use super::error::StorageError;
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex, INDEX_ENTRY_LEN};

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
    /// Size the read map spans: a full segment plus one batch past the roll point.
    fn map_len(&self) -> usize {
        self.segment_bytes as usize + self.batch_bytes_max as usize
    }

    /// Index entries an active segment has room for.
    fn index_capacity(&self) -> usize {
        (self.map_len() / self.index_interval_bytes.max(1) as usize) + 2
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

/// The open files of a segment.
struct Files {
    log_path: PathBuf,
    file: Arc<dyn DiskFile>,
    map: Arc<memmap2::Mmap>,
    index: OffsetIndex,
    time_index: TimeIndex,
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
    /// Largest record timestamp (ms), `i64::MIN` while empty.
    pub max_timestamp: i64,
    /// Bytes of whole batches.
    pub len: u32,
    log_path: PathBuf,
    file: Arc<dyn DiskFile>,
    map: Arc<memmap2::Mmap>,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u32,
    limits: SegmentLimits,
    sealed: bool,
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
        let file = disk.open(&log_path, true).map_err(io)?;
        file.set_len(0).map_err(io)?;
        let cap = limits.index_capacity();
        let index = OffsetIndex::open(disk, &index_path, 0, cap)
            .map_err(|e| StorageError::io(&index_path, e))?;
        let time_index = TimeIndex::open(disk, &time_path, 0, cap)
            .map_err(|e| StorageError::io(&time_path, e))?;
        let map = Arc::new(file.map_read(limits.map_len()).map_err(io)?);
        Ok(Segment::assemble(
            base_offset,
            base_raft_index,
            limits,
            false,
            Files {
                log_path,
                file,
                map,
                index,
                time_index,
            },
        ))
    }

    /// Opens an existing segment. With `trusted_len`, the log is known clean up to there (a checkpoint) and
    /// indexes are loaded, else (or if they are insane) rebuilt; without it the whole file is CRC-scanned.
    /// `active` keeps it open for appends. Returns the segment and whether a torn tail was cut.
    pub fn open(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
        expected_raft_index: u64,
        limits: SegmentLimits,
        trusted_len: Option<u32>,
        active: bool,
    ) -> Result<(Self, Option<TornTail>), StorageError> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let io = |e| StorageError::io(&log_path, e);
        let file = disk.open(&log_path, false).map_err(io)?;
        let file_len = file.len().map_err(io)?;
        let map = Arc::new(
            file.map_read(limits.map_len().max(file_len as usize))
                .map_err(io)?,
        );
        let idx_entries = |p: &Path| {
            disk.open(p, true)
                .and_then(|f| f.len())
                .map(|l| (l as usize) / INDEX_ENTRY_LEN)
                .unwrap_or(0)
        };
        let cap = if active { limits.index_capacity() } else { 0 };
        let (n_idx, n_time) = (idx_entries(&index_path), idx_entries(&time_path));
        let index = OffsetIndex::open(disk, &index_path, n_idx, cap.max(n_idx))
            .map_err(|e| StorageError::io(&index_path, e))?;
        let time_index = TimeIndex::open(disk, &time_path, n_time, cap.max(n_time))
            .map_err(|e| StorageError::io(&time_path, e))?;
        let mut seg = Segment::assemble(
            base_offset,
            expected_raft_index,
            limits,
            !active,
            Files {
                log_path,
                file,
                map,
                index,
                time_index,
            },
        );
        let torn = match trusted_len.filter(|&t| u64::from(t) == file_len) {
            Some(len) if seg.index.is_sane(len.max(1)) && seg.time_index.is_sane() => {
                seg.load_trusted(len)?;
                None
            }
            _ => {
                seg.scanned = true;
                seg.rebuild(disk, file_len, active)?
            }
        };
        Ok((seg, torn))
    }

    /// An empty segment over its open files.
    fn assemble(
        base_offset: u64,
        base_raft_index: u64,
        limits: SegmentLimits,
        sealed: bool,
        f: Files,
    ) -> Self {
        Segment {
            base_offset,
            base_raft_index,
            next_offset: base_offset,
            next_raft_index: base_raft_index,
            max_timestamp: i64::MIN,
            len: 0,
            log_path: f.log_path,
            file: f.file,
            map: f.map,
            index: f.index,
            time_index: f.time_index,
            bytes_since_index: 0,
            limits,
            sealed,
            scanned: false,
        }
    }

    /// Loads bookkeeping of a clean segment from its indexes and its last batches.
    fn load_trusted(&mut self, len: u32) -> Result<(), StorageError> {
        self.len = len;
        if len == 0 {
            return Ok(());
        }
        let first = self.header_at(0)?;
        self.base_raft_index = first.raft_index;
        // Walk from the last index entry to the end for the last batch.
        let mut pos = if self.index.is_empty() {
            0
        } else {
            self.index.get(self.index.len() - 1).position
        };
        let mut since = 0;
        while pos < len {
            let h = self.header_at(pos)?;
            // The file was closed cleanly, but a header is still only trusted as far as it cannot make this
            // walk loop forever or overflow.
            if (h.batch_len as usize) < HEADER_LEN
                || u64::from(pos) + u64::from(h.batch_len) > u64::from(len)
            {
                return Err(self.corrupt(pos, "batch length runs past the segment"));
            }
            self.next_offset = h.next_offset();
            self.next_raft_index = h
                .raft_index
                .checked_add(1)
                .ok_or_else(|| self.corrupt(pos, "raft index out of range"))?;
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            pos += h.batch_len;
            since += h.batch_len;
        }
        if let Some(t) = self.time_index.last() {
            self.max_timestamp = self.max_timestamp.max(t.timestamp_ms);
        }
        self.bytes_since_index = since;
        Ok(())
    }

    /// CRC-scans the whole log, rebuilding both indexes. A bad batch at the tail of the active segment is a
    /// torn write and is cut; anywhere else it is corruption.
    fn rebuild(
        &mut self,
        disk: &dyn Disk,
        file_len: u64,
        active: bool,
    ) -> Result<Option<TornTail>, StorageError> {
        self.index.truncate_to_position(0);
        self.time_index.truncate_to_offset(0);
        if !active {
            // A sealed segment's indexes were trimmed; give them room to be rebuilt, then trim again.
            let (_, ip, tp) = paths(
                self.log_path.parent().expect("segment has a dir"),
                self.base_offset,
            );
            let cap = (file_len as usize / self.limits.index_interval_bytes.max(1) as usize) + 2;
            self.index =
                OffsetIndex::open(disk, &ip, 0, cap).map_err(|e| StorageError::io(&ip, e))?;
            self.time_index =
                TimeIndex::open(disk, &tp, 0, cap).map_err(|e| StorageError::io(&tp, e))?;
        }
        let mut pos: u64 = 0;
        let mut first = true;
        let mut torn = None;
        while pos < file_len {
            // The stamp is outside the CRC: check that it continues the log.
            let checked = self.check_batch_at(pos, file_len).map_err(|e| e.to_string()).and_then(|h| {
                let (want_offset, want_index) = if first {
                    (self.base_offset, None)
                } else {
                    (self.next_offset, Some(self.next_raft_index))
                };
                // The largest index has no successor: a stamp holding it is damage (found by fuzzing).
                if h.raft_index == u64::MAX {
                    return Err(format!("batch stamp says raft index {}", h.raft_index));
                }
                if h.base_offset != want_offset || want_index.is_some_and(|i| i != h.raft_index) {
                    return Err(format!(
                        "batch stamp says offset {} / raft index {} but the log is at {want_offset} / {want_index:?}",
                        h.base_offset, h.raft_index
                    ));
                }
                Ok(h)
            });
            match checked {
                Ok(h) => {
                    if first {
                        self.base_raft_index = h.raft_index;
                        first = false;
                    }
                    self.note_appended(&BatchMeta::of(&h), pos as u32);
                    pos += u64::from(h.batch_len);
                }
                Err(why) => {
                    if !active || self.valid_batch_follows(pos, file_len) {
                        return Err(StorageError::Corrupt {
                            path: self.log_path.clone(),
                            position: pos,
                            why: why.to_string(),
                        });
                    }
                    torn = Some(TornTail {
                        path: self.log_path.clone(),
                        position: pos,
                        cut_bytes: file_len - pos,
                    });
                    self.file
                        .set_len(pos)
                        .map_err(|e| StorageError::io(&self.log_path, e))?;
                    self.file
                        .sync_data()
                        .map_err(|e| StorageError::io(&self.log_path, e))?;
                    break;
                }
            }
        }
        self.len = pos.min(file_len) as u32;
        if !active {
            self.seal_indexes()?;
        }
        Ok(torn)
    }

    /// Whether an intact batch starts right after the (bad) one at `pos`, using its length field: if so the
    /// bad batch is not a torn tail but damage inside the log.
    fn valid_batch_follows(&self, pos: u64, file_len: u64) -> bool {
        let Ok(h) = BatchHeader::parse(self.slice_in_file(pos, HEADER_LEN as u64, file_len)) else {
            return false;
        };
        let next = pos + u64::from(h.batch_len);
        h.batch_len as usize >= HEADER_LEN
            && next < file_len
            && self.check_batch_at(next, file_len).is_ok()
    }

    fn slice_in_file(&self, pos: u64, len: u64, file_len: u64) -> &[u8] {
        let end = (pos + len).min(file_len) as usize;
        &self.map[pos as usize..end]
    }

    fn check_batch_at(&self, pos: u64, file_len: u64) -> Result<BatchHeader, batch::BatchError> {
        let h = BatchHeader::parse(self.slice_in_file(pos, HEADER_LEN as u64, file_len))?;
        if (h.batch_len as usize) < HEADER_LEN || pos + u64::from(h.batch_len) > file_len {
            return Err(batch::BatchError::LengthMismatch {
                declared: h.batch_len,
                available: (file_len - pos) as usize,
            });
        }
        batch::validate(self.slice_in_file(pos, u64::from(h.batch_len), file_len))
    }

    /// Records a batch written at `position` in the indexes and counters.
    fn note_appended(&mut self, m: &BatchMeta, position: u32) {
        if self.index.is_empty() || self.bytes_since_index >= self.limits.index_interval_bytes {
            let rel_offset = (m.base_offset - self.base_offset) as u32;
            let pushed = self.index.push(OffsetEntry {
                rel_offset,
                rel_raft_index: (m.raft_index - self.base_raft_index) as u32,
                position,
            });
            if pushed {
                self.bytes_since_index = 0;
                if m.record_count > 0 {
                    self.time_index.push(TimeEntry {
                        timestamp_ms: m.max_timestamp,
                        rel_offset,
                    });
                }
            }
        }
        self.bytes_since_index += m.len;
        self.len = position + m.len;
        self.next_offset = m.base_offset + u64::from(m.record_count);
        self.next_raft_index = m.raft_index + 1;
        if m.record_count > 0 {
            self.max_timestamp = self.max_timestamp.max(m.max_timestamp);
        }
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
        assert!(
            u64::from(self.len) + total <= self.limits.map_len() as u64,
            "segment overflow"
        );
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
            self.note_appended(m, self.len);
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

    /// The header at `pos` (a batch boundary below `len`), unchecked.
    pub fn header_at(&self, pos: u32) -> Result<BatchHeader, StorageError> {
        let end = (pos as usize + HEADER_LEN).min(self.map.len());
        BatchHeader::parse(&self.map[pos as usize..end]).map_err(|e| self.corrupt(pos, e))
    }

    /// The whole batch at `pos`, CRC-checked (never serve a batch that fails it).
    pub fn batch_at(&self, pos: u32) -> Result<(BatchHeader, Bytes), StorageError> {
        let h = self.header_at(pos)?;
        let end = u64::from(pos) + u64::from(h.batch_len);
        if (h.batch_len as usize) < HEADER_LEN || end > u64::from(self.len) {
            return Err(self.corrupt(pos, "batch length runs past the segment"));
        }
        let bytes = self.map_bytes(pos as usize, end as usize);
        batch::validate(&bytes).map_err(|e| self.corrupt(pos, e))?;
        Ok((h, bytes))
    }

    fn map_bytes(&self, start: usize, end: usize) -> Bytes {
        Bytes::from_owner(MapSlice {
            map: self.map.clone(),
            start,
            end,
        })
    }

    fn corrupt(&self, pos: u32, why: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position: u64::from(pos),
            why: why.to_string(),
        }
    }

    /// Position of the first batch holding `offset` or after it (`len` when none).
    pub fn position_of_offset(&self, offset: u64) -> Result<u32, StorageError> {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let mut pos = self.index.position_for_offset(rel);
        while pos < self.len {
            let h = self.header_at(pos)?;
            if h.next_offset() > offset && !h.is_control() {
                return Ok(pos);
            }
            pos += h.batch_len;
        }
        Ok(self.len)
    }

    /// Position of the batch with Raft index `raft_index` (which this segment holds).
    pub fn position_of_raft_index(&self, raft_index: u64) -> Result<u32, StorageError> {
        let rel = (raft_index - self.base_raft_index) as u32;
        let mut pos = self.index.position_for_raft_index(rel);
        while pos < self.len {
            let h = self.header_at(pos)?;
            if h.raft_index == raft_index {
                return Ok(pos);
            }
            if h.raft_index > raft_index {
                break;
            }
            pos += h.batch_len;
        }
        Err(self.corrupt(
            pos,
            format!("raft index {raft_index} not found in its segment"),
        ))
    }

    /// First offset at or after `timestamp_ms` in this segment, if any record is that new.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>, StorageError> {
        let rel = self.time_index.offset_for_time(timestamp_ms);
        let mut pos = self.position_of_offset(self.base_offset + u64::from(rel))?;
        while pos < self.len {
            let h = self.header_at(pos)?;
            if !h.is_control() && h.max_timestamp >= timestamp_ms {
                return Ok(Some(h.base_offset));
            }
            pos += h.batch_len;
        }
        Ok(None)
    }

    /// Cuts the log at `position` (a batch boundary): Raft replaced an uncommitted tail.
    pub fn truncate_at(&mut self, position: u32) -> Result<(), StorageError> {
        self.file
            .set_len(u64::from(position))
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.index.truncate_to_position(position);
        let (next_offset, next_raft) = if position == 0 {
            (self.base_offset, self.base_raft_index)
        } else {
            // Re-derive counters from the batches that remain.
            let mut pos = self.index.position_for_offset(u32::MAX);
            let (mut no, mut nr) = (self.base_offset, self.base_raft_index);
            while pos < position {
                let h = self.header_at(pos)?;
                no = h.next_offset();
                nr = h.raft_index + 1;
                pos += h.batch_len;
            }
            (no, nr)
        };
        self.time_index
            .truncate_to_offset((next_offset - self.base_offset) as u32);
        self.len = position;
        self.next_offset = next_offset;
        self.next_raft_index = next_raft;
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

    /// Makes the segment read-only: log fsynced, indexes trimmed and fsynced.
    pub fn seal(&mut self) -> Result<(), StorageError> {
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
        let dir = self
            .log_path
            .parent()
            .expect("segment has a dir")
            .to_owned();
        let (_, ip, tp) = paths(&dir, self.base_offset);
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
        let dir = self
            .log_path
            .parent()
            .expect("segment has a dir")
            .to_owned();
        let (l, i, t) = paths(&dir, self.base_offset);
        for p in [l, i, t] {
            match disk.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(&p, e)),
            }
        }
        Ok(())
    }
}

/// A torn tail cut away during recovery.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub path: PathBuf,
    pub position: u64,
    pub cut_bytes: u64,
}

/// Owner of a `Bytes` slice of a segment map: keeps the map alive while any slice is.
struct MapSlice {
    map: Arc<memmap2::Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}
