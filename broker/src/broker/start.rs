//! Starting a broker: open the data dir, recover the controller and every local partition, start their
//! replicas and the broker's background tasks.

use crate::config::BrokerConfig;
use crate::metadata::{MetadataMachine, TopicMeta, CONTROLLER_GROUP};
use crate::peer::{PeerNetwork, Router};
use crate::replica::raft_log::ReplicaStorage;
use crate::replica::{Clock, NoPeers, Transport, Wiring};
use crate::storage::WallClock;
use crate::views::Dialer;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::startup::{Phase, Startup};
use super::{controller_log_config, replay_controller, Broker, BrokerError, CONTROLLER_CATCH_UP};
use super::{identify, restart, tasks};
use crate::identity::Identity;

impl Broker {
    /// Recovers the controller and every local partition of the data dir `identity` was opened on (its disk
    /// is the broker's), after the identity check, and starts their replicas.
    pub async fn start(
        config: BrokerConfig,
        wall: Arc<dyn WallClock>,
        dialer: Arc<dyn Dialer>,
        router: Arc<Router>,
        identity: Arc<Identity>,
        startup: Startup,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let disk = identity.disk().clone();
        startup.set(Phase::Identifying);
        identify::check(&config, &identity, dialer.as_ref(), &cancel).await?;
        startup.set(Phase::Starting);
        let voters = config.voters();
        let ctl_dir = config.data_dir.join("__cluster");
        let (storage, _) = ReplicaStorage::open(
            disk.clone(),
            wall.clone(),
            &ctl_dir,
            controller_log_config(),
            &voters,
        )?;
        // The controller state exists now: from here on this data dir has taken part.
        identity.settle()?;
        let (network, transport) = peer_network(&config, &identity, &cancel);
        let metadata = MetadataMachine::new(&config.peers);
        let clock = Clock::start(config.replica.tick_ms, cancel.clone());
        let inflight_kib = usize::try_from(config.inflight_bytes_max / 1024)
            .unwrap_or(usize::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        replay_controller(&storage, &metadata)?;
        if let Some(id) = metadata.state.read().cluster_id.clone() {
            identity.learn_cluster_id(&id)?;
        }
        let (controller, ctl_cancel, ctl_task) = restart::spawn_controller(
            storage,
            &config,
            &metadata,
            Wiring {
                transport: transport.clone(),
                clock: clock.clone(),
                cancel: cancel.child_token(),
                liveness: router.liveness(),
            },
        )?;
        router.register(CONTROLLER_GROUP, controller.inbox());
        identity.watch_controller(controller.clone());
        let catch_up_target = controller.log_end_offset();
        let broker = Arc::new(Broker {
            config,
            disk,
            wall,
            dialer,
            metadata,
            controller: parking_lot::RwLock::new(controller),
            controller_task: parking_lot::Mutex::new(Some((ctl_cancel, ctl_task))),
            router,
            transport,
            network,
            clock,
            partitions: RwLock::new(HashMap::new()),
            reconcile: tokio::sync::Mutex::new(false),
            groups: Default::default(),
            unopenable: Default::default(),
            producer_ids: tokio::sync::Mutex::new(0..0),
            inflight: Arc::new(tokio::sync::Semaphore::new(inflight_kib)),
            startup: startup.clone(),
            catch_up_target,
            identity,
            cancel,
        });
        startup.set(Phase::CatchingUp);
        let hw = broker.catch_up_controller().await;
        startup.set(Phase::Opening);
        broker.reconcile().await?;
        // Not caught up yet: the metadata follower removes them once it is.
        broker.remove_orphan_dirs().await;
        broker.spawn_tasks(hw);
        startup.set(Phase::Serving);
        Ok(broker)
    }

    /// Commands past the persisted commit are applied once the controller commits them again: waits for
    /// that (bounded) so the partitions exist before clients are served. Returns the controller's high
    /// watermark to follow.
    async fn catch_up_controller(&self) -> tokio::sync::watch::Receiver<u64> {
        let log_end = self.controller().log_end_offset();
        let mut hw = self.controller().watch_high_watermark();
        let caught_up = tokio::time::timeout(CONTROLLER_CATCH_UP, hw.wait_for(|hw| *hw >= log_end))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            self.startup.set_caught_up();
        } else {
            tracing::warn!("controller has not caught up within {CONTROLLER_CATCH_UP:?}; serving what is known");
        }
        hw
    }

    /// Removes the directories of topics deleted while this broker was down, once (at start, or from the
    /// metadata follower later) and only once its metadata has caught up with what the controller had
    /// committed when the broker started.
    ///
    /// Before that, a topic missing from the metadata may only be unknown yet, not deleted: commands past
    /// the persisted commit are applied again only once the controller has a quorum. A broker restarted
    /// alone once removed the data of every topic it did not know yet, came back with empty replicas (term
    /// 0, no log) and voted with them, which let a replica missing acknowledged records be elected.
    pub(super) async fn remove_orphan_dirs(&self) {
        if self.startup.orphans_removed() || !self.metadata_caught_up() {
            return;
        }
        let guard = self.reconcile.lock().await;
        self.startup.set_orphans_removed();
        if *guard {
            return;
        }
        // Listed before the metadata is read: a topic created in between is in the metadata read after.
        let Ok(names) = self.disk.list(&self.topics_dir()) else {
            return;
        };
        let meta = self.metadata();
        let known: Vec<String> = meta.topics.values().map(TopicMeta::dir_name).collect();
        for n in names.into_iter().filter(|n| !known.contains(n)) {
            tracing::info!(dir = %n, "removing the data of a deleted topic");
            let _ = self.disk.remove_dir_all(&self.topics_dir().join(n));
        }
    }

    /// Whether the metadata has caught up with what the controller had committed when this broker started
    /// (then it stays so: the metadata only moves forward).
    pub(super) fn metadata_caught_up(&self) -> bool {
        if self.startup.caught_up() {
            return true;
        }
        if self.controller().high_watermark() < self.catch_up_target {
            return false;
        }
        self.startup.set_caught_up();
        true
    }

    /// The background tasks: following the metadata, registering, and in a cluster balancing leaders,
    /// carrying out membership changes and scrubbing; supervision of replica tasks always.
    fn spawn_tasks(self: &Arc<Self>, hw: tokio::sync::watch::Receiver<u64>) {
        let broker = self;
        tokio::spawn(tasks::follow_metadata(Arc::downgrade(broker), hw));
        tokio::spawn(tasks::register(
            Arc::downgrade(broker),
            broker.cancel.clone(),
        ));
        if broker.network.is_some() {
            tokio::spawn(tasks::balance_leaders(
                Arc::downgrade(broker),
                broker.cancel.clone(),
            ));
            tokio::spawn(tasks::membership(
                Arc::downgrade(broker),
                broker.cancel.clone(),
            ));
            tokio::spawn(tasks::scrub(Arc::downgrade(broker), broker.cancel.clone()));
            // An initial voter is a member from the start and stops at once; one that was removed and
            // forgotten (rebuilt after losing its data dir) adds itself again.
            if broker.config.auto_join {
                tokio::spawn(tasks::join(Arc::downgrade(broker), broker.cancel.clone()));
            }
        }
        tokio::spawn(tasks::supervise(
            Arc::downgrade(broker),
            broker.cancel.clone(),
        ));
    }
}

/// A cluster (started with --peers) always has a network, so brokers can be added to it; a broker alone
/// sends Raft messages nowhere.
fn peer_network(
    config: &BrokerConfig,
    identity: &Arc<Identity>,
    cancel: &CancellationToken,
) -> (Option<Arc<PeerNetwork>>, Arc<dyn Transport>) {
    let network = (!config.peers.is_empty()).then(|| {
        PeerNetwork::start(
            identity.clone(),
            config.peer_advertise.clone(),
            &config.peers,
            config.tls.clone(),
            cancel.child_token(),
        )
    });
    let transport: Arc<dyn Transport> = match &network {
        Some(n) => n.clone(),
        None => Arc::new(NoPeers),
    };
    (network, transport)
}
