//! The broker's background loops: following the controller's metadata, registering this broker's client
//! address, and handing partitions back to their preferred leaders. Each holds only a weak reference, so a
//! dropped broker ends them.

use tokio_util::sync::CancellationToken;

use super::{Broker, LEADER_TRANSFER_WAIT};
use crate::metadata::Command;

/// How often metadata is reconciled even when the controller's high watermark did not move (a restarted
/// controller replica has a new watermark to follow).
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts and stops local partitions whenever the controller applies new metadata; removes the data of
/// topics deleted while the broker was down once the metadata has caught up, if start-up could not.
pub(super) async fn follow_metadata(
    broker: std::sync::Weak<Broker>,
    mut hw: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        let changed = tokio::time::timeout(RECONCILE_INTERVAL, hw.changed()).await;
        let Some(b) = broker.upgrade() else { return };
        if b.cancel.is_cancelled() {
            return;
        }
        if !matches!(changed, Ok(Ok(()))) {
            // Timed out, or the controller replica was replaced: watch the current one.
            hw = b.controller().watch_high_watermark();
        }
        if let Err(e) = b.reconcile().await {
            tracing::error!("applying metadata failed: {e}");
        }
        b.remove_orphan_dirs().await;
        b.learn_cluster_id();
    }
}

/// How often supervision looks for replicas whose task ended.
const SUPERVISE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// First and longest pause before a replica that ended is restarted again.
const RESTART_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const RESTART_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// A replica that ran this long since its last restart starts over at the shortest backoff.
const RESTART_BACKOFF_RESET: std::time::Duration = std::time::Duration::from_secs(600);

/// Supervision: a replica whose task ended while it was meant to run (a panic, a fatal I/O error, a full
/// disk) is restarted from its files with a growing backoff, logged and counted
/// (`ferry_replica_restarts_total`); one fenced for damaged data is left to the scrub, which repairs it.
pub(super) async fn supervise(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    use std::time::Instant;
    let mut last: std::collections::HashMap<(String, u32), (std::time::Duration, Instant)> =
        Default::default();
    let mut due = |key: &(String, u32)| {
        let now = Instant::now();
        let (delay, at) = last
            .entry(key.clone())
            .or_insert((std::time::Duration::ZERO, now - RESTART_BACKOFF_RESET));
        if now.duration_since(*at) >= RESTART_BACKOFF_RESET {
            *delay = std::time::Duration::ZERO;
        }
        if now.duration_since(*at) < *delay {
            return false;
        }
        *delay = (*delay * 2).clamp(RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX);
        *at = now;
        true
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SUPERVISE_INTERVAL) => {}
        }
        let Some(b) = broker.upgrade() else { return };
        for ((topic, p), damaged) in b.ended_replicas() {
            if damaged || !due(&(topic.clone(), p)) {
                continue;
            }
            tracing::warn!(%topic, partition = p, "replica task ended; restarting it");
            let _ = b.restart_partition(&topic, p).await;
        }
        if b.controller_ended() == Some(false) && due(&("__cluster".to_owned(), 0)) {
            tracing::warn!("controller replica task ended; restarting it");
            if let Err(e) = b.restart_controller(None).await {
                tracing::error!("restarting the controller replica: {e}");
            }
        }
    }
}

/// Announces this broker's client address to the controller until it is in the metadata.
pub(super) async fn register(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    let mut backoff_ms = 100;
    loop {
        let Some(b) = broker.upgrade() else { return };
        let (id, addr) = (b.config.node_id, b.config.advertise.clone());
        let incarnation = b.identity.incarnation;
        let listeners = b.config.listener_advertise.clone();
        let registered = |m: &crate::metadata::Metadata| {
            m.brokers.get(&id) == Some(&addr)
                && m.incarnations.get(&id) == Some(&incarnation)
                && m.listeners
                    .get(&id)
                    .map_or(listeners.is_empty(), |l| *l == listeners)
        };
        let minted = |m: &crate::metadata::Metadata| m.cluster_id.is_some();
        let done = {
            let m = b.metadata.state.read();
            (registered(&m), minted(&m))
        };
        let attempt = match done {
            (true, true) => return,
            (false, _) => {
                let cmd = Command::RegisterBroker {
                    id,
                    client_address: addr.clone(),
                    incarnation,
                    listeners: listeners.clone(),
                };
                b.propose_command(&cmd, registered).await
            }
            // The first broker to find the cluster without an id mints one; if several race, the first
            // committed wins and the others are ignored when applied.
            (true, false) => {
                let cmd = Command::ClusterId {
                    id: crate::identity::mint_cluster_id(),
                };
                b.propose_command(&cmd, minted).await
            }
        };
        match attempt {
            Ok(()) => {
                backoff_ms = 100;
                continue;
            }
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

/// Pause between two rounds of asking the initial voters to add this broker.
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// After the controller accepted the addition, how long to wait to see it before asking again.
const JOIN_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// `auto_join`: a broker that is not a member asks the initial voters, one after the other, to add it (an
/// `AddBroker` command, as `ferry cluster add-broker` sends; whichever leads the controller takes it), until
/// its own metadata shows it a member. It knows only the initial voters' peer addresses until then.
/// Membership counts only in metadata that has applied a command: an empty controller log shows every
/// initial voter a member, also one the cluster removed and forgot (rebuilt after losing its data dir).
pub(super) async fn join(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let me = b.config.node_id;
        if is_member(&b.metadata.state.read(), me) {
            return;
        }
        let cmd = Command::AddBroker {
            id: me,
            peer_address: b.config.peer_advertise.clone(),
        };
        let batch = cmd.to_batch(b.now_ms());
        let mut accepted = false;
        for (voter, addr) in b.config.peers.iter().filter(|(v, _)| **v != me) {
            match b
                .dialer
                .forward(addr.clone(), batch.clone(), b.cluster_id_or_empty())
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        broker = me,
                        via = voter,
                        "asked the controller to add this broker (auto_join)"
                    );
                    accepted = true;
                    break;
                }
                Err(e) => tracing::debug!(via = voter, "auto_join: {e}"),
            }
        }
        let mut hw = b.controller().watch_high_watermark();
        drop(b);
        let wait = if accepted { JOIN_SETTLE } else { JOIN_RETRY };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::timeout(wait, async {
                while hw.changed().await.is_ok() {
                    let Some(b) = broker.upgrade() else { return };
                    if is_member(&b.metadata.state.read(), me) {
                        return;
                    }
                }
            }) => {}
        }
    }
}

/// `me` is a member by metadata that has applied at least one command (the controller log's own word).
fn is_member(m: &crate::metadata::Metadata, me: u64) -> bool {
    m.applied_index > 0 && m.members.contains_key(&me)
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

/// How often membership work is checked: configuration steps of moving partitions, the controller's own
/// membership, and new moves.
const MEMBERSHIP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Carries out membership changes. On every broker: each partition this broker leads is moved, one Raft
/// configuration step at a time, to the replicas the metadata assigns it, and reported settled to the
/// controller once there. On the controller leader: the controller group follows the members, new moves
/// are planned, and drained removed brokers are forgotten.
pub(super) async fn membership(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    use crate::membership::{controller_voters, forgettable, plan_moves, settled};
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MEMBERSHIP_INTERVAL) => {}
        }
        let Some(b) = broker.upgrade() else { return };
        let me = b.config.node_id;
        // Partitions led here whose voters differ from their assignment, or that are not reported yet.
        let work: Vec<(String, u32, Vec<u64>, bool, crate::replica::Replica)> = {
            let meta = b.metadata.state.read();
            b.local_partitions()
                .into_iter()
                .filter(|(_, r)| r.leader() == me && r.is_serving())
                .filter_map(|((topic, p), r)| {
                    let t = meta.topics.get(&topic)?;
                    let target = t.replica_sets.get(p as usize)?.clone();
                    let m = r.membership();
                    let done = settled(&m.voters, &m.learners, &target);
                    (!done || t.moving(p)).then_some((topic, p, target, done, r))
                })
                .collect()
        };
        for (topic, partition, target, done, r) in work {
            if done {
                let cmd = Command::SettleReplicas {
                    topic: topic.clone(),
                    partition,
                    voters: target,
                };
                let reported = |m: &crate::metadata::Metadata| {
                    m.topics.get(&topic).is_none_or(|t| !t.moving(partition))
                };
                if let Err(e) = b.propose_command(&cmd, reported).await {
                    tracing::debug!(%topic, partition, "reporting a settled move: {e}");
                }
            } else {
                match r.reconfigure(target).await {
                    Ok(step) => tracing::debug!(%topic, partition, ?step, "moving replicas"),
                    Err(e) => tracing::debug!(%topic, partition, "moving replicas: {e}"),
                }
            }
        }
        let ctl = b.controller();
        if ctl.leader() != me || !ctl.is_serving() {
            continue;
        }
        let meta = b.metadata();
        let target = controller_voters(&meta);
        let m = ctl.membership();
        if !settled(&m.voters, &m.learners, &target) {
            match ctl.reconfigure(target).await {
                Ok(step) => tracing::debug!(?step, "controller membership"),
                Err(e) => tracing::debug!("controller membership: {e}"),
            }
            continue;
        }
        for id in forgettable(&meta, &m.voters) {
            let cmd = Command::ForgetBroker { id };
            match b
                .propose_command(&cmd, |m| !m.members.contains_key(&id))
                .await
            {
                Ok(()) => tracing::info!(broker = id, "removed broker left the cluster"),
                Err(e) => tracing::debug!(broker = id, "forgetting a removed broker: {e}"),
            }
        }
        for cmd in plan_moves(&meta, &m.voters) {
            let Command::MoveReplicas {
                topic,
                partition,
                replicas,
            } = &cmd
            else {
                continue;
            };
            tracing::info!(%topic, partition, ?replicas, "moving a partition");
            let moved = |m: &crate::metadata::Metadata| {
                m.topics
                    .get(topic)
                    .and_then(|t| t.replica_sets.get(*partition as usize))
                    .is_none_or(|s| s == replicas)
            };
            if let Err(e) = b.propose_command(&cmd, moved).await {
                tracing::debug!(%topic, partition, "proposing a move: {e}");
                break;
            }
        }
    }
}

/// Bytes CRC-checked per step of a scrub (the replica's storage is read-locked for one step).
const SCRUB_STEP_BYTES: u64 = 4 << 20;
/// Most bytes per second the scrub reads, all replicas together (one step at a time). Background work: at
/// 4 MiB per 10 ms, as before, a restarted broker with a large log, or a new partition filling fast (a pass
/// chases the log's end), read several hundred MB/s and spent most of a core on CRCs next to the traffic it
/// serves. At this rate a pass over 1 TiB takes about 4.5 h, inside `SCRUB_INTERVAL`.
const SCRUB_BYTES_PER_SEC_MAX: u64 = 64 << 20;
/// Pause after each scrub step, which reads at most `SCRUB_STEP_BYTES`: 62.5 ms.
const SCRUB_PAUSE: std::time::Duration =
    std::time::Duration::from_micros(SCRUB_STEP_BYTES * 1_000_000 / SCRUB_BYTES_PER_SEC_MAX);
/// A replica's whole log is checked once after it opens, then once per this interval.
const SCRUB_INTERVAL: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Scrubbing: reads every local replica's whole log and checks each batch's CRC, so damage inside the log
/// (bit rot in an old segment, which opening does not scan) is found before a reader or a lagging follower
/// needs that data. A damaged replica is repaired from its peers (`Broker::repair_partition`); a replica
/// fenced after a read found damage is scrubbed at once.
pub(super) async fn scrub(broker: std::sync::Weak<Broker>, cancel: CancellationToken) {
    let mut done: std::collections::HashMap<(String, u32), (u64, std::time::Instant)> =
        Default::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let Some(b) = broker.upgrade() else { return };
        // Every local replica, the controller's included (under the name "__cluster", partition 0).
        let mut replicas = b.local_partitions();
        replicas.push((("__cluster".to_owned(), 0), b.controller()));
        let due: Vec<((String, u32), crate::replica::Replica)> = replicas
            .into_iter()
            .filter(|(k, r)| {
                r.is_damaged()
                    || done.get(k).is_none_or(|(group, at)| {
                        *group != r.group() || at.elapsed() > SCRUB_INTERVAL
                    })
            })
            .collect();
        drop(b);
        for ((topic, p), r) in due {
            let storage = r.shared.storage.clone();
            let mut at = storage.read().scrub_start();
            let damage = loop {
                if cancel.is_cancelled() {
                    return;
                }
                let s = storage.clone();
                let step =
                    tokio::task::spawn_blocking(move || s.read().verify(at, SCRUB_STEP_BYTES))
                        .await;
                match step {
                    Ok(Ok(n)) if n.next_raft_index > storage.read().log.last_raft_index() => {
                        break None
                    }
                    Ok(Ok(n)) => at = n,
                    Ok(Err(e)) => break Some(e),
                    Err(_) => break None,
                }
                tokio::time::sleep(SCRUB_PAUSE).await;
            };
            let next = at.next_raft_index;
            done.insert((topic.clone(), p), (r.group(), std::time::Instant::now()));
            let controller = topic == "__cluster";
            let Some(b) = broker.upgrade() else { return };
            match damage {
                Some(e) => {
                    tracing::error!(%topic, partition = p, from = next, "scrub found damage: {e}");
                    let repaired = if controller {
                        b.restart_controller(Some(next)).await
                    } else {
                        b.repair_partition(&topic, p, next).await
                    };
                    if let Err(e) = repaired {
                        tracing::error!(%topic, partition = p, "repair failed: {e}");
                    }
                }
                // Fenced for damage a read found, but the log checks out whole now (the damage was in an
                // index, or the read failed for a passing reason): start it again.
                None if r.is_damaged() => {
                    tracing::warn!(%topic, partition = p, "fenced replica's log checks out; restarting it");
                    let restarted = if controller {
                        b.restart_controller(None).await
                    } else {
                        b.restart_partition(&topic, p).await
                    };
                    if let Err(e) = restarted {
                        tracing::error!(%topic, partition = p, "restart failed: {e}");
                    }
                }
                None => {}
            }
        }
    }
}
