//! Fuzzes the index readers (`ferry-broker`'s `OffsetIndex` and `TimeIndex`, memory-mapped files of 12-byte
//! little-endian entries): arbitrary bytes as an index file, opened with as many entries as the file holds,
//! then checked by `is_sane`, looked up, truncated and appended to. Never panic, hang or over-allocate. An
//! index that passes `is_sane` (the check recovery applies before trusting one) must answer every lookup
//! inside the log and monotonically: a later offset, Raft index or timestamp never maps to an earlier
//! position or offset; and lookups agree with a plain linear scan of its entries.
//!
//! Input layout: byte 0 picks the index kind (bit 0: time index), bytes 1..5 the log length (u32 LE) the
//! offset index is checked against, bytes 5..17 three probe keys (u32 LE each); the rest is the file.

#![no_main]

use std::path::Path;

use ferry_storage::index::{OffsetIndex, TimeIndex, INDEX_ENTRY_LEN};
use ferry_storage::OsDisk;
use libfuzzer_sys::fuzz_target;

/// Entries a fuzz input may declare (the file is at most this many entries; larger inputs are cut).
const ENTRIES_MAX: usize = 4096;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let time = data[0] & 1 == 1;
    let log_len = u32_at(data, 1);
    let probes = [u32_at(data, 5), u32_at(data, 9), u32_at(data, 13)];
    let file = &data[17..data.len().min(17 + ENTRIES_MAX * INDEX_ENTRY_LEN)];
    let entries = file.len() / INDEX_ENTRY_LEN;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("00000000000000000000.index");
    std::fs::write(&path, file).expect("write index");
    if time {
        check_time_index(&path, entries, probes);
    } else {
        check_offset_index(&path, entries, log_len, probes);
    }
});

fn check_offset_index(path: &Path, entries: usize, log_len: u32, probes: [u32; 3]) {
    let mut index = OffsetIndex::open(&OsDisk, path, entries, entries + 1).expect("open index");
    assert_eq!(index.len(), entries);
    let all: Vec<_> = (0..entries).map(|i| index.get(i)).collect();
    if index.is_sane(log_len) {
        let mut sorted = probes;
        sorted.sort_unstable();
        let mut last = 0;
        for key in sorted {
            let pos = index.position_for_offset(key);
            assert!(pos == 0 || pos < log_len, "position {pos} outside a log of {log_len} bytes");
            assert!(pos >= last, "a later offset maps to an earlier position");
            last = pos;
            // A linear scan finds the same floor entry.
            let expected = all.iter().rev().find(|e| e.rel_offset <= key).map_or(0, |e| e.position);
            assert_eq!(pos, expected, "binary search disagrees with a scan for offset {key}");
            let by_raft = all.iter().rev().find(|e| e.rel_raft_index <= key).map_or(0, |e| e.position);
            assert_eq!(index.position_for_raft_index(key), by_raft);
        }
    } else {
        // Never trusted, but still never a panic.
        let _ = index.position_for_offset(probes[0]);
        let _ = index.position_for_raft_index(probes[1]);
    }
    index.truncate_to_position(probes[2]);
    assert!(index.len() <= entries);
    assert!((0..index.len()).all(|i| index.get(i) == all[i]), "truncation keeps a prefix");
    let _ = index.push(ferry_storage::index::OffsetEntry {
        rel_offset: probes[0],
        rel_raft_index: probes[1],
        position: probes[2],
    });
}

fn check_time_index(path: &Path, entries: usize, probes: [u32; 3]) {
    let mut index = TimeIndex::open(&OsDisk, path, entries, entries + 1).expect("open index");
    let all: Vec<_> = (0..entries).map(|i| index.get(i)).collect();
    // Timestamps spread over the whole i64 range, from the probe bits.
    let mut stamps: Vec<i64> = probes
        .iter()
        .map(|p| (i64::from(*p) << 32) ^ i64::from(*p))
        .collect();
    stamps.sort_unstable();
    if index.is_sane() {
        let mut last = 0;
        for t in stamps {
            let offset = index.offset_for_time(t);
            assert!(offset >= last, "a later time maps to an earlier offset");
            last = offset;
            let expected = all.iter().rev().find(|e| e.timestamp_ms < t).map_or(0, |e| e.rel_offset);
            assert_eq!(offset, expected, "binary search disagrees with a scan for time {t}");
        }
    } else {
        let _ = index.offset_for_time(stamps[0]);
    }
    index.truncate_to_offset(probes[2]);
    assert!((0..index.len()).all(|i| index.get(i) == all[i]), "truncation keeps a prefix");
    let _ = index.push(ferry_storage::index::TimeEntry {
        timestamp_ms: i64::from(probes[0]),
        rel_offset: probes[1],
    });
}
