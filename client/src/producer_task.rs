//! The producer's background task: the I/O shell around the [`Accumulator`]. It takes commands from
//! [`Producer`](crate::Producer) handles, seals batches on size, linger or flush, publishes them (up to the
//! accumulator's bound in flight per partition, partitions in parallel), and resolves each record's
//! [`Delivery`](crate::Delivery).
//!
//! Work is paced on the task's own loop rather than per record: each turn takes up to
//! [`COMMANDS_PER_TURN_MAX`] queued commands at once (`recv_many`: the channel's permits go back in one
//! step, where a receive per command takes the channel's waiter lock per record) before dispatching, so
//! bursts become full batches.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::v1::{Acks, PartitionAck};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::accumulator::{Accumulator, PendingRecord, SealedBatch};
use crate::client::Client;
use crate::delivery::DeliverySender;
use crate::error::ClientError;
use crate::publish::record_offset;

/// Commands taken per loop turn before batches are dispatched.
pub const COMMANDS_PER_TURN_MAX: usize = 1024;

/// What a [`Producer`](crate::Producer) handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Add a record to a partition's open batch.
    Append {
        topic: String,
        partition: u32,
        record: PendingRecord<DeliverySender>,
        /// The caller's timestamp; without one the record is stamped with the wall clock when the task
        /// takes it (read once per turn, not once per record on the caller's thread).
        timestamp_ms: Option<i64>,
    },
    /// Seal everything and answer once all records sent so far are done.
    Flush(oneshot::Sender<()>),
    /// Stop taking commands; finish what is queued, then exit.
    Close,
}

/// A publish that finished.
struct Published {
    topic: Arc<str>,
    partition: u32,
    id: u64,
    result: Result<PartitionAck, ClientError>,
}

/// What the task keeps of a batch while it is published.
struct InFlight {
    deliveries: Vec<DeliverySender>,
    records_bytes: usize,
}

enum Event {
    /// This many commands were moved into the task's command buffer; none: every handle is gone.
    Commands(usize),
    Published(Published),
    LingerExpired,
    Identity(Result<(i64, i16), ClientError>),
}

/// Idempotence state: the producer id the broker gave and the next sequence number per partition. A batch
/// is stamped when it is sent, in each partition's order, so sequences follow the send order (the broker
/// stores a partition's batches in sequence order however their requests race). After a batch fails for
/// good its outcome is unknown, so the producer takes a new id and starts sequences afresh, but only once
/// every batch still in flight under the old id is done: a new id's batches could otherwise be stored
/// before the old id's retries.
#[derive(Default)]
struct Idempotence {
    identity: Option<(i64, i16)>,
    sequences: HashMap<(Arc<str>, u32), i32>,
    asking: Option<BoxFuture<'static, Result<(i64, i16), ClientError>>>,
}

/// The task's state.
pub(crate) struct ProducerTask {
    client: Client,
    acks: Acks,
    /// `None` when idempotence is off.
    idempotence: Option<Idempotence>,
    accumulator: Accumulator<DeliverySender>,
    commands: mpsc::Receiver<Command>,
    /// Where `recv_many` puts a turn's commands (empty between turns).
    command_buf: Vec<Command>,
    /// Released as batches finish; [`Producer::send`](crate::Producer::send) acquires.
    in_flight_bytes: Arc<Semaphore>,
    publishing: FuturesUnordered<BoxFuture<'static, Published>>,
    in_flight: HashMap<u64, InFlight>,
    flush_waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Set once no command can arrive any more: everything is sealed and the task ends when idle.
    draining: bool,
    /// Dropped when the task ends, which is how handles learn it did.
    _finished: watch::Sender<()>,
}

impl ProducerTask {
    pub(crate) fn new(
        client: Client,
        acks: Acks,
        idempotent: bool,
        accumulator: Accumulator<DeliverySender>,
        commands: mpsc::Receiver<Command>,
        in_flight_bytes: Arc<Semaphore>,
        finished: watch::Sender<()>,
    ) -> Self {
        ProducerTask {
            client,
            acks,
            idempotence: idempotent.then(Idempotence::default),
            accumulator,
            commands,
            command_buf: Vec::with_capacity(COMMANDS_PER_TURN_MAX),
            in_flight_bytes,
            publishing: FuturesUnordered::new(),
            in_flight: HashMap::new(),
            flush_waiters: VecDeque::new(),
            draining: false,
            _finished: finished,
        }
    }

    /// Runs until every handle is dropped or closed and every record is done.
    pub(crate) async fn run(mut self) {
        loop {
            // Deadlines already reached are handled here, not by a timer: tokio's timer rounds up to the
            // next millisecond, which a batch with no linger (or one whose linger passed while the turn
            // ran) must not wait for.
            if let Some(deadline) = self.accumulator.next_deadline() {
                let now = Instant::now();
                if deadline <= now {
                    self.accumulator.expire(now);
                }
            }
            self.dispatch();
            self.answer_flushes();
            if self.draining && self.accumulator.is_idle() {
                break;
            }
            match self.next_event().await {
                Event::Commands(received) => self.on_commands(received),
                Event::Published(published) => self.on_published(published),
                Event::LingerExpired => self.accumulator.expire(Instant::now()),
                Event::Identity(result) => self.on_identity(result),
            }
        }
        // Senders blocked on backpressure learn the producer is gone.
        self.in_flight_bytes.close();
        tracing::debug!("producer task finished");
    }

    async fn next_event(&mut self) -> Event {
        // A deadline in the far future stands in for "no open batch"; that branch is disabled then.
        let deadline = self.accumulator.next_deadline();
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let asking = self.idempotence.as_mut().and_then(|i| i.asking.as_mut());
        let has_asking = asking.is_some();
        let identity = async move {
            match asking {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = self.commands.recv_many(&mut self.command_buf, COMMANDS_PER_TURN_MAX),
                if !self.draining => Event::Commands(received),
            result = identity, if has_asking => Event::Identity(result),
            Some(published) = self.publishing.next(), if !self.publishing.is_empty() => {
                Event::Published(published)
            }
            () = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                Event::LingerExpired
            }
        }
    }

    /// Handles the commands `recv_many` moved into the buffer (up to a bound, so publishes and timers are
    /// not starved); none means every handle is gone.
    fn on_commands(&mut self, received: usize) {
        let now = Instant::now();
        let mut wall_ms = None;
        if received == 0 {
            self.on_command(None, now, &mut wall_ms);
            return;
        }
        let mut commands = std::mem::take(&mut self.command_buf);
        for command in commands.drain(..) {
            self.on_command(Some(command), now, &mut wall_ms);
        }
        // The buffer keeps its capacity for the next turn.
        self.command_buf = commands;
    }

    /// `wall_ms` is this turn's wall clock, read at the first record that needs it.
    fn on_command(&mut self, command: Option<Command>, now: Instant, wall_ms: &mut Option<i64>) {
        match command {
            Some(Command::Append {
                topic,
                partition,
                mut record,
                timestamp_ms,
            }) => {
                record.timestamp_ms =
                    timestamp_ms.unwrap_or_else(|| *wall_ms.get_or_insert_with(now_ms));
                self.accumulator.append(&topic, partition, record, now)
            }
            Some(Command::Flush(waiter)) => {
                let target = self.accumulator.seal_all();
                self.flush_waiters.push_back((target, waiter));
            }
            // Queued commands are still received; `None` follows them.
            Some(Command::Close) => self.commands.close(),
            None => {
                self.draining = true;
                self.accumulator.seal_all();
            }
        }
    }

    /// The answer to a producer id request: batches go out stamped with it, or fail with the error.
    fn on_identity(&mut self, result: Result<(i64, i16), ClientError>) {
        let Some(idem) = self.idempotence.as_mut() else {
            return;
        };
        idem.asking = None;
        match result {
            Ok(identity) => {
                idem.identity = Some(identity);
                idem.sequences.clear();
            }
            Err(err) => {
                tracing::debug!(%err, "no producer id");
                for batch in self.accumulator.take_dispatchable() {
                    for delivery in batch.acks {
                        let _ = delivery.send(Err(err.clone()));
                    }
                    self.in_flight_bytes.add_permits(batch.records_bytes);
                    self.accumulator
                        .complete(&batch.topic, batch.partition, batch.id);
                }
            }
        }
    }

    /// Starts publishing every batch that may go now (once the producer has an id, if idempotent).
    fn dispatch(&mut self) {
        if let Some(idem) = self.idempotence.as_mut() {
            if idem.identity.is_none() {
                let drained = self.in_flight.is_empty();
                if drained && idem.asking.is_none() && self.accumulator.has_dispatchable() {
                    let client = self.client.clone();
                    idem.asking = Some(Box::pin(async move { client.init_producer().await }));
                }
                return;
            }
        }
        for batch in self.accumulator.take_dispatchable() {
            let SealedBatch {
                id,
                topic,
                partition,
                bytes,
                acks: deliveries,
                records_bytes,
            } = batch;
            // One delivery per record: the batch's record count, known without parsing its header.
            let known = crate::publish::Known {
                record_count: deliveries.len() as u32,
                stamped: self.idempotence.is_some(),
            };
            let bytes = match self.stamp(&topic, partition, bytes, known.record_count) {
                Ok(b) => b,
                Err(err) => {
                    for delivery in deliveries {
                        let _ = delivery.send(Err(err.clone()));
                    }
                    self.in_flight_bytes.add_permits(records_bytes);
                    self.accumulator.complete(&topic, partition, id);
                    continue;
                }
            };
            self.in_flight.insert(
                id,
                InFlight {
                    deliveries,
                    records_bytes,
                },
            );
            let client = self.client.clone();
            let acks = self.acks;
            self.publishing.push(Box::pin(async move {
                let result = client
                    .publish_known(&topic, partition, acks, bytes, known)
                    .await;
                Published {
                    topic,
                    partition,
                    id,
                    result,
                }
            }));
        }
    }

    /// Stamps an idempotent producer's id and the partition's next sequence number on a batch of `count`
    /// records (`with_producer` checks the header it writes into: the one parse on the way out).
    fn stamp(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        bytes: bytes::Bytes,
        count: u32,
    ) -> Result<bytes::Bytes, ClientError> {
        let Some(idem) = self.idempotence.as_mut() else {
            return Ok(bytes);
        };
        let (producer_id, producer_epoch) = idem.identity.expect("dispatch waits for the id");
        let seq = idem
            .sequences
            .entry((topic.clone(), partition))
            .or_insert(0);
        let stamp = ferry_protocol::batch::ProducerStamp {
            producer_id,
            producer_epoch,
            base_sequence: *seq,
        };
        *seq = seq.wrapping_add(count as i32) & i32::MAX;
        ferry_protocol::batch::with_producer(bytes, stamp)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn on_published(&mut self, published: Published) {
        let Published {
            topic,
            partition,
            id,
            result,
        } = published;
        let in_flight = self
            .in_flight
            .remove(&id)
            .expect("every published batch was in flight");
        match result {
            Ok(ack) => {
                for (index, delivery) in in_flight.deliveries.into_iter().enumerate() {
                    let offset = record_offset(&ack, index as u32);
                    // The caller may have dropped its Delivery; that is allowed.
                    let _ = delivery.send(Ok((partition, offset)));
                }
            }
            Err(err) => {
                tracing::debug!(%topic, partition, %err, "publish failed");
                // The batch may or may not be written: later batches go under a new producer id.
                if let Some(idem) = self.idempotence.as_mut() {
                    idem.identity = None;
                    idem.sequences.clear();
                }
                for delivery in in_flight.deliveries {
                    let _ = delivery.send(Err(err.clone()));
                }
            }
        }
        self.in_flight_bytes.add_permits(in_flight.records_bytes);
        self.accumulator.complete(&topic, partition, id);
    }

    /// Answers flushes whose batches are all done. Targets never decrease, so waiters finish in order.
    fn answer_flushes(&mut self) {
        while let Some((target, _)) = self.flush_waiters.front() {
            if !self.accumulator.finished_below(*target) {
                break;
            }
            let (_, waiter) = self.flush_waiters.pop_front().expect("front exists");
            let _ = waiter.send(());
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
