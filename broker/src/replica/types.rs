//! The plain values a replica answers with: errors, acknowledgements, durability levels, reconfiguration
//! steps, and what it knows of its group (membership, leadership). No runtime: the core and the handle
//! both speak them.

/// Why a replica refused or could not finish a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// This replica leads but a quorum has not confirmed it lately (it may have been partitioned away and
    /// replaced): it serves no reads until one does.
    #[error("this broker leads the partition but no quorum confirmed its lease lately; retry")]
    NoLease,
    #[error("{0}")]
    OutOfRange(String),
    /// An idempotent producer's batch out of sequence (a retry from before its window), or from a fenced
    /// epoch: retrying it cannot help.
    #[error("{0}")]
    Sequence(String),
    /// An idempotent producer's batch ahead of its sequence whose predecessors did not arrive within the
    /// wait (`SEQUENCE_WAIT_MS`): it may be written once they have, so the producer may retry it.
    #[error("{0}")]
    Gap(String),
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
