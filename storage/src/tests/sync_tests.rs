//! The durable watermark under an fsync that runs while the log is written on (the replica's asynchronous
//! persistence). The helpers are `tests.rs`'s.

use super::*;

#[test]
fn an_fsync_covers_only_what_was_written_before_it_started() {
    // The replica writes on while an fsync runs. When the fsync returns, the watermark moves to where the
    // log ended when it started, not to where it ends now: a crash that tears a batch written meanwhile
    // finds a torn tail to cut, not damage inside what was fsynced.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    fill(&mut log, 5, 4);
    fill_unsynced(&mut log, 1, 4);
    let at = log.sync_point();
    let covered_len = log.watermark().len;
    fill_unsynced(&mut log, 1, 4);
    log.mark_durable_to(at).unwrap();
    assert!(log.watermark().len > covered_len);
    assert_eq!(log.watermark().raft_index, 6);
    // A point taken before a cut names what may no longer be there: it moves nothing.
    let stale = log.sync_point();
    log.truncate_from_raft_index(7).unwrap();
    fill_unsynced(&mut log, 2, 4);
    let before = log.watermark();
    log.mark_durable_to(stale).unwrap();
    assert_eq!(
        log.watermark(),
        before,
        "a point from before a cut moves nothing"
    );
    log.truncate_from_raft_index(7).unwrap();
    fill_unsynced(&mut log, 1, 4);
    drop(log);
    let path = active_segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&path, &bytes).unwrap();
    let (log, rec) = open_with(Arc::new(OsDisk), dir.path()).unwrap();
    assert!(rec.damage.is_none(), "{:?}", rec.damage);
    assert!(
        rec.torn_tail.is_some(),
        "the batch written during the fsync is a torn tail"
    );
    assert_eq!(values(&log, 0).len(), 24);
}
