//! The identity check of a starting broker (docs/operations.md, "Identity"), and the answers a running
//! broker gives to others' checks. A broker whose data dir is new takes no part in Raft until the
//! controller leader confirms that the cluster never registered its node id, or every other initial voter
//! is new too (the cluster's first start); one the cluster knows refuses to start. A broker with state asks
//! its peers' cluster ids, bounded, and refuses to start inside another cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError};
use crate::config::BrokerConfig;
use crate::identity::{judge_fresh, judge_known, HelloAnswer, Identity, Verdict};
use crate::metadata::Command;
use crate::views::{Dialer, Hello};

/// Pause between two Hello rounds of a broker whose data dir is new.
const FRESH_ROUND_PAUSE: Duration = Duration::from_millis(300);
/// How often a waiting broker logs why it waits.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the check; returns once this broker may take part in Raft. A fresh data dir's identity is
/// settled by the caller once its controller state exists.
pub(super) async fn check(
    config: &BrokerConfig,
    identity: &Identity,
    dialer: &dyn Dialer,
    cancel: &CancellationToken,
) -> Result<(), BrokerError> {
    let me = config.node_id;
    let mut addresses: BTreeMap<u64, String> = config
        .peers
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    if addresses.is_empty() {
        return Ok(()); // alone: nobody to have forgotten anything for
    }
    let hello = Hello {
        node_id: me,
        cluster_id: identity.cluster_id().unwrap_or_default().to_owned(),
        incarnation: identity.incarnation,
        fresh: identity.is_fresh(),
    };
    if !identity.is_fresh() {
        let answers = ask(dialer, &addresses, &hello).await;
        return judge_known(identity.cluster_id(), config.voters().len(), &answers)
            .map_err(BrokerError::from);
    }
    let voters = config.voters();
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        let answers = ask(dialer, &addresses, &hello).await;
        match judge_fresh(me, &voters, &answers) {
            Verdict::Proceed => {
                tracing::info!("identity check passed: this broker's new data dir takes part");
                return Ok(());
            }
            Verdict::Refuse(why) => return Err(BrokerError::Refused(why)),
            Verdict::Wait(why) => {
                if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_INTERVAL) {
                    tracing::warn!("waiting for the identity check: {why}");
                    last_log = Some(tokio::time::Instant::now());
                }
            }
        }
        // The controller leader may be a broker this one knows only from an answer.
        for a in answers.values() {
            if !a.leader_address.is_empty() && !addresses.values().any(|v| *v == a.leader_address) {
                addresses.insert(u64::MAX - addresses.len() as u64, a.leader_address.clone());
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                return Err(BrokerError::Refused("stopped during the identity check".into()));
            }
            _ = tokio::time::sleep(FRESH_ROUND_PAUSE) => {}
        }
    }
}

/// Asks every address at once; the answers by the id each peer gave (unanswered ones left out).
async fn ask(
    dialer: &dyn Dialer,
    addresses: &BTreeMap<u64, String>,
    hello: &Hello,
) -> BTreeMap<u64, HelloAnswer> {
    let asks = addresses.iter().map(|(id, addr)| async move {
        match dialer.hello(addr.clone(), hello.clone()).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::debug!(broker = id, "no Hello answer: {e}");
                None
            }
        }
    });
    join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|a| a.node_id != hello.node_id && a.node_id != 0)
        .map(|a| (a.node_id, a))
        .collect()
}

impl Broker {
    /// The cluster id this broker knows, empty until minted (what its peer traffic is stamped with).
    pub(crate) fn cluster_id_or_empty(&self) -> String {
        self.identity.cluster_id().unwrap_or_default().to_owned()
    }

    /// The data dir's identity.
    pub fn identity(&self) -> &std::sync::Arc<Identity> {
        &self.identity
    }

    /// Where member `id`'s peer port is, by the metadata.
    pub(crate) fn peer_address(&self, id: u64) -> Option<String> {
        self.metadata
            .state
            .read()
            .members
            .get(&id)
            .map(|m| m.peer_address.clone())
    }

    /// The incarnation the cluster registered broker `id` with, if any.
    pub fn registered_incarnation(&self, id: u64) -> Option<u64> {
        self.metadata.state.read().incarnations.get(&id).copied()
    }

    /// Keeps the data dir's cluster id in step with the metadata (written once, when first minted).
    pub(super) fn learn_cluster_id(&self) {
        let minted = self.metadata.state.read().cluster_id.clone();
        if let Some(id) = minted {
            if let Err(e) = self.identity.learn_cluster_id(&id) {
                tracing::error!("{e}");
            }
        }
    }

    /// Answers a starting broker's Hello about node `node_id`: on the controller leader, after committing
    /// a barrier (so no registration committed earlier is missed), whether the cluster registered that node
    /// id and with which incarnation; elsewhere, where the leader is.
    pub async fn answer_hello(&self, node_id: u64, answer: &mut HelloAnswer) {
        let leader = self.controller().leader();
        if leader != self.config.node_id {
            answer.leader_address = self.peer_address(leader).unwrap_or_default();
            return;
        }
        let barrier = Command::Barrier {}.to_batch(self.now_ms());
        if let Err(e) = self.propose_local(barrier).await {
            tracing::debug!("identity barrier: {e}");
            return;
        }
        let m = self.metadata.state.read();
        answer.confirmed = true;
        answer.registered =
            m.brokers.contains_key(&node_id) || m.incarnations.contains_key(&node_id);
        answer.registered_incarnation = m.incarnations.get(&node_id).copied().unwrap_or(0);
        if answer.cluster_id.is_empty() {
            answer.cluster_id = m.cluster_id.clone().unwrap_or_default();
        }
    }
}
