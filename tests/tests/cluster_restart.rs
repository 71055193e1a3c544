//! A whole cluster stopped and started again one broker at a time, as a StatefulSet with ordered pod
//! management does it: the first broker serves alone, before its controller has a quorum to catch up with,
//! so its metadata may not show topics created since the controller last persisted its commit. Those are
//! unknown, not deleted: their data must stay, or the broker comes back with empty replicas that vote
//! (term 0, no log) and can elect a replica missing acknowledged records. Topics that were deleted while a
//! broker was down still lose their data on it, once its metadata has caught up.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::cluster::{leaders, publish_once, start_cluster, try_read_all};
use ferry_tests::{serial_async, Ferryd};

/// Records published before the cluster is stopped.
const RECORDS: u64 = 20;

/// The topic directories in a broker's data dir.
fn topic_dirs(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("topics"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Three brokers (their data dirs, which must outlive them, and client addresses) with `topic` created:
/// one partition on all three.
fn cluster_with_topic(topic: &str) -> (Vec<tempfile::TempDir>, Vec<Ferryd>, Vec<String>) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let brokers = start_cluster(&dirs);
    let addrs = brokers.iter().map(|b| b.addr.clone()).collect();
    let args = [
        "topic",
        "create",
        topic,
        "--partitions",
        "1",
        "--replicas",
        "3",
    ];
    let out = brokers[0].ferry(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dirs, brokers, addrs)
}

/// The leader of partition 0 of `topic`, waited for (bounded).
async fn leader(brokers: &[String], topic: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = leaders(brokers, topic).await.remove(&0) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "partition 0 of '{topic}' has no leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_alone_keeps_the_data_of_topics_it_does_not_know_yet() {
    let _serial = serial_async().await;
    let (_dirs, mut brokers, addrs) = cluster_with_topic("kept");
    let mut pool = HashMap::new();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (acked.len() as u64) < RECORDS {
        assert!(Instant::now() < deadline, "publishes are not acknowledged");
        let l = leader(&addrs, "kept").await;
        let value = format!("v{}", acked.len());
        match publish_once(&mut pool, Some(&l), "kept", 0, std::slice::from_ref(&value)).await {
            Some(offset) => {
                assert_eq!(
                    offset,
                    acked.len() as u64,
                    "one record per publish, in order"
                );
                acked.push(value);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    drop(pool);
    for b in brokers.iter_mut() {
        b.kill9();
    }
    let before = topic_dirs(&brokers[0].data_dir);
    assert_eq!(before.len(), 1, "the topic's directory: {before:?}");

    // Alone: no controller quorum, so it serves what it knows once its catch-up wait ends.
    brokers[0].restart_in_place();
    assert_eq!(
        topic_dirs(&brokers[0].data_dir),
        before,
        "the broker restarted alone removed the data of a topic its metadata did not show yet"
    );

    brokers[1].restart_in_place();
    brokers[2].restart_in_place();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = leader(&addrs, "kept").await;
        match try_read_all(&l, "kept", 0).await {
            Ok(values) if values == acked => break,
            Ok(values) => assert!(
                Instant::now() < deadline,
                "acknowledged records lost after the restart: read {values:?}, acknowledged {acked:?}"
            ),
            Err(e) => assert!(Instant::now() < deadline, "partition unreadable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_of_a_topic_deleted_while_a_broker_was_down_is_removed_once_it_is_back() {
    let _serial = serial_async().await;
    let (_dirs, mut brokers, addrs) = cluster_with_topic("gone");
    leader(&addrs, "gone").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while topic_dirs(&brokers[2].data_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the topic never reached broker 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    brokers[2].kill9();
    let out = brokers[0].ferry(&["topic", "delete", "gone"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    brokers[2].restart_in_place();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !topic_dirs(&brokers[2].data_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the data of the deleted topic stayed: {:?}",
            topic_dirs(&brokers[2].data_dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
