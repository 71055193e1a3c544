//! Hostile clients (the durability audit's C2, H7, H8, M7, M8, M9 and L4), each against a real `ferryd`:
//! a decompression bomb, one batch too many records to answer at once, oversized consumer-group
//! identifiers, extreme topic settings, a 10,000-partition topic, a connection flood, a forged peer
//! `Forward` and a flood of `InitProducer` calls. Each gets a clear error (or, for reads, a bounded answer),
//! the broker keeps serving, and its memory stays bounded: its peak resident set is checked against a
//! bound stated in each test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::batch::{BatchBuilder, Compression};
use ferry_protocol::v1::{self, publish_request::Payload};
use ferry_tests::cluster::free_port;
use ferry_tests::{batch_of, wait_until, Ferryd};
use tonic::Code;

/// How long a condition may take to come true.
const WAIT: Duration = Duration::from_secs(10);

/// The broker process's peak resident set (MiB), from /proc.
fn peak_rss_mib(broker: &Ferryd) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn create(broker: &Ferryd, name: &str, partitions: u32) {
    broker
        .admin()
        .await
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
}

async fn publish(broker: &Ferryd, topic: &str, batch: Bytes) {
    let req = v1::PublishRequest {
        topic: topic.into(),
        partition: Some(0),
        acks: v1::Acks::All as i32,
        payload: Some(Payload::Batch(batch)),
        timeout_ms: 10_000,
    };
    broker.client().await.publish(req).await.unwrap();
}

async fn still_serves(broker: &Ferryd) {
    let req = v1::PublishRequest {
        topic: "alive".into(),
        partition: Some(0),
        acks: v1::Acks::All as i32,
        payload: Some(Payload::Batch(batch_of(&["alive".to_owned()]))),
        timeout_ms: 5_000,
    };
    broker
        .client()
        .await
        .publish(req)
        .await
        .expect("the broker still serves");
}

fn records_fetch(topic: &str, offset: u64, max_bytes: u32) -> v1::FetchRequest {
    v1::FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset,
        max_bytes,
        max_wait_ms: 0,
        format: v1::Format::Records as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_answered_within_the_byte_limit() {
    // C2: twenty LZ4 batches of about 60 KB, each decompressing to one 15 MiB record. Counting stored bytes,
    // one 8 MiB Records response held all of them decompressed (300 MiB), and eight at once 2.4 GiB.
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    create(&broker, "alive", 1).await;
    create(&broker, "bomb", 1).await;
    let zeros = vec![0u8; 15 * 1024 * 1024 - 200];
    for _ in 0..20 {
        let mut b = BatchBuilder::with_capacity(now_ms(), zeros.len() + 100);
        b.push(now_ms(), None, &zeros, &[]);
        let batch = b.finish_with(Compression::Lz4);
        assert!(batch.len() < 200 * 1024, "the bomb is small on the wire");
        publish(&broker, "bomb", batch).await;
    }
    let fetches = (0..8).map(|_| async {
        broker
            .client()
            .await
            .fetch(records_fetch("bomb", 0, 8 << 20))
            .await
            .map(tonic::Response::into_inner)
    });
    for r in futures::future::join_all(fetches).await {
        let r = r.expect("a bounded answer");
        assert_eq!(r.records.len(), 1, "one record per 8 MiB answer");
        assert_eq!(r.next_offset, 1);
    }
    let peak = peak_rss_mib(&broker);
    // Bound: about 15 MiB decompressed plus one encoded answer per concurrent fetch, over the broker's own.
    assert!(peak < 768, "peak resident set {peak} MiB");
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_many_records_is_served_in_parts() {
    // L4: a Records answer covers whole batches no more; one batch of 450,000 records is served across
    // answers of the asked size.
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &["--batch-bytes-max", "15000000"]);
    create(&broker, "alive", 1).await;
    create(&broker, "many", 1).await;
    let n = 450_000u64;
    let mut b = BatchBuilder::with_capacity(now_ms(), 16 << 20);
    for i in 0..n {
        b.push(now_ms(), None, &i.to_le_bytes(), &[]);
    }
    publish(&broker, "many", b.finish_with(Compression::Lz4)).await;
    let mut client = broker.client().await;
    let (mut offset, mut answers) = (0u64, 0);
    while offset < n {
        let r = client
            .fetch(records_fetch("many", offset, 1 << 20))
            .await
            .unwrap()
            .into_inner();
        let bytes: usize = r.records.iter().map(|x| x.value.len() + 48).sum();
        assert!(
            bytes <= (1 << 20) + 64,
            "an answer of {bytes} bytes for 1 MiB asked"
        );
        for (k, rec) in r.records.iter().enumerate() {
            assert_eq!(rec.offset, offset + k as u64, "in order, none skipped");
        }
        assert_eq!(r.next_offset, offset + r.records.len() as u64);
        offset = r.next_offset;
        answers += 1;
    }
    assert!(answers > 10, "served in parts: {answers} answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_group_identifiers_are_refused() {
    // H8: a 15 MiB instance id was copied into every membership record until one passed a segment.
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    create(&broker, "alive", 1).await;
    create(&broker, "t", 1).await;
    let mut client = broker.client().await;
    let big = "i".repeat(15 * 1024 * 1024);
    let owned: Vec<v1::TopicPartition> = (0..20_000)
        .map(|p| v1::TopicPartition {
            topic: "t".into(),
            partition: p,
        })
        .collect();
    let cases = [
        (big.clone(), String::new(), Vec::new(), "instance id"),
        (String::new(), "m".repeat(300), Vec::new(), "member id"),
        (String::new(), String::new(), owned, "owned partitions"),
    ];
    for _ in 0..3 {
        for (instance_id, member_id, owned, what) in &cases {
            let req = v1::GroupHeartbeatRequest {
                group: "g".into(),
                member_id: member_id.clone(),
                instance_id: instance_id.clone(),
                topics: vec!["t".into()],
                session_timeout_ms: 0,
                owned: owned.clone(),
                leave: false,
                assignor: String::new(),
            };
            let err = client.group_heartbeat(req).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(err.message().contains("limit"), "{what}: {}", err.message());
        }
    }
    let peak = peak_rss_mib(&broker);
    assert!(peak < 512, "peak resident set {peak} MiB");
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_topic_settings_and_partition_counts_are_refused() {
    // H7: one segment per batch (three descriptors and two maps each), or ten thousand partitions on one
    // broker, exhausted its descriptors and maps.
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    create(&broker, "alive", 1).await;
    let mut admin = broker.admin().await;
    let config = |segment_bytes, segment_ms| v1::TopicConfig {
        segment_bytes,
        segment_ms,
        ..v1::TopicConfig::default()
    };
    for (partitions, cfg, code, says) in [
        (1, config(1, 0), Code::InvalidArgument, "segment_bytes"),
        (
            1,
            config(u64::MAX, 0),
            Code::InvalidArgument,
            "segment_bytes",
        ),
        (1, config(0, 1), Code::InvalidArgument, "segment_ms"),
        (10_001, config(0, 0), Code::InvalidArgument, "partitions"),
        (
            10_000,
            config(0, 0),
            Code::FailedPrecondition,
            "--partitions-max",
        ),
    ] {
        let started = Instant::now();
        let err = admin
            .create_topic(v1::CreateTopicRequest {
                name: "x".into(),
                partitions,
                replicas: 1,
                config: Some(cfg),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{says}: {err:?}");
        assert!(err.message().contains(says), "{says}: {}", err.message());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
    }
    let listed = admin
        .list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.topics.len(), 1, "nothing was created");
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_stops_at_the_limit() {
    // M7: no connection limit. With --connections-max 40, the 41st connection is closed at once; the
    // broker serves again as soon as some go.
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &["--connections-max", "40"]);
    create(&broker, "alive", 1).await;
    let open = |n: f64| {
        let b = &broker;
        move || {
            b.metric("ferry_connections_open{listener=\"client\"}")
                .unwrap_or(0.0)
                == n
        }
    };
    // The admin connection above goes away.
    tokio::task::block_in_place(|| wait_until(WAIT, "no client connection open", open(0.0)));
    let mut held = Vec::new();
    for _ in 0..40 {
        let s = tokio::net::TcpStream::connect(&broker.addr).await.unwrap();
        held.push(s);
    }
    tokio::task::block_in_place(|| wait_until(WAIT, "40 connections accepted", open(40.0)));
    let mut extra = tokio::net::TcpStream::connect(&broker.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .expect("a connection past the limit is closed, not left hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed (EOF or reset): {read:?}"
    );
    assert_eq!(
        broker.metric("ferry_connections_refused_total{listener=\"client\"}"),
        Some(1.0),
        "the 41st connection was refused by the limit"
    );
    held.truncate(30);
    tokio::task::block_in_place(|| wait_until(WAIT, "10 connections closed", open(30.0)));
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forward_is_refused_and_changes_nothing() {
    // M8: the peer port's Forward proposed any decodable command: `../` escaped the data dir and short
    // replica lists panicked every metadata reader.
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let broker = Ferryd::start(
        &data,
        &[
            "--peers",
            &format!("1={peer}"),
            "--peer-listen",
            &peer,
            "--node-id",
            "1",
        ],
    );
    create(&broker, "alive", 1).await;
    let mut peer_client =
        ferry_protocol::v1::peer_client::PeerClient::connect(format!("http://{peer}"))
            .await
            .unwrap();
    let forged = [
        r#"{"CreateTopic":{"name":"../../ferry-x","partitions":5,"replica_sets":[[1]],"settings":{"retention_bytes":0,"retention_ms":0,"segment_bytes":0,"segment_ms":0}}}"#,
        r#"{"CreateTopic":{"name":"short","partitions":5,"replica_sets":[[1]],"settings":{"retention_bytes":0,"retention_ms":0,"segment_bytes":0,"segment_ms":0}}}"#,
        r#"{"MoveReplicas":{"topic":"alive","partition":0,"replicas":[]}}"#,
        r#"{"RegisterBroker":{"id":0,"client_address":"x"}}"#,
    ];
    for cmd in forged {
        let batch = batch_of(&[cmd.to_owned()]);
        let err = peer_client
            .forward(v1::ForwardRequest {
                command: batch,
                cluster_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{cmd}: {err:?}");
    }
    assert!(
        !dir.path().join("ferry-x").exists(),
        "nothing outside the data dir"
    );
    let meta = broker
        .client()
        .await
        .metadata(v1::MetadataRequest { topics: vec![] })
        .await
        .expect("metadata still answers")
        .into_inner();
    let names: Vec<_> = meta.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["alive"]);
    still_serves(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_floods_cost_one_controller_record_per_block() {
    // M9: each InitProducer wrote a controller record forever.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Ferryd::start(&data, &[]);
    create(&broker, "alive", 1).await;
    let controller_bytes = || -> u64 {
        std::fs::read_dir(data.join("__cluster"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = controller_bytes();
    let mut client = broker.client().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..2_100 {
        let id = client
            .init_producer(v1::InitProducerRequest {})
            .await
            .unwrap()
            .into_inner()
            .producer_id;
        assert!(ids.insert(id), "producer id {id} handed out twice");
    }
    let grown = controller_bytes() - before;
    assert!(
        grown < 2_000,
        "the controller log grew by {grown} bytes for 2,100 ids (three blocks)"
    );
    still_serves(&broker).await;
}
