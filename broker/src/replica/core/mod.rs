//! The replica's decisions, as a synchronous state machine in the raft-rs style: [`Event`]s in (proposals,
//! peer messages, ticks, operator requests), [`Action`]s out (sends, fsyncs, answers, and what readers
//! should now see), fsync completions fed back with [`ReplicaCore::synced`]. It holds Raft, duplicate
//! detection of idempotent producers, reconfiguration, quiescence, leases and repair guards.
//!
//! No runtime here: time is handed in with every call, and the one blocking step, fsync, is an action the
//! shell (`replica::driver`) performs off the async threads. Writes go to the page cache through the
//! storage's disk seam, synchronously, as raft-rs's own `Storage` reads do; the fsync that makes them
//! durable is the barrier: no action after an [`Action::Sync`] is handed out until its outcome came back.
//! Table tests (`core/tests.rs`) drive cores directly, a cluster of them by passing messages by hand.
//!
//! Files: `mod.rs` (types, construction, the event loop's entry points), `propose.rs` (publishes and
//! idempotent duplicates), `ready.rs` (a Raft Ready: persist, fsync barrier, send, apply, acknowledge),
//! `membership.rs` (reconfiguration), `quiet.rs` (ticks, quiescence, heartbeats, leases, the in-sync set),
//! `repair.rs` (the guards of a damaged log).

mod membership;
mod propose;
mod quiet;
mod ready;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::batch::BatchHeader;
use raft::eraftpb::Message;
use raft::{RawNode, StateRole};

use super::lease::Lease;
use super::liveness::Liveness;
use super::types::{Ack, Durability, Leadership, Membership, ReplicaError};
use crate::replica::raft_log::{logger::raft_logger, Placed, ReplicaStorage};
use crate::storage::{DiskFile, StorageError};

/// Proposals taken into one Raft step (and so, at most, one group commit).
pub const PROPOSALS_PER_STEP_MAX: usize = 1024;
/// Raft messages stepped before the next Ready.
pub const MESSAGES_PER_STEP_MAX: usize = 1024;
/// Most missed ticks a late driver replays at once.
const TICKS_CATCH_UP_MAX: u64 = 10;
/// Election timeouts a follower may sit in Snapshot state before the snapshot is sent again.
const SNAPSHOT_RETRY_ELECTIONS: u64 = 3;
/// How long an idempotent publish that arrived ahead of its producer's next sequence waits for the
/// batches before it (ms). A producer keeps several batches of a partition in flight, and concurrent
/// requests (or retries after a failover) may reach the leader out of order; each is written once those
/// before it are.
pub const SEQUENCE_WAIT_MS: u64 = 500;
/// Publishes a replica holds waiting for earlier sequences; more are refused as retriable.
pub const PARKED_MAX: usize = 64;

/// A publish waiting for the batches before it.
pub(super) struct Parked<R> {
    /// When it is refused as a gap if still waiting.
    pub(super) until: Instant,
    pub(super) proposal: Proposal<R>,
}

/// Ticks between two retention passes.
const RETENTION_EVERY_TICKS: u64 = 50;
/// Idle ticks before a leader quiesces its group (a few heartbeats, so followers learned the commit).
const QUIESCE_IDLE_TICKS: u64 = 10;
/// A replica is in sync while it answers the leader and its log is within this many entries of the commit
/// index (under load a healthy follower is always a few entries behind the instant the leader looks).
const IN_SYNC_LAG_ENTRIES: u64 = 256;
/// A learner is promoted to voter once its log is within this many entries of the commit index: close
/// enough that it catches up at once, while a busy partition's commit index never waits for it.
const LEARNER_CATCH_UP_ENTRIES: u64 = 256;
/// Entries a leader may have sent a follower without an answer (raft-rs's in-flight window).
const INFLIGHT_MSGS_MAX: usize = 256;
/// Bytes of proposals not yet committed a leader takes before it refuses more.
const UNCOMMITTED_BYTES_MAX: u64 = 256 << 20;

/// When appended batches are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before anything is acknowledged or voted on, one fsync per Ready for all its batches (group commit).
    PerBatch,
    /// Every this many ms: acknowledgements go out after the write only, so a power loss can lose
    /// acknowledged data. Opt-in, for data that may be lost.
    IntervalMs(u64),
}

/// Timing and sizing of a replica's Raft group.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaConfig {
    pub node_id: u64,
    /// One Raft tick (ms).
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest append message to a follower (bytes).
    pub append_bytes_max: u64,
    pub fsync: FsyncPolicy,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            node_id: 1,
            tick_ms: 200,
            election_ticks: 4,
            heartbeat_ticks: 2,
            append_bytes_max: 1 << 20,
            fsync: FsyncPolicy::PerBatch,
        }
    }
}

/// A state machine fed with committed data batches (the cluster metadata uses one).
pub trait Apply: Send + 'static {
    /// Applies the committed batch at Raft index `index`.
    fn apply(&mut self, index: u64, batch: &Bytes);
}

/// A publish for the core; `R` is where its outcome goes (a channel in the shell, a number in tests).
#[derive(Debug)]
pub struct Proposal<R> {
    pub batch: Bytes,
    pub header: BatchHeader,
    pub durability: Durability,
    pub reply: R,
}

/// What happened, handed to [`ReplicaCore::handle`].
#[derive(Debug)]
pub enum Event<R> {
    /// This many beats of the shared Raft clock passed (at least one; a late shell replays a bounded
    /// number).
    Ticks(u64),
    /// Raft messages from peers.
    Messages(Vec<Message>),
    /// Publishes.
    Proposals(Vec<Proposal<R>>),
    /// A reader found the lease run out: confirm leadership with a heartbeat round now.
    RenewLease,
    /// An operator hands leadership to this broker.
    TransferLeader(u64),
}

/// What the shell must do, in the order given.
#[derive(Debug)]
pub enum Action<R> {
    /// Send these Raft messages (best effort: Raft retransmits).
    Send(Vec<Message>),
    /// fsync this file, then hand the outcome to [`ReplicaCore::synced`] before anything else.
    Sync(Arc<dyn DiskFile>),
    /// Answer a publish.
    Answer(R, Result<Ack, ReplicaError>),
    /// Readers may now see records up to this offset (exclusive).
    HighWatermark(u64),
    /// The configuration now applied.
    Membership(Membership),
    /// Who leads, as this replica knows it now.
    Leadership(Leadership),
    /// Until when this leader's reads are safe (none: not safe).
    Lease(Option<Instant>),
    /// While leading: the replicas whose log reaches the commit index, sorted (empty otherwise).
    InSync(Vec<u64>),
    /// The group's Raft timers stopped (idle) or run again.
    Quiesced(bool),
    /// The replica must stop: fence it for this reason. Answers to every waiting publish follow; then
    /// nothing more comes.
    Fence(Fatal),
}

/// Why a replica had to stop. It is fenced either way; a full disk is told apart so clients see
/// RESOURCE_EXHAUSTED rather than DATA_LOSS, and damaged data so the scrub repairs it from peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    DiskFull(String),
    Damaged(String),
    Other(String),
}

impl From<String> for Fatal {
    fn from(why: String) -> Self {
        Fatal::Other(why)
    }
}

impl From<StorageError> for Fatal {
    fn from(e: StorageError) -> Self {
        if e.is_disk_full() {
            Fatal::DiskFull(e.to_string())
        } else {
            Fatal::Other(e.to_string())
        }
    }
}

impl Fatal {
    /// Why, in words.
    pub fn why(&self) -> &str {
        match self {
            Fatal::DiskFull(w) | Fatal::Damaged(w) | Fatal::Other(w) => w,
        }
    }

    /// What waiting publishers are told.
    fn to_error(&self) -> ReplicaError {
        match self {
            Fatal::DiskFull(why) => ReplicaError::DiskFull(why.clone()),
            Fatal::Damaged(why) | Fatal::Other(why) => ReplicaError::Failed(why.clone()),
        }
    }
}

/// A proposal in the log, waiting for the durability it asked for.
struct Pending<R> {
    index: u64,
    term: u64,
    durability: Durability,
    placed: Option<Placed>,
    reply: Option<R>,
}

/// Quiescence: an idle group stops ticking, so a broker with thousands of idle partitions sends no
/// heartbeats for them. The leader of a group with nothing in flight and every voter caught up sends one
/// last heartbeat marked `QUIESCE_CONTEXT` and stops ticking; a follower that receives it stops too. Any
/// other Raft message, a proposal or an operator request wakes a replica; so does a peer broker of the group
/// going quiet (not heard from for an election timeout: links send keepalives), after which Raft's timers
/// run again and elect a new leader if need be.
struct Quiet {
    liveness: Arc<Liveness>,
    /// How long a peer may go unheard before quiesced replicas wake (one election timeout).
    window: Duration,
    quiesced: bool,
    /// The next Ready's heartbeats are the quiesce heartbeats.
    quiescing: bool,
    /// Tick of the last activity (proposal, entries, operator request, wake-up).
    active_tick: u64,
}

/// What an outstanding fsync completes.
enum Waiting {
    /// The entries of this Ready, written and placed; the rest of the Ready follows the fsync.
    Ready {
        rd: Box<raft::Ready>,
        placed: Vec<Placed>,
        last_written: Option<u64>,
    },
    /// The interval policy's periodic fsync of everything written up to this Raft index.
    Interval { last: u64 },
}

/// One replica of one Raft group: every decision, no I/O but the storage seam's writes.
pub struct ReplicaCore<R> {
    node: RawNode<ReplicaStorage>,
    storage: ReplicaStorage,
    name: String,
    apply: Option<Box<dyn Apply>>,
    pending: VecDeque<Pending<R>>,
    /// Idempotent publishes that arrived ahead of their producer's sequence, waiting for the batches
    /// before them (see `propose.rs`).
    parked: VecDeque<Parked<R>>,
    ticks: u64,
    /// Followers in raft-rs's Snapshot state, and the tick at which this leader first saw them there.
    snapshot_since: HashMap<u64, u64>,
    fsync: FsyncPolicy,
    /// With an interval policy: the file written since the last fsync, and the last Raft index it holds.
    unsynced: Option<(Arc<dyn DiskFile>, u64)>,
    last_sync: Instant,
    quiet: Quiet,
    /// Repairing a damaged log up to this Raft index: no voting, no campaigning (see
    /// `replica::raft_log::repair`).
    repairing: Option<u64>,
    /// While leading: which heartbeats a quorum answered (see `lease`).
    lease: Lease,
    /// The time handed in with the event being handled.
    now: Instant,
    actions: VecDeque<Action<R>>,
    waiting: Option<Waiting>,
    /// A Ready whose first messages are queued: it is persisted once the shell has carried them out.
    persist_next: Option<Box<raft::Ready>>,
    /// Set once the replica must stop; nothing is handled after it.
    fenced: bool,
    /// The high watermark the replica opened with.
    opened_high_watermark: u64,
}

impl<R> ReplicaCore<R> {
    /// A replica of its group over `storage`, at `now`. `apply` sees every committed data batch after those
    /// already in the log up to the persisted commit (the caller replays those). A cluster of one, and the
    /// preferred leader of a brand-new group, campaign at once.
    pub fn new(
        name: String,
        storage: ReplicaStorage,
        config: ReplicaConfig,
        apply: Option<Box<dyn Apply>>,
        liveness: Arc<Liveness>,
        now: Instant,
    ) -> Result<Self, ReplicaError> {
        let (commit, hw, voters, repairing) = {
            let c = storage.read();
            let commit = c.state().hard_state.commit;
            let hw = c
                .next_offset_after(commit)
                .map_err(|e| ReplicaError::Failed(e.to_string()))?;
            let voters = c.state().conf_state.voters.clone();
            (commit, hw, voters, c.repair_until())
        };
        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: commit,
            max_size_per_msg: config.append_bytes_max,
            max_inflight_msgs: INFLIGHT_MSGS_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let mut node = RawNode::new(&raft_config, storage.clone(), &raft_logger(&name))
            .map_err(|e| ReplicaError::Failed(format!("raft: {e}")))?;
        // If the preferred leader's peers are not up yet, the normal election timeout takes over. A
        // repairing replica never campaigns, even alone: its log lost what it once held (a cluster of one
        // with nothing to repair from stays down, and says so, rather than serve the shorter log).
        let fresh = node.raft.term == 0 && node.raft.raft_log.last_index() == 0;
        if repairing.is_none()
            && (voters == [config.node_id] || (fresh && voters.first() == Some(&config.node_id)))
        {
            let _ = node.campaign();
        }
        let mut core = ReplicaCore {
            node,
            storage,
            name,
            apply,
            pending: VecDeque::new(),
            parked: VecDeque::new(),
            ticks: 0,
            snapshot_since: HashMap::new(),
            fsync: config.fsync,
            unsynced: None,
            last_sync: now,
            quiet: Quiet {
                liveness,
                window: Duration::from_millis(config.tick_ms * config.election_ticks as u64),
                quiesced: false,
                quiescing: false,
                active_tick: 0,
            },
            repairing,
            lease: Lease::new(config.tick_ms, config.election_ticks, now),
            now,
            actions: VecDeque::new(),
            waiting: None,
            persist_next: None,
            fenced: false,
            opened_high_watermark: hw,
        };
        core.note_membership();
        Ok(core)
    }

    /// The high watermark the replica opened with (readers start from it).
    pub fn opened_high_watermark(&self) -> u64 {
        self.opened_high_watermark
    }

    /// The replica's storage (readers share it).
    pub fn storage(&self) -> &ReplicaStorage {
        &self.storage
    }

    /// Handles `event` at `now`, then the Raft Ready it led to (up to an fsync barrier).
    pub fn handle(&mut self, event: Event<R>, now: Instant) {
        assert!(
            self.waiting.is_none() && self.persist_next.is_none() && self.actions.is_empty(),
            "an event was handed to a replica core with actions not yet carried out"
        );
        if self.fenced {
            return;
        }
        self.now = now;
        self.expire_parked();
        match event {
            Event::Ticks(passed) => {
                // A shell that fell behind catches up on the ticks it missed (bounded).
                for _ in 0..passed.clamp(1, TICKS_CATCH_UP_MAX) {
                    self.tick();
                    if self.fenced {
                        return;
                    }
                }
                if self.sync_on_interval() {
                    return;
                }
            }
            Event::Messages(msgs) => self.step_messages(msgs),
            Event::Proposals(proposals) => {
                self.wake();
                self.propose(proposals);
            }
            Event::RenewLease => {
                if self.node.raft.state == StateRole::Leader {
                    self.wake();
                    self.node.ping();
                }
            }
            Event::TransferLeader(to) => {
                self.wake();
                self.node.transfer_leader(to);
            }
        }
        self.drive();
    }

    /// The outcome of the fsync asked for by the last [`Action::Sync`], at `now`. A failure is fatal: after a
    /// failed fsync the kernel may have dropped the dirty pages, so what the file holds is unknown.
    pub fn synced(&mut self, outcome: Result<(), Fatal>, now: Instant) {
        self.now = now;
        let waiting = self
            .waiting
            .take()
            .expect("an fsync outcome without an fsync asked for");
        if let Err(fatal) = outcome {
            self.storage.write().note_fsync_failed();
            self.fence(fatal);
            return;
        }
        let done = match waiting {
            Waiting::Ready {
                rd,
                placed,
                last_written,
            } => self
                .mark_durable(last_written)
                .and_then(|()| self.finish_ready(*rd, &placed)),
            Waiting::Interval { last } => self.mark_durable(Some(last)).map(|()| self.drive()),
        };
        if let Err(fatal) = done {
            self.fence(fatal);
        }
    }

    /// The next thing the shell must do. After an [`Action::Sync`], none until [`ReplicaCore::synced`].
    /// Work that must follow the actions before it (a Ready's persisting follows its first sends) runs
    /// here, once they were handed out.
    pub fn next_action(&mut self) -> Option<Action<R>> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            let rd = self.persist_next.take()?;
            if self.fenced {
                return None;
            }
            if let Err(fatal) = self.persist_ready(*rd) {
                self.fence(fatal);
            }
        }
    }

    /// Whether the replica must stop (an [`Action::Fence`] was handed out or is queued).
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Stops the replica on a fence from outside (a reader found damage, say): every waiting publish is
    /// answered with `err`.
    pub fn stop(&mut self, err: ReplicaError) {
        self.answer_all(err);
    }

    /// A clean stop: waiting publishes are told the partition is shutting down, and the log is closed
    /// (its clean-shutdown marker written).
    pub fn shut_down(&mut self) -> Result<(), StorageError> {
        self.answer_all(ReplicaError::ShuttingDown);
        self.storage.write().close()
    }

    /// Steps peer messages into Raft, through the guards of quiescence, leases and repair.
    fn step_messages(&mut self, msgs: Vec<Message>) {
        for mut m in msgs {
            if !self.note_incoming(&mut m) {
                continue;
            }
            // Messages from unknown or removed peers are refused by Raft: not our failure.
            if let Err(e) = self.node.step(m) {
                tracing::debug!(partition = %self.name, "raft step: {e}");
            }
        }
    }

    /// The replica must stop: fence it, then answer every waiting publish.
    fn fence(&mut self, fatal: Fatal) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        self.persist_next = None;
        let err = fatal.to_error();
        self.actions.push_back(Action::Fence(fatal));
        self.answer_all(err);
    }

    fn answer_all(&mut self, err: ReplicaError) {
        for mut p in std::mem::take(&mut self.pending) {
            if let Some(r) = p.reply.take() {
                self.actions.push_back(Action::Answer(r, Err(err.clone())));
            }
        }
        // Never proposed, so never in the log: whatever the reason, the publisher may simply retry.
        for p in std::mem::take(&mut self.parked) {
            self.actions
                .push_back(Action::Answer(p.proposal.reply, Err(err.clone())));
        }
    }

    fn answer(&mut self, p: &mut Pending<R>, r: Result<Ack, ReplicaError>) {
        if let Some(reply) = p.reply.take() {
            self.actions.push_back(Action::Answer(reply, r));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.actions.push_back(Action::Send(msgs));
        }
    }

    fn retain(&mut self) {
        if self.ticks.is_multiple_of(RETENTION_EVERY_TICKS) {
            let applied = self.node.raft.raft_log.applied;
            // A failed delete or directory fsync is an I/O failure like any other: fatal for the replica,
            // never retried into a "success" over lost state (fsyncgate; L1 in the durability audit).
            let retained = self.storage.write().apply_retention(applied);
            if let Err(e) = retained {
                self.fence(Fatal::Other(format!(
                    "retention failed, replica fenced: {e}"
                )));
            }
        }
    }

    /// raft-rs pauses a follower that was sent a snapshot until it answers; a snapshot message lost on the
    /// way (full queue, group not created yet on the receiver) would pause it for good. After a few election
    /// timeouts without progress, report the snapshot failed so the leader probes and sends it again.
    fn retry_stuck_snapshots(&mut self) {
        if self.node.raft.state != StateRole::Leader {
            self.snapshot_since.clear();
            return;
        }
        let now = self.ticks;
        let patience = SNAPSHOT_RETRY_ELECTIONS * self.node.raft.election_timeout() as u64;
        let in_snapshot: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, p)| p.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_since.retain(|id, _| in_snapshot.contains(id));
        for id in in_snapshot {
            let since = *self.snapshot_since.entry(id).or_insert(now);
            if now - since >= patience {
                tracing::debug!(partition = %self.name, to = id, "snapshot unanswered; sending it again");
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
                self.snapshot_since.remove(&id);
            }
        }
    }
}
