//! A Raft Ready, in the order raft-rs documents: send the leader's messages, persist entries and hard
//! state (one fsync for the whole Ready: group commit, the barrier the shell performs), send the messages
//! that needed persistence, apply committed entries, advance.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::StateRole;

use super::{Action, Fatal, FsyncPolicy, ReplicaCore, Waiting};
use crate::replica::raft_log::Placed;
use crate::replica::types::{Ack, Durability, Leadership, ReplicaError};

impl<R> ReplicaCore<R> {
    /// Handles the Ready the last event led to, if any; stops at the fsync barrier when its entries need
    /// one ([`ReplicaCore::synced`] finishes it).
    pub(super) fn drive(&mut self) {
        if self.fenced || self.waiting.is_some() || self.persist_next.is_some() {
            return;
        }
        if !self.node.has_ready() {
            self.check_damage();
            return;
        }
        if let Err(fatal) = self.begin_ready() {
            self.fence(fatal);
        }
    }

    /// The start of a Ready: leadership changes, and the messages a leader sends before it persists (its
    /// appends to followers, so they write while it writes). The rest waits until the shell has sent them
    /// ([`ReplicaCore::next_action`] runs it: `persist_ready`).
    fn begin_ready(&mut self) -> Result<(), Fatal> {
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state != StateRole::Leader {
                // Proposals not yet known committed: their entries may still commit under the new leader,
                // so their outcome is unknown, not "not leader" (L3 in the durability audit).
                let leader = ss.leader_id;
                self.answer_all(ReplicaError::Dropped(format!(
                    "leadership moved to broker {leader} before the publish committed; outcome unknown"
                )));
                self.lease.reset();
            }
        }
        let mut msgs = rd.take_messages();
        self.stamp_heartbeats(&mut msgs);
        if !rd.entries().is_empty() || !rd.committed_entries().is_empty() {
            self.quiet.active_tick = self.ticks;
        }
        self.send(msgs);
        self.persist_next = Some(Box::new(rd));
        Ok(())
    }

    /// The rest of a Ready up to the fsync: snapshot, committed entries, hard state, the write of new
    /// entries; then the fsync barrier, or (nothing to fsync) the end of the Ready.
    pub(super) fn persist_ready(&mut self, rd: raft::Ready) -> Result<(), Fatal> {
        let mut rd = rd;
        if !rd.snapshot().is_empty() {
            let s = rd.snapshot().clone();
            self.storage
                .write()
                .install_snapshot(&s)
                .map_err(|e| e.to_string())?;
            self.note_membership();
        }
        let leading = self.node.raft.state == StateRole::Leader;
        let committed = rd.take_committed_entries();
        self.apply_committed(committed)?;
        // Term and vote before the entries of a new term: no stored batch ever carries a term past the state
        // file's, which recovery and the scrub check. The commit written is clamped to what is durable.
        if let Some(hs) = rd.hs() {
            self.storage
                .write()
                .set_hard_state(hs)
                .map_err(|e| e.to_string())?;
        }
        let (file, placed) = self.storage.write().append_entries(rd.entries(), leading)?;
        let last_written = rd.entries().last().map(|e| e.index);
        match (file, self.fsync) {
            (None, _) => self.finish_ready(rd, &placed),
            // One fsync for every batch of this Ready, performed by the shell; the rest of the Ready waits.
            (Some(file), FsyncPolicy::PerBatch) => {
                self.actions.push_back(Action::Sync(file));
                self.waiting = Some(Waiting::Ready {
                    rd: Box::new(rd),
                    placed,
                    last_written,
                });
                Ok(())
            }
            (Some(file), FsyncPolicy::IntervalMs(_)) => {
                self.unsynced = Some((file, last_written.unwrap_or(0)));
                self.finish_ready(rd, &placed)
            }
        }
    }

    /// Moves the durable watermark to `last` (an fsync covered it).
    pub(super) fn mark_durable(&mut self, last: Option<u64>) -> Result<(), Fatal> {
        match last {
            Some(i) => self
                .storage
                .write()
                .mark_durable(i)
                .map_err(|e| Fatal::Other(e.to_string())),
            None => Ok(()),
        }
    }

    /// Everything after the fsync: acknowledgements of leader-durable publishes, the messages that needed
    /// persistence, advancing Raft, applying what that committed, and what readers now see.
    pub(super) fn finish_ready(&mut self, rd: raft::Ready, placed: &[Placed]) -> Result<(), Fatal> {
        let mut rd = rd;
        self.note_persisted(placed);
        let persisted = rd.take_persisted_messages();
        self.send(persisted);
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage.write().set_commit(commit);
        }
        let mut light_msgs = light.take_messages();
        self.stamp_heartbeats(&mut light_msgs);
        self.send(light_msgs);
        self.apply_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        let raft = &self.node.raft;
        let now = Leadership {
            term: raft.term,
            leader: raft.leader_id,
            serving: raft.state == StateRole::Leader && raft.apply_to_current_term(),
        };
        self.actions.push_back(Action::Leadership(now));
        self.note_in_sync(now.serving);
        self.publish_lease();
        self.finish_repair_if_done()?;
        self.check_damage();
        Ok(())
    }

    /// Records where persisted proposals landed; acknowledges those that asked only for leader durability.
    fn note_persisted(&mut self, placed: &[Placed]) {
        let mut it = placed.iter().peekable();
        let mut answers = Vec::new();
        for p in self.pending.iter_mut() {
            while it.peek().is_some_and(|x| x.raft_index < p.index) {
                it.next();
            }
            if let Some(x) = it.peek().filter(|x| x.raft_index == p.index) {
                p.placed = Some(**x);
                if p.durability == Durability::Leader {
                    if let Some(reply) = p.reply.take() {
                        answers.push(Action::Answer(
                            reply,
                            Ok(Ack {
                                base_offset: x.base_offset,
                                record_count: x.record_count,
                            }),
                        ));
                    }
                }
            }
        }
        self.actions.extend(answers);
    }

    /// Applies committed entries (configuration changes, the state machine's batches), moves the high
    /// watermark, then acknowledges the publishes they hold.
    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if let (Some(apply), false) = (self.apply.as_mut(), e.data.is_empty()) {
                        apply.apply(e.index, &e.data);
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|e| format!("bad conf change: {e}"))?;
                    self.apply_conf_change(&cc, e.index)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|e| format!("bad conf change: {e}"))?;
                    self.apply_conf_change(&cc, e.index)?;
                }
            }
        }
        self.storage.write().set_applied(last_index);
        let hw = self
            .storage
            .read()
            .next_offset_after(last_index)
            .map_err(|e| e.to_string())?;
        // Readers see the new watermark before any publisher hears its batch committed.
        self.actions.push_back(Action::HighWatermark(hw));
        while self.pending.front().is_some_and(|p| p.index <= last_index) {
            let mut p = self.pending.pop_front().expect("checked");
            let term = entries
                .iter()
                .find(|e| e.index == p.index)
                .map(|e| e.term)
                .or_else(|| raft::Storage::term(&self.storage, p.index).ok());
            let outcome = match (term == Some(p.term), p.placed) {
                (true, Some(x)) => Ok(Ack {
                    base_offset: x.base_offset,
                    record_count: x.record_count,
                }),
                _ => Err(ReplicaError::Dropped(
                    "the entry was replaced after a leader change".into(),
                )),
            };
            self.answer(&mut p, outcome);
        }
        Ok(())
    }

    /// With the interval policy, asks for the periodic fsync once its interval passed; returns whether it
    /// did (the Ready waits for it).
    pub(super) fn sync_on_interval(&mut self) -> bool {
        let FsyncPolicy::IntervalMs(ms) = self.fsync else {
            return false;
        };
        if self.now.saturating_duration_since(self.last_sync) < std::time::Duration::from_millis(ms)
        {
            return false;
        }
        self.last_sync = self.now;
        match self.unsynced.take() {
            Some((file, last)) => {
                self.actions.push_back(Action::Sync(file));
                self.waiting = Some(Waiting::Interval { last });
                true
            }
            None => false,
        }
    }

    /// A read for replication found damage inside the log: stop leading and serving at once (the other
    /// replicas elect a leader); the broker's scrub sees "corrupt" and repairs this replica from them.
    fn check_damage(&mut self) {
        if let Some(damage) = self.storage.damage() {
            let why = format!("corrupt log found while replicating: {damage}");
            tracing::error!(partition = %self.name, "{why}");
            self.fence(Fatal::Damaged(why));
        }
    }
}
