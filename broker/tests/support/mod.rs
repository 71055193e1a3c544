//! The fault-location test's cluster: three brokers in this process, each on a fault-injecting disk,
//! stopped and started again by the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_broker::broker::{Broker, BrokerError};
use ferry_broker::config::BrokerConfig;
use ferry_broker::identity::Identity;
use ferry_broker::metadata::TopicSettings;
use ferry_broker::peer::Router;
use ferry_broker::replica::Durability;
use ferry_broker::replica::ReplicaError;
use ferry_broker::storage::{Faults, FaultyDisk};
use ferry_protocol::batch::{self, BatchBuilder, Records};
use tokio_util::sync::CancellationToken;

use super::{CASE_DEADLINE, TOPIC};

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) dir: PathBuf,
    pub(crate) peer_addr: String,
    pub(crate) faults: Arc<Faults>,
    pub(crate) running: Option<(Arc<Broker>, CancellationToken)>,
    /// The peer server's task: aborted on stop, so its port and connections go at once (graceful shutdown
    /// would wait for the other brokers' streams, which never end).
    pub(crate) peer_server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Node {
    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.running.as_ref().expect("running").0
    }

    pub(crate) async fn start(&mut self, peers: &BTreeMap<u64, String>) {
        let listen = "127.0.0.1:0".parse().unwrap();
        let mut config = BrokerConfig::new(self.id, self.dir.clone(), listen, listen);
        config.advertise = format!("127.0.0.1:{}", 17_000 + self.id);
        config.peers = peers.clone();
        config.peer_advertise = self.peer_addr.clone();
        config.replica.tick_ms = 20;
        let cancel = CancellationToken::new();
        let router = Arc::new(Router::default());
        let started: Arc<OnceLock<Arc<Broker>>> = Arc::new(OnceLock::new());
        let listener = bind_again(&self.peer_addr).await;
        let disk = Arc::new(FaultyDisk {
            faults: self.faults.clone(),
        });
        let identity = Identity::open_data_dir(disk.clone(), &self.dir, self.id).expect("identity");
        self.peer_server = Some(tokio::spawn(ferry_broker::server::peer::serve_peer(
            identity.clone(),
            router.clone(),
            started.clone(),
            (listener, None),
            cancel.clone(),
        )));
        let broker = Broker::start(
            config,
            Arc::new(ferry_broker::storage::SystemClock),
            Arc::new(ferry_broker::server::dial::GrpcDialer::default()),
            router,
            identity,
            ferry_broker::broker::startup::Startup::default(),
            cancel.child_token(),
        )
        .await
        .expect("broker starts");
        let _ = started.set(broker.clone());
        self.running = Some((broker, cancel));
    }

    pub(crate) async fn stop(&mut self) {
        if let Some((b, cancel)) = self.running.take() {
            b.shutdown().await;
            cancel.cancel();
        }
        if let Some(server) = self.peer_server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    pub(crate) fn partition_dir(&self) -> PathBuf {
        let topics = self.dir.join("topics");
        let t = std::fs::read_dir(&topics)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().ends_with("-f"))
            .expect("topic dir");
        t.join("0")
    }
}

/// A free loopback port below the kernel's ephemeral range (32768-60999): a restarted node binds its peer
/// port again, and a port picked by binding port 0 may meanwhile be the local port of some connection.
fn rebindable_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    (0..)
        .map(|_| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        .map(|n| 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

pub(crate) async fn bind_again(addr: &str) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) peers: BTreeMap<u64, String>,
    pub(crate) _dirs: Vec<tempfile::TempDir>,
    /// Acknowledged values and their offsets.
    pub(crate) acked: BTreeMap<u64, String>,
    pub(crate) sent: u64,
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut peers = BTreeMap::new();
        for id in 1..=3u64 {
            peers.insert(id, format!("127.0.0.1:{}", rebindable_port()));
        }
        let mut nodes: Vec<Node> = (1..=3u64)
            .map(|id| Node {
                id,
                dir: dirs[id as usize - 1].path().join("data"),
                peer_addr: peers[&id].clone(),
                faults: Faults::new(),
                running: None,
                peer_server: None,
            })
            .collect();
        // Started together: a broker waits for its controller to catch up, which needs the others.
        let starts = nodes.iter_mut().map(|n| {
            let peers = peers.clone();
            async move { n.start(&peers).await }
        });
        futures::future::join_all(starts).await;
        let c = Cluster {
            nodes,
            peers,
            _dirs: dirs,
            acked: BTreeMap::new(),
            sent: 0,
        };
        let settings = TopicSettings {
            segment_bytes: 65_536,
            ..TopicSettings::default()
        };
        let deadline = Instant::now() + CASE_DEADLINE;
        loop {
            match c.nodes[0]
                .broker()
                .create_topic(TOPIC, 1, 3, settings)
                .await
            {
                Ok(_) | Err(BrokerError::TopicExists(_)) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("create topic: {e}"),
            }
        }
        c
    }

    pub(crate) fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.running.is_some())
    }

    /// The running broker whose replica serves the partition, waiting for one.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + CASE_DEADLINE;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some((b, _)) = &n.running {
                    if b.partition(TOPIC, 0).is_ok_and(|r| r.is_serving()) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes `n` batches (one record of about 1 KiB each), acknowledged by a quorum, retrying through
    /// leader changes; records what was acknowledged.
    pub(crate) async fn publish(&mut self, n: usize) {
        for _ in 0..n {
            self.sent += 1;
            let value = format!("v{:06}-{}", self.sent, "x".repeat(1_000));
            // Timestamps of now: retention (7 days by default) keeps every segment.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let mut b = BatchBuilder::new(now);
            b.push(now, None, value.as_bytes(), &[]);
            let data = b.finish();
            let deadline = Instant::now() + CASE_DEADLINE;
            loop {
                let i = self.leader().await;
                let r = self.nodes[i]
                    .broker()
                    .publish(TOPIC, 0, data.clone(), Durability::Quorum)
                    .await;
                match r {
                    Ok(ack) => {
                        assert!(
                            self.acked.insert(ack.base_offset, value.clone()).is_none(),
                            "offset {} acknowledged twice",
                            ack.base_offset
                        );
                        break;
                    }
                    // Outcome unknown: the value may or may not be in the log; not counted as acknowledged.
                    Err(BrokerError::Replica(ReplicaError::Dropped(_))) => break,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "publish keeps failing: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }

    /// Moves leadership off the current leader, to a broker other than `avoid` (the damaged one: a
    /// repairing replica takes no leadership).
    pub(crate) async fn change_leader(&self, avoid: u64) {
        let i = self.leader().await;
        let from = self.nodes[i].id;
        let Some(to) = self
            .running()
            .map(|n| n.id)
            .find(|id| *id != from && *id != avoid)
        else {
            return;
        };
        let _ = self.nodes[i].broker().transfer_leader(TOPIC, 0, to).await;
    }

    /// Every record from the leader, in offset order.
    pub(crate) async fn read_all(&self) -> Vec<(u64, String)> {
        let deadline = Instant::now() + CASE_DEADLINE;
        let mut last_error = String::new();
        'retry: loop {
            assert!(
                Instant::now() < deadline,
                "the partition never served a whole read: {last_error}"
            );
            let i = self.leader().await;
            let r = self.nodes[i].broker().partition(TOPIC, 0).unwrap();
            if r.ready_to_read(Duration::from_secs(1)).await.is_err() {
                continue;
            }
            let mut out = Vec::new();
            let mut offset = 0;
            let end = r.high_watermark();
            while offset < end {
                let f = match r.fetch(offset, 1 << 20) {
                    Ok(f) => f,
                    Err(e) => {
                        last_error = format!("fetch at {offset}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'retry;
                    }
                };
                for b in f.batches {
                    let h = batch::validate(&b).expect("served batches are whole");
                    for rec in Records::new(b.clone(), h) {
                        let rec = rec.expect("served records decode");
                        if rec.offset >= offset {
                            out.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap()));
                        }
                    }
                    offset = h.next_offset();
                }
            }
            return out;
        }
    }
}
