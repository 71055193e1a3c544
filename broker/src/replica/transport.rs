//! Where a replica's outgoing Raft messages go.

use raft::eraftpb::Message;

/// Sends Raft messages of group `group` to other brokers.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msgs` for delivery; delivery is best effort (Raft retries).
    fn send(&self, group: u64, msgs: Vec<Message>);
}

/// The transport of a cluster of one: a replica whose only voter is itself sends no messages, so any message
/// here is a misconfiguration worth a loud log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, group: u64, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(group, to = m.to, kind = ?m.get_msg_type(), "raft message to a peer, but this broker has no peers");
        }
    }
}
