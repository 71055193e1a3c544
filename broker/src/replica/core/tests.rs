//! Table tests of the replica core: no runtime, no timers, time handed in by hand. A test cluster passes
//! the cores' messages between them, performs or holds their fsyncs, and records every answer, so each
//! test states exactly which events happened in which order and what the cores decided.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchBuilder, ProducerStamp};
use raft::eraftpb::{Message, MessageType};

use super::{Action, Event, Fatal, FsyncPolicy, Proposal, ReplicaConfig, ReplicaCore};
use crate::replica::lease::QUIESCE_CONTEXT;
use crate::replica::liveness::Liveness;
use crate::replica::raft_log::{repair, ReplicaStorage};
use crate::replica::types::{Ack, Durability, Leadership, Membership, Reconfigure, ReplicaError};
use crate::storage::{DiskFile, LogConfig, ManualClock, OsDisk};

const TICK_MS: u64 = 100;
/// Ticks a test waits for something Raft does within a few election timeouts.
const TICKS_MAX: usize = 200;

/// What a test asked of a core and what it got: publish ids and their outcomes, in answer order.
type Answers = Vec<(u32, Result<Ack, ReplicaError>)>;

struct Node {
    core: ReplicaCore<u32>,
    liveness: Arc<Liveness>,
    _dir: tempfile::TempDir,
    /// Hold fsyncs instead of performing them (the core then waits at its barrier).
    hold_syncs: bool,
    held: Option<Arc<dyn DiskFile>>,
    /// Cut off: its messages, both ways, are dropped, and nobody hears it.
    cut: bool,
    answers: Answers,
    high_watermark: u64,
    leadership: Leadership,
    lease: Option<Instant>,
    membership: Membership,
    quiesced: bool,
    fenced: Option<Fatal>,
    /// Every action's kind, in order (what the shell would have done).
    trace: Vec<&'static str>,
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    now: Instant,
    net: VecDeque<Message>,
}

fn config(id: u64, fsync: FsyncPolicy) -> ReplicaConfig {
    ReplicaConfig {
        node_id: id,
        tick_ms: TICK_MS,
        election_ticks: 4,
        heartbeat_ticks: 1,
        append_bytes_max: 1 << 20,
        fsync,
    }
}

fn open(dir: &std::path::Path, voters: &[u64]) -> ReplicaStorage {
    ReplicaStorage::open(
        Arc::new(OsDisk),
        Arc::new(ManualClock::new(1_000)),
        dir,
        LogConfig::default(),
        voters,
    )
    .unwrap()
    .0
}

fn publish(value: &str, stamp: ProducerStamp, durability: Durability, id: u32) -> Proposal<u32> {
    let mut b = BatchBuilder::new(1);
    b.producer(stamp);
    b.push(1, None, value.as_bytes(), &[]);
    let data: Bytes = b.finish();
    let header = batch::validate(&data).unwrap();
    Proposal {
        batch: data,
        header,
        durability,
        reply: id,
    }
}

fn plain(value: &str, id: u32) -> Proposal<u32> {
    publish(value, ProducerStamp::NONE, Durability::Quorum, id)
}

fn stamped(producer_id: i64, epoch: i16, seq: i32, id: u32) -> Proposal<u32> {
    let stamp = ProducerStamp {
        producer_id,
        producer_epoch: epoch,
        base_sequence: seq,
    };
    publish("x", stamp, Durability::Quorum, id)
}

impl Cluster {
    fn new(voters: &[u64], fsync: FsyncPolicy) -> Cluster {
        Cluster::with_repairing(voters, fsync, &[])
    }

    /// A fresh group of `voters`; those in `repairing` open with a repair marker (their log lost data).
    fn with_repairing(voters: &[u64], fsync: FsyncPolicy, repairing: &[u64]) -> Cluster {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        for &id in voters {
            let dir = tempfile::tempdir().unwrap();
            if repairing.contains(&id) {
                std::fs::create_dir_all(dir.path()).unwrap();
                repair::mark(&OsDisk, dir.path(), 5).unwrap();
            }
            let storage = open(dir.path(), voters);
            let liveness = Arc::new(Liveness::default());
            let core = ReplicaCore::new(
                format!("t-{id}"),
                storage,
                config(id, fsync),
                None,
                liveness.clone(),
                now,
            )
            .unwrap();
            let high_watermark = core.opened_high_watermark();
            nodes.insert(
                id,
                Node {
                    core,
                    liveness,
                    _dir: dir,
                    hold_syncs: false,
                    held: None,
                    cut: false,
                    answers: Vec::new(),
                    high_watermark,
                    leadership: Leadership::default(),
                    lease: None,
                    membership: Membership::default(),
                    quiesced: false,
                    fenced: None,
                    trace: Vec::new(),
                },
            );
        }
        let mut c = Cluster {
            nodes,
            now,
            net: VecDeque::new(),
        };
        for &id in voters {
            c.settle(id);
        }
        c.deliver();
        c
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Carries out node `id`'s actions as the shell does, up to a held fsync.
    fn settle(&mut self, id: u64) {
        let now = self.now;
        let n = self.nodes.get_mut(&id).unwrap();
        while n.held.is_none() {
            let Some(a) = n.core.next_action() else { break };
            match a {
                Action::Send(msgs) => {
                    n.trace.push("send");
                    if !n.cut {
                        self.net.extend(msgs);
                    }
                }
                Action::Sync(file) => {
                    n.trace.push("sync");
                    if n.hold_syncs {
                        n.held = Some(file);
                    } else {
                        file.sync_data().unwrap();
                        n.core.synced(Ok(()), now);
                    }
                }
                Action::Answer(reply, outcome) => {
                    n.trace.push("answer");
                    n.answers.push((reply, outcome));
                }
                Action::HighWatermark(hw) => {
                    n.trace.push("high-watermark");
                    n.high_watermark = hw;
                }
                Action::Membership(m) => n.membership = m,
                Action::Leadership(l) => n.leadership = l,
                Action::Lease(l) => n.lease = l,
                Action::InSync(_) => {}
                Action::Quiesced(q) => n.quiesced = q,
                Action::Fence(f) => {
                    n.trace.push("fence");
                    n.fenced = Some(f);
                }
            }
        }
    }

    /// Performs node `id`'s held fsync (or fails it), then carries on.
    fn release(&mut self, id: u64, outcome: Result<(), String>) {
        let now = self.now;
        let n = self.node(id);
        n.hold_syncs = false;
        if let Some(file) = n.held.take() {
            if outcome.is_ok() {
                file.sync_data().unwrap();
            }
            n.core.synced(outcome.map_err(Fatal::Other), now);
        }
        self.settle(id);
        self.deliver();
    }

    fn handle(&mut self, id: u64, event: Event<u32>) {
        let now = self.now;
        self.node(id).core.handle(event, now);
        self.settle(id);
        self.deliver();
    }

    /// Delivers messages until the network is quiet (those to a core waiting at its fsync barrier wait).
    fn deliver(&mut self) {
        let mut waiting = Vec::new();
        while let Some(m) = self.net.pop_front() {
            let (from, to) = (m.from, m.to);
            let Some(n) = self.nodes.get_mut(&to) else {
                continue;
            };
            if n.cut || self.nodes[&from].cut {
                continue;
            }
            let n = self.nodes.get_mut(&to).unwrap();
            if n.held.is_some() {
                waiting.push(m);
                continue;
            }
            n.liveness.heard_at(from, self.now);
            n.core.handle(Event::Messages(vec![m]), self.now);
            self.settle(to);
        }
        self.net.extend(waiting);
    }

    /// One beat of the Raft clock on every node: keepalives between nodes that are not cut, then a tick.
    fn tick(&mut self) {
        self.now += Duration::from_millis(TICK_MS);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if a != b && !self.nodes[&a].cut && !self.nodes[&b].cut {
                    self.nodes[&b].liveness.heard_at(a, self.now);
                }
            }
        }
        for id in ids {
            if self.nodes[&id].held.is_none() {
                let now = self.now;
                self.node(id).core.handle(Event::Ticks(1), now);
                self.settle(id);
            }
        }
        self.deliver();
    }

    fn tick_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        for _ in 0..TICKS_MAX {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("not within {TICKS_MAX} ticks: {what}");
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| n.leadership.serving)
            .map(|(id, _)| *id)
    }

    fn answers(&mut self, id: u64) -> Answers {
        std::mem::take(&mut self.node(id).answers)
    }
}

fn ack(base_offset: u64) -> Result<Ack, ReplicaError> {
    Ok(Ack {
        base_offset,
        record_count: 1,
    })
}

#[test]
fn a_publish_is_answered_only_after_the_fsync_of_its_batch() {
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.node(1).hold_syncs = true;
    c.node(1).trace.clear();
    c.handle(1, Event::Proposals(vec![plain("a", 7), plain("b", 8)]));
    assert_eq!(c.node(1).trace, ["sync"], "one fsync for both batches");
    assert!(c.answers(1).is_empty(), "nothing answered before the fsync");
    c.release(1, Ok(()));
    assert_eq!(c.answers(1), [(7, ack(0)), (8, ack(1))]);
    assert_eq!(c.node(1).high_watermark, 2);
    let trace = &c.node(1).trace;
    let hw = trace.iter().position(|t| *t == "high-watermark").unwrap();
    let answer = trace.iter().position(|t| *t == "answer").unwrap();
    assert!(hw < answer, "readers see the watermark first: {trace:?}");
}

#[test]
fn a_failed_fsync_fences_the_replica_and_answers_every_waiting_publish() {
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.node(1).hold_syncs = true;
    c.handle(1, Event::Proposals(vec![plain("a", 1), plain("b", 2)]));
    c.release(1, Err("fsync failed: EIO".into()));
    assert_eq!(
        c.node(1).fenced,
        Some(Fatal::Other("fsync failed: EIO".into()))
    );
    let answers = c.answers(1);
    assert_eq!(answers.len(), 2);
    for (_, a) in answers {
        assert!(
            matches!(a, Err(ReplicaError::Failed(ref w)) if w.contains("EIO")),
            "{a:?}"
        );
    }
    // Fenced: nothing more is decided.
    c.node(1).trace.clear();
    c.handle(1, Event::Proposals(vec![plain("c", 3)]));
    c.handle(1, Event::Ticks(1));
    assert!(c.node(1).trace.is_empty(), "{:?}", c.node(1).trace);
    assert!(c.node(1).core.is_fenced());
}

#[test]
fn idempotent_producers_are_deduplicated_sequenced_and_fenced() {
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.handle(1, Event::Proposals(vec![stamped(9, 2, 0, 1)]));
    assert_eq!(c.answers(1), [(1, ack(0))]);
    // (producer epoch, base sequence) of a second batch from producer 9, and what it gets.
    let table: &[(i16, i32, &str)] = &[
        (
            2,
            0,
            "duplicate: the first write's offsets, nothing written",
        ),
        (2, 5, "gap"),
        (1, 1, "fenced"),
        (2, 1, "next: written at offset 1"),
        (3, 0, "new epoch: written at offset 2"),
    ];
    for (i, &(epoch, seq, what)) in table.iter().enumerate() {
        let id = 10 + i as u32;
        c.node(1).trace.clear();
        c.handle(1, Event::Proposals(vec![stamped(9, epoch, seq, id)]));
        let got = c.answers(1);
        let wrote = c.node(1).trace.contains(&"sync");
        match what.split(':').next().unwrap() {
            "duplicate" => {
                assert_eq!(got, [(id, ack(0))], "{what}");
                assert!(!wrote, "{what}");
            }
            "gap" => {
                // It waits for the batches before it; none come, so it is refused, retriably.
                assert!(got.is_empty() && !wrote, "{what}: {got:?}");
                for _ in 0..=super::SEQUENCE_WAIT_MS / TICK_MS {
                    c.tick();
                }
                let got = c.answers(1);
                assert!(
                    matches!(got.as_slice(), [(i, Err(ReplicaError::Gap(_)))] if *i == id),
                    "{what}: {got:?}"
                );
                assert!(!c.node(1).trace.contains(&"sync"), "{what}");
            }
            "fenced" => {
                assert!(
                    matches!(got.as_slice(), [(i, Err(ReplicaError::Sequence(_)))] if *i == id),
                    "{what}: {got:?}"
                );
                assert!(!wrote, "{what}");
            }
            _ => {
                let offset = if epoch == 3 { 2 } else { 1 };
                assert_eq!(got, [(id, ack(offset))], "{what}");
                assert!(wrote, "{what}");
            }
        }
    }
    // Two batches of one step: the second follows the first, which is not in the log yet.
    c.handle(
        1,
        Event::Proposals(vec![
            stamped(4, 0, 0, 30),
            stamped(4, 0, 1, 31),
            stamped(4, 0, 1, 32),
        ]),
    );
    let got = c.answers(1);
    assert!(
        matches!(got[0], (32, Err(ReplicaError::Dropped(_)))),
        "{got:?}"
    );
    assert_eq!(got[1..], [(30, ack(3)), (31, ack(4))]);
}

/// Several batches of one producer in flight may arrive out of order: one ahead of its sequence waits for
/// the ones before it and is written right after them, so the log holds them in sequence order.
#[test]
fn a_batch_ahead_of_its_sequence_waits_for_the_ones_before_it() {
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.handle(1, Event::Proposals(vec![stamped(7, 0, 0, 1)]));
    assert_eq!(c.answers(1), [(1, ack(0))]);
    // Sequences 3 and 2 come before 1.
    c.handle(1, Event::Proposals(vec![stamped(7, 0, 3, 4)]));
    c.handle(1, Event::Proposals(vec![stamped(7, 0, 2, 3)]));
    c.tick();
    assert!(c.answers(1).is_empty(), "both wait for sequence 1");
    c.handle(1, Event::Proposals(vec![stamped(7, 0, 1, 2)]));
    assert_eq!(c.answers(1), [(2, ack(1)), (3, ack(2)), (4, ack(3))]);
    // A retry of one that waited is answered with where it landed.
    c.handle(1, Event::Proposals(vec![stamped(7, 0, 2, 5)]));
    assert_eq!(c.answers(1), [(5, ack(2))]);

    // A producer this leader does not know (forgotten, or its first batches lost): whatever its first
    // sequence, its batches wait a while for earlier ones, then go in sequence order.
    c.handle(1, Event::Proposals(vec![stamped(8, 0, 41, 11)]));
    c.handle(1, Event::Proposals(vec![stamped(8, 0, 40, 10)]));
    assert!(c.answers(1).is_empty());
    for _ in 0..=super::SEQUENCE_WAIT_MS / TICK_MS {
        c.tick();
    }
    assert_eq!(c.answers(1), [(10, ack(4)), (11, ack(5))]);
    // ... also when the later one came first, so its wait runs out first: the ones before it that came
    // since go ahead of it, not after (nor refused).
    c.handle(1, Event::Proposals(vec![stamped(6, 0, 72, 22)]));
    c.tick();
    c.tick();
    c.handle(1, Event::Proposals(vec![stamped(6, 0, 70, 20)]));
    c.handle(1, Event::Proposals(vec![stamped(6, 0, 71, 21)]));
    for _ in 0..=super::SEQUENCE_WAIT_MS / TICK_MS {
        c.tick();
    }
    assert_eq!(c.answers(1), [(20, ack(6)), (21, ack(7)), (22, ack(8))]);

    // Waiting is bounded: past PARKED_MAX waiting publishes, more are refused, retriably.
    let n = super::PARKED_MAX as u32;
    let ahead: Vec<_> = (0..=n)
        .map(|i| stamped(9, 0, 10 + i as i32, 100 + i))
        .collect();
    c.handle(1, Event::Proposals(vec![stamped(9, 0, 0, 99)]));
    assert_eq!(c.answers(1), [(99, ack(9))]);
    c.handle(1, Event::Proposals(ahead));
    let got = c.answers(1);
    assert!(
        matches!(got.as_slice(), [(i, Err(ReplicaError::Dropped(_)))] if *i == 100 + n),
        "{got:?}"
    );
    for _ in 0..=super::SEQUENCE_WAIT_MS / TICK_MS {
        c.tick();
    }
    let got = c.answers(1);
    assert_eq!(got.len(), n as usize);
    assert!(
        got.iter()
            .all(|(_, r)| matches!(r, Err(ReplicaError::Gap(_)))),
        "{got:?}"
    );
}

#[test]
fn three_replicas_acknowledge_once_a_quorum_fsynced_and_the_leader_sends_before_its_own_fsync() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != l).collect();
    for f in &followers {
        c.node(*f).hold_syncs = true;
    }
    c.node(l).trace.clear();
    c.handle(l, Event::Proposals(vec![plain("a", 1)]));
    let trace = c.node(l).trace.clone();
    assert_eq!(
        &trace[..2],
        ["send", "sync"],
        "appends leave before the leader's fsync"
    );
    assert!(
        c.answers(l).is_empty(),
        "only the leader fsynced: {trace:?}"
    );
    // A follower with one fsync outstanding has taken the entry and waits at its barrier.
    assert!(followers.iter().all(|f| c.nodes[f].held.is_some()));
    c.release(followers[0], Ok(()));
    assert_eq!(c.answers(l), [(1, ack(0))], "a quorum fsynced");
    c.release(followers[1], Ok(()));
    c.tick_until("every replica learns the commit", |c| {
        c.nodes.values().all(|n| n.high_watermark == 1)
    });
}

#[test]
fn a_leader_hands_out_its_appends_before_it_writes_its_own_copy() {
    // The followers write while the leader writes: the appends leave before the leader's log holds the
    // entry, and its fsync is asked for only after its write.
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    let now = c.now;
    let core = &mut c.node(l).core;
    let last = |core: &ReplicaCore<u32>| raft::Storage::last_index(core.storage()).unwrap();
    let before = last(core);
    core.handle(Event::Proposals(vec![plain("a", 1)]), now);
    let Some(Action::Send(msgs)) = core.next_action() else {
        panic!("the appends come first");
    };
    assert!(msgs
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgAppend && m.entries.len() == 1));
    assert_eq!(last(core), before, "not written yet when the appends leave");
    let Some(Action::Sync(file)) = core.next_action() else {
        panic!("then the leader's fsync");
    };
    assert_eq!(last(core), before + 1, "written before its fsync");
    file.sync_data().unwrap();
    core.synced(Ok(()), now);
    c.net.extend(msgs);
    c.settle(l);
    c.deliver();
    assert_eq!(c.answers(l), [(1, ack(0))]);
}

#[test]
fn a_follower_refuses_publishes_and_names_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    c.handle(f, Event::Proposals(vec![plain("a", 1)]));
    assert!(
        matches!(c.answers(f).as_slice(), [(1, Err(ReplicaError::NotLeader { leader }))] if *leader == l)
    );
}

#[test]
fn a_publish_in_flight_when_leadership_moves_has_an_unknown_outcome() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let old = c.leader().unwrap();
    c.node(old).cut = true;
    c.handle(old, Event::Proposals(vec![plain("lost", 1)]));
    assert!(c.answers(old).is_empty(), "no quorum reached");
    c.tick_until("another leader", |c| c.leader().is_some_and(|l| l != old));
    c.node(old).cut = false;
    c.tick_until("the old leader hears of the new term", |c| {
        !c.nodes[&old].leadership.serving
    });
    let got = c.answers(old);
    assert!(
        matches!(got.as_slice(), [(1, Err(ReplicaError::Dropped(w)))] if w.contains("outcome unknown")),
        "{got:?}"
    );
}

#[test]
fn an_idle_group_quiesces_and_wakes_when_its_leader_goes_quiet() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    c.handle(l, Event::Proposals(vec![plain("a", 1)]));
    c.tick_until("every replica quiesced", |c| {
        c.nodes.values().all(|n| n.quiesced)
    });
    // Quiesced: beats pass without a single message.
    for n in c.nodes.values_mut() {
        n.trace.clear();
    }
    for _ in 0..20 {
        c.tick();
    }
    assert!(c.nodes.values().all(|n| !n.trace.contains(&"send")));
    // The leader's broker goes silent: the followers wake and elect another.
    c.node(l).cut = true;
    c.tick_until("a new leader", |c| c.leader().is_some_and(|n| n != l));
    let new = c.leader().unwrap();
    assert!(!c.nodes[&new].quiesced);
}

#[test]
fn a_quiesce_heartbeat_quiets_a_follower_and_any_other_message_wakes_it() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("every replica quiesced", |c| {
        c.leader().is_some() && c.nodes.values().all(|n| n.quiesced)
    });
    let l = c.leader().unwrap();
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    let mut hb = Message::default();
    hb.set_msg_type(MessageType::MsgHeartbeat);
    hb.from = l;
    hb.to = f;
    hb.term = c.nodes[&l].leadership.term;
    let quiesce = Bytes::from_static(QUIESCE_CONTEXT);
    for _ in 0..2 {
        hb.context = Bytes::new();
        c.handle(f, Event::Messages(vec![hb.clone()]));
        assert!(!c.nodes[&f].quiesced, "an ordinary heartbeat wakes it");
        hb.context = quiesce.clone();
        c.handle(f, Event::Messages(vec![hb.clone()]));
        assert!(c.nodes[&f].quiesced, "the quiesce heartbeat quiets it");
    }
}

#[test]
fn the_lease_runs_from_heartbeats_a_quorum_answered_and_runs_out_when_cut_off() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader with a lease", |c| {
        c.leader()
            .is_some_and(|l| c.nodes[&l].lease.is_some_and(|u| u > c.now))
    });
    let l = c.leader().unwrap();
    c.node(l).cut = true;
    c.tick_until("the cut-off leader's lease runs out", |c| {
        c.nodes[&l].lease.is_none_or(|u| u <= c.now)
    });
    // 4 ticks of 100 ms make the vote-refusal window 300 ms; the lease is 90% of it from the last
    // heartbeat a quorum answered, which was sent no later than when the leader was cut off.
    c.handle(l, Event::RenewLease);
    assert!(
        c.nodes[&l].lease.is_none_or(|u| u <= c.now),
        "nobody answers"
    );
}

#[test]
fn a_repairing_replica_neither_votes_nor_campaigns() {
    let mut c = Cluster::with_repairing(&[1, 2, 3], FsyncPolicy::PerBatch, &[3]);
    // Node 1 is cut off: of the others, only node 2 may lead, and it needs node 3's vote, which it never
    // gets.
    c.node(1).cut = true;
    for _ in 0..60 {
        c.tick();
    }
    assert_eq!(c.leader(), None, "node 3 voted while repairing");
    assert!(!c.nodes[&3].leadership.serving);
    // Once node 1 is back, 1 or 2 leads; node 3 stays a follower while repairing.
    c.node(1).cut = false;
    c.tick_until("a leader", |c| c.leader().is_some());
    assert_ne!(c.leader(), Some(3));
}

#[test]
fn leader_durability_is_answered_after_the_leaders_own_fsync() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    for f in [1, 2, 3].into_iter().filter(|i| *i != l) {
        c.node(f).cut = true;
    }
    c.node(l).hold_syncs = true;
    c.handle(
        l,
        Event::Proposals(vec![publish(
            "a",
            ProducerStamp::NONE,
            Durability::Leader,
            1,
        )]),
    );
    assert!(c.answers(l).is_empty());
    c.release(l, Ok(()));
    assert_eq!(c.answers(l), [(1, ack(0))], "no quorum needed");
}

#[test]
fn the_interval_policy_answers_after_the_write_and_fsyncs_on_its_interval() {
    let mut c = Cluster::new(&[1], FsyncPolicy::IntervalMs(1_000));
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.node(1).trace.clear();
    c.handle(1, Event::Proposals(vec![plain("a", 1)]));
    assert_eq!(c.answers(1), [(1, ack(0))]);
    assert!(!c.node(1).trace.contains(&"sync"));
    // The fsync waits for its interval (1 s: ten ticks of 100 ms from the last one), then comes once.
    c.node(1).hold_syncs = true;
    let mut ticks = 0;
    c.tick_until("the interval's fsync", |c| {
        ticks += 1;
        c.nodes[&1].held.is_some()
    });
    assert!(ticks <= 11, "{ticks} ticks");
    c.release(1, Ok(()));
    assert!(c.node(1).fenced.is_none());
    for _ in 0..5 {
        c.tick();
    }
    assert!(
        c.nodes[&1].held.is_none(),
        "no fsync before the next interval"
    );
}

#[test]
fn reconfiguration_adds_a_learner_and_only_the_leader_reconfigures() {
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let l = c.leader().unwrap();
    let f = [1, 2, 3].into_iter().find(|i| *i != l).unwrap();
    let now = c.now;
    assert_eq!(
        c.node(f).core.reconfigure(&[1, 2, 3, 4], now),
        Reconfigure::NotLeader
    );
    let step = c.node(l).core.reconfigure(&[1, 2, 3, 4], now);
    assert!(
        matches!(&step, Reconfigure::InProgress(w) if w.contains("AddLearnerNode 4")),
        "{step:?}"
    );
    c.settle(l);
    c.deliver();
    c.tick_until("the learner is in the applied configuration", |c| {
        c.nodes[&l].membership.learners == [4]
    });
    assert_eq!(c.nodes[&l].membership.voters, [1, 2, 3]);
    assert_eq!(
        c.node(l).core.reconfigure(&[1, 2, 3], now),
        Reconfigure::InProgress("RemoveNode 4 proposed".into())
    );
}

#[test]
fn time_is_what_the_caller_says() {
    // The same events at the same handed-in times give the same decisions: two single-voter cores fed
    // identically answer identically, whatever the wall clock did in between.
    let run = || {
        let mut c = Cluster::new(&[1], FsyncPolicy::IntervalMs(250));
        c.tick_until("leads", |c| c.leader() == Some(1));
        let mut seen = Vec::new();
        for i in 0..6u32 {
            c.handle(1, Event::Proposals(vec![plain("v", i)]));
            c.node(1).hold_syncs = true;
            c.tick();
            seen.push(c.nodes[&1].held.is_some());
            c.release(1, Ok(()));
        }
        (seen, c.answers(1))
    };
    let (a, answers_a) = run();
    std::thread::sleep(Duration::from_millis(30));
    let (b, answers_b) = run();
    assert_eq!(a, b);
    assert_eq!(answers_a, answers_b);
    // A 250 ms interval over 100 ms ticks of handed-in time: an fsync every third tick, whatever the wall
    // clock did.
    let syncs: Vec<usize> = (0..a.len()).filter(|i| a[*i]).collect();
    assert!(syncs.len() >= 2, "{a:?}");
    assert!(syncs.windows(2).all(|w| w[1] - w[0] == 3), "{a:?}");
}
