//! Replica tests: a cluster of one over real files, publishing, group commit, restart, and a failed fsync.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_protocol::batch::{self, BatchBuilder, Records};
use tokio_util::sync::CancellationToken;

use super::types::Durability;
use super::*;
use crate::replica::raft_log::ReplicaStorage;
use crate::storage::{Disk, Faults, FaultyDisk, LogConfig, OsDisk};

fn wiring(cancel: &CancellationToken, tick_ms: u64) -> Wiring {
    Wiring {
        transport: Arc::new(NoPeers),
        clock: Clock::start(tick_ms, cancel.clone()),
        cancel: cancel.clone(),
        liveness: Default::default(),
    }
}

fn start(
    disk: Arc<dyn Disk>,
    dir: &std::path::Path,
) -> (Replica, tokio::task::JoinHandle<()>, CancellationToken) {
    let (storage, _) = ReplicaStorage::open(
        disk,
        Arc::new(crate::storage::SystemClock),
        dir,
        LogConfig::default(),
        &[1],
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let (r, t) = spawn(
        1,
        "t-0".into(),
        storage,
        ReplicaConfig::default(),
        None,
        wiring(&cancel, ReplicaConfig::default().tick_ms),
    )
    .unwrap();
    (r, t, cancel)
}

async fn publish(r: &Replica, i: u64, d: Durability) -> Result<Ack, ReplicaError> {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, format!("v{i}").as_bytes(), &[]);
    let data = b.finish();
    let h = batch::validate(&data).unwrap();
    r.publish(data, h, d).await
}

async fn wait_leader(r: &Replica) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !r.is_serving() {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn read_all(r: &Replica) -> Vec<String> {
    let f = r.fetch(0, 1 << 24).unwrap();
    f.batches
        .into_iter()
        .flat_map(|b| {
            let h = batch::validate(&b).unwrap();
            Records::new(b, h)
                .map(|x| String::from_utf8(x.unwrap().value.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn publishes_are_durable_ordered_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (r, task, cancel) = start(Arc::new(OsDisk), dir.path());
    wait_leader(&r).await;
    let futs: Vec<_> = (0..200)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { publish(&r, i, Durability::Quorum).await })
        })
        .collect();
    let mut written = Vec::new();
    for (i, f) in futs.into_iter().enumerate() {
        written.push((f.await.unwrap().unwrap().base_offset, format!("v{i}")));
    }
    let mut offsets: Vec<u64> = written.iter().map(|(o, _)| *o).collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (0..200).collect::<Vec<_>>(),
        "every publish gets its own offset"
    );
    assert_eq!(r.high_watermark(), 200);
    assert_eq!(
        publish(&r, 200, Durability::Leader)
            .await
            .unwrap()
            .base_offset,
        200
    );
    cancel.cancel();
    task.await.unwrap();
    let (r, task, cancel) = start(Arc::new(OsDisk), dir.path());
    wait_leader(&r).await;
    // After restart everything written is committed again and readable, then appends continue.
    assert_eq!(
        publish(&r, 201, Durability::Quorum)
            .await
            .unwrap()
            .base_offset,
        201
    );
    let vals = read_all(&r);
    assert_eq!(vals.len(), 202);
    // Each value at the offset its acknowledgement named, then the two published alone.
    for (offset, value) in &written {
        assert_eq!(&vals[*offset as usize], value, "offset {offset}");
    }
    assert_eq!(vals[200..], ["v200", "v201"]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn failed_fsync_fences_and_never_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (r, task, _cancel) = start(
        Arc::new(FaultyDisk {
            faults: faults.clone(),
        }),
        dir.path(),
    );
    wait_leader(&r).await;
    publish(&r, 0, Durability::Quorum).await.unwrap();
    faults.fail_fsync.store(true, Ordering::SeqCst);
    let err = publish(&r, 1, Durability::Quorum).await.unwrap_err();
    assert!(matches!(err, ReplicaError::Failed(_)), "{err}");
    task.await.unwrap();
    assert!(r.failure().is_some());
    assert!(matches!(
        publish(&r, 2, Durability::Quorum).await,
        Err(ReplicaError::Failed(_))
    ));
    assert!(r.fetch(0, 100).is_err(), "a fenced replica serves nothing");
}

/// A replica on a disk that fills up once `fill` runs: the publish after it is refused as a full disk, the
/// replica stops, and after a restart on `then` (with room again) exactly the acknowledged data is there.
async fn full_disk_refuses_without_acknowledging_on(
    faults: Arc<Faults>,
    fill: impl FnOnce(&Faults),
    then: Arc<dyn Disk>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (r, task, _cancel) = start(
        Arc::new(FaultyDisk {
            faults: faults.clone(),
        }),
        dir.path(),
    );
    wait_leader(&r).await;
    publish(&r, 0, Durability::Quorum).await.unwrap();
    fill(&faults);
    let err = publish(&r, 1, Durability::Quorum).await.unwrap_err();
    assert!(matches!(err, ReplicaError::DiskFull(_)), "{err}");
    task.await.unwrap();
    let (r, task, cancel) = start(then, dir.path());
    wait_leader(&r).await;
    publish(&r, 2, Durability::Quorum).await.unwrap();
    assert_eq!(read_all(&r), vec!["v0", "v2"]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn full_disk_refuses_without_acknowledging() {
    full_disk_refuses_without_acknowledging_on(
        Faults::new(),
        |f| f.space_left_bytes.store(10, Ordering::SeqCst),
        Arc::new(OsDisk),
    )
    .await;
}

#[tokio::test]
async fn a_disk_found_full_at_the_fsync_refuses_as_a_full_disk() {
    // With direct I/O the log's bytes are written at the fsync: ENOSPC comes from there, and publishers
    // must see a full disk (RESOURCE_EXHAUSTED), not a generic failure.
    let faults = Faults::new();
    faults.direct_logs.store(true, Ordering::SeqCst);
    full_disk_refuses_without_acknowledging_on(
        faults,
        |f| f.fsync_no_space.store(true, Ordering::SeqCst),
        Arc::new(crate::storage::DirectDisk),
    )
    .await;
}

#[tokio::test]
async fn interval_policy_fsyncs_on_its_timer_not_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let (storage, _) = ReplicaStorage::open(
        disk,
        Arc::new(crate::storage::SystemClock),
        dir.path(),
        LogConfig::default(),
        &[1],
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let config = ReplicaConfig {
        fsync: FsyncPolicy::IntervalMs(60_000),
        tick_ms: 10,
        ..ReplicaConfig::default()
    };
    let (r, task) = spawn(
        1,
        "t-0".into(),
        storage,
        config,
        None,
        wiring(&cancel, config.tick_ms),
    )
    .unwrap();
    wait_leader(&r).await;
    let before = faults.fsyncs.load(Ordering::SeqCst);
    for i in 0..20 {
        publish(&r, i, Durability::Quorum).await.unwrap();
    }
    assert_eq!(
        faults.fsyncs.load(Ordering::SeqCst),
        before,
        "no fsync per batch with an interval policy"
    );
    cancel.cancel();
    task.await.unwrap();
    assert!(
        faults.fsyncs.load(Ordering::SeqCst) > before,
        "a clean close fsyncs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let (r, task, cancel) = start(
        Arc::new(FaultyDisk {
            faults: faults.clone(),
        }),
        dir.path(),
    );
    wait_leader(&r).await;
    let before = faults.fsyncs.load(Ordering::SeqCst);
    let futs: Vec<_> = (0..500)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { publish(&r, i, Durability::Quorum).await })
        })
        .collect();
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let fsyncs = faults.fsyncs.load(Ordering::SeqCst) - before;
    // 500 publishes in flight at once, up to 1,024 proposals per Raft step: at least five per fsync on
    // average (an fsync per publish, or nearly, is not group commit).
    assert!(
        (1..=100).contains(&fsyncs),
        "group commit: {fsyncs} fsyncs for 500 acknowledged publishes"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// Fault matrix row 3 (LazyFS's "lose un-fsynced writes"), on the storage seam: publishes run until a
/// number of them are acknowledged, the replica stops dead (its task aborted, no clean shutdown), and then
/// every file loses what was written after its last fsync, but for a prefix of it that differs per round
/// (none, some, all: dirty pages that did reach the disk, a torn tail). Reopened, the log holds every
/// acknowledged value at its acknowledged offset. Acknowledging before the fsync would fail this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_nothing_acknowledged() {
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let (r, task, _cancel) = start(
            Arc::new(FaultyDisk {
                faults: faults.clone(),
            }),
            dir.path(),
        );
        wait_leader(&r).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let publishers: Vec<_> = (0..400u64)
            .map(|i| {
                let (r, tx) = (r.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(ack) = publish(&r, i, Durability::Quorum).await {
                        let _ = tx.send((ack.base_offset, format!("v{i}")));
                    }
                })
            })
            .collect();
        drop(tx);
        // Cut while publishes are still in flight.
        let mut acked = Vec::new();
        while acked.len() < 100 + 50 * round as usize {
            acked.push(rx.recv().await.expect("publishes keep being acknowledged"));
        }
        task.abort();
        let _ = task.await;
        // An fsync still running on the blocking pool must not count as done after the cut.
        faults.fail_fsync.store(true, Ordering::SeqCst);
        for p in publishers {
            let _ = p.await;
        }
        while let Ok(a) = rx.try_recv() {
            acked.push(a);
        }
        drop(r);
        faults
            .power_cut(|durable, len| durable + (len - durable) * round / 3)
            .unwrap();

        let (r, task, cancel) = start(Arc::new(OsDisk), dir.path());
        wait_leader(&r).await;
        let values = read_all(&r);
        for (offset, value) in &acked {
            assert_eq!(
                values.get(*offset as usize),
                Some(value),
                "round {round}: acknowledged {value} at offset {offset} is gone after the power cut"
            );
        }
        cancel.cancel();
        task.await.unwrap();
    }
}

/// M2 in the durability audit: a replica task that panicked kept claiming leadership and served a frozen
/// log. Now whatever ends the task clears leadership, refuses reads and says why.
#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_panicked_replica_stops_claiming_leadership_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (r, task, _cancel) = start(Arc::new(OsDisk), dir.path());
    wait_leader(&r).await;
    publish(&r, 1, Durability::Quorum).await.unwrap();
    assert!(r.fetch(0, 1 << 20).is_ok());
    r.inject_panic().await;
    let joined = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("the task ends");
    assert!(joined.is_err_and(|e| e.is_panic()), "it panicked");
    assert!(!r.is_serving(), "no longer claims to serve");
    assert_eq!(r.leader(), 0, "no longer claims to lead");
    assert!(r.has_stopped());
    assert!(r.failure().is_some_and(|f| f.contains("panicked")));
    assert!(r.fetch(0, 1 << 20).is_err(), "the frozen log is not served");
    assert!(publish(&r, 2, Durability::Quorum).await.is_err());
}
