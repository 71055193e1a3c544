//! Retention against what it must never delete: committed consumer offsets. `__consumer_offsets` keeps its
//! records forever; it was created with `retention_ms = u64::MAX`, which the log cast to -1 ms, so every
//! sealed segment counted as too old and was deleted: after the next coordinator load the group's offsets
//! were gone (C1 in the durability audit).

use std::time::{Duration, Instant};

use ferry_protocol::v1;
use ferry_tests::{batch_of, Ferryd};

fn commit(offset: u64) -> v1::CommitOffsetsRequest {
    v1::CommitOffsetsRequest {
        group: "g".into(),
        member_id: String::new(), // an admin's reset: allowed while the group has no members
        generation: 0,
        offsets: vec![v1::PartitionOffset {
            topic: "t".into(),
            partition: 0,
            offset,
        }],
    }
}

async fn group_offsets_partition(broker: &Ferryd) -> v1::PartitionInfo {
    let info = broker
        .admin()
        .await
        .describe_topic(v1::DescribeTopicRequest {
            name: "__consumer_offsets".into(),
            local_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let p = ferry_protocol::topic::group_partition("g") as usize;
    info.partition_info[p].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_outlive_segment_rolls_retention_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments (the broker default the internal topic inherits) so its log rolls quickly.
    let mut broker = Ferryd::start(dir.path(), &["--segment-bytes", "65536"]);
    broker
        .admin()
        .await
        .create_topic(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    let mut client = broker.client().await;
    let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    client
        .publish(v1::PublishRequest {
            topic: "t".into(),
            partition: Some(0),
            acks: v1::Acks::All as i32,
            payload: Some(v1::publish_request::Payload::Batch(batch_of(&values))),
            timeout_ms: 5_000,
        })
        .await
        .unwrap();
    // About 1,200 commit records: several 64 KiB segments of __consumer_offsets, all but one sealed.
    for i in 0..1_200u64 {
        client.commit_offsets(commit(i % 10)).await.unwrap();
    }
    client.commit_offsets(commit(7)).await.unwrap();
    // Retention passes run every 50 ticks (10 s): wait until two have run over the group's partition since
    // the last commit (the broker counts them on /metrics).
    let p = ferry_protocol::topic::group_partition("g");
    let passes = || {
        let sample = format!(
            "ferry_partition_retention_passes_total{{topic=\"__consumer_offsets\",partition=\"{p}\"}}"
        );
        let (status, body) = ferry_tests::http_get(&broker.http, "/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(sample.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the group partition's retention passes on /metrics")
    };
    let before = passes();
    tokio::task::block_in_place(|| {
        ferry_tests::wait_until(Duration::from_secs(30), "two retention passes", || {
            passes() >= before + 2
        })
    });
    let p = group_offsets_partition(&broker).await;
    assert_eq!(
        p.log_start_offset, 0,
        "retention deleted committed offsets: {p:?}"
    );
    // A restart makes the coordinator load the group from the log again.
    tokio::task::block_in_place(|| {
        broker.kill9();
        broker.restart_in_place();
    });
    let mut client = broker.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        match client
            .describe_group(v1::DescribeGroupRequest { group: "g".into() })
            .await
        {
            Ok(d) => break d.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "describe keeps failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let committed: Vec<(String, u32, i64)> = d
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.committed))
        .collect();
    assert_eq!(committed, [("t".to_owned(), 0, 7)]);
}

/// A batch of `values` stamped now (ms), as a client builds it.
fn batch_now(values: &[String]) -> (bytes::Bytes, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut b = ferry_protocol::batch::BatchBuilder::new(now);
    for v in values {
        b.push(now, None, v.as_bytes(), &[]);
    }
    (b.finish(), now)
}

/// Segments roll by age (`segment_ms`) and retention deletes by age (`retention_ms`): a topic fed a small
/// batch every 100 ms rolls segments far below its size limit, loses its oldest segments once they are older
/// than its retention, never a record younger than that, and a read below the new log start is out of
/// range. A topic on the broker default (7 days) keeps everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_expire_by_time() {
    const SEGMENT_MS: u64 = 1_000;
    const RETENTION_MS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let mut admin = broker.admin().await;
    for (name, config) in [
        (
            "aged",
            Some(v1::TopicConfig {
                retention_bytes: 0,
                retention_ms: RETENTION_MS,
                segment_bytes: 0,
                segment_ms: SEGMENT_MS,
            }),
        ),
        ("kept", None),
    ] {
        admin
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replicas: 1,
                config,
            })
            .await
            .unwrap();
    }
    let mut client = broker.client().await;
    // Publish time (ms, the records' timestamp) of each offset of "aged".
    let mut stamped: Vec<i64> = Vec::new();
    let info = |admin: &mut v1::admin_client::AdminClient<_>| {
        let mut admin = admin.clone();
        async move {
            admin
                .describe_topic(v1::DescribeTopicRequest {
                    name: "aged".into(),
                    local_only: true,
                })
                .await
                .unwrap()
                .into_inner()
                .partition_info[0]
                .clone()
        }
    };
    // Retention passes run every 10 s: allow three, plus the time for segments to age.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (log_start, observed_ms) = loop {
        for topic in ["aged", "kept"] {
            let values: Vec<String> = (0..5)
                .map(|i| format!("{topic}-{}-{i}", stamped.len()))
                .collect();
            let (batch, now) = batch_now(&values);
            let ack = client
                .publish(v1::PublishRequest {
                    topic: topic.into(),
                    partition: Some(0),
                    acks: v1::Acks::All as i32,
                    payload: Some(v1::publish_request::Payload::Batch(batch)),
                    timeout_ms: 5_000,
                })
                .await
                .unwrap()
                .into_inner();
            if topic == "aged" {
                assert_eq!(ack.acks[0].base_offset, stamped.len() as u64);
                stamped.extend([now; 5]);
            }
        }
        let p = info(&mut admin).await;
        if p.log_start_offset > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            break (p.log_start_offset, now);
        }
        assert!(
            Instant::now() < deadline,
            "retention by time deleted nothing in 45 s: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Only records older than the retention went (their segment's newest record was older than it).
    let newest_deleted = stamped[log_start as usize - 1];
    assert!(
        observed_ms - newest_deleted > RETENTION_MS as i64,
        "offset {} was {} ms old when deleted, retention is {RETENTION_MS} ms",
        log_start - 1,
        observed_ms - newest_deleted
    );
    // Segments rolled by age: several, each far below the default 256 MiB.
    let segments = ferry_tests::segment_files(dir.path(), "aged", 0);
    assert!(segments.len() >= 2, "{segments:?}");
    for s in &segments {
        let len = std::fs::metadata(s).map(|m| m.len()).unwrap_or(0);
        assert!(
            len < 1 << 20,
            "{} is {len} bytes: rolled by size?",
            s.display()
        );
    }
    // Below the log start is out of range; from it, the records are there.
    let below = client
        .fetch(v1::FetchRequest {
            topic: "aged".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            format: v1::Format::Records as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(below.code(), tonic::Code::OutOfRange, "{below:?}");
    let from = client
        .fetch(v1::FetchRequest {
            topic: "aged".into(),
            partition: 0,
            offset: log_start,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            format: v1::Format::Records as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from.records.first().map(|r| r.offset), Some(log_start));
    // The topic on the broker default kept everything.
    let kept = admin
        .describe_topic(v1::DescribeTopicRequest {
            name: "kept".into(),
            local_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.partition_info[0].log_start_offset, 0);
}
