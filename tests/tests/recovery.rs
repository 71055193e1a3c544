//! Crash recovery through real processes: kill -9 mid-publish loses nothing acknowledged; a torn tail is
//! truncated and the broker serves on; a flipped byte in an older segment is reported, never served.

use std::collections::BTreeMap;
use std::io::Write;

use ferry_protocol::batch::{self, Records};
use ferry_protocol::v1::{self, publish_request::Payload};
use ferry_tests::batch_of;
use ferry_tests::{segment_files, Ferryd};
use tonic::transport::Channel;
use tonic::Code;

async fn create(broker: &Ferryd, topic: &str, partitions: u32, segment_bytes: u64) {
    let config = v1::TopicConfig {
        segment_bytes,
        ..Default::default()
    };
    broker
        .admin()
        .await
        .create_topic(v1::CreateTopicRequest {
            name: topic.into(),
            partitions,
            replicas: 0,
            config: Some(config),
        })
        .await
        .unwrap();
}

/// Every value in a partition, by offset.
async fn read_partition(
    client: &mut v1::ferry_client::FerryClient<Channel>,
    topic: &str,
    p: u32,
) -> Result<BTreeMap<u64, String>, tonic::Status> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let r = client
            .fetch(v1::FetchRequest {
                topic: topic.into(),
                partition: p,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                format: v1::Format::Batches as i32,
            })
            .await?
            .into_inner();
        for b in &r.batches {
            let h = batch::validate(b).expect("served batches are intact");
            for rec in Records::new(b.clone(), h) {
                let rec = rec.unwrap();
                out.insert(rec.offset, String::from_utf8(rec.value.to_vec()).unwrap());
            }
        }
        if r.next_offset >= r.high_watermark || r.next_offset == offset {
            return Ok(out);
        }
        offset = r.next_offset;
    }
}

/// Four publishers keep batches in flight on two partitions; the broker is killed -9 while they do (after
/// 250 acknowledgements), so some publishes are cut off mid-request. Every acknowledged batch is stored at
/// its offset after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_publish_loses_nothing_acknowledged() {
    kill9_mid_publish(&[]).await;
}

/// The same with segment logs written by direct I/O: what the kill takes is the broker's own staged
/// bytes, not only its requests in flight (storage/src/direct).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_io_kill9_mid_publish_loses_nothing_acknowledged() {
    kill9_mid_publish(&["--direct-io"]).await;
}

async fn kill9_mid_publish(flags: &[&str]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Ferryd::start(dir.path(), flags);
    create(&broker, "crash", 2, 0).await;
    let acked_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for task in 0..4u32 {
        let mut client = broker.client().await;
        let (acked_count, killed) = (acked_count.clone(), killed.clone());
        publishers.push(tokio::spawn(async move {
            // (partition, base offset, values) of each acknowledged batch, and whether a publish failed.
            let mut acked: Vec<(u32, u64, Vec<String>)> = Vec::new();
            for i in 0.. {
                let p = task % 2;
                let values: Vec<String> = (0..10).map(|j| format!("t{task}-m{i}-{j}")).collect();
                let req = v1::PublishRequest {
                    topic: "crash".into(),
                    partition: Some(p),
                    acks: 0,
                    payload: Some(Payload::Batch(batch_of(&values))),
                    timeout_ms: 5_000,
                };
                match client.publish(req).await {
                    Ok(r) => {
                        acked.push((p, r.into_inner().acks[0].base_offset, values));
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if killed.load(Ordering::SeqCst) => return acked,
                    Err(e) => panic!("publish failed before the kill: {e}"),
                }
            }
            unreachable!("publishes until the broker is gone")
        }));
    }
    tokio::task::block_in_place(|| {
        ferry_tests::wait_until(
            std::time::Duration::from_secs(30),
            "250 acknowledged",
            || acked_count.load(Ordering::Relaxed) >= 250,
        )
    });
    killed.store(true, Ordering::SeqCst);
    broker.kill9();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    assert!(acked.len() >= 250);
    broker.restart();
    broker.wait_ready();
    let mut client = broker.client().await;
    for p in 0..2 {
        let got = read_partition(&mut client, "crash", p).await.unwrap();
        for (_, base, values) in acked.iter().filter(|(part, _, _)| *part == p) {
            for (k, v) in values.iter().enumerate() {
                assert_eq!(
                    got.get(&(base + k as u64)),
                    Some(v),
                    "acknowledged {v} lost"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tails_are_truncated_and_corruption_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Ferryd::start(dir.path(), &[]);
    // Small segments (the smallest allowed) so partition 0 has older, sealed segments.
    create(&broker, "tails", 2, 65_536).await;
    let mut client = broker.client().await;
    for i in 0..60 {
        let values: Vec<String> = (0..5)
            .map(|j| format!("v{i}-{j}-{}", "x".repeat(1_000)))
            .collect();
        for p in 0..2 {
            let req = v1::PublishRequest {
                topic: "tails".into(),
                partition: Some(p),
                acks: 0,
                payload: Some(Payload::Batch(batch_of(&values))),
                timeout_ms: 0,
            };
            client.publish(req).await.unwrap();
        }
    }
    let before = read_partition(&mut client, "tails", 1).await.unwrap();
    assert_eq!(before.len(), 300);

    // Garbage after the tail of partition 1's active segment, as after a torn write.
    broker.kill9();
    let active = segment_files(dir.path(), "tails", 1).pop().unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&[0xAB; 333])
        .unwrap();
    broker.restart();
    broker.wait_ready();
    let mut client = broker.client().await;
    assert_eq!(
        read_partition(&mut client, "tails", 1).await.unwrap(),
        before
    );

    // Half a batch after the tail, as a write torn by a crash before its fsync: cut, the rest is served,
    // appends go on.
    broker.kill9();
    let active = segment_files(dir.path(), "tails", 1).pop().unwrap();
    let half = batch_of(&["torn".repeat(100)]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&half[..half.len() / 2])
        .unwrap();
    broker.restart();
    broker.wait_ready();
    let mut client = broker.client().await;
    let after = read_partition(&mut client, "tails", 1).await.unwrap();
    assert_eq!(after, before, "only the torn write goes");
    let req = v1::PublishRequest {
        topic: "tails".into(),
        partition: Some(1),
        acks: 0,
        payload: Some(Payload::Batch(batch_of(&["after-cut".to_string()]))),
        timeout_ms: 0,
    };
    // The append lands right after the last intact record, and reads back there.
    let next = before.keys().next_back().map_or(0, |o| o + 1);
    let acked = client.publish(req).await.unwrap().into_inner();
    assert_eq!(
        acked.acks[0].base_offset, next,
        "appended where the cut left off"
    );
    let now = read_partition(&mut client, "tails", 1).await.unwrap();
    assert_eq!(now.get(&next).map(String::as_str), Some("after-cut"));
    assert_eq!(now.len(), before.len() + 1, "{now:?}");

    // A flipped byte in an older segment of partition 0: reported with the file, never served as data.
    broker.stop();
    let segments = segment_files(dir.path(), "tails", 0);
    assert!(segments.len() > 2, "small segments rolled");
    let old = &segments[0];
    let mut bytes = std::fs::read(old).unwrap();
    bytes[150] ^= 0x04;
    std::fs::write(old, &bytes).unwrap();
    broker.restart();
    broker.wait_ready();
    let mut client = broker.client().await;
    let err = read_partition(&mut client, "tails", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let file_name = old.file_name().unwrap().to_str().unwrap();
    assert!(
        err.message().contains(file_name),
        "error names the file: {}",
        err.message()
    );
    // The partition stays fenced and says why; the other partition serves on.
    let info = broker
        .admin()
        .await
        .describe_topic(v1::DescribeTopicRequest {
            name: "tails".into(),
            local_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.partition_info[0].error.contains(file_name));
    assert!(read_partition(&mut client, "tails", 1).await.is_ok());

    // Bytes cut from fsynced (acknowledged) data of partition 1: never taken for a torn tail. Its only
    // replica lost acknowledged data, so it is not served as if intact: it waits to repair from a peer
    // (there is none), says so, and never reuses the lost offsets.
    broker.kill9();
    let active = segment_files(dir.path(), "tails", 1).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 71 - 7)
        .unwrap();
    broker.restart();
    let mut admin = broker.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let info = admin
            .describe_topic(v1::DescribeTopicRequest {
                name: "tails".into(),
                local_only: false,
            })
            .await;
        if info.is_ok_and(|i| i.into_inner().partition_info[1].error.contains("repairing")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partition 1 reports that it repairs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut client = broker.client().await;
    assert!(read_partition(&mut client, "tails", 1).await.is_err());
}

/// Each partition of `topic` on `broker` with the value of its per-partition gauge `name` on `/metrics`.
fn partition_gauge(broker: &Ferryd, name: &str, topic: &str) -> BTreeMap<u32, u64> {
    let (status, body) = ferry_tests::http_get(&broker.http, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    let prefix = format!("{name}{{topic=\"{topic}\",partition=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (p, v) = rest.split_once("\"} ").expect("a labelled sample");
            (p.parse().unwrap(), v.trim().parse().unwrap())
        })
        .collect()
}

/// A clean shutdown (SIGTERM) closes every log clean: the next start CRC-scans no segment (fault 18 of
/// docs/reliability.md). After a kill -9 the next start scans the active segments, which shows the gauge
/// tells the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_needs_no_recovery_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Ferryd::start(dir.path(), &[]);
    create(&broker, "clean", 3, 0).await;
    let publish_all = |mut client: v1::ferry_client::FerryClient<Channel>| async move {
        for p in 0..3 {
            let req = v1::PublishRequest {
                topic: "clean".into(),
                partition: Some(p),
                acks: 0,
                payload: Some(Payload::Batch(batch_of(&["a".into(), "b".into()]))),
                timeout_ms: 5_000,
            };
            client.publish(req).await.unwrap();
        }
    };
    publish_all(broker.client().await).await;
    let scanned = "ferry_partition_segments_scanned_at_open";
    tokio::task::block_in_place(|| {
        assert!(broker.stop(), "ferryd stops cleanly on SIGTERM");
        broker.restart_in_place();
        broker.wait_ready();
    });
    let after_clean = partition_gauge(&broker, scanned, "clean");
    assert_eq!(
        after_clean,
        BTreeMap::from([(0, 0), (1, 0), (2, 0)]),
        "segments scanned at open after a clean shutdown"
    );
    publish_all(broker.client().await).await;
    tokio::task::block_in_place(|| {
        broker.kill9();
        broker.restart_in_place();
        broker.wait_ready();
    });
    let after_crash = partition_gauge(&broker, scanned, "clean");
    assert_eq!(after_crash.len(), 3);
    assert!(
        after_crash.values().all(|n| *n >= 1),
        "after kill -9 the active segments are scanned: {after_crash:?}"
    );
}
