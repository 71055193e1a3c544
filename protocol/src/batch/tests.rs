#[test]
fn lz4_batches_round_trip_and_damage_is_caught() {
    let mut b = BatchBuilder::new(10);
    for i in 0..200u32 {
        b.push(
            10 + i64::from(i),
            Some(b"key"),
            format!("value value value {i}").as_bytes(),
            &[("h", b"x")],
        );
    }
    let plain_len = {
        let mut p = BatchBuilder::new(10);
        p.push(10, None, b"v", &[]);
        p.finish().len()
    };
    let packed = b.finish_with(Compression::Lz4);
    let h = validate_records(&packed).unwrap();
    assert_eq!(h.attributes & ATTR_COMPRESSION_MASK, CODEC_LZ4);
    assert!(packed.len() > plain_len);
    let recs: Vec<Record> = Records::new(packed.clone(), h)
        .map(Result::unwrap)
        .collect();
    assert_eq!(recs.len(), 200);
    assert_eq!(&recs[199].value[..], b"value value value 199");
    assert_eq!(recs[199].timestamp_ms, 209);
    // A body that decompresses wrong is refused, even with a valid CRC.
    let mut bad = BytesMut::from(&packed[..]);
    let n = bad.len();
    bad[n - 3] ^= 0xff;
    let crc = compute_crc(&bad);
    bad[28..32].copy_from_slice(&crc.to_le_bytes());
    assert!(validate_records(&bad).is_err());
    // A declared size beyond the hard limit is refused before allocating.
    let mut bomb = BytesMut::from(&packed[..]);
    bomb[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = compute_crc(&bomb);
    bomb[28..32].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        validate_records(&bomb),
        Err(BatchError::BadCompression(_))
    ));
    // Incompressible records stay uncompressed.
    let mut r = BatchBuilder::new(0);
    r.push(0, None, &noise(512), &[]);
    assert_eq!(
        BatchHeader::parse(&r.finish_with(Compression::Lz4))
            .unwrap()
            .attributes,
        0
    );
}

#[test]
fn a_restamped_batch_validates_and_carries_the_stamp() {
    let mut b = BatchBuilder::new(5);
    b.push(5, Some(b"k"), b"v", &[]);
    let plain = b.finish();
    let shared = plain.clone(); // shared bytes are copied, not changed under the other owner
    let stamp = ProducerStamp {
        producer_id: 42,
        producer_epoch: 1,
        base_sequence: 7,
    };
    let stamped = with_producer(plain, stamp).unwrap();
    let h = validate_records(&stamped).unwrap();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (42, 1, 7)
    );
    assert_eq!(BatchHeader::parse(&shared).unwrap().producer_id, -1);
    assert!(with_producer(Bytes::from_static(b"short"), stamp).is_err());
}

use super::builder::*;
use super::format::*;
use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

type Rec = (i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn build(base_ts: i64, recs: &[Rec]) -> Bytes {
    let mut b = BatchBuilder::new(base_ts);
    for (ts, k, v, hs) in recs {
        let hs: Vec<(&str, &[u8])> = hs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        b.push(*ts, k.as_deref(), v, &hs);
    }
    b.finish()
}

proptest! {
    #[test]
    fn round_trip(
        base_ts in 0i64..4_000_000_000_000,
        recs in prop::collection::vec(
            (0i64..1_000_000, prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
             prop::collection::vec(any::<u8>(), 0..200),
             prop::collection::vec(("[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..16)), 0..3)),
            1..20),
        base_offset in 0u64..u64::MAX / 2,
    ) {
        let recs: Vec<Rec> = recs.into_iter().map(|(d, k, v, h)| (base_ts + d, k, v, h)).collect();
        let batch = build(base_ts, &recs);
        let h = validate_records(&batch).unwrap();
        prop_assert_eq!(h.record_count as usize, recs.len());
        // The broker's stamp does not disturb the CRC.
        let mut stored = stamp(&h, base_offset, 7, 9).unwrap().to_vec();
        stored.extend_from_slice(&batch[STAMP_LEN..]);
        let stored = Bytes::from(stored);
        let h = validate_stored(&stored).unwrap();
        prop_assert_eq!((h.base_offset, h.raft_term, h.raft_index), (base_offset, 7, 9));
        let got: Vec<Record> = Records::new(stored.clone(), h).map(Result::unwrap).collect();
        prop_assert_eq!(got.len(), recs.len());
        for (i, (r, (ts, k, v, hs))) in got.iter().zip(&recs).enumerate() {
            prop_assert_eq!(r.offset, base_offset + i as u64);
            prop_assert_eq!(r.timestamp_ms, *ts);
            prop_assert_eq!(r.key.as_deref(), k.as_deref());
            prop_assert_eq!(&r.value[..], &v[..]);
            prop_assert_eq!(r.headers.len(), hs.len());
            for (a, (hk, hv)) in r.headers.iter().zip(hs) {
                prop_assert_eq!(&a.key, hk);
                prop_assert_eq!(&a.value[..], &hv[..]);
            }
        }
    }

    #[test]
    fn any_flipped_byte_of_a_stored_batch_is_caught(pos in 0..200usize, bit in 0u8..8) {
        let batch = build(1000, &[(1000, Some(b"k".to_vec()), vec![7u8; 150], vec![])]);
        let h = BatchHeader::parse(&batch).unwrap();
        let mut stored = stamp(&h, 40, 2, 17).unwrap().to_vec();
        stored.extend_from_slice(&batch[STAMP_LEN..]);
        validate_stored(&stored).unwrap();
        let pos = pos % stored.len();
        stored[pos] ^= 1 << bit;
        prop_assert!(validate_stored(&stored).is_err(), "flip at {} passed", pos);
    }

    #[test]
    fn any_flipped_covered_byte_is_caught(pos in CRC_START..200usize, bit in 0u8..8) {
        let batch = build(1000, &[(1000, Some(b"k".to_vec()), vec![7u8; 150], vec![])]);
        let mut bad = batch.to_vec();
        let pos = pos.min(bad.len() - 1);
        bad[pos] ^= 1 << bit;
        prop_assert!(validate(&bad).is_err());
    }

    #[test]
    fn decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = Bytes::from(data);
        if let Ok(h) = validate(&b) {
            for r in Records::new(b.clone(), h) { let _ = r; }
        }
        let _ = validate_records(&b);
    }
}

#[test]
fn control_batches_hold_no_records() {
    let c = control_batch(2, b"conf", 5).freeze();
    let h = validate(&c).unwrap();
    assert!(h.is_control());
    assert_eq!(h.record_count, 0);
    assert_eq!(
        control_payload(&c).unwrap(),
        (2, Bytes::from_static(b"conf"))
    );
    assert_eq!(Records::new(c.clone(), h).count(), 0);
    assert!(
        validate_records(&c).is_err(),
        "clients may not send control batches"
    );
}

#[test]
fn an_overflowing_stamp_is_refused_not_a_panic() {
    // Found by fuzzing (fuzz/regressions/batch_decode/offset-overflow): the stamp is outside the CRC.
    let batch = build(
        1,
        &[
            (1, None, b"a".to_vec(), vec![]),
            (1, None, b"b".to_vec(), vec![]),
        ],
    );
    let h = BatchHeader::parse(&batch).unwrap();
    let mut stored = stamp(&h, u64::MAX, 1, 1).unwrap().to_vec();
    stored.extend_from_slice(&batch[STAMP_LEN..]);
    assert_eq!(validate(&stored), Err(BatchError::OffsetOverflow(u64::MAX)));
    assert_eq!(
        validate_stored(&stored),
        Err(BatchError::OffsetOverflow(u64::MAX))
    );
    let h = BatchHeader::parse(&stored).unwrap();
    let _ = h.next_offset();
    let _: Vec<_> = Records::new(Bytes::from(stored), h).collect();
}

#[test]
fn length_and_crc_errors() {
    let batch = build(1, &[(1, None, b"v".to_vec(), vec![])]);
    assert!(matches!(
        validate(&batch[..batch.len() - 1]),
        Err(BatchError::LengthMismatch { .. })
    ));
    assert!(matches!(
        validate(&batch[..10]),
        Err(BatchError::TooShort(10))
    ));
    let mut bad = batch.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(
        validate(&bad),
        Err(BatchError::CrcMismatch { .. })
    ));
}

#[test]
fn a_batch_built_in_a_used_buffer_is_the_batch_built_in_a_fresh_one() {
    let mut first = BatchBuilder::new(3);
    first.push(3, Some(b"old key"), &[0xAB; 300], &[("h", b"old")]);
    let used = first.finish().try_into_mut().expect("the only owner");
    let (ptr, cap) = (used.as_ptr(), used.capacity());
    let mut reused = BatchBuilder::with_buffer(9, used, 64);
    let mut fresh = BatchBuilder::new(9);
    for b in [&mut reused, &mut fresh] {
        b.push(10, None, b"new", &[]);
    }
    let reused = reused.finish();
    // The same memory, and nothing of the old batch in the new one.
    assert_eq!(reused.as_ptr(), ptr);
    let fresh = fresh.finish();
    assert_eq!(reused, fresh);
    assert_eq!(validate_records(&reused).unwrap().record_count, 1);
    // A buffer without room for what is asked is replaced by one of exactly that, not grown.
    let mut small = BytesMut::with_capacity(100);
    small.extend_from_slice(&[0xCD; 100]);
    let mut grown = BatchBuilder::with_buffer(9, small, cap + 1000);
    assert_eq!(grown.capacity(), cap + 1000);
    grown.push(10, None, b"new", &[]);
    assert_eq!(grown.finish(), fresh);
}

#[test]
fn a_compressed_batch_hands_back_the_buffer_it_was_built_in() {
    let mut b = BatchBuilder::with_capacity(1, 64 * 1024);
    for i in 0..100 {
        b.push(1 + i, None, &[b'a'; 200], &[]);
    }
    let (packed, spare) = b.finish_compressed(Compression::Lz4);
    assert_eq!(validate_records(&packed).unwrap().record_count, 100);
    assert!(spare.expect("compressed").capacity() >= 64 * 1024);
    // Bytes LZ4 cannot shrink: the batch goes as built, in its own buffer.
    let mut b = BatchBuilder::new(1);
    b.push(1, None, &noise(400), &[]);
    let (plain, spare) = b.finish_compressed(Compression::Lz4);
    assert!(spare.is_none(), "not smaller: sent as built");
    assert_eq!(
        BatchHeader::parse(&plain).unwrap().attributes & ATTR_COMPRESSION_MASK,
        0
    );
}

/// `len` bytes LZ4 cannot shrink (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
