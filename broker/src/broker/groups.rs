//! The group coordinator: consumer groups whose `__consumer_offsets` partition this broker leads. Their
//! state is loaded by replaying that partition when this broker starts leading it (the Raft term changed)
//! and kept in memory; membership changes and commits are appended to it through Raft before they count.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_protocol::batch::{self, Records};
use ferry_protocol::topic::{group_partition, GROUP_TOPIC, GROUP_TOPIC_PARTITIONS};

use super::{Broker, BrokerError};
use crate::groups::assign::Tp;
use crate::groups::limits::GROUP_NAME_LEN_MAX;
use crate::groups::state::{Answer, Beat, Group, GroupError, GroupRecord};
use crate::metadata::TopicSettings;
use crate::replica::Durability;
use crate::replica::Replica;

/// Longest a coordinator request waits for the coordinator's lease to be confirmed.
const COORDINATOR_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn group_error(e: GroupError) -> BrokerError {
    match e {
        GroupError::Invalid(why) => BrokerError::Invalid(why),
        other => BrokerError::Unsatisfiable(other.to_string()),
    }
}

fn check_group_name(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > GROUP_NAME_LEN_MAX {
        return Err(BrokerError::Invalid(format!(
            "a group name has 1 to {GROUP_NAME_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

impl Broker {
    /// Now on the broker's wall clock (ms), as group state counts it (sessions and expiry).
    fn group_now_ms(&self) -> u64 {
        u64::try_from(self.wall.now_ms()).unwrap_or(0)
    }

    /// Creates `__consumer_offsets` if it does not exist yet (the first group request does).
    async fn ensure_group_topic(&self) -> Result<(), BrokerError> {
        if self.metadata.state.read().topics.contains_key(GROUP_TOPIC) {
            return Ok(());
        }
        // Committed offsets are kept until their group is deleted: never by age, whatever the broker's
        // default retention (C1 in the durability audit: this once read as "older than -1 ms").
        let settings = TopicSettings {
            retention_ms: TopicSettings::FOREVER,
            ..TopicSettings::default()
        };
        match self
            .create_any_topic(GROUP_TOPIC, GROUP_TOPIC_PARTITIONS, 0, settings)
            .await
        {
            Ok(_) | Err(BrokerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The local replica of the group's partition if it serves here; otherwise a not-leader error naming
    /// the coordinator (from this broker's replica, or from a broker that hosts the partition).
    async fn coordinator_replica(&self, group: &str) -> Result<(u32, Replica), BrokerError> {
        check_group_name(group)?;
        self.ensure_group_topic().await?;
        let p = group_partition(group);
        if let Ok(r) = self.partition(GROUP_TOPIC, p) {
            // Answers come from state in memory: only a leader under its lease may give them (a partitioned
            // old coordinator must not hand out partitions its successor also hands out: M3).
            return match r.ready_to_read(COORDINATOR_LEASE_WAIT).await {
                Ok(()) => Ok((p, r)),
                Err(e @ crate::replica::ReplicaError::NoLease) => Err(self.replica_error(e)),
                Err(_) => Err(self
                    .replica_error(crate::replica::ReplicaError::NotLeader { leader: r.leader() })),
            };
        }
        let t = self.topic(GROUP_TOPIC)?;
        let view = self.cluster_view(&t, false).await;
        let leader = view.partitions.get(p as usize).map_or(0, |i| i.leader);
        Err(self.replica_error(crate::replica::ReplicaError::NotLeader { leader }))
    }

    /// Replays a `__consumer_offsets` partition's committed records into groups.
    fn load_groups(r: &Replica, now: u64) -> Result<HashMap<String, Group>, BrokerError> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut offset = r.log_start_offset();
        loop {
            let fetched = r.fetch(offset, 1 << 20).map_err(BrokerError::Replica)?;
            if fetched.batches.is_empty() {
                break;
            }
            for b in fetched.batches {
                let h = batch::validate(&b).map_err(|e| BrokerError::Invalid(e.to_string()))?;
                for rec in Records::new(b.clone(), h) {
                    let rec = rec.map_err(|e| BrokerError::Invalid(e.to_string()))?;
                    offset = rec.offset + 1;
                    match serde_json::from_slice::<GroupRecord>(&rec.value) {
                        Ok(gr) => {
                            let name = gr.group().to_owned();
                            groups
                                .entry(name.clone())
                                .or_insert_with(|| Group::new(&name))
                                .replay(&gr, now);
                        }
                        Err(e) => {
                            tracing::warn!(offset = rec.offset, "undecodable group record: {e}")
                        }
                    }
                }
            }
            if offset >= fetched.high_watermark {
                break;
            }
        }
        groups.retain(|_, g| !g.members.is_empty() || !g.committed.is_empty());
        Ok(groups)
    }

    /// Runs `f` on the group's state on its coordinator (this broker, or a not-leader error), loading the
    /// partition's groups first when this broker just became its leader.
    async fn with_group<T>(
        &self,
        group: &str,
        f: impl AsyncFnOnce(&Broker, &Replica, &mut Group) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let (p, replica) = self.coordinator_replica(group).await?;
        let term = replica.serving_term().ok_or(BrokerError::NoLeader)?;
        let mut coordinated = self.groups.lock().await;
        let loaded = coordinated.entry(p).or_default();
        if loaded.term != term {
            // The replay reads the whole partition: off the async threads (L7 in the audit).
            let r = replica.clone();
            let now = self.group_now_ms();
            loaded.groups = tokio::task::spawn_blocking(move || Self::load_groups(&r, now))
                .await
                .map_err(|e| BrokerError::Unsatisfiable(format!("loading groups: {e}")))??;
            loaded.term = term;
            tracing::info!(
                partition = p,
                term,
                groups = loaded.groups.len(),
                "coordinating consumer groups"
            );
        }
        let g = loaded
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(group));
        let out = f(self, &replica, g).await;
        if g.members.is_empty() && g.committed.is_empty() {
            loaded.groups.remove(group);
        }
        out
    }

    /// Appends a group record through Raft (committed on a quorum).
    async fn persist(&self, replica: &Replica, r: &GroupRecord) -> Result<(), BrokerError> {
        let b =
            crate::metadata::json_record_batch(Some(r.group().as_bytes()), r, self.wall.now_ms());
        let max = self.config.batch_bytes_max as usize;
        if b.len() > max {
            return Err(BrokerError::Invalid(format!(
                "group '{}' would need a {}-byte record, past the {max}-byte batch limit: refused",
                r.group(),
                b.len()
            )));
        }
        let h = batch::validate_records(&b).map_err(|e| BrokerError::Invalid(e.to_string()))?;
        replica
            .publish(b, h, Durability::Quorum)
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(())
    }

    /// Partition counts of `topics` (unknown topics are left out).
    fn partition_counts(&self, topics: impl IntoIterator<Item = String>) -> BTreeMap<String, u32> {
        let meta = self.metadata.state.read();
        topics
            .into_iter()
            .filter_map(|t| meta.topics.get(&t).map(|m| (t, m.partitions)))
            .collect()
    }

    /// A member's heartbeat (join, keep alive, report owned, leave).
    pub async fn group_heartbeat(&self, group: &str, beat: Beat) -> Result<Answer, BrokerError> {
        for t in &beat.topics {
            ferry_protocol::topic::validate_topic_name(t)
                .map_err(|e| BrokerError::Invalid(e.to_string()))?;
        }
        self.with_group(
            group,
            async |b: &Broker, replica: &Replica, g: &mut Group| {
                let mut topics: BTreeSet<String> = beat.topics.clone();
                topics.extend(g.members.values().flat_map(|m| m.topics.iter().cloned()));
                let partitions = b.partition_counts(topics);
                let now = self.group_now_ms();
                let expired = g.expire(now, &partitions);
                let (answer, changed) = g.heartbeat(beat, now, &partitions).map_err(group_error)?;
                if expired || changed {
                    b.persist(replica, &g.members_record()).await?;
                }
                Ok(answer)
            },
        )
        .await
    }

    /// Checks offsets to commit against their partitions: the partition exists and the offset is not past
    /// its end (the high watermark, from its leader).
    async fn check_commit_bounds(&self, offsets: &[(String, u32, u64)]) -> Result<(), BrokerError> {
        let mut ends: HashMap<String, Vec<i64>> = HashMap::new();
        for (t, p, o) in offsets {
            if !ends.contains_key(t) {
                let meta = self.topic(t)?;
                let e = self
                    .cluster_view(&meta, true)
                    .await
                    .partitions
                    .iter()
                    .map(|i| {
                        if i.leader != 0 && i.error.is_empty() {
                            i.high_watermark as i64
                        } else {
                            -1
                        }
                    })
                    .collect();
                ends.insert(t.clone(), e);
            }
            let Some(&end) = ends[t].get(*p as usize) else {
                return Err(BrokerError::UnknownPartition {
                    topic: t.clone(),
                    partition: *p,
                    partitions: ends[t].len() as u32,
                });
            };
            if end >= 0 && *o > end as u64 {
                return Err(BrokerError::Invalid(format!(
                    "offset {o} of {t}-{p} is past the partition's end {end}: commit refused"
                )));
            }
        }
        Ok(())
    }

    /// Commits offsets for a member (or, with an empty member id, an admin reset of an empty group).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), BrokerError> {
        // Before taking the group: asking leaders for their ends must not hold the coordinator.
        self.coordinator_replica(group).await?;
        self.check_commit_bounds(&offsets).await?;
        self.with_group(
            group,
            async |b: &Broker, replica: &Replica, g: &mut Group| {
                let tps: Vec<Tp> = offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
                let partitions =
                    b.partition_counts(g.members.values().flat_map(|m| m.topics.clone()));
                if g.expire(self.group_now_ms(), &partitions) {
                    b.persist(replica, &g.members_record()).await?;
                }
                g.check_commit(member_id, generation, &tps)
                    .map_err(group_error)?;
                let r = GroupRecord::Commit {
                    group: g.name.clone(),
                    offsets: offsets.clone(),
                };
                b.persist(replica, &r).await?;
                for (t, p, o) in offsets {
                    g.committed.insert((t, p), o);
                }
                Ok(())
            },
        )
        .await
    }

    /// A snapshot of a group for describing it.
    pub async fn group_snapshot(&self, group: &str) -> Result<Group, BrokerError> {
        self.with_group(
            group,
            async |b: &Broker, replica: &Replica, g: &mut Group| {
                let partitions =
                    b.partition_counts(g.members.values().flat_map(|m| m.topics.clone()));
                if g.expire(self.group_now_ms(), &partitions) {
                    b.persist(replica, &g.members_record()).await?;
                }
                Ok(g.clone())
            },
        )
        .await
    }

    /// Deletes a group without live members, with its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.with_group(
            group,
            async |b: &Broker, replica: &Replica, g: &mut Group| {
                let partitions =
                    b.partition_counts(g.members.values().flat_map(|m| m.topics.clone()));
                g.expire(self.group_now_ms(), &partitions);
                if !g.members.is_empty() {
                    return Err(group_error(GroupError::Live(g.name.clone())));
                }
                if g.committed.is_empty() {
                    return Err(BrokerError::Invalid(format!(
                        "group '{}' does not exist",
                        g.name
                    )));
                }
                let r = GroupRecord::Delete {
                    group: g.name.clone(),
                };
                b.persist(replica, &r).await?;
                g.replay(&r, 0);
                Ok(())
            },
        )
        .await
    }

    /// Groups coordinated here (loading every `__consumer_offsets` partition this broker leads).
    pub async fn list_groups(&self) -> Result<Vec<String>, BrokerError> {
        if !self.metadata.state.read().topics.contains_key(GROUP_TOPIC) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut coordinated = self.groups.lock().await;
        for p in 0..GROUP_TOPIC_PARTITIONS {
            let Ok(r) = self.partition(GROUP_TOPIC, p) else {
                continue;
            };
            let Some(term) = r.serving_term() else {
                continue;
            };
            let loaded = coordinated.entry(p).or_default();
            if loaded.term != term {
                loaded.groups = Self::load_groups(&r, self.group_now_ms())?;
                loaded.term = term;
            }
            out.extend(loaded.groups.keys().cloned());
        }
        out.sort();
        Ok(out)
    }
}
