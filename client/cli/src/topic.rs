//! `ferry topic create|list|describe|delete`.

use std::io::Write;

use anyhow::Result;
use ferry_client::v1::{TopicConfig, TopicInfo};
use ferry_client::Client;

use crate::args::{CreateArgs, OutputFormat, TopicCommand};
use crate::json;
use crate::output::{self, Table};

/// Runs one topic command.
pub async fn run(client: &Client, command: TopicCommand, format: OutputFormat) -> Result<()> {
    let mut out = output::stdout();
    match command {
        TopicCommand::Create(args) => create(client, args, format, &mut out).await?,
        TopicCommand::List => list(client, format, &mut out).await?,
        TopicCommand::Describe { name } => {
            let info = client.describe_topic(&name).await?;
            write_topic(&info, format, &mut out)?;
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            match format {
                OutputFormat::Text => writeln!(out, "deleted topic {name}")?,
                OutputFormat::Json => {
                    output::json_line(&mut out, &json::Deleted { deleted: &name })?
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn create(
    client: &Client,
    args: CreateArgs,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<()> {
    let config = TopicConfig {
        retention_bytes: args.retention_bytes.unwrap_or(0),
        retention_ms: args.retention_ms.unwrap_or(0),
        segment_bytes: args.segment_bytes.unwrap_or(0),
        segment_ms: args.segment_ms.unwrap_or(0),
    };
    let info = client
        .create_topic_with_config(
            &args.name,
            args.partitions,
            args.replicas.unwrap_or(0),
            config,
        )
        .await?;
    match format {
        OutputFormat::Text => writeln!(
            out,
            "created topic {}: {} partitions, replication factor {}",
            info.name, info.partitions, info.replicas
        )?,
        OutputFormat::Json => output::json_line(out, &json::Topic::from(&info))?,
    }
    Ok(())
}

async fn list(client: &Client, format: OutputFormat, out: &mut impl Write) -> Result<()> {
    let mut topics = client.list_topics().await?;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    match format {
        OutputFormat::Text => {
            let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
            for t in &topics {
                table.row(vec![
                    t.name.clone(),
                    t.partitions.to_string(),
                    t.replicas.to_string(),
                ]);
            }
            table.write(out)?;
        }
        OutputFormat::Json => {
            for t in &topics {
                output::json_line(out, &json::TopicSummary::from(t))?;
            }
        }
    }
    Ok(())
}

fn write_topic(info: &TopicInfo, format: OutputFormat, out: &mut impl Write) -> Result<()> {
    let shape = json::Topic::from(info);
    if format == OutputFormat::Json {
        output::json_line(out, &shape)?;
        return Ok(());
    }
    let setting = |v: u64| {
        if v == 0 {
            "default".to_owned()
        } else if v == crate::args::FOREVER {
            "forever".to_owned()
        } else {
            v.to_string()
        }
    };
    writeln!(out, "topic:      {}", shape.name)?;
    writeln!(out, "partitions: {}", shape.partitions)?;
    writeln!(out, "replicas:   {}", shape.replicas)?;
    let c = &shape.config;
    writeln!(
        out,
        "config:     retention_bytes={} retention_ms={} segment_bytes={} segment_ms={}",
        setting(c.retention_bytes),
        setting(c.retention_ms),
        setting(c.segment_bytes),
        setting(c.segment_ms)
    )?;
    writeln!(out)?;
    let ids = |ids: &[u64]| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        if ids.is_empty() {
            "-".to_owned()
        } else {
            ids.join(",")
        }
    };
    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "IN_SYNC",
        "HIGH_WATERMARK",
        "LOG_START",
        "ERROR",
    ]);
    for p in &shape.partition_info {
        table.row(vec![
            p.partition.to_string(),
            p.leader
                .map_or_else(|| "none".to_owned(), |l| l.to_string()),
            ids(p.replicas),
            ids(p.in_sync),
            p.high_watermark.to_string(),
            p.log_start_offset.to_string(),
            p.error.unwrap_or("-").to_owned(),
        ]);
    }
    table.write(out)?;
    Ok(())
}
