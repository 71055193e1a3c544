//! The producer's batching core, pure: records go in, sealed batches come out, in the order they may be
//! sent. The producer task ([`producer_task`](crate::producer_task)) owns one and does the I/O.
//!
//! Per partition there is at most one open batch (being filled), a queue of sealed batches, and a send
//! window of at most `in_flight_max` batches from the oldest one not yet completed (1 unless the producer
//! is idempotent: its sequence numbers keep the stored order the send order however the requests race).
//! Different partitions are independent and run in parallel.
//!
//! A batch is sealed when the next record would not fit in `batch_bytes_max` (full batches use every
//! in-flight slot), when its linger time has passed since its first record (or, if the partition then has
//! a batch queued or in flight, when those are done: a slow round trip grows
//! batches instead of queueing small ones), or on flush.
//! Linger is fixed, so open batches reach their deadlines in the order they were opened, and one queue
//! sorted by opening time serves as the timer wheel. With no
//! linger (the default) a batch is due as soon as it opens: the task seals it at the end of that turn,
//! so what one turn took from the queue travels together and a lone record waits for no timer.
//!
//! Every batch gets an id when opened, counting up. A flush seals every open batch and then waits until no
//! batch with an id below the next one is unfinished.
//!
//! A batch also gets a value of the caller's type `B` when it opens (the producer's shared outcome, which
//! every record's [`Delivery`](crate::Delivery) holds): [`Accumulator::append_at`] hands it back with the
//! record's index, so a record is tied to its batch without anything allocated per record.
//!
//! Sealing stops at the records: the header, CRC and compression are written (`BatchBuilder::producer`,
//! `BatchBuilder::finish_with`) when the batch is sent, outside the lock the producer keeps the accumulator
//! under, and with the idempotent producer's sequence number already known (one CRC pass per batch, not one
//! at sealing and another at stamping).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::batch::{BatchBuilder, Compression, HEADER_LEN};
use ferry_protocol::limits::BATCH_RECORDS_MAX;
// foldhash: looked up for every record, by keys the application chose (its own topic names).
use foldhash::HashMap;

/// A record bound for a known partition, with whatever the caller wants back when it is acknowledged.
#[derive(Debug)]
pub struct PendingRecord<A> {
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Payload.
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Timestamp (milliseconds since the Unix epoch).
    pub timestamp_ms: i64,
    /// Handed back in the sealed batch, in record order.
    pub ack: A,
}

impl<A> PendingRecord<A> {
    /// Bytes this record takes in a batch.
    pub fn size_bytes(&self) -> usize {
        record_size(self.key.as_deref(), &self.value, &self.headers)
    }
}

/// Bytes a record with these parts takes in a batch.
pub fn record_size(key: Option<&[u8]>, value: &[u8], headers: &[(String, Bytes)]) -> usize {
    // Collecting no headers does not allocate, so the common case costs nothing extra.
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
    BatchBuilder::record_size(key, value, &headers)
}

/// Bytes reserved for a partition's first batch, and the least reserved for any (a batch grows past it).
const BATCH_CAPACITY_MIN: usize = 16 * 1024;

/// Buffers of finished batches kept for the next batches to be built in. A buffer's pages, once mapped, are
/// reused rather than freed and mapped afresh: an allocator may hand a freed batch-sized buffer's pages back
/// to the kernel (mimalloc, the CLI's, does), which then zeroes new ones for the next batch, most of the
/// client's CPU at 1 KiB records (docs/benchmarks.md, session 20). Kafka's producer pools its batch buffers
/// for the same reason. Steady sending takes a buffer for each one handed back, so a few cover it; more are
/// kept only after a burst, and what a burst allocated beyond this is freed. Bytes of capacity kept: eight
/// batches at the default `batch_bytes_max`, fewer of larger ones and none over 8 MiB, so a producer holds
/// at most this much memory it is not using.
const SPARE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest record (bytes, as [`record_size`] counts) that fits in a batch of `batch_bytes_max` bytes.
pub fn record_bytes_max(batch_bytes_max: usize) -> usize {
    batch_bytes_max.saturating_sub(HEADER_LEN)
}

/// A finished batch, ready to publish once its builder writes the header (see the module docs).
pub struct SealedBatch<A, B = ()> {
    /// Opening order; see the module docs on flush.
    pub id: u64,
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// The records, without the batch header yet.
    pub builder: BatchBuilder,
    /// How the batch is to be compressed.
    pub compression: Compression,
    /// The records' acks in record order: the `i`-th gets offset `base_offset + i`.
    pub acks: Vec<A>,
    /// The value the batch got when it opened.
    pub shared: B,
    /// Sum of the records' sizes, as counted against the producer's in-flight limit.
    pub records_bytes: usize,
}

impl<A, B> SealedBatch<A, B> {
    /// Records in the batch.
    pub fn record_count(&self) -> u32 {
        self.builder.record_count()
    }
}

/// Where [`Accumulator::append_at`] placed a record.
#[derive(Debug)]
pub struct Placement<B> {
    /// The value its batch got when it opened.
    pub shared: B,
    /// Its index in the batch: it gets offset `base_offset + index`.
    pub index: u32,
    /// Whether the append opened or sealed a batch: the task that sends batches has something new to look
    /// at (a deadline, or a batch that may go). A record joining an open batch changes neither.
    pub changed: bool,
}

struct OpenBatch<A, B> {
    id: u64,
    builder: BatchBuilder,
    base_timestamp_ms: i64,
    acks: Vec<A>,
    shared: B,
    records_bytes: usize,
    /// Its linger time passed while the partition had a batch queued or in flight: it stays open, gaining
    /// records, and is sealed as soon as the partition's pipe is empty.
    lingered: bool,
}

impl<A, B> OpenBatch<A, B> {
    /// Whether a record of `size` bytes stamped `timestamp_ms` may join this batch.
    fn fits(&self, size: usize, timestamp_ms: i64, batch_bytes_max: usize) -> bool {
        let delta = timestamp_ms.saturating_sub(self.base_timestamp_ms);
        self.builder.len() + size <= batch_bytes_max
            && self.builder.record_count() < BATCH_RECORDS_MAX
            // Timestamps are stored as i32 deltas from the batch's base; one that does not fit starts
            // a new batch rather than being clamped.
            && i32::try_from(delta).is_ok()
    }
}

struct PartitionState<A, B> {
    open: Option<OpenBatch<A, B>>,
    ready: VecDeque<SealedBatch<A, B>>,
    /// The send window: batches sent, in send (and so sequence) order, from the oldest not completed on,
    /// each with whether it completed. Its length, not the number still out, is what `in_flight_max`
    /// bounds: a batch that completes ahead of an older one frees no slot. Otherwise, while an old batch
    /// waits to be retried (its leader died after storing it), newer ones could keep completing and being
    /// replaced, until the retry reaches a leader that remembers too few of the producer's batches to
    /// recognize it (it remembers as many as the window holds) and refuses a batch it stored.
    window: VecDeque<(u64, bool)>,
    /// Bytes to reserve for the partition's next batch: the length its last batch reached, rounded up to
    /// a power of two as the buffer's doubling would have. A busy partition's batch is then built in one
    /// allocation, not grown from 16 KiB through six reallocations (each a copy of everything so far and,
    /// on pages fresh from the host, the kernel zeroing them: about a third of the client's CPU at 1 KiB
    /// records on such memory; docs/benchmarks.md, session 17).
    next_capacity: usize,
    /// Acks to reserve for the partition's next batch: as many records as its last batch had (at most
    /// `BATCH_RECORDS_MAX`), for the same reason.
    next_records: usize,
}

impl<A, B> PartitionState<A, B> {
    /// Nothing of the partition queued or in flight: the only time a batch that is not full may go.
    fn pipe_empty(&self) -> bool {
        self.window.is_empty() && self.ready.is_empty()
    }
}

impl<A, B> Default for PartitionState<A, B> {
    fn default() -> Self {
        PartitionState {
            open: None,
            ready: VecDeque::new(),
            window: VecDeque::new(),
            next_capacity: BATCH_CAPACITY_MIN,
            next_records: 0,
        }
    }
}

/// Open, sealed and in-flight batches of every partition a producer writes to. `A` is handed back per
/// record, `B` per batch (see the module docs).
pub struct Accumulator<A, B = ()> {
    batch_bytes_max: usize,
    linger: Duration,
    topics: HashMap<Arc<str>, HashMap<u32, PartitionState<A, B>>>,
    /// Open batches in opening order, each with its linger deadline. Entries of batches sealed early
    /// are left in place and ignored when they come up.
    lingering: VecDeque<(Instant, Arc<str>, u32, u64)>,
    /// Where sealed batches are announced, and how they are compressed.
    sealer: Sealer,
    /// Ids of batches opened and not yet completed.
    unfinished: BTreeSet<u64>,
    next_batch_id: u64,
    /// Emptied buffers of finished batches, for new batches to be built in.
    spare: Spare,
}

impl<A, B: Clone + Default> Accumulator<A, B> {
    /// An accumulator building batches of at most `batch_bytes_max` bytes, sealed `linger` after their
    /// first record at the latest.
    pub fn new(batch_bytes_max: usize, linger: Duration) -> Self {
        assert!(
            batch_bytes_max > HEADER_LEN + record_size(None, &[], &[]),
            "a batch must have room for a record"
        );
        Accumulator {
            batch_bytes_max,
            linger,
            topics: HashMap::default(),
            lingering: VecDeque::new(),
            sealer: Sealer {
                dispatchable: VecDeque::new(),
                compression: Compression::None,
                in_flight_max: 1,
            },
            unfinished: BTreeSet::new(),
            next_batch_id: 0,
            spare: Spare::default(),
        }
    }

    /// Compresses sealed batches with `compression` (when that makes them smaller).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.sealer.compression = compression;
        self
    }

    /// Lets up to `n` batches of a partition be in flight at once (default 1).
    pub fn with_in_flight_max(mut self, n: usize) -> Self {
        assert!(n >= 1, "at least one batch in flight");
        self.sealer.in_flight_max = n;
        self
    }

    /// Adds `record` to the open batch of `partition` of `topic`, sealing batches as they fill. `now` is read
    /// (for a new batch's linger deadline) only if a batch opens.
    pub fn append_at(
        &mut self,
        topic: &str,
        partition: u32,
        record: PendingRecord<A>,
        now: impl FnOnce() -> Instant,
    ) -> Placement<B> {
        let size = record.size_bytes();
        assert!(
            size <= record_bytes_max(self.batch_bytes_max),
            "the producer refuses records larger than a batch"
        );
        let topic = self.topic_key(topic);
        let state = partition_state(&mut self.topics, &topic, partition);
        let mut changed = false;
        if let Some(open) = &state.open {
            if !open.fits(size, record.timestamp_ms, self.batch_bytes_max) {
                self.sealer.seal(state, &topic, partition);
                changed = true;
            }
        }
        // Sized only when a batch opens: a record joining an open batch pays nothing for it.
        if state.open.is_none() {
            changed = true;
            let id = self.next_batch_id;
            self.next_batch_id += 1;
            self.unfinished.insert(id);
            self.lingering
                .push_back((now() + self.linger, topic.clone(), partition, id));
            let capacity = state
                .next_capacity
                .max(BATCH_CAPACITY_MIN)
                .min(self.batch_bytes_max);
            state.open = Some(OpenBatch {
                id,
                builder: BatchBuilder::with_buffer(
                    record.timestamp_ms,
                    self.spare.take(),
                    capacity,
                ),
                base_timestamp_ms: record.timestamp_ms,
                acks: Vec::with_capacity(state.next_records),
                shared: B::default(),
                records_bytes: 0,
                lingered: false,
            });
        }
        let open = state.open.as_mut().expect("opened above");
        let placement = Placement {
            shared: open.shared.clone(),
            index: open.builder.record_count(),
            changed,
        };
        push_record(open, record, size);
        // Seal at once when not even an empty record would fit any more.
        if !open.fits(
            record_size(None, &[], &[]),
            open.base_timestamp_ms,
            self.batch_bytes_max,
        ) {
            self.sealer.seal(state, &topic, partition);
            return Placement {
                changed: true,
                ..placement
            };
        }
        placement
    }

    /// Seals every open batch whose linger deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((deadline, _, _, _)) = self.lingering.front() {
            if *deadline > now {
                break;
            }
            let (_, topic, partition, id) = self.lingering.pop_front().expect("front exists");
            let state = partition_state(&mut self.topics, &topic, partition);
            // Anything of the partition queued or in flight: keep growing this batch. Only full batches use
            // the further in-flight slots; a lingering one waits for the pipe to empty, so light traffic
            // still makes few, large batches (with a slot per linger period, a slow round trip would send one
            // small batch each period: more requests and fsyncs for the same records). docs/benchmarks.md
            // (sessions 14 and 15) has why a second slot for such batches was taken back.
            let busy = !state.pipe_empty();
            let Some(open) = state.open.as_mut().filter(|open| open.id == id) else {
                continue;
            };
            if busy {
                // Sealing now would only queue it behind the batches in flight: one small batch per round
                // trip is all a partition would send while the round trip is slow (a lossy network, a
                // failover). Left open, it grows until it can go (as Kafka's accumulator does).
                open.lingered = true;
            } else {
                self.sealer.seal(state, &topic, partition);
            }
        }
    }

    /// The earliest linger deadline, if any batch is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lingering.front().map(|(deadline, _, _, _)| *deadline)
    }

    /// Seals every open batch (flush and close). Returns the flush target: once
    /// [`Accumulator::finished_below`] says so for it, every record appended so far is done.
    pub fn seal_all(&mut self) -> u64 {
        for (topic, partitions) in &mut self.topics {
            for (partition, state) in partitions.iter_mut() {
                if state.open.is_some() {
                    self.sealer.seal(state, topic, *partition);
                }
            }
        }
        self.lingering.clear();
        self.next_batch_id
    }

    /// Whether some sealed batch waits to be sent.
    pub fn has_dispatchable(&self) -> bool {
        !self.sealer.dispatchable.is_empty()
    }

    /// Sealed batches that may be sent now, in each partition's order and up to its free in-flight slots;
    /// each is in flight until [`Accumulator::complete`] is called for it.
    pub fn take_dispatchable(&mut self) -> Vec<SealedBatch<A, B>> {
        let mut out = Vec::new();
        let max = self.sealer.in_flight_max;
        while let Some((topic, partition)) = self.sealer.dispatchable.pop_front() {
            let state = partition_state(&mut self.topics, &topic, partition);
            while state.window.len() < max {
                let Some(batch) = state.ready.pop_front() else {
                    break;
                };
                state.window.push_back((batch.id, false));
                out.push(batch);
            }
        }
        out
    }

    /// Every sealed batch not yet sent, whatever the send windows allow, taken out as done: for a producer
    /// that can no longer send them (its task is ending before it finished, e.g. its runtime shut down).
    pub fn drain_unsent(&mut self) -> Vec<SealedBatch<A, B>> {
        let mut out = Vec::new();
        for partitions in self.topics.values_mut() {
            for state in partitions.values_mut() {
                out.extend(state.ready.drain(..));
            }
        }
        for batch in &out {
            self.unfinished.remove(&batch.id);
        }
        self.sealer.dispatchable.clear();
        out
    }

    /// Marks the in-flight batch `id` of `partition` of `topic` as done (acknowledged or failed).
    pub fn complete(&mut self, topic: &str, partition: u32, id: u64) {
        let topic = self.topic_key(topic);
        let state = partition_state(&mut self.topics, &topic, partition);
        let sent = state
            .window
            .iter_mut()
            .find(|(sent, done)| *sent == id && !*done)
            .expect("completing a batch that is not in flight");
        sent.1 = true;
        let window_before = state.window.len();
        while state.window.front().is_some_and(|(_, done)| *done) {
            state.window.pop_front();
        }
        if state.window.len() < window_before && !state.ready.is_empty() {
            self.sealer
                .dispatchable
                .push_back((topic.clone(), partition));
        }
        if state.pipe_empty() && state.open.as_ref().is_some_and(|open| open.lingered) {
            self.sealer.seal(state, &topic, partition);
        }
        let removed = self.unfinished.remove(&id);
        assert!(removed, "batch {id} completed twice");
    }

    /// Keeps buffers of finished batches, to build later batches in, as far as they fit in
    /// `SPARE_BYTES_MAX` with the buffers already kept; hands back the rest, for the caller to free once it
    /// no longer holds the lock the accumulator is shared under.
    pub fn recycle(&mut self, buffers: impl IntoIterator<Item = BytesMut>) -> Vec<BytesMut> {
        buffers
            .into_iter()
            .filter_map(|buf| self.spare.keep(buf))
            .collect()
    }

    /// Whether every batch opened before `target` (from [`Accumulator::seal_all`]) is done.
    pub fn finished_below(&self, target: u64) -> bool {
        match self.unfinished.first() {
            None => true,
            Some(&oldest) => oldest >= target,
        }
    }

    /// Whether nothing is open, queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.unfinished.is_empty()
    }

    /// The shared name of `topic`, so per-batch bookkeeping clones a pointer, not the string.
    fn topic_key(&mut self, topic: &str) -> Arc<str> {
        match self.topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => {
                let key: Arc<str> = Arc::from(topic);
                self.topics.insert(key.clone(), HashMap::default());
                key
            }
        }
    }
}

fn partition_state<'a, A, B>(
    topics: &'a mut HashMap<Arc<str>, HashMap<u32, PartitionState<A, B>>>,
    topic: &Arc<str>,
    partition: u32,
) -> &'a mut PartitionState<A, B> {
    topics
        .entry(topic.clone())
        .or_default()
        .entry(partition)
        .or_default()
}

fn push_record<A, B>(open: &mut OpenBatch<A, B>, record: PendingRecord<A>, size: usize) {
    let headers: Vec<(&str, &[u8])> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), &v[..]))
        .collect();
    open.builder.push(
        record.timestamp_ms,
        record.key.as_deref(),
        &record.value,
        &headers,
    );
    open.acks.push(record.ack);
    open.records_bytes += size;
}

/// Emptied buffers of finished batches and their capacity in bytes, at most `SPARE_BYTES_MAX`.
#[derive(Default)]
struct Spare {
    buffers: Vec<BytesMut>,
    bytes: usize,
}

impl Spare {
    /// Keeps `buf`, emptied, if it fits; hands it back otherwise.
    fn keep(&mut self, mut buf: BytesMut) -> Option<BytesMut> {
        if self.bytes + buf.capacity() > SPARE_BYTES_MAX {
            return Some(buf);
        }
        buf.clear();
        self.bytes += buf.capacity();
        self.buffers.push(buf);
        None
    }

    /// The most recently kept buffer, or a new empty one. One too small for the batch it is taken for is
    /// replaced there ([`BatchBuilder::with_buffer`]), so what is kept follows the sizes batches reach.
    fn take(&mut self) -> BytesMut {
        let buf = self.buffers.pop().unwrap_or_default();
        self.bytes -= buf.capacity();
        buf
    }
}

/// Where sealed batches go: the queue of partitions that may have a batch to send (checked, and duplicates
/// ignored, by [`Accumulator::take_dispatchable`]), the codec batches are sealed with, and how many
/// batches of a partition may be in flight.
struct Sealer {
    dispatchable: VecDeque<(Arc<str>, u32)>,
    compression: Compression,
    in_flight_max: usize,
}

impl Sealer {
    /// Seals the open batch of `partition` of `topic` into its ready queue, and announces the partition
    /// when it has a free in-flight slot.
    fn seal<A, B>(&mut self, state: &mut PartitionState<A, B>, topic: &Arc<str>, partition: u32) {
        let open = state.open.take().expect("sealing an open batch");
        debug_assert!(!open.acks.is_empty(), "open batches hold a record");
        state.next_capacity = open.builder.len().next_power_of_two();
        state.next_records = open.acks.len();
        state.ready.push_back(SealedBatch {
            id: open.id,
            topic: topic.clone(),
            partition,
            builder: open.builder,
            compression: self.compression,
            acks: open.acks,
            shared: open.shared,
            records_bytes: open.records_bytes,
        });
        if state.window.len() < self.in_flight_max {
            self.dispatchable.push_back((topic.clone(), partition));
        }
    }
}

#[cfg(test)]
#[path = "accumulator_tests.rs"]
mod tests;
