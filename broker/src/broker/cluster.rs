//! Cluster operations: brokers joining and leaving, moving and handing off partition leadership.

use crate::metadata::Command;
use crate::replica::Replica;

use super::{Broker, BrokerError, LEADER_TRANSFER_WAIT};

impl Broker {
    /// Adds broker `id`, reachable by peers at `peer_address`, to the cluster: it joins the controller once
    /// it is up and caught up, then partitions move to it. Answers once the controller recorded it.
    pub async fn add_broker(&self, id: u64, peer_address: &str) -> Result<(), BrokerError> {
        if self.network.is_none() {
            return Err(BrokerError::Unsatisfiable(
                "this broker runs without --peers: brokers can only be added to a cluster started with --peers"
                    .into(),
            ));
        }
        if id == 0 {
            return Err(BrokerError::Invalid("broker ids start at 1".into()));
        }
        let valid = peer_address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            return Err(BrokerError::Invalid(format!(
                "peer address '{peer_address}' is not HOST:PORT"
            )));
        }
        if let Some(m) = self.metadata.state.read().members.get(&id) {
            if m.peer_address != peer_address {
                return Err(BrokerError::Invalid(format!(
                    "broker {id} is already a member, at {}",
                    m.peer_address
                )));
            }
        }
        let cmd = Command::AddBroker {
            id,
            peer_address: peer_address.to_owned(),
        };
        self.propose_command(&cmd, |m| {
            m.members
                .get(&id)
                .is_some_and(|m| !m.leaving && m.peer_address == peer_address)
        })
        .await
    }

    /// Removes broker `id`: its replicas move to the other brokers, then it leaves the controller and the
    /// metadata. Answers once the removal is recorded (the moves follow; `ferry cluster status` shows them).
    pub async fn remove_broker(&self, id: u64) -> Result<(), BrokerError> {
        let (active, max_rf) = {
            let m = self.metadata.state.read();
            if !m.members.contains_key(&id) {
                return Err(BrokerError::Invalid(format!(
                    "broker {id} is not a member of the cluster"
                )));
            }
            let max_rf = m
                .topics
                .values()
                .flat_map(|t| t.replica_sets.iter().map(Vec::len))
                .max()
                .unwrap_or(0);
            (m.active_members(), max_rf)
        };
        let remaining = active.iter().filter(|a| **a != id).count();
        if remaining == 0 || remaining < max_rf {
            return Err(BrokerError::Unsatisfiable(format!(
                "removing broker {id} would leave {remaining} brokers, fewer than the largest replication factor ({max_rf})"
            )));
        }
        let cmd = Command::RemoveBroker { id };
        self.propose_command(&cmd, |m| m.members.get(&id).is_none_or(|m| m.leaving))
            .await
    }

    /// Moves the leadership of a partition this broker leads to replica `to`; answers the leader after.
    pub async fn transfer_leader(
        &self,
        topic: &str,
        partition: u32,
        to: u64,
    ) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        let replicas =
            t.replica_sets
                .get(partition as usize)
                .ok_or(BrokerError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions: t.partitions,
                })?;
        if !replicas.contains(&to) {
            return Err(BrokerError::Invalid(format!(
                "broker {to} is not a replica of {topic}-{partition} (replicas: {replicas:?})"
            )));
        }
        let replica = self.partition(topic, partition)?;
        replica
            .transfer_leader(to, self.config.node_id, LEADER_TRANSFER_WAIT)
            .await
            .map_err(|e| self.replica_error(e))
    }

    /// Hands every leadership this broker holds to a caught-up follower (graceful shutdown), waiting at most
    /// `wait` in all. Groups without a caught-up follower keep their leader until it stops.
    pub async fn hand_off_leadership(&self, wait: std::time::Duration) {
        let me = self.config.node_id;
        let mut replicas: Vec<Replica> = self
            .local_partitions()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        replicas.push(self.controller());
        let moves = replicas
            .into_iter()
            .filter(|r| r.leader() == me)
            .filter_map(|r| {
                let to = r.in_sync().into_iter().find(|id| *id != me)?;
                Some(async move { r.transfer_leader(to, me, wait).await })
            });
        let moved = futures::future::join_all(moves).await;
        let done = moved
            .iter()
            .filter(|m| m.as_ref().is_ok_and(|l| *l != me))
            .count();
        tracing::info!(handed_off = done, of = moved.len(), "leadership hand-off");
    }
}
