//! Storage tests: round trips across rolls, recovery from torn tails, detection of corruption, and faults
//! injected through the disk seam.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchBuilder, Records};

use super::disk::{Disk, Faults, FaultyDisk, OsDisk};
use super::log::{Append, LogConfig, PartitionLog};
use super::segment::SegmentLimits;
use super::StorageError;

fn small_config() -> LogConfig {
    LogConfig {
        limits: SegmentLimits {
            segment_bytes: 8 * 1024,
            batch_bytes_max: 64 * 1024,
            index_interval_bytes: 512,
        },
        segment_ms: 0,
        retention_bytes: 0,
        retention_ms: 0,
    }
}

fn make_batch(first: u64, n: u64, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(ts);
    for i in first..first + n {
        b.push(
            ts,
            Some(format!("k{i}").as_bytes()),
            format!("value-{i}").as_bytes(),
            &[],
        );
    }
    b.finish()
}

/// Appends `batches` batches of `per` records with consecutive Raft indexes, like the Raft driver does.
fn fill(log: &mut PartitionLog, batches: u64, per: u64) {
    for _ in 0..batches {
        let offset = log.next_offset();
        let idx = log.last_raft_index() + 1;
        let data = make_batch(offset, per, 1_000 + idx as i64);
        let h = batch::validate(&data).unwrap();
        let f = log
            .append(&[Append::new(&data, &h, offset, 1, idx)])
            .unwrap();
        f.sync_data().unwrap();
    }
}

fn values(log: &PartitionLog, from: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let batches = log.read(offset, 4096, u64::MAX).unwrap();
        if batches.is_empty() {
            return out;
        }
        for b in batches {
            let h = batch::validate(&b).unwrap();
            for r in Records::new(b.clone(), h) {
                let r = r.unwrap();
                if r.offset >= offset {
                    out.push(String::from_utf8(r.value.to_vec()).unwrap());
                }
            }
            offset = h.next_offset();
        }
    }
}

fn open(dir: &std::path::Path) -> Result<PartitionLog, StorageError> {
    PartitionLog::open(Arc::new(OsDisk), dir, small_config(), 1, 0).map(|(l, _)| l)
}

#[test]
fn round_trip_across_rolls_and_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 200, 5);
    assert!(log.segment_count() > 3, "small segments roll");
    assert_eq!(log.next_offset(), 1000);
    assert_eq!(log.last_raft_index(), 200);
    let all = values(&log, 0);
    assert_eq!(all.len(), 1000);
    assert_eq!(all[777], "value-777");
    assert_eq!(values(&log, 998), vec!["value-998", "value-999"]);
    log.close().unwrap();
    drop(log);
    let (log, rec) =
        PartitionLog::open(Arc::new(OsDisk), dir.path(), small_config(), 1, 0).unwrap();
    assert_eq!(
        rec.scanned_segments, 0,
        "a clean close needs no recovery scan"
    );
    assert_eq!(log.next_offset(), 1000);
    assert_eq!(log.last_raft_index(), 200);
    assert_eq!(values(&log, 0).len(), 1000);
    assert_eq!(
        log.header_by_raft_index(150).unwrap().unwrap().raft_index,
        150
    );
}

#[test]
fn crash_reopen_scans_only_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 100, 3);
    let segs = log.segment_count();
    drop(log); // no close: like kill -9 after the fsyncs
    let (log, rec) =
        PartitionLog::open(Arc::new(OsDisk), dir.path(), small_config(), 1, 0).unwrap();
    assert_eq!(rec.scanned_segments, 1);
    assert_eq!(log.segment_count(), segs);
    assert_eq!(values(&log, 0).len(), 300);
}

fn active_segment_path(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn garbage_and_cut_tails_are_truncated() {
    for damage in ["garbage", "cut", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 10, 4);
        drop(log);
        let path = active_segment_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        match damage {
            "garbage" => bytes.extend((0..300u32).map(|i| (i * 7 + 3) as u8)),
            "zeros" => bytes.extend([0u8; 100]),
            _ => bytes.truncate(full - 5),
        }
        std::fs::write(&path, &bytes).unwrap();
        let (mut log, rec) =
            PartitionLog::open(Arc::new(OsDisk), dir.path(), small_config(), 1, 0).unwrap();
        let torn = rec.torn_tail.expect("a torn tail is reported");
        let expected = if damage == "cut" { 36 } else { 40 };
        assert_eq!(values(&log, 0).len(), expected, "{damage}");
        assert!(torn.cut_bytes > 0);
        // The broker serves on: appends continue after the cut.
        fill(&mut log, 1, 4);
        assert_eq!(values(&log, 0).len(), expected + 4);
    }
}

#[test]
fn flipped_byte_in_an_old_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 100, 3);
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[200] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    let log = open(dir.path()).unwrap();
    let err = log.read(0, 1 << 20, u64::MAX).unwrap_err();
    match &err {
        StorageError::Corrupt { path, .. } => assert_eq!(path, &first),
        other => panic!("expected corruption, got {other}"),
    }
    assert!(
        err.to_string().contains("00000000000000000000.log"),
        "{err}"
    );
    // Later segments still read.
    assert!(!log.read(200, 1 << 20, u64::MAX).unwrap().is_empty());
}

#[test]
fn flipped_byte_inside_the_active_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 10, 3);
    drop(log);
    let path = active_segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1; // inside the first batch, intact batches follow
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { position: 0, .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "nothing acknowledged is truncated"
    );
}

#[test]
fn missing_or_corrupt_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 100, 3);
    log.close().unwrap();
    drop(log);
    std::fs::remove_file(dir.path().join(format!("{:020}.index", 0))).unwrap();
    let log = open(dir.path()).unwrap();
    assert_eq!(values(&log, 0).len(), 300);
}

#[test]
fn raft_truncation_and_time_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 60, 2);
    log.truncate_from_raft_index(41).unwrap();
    assert_eq!(log.last_raft_index(), 40);
    assert_eq!(log.next_offset(), 80);
    fill(&mut log, 5, 2);
    assert_eq!(log.last_raft_index(), 45);
    assert_eq!(values(&log, 0).len(), 90);
    // Batch i has timestamp 1000 + i.
    assert_eq!(log.offset_for_time(1_010).unwrap(), 18);
    assert_eq!(log.offset_for_time(0).unwrap(), 0);
    assert_eq!(log.offset_for_time(99_999).unwrap(), log.next_offset());
}

#[test]
fn retention_by_bytes_keeps_unapplied_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config();
    cfg.retention_bytes = 16 * 1024;
    let (mut log, _) = PartitionLog::open(Arc::new(OsDisk), dir.path(), cfg, 1, 0).unwrap();
    fill(&mut log, 300, 3);
    assert!(
        log.retention_plan(0, 1).unwrap().is_none(),
        "nothing applied, nothing deleted"
    );
    let (count, idx, term) = log.retention_plan(0, u64::MAX).unwrap().unwrap();
    assert_eq!(term, 1);
    log.delete_prefix(count).unwrap();
    assert_eq!(log.first_raft_index(), idx + 1);
    assert!(log.size_bytes() <= 16 * 1024 + 8 * 1024);
    let start = log.start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 100, u64::MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(values(&log, start).len() as u64, 900 - start);
}

#[test]
fn failed_fsync_and_full_disk_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let (mut log, _) = PartitionLog::open(disk, dir.path(), small_config(), 1, 0).unwrap();
    fill(&mut log, 3, 2);
    faults.fail_fsync.store(true, Ordering::SeqCst);
    let data = make_batch(6, 2, 5);
    let h = batch::validate(&data).unwrap();
    let f = log.append(&[Append::new(&data, &h, 6, 1, 4)]).unwrap();
    assert!(f.sync_data().is_err());
    faults.fail_fsync.store(false, Ordering::SeqCst);
    // Disk full: the write fails, the file keeps ending on a batch boundary.
    faults.space_left_bytes.store(10, Ordering::SeqCst);
    let data = make_batch(8, 2, 5);
    let h = batch::validate(&data).unwrap();
    let err = log.append(&[Append::new(&data, &h, 8, 1, 5)]).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(log.last_raft_index(), 4);
    // A torn write: half a batch reaches the file, recovery cuts it.
    let faults2 = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults2.clone(),
    });
    drop(log);
    let (mut log, _) = PartitionLog::open(disk, dir.path(), small_config(), 1, 0).unwrap();
    faults2.torn_write_bytes.store(30, Ordering::SeqCst);
    let data = make_batch(8, 2, 5);
    let h = batch::validate(&data).unwrap();
    assert!(log.append(&[Append::new(&data, &h, 8, 1, 5)]).is_err());
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(log.last_raft_index(), 4);
    assert_eq!(values(&log, 0).len(), 8);
}

#[test]
fn a_damaged_stamp_outside_the_crc_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 10, 3);
    drop(log);
    let path = active_segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Byte 2 of the second batch's base_offset (batches here are 139 bytes).
    let second = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    bytes[second + 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { position, .. } if *position == second as u64),
        "{err}"
    );
}

#[test]
fn raft_truncation_back_into_a_sealed_segment_appends_on() {
    // Found in review: truncating across a roll left a sealed segment active and the next append panicked.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 120, 2);
    assert!(log.segment_count() > 2);
    log.truncate_from_raft_index(41).unwrap();
    assert_eq!(log.last_raft_index(), 40);
    fill(&mut log, 100, 2);
    assert_eq!(log.last_raft_index(), 140);
    assert_eq!(values(&log, 0).len(), 280);
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(values(&log, 0).len(), 280);
}

#[test]
fn an_interrupted_retention_or_snapshot_install_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 200, 3);
    let segs = log.segment_count();
    assert!(segs > 3);
    // Retention moved the marker past the first two segments, then crashed before deleting them.
    let (count, idx, _) = {
        let mut cfg = small_config();
        cfg.retention_bytes = 1;
        log.set_config(cfg);
        log.retention_plan(0, u64::MAX).unwrap().unwrap()
    };
    assert!(count >= 2);
    log.align_start(idx + 1, 0).unwrap();
    assert_eq!(log.first_raft_index(), idx + 1);
    assert_eq!(log.segment_count(), segs - count);
    // A snapshot install wrote a marker past the whole log, then crashed before resetting it.
    let end = log.last_raft_index();
    log.align_start(end + 50, 9_999).unwrap();
    assert_eq!(
        (log.first_raft_index(), log.next_offset()),
        (end + 50, 9_999)
    );
    assert_eq!(log.last_raft_index(), end + 49);
}
