//! Fuzzes segment recovery (`ferry-broker`'s `PartitionLog::open` after a crash): arbitrary bytes as the
//! active segment's `.log` file, optionally with arbitrary bytes as its `.index`, must open with the damage
//! cut off (a torn tail) or be refused as corrupt; never panic, hang or over-allocate. When the log opens,
//! every batch it then serves is whole and CRC-valid, offsets are contiguous, and its length matches what
//! it claims.
//!
//! Input layout: byte 0 selects whether the rest is split into an index (first `b1` bytes) and a log.

#![no_main]

use std::sync::Arc;

use ferry_broker::storage::{LogConfig, OsDisk, PartitionLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (index, log) = if mode & 1 == 1 && !rest.is_empty() {
        let n = usize::from(rest[0]).min(rest.len() - 1);
        (Some(&rest[1..1 + n]), &rest[1 + n..])
    } else {
        (None, rest)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("00000000000000000000.log"), log).expect("write log");
    if let Some(index) = index {
        std::fs::write(dir.path().join("00000000000000000000.index"), index).expect("write index");
    }
    let Ok((log, _recovery)) = PartitionLog::open(Arc::new(OsDisk), dir.path(), LogConfig::default(), 1, 0)
    else {
        return; // refused as corrupt: allowed
    };
    let end = log.next_offset();
    assert!(log.start_offset() <= end);
    let mut offset = log.start_offset();
    while offset < end {
        let batches = log.read(offset, 1 << 20, end).expect("an opened log serves what it holds");
        assert!(!batches.is_empty(), "no batch at {offset} below the end {end}");
        for b in batches {
            let h = ferry_protocol::batch::validate(&b).expect("served batches are whole and CRC-valid");
            assert!(h.base_offset <= offset || h.is_control(), "offsets go backwards");
            offset = h.next_offset().max(offset);
        }
    }
});
