//! A partition's log: an ordered list of segments, the last one active. Appends go to the active segment
//! (rolling by size and age), reads find the segment by offset or Raft index and return batches read into
//! buffers and checked whole, retention drops whole old segments. Opening and recovery are in [`super::open`].
//!
//! The log knows nothing of Raft beyond the index and term stamped in each batch header; `raft_storage`
//! builds Raft's view on top of it.

use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchHeader, STAMP_LEN};

use super::checkpoint::Checkpoint;
use super::clock::WallClock;
use super::disk::{Disk, DiskFile};
use super::durable::{DurableFile, Watermark};
use super::error::StorageError;
use super::segment::{BatchMeta, Segment, SegmentLimits};

/// Settings of one partition log.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    pub limits: SegmentLimits,
    /// Roll the active segment once its first batch is this old (ms); 0: never by age.
    pub segment_ms: u64,
    /// Delete old segments while the log is larger than this (bytes); 0: unlimited.
    pub retention_bytes: u64,
    /// Delete segments whose newest record is older than this (ms); 0: forever.
    pub retention_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            limits: SegmentLimits {
                segment_bytes: 256 * 1024 * 1024,
                batch_bytes_max: ferry_protocol::limits::BATCH_BYTES_HARD_MAX + 1024,
                index_interval_bytes: 4096,
            },
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// One batch to append: its 24-byte broker stamp and the rest of its bytes (`batch[STAMP_LEN..]`).
#[derive(Debug, Clone)]
pub struct Append {
    pub stamp: [u8; STAMP_LEN],
    pub rest: Bytes,
    pub meta: BatchMeta,
}

impl Append {
    /// Stamps a validated batch (its header `h`) with its offset and Raft position. A term that does not fit
    /// the stamp is refused (`StorageError::Failed`: the replica is fenced rather than wrapping it).
    pub fn new(
        data: &Bytes,
        h: &BatchHeader,
        base_offset: u64,
        raft_term: u64,
        raft_index: u64,
    ) -> Result<Self, StorageError> {
        let stamp = batch::stamp(h, base_offset, raft_term, raft_index)
            .map_err(|e| StorageError::Failed(e.to_string()))?;
        Ok(Append {
            stamp,
            rest: data.slice(STAMP_LEN..),
            meta: BatchMeta {
                base_offset,
                record_count: h.record_count,
                raft_index,
                raft_term,
                max_timestamp: h.max_timestamp,
                len: h.batch_len,
            },
        })
    }
}

/// File work a damage cut still owes: segments to delete and the segment (index into the log's list) to
/// truncate at a byte position.
#[derive(Debug)]
pub struct PendingCut {
    pub(super) delete: Vec<u64>,
    pub(super) truncate: Option<(usize, u32)>,
    /// Where Raft's log starts: an emptied first segment restarts there.
    pub(super) first_raft_index: u64,
}

/// A partition log.
#[derive(Debug)]
pub struct PartitionLog {
    pub(super) dir: PathBuf,
    pub(super) disk: Arc<dyn Disk>,
    /// Wall-clock time for roll and retention by age.
    pub(super) clock: Arc<dyn WallClock>,
    pub(super) config: LogConfig,
    pub(super) segments: Vec<Segment>,
    /// Wall clock (ms) when the active segment got its first batch.
    pub(super) active_since_ms: Option<i64>,
    /// The durable watermark file and what it last said.
    pub(super) durable: DurableFile,
    pub(super) watermark: Watermark,
    /// Damage found at open, cut in memory; the files follow in [`PartitionLog::finish_cut`].
    pub(super) pending_cut: Option<PendingCut>,
}

impl PartitionLog {
    /// The clock this log reads time from.
    pub fn clock(&self) -> &Arc<dyn WallClock> {
        &self.clock
    }

    /// Changes retention and roll settings.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config.segment_ms = config.segment_ms;
        self.config.retention_bytes = config.retention_bytes;
        self.config.retention_ms = config.retention_ms;
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    /// Offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.active().next_offset
    }

    /// First offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.segments[0].base_offset
    }

    /// Raft index of the first stored batch (or the next one when none is stored).
    pub fn first_raft_index(&self) -> u64 {
        self.segments[0].base_raft_index
    }

    /// Raft index of the last stored batch (`first_raft_index() - 1` when none).
    pub fn last_raft_index(&self) -> u64 {
        self.active().next_raft_index - 1
    }

    /// Bytes stored.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends stamped batches, rolling segments as needed. Returns the files to fsync before the batches
    /// count as durable (rolled segments are already fsynced).
    pub fn append(&mut self, items: &[Append]) -> Result<Arc<dyn DiskFile>, StorageError> {
        assert!(
            self.pending_cut.is_none(),
            "a log with damage found at open is cut before it is written"
        );
        let mut start = 0;
        while start < items.len() {
            let first_len = items[start].meta.len;
            let now = self.clock.now_ms();
            if self.must_roll(first_len, now) {
                self.roll(items[start].meta.base_offset, items[start].meta.raft_index)?;
            }
            // Take as many items as fit in this segment.
            let mut end = start;
            let mut bytes = 0u64;
            let room = u64::from(self.config.limits.segment_bytes)
                .saturating_sub(u64::from(self.active().len));
            while end < items.len()
                && (end == start || bytes + u64::from(items[end].meta.len) <= room)
            {
                bytes += u64::from(items[end].meta.len);
                end += 1;
            }
            let slices: Vec<IoSlice<'_>> = items[start..end]
                .iter()
                .flat_map(|a| [IoSlice::new(&a.stamp), IoSlice::new(&a.rest)])
                .collect();
            let metas: Vec<BatchMeta> = items[start..end].iter().map(|a| a.meta).collect();
            self.active_mut().append(&slices, &metas)?;
            if self.active_since_ms.is_none() {
                self.active_since_ms = Some(now);
            }
            start = end;
        }
        Ok(self.active().file())
    }

    fn must_roll(&self, next_len: u32, now: i64) -> bool {
        let a = self.active();
        // Never roll a segment without records: segment names are base offsets and must stay unique.
        if a.next_offset == a.base_offset {
            return false;
        }
        // In i128: a setting near u64::MAX means "never", not a negative age.
        let aged = self.config.segment_ms > 0
            && self.active_since_ms.is_some_and(|t| {
                i128::from(now) - i128::from(t) >= i128::from(self.config.segment_ms)
            });
        a.must_roll_before(next_len) || aged
    }

    fn roll(&mut self, base_offset: u64, raft_index: u64) -> Result<(), StorageError> {
        self.active_mut().seal()?;
        let seg = Segment::create(
            self.disk.as_ref(),
            &self.dir,
            base_offset,
            raft_index,
            self.config.limits,
        )?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        Checkpoint {
            active_base_offset: base_offset,
            clean_len: 0,
            clean: false,
        }
        .write(self.disk.as_ref(), &self.dir)?;
        self.segments.push(seg);
        self.active_since_ms = None;
        // The new segment holds nothing durable yet (the sealed one was fsynced whole).
        self.set_watermark(0, raft_index.saturating_sub(1), false)?;
        tracing::debug!(dir = %self.dir.display(), base_offset, "rolled segment");
        Ok(())
    }

    /// Records that everything written so far is fsynced (the driver's fsync returned): the durable
    /// watermark moves to the end of the active segment. Called before anything that fsync made durable is
    /// acknowledged.
    pub fn mark_durable(&mut self) -> Result<(), StorageError> {
        let (len, last) = (self.active().len, self.last_raft_index());
        self.set_watermark(len, last, false)
    }

    /// Records, best effort, that an fsync failed: recovery then trusts nothing past the watermark (the page
    /// cache may hold what the disk never got).
    pub fn note_fsync_failed(&mut self) {
        let w = Watermark {
            fsync_failed: true,
            ..self.watermark
        };
        if let Err(e) = self.durable.write(&w) {
            tracing::error!(dir = %self.dir.display(), "recording the failed fsync: {e}");
        }
        self.watermark = w;
    }

    pub(super) fn set_watermark(
        &mut self,
        len: u32,
        raft_index: u64,
        durably: bool,
    ) -> Result<(), StorageError> {
        let w = Watermark {
            base_offset: self.active().base_offset,
            len,
            raft_index,
            fsync_failed: false,
        };
        if durably {
            self.durable.write_durably(&w)?;
        } else if w != self.watermark {
            self.durable.write(&w)?;
        }
        self.watermark = w;
        Ok(())
    }

    /// The durable watermark as last recorded.
    pub fn watermark(&self) -> Watermark {
        self.watermark
    }

    /// Lowers the watermark, durably, before data below it is cut: a crash after the cut must not find the
    /// file shorter than its watermark (that reads as lost fsynced data).
    fn lower_watermark_to(&mut self, len: u32, raft_index: u64) -> Result<(), StorageError> {
        let base = self.active().base_offset;
        if self.watermark.base_offset == base && self.watermark.len <= len {
            return Ok(());
        }
        self.set_watermark(len, raft_index, true)
    }

    fn segment_for_offset(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    fn segment_for_raft_index(&self, raft_index: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.base_raft_index <= raft_index)
            .checked_sub(1)?;
        (raft_index < self.segments[i].next_raft_index).then_some(i)
    }

    /// Whole committed batches from `offset`, up to `max_bytes` (at least one batch when one is there),
    /// never past `end_offset` (the high watermark). Control batches are skipped. Each batch is checked
    /// whole (stamp and CRC), consecutive batches must continue each other, and the first one served must
    /// hold `offset`: damage in an index or a stamp never makes a read skip records.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: u32,
        end_offset: u64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let start = self.start_offset();
        let end = end_offset.min(self.next_offset());
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut si = self.segment_for_offset(offset);
        let mut pos = self.segments[si].position_of_offset(offset)?;
        let mut expected: Option<u64> = None;
        'segments: while si < self.segments.len() {
            let seg = &self.segments[si];
            if pos >= seg.len {
                si += 1;
                pos = 0;
                continue;
            }
            let room = u64::from(max_bytes).saturating_sub(total);
            // The first batch is checked to hold `offset` below; the ones after it continue each other.
            let batches = seg.batches_from(pos, room, None)?;
            for (h, bytes) in batches {
                let corrupt = |why: String| StorageError::Corrupt {
                    path: seg.log_path().to_owned(),
                    position: u64::from(pos),
                    why,
                };
                if expected.is_some_and(|e| e != h.base_offset) {
                    return Err(corrupt(format!(
                        "batch stamp says offset {} but the log is at {expected:?}",
                        h.base_offset
                    )));
                }
                if expected.is_none() && !h.is_control() && h.base_offset > offset {
                    return Err(corrupt(format!(
                        "the batch found for offset {offset} starts at {}",
                        h.base_offset
                    )));
                }
                expected = Some(h.next_offset());
                if h.base_offset >= end && h.record_count > 0 || h.next_offset() > end {
                    break 'segments;
                }
                if !h.is_control() && h.next_offset() > offset {
                    if !out.is_empty() && total + u64::from(h.batch_len) > u64::from(max_bytes) {
                        break 'segments;
                    }
                    total += bytes.len() as u64;
                    out.push(bytes);
                }
                pos += h.batch_len;
            }
            if !out.is_empty() && total >= u64::from(max_bytes) {
                break;
            }
        }
        Ok(out)
    }

    /// The batch with Raft index `raft_index`, checked whole.
    pub fn batch_by_raft_index(
        &self,
        raft_index: u64,
    ) -> Result<Option<(BatchHeader, Bytes)>, StorageError> {
        let Some(si) = self.segment_for_raft_index(raft_index) else {
            return Ok(None);
        };
        let seg = &self.segments[si];
        let pos = seg.position_of_raft_index(raft_index)?;
        seg.batch_at(pos).map(Some)
    }

    /// The header of the batch with Raft index `raft_index` (stamp checked, no CRC pass: for terms and
    /// offsets, which the stamp covers).
    pub fn header_by_raft_index(
        &self,
        raft_index: u64,
    ) -> Result<Option<BatchHeader>, StorageError> {
        let Some(si) = self.segment_for_raft_index(raft_index) else {
            return Ok(None);
        };
        let seg = &self.segments[si];
        let pos = seg.position_of_raft_index(raft_index)?;
        seg.header_at(pos).map(Some)
    }

    /// Batches with Raft indexes `[low, high)`, stopping early after `max_bytes` (at least one) or at the end
    /// of a segment: Raft accepts short reads. Each is checked whole, and they must be consecutive.
    pub fn batches_by_raft_index(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<(BatchHeader, Bytes)>, StorageError> {
        let mut out = Vec::new();
        let Some(si) = self.segment_for_raft_index(low) else {
            return Ok(out);
        };
        let seg = &self.segments[si];
        let pos = seg.position_of_raft_index(low)?;
        // Mid-segment, the first batch must start where the one before it ends: a stamp that claims another
        // offset would otherwise go to followers whenever no later batch is read in the same call.
        let first_offset = match pos {
            0 => None,
            _ => {
                let before = seg.position_of_raft_index(low - 1)?;
                Some(seg.header_at(before)?.next_offset())
            }
        };
        let mut total = 0u64;
        // Offsets are checked by `batches_from`; Raft indexes here.
        for (next, (h, b)) in (low..).zip(seg.batches_from(pos, max_bytes, first_offset)?) {
            if h.raft_index >= high || (!out.is_empty() && total + b.len() as u64 > max_bytes) {
                break;
            }
            if h.raft_index != next {
                return Err(StorageError::Corrupt {
                    path: seg.log_path().to_owned(),
                    position: u64::from(pos),
                    why: format!(
                        "batch stamp says raft index {} where {next} belongs",
                        h.raft_index
                    ),
                });
            }
            total += b.len() as u64;
            out.push((h, b));
        }
        Ok(out)
    }

    /// Headers of the batches in the last `segments` segments, in log order (stamps checked, no CRC pass:
    /// for rebuilding state derived from headers at open; the scrub checks the rest). Stops at the first
    /// header that fails its checks, and answers it with the Raft index that batch should have had.
    pub fn recent_headers(
        &self,
        segments: usize,
    ) -> (Vec<BatchHeader>, Option<(u64, StorageError)>) {
        let mut out = Vec::new();
        let from = self.segments.len().saturating_sub(segments);
        for seg in &self.segments[from..] {
            let mut pos = 0u32;
            let mut next_raft = seg.base_raft_index;
            while pos < seg.len {
                match seg.header_at(pos) {
                    Ok(h) => {
                        pos += h.batch_len;
                        next_raft = h.raft_index + 1;
                        out.push(h);
                    }
                    Err(e) => return (out, Some((next_raft, e))),
                }
            }
        }
        (out, None)
    }

    /// Removes every batch with Raft index `raft_index` or later (Raft replaced an uncommitted tail, or
    /// repair cut damage).
    pub fn truncate_from_raft_index(&mut self, raft_index: u64) -> Result<(), StorageError> {
        let keep_last = raft_index.saturating_sub(1);
        let mut popped = false;
        while self.segments.len() > 1 && self.active().base_raft_index >= raft_index {
            // The segment that becomes active holds everything below it durably (it was sealed).
            let prev = &self.segments[self.segments.len() - 2];
            let (prev_len, prev_last) = (prev.len, prev.next_raft_index - 1);
            let w = Watermark {
                base_offset: prev.base_offset,
                len: prev_len,
                raft_index: prev_last,
                fsync_failed: false,
            };
            self.durable.write_durably(&w)?;
            self.watermark = w;
            let seg = self.segments.pop().expect("more than one segment");
            seg.delete(self.disk.as_ref())?;
            popped = true;
        }
        if popped {
            // An older, sealed segment is active again: give its indexes room and say so in the checkpoint.
            let disk = self.disk.clone();
            self.active_mut().unseal(disk.as_ref())?;
            self.active_since_ms = None;
            let base = self.active().base_offset;
            Checkpoint {
                active_base_offset: base,
                clean_len: 0,
                clean: false,
            }
            .write(self.disk.as_ref(), &self.dir)?;
        }
        if raft_index >= self.active().next_raft_index {
            return Ok(());
        }
        let (base_raft, pos) = {
            let seg = self.active();
            // Cut at the end of the batch before: only intact batches are read to find it, so a cut at
            // damaged data works however it is damaged.
            let pos = if raft_index <= seg.base_raft_index {
                0
            } else {
                let before = seg.position_of_raft_index(raft_index - 1)?;
                before + seg.header_at(before)?.batch_len
            };
            (seg.base_raft_index, pos)
        };
        self.lower_watermark_to(pos, keep_last)?;
        let seg = self.active_mut();
        seg.truncate_at(pos)?;
        if raft_index <= base_raft {
            seg.base_raft_index = raft_index;
            seg.next_raft_index = raft_index;
        }
        Ok(())
    }

    /// Empties the log so it starts at `raft_index` and `offset` (a follower installing a snapshot).
    pub fn reset(&mut self, raft_index: u64, offset: u64) -> Result<(), StorageError> {
        for seg in self.segments.drain(..) {
            seg.delete(self.disk.as_ref())?;
        }
        self.segments.push(Segment::create(
            self.disk.as_ref(),
            &self.dir,
            offset,
            raft_index,
            self.config.limits,
        )?);
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        Checkpoint {
            active_base_offset: offset,
            clean_len: 0,
            clean: false,
        }
        .write(self.disk.as_ref(), &self.dir)?;
        self.set_watermark(0, raft_index.saturating_sub(1), true)
    }

    /// First offset with a record at or after `timestamp_ms`; the next offset when none is that new.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        for seg in &self.segments {
            if seg.max_timestamp < timestamp_ms && seg.next_offset != self.next_offset() {
                continue;
            }
            if let Some(o) = seg.offset_for_time(timestamp_ms)? {
                return Ok(o);
            }
        }
        Ok(self.next_offset())
    }

    /// Oldest segments retention would delete, keeping every batch with a Raft index above
    /// `keep_from_raft_index - 1` (uncommitted or unapplied): returns the Raft index and term of the last
    /// batch that would go, and how many segments. Nothing is deleted here (see [`PartitionLog::delete_prefix`]).
    pub fn retention_plan(
        &self,
        now_ms: i64,
        keep_from_raft_index: u64,
    ) -> Result<Option<(usize, u64, u64)>, StorageError> {
        let total = self.size_bytes();
        let mut removed_bytes = 0u64;
        let mut count = 0;
        for seg in &self.segments[..self.segments.len() - 1] {
            let too_big = self.config.retention_bytes > 0
                && total - removed_bytes > self.config.retention_bytes;
            // In i128, never `as`: a retention near u64::MAX ("forever") must not turn negative.
            let too_old = self.config.retention_ms > 0
                && seg.max_timestamp != i64::MIN
                && i128::from(now_ms) - i128::from(seg.max_timestamp)
                    > i128::from(self.config.retention_ms);
            if !(too_big || too_old) || seg.next_raft_index > keep_from_raft_index {
                break;
            }
            removed_bytes += u64::from(seg.len);
            count += 1;
        }
        if count == 0 {
            return Ok(None);
        }
        let last = &self.segments[count - 1];
        let idx = last.next_raft_index - 1;
        let term = self.header_by_raft_index(idx)?.map_or(0, |h| h.raft_term);
        Ok(Some((count, idx, term)))
    }

    /// Deletes the `count` oldest segments (never the active one).
    pub fn delete_prefix(&mut self, count: usize) -> Result<(), StorageError> {
        assert!(
            count < self.segments.len(),
            "the active segment is never deleted"
        );
        for seg in self.segments.drain(..count) {
            tracing::info!(path = %seg.log_path().display(), "retention deleted segment");
            seg.delete(self.disk.as_ref())?;
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))
    }

    /// Brings the log in line with a log-start marker that was made durable before a crash interrupted
    /// what followed it: segments wholly below `first_raft_index` go (retention was deleting them), and a
    /// log that ends before it restarts there, at `offset` (a snapshot was being installed).
    pub fn align_start(&mut self, first_raft_index: u64, offset: u64) -> Result<(), StorageError> {
        let below = self.segments[..self.segments.len() - 1]
            .iter()
            .take_while(|s| s.next_raft_index <= first_raft_index)
            .count();
        if below > 0 {
            tracing::warn!(dir = %self.dir.display(), segments = below, "finishing an interrupted retention");
            self.delete_prefix(below)?;
        }
        if self.last_raft_index() < first_raft_index && self.first_raft_index() != first_raft_index
        {
            tracing::warn!(dir = %self.dir.display(), "finishing an interrupted snapshot install");
            self.reset(first_raft_index, offset)?;
        }
        Ok(())
    }

    /// Clean shutdown: fsync the active segment, flush its indexes and record a clean checkpoint so the next
    /// open needs no scan.
    pub fn close(&mut self) -> Result<(), StorageError> {
        let a = self.active_mut();
        a.fit_file()?;
        a.file()
            .sync_data()
            .map_err(|e| StorageError::io(a.log_path(), e))?;
        a.close_indexes()?;
        let (len, last) = (self.active().len, self.last_raft_index());
        self.set_watermark(len, last, true)?;
        let a = self.active();
        let cp = Checkpoint {
            active_base_offset: a.base_offset,
            clean_len: a.len,
            clean: true,
        };
        cp.write(self.disk.as_ref(), &self.dir)
    }
}
