//! Starting a broker: open the data dir, recover the controller and every local partition, start their
//! replicas and the broker's background tasks.

use crate::config::BrokerConfig;
use crate::consensus::ReplicaStorage;
use crate::metadata::{MetadataMachine, CONTROLLER_GROUP};
use crate::peer::{PeerNetwork, Router};
use crate::replica::{Clock, NoPeers, Transport, Wiring};
use crate::storage::{Disk, WallClock};
use crate::views::Dialer;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::{controller_log_config, replay_controller, Broker, BrokerError, CONTROLLER_CATCH_UP};
use super::{restart, tasks};

impl Broker {
    /// Opens the data dir, recovers the controller and every local partition, and starts their replicas.
    pub async fn start(
        config: BrokerConfig,
        disk: Arc<dyn Disk>,
        wall: Arc<dyn WallClock>,
        dialer: Arc<dyn Dialer>,
        router: Arc<Router>,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        crate::storage::format::check_or_create(disk.as_ref(), &config.data_dir)?;
        let voters = config.voters();
        let ctl_dir = config.data_dir.join("__cluster");
        let (storage, _) = ReplicaStorage::open(
            disk.clone(),
            wall.clone(),
            &ctl_dir,
            controller_log_config(),
            &voters,
        )?;
        // A cluster (started with --peers) always has a network, so brokers can be added to it.
        let network = (!config.peers.is_empty()).then(|| {
            PeerNetwork::start(
                config.node_id,
                config.peer_advertise.clone(),
                &config.peers,
                cancel.child_token(),
            )
        });
        let transport: Arc<dyn Transport> = match &network {
            Some(n) => n.clone(),
            None => Arc::new(NoPeers),
        };
        let metadata = MetadataMachine::new(&config.peers);
        let clock = Clock::start(config.replica.tick_ms, cancel.clone());
        let inflight_kib = usize::try_from(config.inflight_bytes_max / 1024)
            .unwrap_or(usize::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        replay_controller(&storage, &metadata)?;
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
            cancel,
        });
        // Commands past the persisted commit are applied once the controller commits them again: wait for
        // that (bounded) so the partitions exist before clients are served.
        let log_end = broker.controller().log_end_offset();
        let mut hw = broker.controller().watch_high_watermark();
        let caught_up = tokio::time::timeout(CONTROLLER_CATCH_UP, hw.wait_for(|hw| *hw >= log_end))
            .await
            .is_ok_and(|r| r.is_ok());
        if !caught_up {
            tracing::warn!("controller has not caught up within {CONTROLLER_CATCH_UP:?}; serving what is known");
        }
        broker.reconcile().await?;
        broker.remove_orphan_dirs();
        tokio::spawn(tasks::follow_metadata(Arc::downgrade(&broker), hw));
        tokio::spawn(tasks::register(
            Arc::downgrade(&broker),
            broker.cancel.clone(),
        ));
        if broker.network.is_some() {
            tokio::spawn(tasks::balance_leaders(
                Arc::downgrade(&broker),
                broker.cancel.clone(),
            ));
            tokio::spawn(tasks::membership(
                Arc::downgrade(&broker),
                broker.cancel.clone(),
            ));
            tokio::spawn(tasks::scrub(Arc::downgrade(&broker), broker.cancel.clone()));
        }
        tokio::spawn(tasks::supervise(
            Arc::downgrade(&broker),
            broker.cancel.clone(),
        ));
        Ok(broker)
    }
}
