//! Storage tests: round trips across rolls, recovery from torn tails, detection of corruption, and faults
//! injected through the disk seam.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchBuilder, Records};

use super::disk::{Disk, OsDisk};
use super::faulty::{Faults, FaultyDisk};
use super::log::{Append, LogConfig, PartitionLog};
use super::segment::SegmentLimits;
use super::StorageError;

pub(crate) fn small_config() -> LogConfig {
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

pub(crate) fn make_batch(first: u64, n: u64, ts: i64) -> Bytes {
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
pub(crate) fn fill(log: &mut PartitionLog, batches: u64, per: u64) {
    for _ in 0..batches {
        let offset = log.next_offset();
        let idx = log.last_raft_index() + 1;
        let data = make_batch(offset, per, 1_000 + idx as i64);
        let h = batch::validate(&data).unwrap();
        let f = log
            .append(&[Append::new(&data, &h, offset, 1, idx).unwrap()])
            .unwrap();
        f.sync_data().unwrap();
        // As the replica driver does after each fsync, before it acknowledges anything.
        log.mark_durable().unwrap();
    }
}

/// Appends `batches` batches like [`fill`] but fsyncs nothing: what a crash finds past the watermark.
pub(crate) fn fill_unsynced(log: &mut PartitionLog, batches: u64, per: u64) {
    for _ in 0..batches {
        let offset = log.next_offset();
        let idx = log.last_raft_index() + 1;
        let data = make_batch(offset, per, 1_000 + idx as i64);
        let h = batch::validate(&data).unwrap();
        log.append(&[Append::new(&data, &h, offset, 1, idx).unwrap()])
            .unwrap();
    }
}

pub(crate) fn values(log: &PartitionLog, from: u64) -> Vec<String> {
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
    open_with(Arc::new(OsDisk), dir).map(|(l, _)| l)
}

pub(crate) fn open_with(
    disk: Arc<dyn Disk>,
    dir: &std::path::Path,
) -> Result<(PartitionLog, super::Recovery), StorageError> {
    PartitionLog::open(
        disk,
        Arc::new(super::SystemClock),
        dir,
        small_config(),
        1,
        0,
        1,
    )
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
    let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
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
    let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
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
fn garbage_and_cut_tails_past_the_watermark_are_truncated() {
    for damage in ["garbage", "cut", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 10, 4);
        // One more batch written after the last fsync: the crash may tear it.
        fill_unsynced(&mut log, 1, 4);
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
        let (mut log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
        assert!(rec.damage.is_none(), "{damage}: {:?}", rec.damage);
        let torn = rec.torn_tail.expect("a torn tail is reported");
        let expected = if damage == "cut" { 40 } else { 44 };
        assert_eq!(values(&log, 0).len(), expected, "{damage}");
        assert!(torn.cut_bytes > 0);
        // The broker serves on: appends continue after the cut.
        fill(&mut log, 1, 4);
        assert_eq!(values(&log, 0).len(), expected + 4);
    }
}

#[test]
fn a_cut_into_fsynced_data_is_damage_not_a_torn_tail() {
    // H1 in the durability audit: the length field of a batch well inside the active segment, a zeroed
    // block across a batch boundary, or a file cut short of what was fsynced. Before the durable watermark
    // each was taken for a torn tail and everything after it (acknowledged, maybe committed) was cut.
    for damage in ["length-field", "zeroed-block", "truncated"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 40, 3);
        assert_eq!(
            log.segment_count(),
            1,
            "{damage}: all in the active segment"
        );
        drop(log);
        let path = active_segment_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        let tenth = 9 * len;
        match damage {
            "length-field" => bytes[tenth + 25] ^= 0x40,
            "zeroed-block" => bytes[tenth - 20..tenth + 80].fill(0),
            _ => bytes.truncate(bytes.len() - 3 * len - 7),
        }
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
        assert!(rec.torn_tail.is_none(), "{damage}: cut as a torn tail");
        let d = rec.damage.expect("damage is reported");
        assert_eq!(
            d.evidence_raft_index, 40,
            "{damage}: the log reached raft index 40"
        );
        assert!(log.has_pending_cut());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{damage}: nothing is cut before the repair marker"
        );
        let mut log = log;
        log.finish_cut().unwrap();
        assert_eq!(log.last_raft_index(), d.at.raft_index - 1, "{damage}");
        drop(log);
        let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
        assert!(rec.damage.is_none() && rec.torn_tail.is_none());
        assert_eq!(values(&log, 0).len() as u64, 3 * (d.at.raft_index - 1));
    }
}

#[test]
fn without_a_watermark_a_bad_tail_is_damage() {
    // A lost or damaged watermark file: recovery cannot tell what was fsynced, so it assumes everything.
    for watermark in ["deleted", "damaged"] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 5, 3);
        drop(log);
        let w = dir.path().join(super::durable::FILE_NAME);
        match watermark {
            "deleted" => std::fs::remove_file(&w).unwrap(),
            _ => {
                let mut b = std::fs::read(&w).unwrap();
                b[17] ^= 1;
                std::fs::write(&w, b).unwrap();
            }
        }
        let path = active_segment_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend([7u8; 50]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
        assert!(rec.damage.is_some(), "{watermark}");
    }
}

#[test]
fn after_a_failed_fsync_nothing_past_the_watermark_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 5, 3);
    fill_unsynced(&mut log, 2, 3); // intact in the page cache, never made durable
    log.note_fsync_failed();
    drop(log);
    let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
    assert!(rec.damage.is_none());
    assert!(rec.torn_tail.is_some(), "the unsynced batches are cut");
    assert_eq!(log.last_raft_index(), 5);
}

#[test]
fn recovery_makes_the_page_cache_tail_durable_before_counting_it() {
    // H3 in the durability audit: after a process crash, batches the page cache still holds read back
    // intact; they are counted (and may be acknowledged) only once recovery has fsynced them.
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let (mut log, _) = open_with(disk.clone(), dir.path()).unwrap();
    fill(&mut log, 3, 2);
    fill_unsynced(&mut log, 4, 2);
    drop(log); // a process crash: the page cache keeps the 4 unsynced batches
    let (log, _) = open_with(disk.clone(), dir.path()).unwrap();
    assert_eq!(log.last_raft_index(), 7);
    drop(log);
    faults.power_cut(|durable, _| durable).unwrap();
    let (log, rec) = open_with(disk, dir.path()).unwrap();
    assert!(rec.damage.is_none());
    assert_eq!(
        log.last_raft_index(),
        7,
        "what the first recovery counted survived the power cut"
    );
}

#[test]
fn a_wrong_index_entry_never_makes_a_read_skip_records() {
    // H4(a): an entry whose relative offset is lowered but still increasing passes the sanity check.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 100, 3);
    log.close().unwrap();
    drop(log);
    let idx = dir.path().join(format!("{:020}.index", 0));
    let mut b = std::fs::read(&idx).unwrap();
    assert!(b.len() >= 36, "the index has entries");
    // Entry 2's rel_offset: between entry 1's and its own.
    let e1 = u32::from_le_bytes(b[12..16].try_into().unwrap());
    let e2 = u32::from_le_bytes(b[24..28].try_into().unwrap());
    let wrong = e1 + (e2 - e1) / 2;
    b[24..28].copy_from_slice(&wrong.to_le_bytes());
    std::fs::write(&idx, b).unwrap();
    let log = open(dir.path()).unwrap();
    for offset in [u64::from(wrong), u64::from(wrong) + 1, u64::from(e2)] {
        let first = log.read(offset, 1, u64::MAX).unwrap();
        let h = batch::BatchHeader::parse(&first[0]).unwrap();
        assert!(
            h.base_offset <= offset && offset < h.next_offset(),
            "offset {offset} served from a batch at {}",
            h.base_offset
        );
    }
    assert_eq!(values(&log, 0).len(), 300);
}

#[test]
fn a_zeroed_header_in_a_trusted_segment_is_an_error_not_a_hang() {
    // H4(b): a zeroed header (batch_len 0) made every lookup past it loop forever.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 100, 3);
    log.close().unwrap();
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    bytes[2 * len..2 * len + 70].fill(0);
    std::fs::write(&first, &bytes).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let log = open(&path).unwrap();
        let lookups = [
            log.read(9, 1 << 20, u64::MAX).map(|_| ()),
            log.header_by_raft_index(4).map(|_| ()),
            log.offset_for_time(1_004).map(|_| ()),
        ];
        let _ = tx.send(
            lookups
                .iter()
                .map(|r| matches!(r, Err(e) if e.is_damage()))
                .collect::<Vec<_>>(),
        );
    });
    let damage = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("lookups past a zeroed header return within 20 s");
    assert_eq!(damage, [true; 3], "each lookup reports damage");
}

#[test]
fn an_unreadable_block_is_an_error_not_a_crash() {
    // H5: log reads are positioned reads, so EIO is an error the replica fences on (through a map it was a
    // SIGBUS that killed the broker).
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let (mut log, _) = open_with(disk.clone(), dir.path()).unwrap();
    fill(&mut log, 100, 3);
    let first = dir.path().join(format!("{:020}.log", 0));
    faults.make_unreadable(&first, 1000..1512);
    let err = log.read(0, 1 << 20, u64::MAX).unwrap_err();
    assert!(
        matches!(err, StorageError::Unreadable { .. }) && err.is_damage(),
        "{err}"
    );
    assert!(log.batches_by_raft_index(1, 50, 1 << 20).is_err());
    // Reopening finds it too: sealed segments are trusted, but the open scan of the unclean active
    // segment is not disturbed and later reads still fail cleanly.
    drop(log);
    let (log, _) = open_with(disk, dir.path()).unwrap();
    assert!(log.read(0, 1 << 20, u64::MAX).is_err());
}

#[test]
fn retention_forever_and_huge_intervals_never_turn_negative() {
    // C1: `u64::MAX as i64` is -1, so "forever" deleted every sealed segment; the same cast rolled a
    // segment per batch for a huge segment_ms.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config();
    cfg.retention_ms = u64::MAX;
    cfg.segment_ms = u64::MAX;
    let (mut log, _) = PartitionLog::open(
        Arc::new(OsDisk),
        Arc::new(super::SystemClock),
        dir.path(),
        cfg,
        1,
        0,
        1,
    )
    .unwrap();
    fill(&mut log, 200, 3);
    let segments = log.segment_count();
    assert!(
        segments > 2 && segments < 100,
        "rolls by size only: {segments}"
    );
    let now = 10_000_000;
    assert!(log.retention_plan(now, u64::MAX).unwrap().is_none());
    cfg.retention_ms = 1;
    log.set_config(cfg);
    assert!(log.retention_plan(now, u64::MAX).unwrap().is_some());
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
fn a_flipped_byte_inside_the_active_segment_is_damage_and_nothing_is_cut_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 10, 3);
    drop(log);
    let path = active_segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1; // inside the first batch, intact batches follow
    std::fs::write(&path, &bytes).unwrap();
    let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
    let d = rec.damage.expect("damage");
    assert_eq!((d.at.position, d.at.raft_index), (0, 1));
    assert_eq!(d.evidence_raft_index, 10);
    assert_eq!(
        log.last_raft_index(),
        0,
        "nothing below the damage is served"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "nothing acknowledged is truncated before the repair marker"
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
    let (mut log, _) = PartitionLog::open(
        Arc::new(OsDisk),
        Arc::new(super::SystemClock),
        dir.path(),
        cfg,
        1,
        0,
        1,
    )
    .unwrap();
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
    let (mut log, _) = open_with(disk, dir.path()).unwrap();
    fill(&mut log, 3, 2);
    faults.fail_fsync.store(true, Ordering::SeqCst);
    let data = make_batch(6, 2, 5);
    let h = batch::validate(&data).unwrap();
    let f = log
        .append(&[Append::new(&data, &h, 6, 1, 4).unwrap()])
        .unwrap();
    assert!(f.sync_data().is_err());
    faults.fail_fsync.store(false, Ordering::SeqCst);
    // Disk full: the write fails, the file keeps ending on a batch boundary.
    faults.space_left_bytes.store(10, Ordering::SeqCst);
    let data = make_batch(8, 2, 5);
    let h = batch::validate(&data).unwrap();
    let err = log
        .append(&[Append::new(&data, &h, 8, 1, 5).unwrap()])
        .unwrap_err();
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
    let (mut log, _) = open_with(disk, dir.path()).unwrap();
    faults2.torn_write_bytes.store(30, Ordering::SeqCst);
    let data = make_batch(8, 2, 5);
    let h = batch::validate(&data).unwrap();
    assert!(log
        .append(&[Append::new(&data, &h, 8, 1, 5).unwrap()])
        .is_err());
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(log.last_raft_index(), 4);
    assert_eq!(values(&log, 0).len(), 8);
}

#[test]
fn a_damaged_stamp_is_caught_by_its_checksum() {
    // H2: the stamp (offset, term, index) was outside the CRC; it has a checksum of its own now.
    for (field, at) in [
        ("base_offset", 2),
        ("raft_term", 9),
        ("stamp_crc", 13),
        ("raft_index", 17),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        fill(&mut log, 10, 3);
        drop(log);
        let path = active_segment_path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let second = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        bytes[second + at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
        let d = rec.damage.unwrap_or_else(|| panic!("{field}: not caught"));
        assert_eq!(
            (d.at.position, d.at.raft_index),
            (second as u64, 2),
            "{field}"
        );
    }
}

#[test]
fn a_term_past_the_replicas_term_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 4, 3); // term 1
    drop(log);
    let (_, rec) = PartitionLog::open(
        Arc::new(OsDisk),
        Arc::new(super::SystemClock),
        dir.path(),
        small_config(),
        1,
        0,
        0,
    )
    .unwrap();
    assert!(
        rec.damage.is_some(),
        "a batch of term 1 in a replica at term 0"
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

/// Roll and retention by age read time from the clock the log is handed, never the system clock: with a
/// hand-set clock, a segment rolls exactly when its first batch is `segment_ms` old, and is old enough to
/// delete exactly when its newest record is more than `retention_ms` old.
#[test]
fn roll_and_retention_by_age_follow_the_clock_handed_in() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(super::ManualClock::new(10_000_000));
    let mut cfg = small_config();
    cfg.limits.segment_bytes = 1024 * 1024; // never by size here
    cfg.segment_ms = 60_000;
    cfg.retention_ms = 3_600_000;
    let (mut log, _) =
        PartitionLog::open(Arc::new(OsDisk), clock.clone(), dir.path(), cfg, 1, 0, 1).unwrap();
    fill(&mut log, 5, 2);
    clock.advance(59_999);
    fill(&mut log, 1, 2);
    assert_eq!(log.segment_count(), 1, "not yet a minute old");
    clock.advance(1);
    fill(&mut log, 1, 2);
    assert_eq!(
        log.segment_count(),
        2,
        "a minute old: rolled before the append"
    );
    // `fill` stamps records 1_000 + index ms, more than an hour before the clock: the sealed segment is old.
    let now = log.clock().now_ms();
    assert!(log.retention_plan(now, u64::MAX).unwrap().is_some());
    // Back at a time when its records were young, nothing is old enough.
    assert!(log.retention_plan(1_000, u64::MAX).unwrap().is_none());
}

#[test]
fn a_raft_read_starting_mid_segment_checks_the_first_offset_against_the_batch_before() {
    // A stamp consistent with itself (its checksum recomputed) that claims a wrong offset, on the trusted
    // open after a clean close (no header is checked then). A Raft read starting at that batch checked
    // offsets only within its own call, so it served the batch with the wrong offset to followers.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 6, 3);
    log.close().unwrap();
    drop(log);
    let path = active_segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // The fourth batch (Raft index 4, offsets 9..12) claims offsets 1009..1012.
    let mut at = 0usize;
    for _ in 0..3 {
        at += u32::from_le_bytes(bytes[at + 24..at + 28].try_into().unwrap()) as usize;
    }
    let field = |b: &[u8], i: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[at + i..at + i + n]);
        u64::from_le_bytes(v)
    };
    assert_eq!(
        field(&bytes, 0, 8),
        9,
        "the fourth batch starts at offset 9"
    );
    let stamp = ferry_protocol::stamp::stamp(
        1009,
        field(&bytes, 8, 4),
        field(&bytes, 16, 8),
        field(&bytes, 24, 4) as u32,
        field(&bytes, 28, 4) as u32,
    )
    .unwrap();
    bytes[at..at + stamp.len()].copy_from_slice(&stamp);
    std::fs::write(&path, &bytes).unwrap();
    let log = open(dir.path()).unwrap();
    // A read whose bytes end with the damaged batch (Raft's size limit, or the end of the segment) saw no
    // batch after it to disagree with.
    for high in [5, 7] {
        let err = log
            .batches_by_raft_index(4, high, 1)
            .expect_err("the fourth batch's offset does not follow the third's");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("1009"), "{err}");
    }
    // From the segment's start, the continuity check already caught it.
    assert!(log.batches_by_raft_index(1, 7, 1 << 20).is_err());
}
