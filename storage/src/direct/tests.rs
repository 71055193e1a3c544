//! Direct-I/O log files: every read matches what was appended wherever the bytes are (staged, being
//! written, on disk), the file ends without padding after a seal or a clean close, and what a crash leaves
//! (padding, a lost staged tail) is cut by recovery without losing anything fsynced.

use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DirectDisk, DirectFile, BLOCK_BYTES, FLUSH_BYTES};
use crate::disk::{Disk, DiskFile};
use crate::faulty::{Faults, FaultyDisk};
use crate::tests::{fill, fill_unsynced, make_batch, open_with, values};
use crate::Append;
use ferry_protocol::batch;

/// The byte at position `pos` of a file the concurrent test writes.
fn pattern(pos: u64) -> u8 {
    (pos.wrapping_mul(31) % 251) as u8
}

fn check_reads(f: &DirectFile, model: &[u8], rng: &mut StdRng) {
    assert_eq!(f.len().unwrap(), model.len() as u64);
    for _ in 0..3 {
        let start = rng.gen_range(0..model.len() as u64 + 1) as usize;
        let n = rng.gen_range(0..(model.len() - start) as u64 + 1) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, start as u64).unwrap();
        assert!(buf == model[start..start + n], "bytes {start}..+{n} differ");
    }
    let mut past = [0u8; 1];
    assert!(
        f.read_exact_at(&mut past, model.len() as u64).is_err(),
        "a read past the data fails, as past a file's end"
    );
}

#[test]
fn every_read_matches_what_was_appended_wherever_the_bytes_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let f = DirectFile::open(&path, true).expect("this test's file system supports O_DIRECT");
    let mut model: Vec<u8> = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for op in 0..1500u64 {
        let big = op % 500 == 250;
        match if big { 19 } else { rng.gen_range(0..19) } {
            // Mostly appends, of every size up to a few blocks, through several buffers.
            0..=13 => {
                let n = rng.gen_range(0..3 * BLOCK_BYTES as u64) as usize + 1;
                let data: Vec<u8> = (0..n).map(|_| rng.gen_range(0..256) as u8).collect();
                let cut = rng.gen_range(0..n as u64) as usize;
                let at = model.len() as u64;
                f.write_all_vectored_at(
                    &[IoSlice::new(&data[..cut]), IoSlice::new(&data[cut..])],
                    at,
                )
                .unwrap();
                model.extend_from_slice(&data);
            }
            14..=17 => {
                f.sync_data().unwrap();
                // Everything is on disk now, padded to a whole block at most: the last 64 KiB tell.
                let disk_len = std::fs::metadata(&path).unwrap().len() as usize;
                assert!(disk_len >= model.len() && disk_len < model.len() + BLOCK_BYTES);
                let from = model.len().saturating_sub(64 * 1024);
                let mut disk = vec![0u8; disk_len - from];
                std::fs::File::open(&path)
                    .unwrap()
                    .read_exact_at(&mut disk, from as u64)
                    .unwrap();
                let (data, padding) = disk.split_at(model.len() - from);
                assert!(data == &model[from..], "op {op}: the disk holds the data");
                assert!(padding.iter().all(|&b| b == 0), "padding is zeros");
            }
            18 => {
                // Raft replaces an uncommitted tail: cut, then appends go on from there.
                let to = rng.gen_range(0..model.len() as u64 + 1);
                f.set_len(to).unwrap();
                model.truncate(to as usize);
                assert_eq!(
                    std::fs::metadata(&path).unwrap().len(),
                    to,
                    "no padding after a cut"
                );
            }
            _ => {
                // One append past the flush threshold: the appender writes it itself.
                let data: Vec<u8> = (0..FLUSH_BYTES + 5000).map(|i| (i % 253) as u8).collect();
                let at = model.len() as u64;
                f.write_all_vectored_at(&[IoSlice::new(&data)], at).unwrap();
                model.extend_from_slice(&data);
                assert!(
                    std::fs::metadata(&path).unwrap().len() as usize
                        > model.len() - 5000 - BLOCK_BYTES,
                    "an append past the threshold reached the file without an fsync"
                );
            }
        }
        check_reads(&f, &model, &mut rng);
    }
    // As sealing a segment and a clean close do.
    f.set_len(model.len() as u64).unwrap();
    drop(f);
    assert!(
        std::fs::read(&path).unwrap() == model,
        "a cut to the data's length writes what was staged and leaves no padding"
    );
}

#[test]
fn dropping_a_file_leaves_the_file_alone() {
    // A replica restarted after a fence reopens its log while the old instance may still be held (a
    // reader, the supervisor): the old one's drop must neither write its staged bytes nor cut the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.log");
    let old = DirectFile::open(&path, true).unwrap();
    old.write_all_vectored_at(&[IoSlice::new(&[1u8; 100])], 0)
        .unwrap();
    old.sync_data().unwrap();
    old.write_all_vectored_at(&[IoSlice::new(&[9u8; 50])], 100)
        .unwrap();
    let new = DirectFile::open(&path, false).unwrap();
    new.set_len(100).unwrap();
    new.write_all_vectored_at(&[IoSlice::new(&[2u8; 5000])], 100)
        .unwrap();
    new.sync_data().unwrap();
    drop(old);
    let mut want = vec![1u8; 100];
    want.extend_from_slice(&[2u8; 5000]);
    new.set_len(5100).unwrap();
    assert!(std::fs::read(&path).unwrap() == want);
}

#[test]
fn reads_running_beside_appends_and_fsyncs_see_the_bytes_appended() {
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(DirectFile::open(&dir.path().join("c.log"), true).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (f, done) = (f.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(3);
            let mut len = 0u64;
            for i in 0..3000 {
                let n = rng.gen_range(0..9000) + 1;
                let data: Vec<u8> = (len..len + n).map(pattern).collect();
                f.write_all_vectored_at(&[IoSlice::new(&data)], len)
                    .unwrap();
                len += n;
                if i % 4 == 0 {
                    f.sync_data().unwrap();
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = StdRng::seed_from_u64(11);
    let mut reads = 0u64;
    while !done.load(Ordering::SeqCst) || reads < 1000 {
        let len = f.len().unwrap();
        let start = rng.gen_range(0..len + 1);
        let n = rng.gen_range(0..(len - start).min(64 * 1024) + 1);
        let mut buf = vec![0u8; n as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        for (k, b) in buf.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(start + k as u64),
                "byte {} of the file",
                start + k as u64
            );
        }
        reads += 1;
    }
    writer.join().unwrap();
}

/// (base offset, length) of every segment log file in `dir`, by base offset (the last is the active one).
fn log_files(dir: &Path) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.metadata().unwrap().len()))
        })
        .collect();
    out.sort();
    out
}

/// Whether the log file holds whole batches and nothing after them (no padding).
fn ends_on_its_last_batch(dir: &Path, base_offset: u64) -> bool {
    let bytes = std::fs::read(crate::segment::paths(dir, base_offset).0).unwrap();
    let mut pos = 0;
    while pos < bytes.len() {
        match batch::BatchHeader::parse(&bytes[pos..]) {
            Ok(h) if h.batch_len > 0 => pos += h.batch_len as usize,
            _ => return false,
        }
    }
    pos == bytes.len()
}

/// A crash of the process: the log is never dropped (no flush of staged bytes, no padding cut), and its
/// memory stays leaked, as a killed process's would be gone.
fn crash(log: crate::PartitionLog) {
    std::mem::forget(log);
}

#[test]
fn a_crash_leaves_padding_and_a_lost_staged_tail_that_recovery_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open_with(Arc::new(DirectDisk), dir.path()).unwrap();
    fill(&mut log, 3, 2);
    fill_unsynced(&mut log, 2, 2);
    crash(log);
    let (active, len) = *log_files(dir.path()).last().unwrap();
    assert!(!ends_on_its_last_batch(dir.path(), active));
    assert!(
        len.is_multiple_of(BLOCK_BYTES as u64),
        "the premise: the file ends in padding to a whole block ({len} bytes)"
    );
    let (log, rec) = open_with(Arc::new(DirectDisk), dir.path()).unwrap();
    assert!(
        rec.damage.is_none(),
        "padding past the watermark is not damage"
    );
    assert_eq!(
        log.last_raft_index(),
        3,
        "every fsynced batch, and only those"
    );
    assert_eq!(values(&log, 0).len(), 6);
}

#[test]
fn sealed_segments_and_a_clean_close_end_on_their_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open_with(Arc::new(DirectDisk), dir.path()).unwrap();
    fill(&mut log, 200, 5);
    assert!(log.segment_count() > 3, "small segments roll");
    let files = log_files(dir.path());
    let sealed = &files[..files.len() - 1];
    for &(base, _) in sealed {
        assert!(
            ends_on_its_last_batch(dir.path(), base),
            "sealed segment {base}"
        );
    }
    assert!(
        sealed
            .iter()
            .any(|(_, len)| !len.is_multiple_of(BLOCK_BYTES as u64)),
        "the premise: some sealed segments do not end on a block"
    );
    crash(log);
    // A sealed segment with padding would be damage: none is.
    let (mut log, rec) = open_with(Arc::new(DirectDisk), dir.path()).unwrap();
    assert!(rec.damage.is_none(), "{:?}", rec.damage);
    assert_eq!(values(&log, 0).len(), 1000);
    log.close().unwrap();
    drop(log);
    let (active, _) = *log_files(dir.path()).last().unwrap();
    assert!(
        ends_on_its_last_batch(dir.path(), active),
        "a clean close cuts the padding"
    );
    let (log, rec) = open_with(Arc::new(DirectDisk), dir.path()).unwrap();
    assert_eq!(
        rec.scanned_segments, 0,
        "a clean close needs no recovery scan"
    );
    assert_eq!(values(&log, 0).len(), 1000);
}

fn faulty_direct() -> (Arc<Faults>, Arc<dyn Disk>) {
    let faults = Faults::new();
    faults.direct_logs.store(true, Ordering::SeqCst);
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    (faults, disk)
}

#[test]
fn a_power_cut_at_any_point_of_the_unsynced_tail_keeps_every_fsynced_batch() {
    let keeps: [fn(u64, u64) -> u64; 3] = [|d, _| d, |d, l| d + (l - d) / 2, |_, l| l];
    for keep in keeps {
        let dir = tempfile::tempdir().unwrap();
        let (faults, disk) = faulty_direct();
        let (mut log, _) = open_with(disk.clone(), dir.path()).unwrap();
        fill(&mut log, 40, 3);
        fill_unsynced(&mut log, 30, 3);
        // Staged bytes past the flush threshold would reach the file; these do not: a pending tail.
        crash(log);
        faults.power_cut(keep).unwrap();
        let (log, rec) = open_with(disk, dir.path()).unwrap();
        assert!(rec.damage.is_none(), "{:?}", rec.damage);
        // At least every fsynced batch (sealing a segment fsyncs the unsynced batches in it too), and
        // nothing with a hole.
        let last = log.last_raft_index();
        assert!(last >= 40, "{last}");
        let expected: Vec<String> = (0..3 * last).map(|i| format!("value-{i}")).collect();
        assert_eq!(values(&log, 0), expected);
    }
}

#[test]
fn a_torn_or_refused_write_leaves_the_log_on_a_batch_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, disk) = faulty_direct();
    let (mut log, _) = open_with(disk.clone(), dir.path()).unwrap();
    fill(&mut log, 3, 2);
    let append = |log: &mut crate::PartitionLog| {
        let offset = log.next_offset();
        let idx = log.last_raft_index() + 1;
        let data = make_batch(offset, 2, 5);
        let h = batch::validate(&data).unwrap();
        log.append(&[Append::new(&data, &h, offset, 1, idx).unwrap()])
            .map(|f| f.sync_data())
    };
    faults.torn_write_bytes.store(30, Ordering::SeqCst);
    assert!(append(&mut log).is_err(), "the torn write fails");
    faults.space_left_bytes.store(10, Ordering::SeqCst);
    assert!(append(&mut log).unwrap_err().is_disk_full());
    faults.space_left_bytes.store(u64::MAX, Ordering::SeqCst);
    append(&mut log).unwrap().unwrap();
    log.mark_durable().unwrap();
    assert_eq!(values(&log, 0).len(), 8);
    log.close().unwrap();
    drop(log);
    let (log, rec) = open_with(disk, dir.path()).unwrap();
    assert!(rec.damage.is_none() && rec.scanned_segments == 0);
    assert_eq!(log.last_raft_index(), 4);
    assert_eq!(values(&log, 0).len(), 8);
}
