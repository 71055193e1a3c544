//! A consumer group rebalancing under load while its coordinator fails over (docs/consumers.md): three
//! brokers, a producer publishing throughout, two SDK members, the broker leading the group's coordinator
//! partition killed -9, a third member joining during the failover and one member closing. At the end every
//! acknowledged record was handed to some member (at-least-once), and no partition ever had two owners at
//! once: the records of one partition handed out by different members, in time order, never interleave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_client::{
    Client, ClientConfig, GroupConfig, GroupConsumer, GroupEvent, Producer, ProducerConfig,
    ProducerRecord,
};
use ferry_tests::cluster::{describe, start_cluster};

const TOPIC: &str = "load";
const GROUP: &str = "movers";
const PARTITIONS: u32 = 4;

/// What a member's application saw, when: an ownership starting or ending, or a record handed out.
#[derive(Debug, Clone)]
enum Seen {
    Assigned,
    Revoked,
    Record(String),
}

/// One observation: when, by which member, of which partition, what.
type HandOut = (Instant, usize, u32, Seen);

fn patient() -> ClientConfig {
    ClientConfig {
        retries_max: 200,
        retry_backoff_ms_max: 100,
        ..ClientConfig::default()
    }
}

/// Runs member `me` until `stop`, recording every record it hands out and checking each lies within an
/// ownership (between its partition's `Assigned` and `Revoked`).
fn member(
    client: Client,
    me: usize,
    log: Arc<Mutex<Vec<HandOut>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut config = GroupConfig::new(GROUP, vec![TOPIC.into()]);
        config.assignment_events = true;
        config.session_timeout_ms = 3_000;
        let mut c = GroupConsumer::join(client, config).await.expect("joins");
        let mut owned = BTreeSet::new();
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                e = c.next_event() => e,
            };
            match event {
                Some(Ok(GroupEvent::Assigned((_, p)))) => {
                    owned.insert(p);
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), me, p, Seen::Assigned));
                }
                Some(Ok(GroupEvent::Revoked((_, p)))) => {
                    owned.remove(&p);
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), me, p, Seen::Revoked));
                }
                Some(Ok(GroupEvent::Record(r))) => {
                    assert!(
                        owned.contains(&r.partition),
                        "member {me}: a record outside its ownership"
                    );
                    let value = String::from_utf8(r.value.to_vec()).unwrap();
                    log.lock().unwrap().push((
                        Instant::now(),
                        me,
                        r.partition,
                        Seen::Record(value),
                    ));
                }
                // Errors while the coordinator fails over are the client's to retry.
                Some(Err(_)) => {}
                None => break,
            }
        }
        c.close().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_under_load_through_a_coordinator_failover_keeps_one_owner_and_loses_nothing() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers = start_cluster(&dirs);
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let client = Client::connect_with(addrs.clone(), patient())
        .await
        .unwrap();
    client.create_topic(TOPIC, PARTITIONS, 3).await.unwrap();
    let log: Arc<Mutex<Vec<HandOut>>> = Arc::default();
    let stops: Vec<_> = (0..3).map(|_| tokio::sync::watch::channel(false)).collect();
    let mut members = vec![
        member(client.clone(), 0, log.clone(), stops[0].1.clone()),
        member(client.clone(), 1, log.clone(), stops[1].1.clone()),
    ];

    // The producer publishes 6,000 records over about 6 s.
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let producing = tokio::spawn(async move {
        let mut deliveries = Vec::new();
        for i in 0..6_000u32 {
            let r = ProducerRecord::new(TOPIC, format!("v{i}")).with_key(format!("k{}", i % 64));
            deliveries.push((format!("v{i}"), producer.send(r).await));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut acked = BTreeSet::new();
        for (v, d) in deliveries {
            if d.await.is_ok() {
                acked.insert(v);
            }
        }
        acked
    });

    // Once records flow, kill the coordinator's broker, and have a third member join meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while records(&log.lock().unwrap()).len() < 500 {
        assert!(Instant::now() < deadline, "the group consumes nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = ferry_protocol::topic::group_partition(GROUP) as usize;
    let coordinator = tokio::task::block_in_place(|| {
        describe(&addrs, "__consumer_offsets")["partition_info"][p]["leader"]
            .as_u64()
            .unwrap()
    });
    assert!(coordinator > 0, "the group's partition has a leader");
    tokio::task::block_in_place(|| brokers[coordinator as usize - 1].kill9());
    let survivors: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 != coordinator as usize)
        .map(|(_, a)| a.clone())
        .collect();
    let client2 = Client::connect_with(survivors, patient()).await.unwrap();
    members.push(member(client2, 2, log.clone(), stops[2].1.clone()));
    let acked = producing.await.unwrap();
    assert!(
        acked.len() >= 5_900,
        "only {} of 6000 acknowledged",
        acked.len()
    );
    // Member 0 closes (its partitions move on while the others keep consuming).
    stops[0].0.send_replace(true);

    // Every acknowledged record is handed to someone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = records(&log.lock().unwrap());
        let missing = acked.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged records never handed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &stops {
        s.0.send_replace(true);
    }
    for m in members {
        m.await.expect("a member task panicked");
    }

    // One owner at a time: each ownership (a member's records of a partition between its `Assigned` and
    // `Revoked`) spans the time from its first to its last hand-out; two members' spans of one partition
    // never overlap.
    let log = log.lock().unwrap().clone();
    let mut spans: BTreeMap<u32, Vec<(usize, Instant, Instant)>> = BTreeMap::new();
    let mut open: BTreeMap<(usize, u32), Option<(Instant, Instant)>> = BTreeMap::new();
    let close =
        |spans: &mut BTreeMap<u32, Vec<_>>, m: usize, p: u32, span: Option<(Instant, Instant)>| {
            if let Some((first, last)) = span {
                spans.entry(p).or_default().push((m, first, last));
            }
        };
    for (at, m, p, seen) in &log {
        match seen {
            Seen::Assigned => {
                let before = open.insert((*m, *p), None).flatten();
                close(&mut spans, *m, *p, before);
            }
            Seen::Revoked => {
                let span = open.remove(&(*m, *p)).flatten();
                close(&mut spans, *m, *p, span);
            }
            Seen::Record(_) => {
                let span = open.entry((*m, *p)).or_insert(None);
                *span = Some(span.map_or((*at, *at), |(first, _)| (first, *at)));
            }
        }
    }
    for ((m, p), span) in open {
        close(&mut spans, m, p, span);
    }
    for (p, spans) in &spans {
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                assert!(
                    a.0 == b.0 || a.2 < b.1 || b.2 < a.1,
                    "partition {p}: members {} and {} handed out records at overlapping times",
                    a.0,
                    b.0
                );
            }
        }
    }
    let handed_over = spans
        .values()
        .filter(|s| s.iter().map(|x| x.0).collect::<BTreeSet<_>>().len() > 1);
    assert!(
        handed_over.count() > 0,
        "no partition changed owner: the test rebalanced nothing"
    );
}

/// Every value handed out so far.
fn records(log: &[HandOut]) -> BTreeSet<String> {
    log.iter()
        .filter_map(|h| match &h.3 {
            Seen::Record(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}
