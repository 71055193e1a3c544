//! The handle servers use to publish to and read from a replica.

use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::BatchHeader;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::consensus::ReplicaStorage;
use crate::storage::StorageError;

/// Why a replica refused or could not finish a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error("not leader for this partition (leader: broker {leader})")]
    NotLeader { leader: u64 },
    #[error("partition is fenced after a storage failure: {0}")]
    Failed(String),
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("publish dropped, outcome unknown ({0}); retry")]
    Dropped(String),
    #[error("partition is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    OutOfRange(String),
    /// An idempotent producer's batch out of sequence, or from a fenced epoch.
    #[error("{0}")]
    Sequence(String),
}

/// A durable acknowledgement: where the batch's records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub base_offset: u64,
    pub record_count: u32,
}

/// How durable a publish must be before its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed: fsynced on a quorum.
    Quorum,
    /// Fsynced on the leader.
    Leader,
}

/// A publish waiting for the driver.
#[derive(Debug)]
pub struct Proposal {
    pub batch: Bytes,
    pub header: BatchHeader,
    pub durability: Durability,
    pub reply: oneshot::Sender<Result<Ack, ReplicaError>>,
}

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
}

impl Shared {
    /// Fences the replica: it serves nothing more until restarted and repaired.
    pub fn fail(&self, why: String) {
        tracing::error!(partition = %self.name, "{why}");
        self.failed.lock().get_or_insert(why);
        // A fenced replica neither leads nor knows who does: clients asking here look elsewhere.
        self.leadership.send_replace(Leadership::default());
    }

    fn check(&self) -> Result<(), ReplicaError> {
        match &*self.failed.lock() {
            Some(why) => Err(ReplicaError::Failed(why.clone())),
            None => Ok(()),
        }
    }
}

/// An operator request to a replica's driver.
#[derive(Debug)]
pub enum Control {
    /// Hand leadership to this broker (a caught-up voter of the group).
    TransferLeader(u64),
    /// Take one step of configuration change towards these voters (see [`Reconfigure`]).
    Reconfigure(Vec<u64>, oneshot::Sender<Reconfigure>),
}

/// What one reconfiguration step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconfigure {
    /// The voters are the target and there are no learners.
    Settled,
    /// A configuration change was proposed (or one is still pending, or a learner is catching up).
    InProgress(String),
    /// This replica is to be removed and leads: leadership was handed to this voter first.
    HandedOff(u64),
    /// Only the leader changes the configuration.
    NotLeader,
}

/// The group's configuration as this replica last applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// Who leads a group, as this replica knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Broker id of the current leader (0: none known).
    pub leader: u64,
    /// This replica leads and has applied an entry of its own term, so its high watermark is current:
    /// only then does it serve reads (a new leader's high watermark can lag what was committed before).
    pub serving: bool,
    /// Raft term this view is from.
    pub term: u64,
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
        Ok(())
    }

    /// Whether this replica serves reads (see [`Shared::serving`]).
    pub fn is_serving(&self) -> bool {
        self.shared.leadership.borrow().serving
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
                self.shared.fail(why.clone());
                Err(ReplicaError::Failed(why))
            }
        }
    }

    /// First offset with a record at or after `timestamp_ms` (the high watermark when none).
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, ReplicaError> {
        self.check_serving()?;
        let hw = *self.shared.high_watermark.borrow();
        let o = self
            .shared
            .storage
            .read()
            .log
            .offset_for_time(timestamp_ms)
            .map_err(|e| ReplicaError::Failed(e.to_string()))?;
        Ok(o.min(hw))
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
    /// a leader (consumer groups) is reloaded when it changes.
    pub fn serving_term(&self) -> Option<u64> {
        let l = *self.shared.leadership.borrow();
        l.serving.then_some(l.term)
    }

    /// Current leader (0: none).
    pub fn leader(&self) -> u64 {
        self.shared.leadership.borrow().leader
    }

    /// Why the replica is fenced, if it is.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// Bytes stored.
    pub fn size_bytes(&self) -> u64 {
        self.shared.storage.read().log.size_bytes()
    }
}
