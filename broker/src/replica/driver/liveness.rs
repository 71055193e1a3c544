//! Ticks, quiescence of idle groups, heartbeat stamps, leases and the in-sync set.

use super::*;

impl Driver {
    pub(super) fn wake(&mut self) {
        self.set_quiesced(false);
        self.quiet.active_tick = self.ticks;
    }

    pub(super) fn set_quiesced(&mut self, q: bool) {
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
    pub(super) fn peers_live(&self) -> bool {
        let raft = &self.node.raft;
        let live = |id: u64| id == raft.id || self.quiet.liveness.is_live(id, self.quiet.window);
        if raft.state == StateRole::Leader {
            raft.prs().conf().voters().ids().iter().all(live)
        } else {
            raft.leader_id != 0 && live(raft.leader_id)
        }
    }

    /// A leader quiesces its group once idle with every voter caught up and reachable.
    pub(super) fn maybe_quiesce(&mut self) {
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

    pub(super) fn tick(&mut self) {
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

    /// Gives this leader's outgoing heartbeats their send time (and the quiesce mark when quiescing): the
    /// answers, which echo it, renew the lease.
    pub(super) fn stamp_heartbeats(&mut self, msgs: &mut [Message]) {
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
    pub(super) fn publish_lease(&mut self) {
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

    pub(super) fn note_in_sync(&mut self, leading: bool) {
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
}
