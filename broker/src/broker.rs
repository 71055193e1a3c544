//! The broker core: the controller replica and metadata, the local partition replicas it follows from the
//! metadata, and the operations servers call. No gRPC here: `server` maps requests onto this.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::consensus::ReplicaStorage;
use crate::metadata::{
    Command, Metadata, MetadataMachine, TopicMeta, TopicSettings, CONTROLLER_GROUP,
};
use crate::replica::handle::Durability;
use crate::replica::{self, Ack, NoPeers, Replica, ReplicaError};
use crate::storage::{Disk, LogConfig, StorageError};

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("topic '{topic}' has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsatisfiable(String),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Longest a topic creation waits for its partitions to serve before it answers anyway.
const NEW_PARTITION_SERVING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a starting broker waits for its controller to re-commit its log.
const CONTROLLER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(15);

/// Starts and stops local partitions whenever the controller applies new metadata.
async fn follow_metadata(
    broker: std::sync::Weak<Broker>,
    mut hw: tokio::sync::watch::Receiver<u64>,
) {
    while hw.changed().await.is_ok() {
        let Some(b) = broker.upgrade() else { return };
        if let Err(e) = b.reconcile().await {
            tracing::error!("applying metadata failed: {e}");
        }
    }
}

struct Running {
    replica: Replica,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    dir: PathBuf,
}

/// A broker.
pub struct Broker {
    pub config: BrokerConfig,
    disk: Arc<dyn Disk>,
    metadata: MetadataMachine,
    controller: Replica,
    controller_task: parking_lot::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    partitions: RwLock<HashMap<(String, u32), Running>>,
    reconcile: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node_id", &self.config.node_id)
            .finish()
    }
}

impl Broker {
    /// Opens the data dir, recovers the controller and every local partition, and starts their replicas.
    pub async fn start(
        config: BrokerConfig,
        disk: Arc<dyn Disk>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let node = config.node_id;
        let ctl_dir = config.data_dir.join("__cluster");
        let (storage, _) =
            ReplicaStorage::open(disk.clone(), &ctl_dir, LogConfig::default(), &[node])?;
        let metadata = MetadataMachine::default();
        // Replay the commands up to the persisted commit; Raft delivers the rest as they commit.
        {
            let core = storage.read();
            let commit = core.state().hard_state.commit;
            let mut next = core.log.first_raft_index();
            while next <= commit {
                let batches = core.log.batches_by_raft_index(next, commit + 1, 1 << 20)?;
                let Some((last, _)) = batches.last() else {
                    break;
                };
                next = last.raft_index + 1;
                for (h, b) in batches {
                    metadata.apply_batch(h.raft_index, &b);
                }
            }
        }
        let ctl_cancel = cancel.child_token();
        let (controller, ctl_task) = replica::spawn(
            CONTROLLER_GROUP,
            "__cluster".into(),
            storage,
            config.replica,
            Arc::new(NoPeers),
            Some(Box::new(metadata.clone())),
            ctl_cancel.clone(),
        )?;
        let broker = Arc::new(Broker {
            config,
            disk,
            metadata,
            controller,
            controller_task: parking_lot::Mutex::new(Some((ctl_cancel, ctl_task))),
            partitions: RwLock::new(HashMap::new()),
            reconcile: tokio::sync::Mutex::new(()),
            cancel,
        });
        // Commands past the persisted commit are applied once the controller commits them again: wait for
        // that (bounded) so the partitions exist before clients are served.
        let log_end = broker.controller.log_end_offset();
        let mut hw = broker.controller.watch_high_watermark();
        let caught_up = tokio::time::timeout(CONTROLLER_CATCH_UP, hw.wait_for(|hw| *hw >= log_end))
            .await
            .is_ok_and(|r| r.is_ok());
        if !caught_up {
            tracing::warn!("controller has not caught up within {CONTROLLER_CATCH_UP:?}; serving what is known");
        }
        broker.reconcile().await?;
        broker.remove_orphan_dirs();
        tokio::spawn(follow_metadata(Arc::downgrade(&broker), hw));
        Ok(broker)
    }

    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }

    /// The current metadata.
    pub fn metadata(&self) -> Metadata {
        self.metadata.state.read().clone()
    }

    /// The controller replica.
    pub fn controller(&self) -> &Replica {
        &self.controller
    }

    fn log_config(&self, s: &TopicSettings) -> LogConfig {
        let mut c = self.config.log;
        if s.segment_bytes > 0 {
            c.limits.segment_bytes = s.segment_bytes.min(u64::from(u32::MAX / 2)) as u32;
        }
        if s.segment_ms > 0 {
            c.segment_ms = s.segment_ms;
        }
        if s.retention_bytes > 0 {
            c.retention_bytes = s.retention_bytes;
        }
        if s.retention_ms > 0 {
            c.retention_ms = s.retention_ms;
        }
        c
    }

    /// Starts replicas of partitions the metadata places here and stops those it no longer lists.
    pub async fn reconcile(&self) -> Result<(), BrokerError> {
        let _guard = self.reconcile.lock().await;
        let meta = self.metadata();
        let node = self.config.node_id;
        // Stop and delete what is gone.
        let gone: Vec<(String, u32)> = {
            let parts = self.partitions.read();
            parts
                .keys()
                .filter(|(t, p)| meta.topics.get(t).is_none_or(|m| *p >= m.partitions))
                .cloned()
                .collect()
        };
        for key in gone {
            let running = self.partitions.write().remove(&key);
            if let Some(r) = running {
                r.cancel.cancel();
                let _ = r.task.await;
                if let Some(topic_dir) = r.dir.parent() {
                    let _ = self.disk.remove_dir_all(topic_dir);
                }
            }
        }
        for t in meta.topics.values() {
            for p in 0..t.partitions {
                let key = (t.name.clone(), p);
                if self.partitions.read().contains_key(&key)
                    || !t.replica_sets[p as usize].contains(&node)
                {
                    continue;
                }
                let running = self.open_partition(t, p)?;
                self.partitions.write().insert(key, running);
            }
        }
        Ok(())
    }

    fn open_partition(&self, t: &TopicMeta, p: u32) -> Result<Running, BrokerError> {
        let dir = self.topics_dir().join(t.dir_name()).join(p.to_string());
        let voters = t.replica_sets[p as usize].clone();
        let (storage, recovery) = ReplicaStorage::open(
            self.disk.clone(),
            &dir,
            self.log_config(&t.settings),
            &voters,
        )?;
        if let Some(torn) = &recovery.torn_tail {
            tracing::warn!(topic = %t.name, partition = p, path = %torn.path.display(), position = torn.position,
                cut_bytes = torn.cut_bytes, "truncated a torn tail");
        }
        let cancel = self.cancel.child_token();
        let (replica, task) = replica::spawn(
            t.group_id(p),
            format!("{}-{p}", t.name),
            storage,
            self.config.replica,
            Arc::new(NoPeers),
            None,
            cancel.clone(),
        )?;
        Ok(Running {
            replica,
            cancel,
            task,
            dir,
        })
    }

    fn remove_orphan_dirs(&self) {
        let meta = self.metadata();
        let known: Vec<String> = meta.topics.values().map(TopicMeta::dir_name).collect();
        if let Ok(names) = self.disk.list(&self.topics_dir()) {
            for n in names.into_iter().filter(|n| !known.contains(n)) {
                tracing::info!(dir = %n, "removing the data of a deleted topic");
                let _ = self.disk.remove_dir_all(&self.topics_dir().join(n));
            }
        }
    }

    /// The replica of a partition, checking that topic and partition exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Replica, BrokerError> {
        if let Some(r) = self.partitions.read().get(&(topic.to_owned(), partition)) {
            return Ok(r.replica.clone());
        }
        let meta = self.metadata.state.read();
        let t = meta
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_owned()))?;
        Err(BrokerError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: t.partitions,
        })
    }

    /// A topic's metadata.
    pub fn topic(&self, name: &str) -> Result<TopicMeta, BrokerError> {
        self.metadata
            .state
            .read()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    async fn propose_command(&self, cmd: &Command) -> Result<Ack, BrokerError> {
        let data = cmd.to_batch();
        let h = ferry_protocol::batch::validate(&data)
            .map_err(|e| BrokerError::Invalid(e.to_string()))?;
        Ok(self.controller.publish(data, h, Durability::Quorum).await?)
    }

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
        let max = ferry_protocol::limits::TOPIC_PARTITIONS_MAX;
        if partitions == 0 || partitions > max {
            return Err(BrokerError::Invalid(format!(
                "a topic needs 1 to {max} partitions, not {partitions}"
            )));
        }
        let brokers = [self.config.node_id];
        let replicas = replicas.max(1);
        if replicas as usize > brokers.len() {
            return Err(BrokerError::Unsatisfiable(format!(
                "replication factor {replicas} needs {replicas} brokers; the cluster has {}",
                brokers.len()
            )));
        }
        if self.metadata.state.read().topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_owned()));
        }
        let replica_sets = (0..partitions).map(|_| brokers.to_vec()).collect();
        self.propose_command(&Command::CreateTopic {
            name: name.to_owned(),
            partitions,
            replica_sets,
            settings,
        })
        .await?;
        self.reconcile().await?;
        // Answer once the new partitions serve, so a client may use the topic at once.
        for p in 0..partitions {
            if let Ok(r) = self.partition(name, p) {
                r.wait_serving(NEW_PARTITION_SERVING_WAIT).await;
            }
        }
        self.topic(name)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.topic(name)?;
        self.propose_command(&Command::DeleteTopic {
            name: name.to_owned(),
        })
        .await?;
        self.reconcile().await
    }

    /// Publishes one validated batch to a partition.
    pub async fn publish(
        &self,
        topic: &str,
        partition: u32,
        data: Bytes,
        durability: Durability,
    ) -> Result<Ack, BrokerError> {
        let h = ferry_protocol::batch::validate_records(&data)
            .map_err(|e| BrokerError::Invalid(format!("invalid batch: {e}")))?;
        let replica = self.partition(topic, partition)?;
        Ok(replica.publish(data, h, durability).await?)
    }

    /// Whether the broker can serve: the controller and every local partition have a leader and none is fenced.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.controller.is_serving() {
            return Err("controller has not caught up yet".into());
        }
        for ((t, p), r) in self.partitions.read().iter() {
            if let Some(why) = r.replica.failure() {
                return Err(format!("partition {t}-{p} is fenced: {why}"));
            }
            if !r.replica.is_serving() {
                return Err(format!("partition {t}-{p} has not caught up yet"));
            }
        }
        Ok(())
    }

    /// Replicas running here, by (topic, partition).
    pub fn local_partitions(&self) -> Vec<((String, u32), Replica)> {
        self.partitions
            .read()
            .iter()
            .map(|(k, r)| (k.clone(), r.replica.clone()))
            .collect()
    }

    /// Stops every replica cleanly (fsync, clean checkpoints), then the controller.
    pub async fn shutdown(&self) {
        let running: Vec<Running> = self.partitions.write().drain().map(|(_, r)| r).collect();
        for r in &running {
            r.cancel.cancel();
        }
        for r in running {
            let _ = r.task.await;
        }
        let ctl = self.controller_task.lock().take();
        if let Some((cancel, task)) = ctl {
            cancel.cancel();
            let _ = task.await;
        }
    }
}
