//! `ferry cluster status`: the brokers as the answering broker sees them, with the number of partitions
//! each leads counted from the cluster metadata.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use ferry_client::v1::MetadataResponse;
use ferry_client::Client;

use crate::args::{ClusterCommand, OutputFormat};
use crate::json;
use crate::output::{self, Table};

/// Runs one cluster command.
pub async fn run(client: &Client, command: ClusterCommand, format: OutputFormat) -> Result<()> {
    match command {
        ClusterCommand::Status => status(client, format).await,
        ClusterCommand::Health => crate::health::run(client, format).await,
        ClusterCommand::HandOff { timeout_secs } => {
            crate::hand_off::run(client, std::time::Duration::from_secs(timeout_secs), format).await
        }
        ClusterCommand::TransferLeader {
            topic,
            partition,
            to,
        } => {
            let leader = client.transfer_leader(&topic, partition, to).await?;
            anyhow::ensure!(
                leader == to,
                "partition {topic}-{partition} is still led by broker {leader}: broker {to} did not take over in time"
            );
            let mut out = output::stdout();
            match format {
                OutputFormat::Json => output::json_line(
                    &mut out,
                    &serde_json::json!({"topic": topic, "partition": partition, "leader": leader}),
                )?,
                OutputFormat::Text => writeln!(
                    out,
                    "partition {topic}-{partition} is now led by broker {leader}"
                )?,
            }
            out.flush()?;
            Ok(())
        }
        ClusterCommand::AddBroker { id, peer_address } => {
            client.add_broker(id, &peer_address).await?;
            done(
                format,
                serde_json::json!({"added": id, "peer_address": peer_address}),
                &format!("broker {id} added; partitions move to it once it is up (see `ferry cluster status`)"),
            )
        }
        ClusterCommand::RemoveBroker { id } => {
            client.remove_broker(id).await?;
            done(
                format,
                serde_json::json!({"removed": id}),
                &format!("broker {id} is leaving; stop it once `ferry cluster status` no longer lists it"),
            )
        }
    }
}

fn done(format: OutputFormat, json: serde_json::Value, text: &str) -> Result<()> {
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(&mut out, &json)?,
        OutputFormat::Text => writeln!(out, "{text}")?,
    }
    out.flush()?;
    Ok(())
}

async fn status(client: &Client, format: OutputFormat) -> Result<()> {
    let cluster = client.describe_cluster().await?;
    let metadata = client.metadata(&[]).await?;
    let (leaders, leaderless_partitions) = leader_counts(&metadata);
    let mut brokers: Vec<json::Broker> = cluster
        .brokers
        .iter()
        .map(|b| json::Broker {
            id: b.id,
            address: b.address.clone(),
            up: b.up,
            leaders: leaders.get(&b.id).copied().unwrap_or(0),
            state: if b.state.is_empty() {
                "active".to_owned()
            } else {
                b.state.clone()
            },
            peer_address: b.peer_address.clone(),
            replicas: b.replicas,
        })
        .collect();
    brokers.sort_by_key(|b| b.id);
    let shape = json::Cluster {
        controller: (cluster.controller != 0).then_some(cluster.controller),
        node_id: cluster.node_id,
        brokers,
        leaderless_partitions,
        moving_partitions: cluster.moving_partitions,
    };
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(&mut out, &shape)?,
        OutputFormat::Text => write_text(&shape, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

/// Partitions led by each broker id, and partitions with no leader, over all topics.
fn leader_counts(metadata: &MetadataResponse) -> (BTreeMap<u64, u64>, u64) {
    let mut leaders = BTreeMap::new();
    let mut leaderless = 0;
    for topic in &metadata.topics {
        let mut seen = vec![false; topic.partitions as usize];
        for p in &topic.partition_info {
            if let Some(slot) = seen.get_mut(p.partition as usize) {
                *slot = true;
            }
            if p.leader == 0 {
                leaderless += 1;
            } else {
                *leaders.entry(p.leader).or_insert(0) += 1;
            }
        }
        // Partitions the broker did not describe have no known leader either.
        leaderless += seen.iter().filter(|s| !**s).count() as u64;
    }
    (leaders, leaderless)
}

fn write_text(shape: &json::Cluster, out: &mut impl Write) -> Result<()> {
    let mut table = Table::new(&[
        "ID", "ADDRESS", "STATUS", "STATE", "REPLICAS", "LEADERS", "ROLE",
    ]);
    for b in &shape.brokers {
        let mut role = Vec::new();
        if shape.controller == Some(b.id) {
            role.push("controller");
        }
        if shape.node_id == b.id {
            role.push("answered");
        }
        table.row(vec![
            b.id.to_string(),
            b.address.clone(),
            if b.up { "up" } else { "down" }.to_owned(),
            b.state.clone(),
            b.replicas.to_string(),
            b.leaders.to_string(),
            if role.is_empty() {
                "-".to_owned()
            } else {
                role.join(",")
            },
        ]);
    }
    table.write(out)?;
    if shape.moving_partitions > 0 {
        writeln!(
            out,
            "\n{} partitions are moving between brokers",
            shape.moving_partitions
        )?;
    }
    if shape.leaderless_partitions > 0 {
        writeln!(
            out,
            "\n{} partitions have no leader",
            shape.leaderless_partitions
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::v1::{PartitionInfo, TopicInfo};

    #[test]
    fn counts_leaders_and_leaderless_partitions() {
        let p = |partition, leader| PartitionInfo {
            partition,
            leader,
            ..Default::default()
        };
        let metadata = MetadataResponse {
            topics: vec![TopicInfo {
                name: "t".into(),
                partitions: 4,
                partition_info: vec![p(0, 1), p(1, 2), p(2, 1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (leaders, leaderless) = leader_counts(&metadata);
        assert_eq!(leaders.get(&1), Some(&2));
        assert_eq!(leaders.get(&2), Some(&1));
        assert_eq!(leaderless, 1);
    }
}
