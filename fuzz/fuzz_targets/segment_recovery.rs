//! Fuzzes segment recovery (`ferry-broker`'s `PartitionLog::open`): arbitrary bytes as the active segment's
//! `.log` file, optionally with an `.index`, a durable watermark and a clean checkpoint (the trusted open
//! path), must open or be refused; never panic, hang or over-allocate. Oracles (docs/fuzzing.md):
//! - recovery cuts only what lies past the durable watermark: a torn tail starts at or past it, and with no
//!   watermark nothing is ever cut as torn (any bad tail is damage);
//! - damage is never cut before the caller asks (`finish_cut`), and then only from the damaged batch on;
//! - the file after recovery is a byte prefix of the input: recovery never rewrites data, and it is the
//!   whole input unless recovery reports a torn tail or damage;
//! - what the log serves is exactly what the file holds: every batch whole and valid, Raft indexes and
//!   offsets contiguous, their bytes the input's. On the trusted path (a clean checkpoint) payloads are not
//!   checked at open, so a read may stop at a bad batch with `Corrupt`, having served nothing damaged.
//!
//! Input layout: byte 0 is a set of mode bits, then the parts they select, in this order:
//! - bit 0: an index file: one length byte, then that many bytes;
//! - bit 1: a watermark for the segment: 4 bytes, its durable length (u32 LE);
//! - bit 2: fix up the log before writing it: every batch found by walking the `batch_len` fields gets a
//!   correct CRC and stamp checksum, so inputs reach the checks past the checksums;
//! - bit 3: a clean checkpoint saying the whole file is clean (the trusted path);
//! - the rest is the log.

#![no_main]

use std::sync::Arc;

use ferry_storage::checkpoint::Checkpoint;
use ferry_storage::durable::{DurableFile, Watermark};
use ferry_storage::{LogConfig, OsDisk, PartitionLog, StorageError};
use ferry_protocol::batch::{self, BatchHeader, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// Recomputes the CRC and stamp checksum of every batch the length fields delimit.
fn fix_up(log: &mut [u8]) {
    let mut pos = 0usize;
    while pos + HEADER_LEN <= log.len() {
        let len = u32::from_le_bytes(log[pos + 24..pos + 28].try_into().unwrap()) as usize;
        if len < HEADER_LEN || pos + len > log.len() {
            return;
        }
        let b = &mut log[pos..pos + len];
        let crc = batch::compute_crc(b);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        let h = BatchHeader::parse(b).unwrap();
        if let Ok(stamp) = batch::stamp(&h, h.base_offset, h.raft_term, h.raft_index) {
            b[..24].copy_from_slice(&stamp);
        }
        pos += len;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut index = None;
    if mode & 1 == 1 && !rest.is_empty() {
        let n = usize::from(rest[0]).min(rest.len() - 1);
        index = Some(&rest[1..1 + n]);
        rest = &rest[1 + n..];
    }
    let mut watermark = None;
    if mode & 2 == 2 && rest.len() >= 4 {
        watermark = Some(u32::from_le_bytes(rest[..4].try_into().unwrap()));
        rest = &rest[4..];
    }
    let mut log = rest.to_vec();
    if mode & 4 == 4 {
        fix_up(&mut log);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("00000000000000000000.log");
    std::fs::write(&path, &log).expect("write log");
    if let Some(index) = index {
        std::fs::write(dir.path().join("00000000000000000000.index"), index).expect("write index");
    }
    if let Some(len) = watermark {
        let w = Watermark { base_offset: 0, len, raft_index: 0, fsync_failed: false };
        DurableFile::open(&OsDisk, dir.path()).unwrap().write_durably(&w).unwrap();
    }
    let trusted = mode & 8 == 8;
    if trusted {
        let clean = Checkpoint { active_base_offset: 0, clean_len: log.len() as u32, clean: true };
        clean.write(&OsDisk, dir.path()).unwrap();
    }
    let opened = PartitionLog::open(Arc::new(OsDisk), std::sync::Arc::new(ferry_storage::SystemClock), dir.path(), LogConfig::default(), 1, 0, 1 << 32);
    let Ok((mut plog, recovery)) = opened else {
        return; // refused: allowed
    };
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk[..], log[..on_disk.len()], "recovery rewrote data");
    if recovery.torn_tail.is_none() && recovery.damage.is_none() {
        assert_eq!(on_disk.len(), log.len(), "recovery cut bytes it reported as neither torn nor damaged");
    }
    if let Some(t) = &recovery.torn_tail {
        let w = watermark.expect("nothing is cut as a torn tail without a watermark");
        assert!(t.position >= u64::from(w), "a torn tail cut at {} below the watermark {w}", t.position);
        assert_eq!(on_disk.len() as u64, t.position);
    }
    if let Some(d) = &recovery.damage {
        assert_eq!(on_disk, log, "damage was cut before the repair marker");
        plog.finish_cut().expect("the cut of damage works");
        let after = std::fs::read(&path).map(|b| b.len() as u64).unwrap_or(0);
        assert!(after <= d.at.position, "kept {after} bytes past the damage at {}", d.at.position);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert_eq!(on_disk[..], log[..on_disk.len()], "the cut rewrote data");
    }
    // Everything Raft can read: whole, contiguous, the file's own bytes.
    let (first, last) = (plog.first_raft_index(), plog.last_raft_index());
    let mut served = Vec::new();
    let mut next = first;
    let mut offset = plog.start_offset();
    while next <= last {
        let batches = match plog.batches_by_raft_index(next, last + 1, 1 << 20) {
            Ok(batches) => batches,
            // The trusted path checks no payload at open (the scrub does, later): a read that meets a bad
            // batch is an error, and nothing damaged was served before it.
            Err(StorageError::Corrupt { .. }) if trusted => {
                let on_disk = std::fs::read(&path).unwrap_or_default();
                assert_eq!(served[..], on_disk[..served.len()], "what is served is what the file holds");
                return;
            }
            Err(e) => panic!("an opened log serves what it holds: {e:?}"),
        };
        assert!(!batches.is_empty(), "nothing at raft index {next} below {last}");
        for (h, b) in batches {
            assert_eq!(h.raft_index, next);
            assert_eq!(h.base_offset, offset, "offsets are contiguous");
            batch::validate_stored(&b).expect("served batches are whole and valid");
            served.extend_from_slice(&b);
            next += 1;
            offset = h.next_offset();
        }
    }
    assert_eq!(offset, plog.next_offset());
    let on_disk = std::fs::read(&path).unwrap_or_default();
    assert_eq!(served, on_disk, "what is served is what the file holds");
});
