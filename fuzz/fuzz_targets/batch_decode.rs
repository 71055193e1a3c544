//! Fuzzes the record batch decoder of `ferry-protocol` (`protocol/src/batch.rs`): the code a broker runs on
//! every batch a client sends and every batch it reads back from disk, so it must reject any bytes with an
//! error, never panic, loop or over-allocate.
//!
//! Each input is checked twice:
//! 1. as it is, which exercises the header checks (`BatchHeader::parse`, `validate`);
//! 2. with `batch_len`, `magic` and the CRC patched to match, so mutations of the body reach the record
//!    walker (`Records`, `validate_records`) instead of dying at the CRC check nearly every time.
//!
//! Beyond "no panic", the oracles are:
//! - `validate` accepts only what its doc promises (length, magic, known attributes, CRC), and agrees with
//!   `BatchHeader::parse`, and `next_offset` is safe for any stamp (the CRC does not cover it);
//! - `Records` yields at most `record_count` items, stops after its first error, yields nothing for a
//!   control batch, and `control_payload` is the body after the entry-type byte;
//! - a compressed batch (LZ4) that `validate_records` accepts decodes and re-encodes uncompressed;
//! - when `validate_records` accepts, every record decodes, and re-encoding the records with `BatchBuilder`
//!   (same base timestamp and producer stamp) gives a batch of the same length that `validate_records`
//!   accepts and that decodes to equal records, and is a fixed point of decode-then-encode. The bytes are not
//!   compared with the input's: the input may carry a non-zero reserved byte, any `max_timestamp`, and any
//!   negative key length for "no key", none of which the decoder checks and all of which the builder writes
//!   one way.
//! - Timestamps compare equal only when `base_timestamp + timestamp_delta` does not overflow `i64`: the
//!   decoder wraps such a sum while the builder saturates and clamps, so those records cannot round-trip.

#![no_main]

use bytes::Bytes;
use ferry_protocol::batch::{
    compute_crc, control_payload, validate, validate_records, BatchBuilder, BatchError,
    BatchHeader, ProducerStamp, Record, Records, ATTR_COMPRESSION_MASK, ATTR_CONTROL, HEADER_LEN,
    MAGIC, STAMP_LEN,
};
use ferry_protocol::limits::BATCH_RECORDS_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(Bytes::copy_from_slice(data));
    if let Some(patched) = patch_header(data) {
        check(patched);
    }
});

/// Every check on one candidate batch.
fn check(b: Bytes) {
    let parsed = BatchHeader::parse(&b);
    assert_eq!(parsed.is_ok(), b.len() >= HEADER_LEN);
    let Ok(h) = validate(&b) else {
        assert!(
            validate_records(&b).is_err(),
            "validate_records accepted what validate rejects"
        );
        return;
    };
    assert_eq!(Ok(h), parsed, "validate and parse disagree on the header");
    assert_eq!(h.batch_len as usize, b.len());
    assert_eq!(h.magic, MAGIC);
    assert_eq!(h.attributes & !(ATTR_COMPRESSION_MASK | ATTR_CONTROL), 0);
    assert_eq!(h.crc, compute_crc(&b));
    // Readers call this on every fetched batch; base_offset is not CRC-covered, so any value must be safe.
    let _ = h.next_offset();
    let walked = walk(&b, h);
    if h.is_control() {
        check_control(&b, &walked);
    }
    if let Ok(hr) = validate_records(&b) {
        assert_eq!(hr, h);
        check_accepted(&b, h, walked);
    }
}

/// Iterates every item of a validated batch and checks the iterator's own contract.
fn walk(b: &Bytes, h: BatchHeader) -> Vec<Result<Record, BatchError>> {
    let items: Vec<_> = Records::new(b.clone(), h).collect();
    assert!(
        items.len() <= h.record_count as usize,
        "more records than declared"
    );
    if let Some(bad) = items.iter().position(Result::is_err) {
        assert_eq!(
            bad,
            items.len() - 1,
            "records iterator went on after an error"
        );
    }
    items
}

/// A control batch yields no records; its payload is everything after the entry-type byte.
fn check_control(b: &Bytes, walked: &[Result<Record, BatchError>]) {
    assert!(walked.is_empty(), "a control batch yielded records");
    match control_payload(b) {
        Ok((entry_type, data)) => {
            assert_eq!(entry_type, b[HEADER_LEN]);
            assert_eq!(&data[..], &b[HEADER_LEN + 1..]);
        }
        Err(e) => assert_eq!(e, BatchError::TooShort(b.len())),
    }
}

/// What must hold for a batch `validate_records` accepted: every record decodes, then the round trip.
fn check_accepted(b: &Bytes, h: BatchHeader, walked: Vec<Result<Record, BatchError>>) {
    assert!(!h.is_control() && h.attributes & !ATTR_COMPRESSION_MASK == 0);
    assert!((1..=BATCH_RECORDS_MAX).contains(&h.record_count));
    let records: Vec<Record> = walked
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("validate_records accepted a batch whose records do not decode");
    assert_eq!(records.len(), h.record_count as usize);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, h.base_offset.wrapping_add(i as u64));
    }
    if h.attributes & ATTR_COMPRESSION_MASK != 0 {
        // Compressed: the records decoded from the block must survive an uncompressed re-encoding.
        let again = encode(h, &records);
        let h2 = validate_records(&again).expect("re-encoded batch does not validate");
        let decoded: Vec<Record> = Records::new(again, h2).map(Result::unwrap).collect();
        assert_eq!(decoded.len(), records.len());
        return;
    }
    check_round_trip(b, h, &records);
}

/// Re-encodes `records` with `BatchBuilder` and checks the result against the batch `b` they came from.
fn check_round_trip(b: &Bytes, h: BatchHeader, records: &[Record]) {
    let again = encode(h, records);
    assert_eq!(again.len(), b.len(), "re-encoding changed the batch length");
    // Give the copy the input's broker stamp so that record offsets compare equal.
    let mut stamped = b[..STAMP_LEN].to_vec();
    stamped.extend_from_slice(&again[STAMP_LEN..]);
    let stamped = Bytes::from(stamped);
    let h2 = validate_records(&stamped).expect("re-encoded batch does not validate");
    assert_eq!(builder_fields(h2), builder_fields(h));
    let decoded: Vec<Record> = Records::new(stamped, h2).map(Result::unwrap).collect();
    assert_eq!(decoded.len(), records.len());
    for (got, want) in decoded.iter().zip(records) {
        assert_same_record(got, want, h.base_timestamp);
    }
    let twice = encode(h2, &decoded);
    assert_eq!(twice, again, "decode-then-encode is not a fixed point");
}

/// The header fields `BatchBuilder` copies from its arguments rather than computing.
fn builder_fields(h: BatchHeader) -> (u32, i64, i64, i16, i32) {
    (
        h.record_count,
        h.base_timestamp,
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
    )
}

/// Equal records, except a timestamp whose delta wrapped `i64` (see the module doc).
fn assert_same_record(got: &Record, want: &Record, base_timestamp: i64) {
    assert_eq!(
        (got.offset, &got.key, &got.value, &got.headers),
        (want.offset, &want.key, &want.value, &want.headers)
    );
    if representable(want.timestamp_ms, base_timestamp) {
        assert_eq!(got.timestamp_ms, want.timestamp_ms);
    }
}

/// Whether `BatchBuilder` can store `timestamp_ms` exactly as a delta from `base_timestamp`.
fn representable(timestamp_ms: i64, base_timestamp: i64) -> bool {
    timestamp_ms
        .checked_sub(base_timestamp)
        .is_some_and(|d| i32::try_from(d).is_ok())
}

/// `records` re-encoded with `BatchBuilder`, with the base timestamp and producer stamp of `h`.
fn encode(h: BatchHeader, records: &[Record]) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(h.base_timestamp, h.batch_len as usize);
    builder.producer(ProducerStamp {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        base_sequence: h.base_sequence,
    });
    for r in records {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|x| (x.key.as_str(), &x.value[..]))
            .collect();
        builder.push(r.timestamp_ms, r.key.as_deref(), &r.value, &headers);
    }
    builder.finish()
}

/// `data` with `batch_len`, `magic` and the CRC set so that `validate` gets past them, if it is long enough
/// to hold a header. Everything else is left to the fuzzer.
fn patch_header(data: &[u8]) -> Option<Bytes> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let len = u32::try_from(data.len()).ok()?;
    let mut b = data.to_vec();
    b[24..28].copy_from_slice(&len.to_le_bytes());
    b[32] = MAGIC;
    let crc = compute_crc(&b);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    (b[..] != data[..]).then(|| Bytes::from(b))
}
