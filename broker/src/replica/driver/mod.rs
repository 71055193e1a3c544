//! The replica task: owns the `RawNode`, turns proposals into Raft entries and drives each `Ready` in the
//! order raft-rs documents: send the leader's messages, persist entries and hard state (one fsync for the
//! whole Ready: group commit), send the messages that needed persistence, apply committed entries, advance.

mod liveness;
mod membership;
mod propose;
mod ready;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::handle::{
    Ack, Control, Durability, Leadership, Membership, Proposal, Reconfigure, Replica, ReplicaError,
    Shared,
};
use super::lease::{Lease, HEARTBEAT_CONTEXT, QUIESCE_CONTEXT};
use super::transport::Transport;
use crate::consensus::{logger::raft_logger, Placed, ReplicaStorage};

/// Proposals queued per replica before publishers wait (backpressure).
const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Proposals taken into one Raft step (and so, at most, one group commit).
const PROPOSALS_PER_STEP_MAX: usize = 1024;
/// Election timeouts a follower may sit in Snapshot state before the snapshot is sent again.
const SNAPSHOT_RETRY_ELECTIONS: u64 = 3;
/// Most missed ticks a late driver replays at once.
const TICKS_CATCH_UP_MAX: u64 = 10;
/// Operator requests queued per replica.
const CONTROL_QUEUE_MAX: usize = 16;
/// Raft messages from peers queued per replica (more are dropped: Raft retransmits).
const INBOX_MAX: usize = 4096;
/// Raft messages stepped before the next Ready.
const MESSAGES_PER_STEP_MAX: usize = 1024;
/// Ticks between two retention passes.
const RETENTION_EVERY_TICKS: u64 = 50;
/// A replica is in sync while it answers the leader and its log is within this many entries of the commit
/// index (under load a healthy follower is always a few entries behind the instant the leader looks).
const IN_SYNC_LAG_ENTRIES: u64 = 256;
/// An append rejection from `from` telling `to` that its log ends at Raft index `last`: how a repairing
/// replica makes a leader that believes its log longer probe it again (`Driver::note_incoming`).
fn log_ends_at(from: u64, to: u64, term: u64, last: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppendResponse);
    m.from = from;
    m.to = to;
    m.term = term;
    m.index = last;
    m.reject = true;
    m.reject_hint = last;
    m.context = Bytes::from_static(LOG_ENDS_CONTEXT);
    m
}

/// Marks a [`log_ends_at`] rejection: the follower itself says its log now ends lower than the leader may
/// think, so the leader believes it even though it answers no particular append.
const LOG_ENDS_CONTEXT: &[u8] = b"ferry-log-ends";

/// Whether a follower is in sync: caught up to the commit index, or (under load, when the leader looks
/// between an append and its answer) answering and close behind.
fn in_sync(p: &raft::Progress, committed: u64) -> bool {
    p.matched >= committed || (p.recent_active && p.matched + IN_SYNC_LAG_ENTRIES >= committed)
}

/// A learner is promoted to voter once its log is within this many entries of the commit index: close
/// enough that it catches up at once, while a busy partition's commit index never waits for it.
const LEARNER_CATCH_UP_ENTRIES: u64 = 256;

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

/// What connects a replica to its broker: where its messages go, the shared tick, and its cancellation.
#[derive(Clone)]
pub struct Wiring {
    pub transport: Arc<dyn Transport>,
    pub clock: Clock,
    pub cancel: CancellationToken,
    /// Which peer brokers were heard from lately (quiesced groups wake when one goes quiet).
    pub liveness: Arc<super::Liveness>,
}

/// A state machine fed with committed data batches (the cluster metadata uses one).
pub trait Apply: Send + 'static {
    /// Applies the committed batch at Raft index `index`.
    fn apply(&mut self, index: u64, batch: &Bytes);
}

/// Why a replica had to stop: it is fenced either way; a full disk is told apart so clients see
/// RESOURCE_EXHAUSTED rather than DATA_LOSS.
#[derive(Debug)]
enum Fatal {
    DiskFull(String),
    Other(String),
}

impl From<String> for Fatal {
    fn from(why: String) -> Self {
        Fatal::Other(why)
    }
}

impl Fatal {
    fn into_error(self) -> (String, ReplicaError) {
        match self {
            Fatal::DiskFull(why) => (why.clone(), ReplicaError::DiskFull(why)),
            Fatal::Other(why) => (why.clone(), ReplicaError::Failed(why)),
        }
    }
}

/// fsyncs `file` on the blocking pool. A failure is fatal for the replica: after a failed fsync the kernel
/// may have dropped the dirty pages, so what the file holds is unknown.
async fn sync(file: Arc<dyn crate::storage::DiskFile>) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || file.sync_data()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("fsync failed, replica fenced: {e}")),
        Err(e) => Err(format!("fsync task failed: {e}")),
    }
}

struct Pending {
    index: u64,
    term: u64,
    durability: Durability,
    placed: Option<Placed>,
    reply: Option<oneshot::Sender<Result<Ack, ReplicaError>>>,
}

impl Pending {
    fn answer(&mut self, r: Result<Ack, ReplicaError>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(r);
        }
    }
}

struct Driver {
    node: RawNode<ReplicaStorage>,
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    apply: Option<Box<dyn Apply>>,
    pending: VecDeque<Pending>,
    group: u64,
    ticks: u64,
    /// Followers in raft-rs's Snapshot state, and the tick at which this leader first saw them there.
    snapshot_since: std::collections::HashMap<u64, u64>,
    fsync: FsyncPolicy,
    /// With an interval policy: the file written since the last fsync, and when that fsync was.
    unsynced: Option<(Arc<dyn crate::storage::DiskFile>, u64)>,
    last_sync: std::time::Instant,
    quiet: Quiet,
    /// Repairing a damaged log up to this Raft index: no voting, no campaigning (see
    /// `consensus::repair`).
    repairing: Option<u64>,
    /// While leading: which heartbeats a quorum answered (see `lease`).
    lease: Lease,
}

/// Quiescence: an idle group stops ticking, so a broker with thousands of idle partitions sends no
/// heartbeats for them. The leader of a group with nothing in flight and every voter caught up sends one
/// last heartbeat marked [`QUIESCE_CONTEXT`] and stops ticking; a follower that receives it stops too. Any
/// other Raft message, a proposal or an operator request wakes a replica; so does a peer broker of the group
/// going quiet (not heard from for an election timeout: links send keepalives), after which Raft's timers
/// run again and elect a new leader if need be.
struct Quiet {
    liveness: Arc<super::Liveness>,
    /// How long a peer may go unheard before quiesced replicas wake (one election timeout).
    window: Duration,
    quiesced: bool,
    /// The next Ready's heartbeats are the quiesce heartbeats.
    quiescing: bool,
    /// Tick of the last activity (proposal, entries, operator request, wake-up).
    active_tick: u64,
}

/// Idle ticks before a leader quiesces its group (a few heartbeats, so followers learned the commit).
const QUIESCE_IDLE_TICKS: u64 = 10;

/// Whatever way the driver task ends (stopped, fenced, or a panic unwinding through it), readers must learn
/// that this replica no longer leads or serves: otherwise a dead replica keeps claiming leadership, serves a
/// frozen log and stays "ready" (M2 in the durability audit). Supervision (`broker::tasks::supervise`)
/// restarts it.
struct ExitGuard {
    shared: Arc<Shared>,
    /// The driver returned (rather than panicking).
    ended: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Unwinding: the driver panicked. Dropped unfinished but not unwinding: the runtime is going away.
        if !self.ended && std::thread::panicking() {
            self.shared
                .fail("replica task panicked; the replica is fenced until restarted".into());
        }
        self.shared.stop();
    }
}

/// Starts the replica of group `group` over `storage`. `applied` state machines see every committed data
/// batch after those already in the log up to the persisted commit (the caller replays those).
pub fn spawn(
    group: u64,
    name: String,
    storage: ReplicaStorage,
    config: ReplicaConfig,
    apply: Option<Box<dyn Apply>>,
    wiring: Wiring,
) -> Result<(Replica, tokio::task::JoinHandle<()>), ReplicaError> {
    let Wiring {
        transport,
        clock,
        cancel,
        liveness,
    } = wiring;
    let (commit, hw, voters) = {
        let c = storage.read();
        let commit = c.state().hard_state.commit;
        let hw = c
            .next_offset_after(commit)
            .map_err(|e| ReplicaError::Failed(e.to_string()))?;
        (commit, hw, c.state().conf_state.voters.clone())
    };
    let raft_config = raft::Config {
        id: config.node_id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied: commit,
        max_size_per_msg: config.append_bytes_max,
        max_inflight_msgs: 256,
        max_uncommitted_size: 256 << 20,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    let mut node = RawNode::new(&raft_config, storage.clone(), &raft_logger(&name))
        .map_err(|e| ReplicaError::Failed(format!("raft: {e}")))?;
    // A cluster of one leads at once instead of waiting out an election timeout; so does the preferred
    // leader (first replica) of a brand-new group, which spreads leaders as placement spread replicas. If its
    // peers are not up yet, the normal election timeout takes over.
    let fresh = node.raft.term == 0 && node.raft.raft_log.last_index() == 0;
    // A repairing replica never campaigns, even alone: its log lost what it once held (a cluster of one
    // with nothing to repair from stays down, and says so, rather than serve the shorter log).
    let repairing = storage.read().repair_until().is_some();
    if !repairing
        && (voters == [config.node_id] || (fresh && voters.first() == Some(&config.node_id)))
    {
        let _ = node.campaign();
    }
    let shared = Arc::new(Shared::new(group, name, storage, hw));
    let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_MAX);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
    let driver = Driver {
        node,
        shared: shared.clone(),
        transport,
        apply,
        pending: VecDeque::new(),
        group,
        ticks: 0,
        snapshot_since: Default::default(),
        fsync: config.fsync,
        unsynced: None,
        last_sync: std::time::Instant::now(),
        repairing: shared.storage.read().repair_until(),
        lease: Lease::new(config.tick_ms, config.election_ticks),
        quiet: Quiet {
            liveness,
            window: Duration::from_millis(config.tick_ms * config.election_ticks as u64),
            quiesced: false,
            quiescing: false,
            active_tick: 0,
        },
    };
    driver.note_membership();
    let exit = ExitGuard {
        shared: shared.clone(),
        ended: false,
    };
    let task = tokio::spawn(async move {
        let mut exit = exit;
        driver.run(rx, inbox_rx, control_rx, clock, cancel).await;
        exit.ended = true;
    });
    Ok((
        Replica {
            tx,
            inbox: inbox_tx,
            control: control_tx,
            shared,
        },
        task,
    ))
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Proposal>,
        mut inbox: mpsc::Receiver<Message>,
        mut control: mpsc::Receiver<Control>,
        mut clock: Clock,
        cancel: CancellationToken,
    ) {
        let mut incoming = Vec::with_capacity(64);
        let mut last_tick = 0u64;
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // Cheapest and most frequent first: with thousands of idle groups, a tick wake-up must
                // not poll every channel.
                passed = clock.next(&mut last_tick) => {
                    let Some(passed) = passed else { break };
                    if self.shared.failed.lock().is_some() {
                        // Fenced (e.g. corruption found by a read): stop leading and voting so healthy
                        // replicas take over; no clean close over data known to be bad.
                        self.fail_all(ReplicaError::Failed("partition fenced".into()));
                        return;
                    }
                    // A driver that fell behind catches up on the ticks it missed (bounded).
                    for _ in 0..passed.min(TICKS_CATCH_UP_MAX) {
                        self.tick();
                    }
                    if let Err(why) = self.sync_on_interval().await {
                        self.shared.fail(why.clone());
                        self.fail_all(ReplicaError::Failed(why));
                        return;
                    }
                }
                n = inbox.recv_many(&mut incoming, MESSAGES_PER_STEP_MAX) => {
                    if n == 0 { break; }
                    for mut m in incoming.drain(..) {
                        if !self.note_incoming(&mut m) {
                            continue;
                        }
                        // Messages from unknown or removed peers are refused by Raft: not our failure.
                        if let Err(e) = self.node.step(m) {
                            tracing::debug!(partition = %self.shared.name, "raft step: {e}");
                        }
                    }
                }
                n = rx.recv_many(&mut batch, PROPOSALS_PER_STEP_MAX) => {
                    if n == 0 { break; }
                    self.wake();
                    self.propose(std::mem::take(&mut batch));
                }
                _ = self.shared.renew.notified() => {
                    // A reader found the lease run out: confirm leadership with a heartbeat round now.
                    if self.node.raft.state == StateRole::Leader {
                        self.wake();
                        self.node.ping();
                    }
                }
                Some(c) = control.recv() => {
                    self.wake();
                    match c {
                        Control::TransferLeader(to) => self.node.transfer_leader(to),
                        Control::Reconfigure(voters, reply) => {
                            let _ = reply.send(self.reconfigure(&voters));
                        }
                        #[cfg(feature = "fault-injection")]
                        Control::Panic => panic!("injected panic ({})", self.shared.name),
                    }
                }
            }
            if let Err(fatal) = self.on_ready().await {
                let (why, err) = fatal.into_error();
                self.shared.fail(why);
                self.fail_all(err);
                return;
            }
            if let Some(damage) = self.shared.storage.damage() {
                // A read for replication found damage inside the log: stop leading and serving at once
                // (the other replicas elect a leader); the broker's scrub sees "corrupt" and repairs this
                // replica from them.
                let why = format!("corrupt log found while replicating: {damage}");
                tracing::error!(partition = %self.shared.name, "{why}");
                self.shared.fail_damaged(why.clone());
                self.fail_all(ReplicaError::Failed(why));
                return;
            }
        }
        self.fail_all(ReplicaError::ShuttingDown);
        if let Err(e) = self.shared.storage.write().close() {
            tracing::error!(partition = %self.shared.name, "clean close failed: {e}");
        }
    }

    /// Sends every other voter an append rejection naming where this (repairing) log ends.
    fn announce_repair(&mut self) {
        let raft = &self.node.raft;
        let last = raft.raft_log.last_index();
        let nacks: Vec<Message> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != raft.id)
            .map(|to| log_ends_at(raft.id, to, raft.term, last))
            .collect();
        self.transport.send(self.group, nacks);
    }

    fn retain(&mut self) {
        if self.ticks.is_multiple_of(RETENTION_EVERY_TICKS) {
            let applied = self.node.raft.raft_log.applied;
            // A failed delete or directory fsync is an I/O failure like any other: fatal for the replica,
            // never retried into a "success" over lost state (fsyncgate; L1 in the durability audit).
            let retained = self.shared.storage.write().apply_retention(applied);
            if let Err(e) = retained {
                self.shared
                    .fail(format!("retention failed, replica fenced: {e}"));
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
                tracing::debug!(partition = %self.shared.name, to = id, "snapshot unanswered; sending it again");
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
                self.snapshot_since.remove(&id);
            }
        }
    }

    fn fail_all(&mut self, err: ReplicaError) {
        for mut p in self.pending.drain(..) {
            p.answer(Err(err.clone()));
        }
    }
}
