//! Restarting replicas: a replica whose task ended on its own (a panic, a fatal I/O error, a full disk) is
//! started again from its files, as a process restart would, so the broker does not keep a dead replica
//! that claims nothing and serves nothing forever (M2 in the durability audit); the controller replica can be
//! restarted and repaired the same way (M6). Supervision (`tasks::supervise`) decides when.

use std::path::PathBuf;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{controller_log_config, Broker, BrokerError};
use crate::config::BrokerConfig;
use crate::metadata::{MetadataMachine, CONTROLLER_GROUP};
use crate::replica::raft_log::ReplicaStorage;
use crate::replica::{self, Replica, Wiring};

/// Starts the controller replica over `storage`, its committed commands applied to `metadata`.
pub(super) fn spawn_controller(
    storage: ReplicaStorage,
    config: &BrokerConfig,
    metadata: &MetadataMachine,
    wiring: Wiring,
) -> Result<(Replica, CancellationToken, JoinHandle<()>), BrokerError> {
    let cancel = wiring.cancel.clone();
    let (replica, task) = replica::spawn(
        CONTROLLER_GROUP,
        "__cluster".into(),
        storage,
        config.replica,
        Some(Box::new(metadata.clone())),
        wiring,
    )?;
    Ok((replica, cancel, task))
}

impl Broker {
    fn controller_dir(&self) -> PathBuf {
        self.config.data_dir.join("__cluster")
    }

    /// Stops the controller replica and starts it again from its files; with `repair_from`, first cuts its
    /// log at that Raft index and marks it repairing (damage the scrub found). The metadata keeps what it
    /// applied: the new replica re-delivers only later commands (applying is idempotent by index).
    pub(crate) async fn restart_controller(
        &self,
        repair_from: Option<u64>,
    ) -> Result<(), BrokerError> {
        let guard = self.reconcile.lock().await;
        if *guard {
            return Ok(());
        }
        let old = self.controller_task.lock().take();
        if let Some((cancel, task)) = old {
            cancel.cancel();
            let _ = task.await;
        }
        self.router.unregister(CONTROLLER_GROUP);
        let (storage, _) = ReplicaStorage::open(
            self.disk.clone(),
            self.wall.clone(),
            &self.controller_dir(),
            controller_log_config(),
            &self.config.voters(),
        )?;
        if let Some(from) = repair_from {
            let until = storage.write().cut_for_repair(from)?;
            tracing::warn!(from, until, "controller log cut; repairing from peers");
        }
        let (replica, cancel, task) = spawn_controller(
            storage,
            &self.config,
            &self.metadata,
            Wiring {
                transport: self.transport.clone(),
                clock: self.clock.clone(),
                cancel: self.cancel.child_token(),
                liveness: self.router.liveness(),
            },
        )?;
        self.router.register(CONTROLLER_GROUP, replica.inbox());
        *self.controller.write() = replica;
        *self.controller_task.lock() = Some((cancel, task));
        drop(guard);
        metrics::counter!("ferry_replica_restarts_total", "partition" => "__cluster").increment(1);
        Ok(())
    }

    /// Starts again, from its files, the local replica of `topic`-`p` whose task has ended. A replica that
    /// cannot open stays down and is named by `/readyz`.
    pub(crate) async fn restart_partition(&self, topic: &str, p: u32) -> Result<(), BrokerError> {
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
        match self.open_partition(&t, p) {
            Ok(r) => {
                self.router.register(t.group_id(p), r.replica.inbox());
                self.partitions.write().insert(key, r);
                metrics::counter!("ferry_replica_restarts_total", "partition" => format!("{topic}-{p}"))
                    .increment(1);
                Ok(())
            }
            Err(e) => {
                tracing::error!(%topic, partition = p, "restart failed; the replica stays down: {e}");
                self.unopenable
                    .write()
                    .insert(key, format!("restart failed: {e}"));
                Err(e)
            }
        }
    }

    /// Local replicas whose driver task ended while they were meant to run, and whether each was fenced for
    /// damaged data (the scrub repairs those).
    pub(crate) fn ended_replicas(&self) -> Vec<((String, u32), bool)> {
        self.partitions
            .read()
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(k, r)| (k.clone(), r.replica.is_damaged()))
            .collect()
    }

    /// Whether the controller replica's task ended (and whether for damaged data).
    pub(crate) fn controller_ended(&self) -> Option<bool> {
        let ended = self
            .controller_task
            .lock()
            .as_ref()
            .is_some_and(|(_, t)| t.is_finished());
        ended.then(|| self.controller().is_damaged())
    }
}
