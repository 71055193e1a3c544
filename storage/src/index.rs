//! Sparse, memory-mapped indexes of one segment: the offset index (offset and Raft index to file position)
//! and the time index (timestamp to offset). Both have fixed 12-byte little-endian entries (docs/design.md).
//! While a segment is active its index files are sized to their capacity; sealing trims them to the entries
//! written. Entries are written with `pwrite` (a full disk is an error, never a fault on a mapped page); an
//! active index is read from memory and a sealed one through a read-only map (never over a hole). Indexes are derived data: never trusted after a crash (recovery rebuilds
//! them from the log), and an entry is checked against the batch header it points at before a lookup
//! relies on it (`segment`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::disk::{Disk, DiskFile};

/// Bytes of one index entry (both kinds).
pub const INDEX_ENTRY_LEN: usize = 12;

/// One offset index entry: a batch starts at `position` and holds `offset` and Raft index `raft_index`
/// (all relative to the segment's bases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub rel_raft_index: u32,
    pub position: u32,
}

/// One time index entry: records with a timestamp of at least `timestamp_ms` start at or after `rel_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub rel_offset: u32,
}

/// Entries appended and not yet written to the file: written together, once this many wait (or at a seal,
/// a clean close, a truncation), so an index costs one `pwrite` per 128 entries rather than one each. An
/// index is derived data (rebuilt from the log after a crash), so nothing waits on these being durable;
/// lookups see them from memory meanwhile.
const PENDING_ENTRIES_MAX: usize = 128;

/// A file of fixed 12-byte entries: memory-mapped once sealed, held in memory while active.
///
/// An active index file is sized to its capacity and sparse past what was written. It is never mapped: on
/// a memory-backed file system (tmpfs, a Kubernetes `emptyDir` with `medium: Memory`) a read fault on a hole
/// allocates a page, and on a full one that is SIGBUS, which kills the broker (a chaos run's disk-full
/// fault found it). Its entries are read with `pread` at open (a hole reads as zeros, which `is_sane`
/// refuses) and kept in memory, 12 bytes each. A sealed file is trimmed to its entries, every byte written
/// and fsynced, so its map covers no hole.
#[derive(Debug)]
struct MappedEntries {
    file: Arc<dyn DiskFile>,
    /// Sealed: the whole file (exactly `entries` entries).
    map: Option<Mmap>,
    /// Active: the bytes of every entry, the pending ones included.
    memory: Vec<u8>,
    /// Entries, the pending ones included.
    entries: usize,
    /// Entries written to the file (the rest are pending, in `memory` only).
    written: usize,
    capacity: usize,
}

impl MappedEntries {
    /// Opens (creating) the file; `entries` valid entries are at its start; it is grown to `capacity`.
    /// With `capacity` 0 (a sealed segment's: no room) it is mapped; otherwise read into memory.
    fn open(disk: &dyn Disk, path: &Path, entries: usize, capacity: usize) -> io::Result<Self> {
        let file = disk.open(path, true)?;
        let sealed = capacity == 0;
        let capacity = capacity.max(entries);
        file.set_len((capacity * INDEX_ENTRY_LEN) as u64)?;
        let mut e = MappedEntries {
            file,
            map: None,
            memory: Vec::new(),
            entries,
            written: entries,
            capacity,
        };
        if sealed && entries > 0 {
            e.map = Some(e.file.map_read()?);
        } else if entries > 0 {
            // Bounded by the caller: at most an active segment's index capacity.
            e.memory = vec![0; entries * INDEX_ENTRY_LEN];
            e.file.read_exact_at(&mut e.memory, 0)?;
        }
        Ok(e)
    }

    fn raw(&self, i: usize) -> &[u8] {
        let at = i * INDEX_ENTRY_LEN;
        match &self.map {
            Some(map) => &map[at..at + INDEX_ENTRY_LEN],
            None => &self.memory[at..at + INDEX_ENTRY_LEN],
        }
    }

    /// Appends an entry; `Ok(false)` when full.
    fn push(&mut self, bytes: [u8; INDEX_ENTRY_LEN]) -> io::Result<bool> {
        if self.entries >= self.capacity {
            return Ok(false);
        }
        debug_assert!(self.map.is_none(), "a file with room is never mapped");
        self.memory.extend_from_slice(&bytes);
        self.entries += 1;
        if self.entries - self.written >= PENDING_ENTRIES_MAX {
            self.flush()?;
        }
        Ok(true)
    }

    /// Writes the pending entries to the file.
    fn flush(&mut self) -> io::Result<()> {
        if self.written == self.entries {
            return Ok(());
        }
        let (from, to) = (
            self.written * INDEX_ENTRY_LEN,
            self.entries * INDEX_ENTRY_LEN,
        );
        self.file.write_all_vectored_at(
            &[std::io::IoSlice::new(&self.memory[from..to])],
            from as u64,
        )?;
        self.written = self.entries;
        Ok(())
    }

    /// Keeps the first `n` entries.
    fn truncate(&mut self, n: usize) {
        if n >= self.entries {
            return;
        }
        if let Some(map) = self.map.take() {
            // A sealed file cut back: its kept entries move to memory (the file keeps its length until it
            // is sealed again or reopened, so the map is dropped rather than left over stale bytes).
            self.memory = map[..n * INDEX_ENTRY_LEN].to_vec();
        } else {
            self.memory.truncate(n * INDEX_ENTRY_LEN);
        }
        self.entries = n;
        self.written = self.written.min(n);
    }

    /// Shrinks the file to the written entries, makes it durable and maps it.
    fn seal(&mut self) -> io::Result<()> {
        self.flush()?;
        // Unmapped before it shrinks: a map over bytes past the end of a file faults when touched.
        self.map = None;
        self.file.set_len((self.entries * INDEX_ENTRY_LEN) as u64)?;
        self.capacity = self.entries;
        self.file.sync_data()?;
        if self.entries > 0 {
            self.map = Some(self.file.map_read()?);
        }
        self.memory = Vec::new();
        Ok(())
    }

    /// Writes and makes durable every entry (recovery, before the log counts as durable).
    fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The sparse offset index of one segment.
#[derive(Debug)]
pub struct OffsetIndex {
    inner: MappedEntries,
}

impl OffsetIndex {
    /// Opens an index whose first `entries` entries are valid, with room for `capacity`.
    pub fn open(disk: &dyn Disk, path: &Path, entries: usize, capacity: usize) -> io::Result<Self> {
        Ok(OffsetIndex {
            inner: MappedEntries::open(disk, path, entries, capacity)?,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.entries
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.inner.entries == 0
    }

    /// Whether no more entries fit.
    pub fn is_full(&self) -> bool {
        self.inner.entries >= self.inner.capacity
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> OffsetEntry {
        let b = self.inner.raw(i);
        OffsetEntry {
            rel_offset: u32_at(b, 0),
            rel_raft_index: u32_at(b, 4),
            position: u32_at(b, 8),
        }
    }

    /// Adds an entry; `Ok(false)` when the index is full (the segment must roll).
    pub fn push(&mut self, e: OffsetEntry) -> io::Result<bool> {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..4].copy_from_slice(&e.rel_offset.to_le_bytes());
        b[4..8].copy_from_slice(&e.rel_raft_index.to_le_bytes());
        b[8..12].copy_from_slice(&e.position.to_le_bytes());
        self.inner.push(b)
    }

    /// The last entry at or below `rel_offset`, if any.
    pub fn floor_for_offset(&self, rel_offset: u32) -> Option<OffsetEntry> {
        self.floor_by(rel_offset, |e| e.rel_offset)
    }

    /// The last entry at or below `rel_raft_index`, if any.
    pub fn floor_for_raft_index(&self, rel_raft_index: u32) -> Option<OffsetEntry> {
        self.floor_by(rel_raft_index, |e| e.rel_raft_index)
    }

    /// Writes and makes durable every entry.
    pub fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }

    /// The last entry whose key (chosen by `key`) is at most `target`, or None.
    fn floor_by(&self, target: u32, key: impl Fn(&OffsetEntry) -> u32) -> Option<OffsetEntry> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(&self.get(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| self.get(lo - 1))
    }

    /// Position to start scanning for relative offset `rel_offset` (0 when before the first entry).
    pub fn position_for_offset(&self, rel_offset: u32) -> u32 {
        self.floor_by(rel_offset, |e| e.rel_offset)
            .map_or(0, |e| e.position)
    }

    /// Position to start scanning for relative Raft index `rel_raft_index`.
    pub fn position_for_raft_index(&self, rel_raft_index: u32) -> u32 {
        self.floor_by(rel_raft_index, |e| e.rel_raft_index)
            .map_or(0, |e| e.position)
    }

    /// Drops every entry at or past `position` (log truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        let mut n = self.inner.entries;
        while n > 0 && self.get(n - 1).position >= position {
            n -= 1;
        }
        self.inner.truncate(n);
    }

    /// Checks that entries grow strictly and stay inside a log of `log_len` bytes.
    pub fn is_sane(&self, log_len: u32) -> bool {
        let mut prev: Option<OffsetEntry> = None;
        for i in 0..self.len() {
            let e = self.get(i);
            if e.position >= log_len {
                return false;
            }
            if let Some(p) = prev {
                if e.position <= p.position
                    || e.rel_offset < p.rel_offset
                    || e.rel_raft_index <= p.rel_raft_index
                {
                    return false;
                }
            }
            prev = Some(e);
        }
        true
    }

    /// Trims to the written entries and fsyncs (segment sealed).
    pub fn seal(&mut self) -> io::Result<()> {
        self.inner.seal()
    }
}

/// The sparse time index of one segment.
#[derive(Debug)]
pub struct TimeIndex {
    inner: MappedEntries,
}

impl TimeIndex {
    /// Opens an index whose first `entries` entries are valid, with room for `capacity`.
    pub fn open(disk: &dyn Disk, path: &Path, entries: usize, capacity: usize) -> io::Result<Self> {
        Ok(TimeIndex {
            inner: MappedEntries::open(disk, path, entries, capacity)?,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.entries
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.inner.entries == 0
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> TimeEntry {
        let b = self.inner.raw(i);
        TimeEntry {
            timestamp_ms: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")) as i64,
            rel_offset: u32_at(b, 8),
        }
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<TimeEntry> {
        (!self.is_empty()).then(|| self.get(self.len() - 1))
    }

    /// Adds an entry if its timestamp is newer than the last one; `Ok(false)` when full.
    pub fn push(&mut self, e: TimeEntry) -> io::Result<bool> {
        if self
            .last()
            .is_some_and(|l| l.timestamp_ms >= e.timestamp_ms)
        {
            return Ok(true);
        }
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&e.timestamp_ms.to_le_bytes());
        b[8..12].copy_from_slice(&e.rel_offset.to_le_bytes());
        self.inner.push(b)
    }

    /// Writes and makes durable every entry.
    pub fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }

    /// The last entry older than `timestamp_ms`, if any: records at or after that time start at or after
    /// its offset.
    pub fn floor_for_time(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).timestamp_ms < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| self.get(lo - 1))
    }

    /// The relative offset to start scanning for the first record at or after `timestamp_ms`: that of the
    /// last entry older than it (0 when none).
    pub fn offset_for_time(&self, timestamp_ms: i64) -> u32 {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).timestamp_ms < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            0
        } else {
            self.get(lo - 1).rel_offset
        }
    }

    /// Drops entries at or past `rel_offset` (log truncation).
    pub fn truncate_to_offset(&mut self, rel_offset: u32) {
        let mut n = self.inner.entries;
        while n > 0 && self.get(n - 1).rel_offset >= rel_offset {
            n -= 1;
        }
        self.inner.truncate(n);
    }

    /// Checks that timestamps and offsets grow.
    pub fn is_sane(&self) -> bool {
        (1..self.len()).all(|i| {
            let (a, b) = (self.get(i - 1), self.get(i));
            b.timestamp_ms > a.timestamp_ms && b.rel_offset >= a.rel_offset
        })
    }

    /// Trims to the written entries and fsyncs (segment sealed).
    pub fn seal(&mut self) -> io::Result<()> {
        self.inner.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OsDisk;

    #[test]
    fn offset_index_floor_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = OffsetIndex::open(&OsDisk, &dir.path().join("i"), 0, 4).unwrap();
        for (o, r, p) in [(0, 0, 0), (10, 3, 4096), (25, 9, 8200)] {
            assert!(idx
                .push(OffsetEntry {
                    rel_offset: o,
                    rel_raft_index: r,
                    position: p
                })
                .unwrap());
        }
        assert_eq!(idx.position_for_offset(0), 0);
        assert_eq!(idx.position_for_offset(24), 4096);
        assert_eq!(idx.position_for_offset(99), 8200);
        assert_eq!(idx.position_for_raft_index(3), 4096);
        assert!(idx.is_sane(9000));
        assert!(!idx.is_sane(8200));
        idx.truncate_to_position(4096);
        assert_eq!(idx.len(), 1);
        idx.seal().unwrap();
        let reopened = OffsetIndex::open(&OsDisk, &dir.path().join("i"), 1, 1).unwrap();
        assert_eq!(
            reopened.get(0),
            OffsetEntry {
                rel_offset: 0,
                rel_raft_index: 0,
                position: 0
            }
        );
        assert!(reopened.is_full());
    }

    #[test]
    fn time_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TimeIndex::open(&OsDisk, &dir.path().join("t"), 0, 8).unwrap();
        idx.push(TimeEntry {
            timestamp_ms: 100,
            rel_offset: 0,
        })
        .unwrap();
        idx.push(TimeEntry {
            timestamp_ms: 90,
            rel_offset: 5,
        })
        .unwrap(); // older: ignored
        idx.push(TimeEntry {
            timestamp_ms: 200,
            rel_offset: 10,
        })
        .unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.offset_for_time(50), 0);
        assert_eq!(idx.offset_for_time(150), 0);
        assert_eq!(idx.offset_for_time(250), 10);
        assert!(idx.is_sane());
    }
}
