//! What the health endpoints report, each for its own Kubernetes question:
//! - the start-up phase ([`super::startup::Startup`]): the process is alive and where it is (liveness,
//!   from the first second);
//! - [`Broker::readiness`]: this broker can take client traffic (joined, metadata caught up, its replicas
//!   opened); fenced replicas are named but do not make it unready, so one damaged partition never keeps a
//!   pod out of its Service or blocks a node drain;
//! - [`Broker::cluster_health`]: leaderless and under-replicated partitions anywhere, from this broker's
//!   view (for operators and alerts, never a probe: one broker's probe must not depend on the others).

use serde::Serialize;

use super::startup::Phase;
use super::Broker;

/// A ready broker's answer: the replicas here that cannot serve (named, not blocking).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    pub down: Vec<String>,
}

/// The cluster as this broker sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterHealth {
    pub healthy: bool,
    /// The broker that answered.
    pub node_id: u64,
    /// 0: the controller has no leader this broker knows of.
    pub controller_leader: u64,
    /// Registered brokers this broker cannot reach.
    pub brokers_down: Vec<u64>,
    /// Partitions with no leader anyone reported.
    pub leaderless: Vec<PartitionName>,
    /// Partitions with fewer replicas in sync (caught up, on a broker that is up) than replicas.
    pub under_replicated: Vec<UnderReplicated>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionName {
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnderReplicated {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<u64>,
    pub in_sync: Vec<u64>,
}

impl Broker {
    /// Whether this broker can take client traffic: serving (not starting or stopping), registered with
    /// the controller, and its metadata caught up with what the controller had committed when it started.
    /// Replicas that cannot serve are named in the answer, not a reason to refuse.
    pub fn readiness(&self) -> Result<Ready, String> {
        let phase = self.startup.phase();
        if phase != Phase::Serving {
            return Err(format!("phase {}", phase.name()));
        }
        if !self.metadata_caught_up() {
            return Err(format!(
                "metadata not caught up: the controller has committed {} of {} entries",
                self.controller().high_watermark(),
                self.catch_up_target
            ));
        }
        let me = self.config.node_id;
        if !self.metadata.state.read().brokers.contains_key(&me) {
            return Err("not registered with the controller yet".into());
        }
        Ok(Ready {
            down: self.troubles(),
        })
    }

    /// Local replicas that cannot serve, and why: the ones that failed to open, then the fenced ones.
    pub fn troubles(&self) -> Vec<String> {
        let mut down: Vec<String> = self
            .unopenable
            .read()
            .iter()
            .map(|((t, p), why)| format!("partition {t}-{p} cannot open: {why}"))
            .collect();
        for ((t, p), r) in self.partitions.read().iter() {
            if let Some(why) = r.replica.failure() {
                down.push(format!("partition {t}-{p} is fenced: {why}"));
            }
        }
        down.sort();
        down
    }

    /// Leaderless and under-replicated partitions of every topic, asking the brokers that host or lead
    /// what this one does not know; brokers it cannot reach; the controller's leader.
    pub async fn cluster_health(&self) -> ClusterHealth {
        let metadata = self.metadata();
        let me = self.config.node_id;
        let mut h = ClusterHealth {
            node_id: me,
            controller_leader: self.controller().leader(),
            ..Default::default()
        };
        h.brokers_down = metadata
            .brokers
            .keys()
            .copied()
            .filter(|id| *id != me && !self.is_up(*id))
            .collect();
        for t in metadata.topics.values() {
            let view = self.cluster_view(t, true).await;
            for mut p in view.partitions {
                // The leader counts a caught-up replica in sync even when its broker is gone (an idle
                // partition's follower stays caught up): a replica on a broker down is not.
                p.in_sync.retain(|id| !h.brokers_down.contains(id));
                if p.leader == 0 {
                    h.leaderless.push(PartitionName {
                        topic: t.name.clone(),
                        partition: p.partition,
                    });
                } else if p.in_sync.len() < p.replicas.len() {
                    h.under_replicated.push(UnderReplicated {
                        topic: t.name.clone(),
                        partition: p.partition,
                        replicas: p.replicas,
                        in_sync: p.in_sync,
                    });
                }
            }
        }
        h.healthy = h.controller_leader != 0
            && h.brokers_down.is_empty()
            && h.leaderless.is_empty()
            && h.under_replicated.is_empty();
        h
    }
}
