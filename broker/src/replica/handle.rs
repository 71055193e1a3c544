//! The handle servers use to publish to and read from a replica.

use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::BatchHeader;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::core::Proposal as CoreProposal;
use super::types::{Ack, Durability, Leadership, Membership, Reconfigure, ReplicaError};
use crate::replica::raft_log::ReplicaStorage;
use crate::storage::StorageError;

/// Where a publish's outcome goes.
pub type AckSender = oneshot::Sender<Result<Ack, ReplicaError>>;

/// A publish waiting for the driver.
pub type Proposal = CoreProposal<AckSender>;

/// State the driver shares with readers.
#[derive(Debug)]
pub struct Shared {
    pub group: u64,
    pub name: String,
    pub storage: ReplicaStorage,
    /// Offset after the last committed record.
    pub high_watermark: watch::Sender<u64>,
    /// Who leads, and whether this replica serves.
    pub leadership: watch::Sender<Leadership>,
    /// While this replica leads: the replicas whose log reaches the commit index, sorted.
    pub in_sync: Mutex<Vec<u64>>,
    /// Why the replica is fenced, once it is.
    pub failed: Mutex<Option<String>>,
    /// The configuration last applied.
    pub membership: Mutex<Membership>,
    /// The group is quiesced here: idle, its Raft timers stopped.
    pub quiesced: std::sync::atomic::AtomicBool,
    /// While this replica leads: until when its reads are safe (see `lease`).
    pub lease: watch::Sender<Option<std::time::Instant>>,
    /// A reader found the lease run out: the driver sends heartbeats now rather than at its next beat.
    pub renew: tokio::sync::Notify,
    /// The driver task has ended (stopped, fenced or panicked): nothing is served from here any more.
    pub stopped: std::sync::atomic::AtomicBool,
    /// The fence is for damaged data (the scrub repairs it from peers; supervision leaves it alone).
    pub damaged: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A replica's shared state over `storage`, serving nothing yet.
    pub fn new(group: u64, name: String, storage: ReplicaStorage, high_watermark: u64) -> Self {
        Shared {
            group,
            name,
            storage,
            high_watermark: watch::channel(high_watermark).0,
            leadership: watch::channel(Leadership::default()).0,
            in_sync: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
            membership: Mutex::new(Membership::default()),
            quiesced: Default::default(),
            lease: watch::channel(None).0,
            renew: tokio::sync::Notify::new(),
            stopped: Default::default(),
            damaged: Default::default(),
        }
    }

    /// Fences the replica: it serves nothing more until restarted and repaired.
    pub fn fail(&self, why: String) {
        tracing::error!(partition = %self.name, "{why}");
        self.failed.lock().get_or_insert(why);
        // A fenced replica neither leads nor knows who does: clients asking here look elsewhere.
        self.leadership.send_replace(Leadership::default());
        self.lease.send_replace(None);
    }

    /// Fences the replica for damaged data (found by a read, or while replicating).
    pub fn fail_damaged(&self, why: String) {
        self.damaged
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.fail(why);
    }

    /// The driver ended: clear leadership so nobody is told this replica leads, and refuse reads.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.leadership.send_replace(Leadership::default());
        self.lease.send_replace(None);
    }

    fn check(&self) -> Result<(), ReplicaError> {
        if let Some(why) = &*self.failed.lock() {
            return Err(ReplicaError::Failed(why.clone()));
        }
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReplicaError::ShuttingDown);
        }
        Ok(())
    }

    /// Whether the lease is valid now.
    fn leased(&self) -> bool {
        self.lease
            .borrow()
            .is_some_and(|until| std::time::Instant::now() < until)
    }
}

/// An operator request to a replica's driver.
#[derive(Debug)]
pub enum Control {
    /// Hand leadership to this broker (a caught-up voter of the group).
    TransferLeader(u64),
    /// Take one step of configuration change towards these voters (see [`Reconfigure`]).
    Reconfigure(Vec<u64>, oneshot::Sender<Reconfigure>),
    /// Panic the driver (fault injection only: how tests reach a replica task that dies).
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// A handle to a running replica.
#[derive(Debug, Clone)]
pub struct Replica {
    pub(crate) tx: mpsc::Sender<Proposal>,
    /// Raft messages from peers.
    pub(crate) inbox: mpsc::Sender<raft::eraftpb::Message>,
    /// Operator requests.
    pub(crate) control: mpsc::Sender<Control>,
    pub(crate) shared: Arc<Shared>,
}

/// Committed data of a fetch.
#[derive(Debug)]
pub struct Fetched {
    pub batches: Vec<Bytes>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl Replica {
    /// Proposes a validated batch and waits for it to be as durable as asked.
    pub async fn publish(
        &self,
        batch: Bytes,
        header: BatchHeader,
        durability: Durability,
    ) -> Result<Ack, ReplicaError> {
        self.shared.check()?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal {
                batch,
                header,
                durability,
                reply,
            })
            .await
            .map_err(|_| ReplicaError::ShuttingDown)?;
        rx.await
            .map_err(|_| ReplicaError::Dropped("replica stopped".into()))?
    }

    fn check_serving(&self) -> Result<(), ReplicaError> {
        self.shared.check()?;
        if !self.is_serving() {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        if !self.shared.leased() {
            return Err(ReplicaError::NoLease);
        }
        Ok(())
    }

    /// Whether this replica leads and has applied an entry of its term (see [`Leadership::serving`]); reads
    /// also need its lease ([`Replica::ready_to_read`]).
    pub fn is_serving(&self) -> bool {
        self.shared.leadership.borrow().serving
    }

    /// Waits (at most `wait`) until this replica may serve reads: it leads, has applied an entry of its term
    /// and holds a lease. A leader whose lease ran out asks its driver to confirm it with a heartbeat round
    /// now. Errors say who leads instead, or that no quorum confirmed this one.
    pub async fn ready_to_read(&self, wait: std::time::Duration) -> Result<(), ReplicaError> {
        match self.check_serving() {
            Err(ReplicaError::NoLease) => {}
            other => return other,
        }
        self.shared.renew.notify_one();
        let mut rx = self.shared.lease.subscribe();
        let leased =
            |l: &Option<std::time::Instant>| l.is_some_and(|u| std::time::Instant::now() < u);
        let _ = tokio::time::timeout(wait, rx.wait_for(leased)).await;
        self.check_serving()
    }

    /// Waits until the group has a leader that serves (this replica) or is known (another broker), or `wait`
    /// elapses; returns whether it settled.
    pub async fn wait_settled(&self, node_id: u64, wait: std::time::Duration) -> bool {
        let mut rx = self.shared.leadership.subscribe();
        let settled = |l: &Leadership| l.serving || (l.leader != 0 && l.leader != node_id);
        let done = tokio::time::timeout(wait, rx.wait_for(settled)).await;
        matches!(done, Ok(Ok(_)))
    }

    /// Committed batches from `offset`, at most `max_bytes` (at least one batch when there is one).
    pub fn fetch(&self, offset: u64, max_bytes: u32) -> Result<Fetched, ReplicaError> {
        self.check_serving()?;
        let hw = *self.shared.high_watermark.borrow();
        let core = self.shared.storage.read();
        let log_start_offset = core.log.start_offset();
        match core.log.read(offset, max_bytes, hw) {
            Ok(batches) => Ok(Fetched {
                batches,
                high_watermark: hw,
                log_start_offset,
            }),
            Err(StorageError::OffsetOutOfRange { offset, start, end }) => {
                Err(ReplicaError::OutOfRange(format!(
                    "offset {offset} is out of range: the partition holds offsets {start} to {end}"
                )))
            }
            Err(e) => {
                drop(core);
                let why = e.to_string();
                if e.is_damage() {
                    self.shared.fail_damaged(why.clone());
                } else {
                    self.shared.fail(why.clone());
                }
                Err(ReplicaError::Failed(why))
            }
        }
    }

    /// First offset with a record at or after `timestamp_ms` (the high watermark when none).
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, ReplicaError> {
        self.check_serving()?;
        let hw = *self.shared.high_watermark.borrow();
        let found = self.shared.storage.read().log.offset_for_time(timestamp_ms);
        let o = found.map_err(|e| self.storage_failure(e))?;
        Ok(o.min(hw))
    }

    /// The high watermark and log start, as the serving leader knows them (a follower's or a stale leader's
    /// would be behind: L6 in the durability audit).
    pub fn bounds(&self) -> Result<(u64, u64), ReplicaError> {
        self.check_serving()?;
        Ok((self.high_watermark(), self.log_start_offset()))
    }

    /// A storage error met while serving: damage fences the replica (the scrub repairs it).
    fn storage_failure(&self, e: StorageError) -> ReplicaError {
        let why = e.to_string();
        if e.is_damage() {
            self.shared.fail_damaged(why.clone());
        }
        ReplicaError::Failed(why)
    }

    /// Waits until the high watermark passes `offset` or `wait` elapses.
    pub async fn wait_for(&self, offset: u64, wait: std::time::Duration) {
        let mut rx = self.shared.high_watermark.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|hw| *hw > offset)).await;
    }

    /// A receiver that sees every new high watermark.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.shared.high_watermark.subscribe()
    }

    /// Offset after the last record stored (committed or not).
    pub fn log_end_offset(&self) -> u64 {
        self.shared.storage.read().log.next_offset()
    }

    /// Asks the leader to hand leadership to `to` and waits (up to `wait`) until some broker other than
    /// this one leads or `to` does; returns the leader then (0 if none yet).
    pub async fn transfer_leader(
        &self,
        to: u64,
        node_id: u64,
        wait: std::time::Duration,
    ) -> Result<u64, ReplicaError> {
        self.shared.check()?;
        if self.leader() != node_id {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        if to == node_id {
            return Ok(node_id);
        }
        self.control
            .send(Control::TransferLeader(to))
            .await
            .map_err(|_| ReplicaError::ShuttingDown)?;
        let mut rx = self.shared.leadership.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|l| l.leader == to)).await;
        Ok(self.leader())
    }

    /// Makes the driver task panic (fault injection only).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let _ = self.control.send(Control::Panic).await;
    }

    /// The Raft group id.
    pub fn group(&self) -> u64 {
        self.shared.group
    }

    /// Where the peer router delivers this group's Raft messages.
    pub fn inbox(&self) -> mpsc::Sender<raft::eraftpb::Message> {
        self.inbox.clone()
    }

    /// Offset after the last committed record.
    pub fn high_watermark(&self) -> u64 {
        *self.shared.high_watermark.borrow()
    }

    /// First offset still stored.
    pub fn log_start_offset(&self) -> u64 {
        self.shared.storage.read().log.start_offset()
    }

    /// The replicas caught up to the commit index, as the leader sees them (empty unless this replica leads).
    pub fn in_sync(&self) -> Vec<u64> {
        self.shared.in_sync.lock().clone()
    }

    /// Whether this replica is quiesced (idle group, Raft timers stopped).
    pub fn is_quiesced(&self) -> bool {
        self.shared
            .quiesced
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The group's voters and learners as this replica last applied them.
    pub fn membership(&self) -> Membership {
        self.shared.membership.lock().clone()
    }

    /// Asks the leader to take one configuration-change step towards `voters`.
    pub async fn reconfigure(&self, voters: Vec<u64>) -> Result<Reconfigure, ReplicaError> {
        self.shared.check()?;
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Reconfigure(voters, tx))
            .await
            .map_err(|_| ReplicaError::ShuttingDown)?;
        rx.await.map_err(|_| ReplicaError::ShuttingDown)
    }

    /// The Raft term while this replica serves as leader (`None` otherwise): state derived from the log on
    /// a leader (consumer groups) is reloaded when it changes. Answers from that state also need the lease
    /// ([`Replica::ready_to_read`]).
    pub fn serving_term(&self) -> Option<u64> {
        let l = *self.shared.leadership.borrow();
        l.serving.then_some(l.term)
    }

    /// While this replica repairs a damaged log: the Raft index it must hold again before it votes.
    pub fn repairing(&self) -> Option<u64> {
        self.shared.storage.read().repair_until()
    }

    /// Why this replica does not serve as usual: fenced, or repairing (`None`: neither).
    pub fn trouble(&self) -> Option<String> {
        self.failure().or_else(|| {
            self.repairing().map(|until| {
                format!(
                    "repairing: this replica lost data it had fsynced and takes it back from a peer \
                     (up to raft index {until}) before it votes or leads"
                )
            })
        })
    }

    /// Whether the fence on this replica is for damaged data (the scrub repairs those).
    pub fn is_damaged(&self) -> bool {
        self.shared
            .damaged
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the driver task ended (stopped, fenced, or panicked).
    pub fn has_stopped(&self) -> bool {
        self.shared
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Current leader (0: none).
    pub fn leader(&self) -> u64 {
        self.shared.leadership.borrow().leader
    }

    /// Why the replica is fenced, if it is.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// Raft index of the first entry stored here.
    pub fn first_raft_index(&self) -> u64 {
        self.shared.storage.read().log.first_raft_index()
    }

    /// Raft index of the last entry stored here (committed or not).
    pub fn last_raft_index(&self) -> u64 {
        self.shared.storage.read().log.last_raft_index()
    }

    /// The commit index this replica knows.
    pub fn committed_raft_index(&self) -> u64 {
        self.shared.storage.read().hard_state().commit
    }

    /// Stored batches with Raft indexes `[low, high)`, each checked whole (stamp and CRC), as this replica's
    /// log holds them: for comparing replicas (tests, tools). Stops early after about `max_bytes`.
    pub fn stored_batches(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let core = self.shared.storage.read();
        let b = core.log.batches_by_raft_index(low, high, max_bytes)?;
        Ok(b.into_iter().map(|(_, b)| b).collect())
    }

    /// Bytes stored.
    pub fn size_bytes(&self) -> u64 {
        self.shared.storage.read().log.size_bytes()
    }

    /// Retention passes run over this replica's log since it was opened.
    pub fn retention_passes(&self) -> u64 {
        self.shared.storage.read().retention_passes()
    }

    /// Segments CRC-scanned when this replica's log was opened.
    pub fn scanned_at_open(&self) -> u64 {
        self.shared.storage.read().scanned_at_open()
    }
}
