//! [`Producer`]: the batching publisher. A handle places each record on a partition, waits for room under
//! the in-flight byte limit (the backpressure), and appends it to the partition's open batch in the
//! accumulator it shares with the background task ([`producer_task`](crate::producer_task)), which seals
//! and publishes batches. Each send returns a [`Delivery`] that resolves when the record is acknowledged.
//!
//! Ordering: records sent to one partition from one handle are stored in send order. An idempotent
//! producer keeps up to `in_flight_per_partition_max` batches of a partition in flight; their sequence
//! numbers make the broker store them in send order whatever order they arrive in (one ahead of its
//! sequence waits for the ones before it), and after a batch fails for good no new batch goes until every
//! batch in flight is done (they then go under a new producer id). Without idempotence a partition has one
//! batch in flight at a time; a failed batch fails its records (after the client's retries) and later
//! batches still go, as in Kafka without idempotence.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::limits::BATCH_BYTES_HARD_MAX;
use ferry_protocol::v1::Acks;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::accumulator::{record_bytes_max, record_size, Accumulator, PendingRecord};
use crate::client::Client;
use crate::delivery::Delivery;
use crate::error::ClientError;
use crate::partitioner::Partitioner;
use crate::producer_task::{now_ms, Command, ProducerTask, Shared};
use crate::record::ProducerRecord;

/// Default linger: how long a batch waits for more records after its first (milliseconds). None: a batch
/// goes at the end of the producer task's turn when its partition has nothing queued or in flight, and
/// grows while it has (natural batching), so a lone publish never waits for a timer and a stream of them
/// still makes batches as large as the round trip allows.
pub const LINGER_MS_DEFAULT: u64 = 0;
/// Longest linger accepted (milliseconds).
pub const LINGER_MS_MAX: u64 = 60_000;
/// Default largest batch (bytes).
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Smallest `batch_bytes_max` accepted (bytes): below this, batching stops paying off.
pub const BATCH_BYTES_MAX_MIN: usize = 1024;
/// Default bound on an idempotent producer's batches in flight per partition (Kafka's default too).
pub const IN_FLIGHT_PER_PARTITION_MAX_DEFAULT: usize = 5;
/// Largest `in_flight_per_partition_max` accepted: a broker remembers a producer's last 5 batches per
/// partition, so a retry of any batch in flight is recognized (and never written twice or refused for an
/// unknown outcome). The bound is on the window from the oldest batch not yet completed, not on the
/// batches still out (see `accumulator`). Kafka bounds `max.in.flight.requests.per.connection` to 5 with
/// idempotence for the same reason.
pub const IN_FLIGHT_PER_PARTITION_LIMIT: usize = 5;
/// Default bound on bytes of records sent but not yet acknowledged.
pub const IN_FLIGHT_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Flush and close commands queued between handles and the task (records do not pass through it).
const COMMAND_QUEUE_LEN: usize = 64;
/// Header key limit of the batch format (a u16 length).
const HEADER_KEY_BYTES_MAX: usize = u16::MAX as usize;
/// Header count limit of the batch format (a u16 count).
const HEADERS_PER_RECORD_MAX: usize = u16::MAX as usize;

/// How a [`Producer`] batches and how durable its writes must be.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records after its first (milliseconds); 0 (the default) sends it at
    /// the end of the producer task's turn. Either way a batch that is not full goes only when its partition
    /// has room (see [`LINGER_MS_DEFAULT`]); until then it grows.
    pub linger_ms: u64,
    /// Largest batch, header included (bytes); also bounds a single record. At most the broker's batch
    /// limit (4 MiB by default).
    pub batch_bytes_max: usize,
    /// Durability required before a batch is acknowledged.
    pub acks: Acks,
    /// Bound on the bytes of records sent but not yet acknowledged; `send` waits while it is reached.
    pub in_flight_bytes_max: usize,
    /// Idempotent publishing (default on): the broker gives this producer an id, each batch carries a
    /// per-partition sequence number, and a batch retried after a lost answer is written once.
    pub idempotence: bool,
    /// Batches of one partition in flight at once (1 to 5, default 5), with idempotence; without it,
    /// always 1, so nothing reorders. More in flight keep a partition's pipe full across round trips.
    pub in_flight_per_partition_max: usize,
    /// Batch compression (default none): LZ4, marked in the batch attributes, used when it makes a batch
    /// smaller. Brokers store and serve compressed batches as they are; consumers decompress.
    pub compression: ferry_protocol::batch::Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger_ms: LINGER_MS_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            acks: Acks::All,
            in_flight_bytes_max: IN_FLIGHT_BYTES_MAX_DEFAULT,
            idempotence: true,
            in_flight_per_partition_max: IN_FLIGHT_PER_PARTITION_MAX_DEFAULT,
            compression: ferry_protocol::batch::Compression::None,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let refuse = |why: String| Err(ClientError::InvalidArgument(why));
        if self.linger_ms > LINGER_MS_MAX {
            return refuse(format!(
                "linger_ms is {}; the limit is {LINGER_MS_MAX}",
                self.linger_ms
            ));
        }
        let hard_max = BATCH_BYTES_HARD_MAX as usize;
        if !(BATCH_BYTES_MAX_MIN..=hard_max).contains(&self.batch_bytes_max) {
            return refuse(format!(
                "batch_bytes_max must be {BATCH_BYTES_MAX_MIN} to {hard_max}, not {}",
                self.batch_bytes_max
            ));
        }
        if !(1..=IN_FLIGHT_PER_PARTITION_LIMIT).contains(&self.in_flight_per_partition_max) {
            return refuse(format!(
                "in_flight_per_partition_max must be 1 to {IN_FLIGHT_PER_PARTITION_LIMIT}, not {}",
                self.in_flight_per_partition_max
            ));
        }
        if self.in_flight_bytes_max < self.batch_bytes_max
            || self.in_flight_bytes_max > Semaphore::MAX_PERMITS
        {
            return refuse(format!(
                "in_flight_bytes_max ({}) must be at least batch_bytes_max ({})",
                self.in_flight_bytes_max, self.batch_bytes_max
            ));
        }
        Ok(())
    }
}

/// A batching publisher. Cheap to clone; clones share one background task, which ends once every clone
/// is dropped or [`Producer::close`] is called, after finishing the records already sent.
#[derive(Debug, Clone)]
pub struct Producer {
    client: Client,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    in_flight_bytes: Arc<Semaphore>,
    partitioner: Arc<Partitioner>,
    record_bytes_max: usize,
    /// Closed (sender dropped) when the task has ended.
    finished: watch::Receiver<()>,
}

impl Producer {
    /// Starts a producer over `client`.
    ///
    /// # Panics
    /// Outside a Tokio runtime, since it spawns the background task.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE_LEN);
        let (finished_tx, finished) = watch::channel(());
        let in_flight_bytes = Arc::new(Semaphore::new(config.in_flight_bytes_max));
        let in_flight_max = if config.idempotence {
            config.in_flight_per_partition_max
        } else {
            1
        };
        let accumulator = Accumulator::new(
            config.batch_bytes_max,
            Duration::from_millis(config.linger_ms),
        )
        .with_compression(config.compression)
        .with_in_flight_max(in_flight_max);
        let shared = Arc::new(Shared::new(accumulator));
        let task = ProducerTask::new(
            client.clone(),
            config.acks,
            config.idempotence,
            shared.clone(),
            command_queue,
            in_flight_bytes.clone(),
            finished_tx,
        );
        tokio::spawn(task.run());
        Ok(Producer {
            client,
            commands,
            shared,
            in_flight_bytes,
            partitioner: Arc::new(Partitioner::default()),
            record_bytes_max: record_bytes_max(config.batch_bytes_max),
            finished,
        })
    }

    /// Queues `record` for publishing. Waits only while the in-flight byte limit is reached (and, the first
    /// time a topic is used, for its metadata). The returned [`Delivery`] resolves to the record's
    /// `(partition, offset)` once acknowledged, or to the error that stopped it.
    pub async fn send(&self, record: ProducerRecord) -> Delivery {
        match self.enqueue(record).await {
            Ok(delivery) => delivery,
            Err(err) => Delivery::failed(err),
        }
    }

    async fn enqueue(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let ProducerRecord {
            topic,
            key,
            value,
            headers,
            partition,
            timestamp_ms,
        } = record;
        let mut headers = headers;
        // Inside a traced span, the record carries the span's trace context (unless it has one already).
        if !headers
            .iter()
            .any(|(k, _)| k == crate::trace::TRACEPARENT_HEADER)
        {
            if let Some(tc) = crate::trace::current() {
                headers.push((
                    crate::trace::TRACEPARENT_HEADER.to_owned(),
                    bytes::Bytes::from(tc.traceparent()),
                ));
            }
        }
        check_headers(&headers)?;
        let size_bytes = record_size(key.as_deref(), &value, &headers);
        if size_bytes > self.record_bytes_max {
            return Err(ClientError::RecordTooLarge {
                size_bytes,
                max_bytes: self.record_bytes_max,
            });
        }
        let partitions = self.client.partition_count(&topic).await?;
        let partition = self
            .partitioner
            .choose(&topic, partition, key.as_deref(), partitions)?;
        // Fits in u32: a record is smaller than a batch, which is at most BATCH_BYTES_HARD_MAX.
        let permits = u32::try_from(size_bytes).expect("record size fits u32");
        self.in_flight_bytes
            .acquire_many(permits)
            .await
            .map_err(|_| ClientError::ProducerClosed)?
            // Given back by the task, in one piece per batch, when the batch is done.
            .forget();
        let record = PendingRecord {
            key,
            value,
            headers,
            timestamp_ms: timestamp_ms.unwrap_or_else(now_ms),
            ack: (),
        };
        let placement = {
            let mut state = self.shared.state.lock();
            if state.closed {
                drop(state);
                self.in_flight_bytes.add_permits(size_bytes);
                return Err(ClientError::ProducerClosed);
            }
            state
                .accumulator
                .append_at(&topic, partition, record, std::time::Instant::now)
        };
        if placement.changed {
            self.shared.changed.notify_one();
        }
        Ok(Delivery::waiting(placement.shared, placement.index))
    }

    /// Waits until every record sent so far (by any clone) is acknowledged or has failed. Lingering
    /// batches are sent at once.
    pub async fn flush(&self) {
        let (waiter, done) = oneshot::channel();
        if self.commands.send(Command::Flush(waiter)).await.is_ok() && done.await.is_ok() {
            return;
        }
        // The task is closing: it finishes everything before it ends.
        self.wait_finished().await;
    }

    /// Flushes, then stops the background task. Later sends fail with [`ClientError::ProducerClosed`].
    pub async fn close(&self) {
        // A failed send means the task already closed; waiting for its end is all there is to do.
        let _ = self.commands.send(Command::Close).await;
        self.wait_finished().await;
    }

    async fn wait_finished(&self) {
        let mut finished = self.finished.clone();
        // Returns an error once the task dropped its sender, which is the only thing it ever does with it.
        while finished.changed().await.is_ok() {}
    }
}

/// Refuses headers the batch format cannot carry.
fn check_headers(headers: &[(String, bytes::Bytes)]) -> Result<(), ClientError> {
    if headers.len() > HEADERS_PER_RECORD_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "a record has at most {HEADERS_PER_RECORD_MAX} headers, not {}",
            headers.len()
        )));
    }
    if let Some((key, _)) = headers.iter().find(|(k, _)| k.len() > HEADER_KEY_BYTES_MAX) {
        return Err(ClientError::InvalidArgument(format!(
            "header key of {} bytes; the limit is {HEADER_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_are_enforced() {
        assert!(ProducerConfig::default().validate().is_ok());
        let small = ProducerConfig {
            batch_bytes_max: 10,
            ..Default::default()
        };
        assert!(small.validate().is_err());
        let starved = ProducerConfig {
            in_flight_bytes_max: 1024,
            ..Default::default()
        };
        assert!(starved.validate().is_err());
    }

    #[test]
    fn headers_are_checked() {
        let long_key = "k".repeat(HEADER_KEY_BYTES_MAX + 1);
        assert!(check_headers(&[(long_key, bytes::Bytes::new())]).is_err());
        assert!(check_headers(&[("trace".into(), bytes::Bytes::new())]).is_ok());
    }
}
