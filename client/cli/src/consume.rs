//! `ferry consume`: one fetch loop per partition, all running at once, feeding a single printer through a
//! bounded channel. Each loop sends its partition's records in offset order and the channel keeps that
//! order, so output is ordered within a partition (partitions interleave).
//!
//! With `--exit-at-end`, each partition's end is its high watermark when the command starts; a loop stops
//! there, dropping records past it, so the output is exactly what was committed at start.

use std::io::Write;

use anyhow::{Context, Result};
use ferry_client::{Client, ClientError, ConsumedRecord, PartitionOffsets};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::args::{ConsumeArgs, OutputFormat, StartFrom};
use crate::json;
use crate::output::{self, Out};

/// Bytes asked for per fetch.
const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Long-poll wait per fetch (milliseconds): short enough to notice the end promptly.
const FETCH_WAIT_MS: u32 = 500;
/// Fetched record vectors queued for the printer; bounds memory when stdout is slow.
const PRINT_QUEUE_LEN: usize = 16;

/// Where one partition's loop starts and, with `--exit-at-end`, stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: u32,
    pub start: u64,
    /// Stop before this offset; `None` follows the partition forever.
    pub end: Option<u64>,
}

impl PartitionPlan {
    /// The plan for a partition with these `offsets`.
    pub fn new(offsets: &PartitionOffsets, from: StartFrom, exit_at_end: bool) -> Self {
        let start = match from {
            StartFrom::Beginning => offsets.log_start_offset,
            StartFrom::End => offsets.high_watermark,
            StartFrom::Offset(offset) => offset,
        };
        PartitionPlan {
            partition: offsets.partition,
            start,
            end: exit_at_end.then_some(offsets.high_watermark),
        }
    }

    /// Whether there is nothing to read at all: the start is already at or past the end.
    pub fn done_at_start(&self) -> bool {
        self.end.is_some_and(|end| self.start >= end)
    }
}

/// Runs `ferry consume`.
pub async fn run(client: Client, args: ConsumeArgs, format: OutputFormat) -> Result<()> {
    let offsets = client.partition_offsets(&args.topic).await?;
    let selected: Vec<&PartitionOffsets> = match args.partition {
        None => offsets.iter().collect(),
        Some(partition) => match offsets.get(partition as usize) {
            Some(o) => vec![o],
            None => {
                return Err(ClientError::UnknownPartition {
                    topic: args.topic.clone(),
                    partition,
                    partitions: offsets.len() as u32,
                }
                .into())
            }
        },
    };
    let (records_tx, records_rx) = mpsc::channel(PRINT_QUEUE_LEN);
    // Dropping the set (on return) aborts loops still polling, e.g. after `--max`.
    let mut loops = JoinSet::new();
    for o in selected {
        let plan = PartitionPlan::new(o, args.from, args.exit_at_end);
        if !plan.done_at_start() {
            let follower = Follower {
                client: client.clone(),
                topic: args.topic.clone(),
                plan,
                records: records_tx.clone(),
            };
            loops.spawn(follower.run());
        }
    }
    // The printer ends when every loop has ended and dropped its sender.
    drop(records_tx);
    let printer = Printer {
        out: output::stdout(),
        format,
        print_key: args.print_key,
        remaining: args.max,
    };
    printer.run(records_rx).await
}

/// Fetches one partition and sends its records to the printer, in order.
struct Follower {
    client: Client,
    topic: String,
    plan: PartitionPlan,
    records: mpsc::Sender<Result<Vec<ConsumedRecord>>>,
}

impl Follower {
    async fn run(self) {
        if let Err(err) = self.follow().await {
            let err = err.context(format!(
                "reading partition {} of '{}'",
                self.plan.partition, self.topic
            ));
            // The printer may be gone already (it stopped at --max); nothing else to tell.
            let _ = self.records.send(Err(err)).await;
        }
    }

    async fn follow(&self) -> Result<()> {
        let partition = self.plan.partition;
        let mut offset = self.plan.start;
        loop {
            if self.plan.end.is_some_and(|end| offset >= end) {
                return Ok(());
            }
            let fetched = self
                .client
                .fetch(
                    &self.topic,
                    partition,
                    offset,
                    FETCH_BYTES_MAX,
                    FETCH_WAIT_MS,
                )
                .await;
            let fetched = match fetched {
                Ok(fetched) => fetched,
                Err(err) if err.code() == Some(tonic::Code::OutOfRange) => {
                    offset = self.skip_to_log_start(offset, err).await?;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let mut records = fetched.records;
            if let Some(end) = self.plan.end {
                records.retain(|r| r.offset < end);
            }
            offset = fetched.next_offset;
            if !records.is_empty() && self.records.send(Ok(records)).await.is_err() {
                return Ok(());
            }
        }
    }

    /// After `OUT_OF_RANGE` at `offset`: when retention removed it, continue from the first stored
    /// offset (saying so on stderr); otherwise the error stands.
    async fn skip_to_log_start(&self, offset: u64, err: ClientError) -> Result<u64> {
        let offsets = self.client.partition_offsets(&self.topic).await?;
        let log_start = offsets
            .get(self.plan.partition as usize)
            .map_or(0, |o| o.log_start_offset);
        if offset >= log_start {
            return Err(err.into());
        }
        eprintln!(
            "warning: partition {} of '{}': offsets {offset} to {} were removed by retention; \
             continuing at {log_start}",
            self.plan.partition,
            self.topic,
            log_start - 1
        );
        Ok(log_start)
    }
}

/// Writes records to stdout as they arrive.
struct Printer {
    out: Out,
    format: OutputFormat,
    print_key: bool,
    /// Records still to print under `--max`.
    remaining: Option<u64>,
}

impl Printer {
    async fn run(mut self, mut records: mpsc::Receiver<Result<Vec<ConsumedRecord>>>) -> Result<()> {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        while self.remaining != Some(0) {
            let received = match records.try_recv() {
                Ok(batch) => Some(batch),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing queued: show what was printed before waiting for more.
                    self.out.flush().context("writing stdout")?;
                    tokio::select! {
                        batch = records.recv() => batch,
                        _ = &mut interrupted => None,
                    }
                }
            };
            let Some(batch) = received else { break };
            self.print(&batch?)?;
        }
        self.out.flush().context("writing stdout")?;
        Ok(())
    }

    fn print(&mut self, records: &[ConsumedRecord]) -> Result<()> {
        for record in records {
            if self.remaining == Some(0) {
                break;
            }
            self.write(record).context("writing stdout")?;
            if let Some(remaining) = &mut self.remaining {
                *remaining -= 1;
            }
        }
        Ok(())
    }

    fn write(&mut self, record: &ConsumedRecord) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json => output::json_line(&mut self.out, &json::Record::from(record)),
            OutputFormat::Text => {
                if self.print_key {
                    self.out
                        .write_all(record.key.as_deref().unwrap_or_default())?;
                    self.out.write_all(b"\t")?;
                }
                self.out.write_all(&record.value)?;
                self.out.write_all(b"\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(log_start_offset: u64, high_watermark: u64) -> PartitionOffsets {
        PartitionOffsets {
            partition: 0,
            log_start_offset,
            high_watermark,
        }
    }

    #[test]
    fn start_positions() {
        let o = offsets(5, 20);
        assert_eq!(PartitionPlan::new(&o, StartFrom::Beginning, false).start, 5);
        assert_eq!(PartitionPlan::new(&o, StartFrom::End, false).start, 20);
        assert_eq!(PartitionPlan::new(&o, StartFrom::Offset(7), false).start, 7);
        assert_eq!(PartitionPlan::new(&o, StartFrom::End, false).end, None);
    }

    #[test]
    fn partitions_already_at_their_end_are_done() {
        let o = offsets(0, 20);
        assert!(PartitionPlan::new(&o, StartFrom::End, true).done_at_start());
        assert!(PartitionPlan::new(&o, StartFrom::Offset(25), true).done_at_start());
        assert!(!PartitionPlan::new(&o, StartFrom::Beginning, true).done_at_start());
        assert!(!PartitionPlan::new(&o, StartFrom::End, false).done_at_start());
        let empty = offsets(0, 0);
        assert!(PartitionPlan::new(&empty, StartFrom::Beginning, true).done_at_start());
    }
}
