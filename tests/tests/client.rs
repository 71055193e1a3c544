//! The `ferry-client` SDK against real `ferryd` processes: producer batching, ordering, flush and
//! backpressure; fetch and subscribe; administration and its errors; bootstrap fallback; and what a client
//! sees when its broker is killed, restarted, paused or finds corruption on disk.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::v1::TopicConfig;
use ferry_client::{Client, ClientConfig, ClientError, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::partitioner::partition_for_key;
use ferry_tests::{segment_files, unused_addr, Ferryd};
use futures::StreamExt;

/// Deadline for anything the tests wait on that should take milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// A broker in a temp dir with topic `t` of `partitions` partitions, and a client connected to it.
async fn setup(partitions: u32) -> (tempfile::TempDir, Ferryd, Client) {
    setup_with(partitions, ClientConfig::default()).await
}

async fn setup_with(partitions: u32, config: ClientConfig) -> (tempfile::TempDir, Ferryd, Client) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let client = Client::connect_with(vec![broker.addr.clone()], config)
        .await
        .unwrap();
    client.create_topic("t", partitions, 0).await.unwrap();
    (dir, broker, client)
}

/// A client that keeps retrying for about ten seconds: long enough for a broker to restart.
fn patient() -> ClientConfig {
    ClientConfig {
        retries_max: 100,
        retry_backoff_ms_max: 100,
        ..ClientConfig::default()
    }
}

/// A producer whose task is gone before it finished (here: its runtime shut down while a record lingered)
/// fails that record and refuses later ones; nothing waits forever.
#[test]
fn a_producer_whose_runtime_ended_fails_its_records_instead_of_hanging() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let (dir, broker, producer, lingering) = first.block_on(async {
        let (dir, broker, client) = setup(1).await;
        let config = ProducerConfig {
            linger_ms: 60_000,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(client, config).unwrap();
        let lingering = producer.send(ProducerRecord::new("t", "a")).await;
        (dir, broker, producer, lingering)
    });
    // The producer's task is dropped with the runtime, its record still in an open batch.
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let answer = within(lingering).await;
        assert!(
            matches!(answer, Err(ClientError::ProducerClosed)),
            "{answer:?}"
        );
        let later = within(producer.send(ProducerRecord::new("t", "b"))).await;
        assert!(matches!(
            within(later).await,
            Err(ClientError::ProducerClosed)
        ));
    });
    drop((broker, dir));
}

/// Sends `records` and waits until all are acknowledged: `(partition, offset)` of each.
async fn send_all(
    producer: &Producer,
    records: impl IntoIterator<Item = ProducerRecord>,
) -> Vec<(u32, u64)> {
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.send(record).await);
    }
    let acks = within(futures::future::join_all(deliveries)).await;
    acks.into_iter().map(Result::unwrap).collect()
}

/// Records numbered by `range` (the number is the value) for topic `t`, placed round robin.
fn numbered(range: std::ops::Range<u64>) -> impl Iterator<Item = ProducerRecord> {
    range.map(|i| ProducerRecord::new("t", i.to_string()))
}

/// `fut`'s output, or a panic if it takes longer than [`WAIT`].
async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut).await.expect("in time")
}

/// Runs blocking harness code (process start and stop) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_get_dense_offsets_and_read_back() {
    let (_dir, broker, client) = setup(3).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..5_000u32 {
        let key = format!("key-{}", i % 50);
        let record = ProducerRecord::new("t", format!("value-{i}")).with_key(key.clone());
        deliveries.push((key, i, producer.send(record).await));
    }
    let mut by_partition: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    for (key, i, delivery) in deliveries {
        let (partition, offset) = delivery.await.unwrap();
        assert_eq!(partition, partition_for_key(key.as_bytes(), 3));
        by_partition.entry(partition).or_default().push((offset, i));
    }
    producer.close().await;
    assert_eq!(by_partition.len(), 3, "50 keys cover every partition");
    for (partition, sent) in by_partition {
        // Send order is offset order within a partition, and offsets are dense from 0.
        let offsets: Vec<u64> = sent.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..sent.len() as u64).collect::<Vec<_>>());
        let mut read = Vec::new();
        let mut offset = 0;
        while read.len() < sent.len() {
            let fetched = client
                .fetch("t", partition, offset, 64 * 1024, 0)
                .await
                .unwrap();
            offset = fetched.next_offset;
            read.extend(fetched.records);
        }
        assert_eq!(read.len(), sent.len());
        for (record, (offset, i)) in read.iter().zip(&sent) {
            assert_eq!(record.offset, *offset);
            assert_eq!(record.value, Bytes::from(format!("value-{i}")));
            assert_eq!(record.partition, partition);
        }
    }
    let publishes = broker.metric("ferry_publish_duration_seconds_count");
    assert!(
        publishes.is_some_and(|n| n < 100.0),
        "records are batched, not sent one by one: {publishes:?} publishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_acknowledgement() {
    let (_dir, _broker, client) = setup(2).await;
    let config = ProducerConfig {
        linger_ms: 60_000,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).unwrap();
    let first = producer
        .send(ProducerRecord::new("t", "a").with_partition(1))
        .await;
    let second = producer
        .send(ProducerRecord::new("t", "b").with_partition(1))
        .await;
    tokio::time::timeout(Duration::from_secs(5), producer.flush())
        .await
        .expect("flush does not wait for the linger");
    assert_eq!(client.end_offsets("t").await.unwrap(), vec![0, 2]);
    assert_eq!(first.await.unwrap(), (1, 0));
    assert_eq!(second.await.unwrap(), (1, 1));
    producer.close().await;
    let after = producer.send(ProducerRecord::new("t", "c")).await;
    assert!(matches!(after.await, Err(ClientError::ProducerClosed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_keyless_records() {
    let (_dir, _broker, client) = setup(4).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, numbered(0..40)).await;
    producer.close().await;
    assert_eq!(client.end_offsets("t").await.unwrap(), vec![10, 10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_bytes_in_flight() {
    let (_dir, broker, client) = setup(1).await;
    let config = ProducerConfig {
        batch_bytes_max: 4096,
        in_flight_bytes_max: 8192,
        linger_ms: 0,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).unwrap();
    // Warm up: metadata and connection, so the paused broker is only needed for acknowledgements.
    send_all(&producer, [ProducerRecord::new("t", vec![0u8; 1000])]).await;
    // A frozen broker acknowledges nothing, so sends are accepted only until 8 KiB are in flight.
    broker.pause();
    let mut deliveries = Vec::new();
    let blocked = loop {
        let mut send = Box::pin(producer.send(ProducerRecord::new("t", vec![0u8; 1000])));
        match futures::poll!(&mut send) {
            std::task::Poll::Ready(delivery) => deliveries.push(delivery),
            std::task::Poll::Pending => break send,
        }
        assert!(deliveries.len() <= 8, "more than 8 KiB accepted in flight");
    };
    // 8 records of 1000 bytes and their framing fit in 8 KiB, or 7 while the warm-up's are given back.
    let accepted = deliveries.len();
    assert!(accepted >= 7, "accepted only {accepted}");
    broker.resume();
    deliveries.push(within(blocked).await);
    for delivery in deliveries {
        within(delivery).await.unwrap();
    }
    producer.close().await;
    let stored = client.end_offsets("t").await.unwrap();
    assert_eq!(stored, [accepted as u64 + 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_old_and_new_records_in_order() {
    let (_dir, _broker, client) = setup(1).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, numbered(0..10)).await;
    let mut stream = Box::pin(client.subscribe("t", 0, 5));
    send_all(&producer, numbered(10..15)).await;
    for expected in 5..15u64 {
        let record = within(stream.next()).await.unwrap().unwrap();
        assert_eq!(record.offset, expected);
        assert_eq!(record.value, Bytes::from(expected.to_string()));
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_admin() {
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, [ProducerRecord::new("t", "x").with_partition(1)]).await;
    producer.close().await;
    assert_eq!(client.end_offsets("t").await.unwrap(), vec![0, 1]);
    assert_eq!(client.partition_count("t").await.unwrap(), 2);
    let config = TopicConfig {
        retention_ms: 60_000,
        ..TopicConfig::default()
    };
    let info = client
        .create_topic_with_config("u", 3, 0, config)
        .await
        .unwrap();
    assert_eq!((info.partitions, info.replicas), (3, 1));
    assert_eq!(
        client.describe_topic("u").await.unwrap().config,
        Some(config)
    );
    let err = client.create_topic("u", 1, 0).await.unwrap_err();
    assert_eq!(err.to_string(), "topic 'u' already exists");
    let mut names: Vec<String> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    assert_eq!(names, ["t", "u"]);
    client.delete_topic("u").await.unwrap();
    let err = client.describe_topic("u").await.unwrap_err();
    assert_eq!(err.to_string(), "topic 'u' does not exist");
    let err = client.partition_count("u").await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic(_)));
    let err = client.delete_topic("u").await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic(_)), "{err}");
    let err = client.create_topic("bad/name", 1, 0).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_unknown_topics_and_partitions_fail() {
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let err = producer
        .send(ProducerRecord::new("nope", "x"))
        .await
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "topic 'nope' does not exist");
    let err = producer
        .send(ProducerRecord::new("t", "x").with_partition(2))
        .await
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::UnknownPartition {
            partition: 2,
            partitions: 2,
            ..
        }
    ));
    let err = client.fetch("t", 5, 0, 1024, 0).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownPartition { .. }));
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_names_every_address_tried_and_falls_back() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut dead = Ferryd::start(dir_a.path(), &[]);
    let live = Ferryd::start(dir_b.path(), &[]);
    blocking(|| dead.kill9());
    let config = ClientConfig {
        connect_timeout_ms: 1_000,
        ..ClientConfig::default()
    };
    let bootstrap = vec![dead.addr.clone(), "not an address".into()];
    let err = Client::connect_with(bootstrap, config.clone())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("could not reach any bootstrap broker: ")
            && text.contains(&dead.addr)
            && text.contains("not an address"),
        "{text}"
    );
    // A later live address is found after dead ones.
    let bootstrap = vec![unused_addr(), dead.addr.clone(), live.addr.clone()];
    let client = Client::connect_with(bootstrap, config).await.unwrap();
    let cluster = client.describe_cluster().await.unwrap();
    assert_eq!(cluster.brokers[0].address, live.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waits_out_a_broker_restart() {
    let (_dir, mut broker, client) = setup_with(1, patient()).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    assert_eq!(
        send_all(&producer, [ProducerRecord::new("t", "before")]).await,
        [(0, 0)]
    );
    blocking(|| broker.kill9());
    // Sent while nothing listens: the client retries until the broker is back on the same address.
    let delivery = producer.send(ProducerRecord::new("t", "during")).await;
    blocking(|| broker.restart_in_place());
    let ack = within(delivery).await.unwrap();
    assert_eq!(ack, (0, 1), "stored once, after the acknowledged one");
    producer.close().await;
    let fetched = client.fetch("t", 0, 0, 1024, 0).await.unwrap();
    let values: Vec<&[u8]> = fetched.records.iter().map(|r| &r.value[..]).collect();
    assert_eq!(values, [&b"before"[..], b"during"]);
}

// The contract of `Client::subscribe` (client/src/subscribe.rs): it resubscribes when the broker goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_a_broker_restart() {
    let (_dir, mut broker, client) = setup_with(1, patient()).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, numbered(0..5)).await;
    let mut stream = Box::pin(client.subscribe("t", 0, 0));
    for expected in 0..5u64 {
        let record = within(stream.next()).await.unwrap().unwrap();
        assert_eq!(record.offset, expected);
    }
    blocking(|| {
        broker.kill9();
        broker.restart_in_place();
    });
    send_all(&producer, numbered(5..10)).await;
    // Neither skipped nor repeated across the restart.
    for expected in 5..10u64 {
        let record = within(stream.next()).await.unwrap().unwrap();
        assert_eq!(record.offset, expected);
        assert_eq!(record.value, Bytes::from(expected.to_string()));
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_an_unavailable_error_once_retries_run_out() {
    let config = ClientConfig {
        retries_max: 2,
        retry_backoff_ms_min: 10,
        ..ClientConfig::default()
    };
    let (_dir, mut broker, client) = setup_with(1, config).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, [ProducerRecord::new("t", "x")]).await;
    blocking(|| broker.kill9());
    let delivery = producer.send(ProducerRecord::new("t", "y")).await;
    let err = within(delivery).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().starts_with("broker unavailable"), "{err}");
    let err = within(client.describe_cluster()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_on_disk_reaches_the_client_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Ferryd::start(dir.path(), &[]);
    let client = Client::connect(vec![broker.addr.clone()]).await.unwrap();
    // Small segments (the smallest a topic may have), so the first one is sealed and read back (and
    // checked) on restart.
    let config = TopicConfig {
        segment_bytes: 65_536,
        ..TopicConfig::default()
    };
    client
        .create_topic_with_config("t", 1, 0, config)
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    for i in 0..40 {
        let value = format!("{i}-{}", "x".repeat(2_000));
        send_all(&producer, [ProducerRecord::new("t", value)]).await;
    }
    producer.close().await;
    blocking(|| {
        assert!(broker.stop(), "clean shutdown");
        let first = &segment_files(dir.path(), "t", 0)[0];
        let mut bytes = std::fs::read(first).unwrap();
        bytes[150] ^= 0x04;
        std::fs::write(first, &bytes).unwrap();
        broker.restart_in_place();
        broker.wait_ready();
    });
    // Never records with a gap, never retried as if the broker were away: the broker's reason, at once.
    let err = within(client.fetch("t", 0, 0, 1 << 20, 0)).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
}

/// A record sent inside a traced span carries its `traceparent`; the consumer's handling span continues
/// that trace.
#[tokio::test]
async fn trace_context_travels_from_producer_to_consumer() {
    use ferry_client::trace::{consume_span, current, TraceContext, TraceContextLayer};
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(TraceContextLayer));
    let (_dir, _broker, client) = setup(1).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let request = tracing::info_span!("checkout");
    let sent_in = request.in_scope(|| current().unwrap());
    let delivery = producer
        .send(ProducerRecord::new("t", "paid"))
        .instrument(request)
        .await;
    within(delivery).await.unwrap();
    // Outside any span: no header.
    within(producer.send(ProducerRecord::new("t", "untraced")).await)
        .await
        .unwrap();
    let records: Vec<_> = within(client.subscribe("t", 0, 0).take(2).collect::<Vec<_>>())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let tp = records[0]
        .traceparent()
        .expect("traced record has a traceparent");
    let header = TraceContext::parse(tp).unwrap();
    assert_eq!(header, sent_in, "the header names the span it was sent in");
    assert_eq!(records[1].traceparent(), None);
    let handling = consume_span(&records[0]);
    let joined = handling.in_scope(|| current().unwrap());
    assert_eq!(
        joined.trace_id, sent_in.trace_id,
        "the consumer joins the trace"
    );
}

/// The library's group consumer: consumes what its group is assigned, seeks, pauses and resumes, and
/// commits only what it handed out (manual commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_consumer_seeks_pauses_and_commits_what_it_handed_out() {
    use ferry_client::{GroupConfig, GroupConsumer, SeekTo};
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let records =
        (0..100u32).map(|i| ProducerRecord::new("t", i.to_string()).with_partition(i % 2));
    send_all(&producer, records).await;
    let mut config = GroupConfig::new("lib", vec!["t".into()]);
    config.auto_commit = false;
    let mut consumer = within(GroupConsumer::join(client.clone(), config))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        got.push(within(consumer.next_record()).await.unwrap().unwrap());
    }
    assert_eq!(consumer.assignment().len(), 2);
    // Seek partition 0 back to its beginning: its 50 records come again, from offset 0.
    consumer
        .seek(("t".into(), 0), SeekTo::Beginning)
        .await
        .unwrap();
    let again = within(consumer.next_record()).await.unwrap().unwrap();
    assert_eq!((again.partition, again.offset), (0, 0));
    // Pause partition 0: only partition 1's new records come.
    consumer.pause(("t".into(), 0));
    send_all(
        &producer,
        (0..4u32).map(|i| ProducerRecord::new("t", format!("n{i}")).with_partition(i % 2)),
    )
    .await;
    for _ in 0..2 {
        let r = within(consumer.next_record()).await.unwrap().unwrap();
        assert_eq!(r.partition, 1, "paused partition 0 held back");
    }
    consumer.resume(&("t".into(), 0));
    let r = within(consumer.next_record()).await.unwrap().unwrap();
    assert_eq!((r.partition, r.offset), (0, 1), "resumed where it was");
    consumer.commit().await.unwrap();
    let d = client.describe_group("lib").await.unwrap();
    let committed: HashMap<u32, i64> = d
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed))
        .collect();
    assert_eq!(
        committed[&0], 2,
        "partition 0: offsets 0 and 1 handed out after the seek"
    );
    assert_eq!(committed[&1], 52, "partition 1: all 52 handed out");
    consumer.close().await;
    let d = client.describe_group("lib").await.unwrap();
    assert!(d.members.is_empty(), "a dynamic member leaves on close");
}

/// A small prefetch budget bounds what is read ahead, yet every record still comes through (a record larger
/// than the whole budget takes all of it). What is read ahead is counted from the records waiting, not from
/// the budget's own bookkeeping, so readers that ignored the budget would show here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_prefetch_is_bounded_by_bytes() {
    use ferry_client::{GroupConfig, GroupConsumer};
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    // 300 records of 1,000 bytes (15 fit a budget of 16 KiB), then 300 of 6,000 bytes, each larger than
    // the second consumer's whole budget of 4 KiB.
    let value = |i: u32, len: usize| format!("{i:03}:{}", "x".repeat(len - 4));
    send_all(
        &producer,
        (0..300u32).map(|i| ProducerRecord::new("t", value(i, 1_000)).with_partition(i % 2)),
    )
    .await;
    let mut config = GroupConfig::new("budget", vec!["t".into()]);
    config.prefetch_bytes_max = 16 * 1024;
    let consumer = within(GroupConsumer::join(client.clone(), config))
        .await
        .unwrap();
    assert_read_ahead_stays_within(consumer, 16 * 1024, 300).await;

    let t2 = "big";
    client.create_topic(t2, 2, 0).await.unwrap();
    send_all(
        &producer,
        (0..300u32).map(|i| ProducerRecord::new(t2, value(i, 6_000)).with_partition(i % 2)),
    )
    .await;
    let mut config = GroupConfig::new("budget-big", vec![t2.into()]);
    config.prefetch_bytes_max = 4096;
    let consumer = within(GroupConsumer::join(client.clone(), config))
        .await
        .unwrap();
    assert_read_ahead_stays_within(consumer, 4096, 300).await;
}

/// Takes one record, waits until the readers have filled a budget of `budget` bytes again (two partitions
/// with hundreds of records of that record's size are waiting to be read), checks they go no further, then
/// reads all `total` records, each once.
async fn assert_read_ahead_stays_within(
    mut consumer: ferry_client::GroupConsumer,
    budget: usize,
    total: usize,
) {
    let first = within(consumer.next_record()).await.unwrap().unwrap();
    // What a record counts against the budget (docs/consumers.md); one larger than the budget takes all.
    let headers: usize = first.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    let cost = first.value.len() + first.key.as_ref().map_or(0, |k| k.len()) + headers + 64;
    let fits = (budget / cost).max(1);
    let mut seen = std::collections::HashSet::from([(first.partition, first.offset)]);
    let deadline = std::time::Instant::now() + WAIT;
    while consumer.read_ahead_records() < fits {
        assert!(
            std::time::Instant::now() < deadline,
            "the readers never read ahead {fits} records (at {})",
            consumer.read_ahead_records()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Readers that ignored the budget would go on within milliseconds: the records are there to read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        consumer.read_ahead_records(),
        fits,
        "records read ahead with a budget for {fits}"
    );
    while seen.len() < total {
        let r = within(consumer.next_record()).await.unwrap().unwrap();
        assert!(
            consumer.read_ahead_records() <= fits,
            "read ahead past the budget"
        );
        assert!(seen.insert((r.partition, r.offset)), "handed out twice");
    }
    consumer.close().await;
}

/// A member whose heartbeats go unanswered (its coordinator stopped) hands out no record past its lease:
/// the send time of its last answered heartbeat plus the session timeout. The coordinator may give the
/// partitions to another member from then on, so records read ahead must not keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_its_coordinator_stops_at_its_lease_end() {
    use ferry_client::{GroupConfig, GroupConsumer};
    let (_dir, broker, client) = setup(1).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(&producer, numbered(0..3_000)).await;
    let mut config = GroupConfig::new("lease", vec!["t".into()]);
    config.session_timeout_ms = 2_000;
    let mut consumer = within(GroupConsumer::join(client.clone(), config))
        .await
        .unwrap();
    // Read ahead: the first record is out, the reader has buffered more.
    within(consumer.next_record()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.pause();
    let paused = std::time::Instant::now();
    let mut last = None;
    // Take a record every 50 ms for twice the session: the buffer holds far more than that.
    while paused.elapsed() < Duration::from_millis(4_000) {
        if let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(50), consumer.next_record()).await
        {
            last = Some(paused.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.resume();
    let last = last.expect("records read ahead are handed out while the lease lasts");
    assert!(
        last <= Duration::from_millis(2_000),
        "a record was handed out {last:?} after the coordinator stopped answering (session 2 s)"
    );
    consumer.close().await;
}

/// With assignment events on, every record of a partition comes between that partition's `Assigned` and
/// `Revoked`, for a member that loses a partition to a second member and gets it back when that one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_events_bracket_every_record() {
    use ferry_client::{GroupConfig, GroupConsumer, GroupEvent};
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let mut config = GroupConfig::new("events", vec!["t".into()]);
    config.assignment_events = true;
    let mut first = within(GroupConsumer::join(client.clone(), config.clone()))
        .await
        .unwrap();
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    let mut events = Vec::new();
    // Drives `first` until `done` holds of what it owns, checking each record against its ownership.
    async fn drive(
        c: &mut GroupConsumer,
        owned: &mut BTreeSet<u32>,
        events: &mut Vec<String>,
        done: impl Fn(&BTreeSet<u32>) -> bool,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(owned) {
            assert!(
                std::time::Instant::now() < deadline,
                "no settle: {events:?}"
            );
            match tokio::time::timeout(Duration::from_millis(200), c.next_event()).await {
                Ok(Some(Ok(GroupEvent::Assigned((_, p))))) => {
                    assert!(owned.insert(p), "assigned twice: {p}");
                    events.push(format!("+{p}"));
                }
                Ok(Some(Ok(GroupEvent::Revoked((_, p))))) => {
                    assert!(owned.remove(&p), "revoked unowned: {p}");
                    events.push(format!("-{p}"));
                }
                Ok(Some(Ok(GroupEvent::Record(r)))) => {
                    assert!(
                        owned.contains(&r.partition),
                        "record of {} outside its ownership: {events:?}",
                        r.partition
                    );
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        }
    }
    drive(&mut first, &mut owned, &mut events, |o| o.len() == 2).await;
    send_all(&producer, numbered(0..200)).await;
    let second = within(GroupConsumer::join(client.clone(), config.clone()))
        .await
        .unwrap();
    drive(&mut first, &mut owned, &mut events, |o| o.len() == 1).await;
    send_all(&producer, numbered(200..400)).await;
    second.close().await;
    drive(&mut first, &mut owned, &mut events, |o| o.len() == 2).await;
    assert_eq!(events.len(), 4, "{events:?}");
    first.close().await;
}

/// A partition revoked from a member while its records wait unread, then given back to the same member,
/// starts again at its committed offset and goes on in order: records its old reader read are never handed
/// out in the new ownership. (Both ways to get it wrong were there: records held for a paused partition
/// carried no reader generation, and generations were reused, so the old reader's queued records passed for
/// the new one's. Under ferry-chaos with lagging consumers that handed out records past the committed
/// offset, and a crash then skipped everything between: `poll_skips`, `unseen`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_back_resumes_at_its_commit_not_at_old_read_ahead() {
    use ferry_client::{GroupConfig, GroupConsumer, GroupEvent};
    let (_dir, _broker, client) = setup(2).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    send_all(
        &producer,
        (0..4_000u32).map(|i| ProducerRecord::new("t", i.to_string()).with_partition(i % 2)),
    )
    .await;
    let mut config = GroupConfig::new("back", vec!["t".into()]);
    config.assignment_events = true;
    let mut a = within(GroupConsumer::join(client.clone(), config.clone()))
        .await
        .unwrap();
    // Paused: `a` reads both partitions whole and holds every record, handing out none.
    a.pause(("t".into(), 0));
    a.pause(("t".into(), 1));
    let mut owned = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while owned < 2 || a.read_ahead_records() < 4_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "a never read everything ahead"
        );
        match tokio::time::timeout(Duration::from_millis(50), a.next_event()).await {
            Ok(Some(Ok(GroupEvent::Assigned(_)))) => owned += 1,
            Ok(other) => panic!("unexpected while paused: {other:?}"),
            Err(_) => {}
        }
    }
    let owners = |d: &ferry_client::v1::DescribeGroupResponse| -> Vec<usize> {
        d.members.iter().map(|m| m.owned.len()).collect()
    };
    // `b` joins: one partition moves to it. It leaves having read nothing: the partition comes back.
    let b = within(GroupConsumer::join(client.clone(), config.clone()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while owners(&client.describe_group("back").await.unwrap()) != [1, 1] {
        assert!(
            std::time::Instant::now() < deadline,
            "b never got a partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.close().await;
    let deadline = std::time::Instant::now() + WAIT;
    while owners(&client.describe_group("back").await.unwrap()) != [2] {
        assert!(
            std::time::Instant::now() < deadline,
            "the partition never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.resume(&("t".into(), 0));
    a.resume(&("t".into(), 1));
    // Nothing was handed out or committed: each partition's records come from 0, in order, once, and then
    // the ones published now.
    send_all(
        &producer,
        (4_000..4_020u32).map(|i| ProducerRecord::new("t", i.to_string()).with_partition(i % 2)),
    )
    .await;
    let mut next: HashMap<u32, u64> = HashMap::from([(0, 0), (1, 0)]);
    let mut handed = 0;
    while handed < 4_020 {
        match within(a.next_event()).await.unwrap().unwrap() {
            GroupEvent::Record(r) => {
                let want = next[&r.partition];
                assert_eq!(
                    r.offset, want,
                    "partition {}: handed out {} where {want} was next",
                    r.partition, r.offset
                );
                next.insert(r.partition, want + 1);
                handed += 1;
            }
            GroupEvent::Assigned(_) | GroupEvent::Revoked(_) => {}
        }
    }
    a.close().await;
}
