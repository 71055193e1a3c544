//! Topic operations: create (placing replicas within the broker's replica budget) and delete.

use crate::metadata::{Command, TopicMeta, TopicSettings};

use super::{Broker, BrokerError, NEW_PARTITION_SERVING_WAIT};

impl Broker {
    /// Creates a topic through the controller and starts its local replicas.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replicas: u32,
        settings: TopicSettings,
    ) -> Result<TopicMeta, BrokerError> {
        ferry_protocol::topic::validate_user_topic_name(name)
            .map_err(|e| BrokerError::Invalid(e.to_string()))?;
        self.create_any_topic(name, partitions, replicas, settings)
            .await
    }

    /// Creates a topic, internal names allowed: places its replicas over the active brokers, proposes it
    /// through the controller, starts its local replicas and waits (bounded) until each partition has a
    /// leader. `replicas` 0 means three copies where the cluster has three brokers.
    pub(super) async fn create_any_topic(
        &self,
        name: &str,
        partitions: u32,
        replicas: u32,
        settings: TopicSettings,
    ) -> Result<TopicMeta, BrokerError> {
        let max = ferry_protocol::limits::TOPIC_PARTITIONS_MAX;
        if partitions == 0 || partitions > max {
            return Err(BrokerError::Invalid(format!(
                "a topic needs 1 to {max} partitions, not {partitions}"
            )));
        }
        settings.validate().map_err(BrokerError::Invalid)?;
        let brokers = {
            let active = self.metadata.state.read().active_members();
            if active.is_empty() {
                vec![self.config.node_id]
            } else {
                active
            }
        };
        let replicas = if replicas == 0 {
            brokers.len().min(3) as u32
        } else {
            replicas
        };
        if replicas as usize > brokers.len() {
            return Err(BrokerError::Unsatisfiable(format!(
                "replication factor {replicas} needs {replicas} brokers; the cluster has {}",
                brokers.len()
            )));
        }
        if self.metadata.state.read().topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_owned()));
        }
        if replicas as usize > crate::metadata::REPLICATION_FACTOR_MAX {
            return Err(BrokerError::Invalid(format!(
                "replication factor {replicas} is past the limit of {}",
                crate::metadata::REPLICATION_FACTOR_MAX
            )));
        }
        let start = self.metadata.state.read().next_topic_id;
        let replica_sets = crate::metadata::place(&brokers, partitions, replicas, start);
        self.check_replica_budget(&replica_sets)?;
        let cmd = Command::CreateTopic {
            name: name.to_owned(),
            partitions,
            replica_sets,
            settings,
        };
        self.propose_command(&cmd, |m| m.topics.contains_key(name))
            .await?;
        self.reconcile().await?;
        // Answer once the new partitions have leaders, so a client may use the topic at once.
        for p in 0..partitions {
            if let Ok(r) = self.partition(name, p) {
                r.wait_settled(self.config.node_id, NEW_PARTITION_SERVING_WAIT)
                    .await;
            }
        }
        self.topic(name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.topic(name)?;
        let cmd = Command::DeleteTopic {
            name: name.to_owned(),
        };
        self.propose_command(&cmd, |m| !m.topics.contains_key(name))
            .await?;
        self.reconcile().await
    }

    /// Refuses a placement that would put more replicas on a broker than its `partitions_max` (each
    /// replica holds file descriptors, maps, a Raft group and caches: H7 in the durability audit).
    pub(super) fn check_replica_budget(&self, new_sets: &[Vec<u64>]) -> Result<(), BrokerError> {
        let max = self.config.partitions_max;
        let meta = self.metadata.state.read();
        let mut ids: Vec<u64> = new_sets.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let adding = new_sets.iter().filter(|s| s.contains(&id)).count();
            let have = meta.replicas_on(id);
            if have + adding > max {
                return Err(BrokerError::Unsatisfiable(format!(
                    "this topic would put {} replicas on broker {id}, past its limit of {max} \
                     (ferryd --partitions-max)",
                    have + adding
                )));
            }
        }
        Ok(())
    }
}
