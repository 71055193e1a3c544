//! Cluster views as plain types, and the service that asks other brokers for theirs.
//!
//! A broker knows the leader of the partitions it hosts; for the others (with more brokers than replicas,
//! not every broker hosts every partition) it asks a broker that does, and only a partition's leader knows
//! its in-sync replicas and current high watermark. The core builds and merges these views; how another
//! broker is asked (gRPC today) is a [`Dialer`] it is handed, so nothing here knows the wire.

use bytes::Bytes;
use futures::future::BoxFuture;

/// What one broker knows of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: u32,
    /// 0: no leader known.
    pub leader: u64,
    /// Replicas caught up with the leader; only the leader knows (empty elsewhere).
    pub in_sync: Vec<u64>,
    pub replicas: Vec<u64>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Why the partition cannot serve here (empty when it can).
    pub error: String,
}

/// What one broker knows of one topic's partitions, in partition order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicView {
    pub name: String,
    pub partitions: Vec<PartitionView>,
}

/// Why a forwarded controller command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The broker did not answer, or is no longer the controller leader: find the leader again.
    #[error("the controller leader is unreachable: {0}")]
    Unreachable(String),
    /// The command was refused (its reason).
    #[error("{0}")]
    Refused(String),
}

/// Asks other brokers, by peer address, what the core cannot answer alone.
pub trait Dialer: Send + Sync + std::fmt::Debug {
    /// The own view of topic `name` of the broker whose peer port is `addr`; `None` when it does not answer
    /// in time.
    fn local_view(&self, addr: String, name: String) -> BoxFuture<'_, Option<TopicView>>;

    /// Sends a controller command batch to the controller leader's peer port at `addr`, from a broker of
    /// cluster `cluster_id` (empty until known): the controller log offset it landed at.
    fn forward(
        &self,
        addr: String,
        batch: Bytes,
        cluster_id: String,
    ) -> BoxFuture<'_, Result<u64, ForwardError>>;

    /// Asks the broker at peer address `addr` who it is and whether the cluster knows this broker (a
    /// starting broker's check, `broker::identify`); an error says why it did not answer.
    fn hello(&self, addr: String, hello: Hello) -> BoxFuture<'_, Result<HelloAnswer, String>>;
}

/// What a starting broker tells its peers in Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    /// Empty when this broker has none yet.
    pub cluster_id: String,
    pub incarnation: u64,
    /// Its data dir is new: it asks for the controller leader's confirmation.
    pub fresh: bool,
}

pub use crate::identity::HelloAnswer;
