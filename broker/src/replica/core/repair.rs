//! The guards of a damaged log. A replica whose log lost fsynced data (found at open, or by the scrub)
//! repairs from its peers: it never votes or campaigns until its log again reaches what it once held
//! (`replica::raft_log::repair`), it tells the leader where its log now ends, and a leader believes a follower
//! whose log shrank. Quiescence and leases see every incoming message here too.

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::{Fatal, ReplicaCore};
use crate::replica::lease::QUIESCE_CONTEXT;

/// Marks a [`log_ends_at`] rejection: the follower itself says its log now ends lower than the leader may
/// think, so the leader believes it even though it answers no particular append.
const LOG_ENDS_CONTEXT: &[u8] = b"ferry-log-ends";

/// An append rejection from `from` telling `to` that its log ends at Raft index `last`: how a repairing
/// replica makes a leader that believes its log longer probe it again (`note_incoming`).
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

impl<R> ReplicaCore<R> {
    /// Quiescence bookkeeping for an incoming message: the quiesce heartbeat quiets a follower; anything
    /// else wakes the replica, except heartbeat answers on a leader (they answer its own quiesce heartbeat).
    ///
    /// Also the guards of a damaged log (answers whether to step the message): a repairing replica does not
    /// vote; no replica takes a commit index past its log (a leader may believe a repaired follower holds
    /// more than it now does); and a leader whose follower answers a current append (or says outright, with
    /// [`log_ends_at`]) that its log is shorter than what it had matched (the follower cut a damaged log)
    /// probes that follower again from where its log ends.
    pub(super) fn note_incoming(&mut self, m: &mut Message) -> bool {
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
                self.send(vec![nack]);
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
                    tracing::warn!(partition = %self.name, follower = m.from, had = pr.matched,
                        now = m.reject_hint, "a follower's log is shorter than it was (repairing); probing it again");
                    pr.matched = m.reject_hint;
                    pr.become_probe();
                    pr.next_idx = m.reject_hint + 1;
                }
            }
        }
        true
    }

    /// Sends every other voter an append rejection naming where this (repairing) log ends.
    pub(super) fn announce_repair(&mut self) {
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
        self.send(nacks);
    }

    /// Ends the repair once the log holds everything it held before the damage.
    pub(super) fn finish_repair_if_done(&mut self) -> Result<(), Fatal> {
        if self.repairing.is_none() {
            return Ok(());
        }
        let committed = self.node.raft.raft_log.committed;
        let done = self
            .storage
            .write()
            .finish_repair_if_done(committed)
            .map_err(|e| e.to_string())?;
        if done {
            tracing::info!(partition = %self.name, "repaired: the log holds everything it held before the damage");
            self.repairing = None;
        }
        Ok(())
    }
}
