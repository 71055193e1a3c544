//! Handling a Raft Ready: persist entries with one fsync (group commit), send, apply what committed.

use super::*;

impl Driver {
    pub(super) async fn on_ready(&mut self) -> Result<(), Fatal> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            if ss.raft_state != StateRole::Leader {
                // Proposals not yet known committed: their entries may still commit under the new leader,
                // so their outcome is unknown, not "not leader" (L3 in the durability audit).
                self.fail_all(ReplicaError::Dropped(format!(
                    "leadership moved to broker {} before the publish committed; outcome unknown",
                    ss.leader_id
                )));
                self.lease.reset();
            }
        }
        let mut msgs = rd.take_messages();
        self.stamp_heartbeats(&mut msgs);
        if !rd.entries().is_empty() || !rd.committed_entries().is_empty() {
            self.quiet.active_tick = self.ticks;
        }
        self.transport.send(self.group, msgs);
        if !rd.snapshot().is_empty() {
            let s = rd.snapshot().clone();
            self.shared
                .storage
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
            self.shared
                .storage
                .write()
                .set_hard_state(hs)
                .map_err(|e| e.to_string())?;
        }
        self.persist_entries(rd.entries(), leading).await?;
        self.transport
            .send(self.group, rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.shared.storage.write().set_commit(commit);
        }
        let mut light_msgs = light.take_messages();
        self.stamp_heartbeats(&mut light_msgs);
        self.transport.send(self.group, light_msgs);
        self.apply_committed(light.take_committed_entries())?;
        self.node.advance_apply();
        let now = Leadership {
            term: self.node.raft.term,
            leader: self.node.raft.leader_id,
            serving: self.node.raft.state == StateRole::Leader
                && self.node.raft.apply_to_current_term(),
        };
        self.shared
            .leadership
            .send_if_modified(|l| std::mem::replace(l, now) != now);
        self.note_in_sync(now.serving);
        self.publish_lease();
        if self.repairing.is_some() {
            let committed = self.node.raft.raft_log.committed;
            let done = self
                .shared
                .storage
                .write()
                .finish_repair_if_done(committed)
                .map_err(|e| e.to_string())?;
            if done {
                tracing::info!(partition = %self.shared.name, "repaired: the log holds everything it held before the damage");
                self.repairing = None;
            }
        }
        Ok(())
    }

    /// Writes a Ready's entries and, with the per-batch policy, fsyncs them once (group commit); moves the
    /// durable watermark before anything they hold is acknowledged.
    pub(super) async fn persist_entries(
        &mut self,
        entries: &[Entry],
        leading: bool,
    ) -> Result<(), Fatal> {
        let (file, placed) = self
            .shared
            .storage
            .write()
            .append_entries(entries, leading)
            .map_err(|e| {
                if e.is_disk_full() {
                    Fatal::DiskFull(e.to_string())
                } else {
                    Fatal::Other(e.to_string())
                }
            })?;
        let last_written = entries.last().map(|e| e.index);
        let Some(file) = file else {
            return Ok(());
        };
        match self.fsync {
            // One fsync for every batch of this Ready; off the async threads.
            FsyncPolicy::PerBatch => {
                if let Err(why) = sync(file).await {
                    self.shared.storage.write().note_fsync_failed();
                    return Err(why.into());
                }
                if let Some(i) = last_written {
                    self.shared
                        .storage
                        .write()
                        .mark_durable(i)
                        .map_err(|e| e.to_string())?;
                }
            }
            FsyncPolicy::IntervalMs(_) => self.unsynced = Some((file, last_written.unwrap_or(0))),
        }
        self.note_persisted(&placed);
        Ok(())
    }

    pub(super) async fn sync_on_interval(&mut self) -> Result<(), String> {
        let FsyncPolicy::IntervalMs(ms) = self.fsync else {
            return Ok(());
        };
        if self.last_sync.elapsed() < Duration::from_millis(ms) {
            return Ok(());
        }
        self.last_sync = std::time::Instant::now();
        match self.unsynced.take() {
            Some((file, last)) => {
                if let Err(why) = sync(file).await {
                    self.shared.storage.write().note_fsync_failed();
                    return Err(why);
                }
                self.shared
                    .storage
                    .write()
                    .mark_durable(last)
                    .map_err(|e| e.to_string())
            }
            None => Ok(()),
        }
    }

    /// Records where persisted proposals landed; acknowledges those that asked only for leader durability.
    pub(super) fn note_persisted(&mut self, placed: &[Placed]) {
        let mut it = placed.iter().peekable();
        for p in self.pending.iter_mut() {
            while it.peek().is_some_and(|x| x.raft_index < p.index) {
                it.next();
            }
            if let Some(x) = it.peek().filter(|x| x.raft_index == p.index) {
                p.placed = Some(**x);
                if p.durability == Durability::Leader {
                    p.answer(Ok(Ack {
                        base_offset: x.base_offset,
                        record_count: x.record_count,
                    }));
                }
            }
        }
    }

    pub(super) fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
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
        self.shared.storage.write().set_applied(last_index);
        let hw = self
            .shared
            .storage
            .read()
            .next_offset_after(last_index)
            .map_err(|e| e.to_string())?;
        self.shared.high_watermark.send_replace(hw);
        while self.pending.front().is_some_and(|p| p.index <= last_index) {
            let mut p = self.pending.pop_front().expect("checked");
            let term = entries
                .iter()
                .find(|e| e.index == p.index)
                .map(|e| e.term)
                .or_else(|| raft::Storage::term(&self.shared.storage, p.index).ok());
            match (term == Some(p.term), p.placed) {
                (true, Some(x)) => p.answer(Ok(Ack {
                    base_offset: x.base_offset,
                    record_count: x.record_count,
                })),
                _ => p.answer(Err(ReplicaError::Dropped(
                    "the entry was replaced after a leader change".into(),
                ))),
            }
        }
        Ok(())
    }
}
