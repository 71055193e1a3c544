//! Three replicas of one group on three "brokers" in this process, talking over the real peer transport on
//! 127.0.0.1: replication, leader failover, and no acknowledged publish lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::batch::{self, BatchBuilder, Records};
use tokio_util::sync::CancellationToken;

use super::serve_peer;
use crate::peer::{PeerNetwork, Router};
use crate::replica::raft_log::ReplicaStorage;
use crate::replica::Durability;
use crate::replica::{spawn, Clock, Replica, ReplicaConfig, ReplicaError, Wiring};
use crate::storage::{LogConfig, OsDisk};

const GROUP: u64 = 7;

/// One three-replica cluster at a time in this test binary: `cargo test` runs a binary's tests on parallel
/// threads, and two clusters on two cores stretch each other's ticks into elections the tests do not expect.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    replica: Replica,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Links cut by a test: (from, to) pairs whose messages are dropped.
type Cuts = Arc<Faults>;

/// Network faults a test injects.
#[derive(Default)]
struct Faults {
    /// (from, to) links whose messages are dropped.
    links: parking_lot::Mutex<std::collections::HashSet<(u64, u64)>>,
    /// How many snapshot messages to drop (then let through).
    drop_snapshots: std::sync::atomic::AtomicUsize,
    /// Let idle groups quiesce (with the brokers' real liveness). Off by default: cuts drop Raft messages,
    /// not link keepalives, so a group quiesced before a cut would not notice it.
    quiesce: std::sync::atomic::AtomicBool,
}

/// A transport that drops the messages of cut links, then sends the rest over the real network: a network
/// partition without touching the host's network.
struct CuttableTransport {
    from: u64,
    inner: Arc<PeerNetwork>,
    cuts: Cuts,
}

impl crate::replica::Transport for CuttableTransport {
    fn send(&self, group: u64, mut msgs: Vec<raft::eraftpb::Message>) {
        let cuts = self.cuts.links.lock();
        msgs.retain(|m| !cuts.contains(&(self.from, m.to)));
        drop(cuts);
        msgs.retain(|m| {
            let snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
            let drop_it = snapshot
                && self
                    .cuts
                    .drop_snapshots
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
            !drop_it
        });
        self.inner.send(group, msgs);
    }
}

async fn start_cluster(dirs: &[tempfile::TempDir]) -> HashMap<u64, Node> {
    start_cluster_with_cuts(dirs, Cuts::default()).await
}

async fn start_cluster_with_cuts(dirs: &[tempfile::TempDir], cuts: Cuts) -> HashMap<u64, Node> {
    start_cluster_with(dirs, cuts, LogConfig::default()).await
}

async fn start_cluster_with(
    dirs: &[tempfile::TempDir],
    cuts: Cuts,
    log: LogConfig,
) -> HashMap<u64, Node> {
    let mut listeners = HashMap::new();
    let mut peers = std::collections::BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap().to_string());
        listeners.insert(id, l);
    }
    let mut nodes = HashMap::new();
    for id in 1..=3u64 {
        let cancel = CancellationToken::new();
        let router = Arc::new(Router::default());
        let dir = dirs[id as usize - 1].path();
        let identity = crate::identity::Identity::open(Arc::new(OsDisk), dir, id).unwrap();
        tokio::spawn(serve_peer(
            identity.clone(),
            router.clone(),
            Default::default(),
            (listeners.remove(&id).unwrap(), None),
            cancel.clone(),
        ));
        let network =
            PeerNetwork::start(identity, peers[&id].clone(), &peers, None, cancel.clone());
        let (storage, _) = ReplicaStorage::open(
            Arc::new(OsDisk),
            Arc::new(crate::storage::SystemClock),
            dir,
            log,
            &[1, 2, 3],
        )
        .unwrap();
        let config = ReplicaConfig {
            node_id: id,
            tick_ms: 20,
            ..ReplicaConfig::default()
        };
        let (replica, task) = spawn(
            GROUP,
            format!("n{id}"),
            storage,
            config,
            None,
            Wiring {
                transport: Arc::new(CuttableTransport {
                    from: id,
                    inner: network,
                    cuts: cuts.clone(),
                }),
                clock: Clock::start(config.tick_ms, cancel.clone()),
                cancel: cancel.clone(),
                liveness: if cuts.quiesce.load(std::sync::atomic::Ordering::Relaxed) {
                    router.liveness()
                } else {
                    Default::default()
                },
            },
        )
        .unwrap();
        router.register(GROUP, replica.inbox());
        nodes.insert(
            id,
            Node {
                replica,
                cancel,
                task,
            },
        );
    }
    nodes
}

async fn wait_for_leader(nodes: &HashMap<u64, Node>, deadline: Duration) -> u64 {
    let started = Instant::now();
    loop {
        if let Some((id, _)) = nodes.iter().find(|(_, n)| n.replica.is_serving()) {
            return *id;
        }
        assert!(
            started.elapsed() < deadline,
            "no leader within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish(r: &Replica, v: &str) -> Result<u64, ReplicaError> {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, v.as_bytes(), &[]);
    let data = b.finish();
    let h = batch::validate(&data).unwrap();
    r.publish(data, h, Durability::Quorum)
        .await
        .map(|a| a.base_offset)
}

async fn values(r: &Replica) -> Vec<String> {
    r.ready_to_read(Duration::from_secs(5))
        .await
        .expect("the leader confirms its lease");
    r.fetch(0, 1 << 24)
        .unwrap()
        .batches
        .into_iter()
        .flat_map(|b| {
            let h = batch::validate(&b).unwrap();
            Records::new(b, h)
                .map(|x| String::from_utf8(x.unwrap().value.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_and_fails_over_without_losing_acknowledged_data() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        let v = format!("a{i}");
        let offset = publish(&nodes[&leader].replica, &v).await.unwrap();
        acked.push((offset, v));
    }
    // Followers hold the committed data too (quorum = 2 of 3, so at least one of them does).
    let followers_with_all = nodes
        .iter()
        .filter(|(id, n)| **id != leader && n.replica.log_end_offset() >= 100)
        .count();
    assert!(followers_with_all >= 1);
    // A follower refuses reads and names the leader.
    let follower = nodes.keys().copied().find(|id| *id != leader).unwrap();
    match nodes[&follower].replica.fetch(0, 100) {
        Err(ReplicaError::NotLeader { .. }) => {}
        other => panic!("follower served a read: {other:?}"),
    }

    // Kill the leader: a new one takes over within a few election timeouts, and has everything acked.
    let old = nodes.remove(&leader).unwrap();
    old.cancel.cancel();
    let _ = old.task.await;
    let killed_at = Instant::now();
    let new_leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let offset = loop {
        match publish(&nodes[&new_leader].replica, "after").await {
            Ok(o) => break o,
            Err(ReplicaError::NotLeader { .. } | ReplicaError::Dropped(_)) => {
                assert!(killed_at.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "failover took {:?}",
        killed_at.elapsed()
    );
    assert_eq!(offset, 100);
    let got = values(&nodes[&new_leader].replica).await;
    for (o, v) in &acked {
        assert_eq!(&got[*o as usize], v, "acknowledged {v} lost");
    }
    assert_eq!(got.last().map(String::as_str), Some("after"));
    for n in nodes.values() {
        n.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_quiesces_and_still_fails_over() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cuts = Cuts::default();
    cuts.quiesce
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut nodes = start_cluster_with_cuts(&dirs, cuts).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    publish(&nodes[&leader].replica, "before").await.unwrap();
    let started = Instant::now();
    while !nodes.values().all(|n| n.replica.is_quiesced()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the idle group did not quiesce"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A publish wakes the group and commits as usual.
    publish(&nodes[&leader].replica, "wake").await.unwrap();
    let started = Instant::now();
    while !nodes.values().all(|n| n.replica.is_quiesced()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "quiesced again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The quiesced leader's broker dies: the followers stop hearing its keepalives, wake, and elect.
    let old = nodes.remove(&leader).unwrap();
    old.cancel.cancel();
    let _ = old.task.await;
    let killed_at = Instant::now();
    let new_leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(took < Duration::from_secs(3), "failover took {took:?}");
    publish(&nodes[&new_leader].replica, "after").await.unwrap();
    assert_eq!(
        values(&nodes[&new_leader].replica).await,
        ["before", "wake", "after"]
    );
    for n in nodes.values() {
        n.cancel.cancel();
    }
}

fn stamped(v: &str, producer_id: i64, base_sequence: i32) -> bytes::Bytes {
    let mut b = BatchBuilder::new(1);
    b.producer(batch::ProducerStamp {
        producer_id,
        producer_epoch: 0,
        base_sequence,
    });
    b.push(1, None, v.as_bytes(), &[]);
    b.finish()
}

async fn publish_bytes(r: &Replica, data: bytes::Bytes) -> Result<u64, ReplicaError> {
    let h = batch::validate(&data).unwrap();
    r.publish(data, h, Durability::Quorum)
        .await
        .map(|a| a.base_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_recognizes_a_retry_the_old_leader_wrote() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs).await;
    let leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let r = nodes[&leader].replica.clone();
    assert_eq!(publish_bytes(&r, stamped("a", 9, 0)).await.unwrap(), 0);
    assert_eq!(publish_bytes(&r, stamped("b", 9, 1)).await.unwrap(), 1);
    // A retry of either is answered with its offset and not written again.
    assert_eq!(publish_bytes(&r, stamped("b", 9, 1)).await.unwrap(), 1);
    assert_eq!(publish_bytes(&r, stamped("a", 9, 0)).await.unwrap(), 0);
    // A gap is refused, once the batch has waited for the ones before it.
    match publish_bytes(&r, stamped("d", 9, 3)).await {
        Err(ReplicaError::Gap(why)) => assert!(why.contains("expected 2"), "{why}"),
        other => panic!("a sequence gap was accepted: {other:?}"),
    }
    // The leader dies; the new one knows what producer 9 wrote (its table comes from the log).
    let old = nodes.remove(&leader).unwrap();
    old.cancel.cancel();
    let _ = old.task.await;
    let new_leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let r = nodes[&new_leader].replica.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let offset = loop {
        match publish_bytes(&r, stamped("b", 9, 1)).await {
            Ok(o) => break o,
            Err(ReplicaError::NotLeader { .. } | ReplicaError::Dropped(_)) => {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(offset, 1, "the retry is recognized after failover");
    assert_eq!(publish_bytes(&r, stamped("c", 9, 2)).await.unwrap(), 2);
    assert_eq!(values(&r).await, ["a", "b", "c"], "each batch once");
    for n in nodes.values() {
        n.cancel.cancel();
    }
}

/// Cuts `node` off from the others in both directions (or heals it).
fn isolate(cuts: &Cuts, node: u64, cut: bool) {
    let mut c = cuts.links.lock();
    for other in (1..=3u64).filter(|o| *o != node) {
        for link in [(node, other), (other, node)] {
            if cut {
                c.insert(link);
            } else {
                c.remove(&link);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_never_acknowledges_and_the_majority_goes_on() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cuts = Cuts::default();
    let nodes = start_cluster_with_cuts(&dirs, cuts.clone()).await;
    let old = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let mut acked = Vec::new();
    for i in 0..50 {
        let v = format!("before-{i}");
        acked.push((publish(&nodes[&old].replica, &v).await.unwrap(), v));
    }

    // Cut the leader off. A publish to it can never be acknowledged: it either times out or fails when
    // check_quorum makes it step down.
    isolate(&cuts, old, true);
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        publish(&nodes[&old].replica, "lost"),
    )
    .await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "an isolated leader acknowledged a publish: {outcome:?}"
    );

    // The majority elects a new leader and takes publishes.
    let started = Instant::now();
    let new = loop {
        if let Some((id, _)) = nodes
            .iter()
            .find(|(id, n)| **id != old && n.replica.is_serving())
        {
            break *id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the majority elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for i in 0..50 {
        let v = format!("after-{i}");
        acked.push((publish(&nodes[&new].replica, &v).await.unwrap(), v));
    }
    assert!(
        !nodes[&old].replica.is_serving(),
        "the old leader stepped down"
    );

    // Heal: the old leader rejoins as a follower, drops its unacknowledged entry, and catches up.
    isolate(&cuts, old, false);
    let hw = nodes[&new].replica.high_watermark();
    let started = Instant::now();
    while nodes[&old].replica.high_watermark() < hw {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the old leader did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = values(&nodes[&new].replica).await;
    assert!(
        !got.iter().any(|v| v == "lost"),
        "the unacknowledged publish was never committed"
    );
    for (o, v) in &acked {
        assert_eq!(&got[*o as usize], v);
    }
    assert_eq!(
        nodes[&old].replica.log_end_offset(),
        nodes[&new].replica.log_end_offset()
    );
    for n in nodes.values() {
        n.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_catches_up_from_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cuts = Cuts::default();
    // Small segments and byte retention, so the leader deletes what the cut-off follower still needs.
    let mut log = LogConfig::default();
    log.limits.segment_bytes = 64 * 1024;
    log.limits.index_interval_bytes = 1024;
    log.retention_bytes = 128 * 1024;
    let nodes = start_cluster_with(&dirs, cuts.clone(), log).await;
    let mut leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    let behind = nodes.keys().copied().find(|id| *id != leader).unwrap();
    isolate(&cuts, behind, true);
    let value = "x".repeat(1000);
    let mut last = 0;
    let started = Instant::now();
    // Publish until retention (every 50 ticks of 20 ms) has moved the leader's log start past 0.
    while nodes[&leader].replica.log_start_offset() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "retention never ran"
        );
        for _ in 0..50 {
            match publish(&nodes[&leader].replica, &value).await {
                Ok(offset) => last = offset,
                // On a loaded machine a stretched tick can hand leadership to the other connected
                // replica (the cut-off one cannot win): go on there. What follows does not depend on
                // which of the two leads.
                Err(ReplicaError::Dropped(_) | ReplicaError::NotLeader { .. }) => {
                    leader = wait_for_leader(&nodes, Duration::from_secs(10)).await;
                    assert_ne!(leader, behind, "the cut-off replica cannot lead");
                    break;
                }
                Err(e) => panic!("publish failed: {e}"),
            }
        }
    }
    let start = nodes[&leader].replica.log_start_offset();
    assert!(start > 0);
    assert_eq!(
        nodes[&behind].replica.log_end_offset(),
        0,
        "the cut-off follower has nothing"
    );

    // Heal, losing the first snapshot message on the way: the leader must send it again (it would otherwise
    // keep the follower paused for good). The follower gets "the log starts at offset `start`" and catches
    // up by appends from there.
    cuts.drop_snapshots
        .store(1, std::sync::atomic::Ordering::SeqCst);
    isolate(&cuts, behind, false);
    let started = Instant::now();
    while nodes[&behind].replica.log_end_offset() <= last {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        nodes[&behind].replica.log_end_offset(),
        nodes[&leader].replica.log_end_offset()
    );
    assert_eq!(
        cuts.drop_snapshots
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a snapshot message was lost on the way"
    );
    assert!(nodes[&behind].replica.log_start_offset() >= start);
    // It is a full member again: with the other follower cut off, it alone makes the quorum.
    let other = (1..=3u64)
        .find(|id| *id != leader && *id != behind)
        .unwrap();
    isolate(&cuts, other, true);
    let after = publish(&nodes[&leader].replica, "after-catch-up")
        .await
        .unwrap();
    // `last` is the last acknowledged offset; a publish dropped by a leadership move may have landed too.
    assert!(after > last, "{after} after {last}");
    for n in nodes.values() {
        n.cancel.cancel();
    }
}

/// M3 in the durability audit: a partitioned leader served reads (and its coordinator answered) until
/// check-quorum stepped it down, up to about two election timeouts after the cut, while the majority had a
/// new leader taking writes after one. With leases, its reads stop before anyone else can lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_serves_no_read_once_another_can_lead() {
    let _serial = SERIAL.lock().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cuts = Cuts::default();
    let nodes = start_cluster_with_cuts(&dirs, cuts.clone()).await;
    let old = wait_for_leader(&nodes, Duration::from_secs(10)).await;
    publish(&nodes[&old].replica, "before").await.unwrap();
    nodes[&old]
        .replica
        .ready_to_read(Duration::from_secs(2))
        .await
        .expect("a connected leader holds a lease");
    isolate(&cuts, old, true);
    // Whenever any other replica serves, the old leader serves nothing.
    let started = Instant::now();
    let new = loop {
        let other = nodes
            .iter()
            .find(|(id, n)| **id != old && n.replica.is_serving());
        if let Some((id, _)) = other {
            break *id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the majority elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let stale = nodes[&old].replica.ready_to_read(Duration::ZERO).await;
    assert!(
        stale.is_err(),
        "the isolated leader still serves reads while broker {new} leads"
    );
    publish(&nodes[&new].replica, "after").await.unwrap();
    assert!(
        nodes[&old].replica.fetch(0, 1 << 20).is_err(),
        "the isolated leader serves a log without the newest acknowledged write"
    );
    assert!(nodes[&old].replica.bounds().is_err());
    isolate(&cuts, old, false);
    for n in nodes.values() {
        n.cancel.cancel();
    }
}
