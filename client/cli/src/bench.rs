//! `ferry bench produce`: a load generator over the real producer. It reports throughput and the
//! acknowledgement latency of each message (from the moment `send` accepted it to its acknowledgement).
//! `ferry bench consume`: reads what a topic stores, whole batches from every partition at once.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use ferry_client::{Client, Delivery, Producer, ProducerConfig, ProducerRecord};
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;

use crate::args::{BenchCommand, BenchConsumeArgs, BenchProduceArgs, OutputFormat};
use crate::json;
use crate::output;
use crate::produce::Tally;

/// Partitions `bench consume` reads at once.
const CONSUME_PARTITIONS_IN_FLIGHT_MAX: usize = 64;

/// Longest latency the histogram records (microseconds); longer ones are clamped to it.
const LATENCY_US_MAX: u64 = 60_000_000;

/// Runs one bench command.
pub async fn run(client: Client, command: BenchCommand, format: OutputFormat) -> Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(client, args, format).await,
        BenchCommand::Consume(args) => consume(client, args, format).await,
    }
}

async fn produce(client: Client, args: BenchProduceArgs, format: OutputFormat) -> Result<()> {
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let partitions = client.partition_count(&args.topic).await?;
    if partitions == 0 {
        bail!("topic {} has no partitions", args.topic);
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        linger_ms: args.linger_ms,
        batch_bytes_max: args.batch_bytes,
        compression: args.compression.into(),
        in_flight_per_partition_max: args.in_flight,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    // One payload for every message, as Kafka's producer-perf-test does. Static, so cloning it per message
    // touches no reference count: a shared one is one cache line the sending thread and the producer task
    // both write for every message (about 5% of the client's CPU at 1 KiB). Leaked once per run; the CLI
    // exits after it.
    let value = Bytes::from_static(Box::leak(vec![b'x'; args.size].into_boxed_slice()));
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let mut tally = Tally::default();
    // The bench spreads messages over the partitions itself (round robin, as the producer would), so it
    // knows each message's partition: a partition's acknowledgements come in send order (but for requests
    // that race, when a later one is seen with the one before it), so its messages wait in a queue of their
    // own and only the oldest is polled, when the round robin comes back to it. That costs no task or
    // allocation per message, which a set of futures polled in any order would (the bench must not be the
    // limit), and delays seeing an acknowledgement by at most one round of sends.
    let queues = match args.partition {
        Some(_) => 1,
        None => partitions,
    };
    let mut waiting: Vec<VecDeque<(Delivery, Instant)>> =
        (0..queues).map(|_| VecDeque::new()).collect();
    let started = Instant::now();
    for i in 0..args.messages {
        let queue = (i % u64::from(queues)) as usize;
        let partition = args.partition.unwrap_or(queue as u32);
        let record = ProducerRecord {
            partition: Some(partition),
            ..ProducerRecord::new(args.topic.clone(), value.clone())
        };
        if args.sync {
            // One in flight: latency counts from the call to the acknowledgement.
            let before_send = Instant::now();
            // No flush: the producer as configured decides when the batch goes (at once with no linger).
            let result = producer.send(record).await.await;
            note(&mut tally, &mut latency_us, result, before_send.elapsed());
            tally.sent += 1;
            continue;
        }
        let delivery = producer.send(record).await;
        // Latency counts from acceptance.
        waiting[queue].push_back((delivery, Instant::now()));
        tally.sent += 1;
        drain_ready(&mut waiting[queue], &mut tally, &mut latency_us);
    }
    producer.flush().await;
    for queue in &mut waiting {
        while let Some((delivery, accepted)) = queue.pop_front() {
            let result = delivery.await;
            note(&mut tally, &mut latency_us, result, accepted.elapsed());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    producer.close().await;
    let bytes = args.messages * args.size as u64;
    let ms = |us: u64| us as f64 / 1000.0;
    let report = json::BenchReport {
        messages: args.messages,
        failed: tally.failed,
        bytes,
        seconds,
        messages_per_sec: args.messages as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / (1024.0 * 1024.0),
        latency_ms: json::Latency {
            p50: ms(latency_us.value_at_quantile(0.50)),
            p99: ms(latency_us.value_at_quantile(0.99)),
            max: ms(latency_us.max()),
        },
    };
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(&mut out, &report)?,
        OutputFormat::Text => writeln!(
            out,
            "{} messages of {} bytes in {:.2} s: {:.0} msg/s, {:.1} MiB/s; \
             ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            report.messages,
            args.size,
            report.seconds,
            report.messages_per_sec,
            report.mb_per_sec,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.latency_ms.max
        )?,
    }
    out.flush()?;
    tally.check()
}

/// Takes the acknowledged messages at the front of a partition's queue, reading the clock once for all.
fn drain_ready(
    queue: &mut VecDeque<(Delivery, Instant)>,
    tally: &mut Tally,
    latency_us: &mut Histogram<u64>,
) {
    let mut now = None;
    while let Some((delivery, accepted)) = queue.front_mut() {
        let Some(result) = delivery.now_or_never() else {
            return;
        };
        let now = *now.get_or_insert_with(Instant::now);
        note(
            tally,
            latency_us,
            result,
            now.saturating_duration_since(*accepted),
        );
        queue.pop_front();
    }
}

fn note(
    tally: &mut Tally,
    latency_us: &mut Histogram<u64>,
    result: ferry_client::DeliveryResult,
    waited: Duration,
) {
    if result.is_ok() {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }
    tally.record(result);
}

async fn consume(client: Client, args: BenchConsumeArgs, format: OutputFormat) -> Result<()> {
    if args.fetch_bytes == 0 || args.fetch_bytes > ferry_protocol::limits::FETCH_BYTES_MAX {
        bail!(
            "--fetch-bytes must be 1 to {}",
            ferry_protocol::limits::FETCH_BYTES_MAX
        );
    }
    let bounds = client.partition_offsets(&args.topic).await?;
    let stored: u64 = bounds
        .iter()
        .map(|b| b.high_watermark - b.log_start_offset)
        .sum();
    let wanted = args.messages.unwrap_or(stored).min(stored);
    // Every partition reads from its start to the end it had when the run started, until all partitions
    // together have read `wanted`.
    let read = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<Result<u64, ferry_client::ClientError>> = futures::stream::iter(&bounds)
        .map(|b| {
            let (client, topic, read) = (&client, &args.topic, &read);
            async move {
                use std::sync::atomic::Ordering::Relaxed;
                let (mut offset, mut bytes) = (b.log_start_offset, 0u64);
                while offset < b.high_watermark && read.load(Relaxed) < wanted {
                    let f = client
                        .fetch_batches(topic, b.partition, offset, args.fetch_bytes, 0)
                        .await?;
                    if f.next_offset <= offset {
                        break; // retention moved the start past what was asked, or nothing is there
                    }
                    read.fetch_add(f.record_count, Relaxed);
                    bytes += f.batches.iter().map(|x| x.len() as u64).sum::<u64>();
                    offset = f.next_offset;
                }
                Ok(bytes)
            }
        })
        .buffer_unordered(CONSUME_PARTITIONS_IN_FLIGHT_MAX)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut bytes = 0u64;
    for r in results {
        bytes += r?;
    }
    let messages = read.into_inner();
    let report = json::BenchConsumeReport {
        messages,
        bytes,
        partitions: bounds.len() as u32,
        seconds,
        messages_per_sec: messages as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / (1024.0 * 1024.0),
    };
    let mut out = output::stdout();
    match format {
        OutputFormat::Json => output::json_line(&mut out, &report)?,
        OutputFormat::Text => writeln!(
            out,
            "{} messages ({} bytes stored) from {} partitions in {:.2} s: {:.0} msg/s, {:.1} MiB/s",
            report.messages,
            report.bytes,
            report.partitions,
            report.seconds,
            report.messages_per_sec,
            report.mb_per_sec
        )?,
    }
    out.flush()?;
    Ok(())
}
