//! A Raft Ready, in the order raft-rs documents for asynchronous persistence: send the leader's messages,
//! apply what committed, write entries and hard state to the page cache, advance; the fsync that makes the
//! writes durable runs at the shell while the next Readies are written (one fsync for everything written
//! before it started: group commit). When it returns, what it covered ends: Raft learns it persisted
//! (`on_persist_ready`), the messages that needed persistence go out, leader-durable publishes are answered.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::StateRole;

use super::{Action, Fatal, FsyncPolicy, ReplicaCore, Syncing, Written};
use crate::replica::raft_log::Placed;
use crate::replica::types::{Ack, Durability, Leadership, ReplicaError};

impl<R> ReplicaCore<R> {
    /// Handles the Ready the last event led to, if any. While an fsync is out, a Ready that would cut the
    /// log (a new leader replacing an uncommitted tail, a snapshot) or that follows a change of role waits
    /// for it ([`ReplicaCore::synced`] drives again): a cut under a running fsync would leave unclear what
    /// it covered, and raft-rs requires a new leader's earlier Readies to be persisted.
    pub(super) fn drive(&mut self) {
        if self.fenced || self.persist_next.is_some() {
            return;
        }
        if !self.node.has_ready() {
            self.check_damage();
            return;
        }
        if self.syncing.is_some() && self.must_wait_for_sync() {
            return;
        }
        if let Err(fatal) = self.begin_ready() {
            self.fence(fatal);
        }
    }

    /// Whether the next Ready must wait for the fsync that is out (see [`ReplicaCore::drive`]).
    fn must_wait_for_sync(&self) -> bool {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        raft.state != self.ready_role
            || log.unstable_snapshot().is_some()
            || log
                .unstable_entries()
                .first()
                .is_some_and(|e| e.index <= self.storage.read().log.last_raft_index())
    }

    /// The start of a Ready: leadership changes, and the messages a leader sends before it persists (its
    /// appends to followers, so they write while it writes). The rest waits until the shell has sent them
    /// ([`ReplicaCore::next_action`] runs it: `persist_ready`).
    fn begin_ready(&mut self) -> Result<(), Fatal> {
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            self.ready_role = ss.raft_state;
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

    /// The rest of a Ready: snapshot, committed entries, hard state, the write of new entries, advancing
    /// Raft; then what needs no fsync ends at once, and an fsync starts if none is out.
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
        let number = rd.number();
        let persisted = rd.take_persisted_messages();
        // The entries are readable through `Storage` already (raft-rs's condition for advancing early).
        self.node.advance_append_async(rd);
        let file = match (file, self.fsync) {
            (Some(file), FsyncPolicy::PerBatch) => Some(file),
            (Some(file), FsyncPolicy::IntervalMs(_)) => {
                self.unsynced = Some((file, last_written.unwrap_or(0)));
                None
            }
            (None, _) => None,
        };
        self.written.push_back(Written {
            number,
            persisted,
            placed,
            last_written,
            file,
        });
        self.end_written();
        // After `end_written`: a snapshot counts as applied only once Raft knows it persisted.
        self.node.advance_apply();
        self.publish_state()
    }

    /// Ends the written Readies at the front that wait for no fsync, then starts an fsync for the rest if
    /// none is out: one for everything written so far, whose end is the latest write's file (a roll
    /// fsynced the segments before it).
    pub(super) fn end_written(&mut self) {
        let mut ended = None;
        while self.written.front().is_some_and(|w| w.file.is_none()) {
            let w = self.written.pop_front().expect("checked");
            ended = Some(w.number);
            self.end_persisted(w);
        }
        if let Some(number) = ended {
            self.node.on_persist_ready(number);
        }
        if self.syncing.is_some() {
            return;
        }
        let Some(file) = self.written.iter().rev().find_map(|w| w.file.clone()) else {
            return;
        };
        let upto = self.written.back().map(|w| w.number);
        let last = self
            .written
            .iter()
            .filter_map(|w| w.last_written)
            .max()
            .unwrap_or(0);
        self.syncing = Some(Syncing {
            upto,
            last,
            at: self.storage.read().sync_point(),
        });
        self.actions.push_back(Action::Sync(file));
    }

    /// The end of a written Ready now durable: where its proposals landed (leader-durable publishes are
    /// answered), and the messages that needed persistence.
    pub(super) fn end_persisted(&mut self, w: Written) {
        self.note_persisted(&w.placed);
        self.send(w.persisted);
    }

    /// Moves the durable watermark to what the fsync that returned covered.
    pub(super) fn mark_durable(&mut self, s: &Syncing) -> Result<(), Fatal> {
        self.storage
            .write()
            .mark_durable(s.last, s.at)
            .map_err(|e| Fatal::Other(e.to_string()))
    }

    /// What readers and the shell see after a Ready or an fsync: who leads and serves, the in-sync set,
    /// the lease; and the repair and damage checks.
    pub(super) fn publish_state(&mut self) -> Result<(), Fatal> {
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

    /// With the interval policy, starts the periodic fsync once its interval passed (and none is out).
    pub(super) fn sync_on_interval(&mut self) {
        let FsyncPolicy::IntervalMs(ms) = self.fsync else {
            return;
        };
        if self.syncing.is_some()
            || self.now.saturating_duration_since(self.last_sync)
                < std::time::Duration::from_millis(ms)
        {
            return;
        }
        self.last_sync = self.now;
        if let Some((file, last)) = self.unsynced.take() {
            self.syncing = Some(Syncing {
                upto: None,
                last,
                at: self.storage.read().sync_point(),
            });
            self.actions.push_back(Action::Sync(file));
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
