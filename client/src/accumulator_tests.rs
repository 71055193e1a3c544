//! Tests of the accumulator: sealing, windows, linger, flush and placement.

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
    batch.builder.finish_with(batch.compression)
}

impl<A, B: Clone + Default> Accumulator<A, B> {
    /// [`Accumulator::append_at`] at a clock the test holds.
    fn append(
        &mut self,
        topic: &str,
        partition: u32,
        record: PendingRecord<A>,
        now: Instant,
    ) -> Placement<B> {
        self.append_at(topic, partition, record, || now)
    }
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
    let mut acc =
        Accumulator::<u32>::new(HEADER_LEN + one, Duration::from_secs(60)).with_in_flight_max(3);
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

#[test]
fn a_finished_batch_buffer_is_built_in_again_and_what_is_kept_is_bounded() {
    let mut acc = Accumulator::<u32>::new(64 * 1024, Duration::from_secs(60));
    let now = Instant::now();
    let send = |acc: &mut Accumulator<u32>, i: u32| {
        acc.append("t", 0, record(i, &[7; 100]), now);
        acc.seal_all();
        let batch = acc.take_dispatchable().pop().expect("sealed");
        let id = batch.id;
        acc.complete("t", 0, id);
        encoded(batch)
    };
    let kept = |acc: &Accumulator<u32>| {
        let sum = acc
            .spare
            .buffers
            .iter()
            .map(BytesMut::capacity)
            .sum::<usize>();
        assert_eq!(acc.spare.bytes, sum, "the count follows the buffers");
        (acc.spare.buffers.len(), sum)
    };
    let first = send(&mut acc, 0).try_into_mut().expect("the only owner");
    assert_eq!(first.capacity(), BATCH_CAPACITY_MIN);
    // A buffer of a capacity no new one would get, with stale bytes in it.
    let mut odd = BytesMut::with_capacity(BATCH_CAPACITY_MIN + 4321);
    odd.extend_from_slice(&[0xEE; 5000]);
    let ptr = odd.as_ptr();
    assert!(acc.recycle([odd]).is_empty());
    assert_eq!(kept(&acc), (1, BATCH_CAPACITY_MIN + 4321));
    let second = send(&mut acc, 1);
    assert_eq!(kept(&acc), (0, 0), "the next batch took it");
    assert_eq!(second.as_ptr(), ptr, "and was built in it");
    let values: Vec<Bytes> = Records::new(second.clone(), validate_records(&second).unwrap())
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(values, vec![Bytes::from_static(&[7; 100])], "nothing stale");
    // A buffer too small for the batch it is taken for is replaced, not grown.
    assert!(acc.recycle([BytesMut::with_capacity(100)]).is_empty());
    let third = send(&mut acc, 2);
    assert_eq!(kept(&acc), (0, 0));
    assert_eq!(validate_records(&third).unwrap().record_count, 1);
    // At most SPARE_BYTES_MAX of capacity is kept; the rest is handed back.
    let quarter = SPARE_BYTES_MAX / 4;
    let handed_back = acc
        .recycle((0..6).map(|_| BytesMut::with_capacity(quarter)))
        .len();
    assert_eq!(handed_back, 2);
    assert_eq!(kept(&acc), (4, SPARE_BYTES_MAX));
    drop(first);
}
