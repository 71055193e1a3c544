//! The broker's background loops: following the controller's metadata, registering this broker's client
//! address, and handing partitions back to their preferred leaders. Each holds only a weak reference, so a
//! dropped broker ends them.

use tokio_util::sync::CancellationToken;

use super::{Broker, LEADER_TRANSFER_WAIT};
use crate::metadata::Command;

/// Starts and stops local partitions whenever the controller applies new metadata.
pub(super) async fn follow_metadata(
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

/// Announces this broker's client address to the controller until it is in the metadata.
pub(super) async fn register(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    let mut backoff_ms = 100;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let (id, addr) = (b.config.node_id, b.config.advertise.clone());
        if b.metadata.state.read().brokers.get(&id) == Some(&addr) {
            return;
        }
        let cmd = Command::RegisterBroker {
            id,
            client_address: addr.clone(),
        };
        match b
            .propose_command(&cmd, |m| m.brokers.get(&id) == Some(&addr))
            .await
        {
            Ok(()) => return,
            Err(e) => tracing::debug!("registering with the controller: {e}"),
        }
        drop(b);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(2_000);
    }
}

/// How often a broker hands partitions back to their preferred leaders.
const LEADER_BALANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Automatic leader balancing: a partition led here whose preferred leader (its first replica) is caught up
/// gets its leadership back, so leaders return to the even spread placement gave them after failures and
/// restarts.
pub(super) async fn balance_leaders(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LEADER_BALANCE_INTERVAL) => {}
        }
        let Some(b) = broker.upgrade() else { return };
        let me = b.config.node_id;
        let meta = b.metadata();
        for ((topic, p), r) in b.local_partitions() {
            let preferred = meta
                .topics
                .get(&topic)
                .and_then(|t| t.replica_sets.get(p as usize))
                .and_then(|s| s.first());
            let Some(&preferred) = preferred else {
                continue;
            };
            if r.leader() == me && preferred != me && r.in_sync().contains(&preferred) {
                match r.transfer_leader(preferred, me, LEADER_TRANSFER_WAIT).await {
                    Ok(l) if l == preferred => {
                        tracing::info!(%topic, partition = p, to = preferred, "leadership back to the preferred replica")
                    }
                    Ok(_) | Err(_) => {}
                }
            }
        }
    }
}
