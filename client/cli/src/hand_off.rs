//! `ferry cluster hand-off`: moves every partition leadership of the answering broker (the one `--bootstrap`
//! names first; in a pod, `127.0.0.1:7400`) to an in-sync replica on a broker that is up, within a time
//! bound. The StatefulSet's preStop hook runs it, so clients see a redirect, not an election timeout, when
//! the pod stops; ferryd hands off again on SIGTERM for whatever is left.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_client::Client;

use crate::args::OutputFormat;
use crate::output;

pub async fn run(client: &Client, timeout: Duration, format: OutputFormat) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let cluster = client.describe_cluster().await?;
    let me = cluster.node_id;
    let up: Vec<u64> = cluster
        .brokers
        .iter()
        .filter(|b| b.up)
        .map(|b| b.id)
        .collect();
    let metadata = client.metadata(&[]).await?;
    let (mut moved, mut stayed) = (0u32, Vec::new());
    for t in &metadata.topics {
        let info = client.describe_topic(&t.name).await?;
        for p in info.partition_info.iter().filter(|p| p.leader == me) {
            let name = format!("{}-{}", t.name, p.partition);
            let Some(to) = p
                .in_sync
                .iter()
                .copied()
                .find(|id| *id != me && up.contains(id))
            else {
                stayed.push(name);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client.transfer_leader(&t.name, p.partition, to)).await
            {
                Ok(Ok(leader)) if leader != me => moved += 1,
                Ok(_) => stayed.push(name),
                Err(_) => {
                    stayed.push(name);
                    break;
                }
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(
            &mut out,
            &serde_json::json!({"broker": me, "moved": moved, "stayed": stayed}),
        )?,
        OutputFormat::Text => {
            writeln!(out, "broker {me}: handed off {moved} partition leaderships")?;
            if !stayed.is_empty() {
                writeln!(
                    out,
                    "still led here (no in-sync replica elsewhere, or out of time): {}",
                    stayed.join(",")
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
