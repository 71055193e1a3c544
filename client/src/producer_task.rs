//! The producer's background task: the I/O shell around the [`Accumulator`]. [`Producer`](crate::Producer)
//! handles append records to the accumulator themselves, under the lock of [`Shared`], and wake the task
//! when an append opened or sealed a batch; the task seals batches on linger or flush, publishes them (up
//! to the accumulator's bound in flight per partition, partitions in parallel), and resolves each batch's
//! [`BatchOutcome`], which its records' [`Delivery`](crate::Delivery) futures share.
//!
//! Appending on the caller's thread (as Kafka's producer does) leaves nothing per record to queue, signal
//! or allocate between threads: a record costs a lock its task rarely holds (it takes the lock per batch,
//! and encodes and CRCs batches outside it) and the copy of its bytes into the batch. Flush and close
//! still go to the task as commands.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_protocol::batch::ProducerStamp;
use ferry_protocol::v1::{Acks, PartitionAck};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::accumulator::{Accumulator, SealedBatch};
use crate::client::Client;
use crate::delivery::BatchOutcome;
use crate::error::ClientError;

/// The accumulator as handles and the task share it: each record carries nothing back (`()`), each batch
/// its outcome.
pub(crate) type SharedAccumulator = Accumulator<(), Arc<BatchOutcome>>;

/// What handles and the task share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<SharedState>,
    /// Signalled by a handle whose append opened or sealed a batch.
    pub(crate) changed: Notify,
}

pub(crate) struct SharedState {
    pub(crate) accumulator: SharedAccumulator,
    /// Set when the producer closes (or every handle is gone): appends are refused from then on, and what
    /// was appended before is sealed in the same step, so nothing is left behind.
    pub(crate) closed: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(accumulator: SharedAccumulator) -> Self {
        Shared {
            state: Mutex::new(SharedState {
                accumulator,
                closed: false,
            }),
            changed: Notify::new(),
        }
    }
}

/// What a [`Producer`](crate::Producer) handle asks of the task besides appending.
#[derive(Debug)]
pub(crate) enum Command {
    /// Seal everything and answer once all records sent so far are done.
    Flush(oneshot::Sender<()>),
    /// Refuse further records; finish what was appended, then exit.
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
    outcome: Arc<BatchOutcome>,
    records_bytes: usize,
    /// The batch as sent (a reference, not a copy), if it was sent in the buffer it was built in: once the
    /// publish is done and nothing else holds it, that buffer goes back to the accumulator for a later batch
    /// ([`Accumulator::recycle`](crate::accumulator::Accumulator::recycle)). Not a compressed batch's:
    /// its buffer is the size of the compressed bytes, too small for the next batch (the one it was built
    /// in goes back when it is sent).
    reusable: Option<Bytes>,
}

enum Event {
    /// A command; none: every handle is gone.
    Command(Option<Command>),
    /// A handle's append opened or sealed a batch.
    Appended,
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
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
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
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        in_flight_bytes: Arc<Semaphore>,
        finished: watch::Sender<()>,
    ) -> Self {
        ProducerTask {
            client,
            acks,
            idempotence: idempotent.then(Idempotence::default),
            shared,
            commands,
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
            // The next deadline is read in the same step: a handle that opens a batch later wakes the task.
            let (batches, has_dispatchable, idle, deadline) = {
                let mut state = self.shared.state.lock();
                let accumulator = &mut state.accumulator;
                if let Some(deadline) = accumulator.next_deadline() {
                    let now = Instant::now();
                    if deadline <= now {
                        accumulator.expire(now);
                    }
                }
                let may_send = self
                    .idempotence
                    .as_ref()
                    .is_none_or(|idem| idem.identity.is_some());
                let batches = if may_send {
                    accumulator.take_dispatchable()
                } else {
                    Vec::new()
                };
                (
                    batches,
                    accumulator.has_dispatchable(),
                    accumulator.is_idle(),
                    accumulator.next_deadline(),
                )
            };
            self.ask_identity(has_dispatchable);
            self.dispatch(batches);
            self.answer_flushes();
            // Idle: nothing open, queued or in flight (a batch in flight is unfinished until completed).
            if self.draining && idle {
                break;
            }
            match self.next_event(deadline).await {
                Event::Command(command) => self.on_command(command),
                // What changed (a batch opened or sealed, a linger deadline passed) is looked at on the next
                // turn.
                Event::Appended | Event::LingerExpired => {}
                Event::Published(published) => self.on_published(published),
                Event::Identity(result) => self.on_identity(result),
            }
        }
        tracing::debug!("producer task finished");
        // `Drop` closes the producer to senders.
    }

    /// The next thing to handle; `deadline` is the earliest linger deadline, if a batch is open.
    async fn next_event(&mut self, deadline: Option<Instant>) -> Event {
        // A deadline in the far future stands in for "no open batch"; that branch is disabled then.
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
            command = self.commands.recv(), if !self.draining => Event::Command(command),
            // A notification given while the task was busy is kept (one permit), so none is missed.
            () = self.shared.changed.notified(), if !self.draining => Event::Appended,
            result = identity, if has_asking => Event::Identity(result),
            Some(published) = self.publishing.next(), if !self.publishing.is_empty() => {
                Event::Published(published)
            }
            () = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                Event::LingerExpired
            }
        }
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Flush(waiter)) => {
                let target = self.shared.state.lock().accumulator.seal_all();
                self.flush_waiters.push_back((target, waiter));
            }
            // Later records are refused at once; queued commands are still received, and `None` follows.
            Some(Command::Close) => {
                self.close();
                self.commands.close();
            }
            None => {
                self.close();
                self.draining = true;
            }
        }
    }

    /// Refuses further appends and seals what was appended, in one step under the lock.
    fn close(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.accumulator.seal_all();
    }

    /// Asks for a producer id when an idempotent producer without one has batches to send and none in
    /// flight (a new id's batches must not overtake the old id's retries).
    fn ask_identity(&mut self, has_dispatchable: bool) {
        let Some(idem) = self.idempotence.as_mut() else {
            return;
        };
        if idem.identity.is_none()
            && idem.asking.is_none()
            && self.in_flight.is_empty()
            && has_dispatchable
        {
            let client = self.client.clone();
            idem.asking = Some(Box::pin(async move { client.init_producer().await }));
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
                let failed = {
                    let mut state = self.shared.state.lock();
                    let accumulator = &mut state.accumulator;
                    let batches = accumulator.take_dispatchable();
                    for batch in &batches {
                        accumulator.complete(&batch.topic, batch.partition, batch.id);
                    }
                    batches
                };
                // Outside the lock: a waker may run a task inline that sends.
                for batch in failed {
                    batch.shared.complete(Err(err.clone()));
                    self.in_flight_bytes.add_permits(batch.records_bytes);
                }
            }
        }
    }

    /// Encodes and starts publishing `batches`, taken from the accumulator in each partition's order.
    fn dispatch(&mut self, batches: Vec<SealedBatch<(), Arc<BatchOutcome>>>) {
        // Buffers compressed batches were built in, for later batches.
        let mut spare = Vec::new();
        for batch in batches {
            let record_count = batch.record_count();
            let SealedBatch {
                id,
                topic,
                partition,
                mut builder,
                compression,
                shared: outcome,
                records_bytes,
                ..
            } = batch;
            let known = crate::publish::Known {
                record_count,
                stamped: self.idempotence.is_some(),
            };
            // Header (with the stamp) and CRC in one pass over the records, which are not copied unless
            // compressed.
            if let Some(stamp) = self.next_stamp(&topic, partition, record_count) {
                builder.producer(stamp);
            }
            let (bytes, built_in) = builder.finish_compressed(compression);
            let reusable = match built_in {
                Some(buf) => {
                    spare.push(buf);
                    None
                }
                None => Some(bytes.clone()),
            };
            self.in_flight.insert(
                id,
                InFlight {
                    outcome,
                    records_bytes,
                    reusable,
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
        if !spare.is_empty() {
            // The guard goes at the end of the statement: what is not kept is freed after the lock.
            let rejected = self.shared.state.lock().accumulator.recycle(spare);
            drop(rejected);
        }
    }

    /// An idempotent producer's id and the partition's next sequence number for a batch of `count` records
    /// (batches are taken in each partition's order, so sequences follow it); none without idempotence.
    fn next_stamp(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        count: u32,
    ) -> Option<ProducerStamp> {
        let idem = self.idempotence.as_mut()?;
        let (producer_id, producer_epoch) = idem.identity.expect("dispatch waits for the id");
        let seq = idem
            .sequences
            .entry((topic.clone(), partition))
            .or_insert(0);
        let stamp = ProducerStamp {
            producer_id,
            producer_epoch,
            base_sequence: *seq,
        };
        *seq = seq.wrapping_add(count as i32) & i32::MAX;
        Some(stamp)
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
        if let Err(err) = &result {
            tracing::debug!(%topic, partition, %err, "publish failed");
            // The batch may or may not be written: later batches go under a new producer id.
            if let Some(idem) = self.idempotence.as_mut() {
                idem.identity = None;
                idem.sequences.clear();
            }
        }
        // The callers may have dropped their deliveries; that is allowed.
        in_flight.outcome.complete(result);
        self.in_flight_bytes.add_permits(in_flight.records_bytes);
        // Taken back (if nothing else holds it) before the lock; freed, if not kept, after it.
        let reusable = in_flight.reusable.and_then(|b| b.try_into_mut().ok());
        let mut state = self.shared.state.lock();
        state.accumulator.complete(&topic, partition, id);
        let rejected = state.accumulator.recycle(reusable);
        drop(state);
        drop(rejected);
    }

    /// Answers flushes whose batches are all done. Targets never decrease, so waiters finish in order.
    fn answer_flushes(&mut self) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let state = self.shared.state.lock();
        while let Some((target, _)) = self.flush_waiters.front() {
            if !state.accumulator.finished_below(*target) {
                break;
            }
            let (_, waiter) = self.flush_waiters.pop_front().expect("front exists");
            let _ = waiter.send(());
        }
    }
}

impl Drop for ProducerTask {
    /// However the task ends: after finishing everything (nothing is left then), or dropped before that
    /// (its runtime shut down, or it panicked), later sends are refused and every record not acknowledged
    /// fails with [`ClientError::ProducerClosed`] instead of waiting forever, as when each record had a
    /// channel of its own whose sender went away.
    fn drop(&mut self) {
        let unsent = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            state.accumulator.seal_all();
            state.accumulator.drain_unsent()
        };
        for batch in unsent {
            batch.shared.abandon(ClientError::ProducerClosed);
        }
        for (_, in_flight) in self.in_flight.drain() {
            in_flight.outcome.abandon(ClientError::ProducerClosed);
        }
        // Senders blocked on backpressure learn the producer is gone.
        self.in_flight_bytes.close();
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
