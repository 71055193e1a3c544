//! The consumer group under test: members that come and go while broker faults happen. Each incarnation
//! runs on its own thread and runtime with its own client, so a crash is real: its runtime is dropped with
//! every task in it, so it neither leaves the group nor commits; the coordinator finds out when its session
//! runs out. Incarnations alternately crash and close, and every replacement joins as a new member.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientConfig, GroupConfig, GroupConsumer, GroupEvent};

use crate::load::{Delivery, Seen, Shared};
use crate::setup::{GROUP, TOPIC};

/// A consumer's session timeout (ms): a crashed member's partitions move after this long.
const SESSION_TIMEOUT_MS: u32 = 6_000;
/// How long a slot stays empty between an incarnation ending and its replacement joining.
const REPLACE_AFTER: Duration = Duration::from_millis(500);

/// How an incarnation is told to end.
const RUN: u8 = 0;
const CRASH: u8 = 1;
const CLOSE: u8 = 2;

/// One running incarnation.
struct Slot {
    end: Arc<AtomicU8>,
    thread: std::thread::JoinHandle<()>,
}

/// The group's members.
pub struct Consumers {
    brokers: Vec<String>,
    config: ClientConfig,
    h: Shared,
    slots: Vec<Slot>,
    next_member: usize,
    /// Which slot is replaced next.
    turn: usize,
    crash_next: bool,
    /// Time spent on each record (`--consumer-delay-ms`).
    delay: Duration,
}

impl Consumers {
    /// Starts `n` members, each spending `delay` on every record.
    pub fn start(
        n: usize,
        brokers: Vec<String>,
        config: ClientConfig,
        h: Shared,
        delay: Duration,
    ) -> Consumers {
        let mut c = Consumers {
            brokers,
            config,
            h,
            slots: Vec::new(),
            next_member: 0,
            turn: 0,
            crash_next: true,
            delay,
        };
        for _ in 0..n {
            let slot = c.spawn();
            c.slots.push(slot);
        }
        c
    }

    fn spawn(&mut self) -> Slot {
        let member = self.next_member;
        self.next_member += 1;
        let end = Arc::new(AtomicU8::new(RUN));
        let (brokers, config, h, flag, delay) = (
            self.brokers.clone(),
            self.config.clone(),
            self.h.clone(),
            end.clone(),
            self.delay,
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("consumer runtime");
            let left = rt.block_on(consume(member, brokers, config, flag, h, delay));
            // A crash: every task of the member (heartbeats, readers, commits) is dropped where it stands.
            rt.shutdown_background();
            drop(left);
        });
        Slot { end, thread }
    }

    /// Ends one member (crash and close in turn) and starts its replacement. Blocking: run off the runtime.
    pub fn replace_one(&mut self) {
        let i = self.turn % self.slots.len();
        self.turn += 1;
        let how = if self.crash_next { CRASH } else { CLOSE };
        self.crash_next = !self.crash_next;
        let old = self.slots.swap_remove(i);
        old.end.store(how, Ordering::Relaxed);
        let _ = old.thread.join();
        {
            let mut h = self.h.lock();
            if how == CRASH {
                h.consumer_crashes += 1;
            } else {
                h.consumer_closes += 1;
            }
        }
        std::thread::sleep(REPLACE_AFTER);
        let slot = self.spawn();
        self.slots.push(slot);
    }

    /// Closes every member (they commit and leave).
    pub fn close_all(self) {
        for s in &self.slots {
            s.end.store(CLOSE, Ordering::Relaxed);
        }
        for s in self.slots {
            let _ = s.thread.join();
        }
    }
}

/// One incarnation: consumes until told to end. On a crash it returns the consumer unclosed (dropped only
/// after its runtime is gone); on a close it closes it.
async fn consume(
    member: usize,
    brokers: Vec<String>,
    config: ClientConfig,
    end: Arc<AtomicU8>,
    h: Shared,
    delay: Duration,
) -> Option<GroupConsumer> {
    let client = match Client::connect_with(brokers, config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: consumer {member} could not connect: {e}");
            return None;
        }
    };
    let mut config = GroupConfig::new(GROUP, vec![TOPIC.into()]);
    config.session_timeout_ms = SESSION_TIMEOUT_MS;
    config.assignment_events = true;
    let mut c = match GroupConsumer::join(client, config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: consumer {member} could not join: {e}");
            return None;
        }
    };
    let deliver = |partition: u32, what: Seen| {
        h.lock().deliveries.push(Delivery {
            member,
            at: Instant::now(),
            partition,
            what,
        });
    };
    loop {
        match end.load(Ordering::Relaxed) {
            CRASH => return Some(c),
            CLOSE => {
                c.close().await;
                return None;
            }
            _ => {}
        }
        match tokio::time::timeout(Duration::from_millis(200), c.next_event()).await {
            Ok(Some(Ok(GroupEvent::Record(r)))) => {
                let value = String::from_utf8_lossy(&r.value).into_owned();
                let offset = r.offset;
                deliver(r.partition, Seen::Record { offset, value });
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Ok(Some(Ok(GroupEvent::Assigned((_, p))))) => deliver(p, Seen::Assigned),
            Ok(Some(Ok(GroupEvent::Revoked((_, p))))) => deliver(p, Seen::Revoked),
            Ok(Some(Err(e))) => eprintln!("chaos: consumer {member}: {e}"),
            Ok(None) => return None,
            Err(_) => {}
        }
    }
}

/// Replaces a member every `every` until `stop`: a crash, then a close, and so on.
pub async fn churn(
    consumers: Arc<parking_lot::Mutex<Option<Consumers>>>,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    loop {
        let next = Instant::now() + every;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = consumers.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(c) = c.lock().as_mut() {
                c.replace_one();
            }
        })
        .await;
    }
}
