//! Cluster views as the API shows them (`crate::views` types to `ferry.v1` messages), and the gRPC
//! [`Dialer`] through which the broker asks other brokers.

use std::collections::HashMap;

use bytes::Bytes;
use ferry_protocol::v1;
use futures::future::BoxFuture;

use crate::broker::Broker;
use crate::metadata::TopicMeta;
use crate::views::{Dialer, ForwardError, PartitionView, TopicView};

/// How long a broker waits for another broker's view of a topic (ms).
const VIEW_TIMEOUT_MS: u64 = 2_000;
/// How long a connection attempt to another broker may take (ms).
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// A topic as the API shows it: its settings from the metadata, its partitions from `view`.
pub fn topic_info(t: &TopicMeta, view: TopicView) -> v1::TopicInfo {
    v1::TopicInfo {
        name: t.name.clone(),
        partitions: t.partitions,
        replicas: t.replica_sets.first().map_or(0, |r| r.len() as u32),
        partition_info: view.partitions.into_iter().map(partition_info).collect(),
        config: Some(v1::TopicConfig {
            retention_bytes: t.settings.retention_bytes,
            retention_ms: t.settings.retention_ms,
            segment_bytes: t.settings.segment_bytes,
            segment_ms: t.settings.segment_ms,
        }),
    }
}

fn partition_info(p: PartitionView) -> v1::PartitionInfo {
    v1::PartitionInfo {
        partition: p.partition,
        leader: p.leader,
        in_sync: p.in_sync,
        replicas: p.replicas,
        high_watermark: p.high_watermark,
        log_start_offset: p.log_start_offset,
        error: p.error,
    }
}

fn partition_view(p: v1::PartitionInfo) -> PartitionView {
    PartitionView {
        partition: p.partition,
        leader: p.leader,
        in_sync: p.in_sync,
        replicas: p.replicas,
        high_watermark: p.high_watermark,
        log_start_offset: p.log_start_offset,
        error: p.error,
    }
}

/// The brokers clients can use: every registered broker (this one at least), and whether it is reachable
/// from here.
pub fn brokers(b: &Broker) -> Vec<v1::BrokerInfo> {
    let meta = b.metadata();
    let mut known = meta.brokers.clone();
    if meta.members.is_empty() || meta.members.contains_key(&b.config.node_id) {
        known
            .entry(b.config.node_id)
            .or_insert_with(|| b.config.advertise.clone());
    }
    // Members that have not registered a client address yet are listed too (without one).
    for id in meta.members.keys() {
        known.entry(*id).or_default();
    }
    let voters = b.controller().membership().voters;
    known
        .into_iter()
        .filter(|(id, _)| meta.members.is_empty() || meta.members.contains_key(id))
        .map(|(id, address)| {
            let member = meta.members.get(&id);
            let state = match member {
                Some(m) if m.leaving => "leaving",
                Some(_) if !voters.contains(&id) => "joining",
                _ => "active",
            };
            v1::BrokerInfo {
                id,
                address,
                up: b.is_up(id),
                state: state.to_owned(),
                peer_address: member.map(|m| m.peer_address.clone()).unwrap_or_default(),
                replicas: meta.replicas_on(id) as u32,
            }
        })
        .collect()
}

/// Partitions whose replicas are being moved.
pub fn moving_partitions(b: &Broker) -> u32 {
    let meta = b.metadata();
    meta.topics
        .values()
        .map(|t| (0..t.partitions).filter(|p| t.moving(*p)).count() as u32)
        .sum()
}

/// Asks other brokers over gRPC: one lazily connected channel per address, reused (not a new connection
/// per request: L7 in the durability audit).
#[derive(Debug, Default)]
pub struct GrpcDialer {
    channels: parking_lot::Mutex<HashMap<String, tonic::transport::Channel>>,
}

impl GrpcDialer {
    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad broker address {addr}: {e}"))?
            .connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true);
        let c = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}

impl Dialer for GrpcDialer {
    fn local_view(&self, addr: String, name: String) -> BoxFuture<'_, Option<TopicView>> {
        Box::pin(async move {
            let channel = self.channel(&addr).ok()?;
            let ask = async {
                let mut c = v1::admin_client::AdminClient::new(channel);
                let req = v1::DescribeTopicRequest {
                    name,
                    local_only: true,
                };
                c.describe_topic(req)
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            };
            let info = tokio::time::timeout(std::time::Duration::from_millis(VIEW_TIMEOUT_MS), ask)
                .await
                .ok()
                .flatten()?;
            Some(TopicView {
                name: info.name,
                partitions: info
                    .partition_info
                    .into_iter()
                    .map(partition_view)
                    .collect(),
            })
        })
    }

    fn forward(&self, addr: String, batch: Bytes) -> BoxFuture<'_, Result<u64, ForwardError>> {
        Box::pin(async move {
            let channel = self.channel(&addr).map_err(ForwardError::Refused)?;
            let mut client = v1::peer_client::PeerClient::new(channel);
            let req = v1::ForwardRequest { command: batch };
            match client.forward(req).await {
                Ok(r) => Ok(r.into_inner().base_offset),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    Err(ForwardError::Unreachable(s.message().to_owned()))
                }
                Err(s) => Err(ForwardError::Refused(s.message().to_owned())),
            }
        })
    }
}
