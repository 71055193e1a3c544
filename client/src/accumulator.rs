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
//! every record's [`Delivery`](crate::Delivery) holds): [`Accumulator::append`] hands it back with the
//! record's index, so a record is tied to its batch without anything allocated per record.
//!
//! Sealing stops at the records: the header, CRC and compression are written by [`SealedBatch::encode`]
//! when the batch is sent, outside the lock the producer keeps the accumulator under, and with the
//! idempotent producer's sequence number already known (one CRC pass per batch, not one at sealing and
//! another at stamping).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::batch::{BatchBuilder, Compression, ProducerStamp, HEADER_LEN};
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

/// Largest record (bytes, as [`record_size`] counts) that fits in a batch of `batch_bytes_max` bytes.
pub fn record_bytes_max(batch_bytes_max: usize) -> usize {
    batch_bytes_max.saturating_sub(HEADER_LEN)
}

/// A finished batch, ready to publish once [encoded](SealedBatch::encode).
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

    /// The batch's bytes: header (with `stamp`, an idempotent producer's id and first sequence number),
    /// CRC and compression written over the records, which are not copied unless compressed.
    pub fn encode(
        builder: BatchBuilder,
        compression: Compression,
        stamp: Option<ProducerStamp>,
    ) -> Bytes {
        let mut builder = builder;
        if let Some(stamp) = stamp {
            builder.producer(stamp);
        }
        builder.finish_with(compression)
    }
}

/// Where [`Accumulator::append`] placed a record.
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

    /// Adds `record` to the open batch of `partition` of `topic`, sealing batches as they fill.
    pub fn append(
        &mut self,
        topic: &str,
        partition: u32,
        record: PendingRecord<A>,
        now: Instant,
    ) -> Placement<B> {
        self.append_at(topic, partition, record, || now)
    }

    /// [`Accumulator::append`], reading the clock (for a new batch's linger deadline) only if a batch opens.
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
                builder: BatchBuilder::with_capacity(record.timestamp_ms, capacity),
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
mod tests {
    use super::*;
    use ferry_protocol::batch::{validate_records, Records};

    fn record(ack: u32, value: &[u8]) -> PendingRecord<u32> {
        PendingRecord {
            key: None,
            value: Bytes::copy_from_slice(value),
            headers: vec![],
            timestamp_ms: 1_000,
            ack,
        }
    }

    fn encoded(batch: SealedBatch<u32>) -> Bytes {
        SealedBatch::<u32>::encode(batch.builder, batch.compression, None)
    }

    fn values(batch: SealedBatch<u32>) -> Vec<Bytes> {
        let bytes = encoded(batch);
        let h = validate_records(&bytes).unwrap();
        Records::new(bytes, h).map(|r| r.unwrap().value).collect()
    }

    #[test]
    fn record_size_matches_the_builder() {
        let headers = vec![("trace".to_owned(), Bytes::from_static(b"abc"))];
        assert_eq!(
            record_size(Some(b"key"), b"value", &headers),
            BatchBuilder::record_size(Some(b"key"), b"value", &[("trace", b"abc")])
        );
        let mut acc = Accumulator::<u32>::new(4096, Duration::ZERO);
        let now = Instant::now();
        let r = PendingRecord {
            key: Some(Bytes::from_static(b"key")),
            value: Bytes::from_static(b"value"),
            headers,
            timestamp_ms: 5,
            ack: 0u32,
        };
        let size = r.size_bytes();
        acc.append("t", 0, r, now);
        acc.seal_all();
        let batch = acc.take_dispatchable().pop().unwrap();
        assert_eq!(batch.records_bytes, size);
        assert_eq!(encoded(batch).len(), HEADER_LEN + size);
    }

    #[test]
    fn append_places_a_record_in_its_batch_and_says_when_a_batch_opened_or_sealed() {
        let one = record_size(None, &[0; 100], &[]);
        let mut acc = Accumulator::<u32, Arc<()>>::new(HEADER_LEN + 3 * one, Duration::ZERO);
        let now = Instant::now();
        let placed: Vec<Placement<Arc<()>>> = (0..4)
            .map(|i| acc.append("t", 0, record(i, &[0; 100]), now))
            .collect();
        let seen: Vec<(u32, bool)> = placed.iter().map(|p| (p.index, p.changed)).collect();
        // Opened, joined, joined and sealed (full), opened the next.
        assert_eq!(seen, vec![(0, true), (1, false), (2, true), (0, true)]);
        assert!(Arc::ptr_eq(&placed[0].shared, &placed[2].shared));
        assert!(!Arc::ptr_eq(&placed[0].shared, &placed[3].shared));
        let sent = acc.take_dispatchable();
        assert_eq!(sent.len(), 1);
        assert!(
            Arc::ptr_eq(&sent[0].shared, &placed[0].shared),
            "the batch keeps its value"
        );
        assert_eq!(sent[0].record_count(), 3);
    }

    #[test]
    fn seals_when_full_and_keeps_one_batch_in_flight_per_partition() {
        let one = record_size(None, &[0; 100], &[]);
        let mut acc = Accumulator::<u32>::new(HEADER_LEN + 2 * one, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..5 {
            acc.append("t", 0, record(i, &[i as u8; 100]), now);
        }
        // Two full batches sealed; the fifth record waits in an open batch.
        let mut first = acc.take_dispatchable();
        assert_eq!(first.len(), 1, "one in flight per partition");
        assert_eq!(first[0].acks, vec![0, 1]);
        let first_id = first[0].id;
        assert_eq!(values(first.remove(0)).len(), 2);
        assert!(acc.take_dispatchable().is_empty());
        acc.complete("t", 0, first_id);
        let second = acc.take_dispatchable();
        assert_eq!(second[0].acks, vec![2, 3]);
        acc.complete("t", 0, second[0].id);
        assert!(acc.take_dispatchable().is_empty(), "the open batch lingers");
        assert!(!acc.is_idle());
    }

    #[test]
    fn a_partition_reserves_for_its_next_batch_what_its_last_one_reached() {
        let open_capacity = |acc: &Accumulator<u32>| {
            let state = &acc.topics["t"][&0];
            state.open.as_ref().unwrap().builder.capacity()
        };
        let max = 256 * 1024;
        let mut acc = Accumulator::<u32>::new(max, Duration::from_secs(60));
        let now = Instant::now();
        acc.append("t", 0, record(0, &[0; 1000]), now);
        assert_eq!(
            open_capacity(&acc),
            BATCH_CAPACITY_MIN,
            "a first batch starts small"
        );
        let mut i = 1;
        let sent = loop {
            if let Some(batch) = acc.take_dispatchable().pop() {
                break batch;
            }
            acc.append("t", 0, record(i, &[0; 1000]), now);
            i += 1;
        };
        // The full batch was sealed and the record that did not fit opened the next one: built in one
        // buffer of the full size, never regrown, with room for as many acks as the full one had.
        assert_eq!(open_capacity(&acc), max);
        let full = sent.acks.len();
        assert!(full > 200, "{full} records in a full batch");
        let open = acc.topics["t"][&0].open.as_ref().unwrap();
        assert!(open.acks.capacity() >= full, "{}", open.acks.capacity());
        acc.seal_all();
        let mut small = Accumulator::<u32>::new(max, Duration::from_secs(60));
        small.append("t", 0, record(0, &[0; 1000]), now);
        small.seal_all();
        small.append("t", 0, record(1, &[0; 1000]), now);
        assert_eq!(
            open_capacity(&small),
            BATCH_CAPACITY_MIN,
            "a quiet partition reserves little"
        );
    }

    #[test]
    fn an_idempotent_producer_keeps_a_window_of_batches_from_the_oldest_not_completed() {
        let one = record_size(None, &[0; 100], &[]);
        let mut acc = Accumulator::<u32>::new(HEADER_LEN + one, Duration::from_secs(60))
            .with_in_flight_max(3);
        let now = Instant::now();
        for i in 0..5 {
            acc.append("t", 0, record(i, &[i as u8; 100]), now);
        }
        let first = acc.take_dispatchable();
        let acks: Vec<Vec<u32>> = first.iter().map(|b| b.acks.clone()).collect();
        assert_eq!(
            acks,
            [vec![0], vec![1], vec![2]],
            "three in flight, in order"
        );
        assert!(acc.take_dispatchable().is_empty(), "no more than three");
        // A batch that completes ahead of an older one frees no slot: the window spans from the oldest
        // batch not completed (a broker remembers as many of a producer's batches as the window holds, so
        // a retry of the oldest is always recognized, however many newer ones completed meanwhile).
        acc.complete("t", 0, first[1].id);
        assert!(
            acc.take_dispatchable().is_empty(),
            "the oldest batch still holds the window"
        );
        acc.complete("t", 0, first[0].id);
        let next = acc.take_dispatchable();
        assert_eq!(
            next.iter().map(|b| b.acks.clone()).collect::<Vec<_>>(),
            [vec![3], vec![4]],
            "the oldest completed: the window moves past both"
        );
        acc.complete("t", 0, next[1].id);
        acc.complete("t", 0, first[2].id);
        acc.complete("t", 0, next[0].id);
        assert!(acc.is_idle());
    }

    #[test]
    fn linger_seals_in_opening_order() {
        let mut acc = Accumulator::<u32>::new(1 << 20, Duration::from_millis(5));
        let t0 = Instant::now();
        acc.append("t", 0, record(0, b"a"), t0);
        acc.append("t", 1, record(1, b"b"), t0 + Duration::from_millis(3));
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(5)));
        acc.expire(t0 + Duration::from_millis(4));
        assert!(acc.take_dispatchable().is_empty());
        acc.expire(t0 + Duration::from_millis(5));
        let sent = acc.take_dispatchable();
        assert_eq!((sent.len(), sent[0].partition), (1, 0));
        acc.expire(t0 + Duration::from_millis(8));
        let sent = acc.take_dispatchable();
        assert_eq!((sent.len(), sent[0].partition), (1, 1));
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn a_slow_round_trip_grows_the_next_batch_instead_of_queueing_small_ones() {
        let linger = Duration::from_millis(5);
        let mut acc = Accumulator::<u32>::new(1 << 20, linger);
        let t0 = Instant::now();
        acc.append("t", 0, record(0, b"a"), t0);
        acc.expire(t0 + linger);
        let first = acc
            .take_dispatchable()
            .pop()
            .expect("sent at its linger deadline");
        // While it is in flight, records keep coming for many linger periods.
        for i in 1..=10u32 {
            let now = t0 + linger * (i + 1);
            acc.append("t", 0, record(i, b"b"), now);
            acc.expire(now + linger);
            assert!(
                acc.take_dispatchable().is_empty(),
                "one batch in flight per partition"
            );
        }
        acc.complete("t", 0, first.id);
        let second = acc
            .take_dispatchable()
            .pop()
            .expect("sealed once the first is done");
        assert_eq!(
            second.acks,
            (1..=10).collect::<Vec<_>>(),
            "one batch, not ten"
        );
        acc.complete("t", 0, second.id);
        assert!(acc.is_idle());
    }

    #[test]
    fn an_idempotent_producer_sends_a_batch_that_is_not_full_only_into_an_empty_pipe() {
        let linger = Duration::ZERO;
        let mut acc = Accumulator::<u32>::new(1 << 20, linger).with_in_flight_max(5);
        let t0 = Instant::now();
        let mut sent = Vec::new();
        // Records trickle in while nothing comes back: the first goes at once, then the next batch grows.
        for i in 0..10u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            acc.append("t", 0, record(i, b"v"), now);
            acc.expire(now);
            sent.extend(acc.take_dispatchable());
        }
        assert_eq!(
            sent.iter().map(|b| b.acks.clone()).collect::<Vec<_>>(),
            [vec![0]],
            "one batch that is not full in flight, whatever the in-flight bound"
        );
        acc.complete("t", 0, sent[0].id);
        let second = acc.take_dispatchable();
        assert_eq!(
            second.len(),
            1,
            "the grown batch goes once the pipe is empty"
        );
        assert_eq!(second[0].acks, (1..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_that_is_not_full_waits_behind_a_full_one_sealed_in_the_same_turn() {
        let one = record_size(None, &[0; 100], &[]);
        let mut acc =
            Accumulator::<u32>::new(HEADER_LEN + 3 * one, Duration::ZERO).with_in_flight_max(5);
        let now = Instant::now();
        for i in 0..4 {
            acc.append("t", 0, record(i, &[0; 100]), now);
        }
        acc.expire(now);
        let sent = acc.take_dispatchable();
        assert_eq!(
            sent.iter().map(|b| b.acks.clone()).collect::<Vec<_>>(),
            [vec![0, 1, 2]],
            "the full batch goes; the remainder grows"
        );
        acc.complete("t", 0, sent[0].id);
        let rest = acc.take_dispatchable();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].acks, vec![3]);
    }

    #[test]
    fn flush_waits_only_for_batches_opened_before_it() {
        let mut acc = Accumulator::<u32>::new(1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        acc.append("a", 0, record(0, b"x"), now);
        acc.append("b", 0, record(1, b"y"), now);
        let target = acc.seal_all();
        let sent = acc.take_dispatchable();
        assert_eq!(sent.len(), 2, "partitions go in parallel");
        // A record appended after the flush does not hold it up.
        acc.append("a", 0, record(2, b"z"), now);
        assert!(!acc.finished_below(target));
        acc.complete(&sent[1].topic, sent[1].partition, sent[1].id);
        assert!(!acc.finished_below(target));
        acc.complete(&sent[0].topic, sent[0].partition, sent[0].id);
        assert!(acc.finished_below(target));
        assert!(!acc.is_idle());
    }

    #[test]
    fn far_apart_timestamps_start_a_new_batch() {
        let mut acc = Accumulator::<u32>::new(1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let mut late = record(1, b"late");
        late.timestamp_ms = 1_000 + i64::from(i32::MAX) + 1;
        acc.append("t", 0, record(0, b"early"), now);
        acc.append("t", 0, late, now);
        acc.seal_all();
        let first = acc.take_dispatchable().pop().unwrap();
        assert_eq!(first.acks, vec![0]);
        acc.complete("t", 0, first.id);
        let second = acc.take_dispatchable().pop().unwrap();
        assert_eq!(second.acks, vec![1]);
        let bytes = encoded(second);
        let h = validate_records(&bytes).unwrap();
        let r = Records::new(bytes, h).next().unwrap().unwrap();
        assert_eq!(r.timestamp_ms, 1_000 + i64::from(i32::MAX) + 1);
    }
}
