//! The replica task: owns the `RawNode`, turns proposals into Raft entries and drives each `Ready` in the
//! order raft-rs documents: send the leader's messages, persist entries and hard state (one fsync for the
//! whole Ready: group commit), send the messages that needed persistence, apply committed entries, advance.

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

    /// Publishes the applied configuration to readers.
    fn note_membership(&self) {
        let conf = self.node.raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        *self.shared.membership.lock() = Membership { voters, learners };
    }

    /// One step of moving the group to `target` voters, one server at a time (never joint): add each new
    /// replica as a learner, promote it once caught up, then remove the replicas that go. A leader that is
    /// to go first hands leadership to a caught-up voter that stays. raft-rs allows one pending change at a
    /// time, so a step waits while one is in flight.
    fn reconfigure(&mut self, target: &[u64]) -> Reconfigure {
        use raft::eraftpb::ConfChangeType;
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return Reconfigure::NotLeader;
        }
        if raft.pending_conf_index > raft.raft_log.applied {
            return Reconfigure::InProgress("a configuration change is being committed".into());
        }
        let conf = raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let learners: Vec<u64> = conf.learners().iter().copied().collect();
        let committed = raft.raft_log.committed;
        let caught_up = |id: u64| {
            raft.prs()
                .get(id)
                .is_some_and(|p| p.matched + LEARNER_CATCH_UP_ENTRIES >= committed)
        };
        let me = raft.id;
        let change = if let Some(&new) = target
            .iter()
            .find(|id| !voters.contains(id) && !learners.contains(id))
        {
            Some((ConfChangeType::AddLearnerNode, new))
        } else if let Some(&gone) = learners.iter().find(|id| !target.contains(id)) {
            Some((ConfChangeType::RemoveNode, gone))
        } else if let Some(&ready) = learners.iter().find(|id| caught_up(**id)) {
            Some((ConfChangeType::AddNode, ready))
        } else if !learners.is_empty() {
            return Reconfigure::InProgress(format!("learners {learners:?} catching up"));
        } else if let Some(&gone) = voters.iter().find(|id| !target.contains(id)) {
            if gone == me {
                let in_sync =
                    |id: &&u64| raft.prs().get(**id).is_some_and(|p| p.matched >= committed);
                let Some(&to) = target.iter().filter(|id| **id != me).find(in_sync) else {
                    return Reconfigure::InProgress(
                        "no caught-up replica to hand leadership to".into(),
                    );
                };
                self.node.transfer_leader(to);
                return Reconfigure::HandedOff(to);
            }
            Some((ConfChangeType::RemoveNode, gone))
        } else {
            None
        };
        let Some((kind, id)) = change else {
            return Reconfigure::Settled;
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                tracing::info!(partition = %self.shared.name, ?kind, node = id, "configuration change proposed");
                Reconfigure::InProgress(format!("{kind:?} {id} proposed"))
            }
            Err(e) => Reconfigure::InProgress(format!("{kind:?} {id} refused: {e}")),
        }
    }

    fn wake(&mut self) {
        self.set_quiesced(false);
        self.quiet.active_tick = self.ticks;
    }

    fn set_quiesced(&mut self, q: bool) {
        if self.quiet.quiesced != q {
            self.quiet.quiesced = q;
            self.shared
                .quiesced
                .store(q, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Quiescence bookkeeping for an incoming message: the quiesce heartbeat quiets a follower; anything
    /// else wakes the replica, except heartbeat answers on a leader (they answer its own quiesce heartbeat).
    ///
    /// Also the guards of a damaged log (answers whether to step the message): a repairing replica does not
    /// vote; no replica takes a commit index past its log (a leader may believe a repaired follower holds
    /// more than it now does); and a leader whose follower answers a current append (or says outright, with
    /// [`log_ends_at`]) that its log is shorter than what it had matched (the follower cut a damaged log)
    /// probes that follower again from where its log ends.
    fn note_incoming(&mut self, m: &mut Message) -> bool {
        let t = m.get_msg_type();
        if t == MessageType::MsgHeartbeatResponse && self.node.raft.state == StateRole::Leader {
            self.lease.on_answer(m.from, &m.context);
        }
        if t == MessageType::MsgHeartbeat && m.context.starts_with(QUIESCE_CONTEXT) {
            self.set_quiesced(true);
        } else if !(t == MessageType::MsgHeartbeatResponse
            && self.node.raft.state == StateRole::Leader)
        {
            self.wake();
        }
        if self.repairing.is_some()
            && matches!(
                t,
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgTimeoutNow
            )
        {
            // No votes, and no leadership handed over either: a handed-over leader campaigns at once.
            return false;
        }
        if t == MessageType::MsgHeartbeat {
            let last = self.node.raft.raft_log.last_index();
            if m.commit > last && self.repairing.is_some() {
                // The leader believes this log longer than it now is, and a heartbeat answer cannot say
                // otherwise: tell it with an append rejection naming where the log ends.
                let nack = log_ends_at(self.node.raft.id, m.from, m.term, last);
                self.transport.send(self.group, vec![nack]);
            }
            m.commit = m.commit.min(last);
        }
        if t == MessageType::MsgAppendResponse
            && m.reject
            && self.node.raft.state == StateRole::Leader
        {
            if let Some(pr) = self.node.raft.mut_prs().get_mut(m.from) {
                // A rejection of an append past what was matched means the log shrank; one of an append at
                // or before it may be stale (delayed, reordered or duplicated on the way) and say nothing
                // about the log now: raft-rs ignores those (`Progress::maybe_decr_to`), and so must this, or
                // a lossy network keeps knocking followers back to probing. A repairing follower whose log
                // is shorter than the commit index says so outright with `log_ends_at`.
                let current = m.index > pr.matched || m.context.as_ref() == LOG_ENDS_CONTEXT;
                if current && m.reject_hint < pr.matched {
                    tracing::warn!(partition = %self.shared.name, follower = m.from, had = pr.matched,
                        now = m.reject_hint, "a follower's log is shorter than it was (repairing); probing it again");
                    pr.matched = m.reject_hint;
                    pr.become_probe();
                    pr.next_idx = m.reject_hint + 1;
                }
            }
        }
        true
    }

    /// Whether the brokers this replica depends on were all heard from lately: a follower its leader's, a
    /// leader every voter's.
    fn peers_live(&self) -> bool {
        let raft = &self.node.raft;
        let live = |id: u64| id == raft.id || self.quiet.liveness.is_live(id, self.quiet.window);
        if raft.state == StateRole::Leader {
            raft.prs().conf().voters().ids().iter().all(live)
        } else {
            raft.leader_id != 0 && live(raft.leader_id)
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

    /// A leader quiesces its group once idle with every voter caught up and reachable.
    fn maybe_quiesce(&mut self) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader
            || self.ticks < self.quiet.active_tick + QUIESCE_IDLE_TICKS
            || raft.lead_transferee.is_some()
            || raft.pending_conf_index > raft.raft_log.applied
            || !raft.prs().conf().learners().is_empty()
        {
            return;
        }
        let last = raft.raft_log.last_index();
        let caught_up = raft.raft_log.committed == last
            && raft.raft_log.applied == last
            && raft.prs().iter().all(|(_, p)| p.matched == last);
        if caught_up && self.peers_live() {
            self.quiet.quiescing = true;
            self.set_quiesced(true);
            self.node.ping();
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if self.repairing.is_some() {
            // No election timeouts: a repairing replica never campaigns. Appends from the leader still come;
            // once per election timeout it tells every voter where its log ends, so a leader that believes
            // it longer (or sends nothing: a quiesced group) probes it again.
            if self
                .ticks
                .is_multiple_of(self.node.raft.election_timeout() as u64)
            {
                self.announce_repair();
            }
            self.retain();
            return;
        }
        if self.quiet.quiesced {
            if self.peers_live() {
                self.retain();
                return;
            }
            tracing::debug!(partition = %self.shared.name, "a peer went quiet; waking up");
            self.wake();
            // The group was silent for a liveness window already: a follower campaigns after the rest of a
            // randomized election timeout counted from its shortest value, not after a whole one more.
            let raft = &mut self.node.raft;
            if raft.state != StateRole::Leader {
                raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
            }
        }
        self.node.tick();
        self.retry_stuck_snapshots();
        self.maybe_quiesce();
        self.retain();
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

    fn propose(&mut self, proposals: Vec<Proposal>) {
        if self.node.raft.state != StateRole::Leader {
            let leader = self.node.raft.leader_id;
            for p in proposals {
                let _ = p.reply.send(Err(ReplicaError::NotLeader { leader }));
            }
            return;
        }
        let proposals = self.deduplicate(proposals);
        if proposals.is_empty() {
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        let mut entries = Vec::with_capacity(proposals.len());
        for p in &proposals {
            entries.push(Entry {
                data: p.batch.clone(),
                ..Default::default()
            });
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.node.raft.id;
        m.entries = entries.into();
        if let Err(e) = self.node.step(m) {
            for p in proposals {
                let _ = p.reply.send(Err(ReplicaError::Dropped(e.to_string())));
            }
            return;
        }
        let term = self.node.raft.term;
        assert_eq!(
            self.node.raft.raft_log.last_index(),
            before + proposals.len() as u64
        );
        for (i, p) in proposals.into_iter().enumerate() {
            self.pending.push_back(Pending {
                index: before + 1 + i as u64,
                term,
                durability: p.durability,
                placed: None,
                reply: Some(p.reply),
            });
        }
    }

    /// Answers idempotent producers' retries of batches already written (with their offsets, once
    /// committed) and refuses sequence gaps and fenced epochs; returns the proposals to write.
    fn deduplicate(&mut self, proposals: Vec<Proposal>) -> Vec<Proposal> {
        use crate::consensus::producers::Check;
        if proposals.iter().all(|p| p.header.producer_id < 0) {
            return proposals;
        }
        let committed = self.node.raft.raft_log.committed;
        let storage = self.shared.storage.clone();
        let core = storage.read();
        // Sequences accepted earlier in this same step (not in the log yet).
        let mut accepted: std::collections::HashMap<i64, (i16, i32)> = Default::default();
        let mut out = Vec::with_capacity(proposals.len());
        for p in proposals {
            let h = &p.header;
            if h.producer_id < 0 || h.base_sequence < 0 {
                out.push(p);
                continue;
            }
            let verdict = match accepted.get(&h.producer_id) {
                Some(&(epoch, next)) if epoch == h.producer_epoch => {
                    if h.base_sequence == next {
                        Ok(())
                    } else if crate::consensus::producers::sequence_before(h.base_sequence, next) {
                        Err(ReplicaError::Dropped(
                            "duplicate of a batch being written; retry".into(),
                        ))
                    } else {
                        Err(ReplicaError::Sequence(format!(
                            "out-of-order sequence from producer {}: expected {next}, got {}",
                            h.producer_id, h.base_sequence
                        )))
                    }
                }
                _ => match core.producers.check(h) {
                    Check::Write => Ok(()),
                    Check::Duplicate(w) if w.raft_index <= committed => {
                        metrics::counter!("ferry_publish_duplicates_total").increment(1);
                        let _ = p.reply.send(Ok(Ack {
                            base_offset: w.base_offset,
                            record_count: w.record_count,
                        }));
                        continue;
                    }
                    Check::Duplicate(_) => Err(ReplicaError::Dropped(
                        "duplicate of a batch being replicated; retry".into(),
                    )),
                    Check::OutOfOrder { expected, got } => Err(ReplicaError::Sequence(format!(
                        "out-of-order sequence from producer {}: expected {expected}, got {got}",
                        h.producer_id
                    ))),
                    Check::Fenced { current, got } => Err(ReplicaError::Sequence(format!(
                        "producer {} epoch {got} is fenced by epoch {current}",
                        h.producer_id
                    ))),
                },
            };
            match verdict {
                Ok(()) => {
                    let next =
                        crate::consensus::producers::next_sequence(h.base_sequence, h.record_count);
                    accepted.insert(h.producer_id, (h.producer_epoch, next));
                    out.push(p);
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        out
    }

    async fn on_ready(&mut self) -> Result<(), Fatal> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state != StateRole::Leader {
                // Proposals not yet known committed: their entries may still commit under the new leader,
                // so their outcome is unknown, not "not leader" (L3 in the durability audit).
                self.fail_all(ReplicaError::Dropped(format!(
                    "leadership moved to broker {} before the publish committed; outcome unknown",
                    ss.leader_id
                )));
                self.lease.reset();
            }
        }
        let mut msgs = rd.take_messages();
        self.stamp_heartbeats(&mut msgs);
        if !rd.entries().is_empty() || !rd.committed_entries().is_empty() {
            self.quiet.active_tick = self.ticks;
        }
        self.transport.send(self.group, msgs);
        if !rd.snapshot().is_empty() {
            let s = rd.snapshot().clone();
            self.shared
                .storage
                .write()
                .install_snapshot(&s)
                .map_err(|e| e.to_string())?;
            self.note_membership();
        }
        let leading = self.node.raft.state == StateRole::Leader;
        let committed = rd.take_committed_entries();
        self.apply_committed(committed)?;
        // Term and vote before the entries of a new term: no stored batch ever carries a term past the state
        // file's, which recovery and the scrub check. The commit written is clamped to what is durable.
        if let Some(hs) = rd.hs() {
            self.shared
                .storage
                .write()
                .set_hard_state(hs)
                .map_err(|e| e.to_string())?;
        }
        self.persist_entries(rd.entries(), leading).await?;
        self.transport
            .send(self.group, rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.shared.storage.write().set_commit(commit);
        }
        let mut light_msgs = light.take_messages();
        self.stamp_heartbeats(&mut light_msgs);
        self.transport.send(self.group, light_msgs);
        self.apply_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        let now = Leadership {
            term: self.node.raft.term,
            leader: self.node.raft.leader_id,
            serving: self.node.raft.state == StateRole::Leader
                && self.node.raft.apply_to_current_term(),
        };
        self.shared
            .leadership
            .send_if_modified(|l| std::mem::replace(l, now) != now);
        self.note_in_sync(now.serving);
        self.publish_lease();
        if self.repairing.is_some() {
            let committed = self.node.raft.raft_log.committed;
            let done = self
                .shared
                .storage
                .write()
                .finish_repair_if_done(committed)
                .map_err(|e| e.to_string())?;
            if done {
                tracing::info!(partition = %self.shared.name, "repaired: the log holds everything it held before the damage");
                self.repairing = None;
            }
        }
        Ok(())
    }

    /// Writes a Ready's entries and, with the per-batch policy, fsyncs them once (group commit); moves the
    /// durable watermark before anything they hold is acknowledged.
    async fn persist_entries(&mut self, entries: &[Entry], leading: bool) -> Result<(), Fatal> {
        let (file, placed) = self
            .shared
            .storage
            .write()
            .append_entries(entries, leading)
            .map_err(|e| {
                if e.is_disk_full() {
                    Fatal::DiskFull(e.to_string())
                } else {
                    Fatal::Other(e.to_string())
                }
            })?;
        let last_written = entries.last().map(|e| e.index);
        let Some(file) = file else {
            return Ok(());
        };
        match self.fsync {
            // One fsync for every batch of this Ready; off the async threads.
            FsyncPolicy::PerBatch => {
                if let Err(why) = sync(file).await {
                    self.shared.storage.write().note_fsync_failed();
                    return Err(why.into());
                }
                if let Some(i) = last_written {
                    self.shared
                        .storage
                        .write()
                        .mark_durable(i)
                        .map_err(|e| e.to_string())?;
                }
            }
            FsyncPolicy::IntervalMs(_) => self.unsynced = Some((file, last_written.unwrap_or(0))),
        }
        self.note_persisted(&placed);
        Ok(())
    }

    /// Gives this leader's outgoing heartbeats their send time (and the quiesce mark when quiescing): the
    /// answers, which echo it, renew the lease.
    fn stamp_heartbeats(&mut self, msgs: &mut [Message]) {
        let quiescing = std::mem::take(&mut self.quiet.quiescing);
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        let now = std::time::Instant::now();
        let prefix = if quiescing {
            QUIESCE_CONTEXT
        } else {
            HEARTBEAT_CONTEXT
        };
        let ctx = self.lease.context(prefix, now);
        for m in msgs
            .iter_mut()
            .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
        {
            m.context = ctx.clone();
        }
    }

    /// Publishes until when this leader's reads are safe; none while it does not lead or hands over.
    fn publish_lease(&mut self) {
        let raft = &self.node.raft;
        let until = if raft.state == StateRole::Leader && raft.lead_transferee.is_none() {
            let voters: Vec<u64> = raft.prs().conf().voters().ids().iter().collect();
            let prs = raft.prs();
            self.lease
                .until(raft.id, &voters, std::time::Instant::now(), |ids| {
                    prs.has_quorum(&ids.iter().copied().collect())
                })
        } else {
            None
        };
        if raft.lead_transferee.is_some() {
            self.lease.reset();
        }
        self.shared
            .lease
            .send_if_modified(|l| std::mem::replace(l, until) != until);
    }

    fn note_in_sync(&mut self, leading: bool) {
        let mut in_sync: Vec<u64> = if leading {
            let committed = self.node.raft.raft_log.committed;
            let me = self.node.raft.id;
            let prs = self.node.raft.prs();
            prs.iter()
                .filter(|(id, p)| **id == me || in_sync(p, committed))
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        };
        in_sync.sort_unstable();
        let mut current = self.shared.in_sync.lock();
        if *current != in_sync {
            *current = in_sync;
        }
    }

    async fn sync_on_interval(&mut self) -> Result<(), String> {
        let FsyncPolicy::IntervalMs(ms) = self.fsync else {
            return Ok(());
        };
        if self.last_sync.elapsed() < Duration::from_millis(ms) {
            return Ok(());
        }
        self.last_sync = std::time::Instant::now();
        match self.unsynced.take() {
            Some((file, last)) => {
                if let Err(why) = sync(file).await {
                    self.shared.storage.write().note_fsync_failed();
                    return Err(why);
                }
                self.shared
                    .storage
                    .write()
                    .mark_durable(last)
                    .map_err(|e| e.to_string())
            }
            None => Ok(()),
        }
    }

    /// Records where persisted proposals landed; acknowledges those that asked only for leader durability.
    fn note_persisted(&mut self, placed: &[Placed]) {
        let mut it = placed.iter().peekable();
        for p in self.pending.iter_mut() {
            while it.peek().is_some_and(|x| x.raft_index < p.index) {
                it.next();
            }
            if let Some(x) = it.peek().filter(|x| x.raft_index == p.index) {
                p.placed = Some(**x);
                if p.durability == Durability::Leader {
                    p.answer(Ok(Ack {
                        base_offset: x.base_offset,
                        record_count: x.record_count,
                    }));
                }
            }
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if let (Some(apply), false) = (self.apply.as_mut(), e.data.is_empty()) {
                        apply.apply(e.index, &e.data);
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|e| format!("bad conf change: {e}"))?;
                    self.apply_conf_change(&cc, e.index)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|e| format!("bad conf change: {e}"))?;
                    self.apply_conf_change(&cc, e.index)?;
                }
            }
        }
        self.shared.storage.write().set_applied(last_index);
        let hw = self
            .shared
            .storage
            .read()
            .next_offset_after(last_index)
            .map_err(|e| e.to_string())?;
        self.shared.high_watermark.send_replace(hw);
        while self.pending.front().is_some_and(|p| p.index <= last_index) {
            let mut p = self.pending.pop_front().expect("checked");
            let term = entries
                .iter()
                .find(|e| e.index == p.index)
                .map(|e| e.term)
                .or_else(|| raft::Storage::term(&self.shared.storage, p.index).ok());
            match (term == Some(p.term), p.placed) {
                (true, Some(x)) => p.answer(Ok(Ack {
                    base_offset: x.base_offset,
                    record_count: x.record_count,
                })),
                _ => p.answer(Err(ReplicaError::Dropped(
                    "the entry was replaced after a leader change".into(),
                ))),
            }
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        cc: &impl raft_proto::ConfChangeI,
        index: u64,
    ) -> Result<(), String> {
        let cs = self
            .node
            .apply_conf_change(cc)
            .map_err(|e| format!("conf change: {e}"))?;
        self.note_membership();
        self.shared
            .storage
            .write()
            .set_conf_state(cs, index)
            .map_err(|e| e.to_string())
    }

    fn fail_all(&mut self, err: ReplicaError) {
        for mut p in self.pending.drain(..) {
            p.answer(Err(err.clone()));
        }
    }
}
