//! The load `ferry-chaos` drives while faults come and go: idempotent producers publishing unique values, a
//! sampler of the group's committed offsets (the group's consumers are in `consumers.rs`); everything they
//! observe goes into one [`History`] for the checker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{Client, Producer, ProducerConfig, ProducerRecord};
use parking_lot::Mutex;

use crate::setup::{GROUP, TOPIC};

/// Everything observed, for the checker.
#[derive(Default)]
pub struct History {
    /// value → (partition, offset, sent at, acknowledged at).
    pub acked: HashMap<String, (u32, u64, Instant, Instant)>,
    pub failed: HashSet<String>,
    /// What each consumer incarnation saw, in the order it saw it (ownership changes and records).
    pub deliveries: Vec<Delivery>,
    /// Consumer incarnations ended by a crash (dropped without leaving or committing), and by a close.
    pub consumer_crashes: usize,
    pub consumer_closes: usize,
    /// (partition, committed, end) samples of the group, in time order.
    pub commits: Vec<(u32, i64, i64)>,
}

pub type Shared = Arc<Mutex<History>>;

/// One thing a consumer incarnation saw, when it returned from `next_event`.
pub struct Delivery {
    /// The incarnation: a restarted consumer is a new member.
    pub member: usize,
    pub at: Instant,
    pub partition: u32,
    pub what: Seen,
}

pub enum Seen {
    Assigned,
    Revoked,
    Record { offset: u64, value: String },
}

impl History {
    /// The records delivered: (member, partition, offset, value).
    pub fn polled(&self) -> impl Iterator<Item = (usize, u32, u64, &str)> {
        self.deliveries.iter().filter_map(|d| match &d.what {
            Seen::Record { offset, value } => {
                Some((d.member, d.partition, *offset, value.as_str()))
            }
            _ => None,
        })
    }
}

pub async fn produce(id: usize, client: Client, rate: u64, stop: Arc<AtomicBool>, h: Shared) {
    let config = ProducerConfig {
        linger_ms: 5,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).expect("producer");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                let value = format!("p{id}-{n}");
                n += 1;
                let r = ProducerRecord::new(TOPIC, value.clone()).with_key(format!("k{}", n % 31));
                let sent = Instant::now();
                let d = producer.send(r).await;
                pending.push(async move { (value, sent, d.await) });
            }
            Some((value, sent, result)) = futures::StreamExt::next(&mut pending), if !pending.is_empty() => {
                record(&h, value, sent, result);
            }
        }
    }
    producer.flush().await;
    while let Some((value, sent, result)) = futures::StreamExt::next(&mut pending).await {
        record(&h, value, sent, result);
    }
    producer.close().await;
}

fn record(
    h: &Shared,
    value: String,
    sent: Instant,
    result: Result<(u32, u64), ferry_client::ClientError>,
) {
    let mut h = h.lock();
    match result {
        Ok((p, o)) => {
            h.acked.insert(value, (p, o, sent, Instant::now()));
        }
        Err(_) => {
            h.failed.insert(value);
        }
    }
}

pub async fn sample_commits(client: Client, stop: Arc<AtomicBool>, h: Shared) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(d) = client.describe_group(GROUP).await {
            let mut h = h.lock();
            for p in d.partitions {
                h.commits.push((p.partition, p.committed, p.end_offset));
            }
        }
    }
}
