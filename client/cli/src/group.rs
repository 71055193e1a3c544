//! `ferry consume --group` and `ferry group ...`: consumer groups from the command line.

use std::io::Write;

use anyhow::{Context, Result};
use ferry_client::group::{GroupConfig, GroupConsumer, StartFrom as GroupStart};
use ferry_client::v1::{CommitOffsetsRequest, PartitionOffset};
use ferry_client::{Client, OffsetSpec};

use crate::args::{ConsumeArgs, GroupCommand, OutputFormat, ResetTo, StartFrom};
use crate::json;
use crate::output::{self, Table};

/// Consumes as a group member until interrupted (SIGINT or SIGTERM) or `--max` records, then commits what it
/// printed and leaves.
pub async fn consume(client: Client, args: ConsumeArgs, format: OutputFormat) -> Result<()> {
    anyhow::ensure!(
        !args.exit_at_end && args.partition.is_none(),
        "--exit-at-end and --partition do not apply with --group (the group assigns partitions)"
    );
    let start_from = match args.from {
        StartFrom::Beginning => GroupStart::Earliest,
        StartFrom::End => GroupStart::Latest,
        StartFrom::Offset(_) => {
            anyhow::bail!(
                "--from OFFSET does not apply with --group; use `ferry group reset-offsets`"
            )
        }
    };
    let group = args.group.clone().expect("checked by the caller");
    let mut config = GroupConfig::new(group, vec![args.topic.clone()]);
    config.instance_id = args.instance_id.clone();
    config.session_timeout_ms = args.session_timeout_ms;
    config.start_from = start_from;
    let mut consumer = GroupConsumer::join(client, config).await?;
    let mut out = output::stdout();
    let mut remaining = args.max;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut result = Ok(());
    while remaining != Some(0) {
        out.flush().context("writing stdout")?;
        let next = tokio::select! {
            r = consumer.next_record() => r,
            _ = &mut interrupted => None,
            _ = terminate.recv() => None,
        };
        let Some(record) = next else { break };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        match format {
            OutputFormat::Json => output::json_line(&mut out, &json::Record::from(&record))?,
            OutputFormat::Text => {
                if args.print_key {
                    out.write_all(record.key.as_deref().unwrap_or_default())?;
                    out.write_all(b"\t")?;
                }
                out.write_all(&record.value)?;
                out.write_all(b"\n")?;
            }
        }
        if let Some(r) = &mut remaining {
            *r -= 1;
        }
    }
    out.flush().context("writing stdout")?;
    // What was printed is committed before leaving.
    consumer.close().await;
    result
}

/// Runs one `ferry group` command.
pub async fn run(client: &Client, command: GroupCommand, format: OutputFormat) -> Result<()> {
    let mut out = output::stdout();
    match command {
        GroupCommand::List => {
            for g in client.list_groups().await? {
                match format {
                    OutputFormat::Json => {
                        output::json_line(&mut out, &serde_json::json!({"group": g}))?
                    }
                    OutputFormat::Text => writeln!(out, "{g}")?,
                }
            }
        }
        GroupCommand::Describe { group } => {
            let d = describe(client, &group).await?;
            match format {
                OutputFormat::Json => output::json_line(&mut out, &d)?,
                OutputFormat::Text => write_describe(&d, &mut out)?,
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            execute,
        } => reset_offsets(client, &group, &topic, to, execute, format, &mut out).await?,
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            match format {
                OutputFormat::Json => {
                    output::json_line(&mut out, &serde_json::json!({"deleted": group}))?
                }
                OutputFormat::Text => writeln!(out, "deleted group {group}")?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn describe(client: &Client, group: &str) -> Result<json::Group> {
    let d = client.describe_group(group).await?;
    let opt = |v: i64| u64::try_from(v).ok();
    Ok(json::Group {
        group: d.group,
        state: d.state,
        generation: d.generation,
        coordinator: d.coordinator,
        members: d
            .members
            .into_iter()
            .map(|m| json::GroupMember {
                member_id: m.member_id,
                instance_id: (!m.instance_id.is_empty()).then_some(m.instance_id),
                assignment: m
                    .assignment
                    .into_iter()
                    .map(|t| json::TopicPartition {
                        topic: t.topic,
                        partition: t.partition,
                    })
                    .collect(),
            })
            .collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| json::GroupPartition {
                topic: p.topic,
                partition: p.partition,
                committed: opt(p.committed),
                end_offset: opt(p.end_offset),
                lag: opt(p.lag),
                owner: (!p.owner.is_empty()).then_some(p.owner),
            })
            .collect(),
    })
}

fn write_describe(d: &json::Group, out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "group:      {}\nstate:      {}\ngeneration: {}\nmembers:    {}\n",
        d.group,
        d.state,
        d.generation,
        d.members.len()
    )?;
    let dash = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut table = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"]);
    for p in &d.partitions {
        table.row(vec![
            p.topic.clone(),
            p.partition.to_string(),
            dash(p.committed),
            dash(p.end_offset),
            dash(p.lag),
            p.owner.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table.write(out)?;
    Ok(())
}

async fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    to: ResetTo,
    execute: bool,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<()> {
    let d = client.describe_group(group).await?;
    anyhow::ensure!(
        d.members.is_empty(),
        "group {group} has {} live members: stop them before resetting its offsets",
        d.members.len()
    );
    let partitions = client.partition_count(topic).await?;
    let mut plan = Vec::new();
    for p in 0..partitions {
        let current = d
            .partitions
            .iter()
            .find(|x| x.topic == topic && x.partition == p)
            .and_then(|x| u64::try_from(x.committed).ok());
        let spec = match to {
            ResetTo::Earliest => Some(OffsetSpec::Earliest),
            ResetTo::Latest => Some(OffsetSpec::Latest),
            ResetTo::TimestampMs(ms) => Some(OffsetSpec::Timestamp(ms)),
            ResetTo::Offset(_) => None,
        };
        let bounds = client.list_offsets(topic, p, OffsetSpec::Earliest).await?;
        let target = match (to, spec) {
            (ResetTo::Offset(o), _) => o.clamp(bounds.log_start_offset, bounds.high_watermark),
            (_, Some(spec)) => client.list_offsets(topic, p, spec).await?.offset,
            (_, None) => unreachable!("every other target has a spec"),
        };
        plan.push((p, current, target));
    }
    for (p, current, target) in &plan {
        match format {
            OutputFormat::Json => output::json_line(
                out,
                &serde_json::json!({"group": group, "topic": topic, "partition": p,
                    "current": current, "new": target, "executed": execute}),
            )?,
            OutputFormat::Text => writeln!(
                out,
                "{topic}-{p}: {} -> {target}",
                current.map_or("-".to_owned(), |c| c.to_string())
            )?,
        }
    }
    if execute {
        let request = CommitOffsetsRequest {
            group: group.to_owned(),
            member_id: String::new(),
            generation: 0,
            offsets: plan
                .iter()
                .map(|(p, _, o)| PartitionOffset {
                    topic: topic.to_owned(),
                    partition: *p,
                    offset: *o,
                })
                .collect(),
        };
        client.commit_offsets(request).await?;
        if format == OutputFormat::Text {
            writeln!(out, "offsets of group {group} on {topic} reset")?;
        }
    } else if format == OutputFormat::Text {
        writeln!(out, "(plan only: add --execute to apply it)")?;
    }
    Ok(())
}
