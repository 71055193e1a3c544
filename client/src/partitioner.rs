//! Which partition a produced record goes to: the explicit partition when given, else the key's murmur2
//! hash (the same as Kafka's, so keys land where other clients put them), else round robin per topic.

use std::collections::HashMap;

use ferry_protocol::partitioner::partition_for_key;
use parking_lot::Mutex;

use crate::error::ClientError;

/// Picks partitions; holds the round-robin position of each topic.
#[derive(Debug, Default)]
pub struct Partitioner {
    next_by_topic: Mutex<HashMap<String, u32>>,
}

impl Partitioner {
    /// The partition of a record of `topic` (which has `partitions` partitions) with the given explicit
    /// partition and key.
    pub fn choose(
        &self,
        topic: &str,
        explicit: Option<u32>,
        key: Option<&[u8]>,
        partitions: u32,
    ) -> Result<u32, ClientError> {
        choose_partition(explicit, key, partitions, || {
            let mut next_by_topic = self.next_by_topic.lock();
            let next = match next_by_topic.get_mut(topic) {
                Some(next) => next,
                None => next_by_topic.entry(topic.to_owned()).or_insert(0),
            };
            let chosen = *next;
            *next = next.wrapping_add(1);
            chosen
        })
        .map_err(|partition| ClientError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions,
        })
    }
}

/// The pure rule: explicit partition (an error, carrying it, when out of range), else key hash, else the
/// next value of `round_robin` modulo the partition count (called only in that case).
fn choose_partition(
    explicit: Option<u32>,
    key: Option<&[u8]>,
    partitions: u32,
    round_robin: impl FnOnce() -> u32,
) -> Result<u32, u32> {
    if partitions == 0 {
        return Err(explicit.unwrap_or(0));
    }
    match (explicit, key) {
        (Some(p), _) if p < partitions => Ok(p),
        (Some(p), _) => Err(p),
        (None, Some(key)) => Ok(partition_for_key(key, partitions)),
        (None, None) => Ok(round_robin() % partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_wins_then_key_then_round_robin() {
        let p = Partitioner::default();
        assert_eq!(p.choose("t", Some(2), Some(b"k"), 3).unwrap(), 2);
        let keyed = partition_for_key(b"user-42", 5);
        for _ in 0..3 {
            assert_eq!(p.choose("t", None, Some(b"user-42"), 5).unwrap(), keyed);
        }
        let spread: Vec<u32> = (0..7)
            .map(|_| p.choose("t", None, None, 3).unwrap())
            .collect();
        assert_eq!(spread, vec![0, 1, 2, 0, 1, 2, 0]);
        // Each topic has its own position, and keyed records do not advance it.
        assert_eq!(p.choose("u", None, None, 3).unwrap(), 0);
        assert_eq!(p.choose("t", None, None, 3).unwrap(), 1);
    }

    #[test]
    fn out_of_range_partitions_are_refused() {
        let p = Partitioner::default();
        let err = p.choose("t", Some(3), None, 3).unwrap_err();
        assert!(matches!(
            err,
            ClientError::UnknownPartition {
                partition: 3,
                partitions: 3,
                ..
            }
        ));
        assert!(p.choose("t", None, None, 0).is_err());
    }
}
