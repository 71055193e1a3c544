//! Bad input gets a clear gRPC status, nothing is appended, and the broker stays up.

use bytes::Bytes;
use ferry_protocol::batch::BatchBuilder;
use ferry_protocol::v1::{self, publish_request::Payload};
use ferry_tests::Ferryd;
use tonic::Code;

fn batch(n: usize, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(1);
    for i in 0..n {
        b.push(
            1,
            Some(format!("k{i}").as_bytes()),
            &vec![b'x'; value_len],
            &[],
        );
    }
    b.finish()
}

fn publish(topic: &str, partition: Option<u32>, payload: Payload) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: topic.into(),
        partition,
        acks: 0,
        payload: Some(payload),
        timeout_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &["--batch-bytes-max", "1048576"]);
    let mut admin = broker.admin().await;
    let mut client = broker.client().await;
    admin
        .create_topic(v1::CreateTopicRequest {
            name: "good".into(),
            partitions: 2,
            replicas: 0,
            config: None,
        })
        .await
        .unwrap();

    // Topic names: as Kafka's rules.
    for bad in [
        "..",
        ".",
        "a/b",
        "nul\0byte",
        &"x".repeat(300),
        "",
        "__internal",
    ] {
        let e = admin
            .create_topic(v1::CreateTopicRequest {
                name: bad.into(),
                partitions: 1,
                replicas: 0,
                config: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(!e.message().is_empty());
    }
    let e = admin
        .create_topic(v1::CreateTopicRequest {
            name: "good".into(),
            partitions: 1,
            replicas: 0,
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = admin
        .create_topic(v1::CreateTopicRequest {
            name: "zero".into(),
            partitions: 0,
            replicas: 0,
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = admin
        .create_topic(v1::CreateTopicRequest {
            name: "r3".into(),
            partitions: 1,
            replicas: 3,
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Batches over the limit, with a bad CRC, truncated, or to unknown places.
    let big = batch(2, 600 * 1024);
    let e = client
        .publish(publish("good", Some(0), Payload::Batch(big)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit"), "{}", e.message());
    let mut corrupt = batch(3, 10).to_vec();
    *corrupt.last_mut().unwrap() ^= 0xff;
    let e = client
        .publish(publish("good", Some(0), Payload::Batch(corrupt.into())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("CRC"), "{}", e.message());
    let short = batch(3, 10).slice(..50);
    let e = client
        .publish(publish("good", Some(0), Payload::Batch(short)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .publish(publish("nope", Some(0), Payload::Batch(batch(1, 1))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));
    let e = client
        .publish(publish("good", Some(7), Payload::Batch(batch(1, 1))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .publish(publish("good", None, Payload::Batch(batch(1, 1))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut bad_acks = publish("good", Some(0), Payload::Batch(batch(1, 1)));
    bad_acks.acks = 42;
    assert_eq!(
        client.publish(bad_acks).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let e = client
        .publish(publish(
            "good",
            None,
            Payload::Records(v1::RecordList { records: vec![] }),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Fetch out of range.
    let e = client
        .fetch(v1::FetchRequest {
            topic: "good".into(),
            partition: 0,
            offset: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // Nothing was appended, and the broker still serves.
    let info = admin
        .describe_topic(v1::DescribeTopicRequest {
            name: "good".into(),
            local_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.partition_info.iter().all(|p| p.high_watermark == 0));
    let ok = client
        .publish(publish("good", Some(1), Payload::Batch(batch(5, 10))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.acks[0].base_offset, 0);
    assert_eq!(ok.acks[0].record_count, 5);
}
