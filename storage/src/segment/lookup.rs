//! Finding batches in a segment through its indexes, checked against the log, never trusted blindly.

use std::sync::atomic::Ordering;

use super::Segment;
use crate::error::StorageError;
use crate::index::{OffsetEntry, TimeEntry};

impl Segment {
    /// Whether index entry `e` points at a batch boundary whose header carries the offset and Raft index
    /// the entry names (an index entry is derived data: damage in it must never make a read skip records).
    pub(super) fn entry_matches(&self, e: &OffsetEntry) -> bool {
        match self.header_at(e.position) {
            Ok(h) => {
                h.base_offset == self.base_offset + u64::from(e.rel_offset)
                    && h.raft_index == self.base_raft_index + u64::from(e.rel_raft_index)
            }
            Err(_) => false,
        }
    }

    /// Where a walk may start for the index entry `e`, once checked: a damaged entry makes every later
    /// lookup in this segment scan from its start.
    pub(super) fn start_from(&self, e: Option<OffsetEntry>) -> u32 {
        let Some(e) = e.filter(|_| !self.index_suspect.load(Ordering::Relaxed)) else {
            return 0;
        };
        if self.entry_matches(&e) {
            return e.position;
        }
        if !self.index_suspect.swap(true, Ordering::Relaxed) {
            tracing::error!(path = %self.log_path.display(), position = e.position,
                "offset index entry does not match its batch; the index is ignored until rebuilt at the next open");
            metrics::counter!("ferry_index_damage_total").increment(1);
        }
        0
    }

    /// Position of the first batch holding `offset` or after it (`len` when none).
    pub fn position_of_offset(&self, offset: u64) -> Result<u32, StorageError> {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let mut pos = self.start_from(self.index.floor_for_offset(rel));
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
        let rel = raft_index
            .saturating_sub(self.base_raft_index)
            .min(u64::from(u32::MAX)) as u32;
        let mut pos = self.start_from(self.index.floor_for_raft_index(rel));
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

    /// First offset at or after `timestamp_ms` in this segment, if any record is that new. Batches are read
    /// whole (CRC-checked): timestamps are covered by the batch CRC, not the stamp.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>, StorageError> {
        let floor = self.time_index.floor_for_time(timestamp_ms);
        let mut pos = match floor {
            None => 0,
            Some(e) => {
                let p = self.position_of_offset(self.base_offset + u64::from(e.rel_offset))?;
                if self.time_entry_matches(p, &e)? {
                    p
                } else {
                    0
                }
            }
        };
        while pos < self.len {
            let (h, _) = self.batch_at(pos)?;
            if !h.is_control() && h.max_timestamp >= timestamp_ms {
                return Ok(Some(h.base_offset));
            }
            pos += h.batch_len;
        }
        Ok(None)
    }

    pub(super) fn time_entry_matches(&self, pos: u32, e: &TimeEntry) -> Result<bool, StorageError> {
        if pos >= self.len {
            return Ok(false);
        }
        let (h, _) = self.batch_at(pos)?;
        let ok = h.base_offset == self.base_offset + u64::from(e.rel_offset)
            && h.max_timestamp == e.timestamp_ms;
        if !ok {
            tracing::error!(path = %self.log_path.display(), pos, "time index entry does not match its batch; scanning");
            metrics::counter!("ferry_index_damage_total").increment(1);
        }
        Ok(ok)
    }
}
