//! Cluster views as the API shows them: `crate::views` types to `ferry.v1` messages and back, the broker
//! list, partitions being moved.

use ferry_protocol::v1;

use crate::broker::Broker;
use crate::metadata::TopicMeta;
use crate::views::{PartitionView, TopicView};

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

pub(super) fn partition_view(p: v1::PartitionInfo) -> PartitionView {
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

/// The brokers clients can use: every registered broker (this one at least), with its address on the
/// client listener `listener` (`None`: the main one), and whether it is reachable from here.
pub fn brokers(b: &Broker, listener: Option<&str>) -> Vec<v1::BrokerInfo> {
    let meta = b.metadata();
    let mut known = meta.brokers.clone();
    if let Some(name) = listener {
        for (id, address) in known.iter_mut() {
            if let Some(a) = meta.listeners.get(id).and_then(|l| l.get(name)) {
                address.clone_from(a);
            }
        }
    }
    let own = listener.and_then(|name| b.config.listener_advertise.get(name));
    if meta.members.is_empty() || meta.members.contains_key(&b.config.node_id) {
        known
            .entry(b.config.node_id)
            .or_insert_with(|| own.unwrap_or(&b.config.advertise).clone());
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
