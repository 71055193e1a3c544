//! A power cut of the whole cluster at once. Every broker runs on a fault-injecting disk that knows what
//! each fsync made durable (`FERRY_FAULT_DISK`); mid-publish, SIGUSR1 to all three cuts their power
//! together: each stops every disk change, journals what the cut loses and exits. The test throws that away
//! (every byte past each file's last fsync, renames and new directory entries whose directory was not
//! fsynced), restarts the cluster, and checks that every acknowledged record is where its acknowledgement
//! said. A kill -9 cannot show a missing fsync (the page cache survives it); this can: it fails when the
//! fsync before an acknowledgement is removed (docs/reliability.md, "A power cut for the whole cluster").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_broker::storage::faulty::apply_power_cut;
use ferry_tests::cluster::{
    leaders, power_cut_journal, publish_once, start_cluster_on_faulty_disks_with_flags,
    try_read_all,
};
use ferry_tests::{serial_async, wait_exit, Ferryd};

const TOPIC: &str = "cut";
const PARTITIONS: u32 = 3;
/// Publishing tasks (each one publish in flight at a time).
const PUBLISHERS: usize = 6;
/// Acknowledged publishes before the power is cut, at least (a deadline bounds the wait).
const ACKED_BEFORE_CUT: usize = 300;
/// Exit status of a broker whose power was cut (`ferryd`'s `POWER_CUT_EXIT`).
const POWER_CUT_EXIT: i32 = 86;

/// (partition, offset) → value of every acknowledged record.
type Acked = Arc<Mutex<HashMap<(u32, u64), String>>>;

async fn wait_for_leaders(brokers: &[String], deadline: Duration) -> HashMap<u32, String> {
    let until = Instant::now() + deadline;
    loop {
        let l = leaders(brokers, TOPIC).await;
        if l.len() == PARTITIONS as usize {
            return l;
        }
        assert!(
            Instant::now() < until,
            "no leader for every partition of '{TOPIC}' (known: {l:?}); a topic whose creation was lost \
             in the power cut shows here too"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes single-record batches without retries (nothing is stored twice) until `stop`; records every
/// acknowledgement.
async fn publish(
    brokers: Vec<String>,
    task: usize,
    round: u32,
    acked: Acked,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut pool = HashMap::new();
    let mut known = leaders(&brokers, TOPIC).await;
    for i in 0u64.. {
        let p = ((task as u64 + i) % u64::from(PARTITIONS)) as u32;
        let value = format!("r{round}-t{task}-{i}");
        let sent = publish_once(
            &mut pool,
            known.get(&p),
            TOPIC,
            p,
            std::slice::from_ref(&value),
        );
        tokio::select! {
            _ = stop.notified() => return,
            r = sent => match r {
                Some(offset) => {
                    acked.lock().unwrap().insert((p, offset), value);
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    known = leaders(&brokers, TOPIC).await;
                }
            },
        }
    }
}

/// Cuts the power of every broker at once (SIGUSR1 to each, back to back) and waits for each to exit with
/// the power-cut status; then throws away what the cut lost, keeping of each file's unsynced tail the part
/// `keep` picks (a torn tail).
fn cut_power(brokers: &mut [Ferryd], keep: fn(u64, u64) -> u64) {
    for b in brokers.iter() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(b.pid(), libc::SIGUSR1) };
    }
    for b in brokers.iter_mut() {
        let status = wait_exit(&mut b.child, Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(POWER_CUT_EXIT),
            "broker on {} did not go through the power cut: {status}",
            b.data_dir.display()
        );
        let journal = power_cut_journal(&b.data_dir);
        apply_power_cut(&journal, keep).expect("applying the power cut");
        std::fs::remove_file(&journal).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_the_whole_cluster_loses_nothing_acknowledged() {
    let _serial = serial_async().await;
    power_cut_rounds(&[]).await;
}

/// The same with segment logs written by direct I/O: appended bytes wait in the broker's memory until the
/// fsync writes them, and the file ends in zero padding to a whole block (storage/src/direct).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_io_a_power_cut_of_the_whole_cluster_loses_nothing_acknowledged() {
    let _serial = serial_async().await;
    power_cut_rounds(&["--direct-io"]).await;
}

/// Publishes, cuts the power of all three brokers mid-publish, restarts them and checks every acknowledged
/// record; twice (nothing kept past the last fsync, then half of each unsynced tail).
async fn power_cut_rounds(flags: &[&str]) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers = start_cluster_on_faulty_disks_with_flags(&dirs, flags);
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let out = brokers[0].ferry(
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &PARTITIONS.to_string(),
            "--replicas",
            "3",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: Acked = Default::default();
    // Round 0 keeps nothing past the last fsync; round 1 keeps half of each unsynced tail (torn writes).
    let keeps: [fn(u64, u64) -> u64; 2] = [
        |durable, _| durable,
        |durable, len| durable + (len - durable) / 2,
    ];
    for (round, keep) in keeps.into_iter().enumerate() {
        wait_for_leaders(&addrs, Duration::from_secs(30)).await;
        let stop = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|t| {
                tokio::spawn(publish(
                    addrs.clone(),
                    t,
                    round as u32,
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + ACKED_BEFORE_CUT {
            assert!(Instant::now() < deadline, "publishes are not acknowledged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Mid-publish: every publisher has a publish in flight.
        cut_power(&mut brokers, keep);
        stop.notify_waiters();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        for b in brokers.iter_mut() {
            b.restart_in_place();
        }
        let addrs_now: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
        assert_eq!(addrs_now, addrs, "restarted in place");
        check_acked(&addrs, &acked).await;
    }
}

/// Every acknowledged record is at its acknowledged offset, read from each partition's leader.
async fn check_acked(brokers: &[String], acked: &Acked) {
    let acked = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in 0..PARTITIONS {
        let got = loop {
            let leaders = wait_for_leaders(brokers, Duration::from_secs(60)).await;
            match try_read_all(&leaders[&p], TOPIC, p).await {
                Ok(values) => break values,
                Err(e) => {
                    assert!(Instant::now() < deadline, "partition {p} unreadable: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut lost = Vec::new();
        for ((part, offset), value) in &acked {
            if *part == p && got.get(*offset as usize) != Some(value) {
                // Where the value is instead, if anywhere: a moved record and a lost one are different bugs.
                let moved_to = got.iter().position(|v| v == value);
                lost.push(format!(
                    "{value}@{offset} (found {:?}, value at {moved_to:?})",
                    got.get(*offset as usize)
                ));
            }
        }
        lost.sort();
        assert!(
            lost.is_empty(),
            "partition {p}: {} of {} acknowledged records lost or moved after the power cut (its leader \
             served {} records), e.g. {:?}",
            lost.len(),
            acked.keys().filter(|(q, _)| *q == p).count(),
            got.len(),
            &lost[..lost.len().min(5)]
        );
    }
}
