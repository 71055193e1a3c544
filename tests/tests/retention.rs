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
    // Retention passes run every 50 ticks (10 s): wait past two of them.
    tokio::time::sleep(Duration::from_secs(21)).await;
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
