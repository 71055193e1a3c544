//! `ferry cluster health`: whether every partition has a leader and all its replicas in sync, every
//! registered broker is up and the controller has a leader. Exit status 10 when not (scripts and alerts
//! branch on it; 1 stays "the command failed").

use std::io::Write;

use anyhow::Result;
use ferry_client::Client;
use serde::Serialize;

use crate::args::OutputFormat;
use crate::output;

/// The exit status of an unhealthy cluster.
pub const UNHEALTHY_EXIT: u8 = 10;

/// Returned when the cluster is unhealthy, after the report was printed.
#[derive(Debug, thiserror::Error)]
#[error("the cluster is unhealthy")]
pub struct Unhealthy;

/// `ferry cluster health -o json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// Broker id of the controller's leader; null when there is none.
    pub controller: Option<u64>,
    pub brokers_down: Vec<u64>,
    pub leaderless: Vec<Partition>,
    pub under_replicated: Vec<UnderReplicated>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Partition {
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UnderReplicated {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<u64>,
    pub in_sync: Vec<u64>,
}

pub async fn run(client: &Client, format: OutputFormat) -> Result<()> {
    let cluster = client.describe_cluster().await?;
    let metadata = client.metadata(&[]).await?;
    let mut topics = Vec::with_capacity(metadata.topics.len());
    for t in &metadata.topics {
        // Describe asks each partition's leader who is in sync.
        topics.push(client.describe_topic(&t.name).await?);
    }
    let health = judge(&cluster, &topics);
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(&mut out, &health)?,
        OutputFormat::Text => write_text(&health, &mut out)?,
    }
    out.flush()?;
    if health.healthy {
        Ok(())
    } else {
        Err(Unhealthy.into())
    }
}

fn judge(
    cluster: &ferry_client::v1::DescribeClusterResponse,
    topics: &[ferry_client::v1::TopicInfo],
) -> Health {
    let brokers_down: Vec<u64> = cluster
        .brokers
        .iter()
        .filter(|b| !b.up)
        .map(|b| b.id)
        .collect();
    let mut leaderless = Vec::new();
    let mut under_replicated = Vec::new();
    for t in topics {
        for p in 0..t.partitions {
            let info = t.partition_info.iter().find(|i| i.partition == p);
            match info {
                Some(i) if i.leader != 0 => {
                    // A caught-up replica on a broker that is down is not in sync, whatever its leader
                    // last saw (an idle partition's follower stays caught up).
                    let in_sync: Vec<u64> = i
                        .in_sync
                        .iter()
                        .copied()
                        .filter(|id| !brokers_down.contains(id))
                        .collect();
                    if in_sync.len() < i.replicas.len() {
                        under_replicated.push(UnderReplicated {
                            topic: t.name.clone(),
                            partition: p,
                            replicas: i.replicas.clone(),
                            in_sync,
                        });
                    }
                }
                _ => leaderless.push(Partition {
                    topic: t.name.clone(),
                    partition: p,
                }),
            }
        }
    }
    let controller = (cluster.controller != 0).then_some(cluster.controller);
    Health {
        healthy: controller.is_some()
            && brokers_down.is_empty()
            && leaderless.is_empty()
            && under_replicated.is_empty(),
        controller,
        brokers_down,
        leaderless,
        under_replicated,
    }
}

fn write_text(h: &Health, out: &mut impl Write) -> Result<()> {
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    writeln!(out, "{}", if h.healthy { "healthy" } else { "unhealthy" })?;
    if h.controller.is_none() {
        writeln!(out, "controller: no leader")?;
    }
    if !h.brokers_down.is_empty() {
        writeln!(out, "brokers down: {}", ids(&h.brokers_down))?;
    }
    for p in &h.leaderless {
        writeln!(out, "leaderless: {}-{}", p.topic, p.partition)?;
    }
    for p in &h.under_replicated {
        writeln!(
            out,
            "under-replicated: {}-{} replicas={} in_sync={}",
            p.topic,
            p.partition,
            ids(&p.replicas),
            ids(&p.in_sync)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::v1::{BrokerInfo, DescribeClusterResponse, PartitionInfo, TopicInfo};

    fn cluster(down: &[u64], controller: u64) -> DescribeClusterResponse {
        DescribeClusterResponse {
            brokers: (1..=3)
                .map(|id| BrokerInfo {
                    id,
                    up: !down.contains(&id),
                    ..Default::default()
                })
                .collect(),
            controller,
            ..Default::default()
        }
    }

    fn topic(parts: Vec<PartitionInfo>, count: u32) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            partitions: count,
            partition_info: parts,
            ..Default::default()
        }
    }

    fn part(partition: u32, leader: u64, in_sync: &[u64]) -> PartitionInfo {
        PartitionInfo {
            partition,
            leader,
            replicas: vec![1, 2, 3],
            in_sync: in_sync.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn healthy_only_with_every_leader_every_replica_and_every_broker() {
        let ok = judge(&cluster(&[], 1), &[topic(vec![part(0, 1, &[1, 2, 3])], 1)]);
        assert!(ok.healthy);
        let h = judge(
            &cluster(&[3], 1),
            &[topic(vec![part(0, 1, &[1, 2]), part(1, 0, &[])], 3)],
        );
        assert!(!h.healthy);
        assert_eq!(h.brokers_down, vec![3]);
        assert_eq!(h.under_replicated.len(), 1);
        // Partition 1 has no leader; partition 2 was not described at all: leaderless too.
        assert_eq!(
            h.leaderless.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(
            !judge(&cluster(&[], 0), &[]).healthy,
            "no controller leader"
        );
    }
}
