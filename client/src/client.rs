//! [`Client`]: the connection to a Ferry cluster. It bootstraps from a list of addresses, keeps the
//! cluster's metadata, and sends every request to the broker that should answer it: per-partition requests
//! to the partition's leader, everything else to the broker that last answered. Retriable failures refresh
//! the metadata and try again, a bounded number of times with bounded backoff.
//!
//! The typed operations built on this routing live in [`admin`](crate::admin), [`publish`](crate::publish),
//! [`fetch`](crate::fetch) and [`subscribe`](crate::subscribe).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::v1::{DescribeClusterRequest, MetadataRequest, MetadataResponse};
use parking_lot::{Mutex, RwLock};

use crate::channels::{admin_client, ferry_client, BrokerChannel, Channels};
use crate::config::ClientConfig;
use crate::error::{ClientError, ConnectAttempt};
use crate::metadata::MetadataCache;
use crate::retry;

/// A handle on a Ferry cluster. Cheap to clone; clones share connections and metadata.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    bootstrap: Vec<String>,
    channels: Channels,
    metadata: RwLock<MetadataCache>,
    /// The broker that last answered a metadata request: where requests without a better route go.
    preferred: Mutex<String>,
    /// Coordinator address of each consumer group, as brokers last named it.
    coordinators: Mutex<std::collections::HashMap<String, String>>,
}

/// Response metadata of a broker's not-leader error: `ID=HOST:PORT` of the partition's leader.
pub const LEADER_HEADER: &str = "ferry-leader";

/// Which broker a request must go to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Any live broker (reads of cluster-wide state).
    Any,
    /// The controller (topic changes), or any broker when it is unknown.
    Controller,
    /// The leader of one partition, or any broker while it has none.
    Leader { topic: &'a str, partition: u32 },
    /// A consumer group's coordinator, or any broker while it is unknown (which names it).
    Group(&'a str),
}

impl Client {
    /// Connects with the default [`ClientConfig`]. See [`Client::connect_with`].
    pub async fn connect(bootstrap: Vec<String>) -> Result<Client, ClientError> {
        Self::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Connects to the cluster through `bootstrap` (`host:port` addresses of any brokers' client
    /// listeners): tries each in order until one answers a metadata request within the connect timeout.
    /// Fails with [`ClientError::Connect`], naming every address and why it failed, when none does.
    pub async fn connect_with(
        bootstrap: Vec<String>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let bootstrap: Vec<String> = bootstrap
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap address given".to_owned(),
            ));
        }
        let channels = Channels::new(config.clone());
        let mut attempts = Vec::new();
        for address in &bootstrap {
            match bootstrap_one(&channels, &config, address).await {
                Ok((channel, response)) => {
                    let mut metadata = MetadataCache::default();
                    metadata.apply(&response, &[]);
                    if let Some(node_id) = node_id(channel, &config).await {
                        metadata.note_reached(node_id, address);
                    }
                    tracing::debug!(%address, brokers = response.brokers.len(), "bootstrapped");
                    let inner = Inner {
                        preferred: Mutex::new(address.clone()),
                        coordinators: Mutex::new(Default::default()),
                        config,
                        bootstrap,
                        channels,
                        metadata: RwLock::new(metadata),
                    };
                    return Ok(Client {
                        inner: Arc::new(inner),
                    });
                }
                Err(reason) => {
                    tracing::debug!(%address, %reason, "bootstrap address failed");
                    attempts.push(ConnectAttempt {
                        address: address.clone(),
                        reason,
                    });
                }
            }
        }
        Err(ClientError::Connect { attempts })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Asks the cluster for fresh metadata about `topics` (empty: all topics) and updates the routing cache.
    /// A single requested topic the cluster does not know is [`ClientError::UnknownTopic`]; with several,
    /// unknown ones are simply absent from the answer.
    pub async fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let mut last_err = None;
        for address in self.refresh_candidates() {
            let channel = match self.inner.channels.get(&address) {
                Ok(channel) => channel,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let request = MetadataRequest {
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            };
            let timeout = self.inner.config.request_timeout();
            let err = match tokio::time::timeout(timeout, ferry_client(channel).metadata(request))
                .await
            {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    self.inner.metadata.write().apply(&response, topics);
                    *self.inner.preferred.lock() = address;
                    if let [topic] = topics {
                        if !response.topics.iter().any(|t| t.name == *topic) {
                            return Err(ClientError::UnknownTopic((*topic).to_owned()));
                        }
                    }
                    return Ok(response);
                }
                Ok(Err(status)) => ClientError::from(status),
                Err(_) => timeout_error(timeout),
            };
            if !retry::is_retriable(&err) {
                return Err(match (err.code(), topics) {
                    (Some(tonic::Code::NotFound), [topic]) => {
                        ClientError::UnknownTopic((*topic).to_owned())
                    }
                    _ => err,
                });
            }
            tracing::debug!(%address, %err, "metadata request failed; trying the next broker");
            last_err = Some(err);
        }
        Err(last_err.unwrap_or_else(|| ClientError::Connect { attempts: vec![] }))
    }

    /// Number of partitions of `topic`, from the cache or, the first time, from the cluster.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(route) = self.inner.metadata.read().topic(topic) {
            return Ok(route.partitions());
        }
        self.metadata(&[topic]).await?;
        self.inner
            .metadata
            .read()
            .topic(topic)
            .map(|r| r.partitions())
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_owned()))
    }

    /// Forgets the cached route of `topic` (it was deleted or changed).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.inner.metadata.write().forget_topic(topic);
    }

    /// Runs `call` on the channel `route` names and returns the answer's message, retrying retriable
    /// failures (when `retriable` is set: only for requests that are safe to repeat) after refreshing
    /// metadata. Each attempt must finish within `timeout`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        route: Route<'_>,
        retriable: bool,
        timeout: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let policy: fn(&ClientError) -> bool = if retriable {
            retry::is_retriable
        } else {
            |_| false
        };
        self.call_with(route, policy, timeout, call).await
    }

    /// [`Client::call`] with the retry decision given: `retry(err)` says whether a failed attempt is tried
    /// again.
    pub(crate) async fn call_with<T, F, Fut>(
        &self,
        route: Route<'_>,
        retry_when: fn(&ClientError) -> bool,
        timeout: Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let config = &self.inner.config;
        let mut retries = 0;
        let started = std::time::Instant::now();
        loop {
            if let Some(why) = self.inner.channels.token_problem() {
                return Err(ClientError::Token(why));
            }
            let channel = self.channel_for(route).await?;
            let mut redirected = false;
            let err = match tokio::time::timeout(timeout, call(channel)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => {
                    redirected = self.follow_redirect(route, &status);
                    ClientError::from(status)
                }
                Err(_) => timeout_error(timeout),
            };
            // A batch refused because the ones before it have not arrived (ABORTED) waits on them, not on
            // a broker: it may retry for as long as they may take (a request timeout), whatever the count.
            let waits_on_earlier = err.code() == Some(tonic::Code::Aborted);
            let more = if waits_on_earlier {
                started.elapsed() < config.request_timeout()
            } else {
                retries < config.retries_max
            };
            if !retry_when(&err) || !more {
                return Err(err);
            }
            retries += 1;
            if redirected {
                // The broker named the leader: go there at once, no metadata round trip.
                tracing::debug!(%err, retries, ?route, "following a leader redirect");
                continue;
            }
            tracing::debug!(%err, retries, ?route, "retrying after a metadata refresh");
            tokio::time::sleep(retry::backoff(config, retries)).await;
            self.refresh_after_failure(route).await?;
        }
    }

    /// Takes in the `ferry-leader: ID=HOST:PORT` header a broker puts on a not-leader error; true when it
    /// named a leader for the partition `route` addresses.
    fn follow_redirect(&self, route: Route<'_>, status: &tonic::Status) -> bool {
        let Some(value) = status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((id, address)) = value.split_once('=') else {
            return false;
        };
        let Ok(id) = id.parse::<u64>() else {
            return false;
        };
        match route {
            Route::Leader { topic, partition } => {
                self.inner
                    .metadata
                    .write()
                    .note_leader(topic, partition, id, address);
                true
            }
            Route::Group(group) => {
                self.inner
                    .coordinators
                    .lock()
                    .insert(group.to_owned(), address.to_owned());
                true
            }
            Route::Any | Route::Controller => false,
        }
    }

    /// Refreshes the metadata a failed call on `route` depends on. Only an unknown topic ends the retries:
    /// other refresh failures leave the stale routes, and the next attempt reports its own error.
    async fn refresh_after_failure(&self, route: Route<'_>) -> Result<(), ClientError> {
        let result = match route {
            Route::Leader { topic, .. } => self.metadata(&[topic]).await,
            Route::Any | Route::Controller => self.metadata(&[]).await,
            Route::Group(group) => {
                // The coordinator may have moved: ask any broker again.
                self.inner.coordinators.lock().remove(group);
                self.metadata(&[]).await
            }
        };
        match result {
            Err(err @ ClientError::UnknownTopic(_)) => Err(err),
            Err(err) => {
                tracing::debug!(%err, "metadata refresh failed");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// A channel to the broker at `address`.
    pub(crate) fn channel_to(&self, address: &str) -> Result<BrokerChannel, ClientError> {
        self.inner.channels.get(address)
    }

    /// The channel a request on `route` goes to.
    async fn channel_for(&self, route: Route<'_>) -> Result<BrokerChannel, ClientError> {
        let address = match route {
            Route::Any => None,
            Route::Group(group) => self.inner.coordinators.lock().get(group).cloned(),
            Route::Controller => self
                .inner
                .metadata
                .read()
                .controller_address()
                .map(str::to_owned),
            Route::Leader { topic, partition } => {
                let partitions = self.partition_count(topic).await?;
                if partition >= partitions {
                    return Err(ClientError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition,
                        partitions,
                    });
                }
                self.inner
                    .metadata
                    .read()
                    .leader_address(topic, partition)
                    .map(str::to_owned)
            }
        };
        let address = address.unwrap_or_else(|| self.inner.preferred.lock().clone());
        self.inner.channels.get(&address)
    }

    /// Addresses to ask for metadata, best first: the broker that last answered, every known broker, then
    /// the bootstrap list (in case the whole cluster moved).
    fn refresh_candidates(&self) -> Vec<String> {
        let mut candidates = vec![self.inner.preferred.lock().clone()];
        let known = self.inner.metadata.read().broker_addresses();
        for address in known
            .into_iter()
            .chain(self.inner.bootstrap.iter().cloned())
        {
            if !candidates.contains(&address) {
                candidates.push(address);
            }
        }
        candidates
    }
}

/// Connects to one bootstrap address and asks it for all metadata; the error is the reason, as text.
async fn bootstrap_one(
    channels: &Channels,
    config: &ClientConfig,
    address: &str,
) -> Result<(BrokerChannel, MetadataResponse), String> {
    let channel = channels.connect(address).await?;
    let request = MetadataRequest { topics: vec![] };
    let mut ferry = ferry_client(channel.clone());
    let answer = ferry.metadata(request);
    match tokio::time::timeout(config.connect_timeout(), answer).await {
        Ok(Ok(response)) => Ok((channel, response.into_inner())),
        Ok(Err(status)) => Err(ClientError::from(status).to_string()),
        Err(_) => Err(format!(
            "no metadata answer within {} ms",
            config.connect_timeout_ms
        )),
    }
}

/// The id of the broker behind `channel`, if it says within the connect timeout. Best effort: it only
/// lets the client prefer the address it reached that broker at over the one the broker advertises.
async fn node_id(channel: BrokerChannel, config: &ClientConfig) -> Option<u64> {
    let mut admin = admin_client(channel);
    let answer = admin.describe_cluster(DescribeClusterRequest {});
    match tokio::time::timeout(config.connect_timeout(), answer).await {
        Ok(Ok(response)) => Some(response.into_inner().node_id),
        _ => None,
    }
}

pub(crate) fn timeout_error(timeout: Duration) -> ClientError {
    ClientError::Timeout {
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}
