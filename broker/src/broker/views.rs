//! The broker's views of topics: its own, and merged with other brokers' (asked through the [`Dialer`]
//! it was handed; see [`crate::views`]).
//!
//! [`Dialer`]: crate::views::Dialer

use super::Broker;
use crate::metadata::TopicMeta;
use crate::views::{PartitionView, TopicView};

impl Broker {
    /// What this broker alone knows of topic `t`: leader, in-sync set and ends of the partitions it hosts.
    pub fn topic_view(&self, t: &TopicMeta) -> TopicView {
        let partitions = (0..t.partitions)
            .map(|p| {
                let replicas = t.replica_sets[p as usize].clone();
                match self.partition(&t.name, p) {
                    Ok(r) => PartitionView {
                        partition: p,
                        leader: r.leader(),
                        // Only the leader knows who is caught up; other brokers leave it empty.
                        in_sync: r.in_sync(),
                        replicas,
                        high_watermark: r.high_watermark(),
                        log_start_offset: r.log_start_offset(),
                        error: r.trouble().unwrap_or_default(),
                    },
                    // Not hosted here: other brokers know (`cluster_view`).
                    Err(_) if !t.hosts(p, self.config.node_id) => PartitionView {
                        partition: p,
                        replicas,
                        ..Default::default()
                    },
                    Err(e) => PartitionView {
                        partition: p,
                        replicas,
                        error: e.to_string(),
                        ..Default::default()
                    },
                }
            })
            .collect();
        TopicView {
            name: t.name.clone(),
            partitions,
        }
    }

    /// [`Broker::topic_view`] with what this broker does not know filled in: the leader (and state) of
    /// partitions it does not host, from a broker that hosts each; with `from_leaders`, then every
    /// partition led elsewhere from its leader.
    pub async fn cluster_view(&self, t: &TopicMeta, from_leaders: bool) -> TopicView {
        let mut view = self.topic_view(t);
        let me = self.config.node_id;
        // Partitions not hosted here, or whose replica here is fenced (it knows no leader).
        let remote: Vec<u32> = (0..t.partitions)
            .filter(|p| {
                !t.hosts(*p, me)
                    || self
                        .partition(&t.name, *p)
                        .map_or(true, |r| r.failure().is_some())
            })
            .collect();
        if !remote.is_empty() {
            // Every other replica of each: one of them knows the leader even when the first is down.
            let mut ask: Vec<u64> = remote
                .iter()
                .flat_map(|p| t.replica_sets[*p as usize].iter().copied())
                .filter(|id| *id != me)
                .collect();
            ask.sort_unstable();
            ask.dedup();
            self.merge_from(&mut view, ask, |mine, id, their| {
                remote.contains(&mine.partition)
                    && t.hosts(mine.partition, id)
                    && their.error.is_empty()
                    && their.leader != 0
            })
            .await;
        }
        if from_leaders {
            let mut leaders: Vec<u64> = view
                .partitions
                .iter()
                .map(|p| p.leader)
                .filter(|l| *l != 0 && *l != me)
                .collect();
            leaders.sort_unstable();
            leaders.dedup();
            self.merge_from(&mut view, leaders, |mine, id, their| {
                mine.leader == id && their.leader == id
            })
            .await;
        }
        view
    }

    /// Asks each broker in `ask` once, concurrently; `take(partition, asked broker, its entry)` says
    /// whether to replace ours with theirs.
    async fn merge_from(
        &self,
        view: &mut TopicView,
        ask: Vec<u64>,
        take: impl Fn(&PartitionView, u64, &PartitionView) -> bool,
    ) {
        // Asked on their peer ports (Peer/LocalView): brokers need no client credentials there.
        let asks = ask.into_iter().filter_map(|id| {
            let addr = self.peer_address(id)?;
            let name = view.name.clone();
            Some(async move { (id, self.dialer.local_view(addr, name).await) })
        });
        for (id, theirs) in futures::future::join_all(asks).await {
            let Some(theirs) = theirs else { continue };
            for (mine, their) in view.partitions.iter_mut().zip(theirs.partitions) {
                if take(mine, id, &their) {
                    *mine = their;
                }
            }
        }
    }
}
