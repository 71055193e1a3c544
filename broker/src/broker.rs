//! The broker: the controller replica and metadata, the local partition replicas it follows from the
//! metadata, and the operations servers call. No gRPC here: `server` maps requests onto this, and other
//! brokers are asked through the `Dialer` the broker is handed (`crate::views`).
//!
//! This file holds the [`Broker`] and its core operations; the files under `broker/` add to it, each one
//! concern, and none is imported from here (they sit above it): `start` (opening and starting),
//! `topics` (create and delete), `cluster` (brokers joining and leaving, leadership moves), `restart`
//! (the controller's restart and repair), `tasks` (background loops: following metadata,
//! registering, balancing leaders, scrubbing, supervision), `groups` (the group coordinator, over
//! `coordinated`, its in-memory state), `views` (topic views, own and merged) and `health` (readiness
//! and cluster health); `startup` (the start-up phase, shared with the HTTP server) sits below it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod acls;
mod cluster;
mod coordinated;
mod groups;
pub mod health;
mod identify;
mod restart;
mod start;
pub mod startup;
mod tasks;
mod topics;
mod views;

use crate::config::BrokerConfig;
use crate::identity::{Identity, IdentityError};
use crate::metadata::{Command, Metadata, MetadataMachine, TopicMeta, TopicSettings};
use crate::peer::{PeerNetwork, Router};
use crate::replica::raft_log::ReplicaStorage;
use crate::replica::Durability;
use crate::replica::{self, Ack, Clock, Replica, ReplicaError, Transport, Wiring};
use crate::storage::{Disk, LogConfig, StorageError, WallClock};
use crate::views::{Dialer, ForwardError};

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
    #[error("not the leader of this partition; the leader is broker {leader} at {address}")]
    NotLeader { leader: u64, address: String },
    #[error("no leader is known for this partition yet; retry")]
    NoLeader,
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A broker whose data dir is new found that the cluster knows its node id (the reason and procedure).
    #[error("{0}")]
    Refused(String),
}

/// Longest a leadership transfer may take before the request answers with whoever leads then.
const LEADER_TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a topic creation waits for its partitions to serve before it answers anyway.
const NEW_PARTITION_SERVING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a starting broker waits for its controller to re-commit its log.
const CONTROLLER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a controller command may take, forwarding and retries included.
const CONTROLLER_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Pause between two attempts at a controller command while no leader is known (ms).
const CONTROLLER_RETRY_MS: u64 = 50;

/// The controller's log keeps every command: metadata is rebuilt by replaying it from the start, so it
/// must never be deleted by retention (it is small: one record per topic change).
fn controller_log_config() -> LogConfig {
    LogConfig {
        retention_bytes: 0,
        retention_ms: 0,
        segment_ms: 0,
        ..LogConfig::default()
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
    /// Wall-clock time handed to the cores (roll and retention by age, group sessions, record stamps).
    wall: Arc<dyn WallClock>,
    metadata: MetadataMachine,
    /// The controller replica (replaced when it is restarted or repaired: `restart`).
    controller: parking_lot::RwLock<Replica>,
    controller_task: parking_lot::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    router: Arc<Router>,
    transport: Arc<dyn Transport>,
    network: Option<Arc<PeerNetwork>>,
    clock: Clock,
    partitions: RwLock<HashMap<(String, u32), Running>>,
    /// Serializes reconciliation; true once shutdown began.
    reconcile: tokio::sync::Mutex<bool>,
    /// Consumer groups this broker coordinates.
    groups: coordinated::Coordinated,
    /// Local replicas that failed to open, and why (they stay down until an operator repairs them).
    unopenable: RwLock<HashMap<(String, u32), String>>,
    /// Producer ids this broker may still hand out (allocated from the controller in blocks).
    producer_ids: tokio::sync::Mutex<std::ops::Range<u64>>,
    /// The byte budget of publishes in flight, in KiB permits (`BrokerConfig::inflight_bytes_max`).
    inflight: Arc<tokio::sync::Semaphore>,
    /// How this broker asks other brokers (their views of topics, forwarded controller commands).
    dialer: Arc<dyn Dialer>,
    /// The start-up phase, shared with the HTTP server that answers before the broker exists.
    startup: startup::Startup,
    /// The controller's log end at start: the metadata is caught up once the controller commits it.
    catch_up_target: u64,
    /// The data dir's identity (node id, incarnation, cluster id), shared with the peer network and service.
    identity: Arc<Identity>,
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
    /// Now on the broker's wall clock (ms since the Unix epoch).
    pub fn now_ms(&self) -> i64 {
        self.wall.now_ms()
    }

    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }

    /// The current metadata.
    pub fn metadata(&self) -> Metadata {
        self.metadata.state.read().clone()
    }

    /// The controller replica (a handle: it may be replaced by a restart).
    pub fn controller(&self) -> Replica {
        self.controller.read().clone()
    }

    /// Where incoming Raft messages are delivered.
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Opens a link to a peer that wrote to this broker before the metadata named it.
    pub fn learn_peer(&self, id: u64, address: &str) {
        if let Some(n) = &self.network {
            n.learn(id, address);
        }
    }

    /// Whether broker `id` is reachable from here (this broker always is).
    pub fn is_up(&self, id: u64) -> bool {
        id == self.config.node_id || self.network.as_ref().is_some_and(|n| n.is_connected(id))
    }

    /// The client address of broker `id` on the named listener `listener` (the main one for `None`, or
    /// when that broker has no listener of that name: a rolling change of the listeners), if known.
    pub fn client_address(&self, id: u64, listener: Option<&str>) -> Option<String> {
        let own = |name: &str| {
            (id == self.config.node_id)
                .then(|| self.config.listener_advertise.get(name).cloned())
                .flatten()
        };
        let meta = self.metadata.state.read();
        let named = listener.and_then(|name| {
            meta.listeners
                .get(&id)
                .and_then(|l| l.get(name).cloned())
                .or_else(|| own(name))
        });
        named.or_else(|| meta.brokers.get(&id).cloned())
    }

    /// A replica error for clients: a not-leader error names the leader's client address.
    pub fn replica_error(&self, e: ReplicaError) -> BrokerError {
        match e {
            ReplicaError::NotLeader { leader: 0 } => BrokerError::NoLeader,
            ReplicaError::NotLeader { leader } => {
                let address = self.metadata.state.read().brokers.get(&leader).cloned();
                match address {
                    Some(address) => BrokerError::NotLeader { leader, address },
                    None => BrokerError::NoLeader,
                }
            }
            other => BrokerError::Replica(other),
        }
    }

    fn log_config(&self, s: &TopicSettings) -> LogConfig {
        let mut c = self.config.log;
        if s.segment_bytes > 0 {
            c.limits.segment_bytes =
                u32::try_from(s.segment_bytes.min(crate::metadata::SEGMENT_BYTES_MAX))
                    .unwrap_or(u32::MAX / 2);
        }
        if s.segment_ms > 0 {
            c.segment_ms = s.segment_ms;
        }
        // FOREVER is the log's 0 ("never by this measure"), whatever the broker default.
        match s.retention_bytes {
            0 => {}
            TopicSettings::FOREVER => c.retention_bytes = 0,
            n => c.retention_bytes = n,
        }
        match s.retention_ms {
            0 => {}
            TopicSettings::FOREVER => c.retention_ms = 0,
            n => c.retention_ms = n,
        }
        c
    }

    /// Starts replicas of partitions the metadata places here and stops those it no longer lists.
    pub async fn reconcile(&self) -> Result<(), BrokerError> {
        let guard = self.reconcile.lock().await;
        if *guard {
            // Shutting down: never start a partition again (two replicas would share one directory).
            return Ok(());
        }
        let meta = self.metadata();
        let node = self.config.node_id;
        // Stop and delete what is gone.
        if let Some(n) = &self.network {
            let peers = meta
                .members
                .iter()
                .map(|(id, m)| (*id, m.peer_address.clone()))
                .collect();
            n.set_peers(&peers);
        }
        let gone: Vec<(String, u32)> = {
            let parts = self.partitions.read();
            parts
                .keys()
                .filter(|(t, p)| {
                    meta.topics
                        .get(t)
                        .is_none_or(|m| *p >= m.partitions || !m.hosts(*p, node))
                })
                .cloned()
                .collect()
        };
        // Stop every replica that goes, then remove the data of topics that are gone entirely (a topic's
        // partitions share its directory).
        let mut stopped = Vec::new();
        for key in gone {
            let running = self.partitions.write().remove(&key);
            if let Some(r) = running {
                self.router.unregister(r.replica.group());
                r.cancel.cancel();
                let _ = r.task.await;
                stopped.push(r.dir);
            }
        }
        for dir in stopped {
            // A replica moved away: its data goes (the topic's directory stays for the others).
            tracing::info!(dir = %dir.display(), "replica stopped; removing its data");
            let _ = self.disk.remove_dir_all(&dir);
            if let Some(topic_dir) = dir.parent() {
                let name = topic_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if !meta.topics.values().any(|t| t.dir_name() == name) {
                    let _ = self.disk.remove_dir_all(topic_dir);
                }
            }
        }
        for t in meta.topics.values() {
            for p in 0..t.partitions {
                let key = (t.name.clone(), p);
                if self.partitions.read().contains_key(&key)
                    || !t.hosts(p, node)
                    || self.unopenable.read().contains_key(&key)
                {
                    continue;
                }
                // A replica that cannot open (damage recovery cannot cut safely) stays down: it neither
                // votes nor serves, the others carry the partition, and the broker serves the rest.
                match self.open_partition(t, p) {
                    Ok(running) => {
                        self.router.register(t.group_id(p), running.replica.inbox());
                        self.partitions.write().insert(key, running);
                    }
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = p, "replica cannot open, left down: {e}");
                        self.unopenable.write().insert(key, e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    fn open_partition(&self, t: &TopicMeta, p: u32) -> Result<Running, BrokerError> {
        let dir = self.topics_dir().join(t.dir_name()).join(p.to_string());
        // A new replica starts from the partition's first configuration and replays its changes from the
        // log (or receives the current one in a snapshot).
        let voters = t
            .initial_replica_sets
            .get(p as usize)
            .unwrap_or(&t.replica_sets[p as usize])
            .clone();
        let (storage, recovery) = ReplicaStorage::open(
            self.disk.clone(),
            self.wall.clone(),
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
            None,
            Wiring {
                transport: self.transport.clone(),
                clock: self.clock.clone(),
                cancel: cancel.clone(),
                liveness: self.router.liveness(),
            },
        )?;
        Ok(Running {
            replica,
            cancel,
            task,
            dir,
        })
    }

    /// The replica of a partition, checking that topic and partition exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Replica, BrokerError> {
        if let Some(r) = self.partitions.read().get(&(topic.to_owned(), partition)) {
            return Ok(r.replica.clone());
        }
        if let Some(why) = self.unopenable.read().get(&(topic.to_owned(), partition)) {
            return Err(BrokerError::Unsatisfiable(format!(
                "the replica of {topic}-{partition} on this broker cannot open: {why}"
            )));
        }
        let meta = self.metadata.state.read();
        let t = meta
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_owned()))?;
        if partition < t.partitions {
            // It exists: its replica here is being restarted or repaired, or is not opened yet, or this
            // broker does not host it. Retriable, never "does not exist".
            return Err(BrokerError::NoLeader);
        }
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

    /// Proposes a command batch on this broker's controller replica, which must lead (forwarded commands
    /// land here). Answers once it is committed and applied.
    pub async fn propose_local(&self, batch: Bytes) -> Result<u64, BrokerError> {
        let h = ferry_protocol::batch::validate_records(&batch)
            .map_err(|e| BrokerError::Invalid(format!("invalid controller command batch: {e}")))?;
        // Every command is checked here (a forwarded one too, from the peer port) and again when applied.
        for r in ferry_protocol::batch::Records::new(batch.clone(), h) {
            let cmd = r
                .ok()
                .and_then(|r| serde_json::from_slice::<Command>(&r.value).ok())
                .ok_or_else(|| BrokerError::Invalid("not a controller command".into()))?;
            cmd.check(&self.metadata.state.read()).map_err(|why| {
                BrokerError::Invalid(format!("controller command refused: {why}"))
            })?;
        }
        let ack = self
            .controller()
            .publish(batch, h, Durability::Quorum)
            .await
            .map_err(|e| self.replica_error(e))?;
        Ok(ack.base_offset)
    }

    /// Sends a command batch to the controller leader's peer port.
    async fn forward(&self, leader: u64, batch: Bytes) -> Result<u64, BrokerError> {
        let addr = self.peer_address(leader).ok_or(BrokerError::NoLeader)?;
        match self
            .dialer
            .forward(addr, batch, self.cluster_id_or_empty())
            .await
        {
            Ok(offset) => Ok(offset),
            Err(ForwardError::Unreachable(_)) => Err(BrokerError::NoLeader),
            Err(ForwardError::Refused(why)) => Err(BrokerError::Invalid(why)),
        }
    }

    /// Runs a controller command wherever the controller leader is, retrying through leader changes, then
    /// waits until this broker's metadata shows `applied`.
    async fn propose_command(
        &self,
        cmd: &Command,
        applied: impl Fn(&Metadata) -> bool,
    ) -> Result<(), BrokerError> {
        self.propose_command_at(cmd, applied).await.map(|_| ())
    }

    /// [`Broker::propose_command`], answering the controller log offset the command landed at.
    async fn propose_command_at(
        &self,
        cmd: &Command,
        applied: impl Fn(&Metadata) -> bool,
    ) -> Result<u64, BrokerError> {
        let batch = cmd.to_batch(self.wall.now_ms());
        let offset;
        let deadline = tokio::time::Instant::now() + CONTROLLER_COMMAND_TIMEOUT;
        loop {
            let leader = self.controller().leader();
            let attempt = if leader == self.config.node_id {
                self.propose_local(batch.clone()).await
            } else if leader != 0 {
                self.forward(leader, batch.clone()).await
            } else {
                Err(BrokerError::NoLeader)
            };
            match attempt {
                Ok(o) => {
                    offset = o;
                    break;
                }
                Err(
                    BrokerError::NoLeader
                    | BrokerError::NotLeader { .. }
                    | BrokerError::Replica(ReplicaError::Dropped(_)),
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(CONTROLLER_RETRY_MS)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let mut hw = self.controller().watch_high_watermark();
        let done = tokio::time::timeout_at(
            deadline,
            hw.wait_for(|_| applied(&self.metadata.state.read())),
        )
        .await;
        match done {
            Ok(Ok(_)) => Ok(offset),
            _ => Err(BrokerError::NoLeader),
        }
    }

    /// A new idempotent producer id, unique for the life of the cluster: taken from a block this broker
    /// allocated through the controller (`offset × PRODUCER_ID_BLOCK + k` for the block record's offset in
    /// the controller log, which is never truncated), so a thousand calls cost one controller record.
    pub async fn init_producer(&self) -> Result<i64, BrokerError> {
        use crate::metadata::PRODUCER_ID_BLOCK;
        let mut block = self.producer_ids.lock().await;
        if block.start >= block.end {
            let cmd = Command::AllocateProducerIds {
                count: PRODUCER_ID_BLOCK,
            };
            let offset = self.propose_command_at(&cmd, |_| true).await?;
            let start = offset
                .checked_mul(u64::from(PRODUCER_ID_BLOCK))
                .filter(|s| *s <= i64::MAX as u64 - u64::from(PRODUCER_ID_BLOCK))
                .ok_or_else(|| BrokerError::Unsatisfiable("producer ids exhausted".into()))?;
            *block = start..start + u64::from(PRODUCER_ID_BLOCK);
        }
        let id = block.start;
        block.start += 1;
        i64::try_from(id).map_err(|_| BrokerError::Unsatisfiable("producer ids exhausted".into()))
    }

    /// Takes `bytes` of the broker's in-flight publish budget, waiting at most `wait` for others to finish
    /// (backpressure instead of unbounded queues: M7 in the durability audit). The budget is held until
    /// the returned permit drops.
    pub async fn admit_publish(
        &self,
        bytes: usize,
        wait: std::time::Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, BrokerError> {
        let total = u32::try_from(self.config.inflight_bytes_max / 1024).unwrap_or(u32::MAX);
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, total.max(1));
        match tokio::time::timeout(wait, self.inflight.clone().acquire_many_owned(kib)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(BrokerError::Busy(format!(
                "{} MiB of publishes are in flight on this broker and none finished within {} ms; retry",
                self.config.inflight_bytes_max >> 20,
                wait.as_millis()
            ))),
        }
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
        replica
            .publish(data, h, durability)
            .await
            .map_err(|e| self.replica_error(e))
    }

    /// Repairs the local replica of a partition whose log is damaged from Raft index `from`: stops it, cuts
    /// its log there (recording how far it reached), and starts it again as a repairing replica that takes
    /// the missing entries from the leader and does not vote until it has them (`replica::raft_log::repair`).
    pub async fn repair_partition(
        &self,
        topic: &str,
        p: u32,
        from: u64,
    ) -> Result<(), BrokerError> {
        let guard = self.reconcile.lock().await;
        if *guard {
            return Ok(());
        }
        let key = (topic.to_owned(), p);
        let Some(running) = self.partitions.write().remove(&key) else {
            return Ok(());
        };
        self.router.unregister(running.replica.group());
        running.cancel.cancel();
        let _ = running.task.await;
        let t = self.topic(topic)?;
        let result = (|| {
            let voters = t.initial_replica_sets[p as usize].clone();
            let (storage, _) = ReplicaStorage::open(
                self.disk.clone(),
                self.wall.clone(),
                &running.dir,
                self.log_config(&t.settings),
                &voters,
            )?;
            let until = storage.write().cut_for_repair(from)?;
            storage.write().close()?;
            Ok::<u64, BrokerError>(until)
        })();
        let reopened = result.and_then(|until| {
            tracing::warn!(%topic, partition = p, from, until, "damaged log cut; repairing from the leader");
            self.open_partition(&t, p)
        });
        match reopened {
            Ok(r) => {
                self.router.register(t.group_id(p), r.replica.inbox());
                self.partitions.write().insert(key, r);
                Ok(())
            }
            // A cut that failed leaves the damaged log as it was: never reopened as if intact (L9), it stays
            // down, named by /readyz and describe, until an operator looks.
            Err(e) => {
                tracing::error!(%topic, partition = p, "repair failed; the replica stays down: {e}");
                self.unopenable
                    .write()
                    .insert(key, format!("repair failed: {e}"));
                Err(e)
            }
        }
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
        // Stop reconciliation first, so no partition is reopened while these close.
        *self.reconcile.lock().await = true;
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

/// Replays the controller's commands up to its persisted commit into `metadata` (Raft delivers the rest as
/// they commit). Damage found on the way is cut for repair from peers (the replica then does not vote until
/// it holds those commands again) rather than refusing to start (M6 in the durability audit).
fn replay_controller(
    storage: &ReplicaStorage,
    metadata: &MetadataMachine,
) -> Result<(), BrokerError> {
    let commit = storage.read().state().hard_state.commit;
    let mut next = storage.read().log.first_raft_index();
    while next <= commit {
        let read = storage
            .read()
            .log
            .batches_by_raft_index(next, commit + 1, 1 << 20);
        let batches = match read {
            Ok(b) => b,
            Err(e) if e.is_damage() => {
                tracing::error!(
                    from = next,
                    "controller log damaged: {e}; repairing from peers"
                );
                storage.write().cut_for_repair(next)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let Some((last, _)) = batches.last() else {
            break;
        };
        next = last.raft_index + 1;
        for (h, b) in batches {
            metadata.apply_batch(h.raft_index, &b);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_controller_log_is_never_deleted_by_retention() {
        // Metadata is rebuilt by replaying the controller log from its start.
        let c = super::controller_log_config();
        assert_eq!((c.retention_bytes, c.retention_ms, c.segment_ms), (0, 0, 0));
    }
}
