//! Opening a segment: trusting a cleanly closed one by its checkpoint, or rebuilding its indexes by
//! scanning it, and telling a torn tail (past what was fsynced) from damage (anything else).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use ferry_protocol::batch::{self, BatchHeader, HEADER_LEN};

use super::{
    paths, BatchMeta, Damage, Expect, Files, Opened, Segment, SegmentLimits, Tail, TornTail,
};
use crate::disk::Disk;
use crate::error::StorageError;
use crate::index::{OffsetIndex, TimeIndex, INDEX_ENTRY_LEN};
use crate::reader::ChunkReader;

impl Segment {
    /// Opens an existing segment. With `trusted_len`, the log is known clean up to there (a checkpoint) and
    /// indexes are loaded (checked against the batches they point at), else, or if they do not match, the
    /// whole file is scanned and the indexes rebuilt. `tail` says what a bad batch means.
    pub fn open(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
        expect: Expect,
        limits: SegmentLimits,
        trusted_len: Option<u32>,
        tail: Tail,
    ) -> Result<(Self, Opened), StorageError> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let io = |e| StorageError::io(&log_path, e);
        let file = disk.open_log(&log_path, false).map_err(io)?;
        let file_len = file.len().map_err(io)?;
        let idx_entries = |p: &Path| {
            disk.open(p, true)
                .and_then(|f| f.len())
                .map(|l| (l as usize) / INDEX_ENTRY_LEN)
                .unwrap_or(0)
        };
        let active = matches!(tail, Tail::Active { .. });
        let cap = if active { limits.index_capacity() } else { 0 };
        let (mut n_idx, mut n_time) = (idx_entries(&index_path), idx_entries(&time_path));
        if active {
            // An active index is read into memory: never more than its capacity, whatever a damaged
            // file's length says (the rest is past any entry it can hold, and is cut).
            (n_idx, n_time) = (n_idx.min(cap), n_time.min(cap));
        }
        let index = OffsetIndex::open(disk, &index_path, n_idx, cap)
            .map_err(|e| StorageError::io(&index_path, e))?;
        let time_index = TimeIndex::open(disk, &time_path, n_time, cap)
            .map_err(|e| StorageError::io(&time_path, e))?;
        let mut seg = Segment::assemble(
            base_offset,
            expect.raft_index,
            limits,
            !active,
            Files {
                log_path,
                file,
                index,
                time_index,
            },
        );
        if file_len > limits.len_max().max(u64::from(u32::MAX / 2)) {
            return Err(seg.corrupt(0, format!("segment file is {file_len} bytes")));
        }
        let trusted = trusted_len.filter(|&t| u64::from(t) == file_len);
        // A sealed segment with no index entries (its index file was lost) is scanned so the index is
        // rebuilt: lookups in it would otherwise scan from its start forever.
        let lost_index =
            !active && seg.index.is_empty() && file_len > u64::from(limits.index_interval_bytes);
        if let Some(len) = trusted.filter(|_| !lost_index) {
            if seg.index.is_sane(len.max(1))
                && seg.time_index.is_sane()
                && seg.load_trusted(len, expect)
            {
                return Ok((seg, Opened::Clean));
            }
            // The indexes or the headers do not match: trust nothing, scan. A clean segment was fsynced
            // whole, so any bad batch in it is damage.
            seg.reset_bookkeeping(expect.raft_index);
            seg.scanned = true;
            let opened = seg.rebuild(disk, file_len, expect, Tail::Sealed)?;
            return Ok((seg, opened));
        }
        seg.scanned = true;
        let opened = seg.rebuild(disk, file_len, expect, tail)?;
        Ok((seg, opened))
    }

    /// An empty segment over its open files.
    pub(super) fn assemble(
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
            last_term: 0,
            max_timestamp: i64::MIN,
            len: 0,
            log_path: f.log_path,
            file: f.file,
            index: f.index,
            time_index: f.time_index,
            bytes_since_index: 0,
            limits,
            sealed,
            index_suspect: AtomicBool::new(false),
            scanned: false,
        }
    }

    pub(super) fn reset_bookkeeping(&mut self, base_raft_index: u64) {
        self.base_raft_index = base_raft_index;
        self.next_offset = self.base_offset;
        self.next_raft_index = base_raft_index;
        self.last_term = 0;
        self.max_timestamp = i64::MIN;
        self.len = 0;
        self.bytes_since_index = 0;
    }

    /// Loads bookkeeping of a clean segment from its indexes and its last batches: false when anything read
    /// does not match (the caller scans instead).
    pub(super) fn load_trusted(&mut self, len: u32, expect: Expect) -> bool {
        self.len = len;
        if len == 0 {
            return true;
        }
        let Ok(first) = self.header_at(0) else {
            return false;
        };
        if first.base_offset != self.base_offset {
            return false;
        }
        self.base_raft_index = first.raft_index;
        // Walk from the last index entry, once it is shown to point at the batch it names.
        let mut pos = 0;
        if let Some(e) = (!self.index.is_empty()).then(|| self.index.get(self.index.len() - 1)) {
            if !self.entry_matches(&e) {
                return false;
            }
            pos = e.position;
        }
        let mut since = 0;
        while pos < len {
            let Ok(h) = self.header_at(pos) else {
                return false;
            };
            if h.raft_term > expect.term_max || h.raft_index == u64::MAX {
                return false;
            }
            self.next_offset = h.next_offset();
            self.next_raft_index = h.raft_index + 1;
            self.last_term = h.raft_term;
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            pos += h.batch_len;
            since += h.batch_len;
        }
        if let Some(t) = self.time_index.last() {
            self.max_timestamp = self.max_timestamp.max(t.timestamp_ms);
        }
        self.bytes_since_index = since;
        true
    }

    /// CRC-scans the whole log, rebuilding both indexes; what a bad batch means depends on `tail`.
    pub(super) fn rebuild(
        &mut self,
        disk: &dyn Disk,
        file_len: u64,
        expect: Expect,
        tail: Tail,
    ) -> Result<Opened, StorageError> {
        self.index.truncate_to_position(0);
        self.time_index.truncate_to_offset(0);
        if self.sealed {
            // A sealed segment's indexes were trimmed; give them room to be rebuilt, then trim again.
            let (_, ip, tp) = paths(self.dir(), self.base_offset);
            let cap = (file_len / u64::from(self.limits.index_interval_bytes.max(1))) as usize + 2;
            self.index =
                OffsetIndex::open(disk, &ip, 0, cap).map_err(|e| StorageError::io(&ip, e))?;
            self.time_index =
                TimeIndex::open(disk, &tp, 0, cap).map_err(|e| StorageError::io(&tp, e))?;
        }
        let file = self.file.clone();
        let mut reader = ChunkReader::new(file.as_ref(), file_len);
        let mut pos: u64 = 0;
        let (durable_len, fsync_failed) = match tail {
            Tail::Sealed => (Some(u32::MAX), false),
            Tail::Active {
                durable_len,
                fsync_failed,
            } => (durable_len, fsync_failed),
        };
        let mut bad: Option<String> = None;
        while pos < file_len {
            if fsync_failed && durable_len.is_some_and(|d| pos >= u64::from(d)) {
                bad = Some("written after a failed fsync".into());
                break;
            }
            match self.check_next(&mut reader, pos, file_len, expect) {
                Ok(h) => {
                    if self.len == 0 {
                        self.base_raft_index = h.raft_index;
                    }
                    self.note_appended(&BatchMeta::of(&h), pos as u32)
                        .map_err(|e| StorageError::io(&self.log_path, e))?;
                    self.last_term = h.raft_term;
                    pos += u64::from(h.batch_len);
                }
                Err(why) => {
                    bad = Some(why);
                    break;
                }
            }
        }
        self.len = pos as u32;
        let durable = durable_len.map(u64::from);
        let opened = match bad {
            // Everything read back; but a durable length past the end means fsynced bytes are missing.
            None if durable.is_some_and(|d| d > file_len && d != u64::from(u32::MAX)) => {
                Opened::Damaged(self.damage(
                    pos,
                    format!(
                        "the segment ends at byte {file_len} but {} bytes were fsynced",
                        durable.unwrap_or(0)
                    ),
                ))
            }
            None => Opened::Clean,
            Some(why) if durable.is_some_and(|d| pos >= d) => {
                // Past the durable watermark: never acknowledged by this replica, a torn write.
                self.file
                    .set_len(pos)
                    .map_err(|e| StorageError::io(&self.log_path, e))?;
                self.file
                    .sync_data()
                    .map_err(|e| StorageError::io(&self.log_path, e))?;
                tracing::debug!(path = %self.log_path.display(), pos, %why, "torn tail");
                Opened::Cut(TornTail {
                    path: self.log_path.clone(),
                    position: pos,
                    cut_bytes: file_len - pos,
                })
            }
            Some(why) => Opened::Damaged(self.damage(pos, why)),
        };
        if self.sealed {
            self.seal_indexes()?;
        }
        Ok(opened)
    }

    pub(super) fn damage(&self, position: u64, why: String) -> Damage {
        Damage {
            path: self.log_path.clone(),
            position,
            raft_index: self.next_raft_index,
            why,
        }
    }

    /// Checks the batch at `pos` of a scan: readable, stamp checksum, length inside the file, CRC, the offset
    /// the log is at, a Raft index that follows the previous batch's and a term that does not go back or
    /// past the replica's.
    pub(super) fn check_next(
        &self,
        reader: &mut ChunkReader<'_>,
        pos: u64,
        file_len: u64,
        expect: Expect,
    ) -> Result<BatchHeader, String> {
        let head = reader
            .get(pos, HEADER_LEN)
            .map_err(|e| format!("unreadable: {e}"))?;
        if head.len() < HEADER_LEN {
            return Err(format!("a partial header of {} bytes", head.len()));
        }
        // The stamp checksum first: no field of a header is believed before it holds.
        ferry_protocol::stamp::check(head).map_err(|e| e.to_string())?;
        let h = BatchHeader::parse(head).map_err(|e| e.to_string())?;
        if (h.batch_len as usize) < HEADER_LEN || pos + u64::from(h.batch_len) > file_len {
            return Err(format!(
                "batch length {} runs past the file ({file_len} bytes)",
                h.batch_len
            ));
        }
        let whole = reader
            .get(pos, h.batch_len as usize)
            .map_err(|e| format!("unreadable: {e}"))?;
        let h = batch::validate_stored(whole).map_err(|e| e.to_string())?;
        let first = self.len == 0;
        if h.base_offset != self.next_offset
            || (!first && h.raft_index != self.next_raft_index)
            || h.raft_index == u64::MAX
        {
            return Err(format!(
                "batch stamp says offset {} / raft index {} but the log is at {} / {}",
                h.base_offset, h.raft_index, self.next_offset, self.next_raft_index
            ));
        }
        if h.raft_term > expect.term_max || (!first && h.raft_term < self.last_term) {
            return Err(format!(
                "batch stamp says raft term {} after term {} (the replica's term is {})",
                h.raft_term, self.last_term, expect.term_max
            ));
        }
        Ok(h)
    }
}
