//! Ticks, quiescence of idle groups, heartbeat stamps, leases and the in-sync set.

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::{Action, ReplicaCore, IN_SYNC_LAG_ENTRIES, QUIESCE_IDLE_TICKS};
use crate::replica::lease::{HEARTBEAT_CONTEXT, QUIESCE_CONTEXT};

/// Whether a follower is in sync: caught up to the commit index, or (under load, when the leader looks
/// between an append and its answer) answering and close behind.
fn in_sync(p: &raft::Progress, committed: u64) -> bool {
    p.matched >= committed || (p.recent_active && p.matched + IN_SYNC_LAG_ENTRIES >= committed)
}

impl<R> ReplicaCore<R> {
    pub(super) fn wake(&mut self) {
        self.set_quiesced(false);
        self.quiet.active_tick = self.ticks;
    }

    pub(super) fn set_quiesced(&mut self, q: bool) {
        if self.quiet.quiesced != q {
            self.quiet.quiesced = q;
            self.actions.push_back(Action::Quiesced(q));
        }
    }

    /// Whether the brokers this replica depends on were all heard from lately: a follower its leader's, a
    /// leader every voter's.
    pub(super) fn peers_live(&self) -> bool {
        let raft = &self.node.raft;
        let live = |id: u64| {
            id == raft.id
                || self
                    .quiet
                    .liveness
                    .is_live_at(id, self.quiet.window, self.now)
        };
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
            // Publishes waiting for earlier sequences are proposed on a later tick: stay awake for them.
            || !self.parked.is_empty()
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
            tracing::debug!(partition = %self.name, "a peer went quiet; waking up");
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
        let now = self.now;
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
            self.lease.until(raft.id, &voters, self.now, |ids| {
                prs.has_quorum(&ids.iter().copied().collect())
            })
        } else {
            None
        };
        if raft.lead_transferee.is_some() {
            self.lease.reset();
        }
        self.actions.push_back(Action::Lease(until));
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
        self.actions.push_back(Action::InSync(in_sync));
    }
}
