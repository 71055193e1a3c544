//! Delivers incoming Raft messages to the local replica of their group.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

/// Group id → inbox of the local replica.
#[derive(Debug, Default)]
pub struct Router {
    inboxes: RwLock<HashMap<u64, mpsc::Sender<Message>>>,
    liveness: Arc<crate::replica::Liveness>,
}

impl Router {
    /// Routes messages of `group` to `inbox` from now on.
    pub fn register(&self, group: u64, inbox: mpsc::Sender<Message>) {
        self.inboxes.write().insert(group, inbox);
    }

    /// Which peers were heard from lately (every received batch counts).
    pub fn liveness(&self) -> Arc<crate::replica::Liveness> {
        self.liveness.clone()
    }

    /// Stops routing `group`.
    pub fn unregister(&self, group: u64) {
        self.inboxes.write().remove(&group);
    }

    /// Hands `msg` to its group's replica. Dropped when the group is unknown here (not created yet, or
    /// deleted) or its inbox is full: Raft retransmits, so a drop only delays.
    pub fn deliver(&self, group: u64, msg: Message) -> bool {
        match self.inboxes.read().get(&group) {
            Some(inbox) => inbox.try_send(msg).is_ok(),
            None => false,
        }
    }
}
