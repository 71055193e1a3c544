//! Membership changes: one-server-at-a-time reconfiguration toward a target replica set.

use std::time::Instant;

use raft::eraftpb::{ConfChange, ConfChangeType};
use raft::StateRole;

use super::{Action, ReplicaCore, LEARNER_CATCH_UP_ENTRIES};
use crate::replica::types::{Membership, Reconfigure};

impl<R> ReplicaCore<R> {
    /// Takes one step of moving the group to `target` voters at `now` (see below), then handles the Ready
    /// it led to.
    pub fn reconfigure(&mut self, target: &[u64], now: Instant) -> Reconfigure {
        assert!(
            self.waiting.is_none() && self.persist_next.is_none() && self.actions.is_empty(),
            "a reconfiguration handed to a replica core with actions not yet carried out"
        );
        if self.fenced {
            return Reconfigure::InProgress("the replica is fenced".into());
        }
        self.now = now;
        self.wake();
        let step = self.step_reconfigure(target);
        self.drive();
        step
    }

    /// Publishes the applied configuration to readers.
    pub(super) fn note_membership(&mut self) {
        let conf = self.node.raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        self.actions
            .push_back(Action::Membership(Membership { voters, learners }));
    }

    /// One step of moving the group to `target` voters, one server at a time (never joint): add each new
    /// replica as a learner, promote it once caught up, then remove the replicas that go. A leader that is
    /// to go first hands leadership to a caught-up voter that stays. raft-rs allows one pending change at a
    /// time, so a step waits while one is in flight.
    fn step_reconfigure(&mut self, target: &[u64]) -> Reconfigure {
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
                tracing::info!(partition = %self.name, ?kind, node = id, "configuration change proposed");
                Reconfigure::InProgress(format!("{kind:?} {id} proposed"))
            }
            Err(e) => Reconfigure::InProgress(format!("{kind:?} {id} refused: {e}")),
        }
    }

    pub(super) fn apply_conf_change(
        &mut self,
        cc: &impl raft_proto::ConfChangeI,
        index: u64,
    ) -> Result<(), String> {
        let cs = self
            .node
            .apply_conf_change(cc)
            .map_err(|e| format!("conf change: {e}"))?;
        self.note_membership();
        self.storage
            .write()
            .set_conf_state(cs, index)
            .map_err(|e| e.to_string())
    }
}
