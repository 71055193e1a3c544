//! The stable key-to-partition hash. It is part of the contract: a key always lands on the same partition
//! for a given partition count, whichever client (Rust SDK, broker-side placement for plain records) places it.
//! It is Kafka's: `(murmur2(key) & 0x7fffffff) % partitions`, so keys land where Kafka's default partitioner
//! would put them.

/// Kafka's murmur2 variant (seed 0x9747b28c), over the whole key.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` in a topic of `partitions` partitions (`partitions` > 0).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn in_range_and_spread() {
        // Every partition count: in range, and 1,000 keys reach every partition (a constant, or a hash of
        // only part of the key, would not).
        for p in 1..20u32 {
            let mut hit = vec![false; p as usize];
            for k in 0..1_000 {
                let a = partition_for_key(format!("user-{k}").as_bytes(), p);
                assert!(a < p, "{a} of {p}");
                hit[a as usize] = true;
            }
            assert!(hit.iter().all(|h| *h), "{p} partitions: {hit:?}");
        }
    }
}
