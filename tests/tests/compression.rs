//! LZ4 end to end on three brokers: the SDK's producer compresses batches, every replica stores them
//! compressed (replication carries the batch as the client built it), and every reader gets each record
//! back whole — keys, values and headers — from the SDK (which decompresses), from the broker's plain
//! record format (which decompresses for clients without LZ4), and from a former follower once the
//! leader is killed.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use ferry_protocol::batch::Compression;
use ferry_protocol::v1;
use ferry_tests::cluster::{client as raw_client, leaders, start_cluster};
use ferry_tests::segment_files;

const TOPIC: &str = "packed";
const PARTITIONS: u32 = 2;
const RECORDS: u64 = 3_000;

/// Record `i`: a key, a value that compresses well, a header.
fn record(i: u64) -> (String, String, String) {
    let value = format!("order {i} placed; ").repeat(20);
    (format!("k{}", i % 17), value, format!("h{i}"))
}

/// Every record of the topic through the SDK, as `value -> (key, header)`; panics on a duplicate.
async fn read_with_sdk(client: &Client) -> BTreeMap<String, (String, String)> {
    let mut seen = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let r = client.fetch(TOPIC, p, offset, 1 << 20, 0).await.unwrap();
            for rec in &r.records {
                let key = String::from_utf8(rec.key.clone().unwrap().to_vec()).unwrap();
                let header = rec
                    .headers
                    .iter()
                    .find(|(k, _)| k == "n")
                    .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
                    .unwrap_or_default();
                let value = String::from_utf8(rec.value.to_vec()).unwrap();
                assert!(
                    seen.insert(value, (key, header)).is_none(),
                    "a record twice"
                );
            }
            if r.next_offset >= r.high_watermark {
                break;
            }
            offset = r.next_offset;
        }
    }
    seen
}

fn expected() -> BTreeMap<String, (String, String)> {
    (0..RECORDS)
        .map(|i| {
            let (k, v, h) = record(i);
            (v, (k, h))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_batches_replicate_compressed_and_read_back_whole() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers = start_cluster(&dirs);
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let config = ClientConfig {
        retries_max: 100,
        retry_backoff_ms_max: 100,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(addrs.clone(), config).await.unwrap();
    client.create_topic(TOPIC, PARTITIONS, 3).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            compression: Compression::Lz4,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let mut raw_bytes = 0u64;
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let (k, v, h) = record(i);
        raw_bytes += (k.len() + v.len() + h.len()) as u64;
        let r = ProducerRecord::new(TOPIC, v)
            .with_key(k)
            .with_header("n", h);
        deliveries.push(producer.send(r).await);
    }
    for d in futures::future::join_all(deliveries).await {
        d.expect("acknowledged");
    }
    assert_eq!(
        read_with_sdk(&client).await,
        expected(),
        "the SDK reads every record whole"
    );

    // Every replica stores the batches compressed: each broker's log of the topic is a fraction of the raw
    // bytes (the values repeat 20 times).
    ferry_tests::wait_until(
        Duration::from_secs(20),
        "every replica holds the log",
        || {
            dirs.iter().all(|d| {
                let stored: u64 = (0..PARTITIONS)
                    .flat_map(|p| segment_files(d.path(), TOPIC, p))
                    .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                    .sum();
                stored > 0 && stored < raw_bytes / 4
            })
        },
    );

    // The plain record format: the broker decompresses for clients that cannot.
    let leader = leaders(&addrs, TOPIC).await;
    let mut plain = 0u64;
    for p in 0..PARTITIONS {
        let mut c = raw_client(&leader[&p]).await.unwrap();
        let mut offset = 0;
        loop {
            let r = c
                .fetch(v1::FetchRequest {
                    topic: TOPIC.into(),
                    partition: p,
                    offset,
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                    format: v1::Format::Records as i32,
                })
                .await
                .unwrap()
                .into_inner();
            for rec in &r.records {
                let want = expected();
                let value = String::from_utf8(rec.value.to_vec()).unwrap();
                let (k, h) = &want[&value];
                assert_eq!(rec.key.as_ref(), k.as_bytes());
                assert_eq!(rec.headers[0].value.as_ref(), h.as_bytes());
                plain += 1;
            }
            if r.next_offset >= r.high_watermark {
                break;
            }
            offset = r.next_offset;
        }
    }
    assert_eq!(plain, RECORDS, "the plain format serves every record");

    // The leader of partition 0 dies: a former follower serves the same records from its own copy.
    let victim = addrs.iter().position(|a| *a == leader[&0]).unwrap();
    tokio::task::block_in_place(|| brokers[victim].kill9());
    let survivors: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.clone())
        .collect();
    let client = Client::connect_with(
        survivors,
        ClientConfig {
            retries_max: 100,
            retry_backoff_ms_max: 100,
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        read_with_sdk(&client).await,
        expected(),
        "a former follower serves every record whole"
    );
}
