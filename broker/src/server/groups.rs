//! The consumer-group RPCs of `ferry.v1.Ferry`, mapped onto the broker's coordinator.

use std::collections::BTreeSet;

use ferry_protocol::v1;
use tonic::Status;

use super::via::Via;
use crate::broker::Broker;
use crate::groups::assign::{Assignor, Tp};
use crate::groups::state::Beat;

fn tps(list: &[v1::TopicPartition]) -> BTreeSet<Tp> {
    list.iter()
        .map(|t| (t.topic.clone(), t.partition))
        .collect()
}

fn to_proto(set: &BTreeSet<Tp>) -> Vec<v1::TopicPartition> {
    set.iter()
        .map(|(topic, partition)| v1::TopicPartition {
            topic: topic.clone(),
            partition: *partition,
        })
        .collect()
}

pub async fn heartbeat(
    b: &Broker,
    via: &Via,
    r: v1::GroupHeartbeatRequest,
) -> Result<v1::GroupHeartbeatResponse, Status> {
    let assignor = Assignor::parse(&r.assignor).map_err(Status::invalid_argument)?;
    if r.member_id.is_empty() && r.topics.is_empty() && !r.leave {
        return Err(Status::invalid_argument(
            "a joining member names its topics",
        ));
    }
    let beat = Beat {
        member_id: r.member_id,
        instance_id: (!r.instance_id.is_empty()).then_some(r.instance_id),
        topics: r.topics.into_iter().collect(),
        session_ms: u64::from(r.session_timeout_ms),
        owned: tps(&r.owned),
        leave: r.leave,
        assignor,
    };
    let a = b
        .group_heartbeat(&r.group, beat)
        .await
        .map_err(|e| via.status(b, e))?;
    Ok(v1::GroupHeartbeatResponse {
        member_id: a.member_id,
        generation: a.generation,
        assignment: to_proto(&a.assignment),
        heartbeat_interval_ms: crate::groups::limits::HEARTBEAT_INTERVAL_MS,
        committed: a
            .committed
            .into_iter()
            .map(|((topic, partition), offset)| v1::PartitionOffset {
                topic,
                partition,
                offset,
            })
            .collect(),
    })
}

pub async fn commit(
    b: &Broker,
    via: &Via,
    r: v1::CommitOffsetsRequest,
) -> Result<v1::CommitOffsetsResponse, Status> {
    let offsets = r
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect();
    b.commit_offsets(&r.group, &r.member_id, r.generation, offsets)
        .await
        .map_err(|e| via.status(b, e))?;
    Ok(v1::CommitOffsetsResponse {})
}

pub async fn describe(
    b: &Broker,
    via: &Via,
    r: v1::DescribeGroupRequest,
) -> Result<v1::DescribeGroupResponse, Status> {
    let g = b
        .group_snapshot(&r.group)
        .await
        .map_err(|e| via.status(b, e))?;
    // Every partition of the subscribed topics, plus any with a committed offset.
    let mut parts: BTreeSet<Tp> = g.committed.keys().cloned().collect();
    let topics: BTreeSet<String> = g
        .members
        .values()
        .flat_map(|m| m.topics.iter().cloned())
        .chain(parts.iter().map(|(t, _)| t.clone()))
        .collect();
    let mut ends: std::collections::HashMap<Tp, (i64, u64)> = Default::default();
    for t in &topics {
        let Ok(meta) = b.topic(t) else { continue };
        for p in b.cluster_view(&meta, true).await.partitions {
            let known = p.leader != 0 && p.error.is_empty();
            let end = if known { p.high_watermark as i64 } else { -1 };
            ends.insert((t.clone(), p.partition), (end, p.log_start_offset));
            if g.members.values().any(|m| m.topics.contains(t)) {
                parts.insert((t.clone(), p.partition));
            }
        }
    }
    let owner = |tp: &Tp| {
        g.members
            .iter()
            .find(|(_, m)| m.owned.contains(tp))
            .map(|(id, _)| id.clone())
            .unwrap_or_default()
    };
    let partitions = parts
        .iter()
        .map(|tp| {
            let committed = g.committed.get(tp).map_or(-1, |o| *o as i64);
            let (end, start) = ends.get(tp).copied().unwrap_or((-1, 0));
            let from = if committed >= 0 {
                committed
            } else {
                start as i64
            };
            let lag = if end >= 0 { (end - from).max(0) } else { -1 };
            v1::GroupPartition {
                topic: tp.0.clone(),
                partition: tp.1,
                committed,
                end_offset: end,
                lag,
                owner: owner(tp),
            }
        })
        .collect();
    let state = if g.members.is_empty() {
        "empty"
    } else if g.rebalancing() {
        "rebalancing"
    } else {
        "stable"
    };
    Ok(v1::DescribeGroupResponse {
        group: g.name.clone(),
        state: state.to_owned(),
        generation: g.generation,
        members: g
            .members
            .iter()
            .map(|(id, m)| v1::GroupMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone().unwrap_or_default(),
                assignment: to_proto(&m.target),
                owned: to_proto(&m.owned),
            })
            .collect(),
        partitions,
        coordinator: b.config.node_id,
    })
}

pub async fn list(b: &Broker, via: &Via) -> Result<v1::ListGroupsResponse, Status> {
    let groups = b.list_groups().await.map_err(|e| via.status(b, e))?;
    Ok(v1::ListGroupsResponse { groups })
}

pub async fn delete(
    b: &Broker,
    via: &Via,
    r: v1::DeleteGroupRequest,
) -> Result<v1::DeleteGroupResponse, Status> {
    b.delete_group(&r.group)
        .await
        .map_err(|e| via.status(b, e))?;
    Ok(v1::DeleteGroupResponse {})
}
