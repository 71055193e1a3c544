//! Membership under load: a fourth broker is added to a three-broker cluster and then one of the original
//! three is removed, while messages are published to a topic of 6 partitions with 3 replicas. Every
//! partition gets back to 3 in-sync replicas each time, and every acknowledged message is there exactly once,
//! in order within its partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_tests::cluster::{
    all_in_sync, cluster_status, describe, leaders, members_settled, publish_once, read_all,
    start_cluster, start_joining_broker,
};
use ferry_tests::{run_ferry, wait_until};

const TOPIC: &str = "moving";
const PARTITIONS: u32 = 6;

/// Whether the cluster's members are exactly `ids`, all active, nothing moving, and every partition has
/// three in-sync replicas on those brokers.
fn settled_on(brokers: &[String], ids: &[u64]) -> bool {
    let s = cluster_status(brokers).expect("ferry cluster status answers");
    if !members_settled(&s, ids) {
        eprintln!("not settled yet: {s}");
        return false;
    }
    let d = describe(brokers, TOPIC);
    if !all_in_sync(&d) {
        eprintln!("not in sync yet: {d}");
    }
    all_in_sync(&d)
        && d["partition_info"].as_array().unwrap().iter().all(|p| {
            p["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| ids.contains(&r.as_u64().unwrap()))
        })
}

fn cli_ok(brokers: &[String], args: &[&str]) {
    let out = run_ferry(&brokers.join(","), args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_a_broker_under_load() {
    // Multi-broker timing: never beside another test of this binary (see ferry_tests::serial).
    let _serial = ferry_tests::serial_async().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs[..3]);
    let peers = nodes[0].flag("--peers").unwrap();
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    cli_ok(
        &brokers,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "6",
            "--replicas",
            "3",
        ],
    );

    // Publish all along, without retries (a publish whose answer is lost may or may not be in the log;
    // acknowledged ones must be).
    let stop = Arc::new(AtomicBool::new(false));
    let known = Arc::new(Addresses::new(brokers.clone()));
    let publisher = {
        let (stop, known) = (stop.clone(), known.clone());
        tokio::spawn(async move {
            let mut acked: BTreeMap<u32, Vec<(u64, Vec<String>)>> = BTreeMap::new();
            let mut pool = HashMap::new();
            let mut routes = leaders(&known.get(), TOPIC).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = (n % u64::from(PARTITIONS)) as u32;
                let values: Vec<String> = (0..20).map(|k| format!("p{p}-{n}-{k}")).collect();
                n += 1;
                match publish_once(&mut pool, routes.get(&p), TOPIC, p, &values).await {
                    Some(base) => acked.entry(p).or_default().push((base, values)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        routes = leaders(&known.get(), TOPIC).await;
                    }
                }
            }
            acked
        })
    };

    // A fourth broker starts with the cluster's --peers (it is not among them) and is added.
    let fourth = start_joining_broker(dirs[3].path(), 4, &peers);
    let (fourth, fourth_peer) = fourth.expect("a fourth broker starts");
    let mut all = brokers.clone();
    all.push(fourth.addr.clone());
    known.set(all.clone());
    cli_ok(&brokers, &["cluster", "add-broker", "4", &fourth_peer]);
    let started = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "broker 4 added and every partition in sync",
        || settled_on(&all, &[1, 2, 3, 4]),
    );
    eprintln!("add-broker settled in {:?}", started.elapsed());
    // Broker 1 is removed: its replicas move away, then it leaves.
    cli_ok(&all, &["cluster", "remove-broker", "1"]);
    let started = Instant::now();
    let rest: Vec<String> = all[1..].to_vec();
    known.set(rest.clone());
    wait_until(
        Duration::from_secs(90),
        "broker 1 removed and every partition in sync",
        || settled_on(&rest, &[2, 3, 4]),
    );
    eprintln!("remove-broker settled in {:?}", started.elapsed());
    // Keep publishing a little on the new membership, then stop and check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    nodes[0].kill9();

    let routes = leaders(&rest, TOPIC).await;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let got = read_all(&routes[&p], TOPIC, p).await;
        let mut seen = HashSet::new();
        for v in &got {
            assert!(seen.insert(v.clone()), "{v} appears twice in partition {p}");
        }
        for (base, values) in acked.get(&p).into_iter().flatten() {
            for (k, v) in values.iter().enumerate() {
                assert_eq!(
                    got.get(*base as usize + k),
                    Some(v),
                    "acknowledged {v} missing at offset {}",
                    base + k as u64
                );
                total += 1;
            }
        }
    }
    assert!(
        total > 1000,
        "the publisher kept going: {total} acknowledged"
    );
    eprintln!("{total} acknowledged messages, all present once and in order");
    drop(fourth);
}

/// A shared, replaceable list of broker addresses for the publisher.
struct Addresses(std::sync::Mutex<Vec<String>>);

impl Addresses {
    fn new(v: Vec<String>) -> Self {
        Addresses(std::sync::Mutex::new(v))
    }
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn set(&self, v: Vec<String>) {
        *self.0.lock().unwrap() = v;
    }
}
