//! ListOffsets: earliest, latest and by timestamp; plain records published without a partition are placed by
//! key; fetch long-polls until data arrives.

use std::time::{Duration, Instant};

use ferry_protocol::partitioner::partition_for_key;
use ferry_protocol::v1::{self, list_offsets_request::Spec, publish_request::Payload};
use ferry_tests::Ferryd;

fn record(key: &str, value: &str, ts: i64) -> v1::Record {
    v1::Record {
        key: key.as_bytes().to_vec().into(),
        has_key: true,
        value: value.as_bytes().to_vec().into(),
        timestamp_ms: ts,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_time_and_key_placement() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let mut admin = broker.admin().await;
    let mut client = broker.client().await;
    admin
        .create_topic(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 3,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    let base = 1_700_000_000_000i64;
    let key = "same-key";
    let p = partition_for_key(key.as_bytes(), 3);
    for i in 0..10 {
        let req = v1::PublishRequest {
            topic: "t".into(),
            partition: None,
            acks: v1::Acks::Leader as i32,
            payload: Some(Payload::Records(v1::RecordList {
                records: vec![record(key, &format!("v{i}"), base + i * 1000)],
            })),
            timeout_ms: 0,
        };
        let ack = client.publish(req).await.unwrap().into_inner().acks[0];
        assert_eq!(ack.partition, p, "placed by the documented key hash");
        assert_eq!(ack.base_offset, i as u64);
    }
    let list = |spec| v1::ListOffsetsRequest {
        topic: "t".into(),
        partition: p,
        spec: Some(spec),
    };
    assert_eq!(
        client
            .list_offsets(list(Spec::Earliest(true)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        0
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::Latest(true)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        10
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base + 3500)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        4
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        0
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base + 99_000)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        10
    );

    // A long poll at the end returns as soon as a record is committed.
    let mut poller = client.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        poller
            .fetch(v1::FetchRequest {
                topic: "t".into(),
                partition: p,
                offset: 10,
                max_wait_ms: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let req = v1::PublishRequest {
        topic: "t".into(),
        partition: Some(p),
        acks: 0,
        payload: Some(Payload::Records(v1::RecordList {
            records: vec![record(key, "late", 0)],
        })),
        timeout_ms: 0,
    };
    client.publish(req).await.unwrap();
    let resp = poll.await.unwrap();
    assert_eq!(resp.records.len(), 1);
    assert_eq!(&resp.records[0].value[..], b"late");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered on commit, not at the deadline"
    );
}
