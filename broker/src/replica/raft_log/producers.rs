//! Idempotent publishing: per partition, the last sequence numbers each producer wrote. A producer stamps
//! every batch with its id, epoch and the sequence number of the batch's first record (consecutive per
//! partition). The table is derived from the log itself — every replica updates it as it appends and rebuilds
//! it from recent batch headers when it opens — so a new leader after a failover knows what the old one
//! accepted. The leader checks each proposal against it: a batch it already holds is answered with the
//! original offsets instead of being written again.

use std::collections::{HashMap, VecDeque};

use ferry_protocol::batch::BatchHeader;

/// Producers remembered per partition; the one that wrote longest ago is forgotten first.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// Recent batches remembered per producer and partition: a retry of any of them is recognized.
pub const RECENT_BATCHES_MAX: usize = 5;
/// Segments scanned at open to rebuild the table (a retry older than that is not recognized).
pub const REBUILD_SEGMENTS: usize = 2;

/// The sequence number after a batch of `count` records starting at `base` (wrapping to 0 after
/// `i32::MAX`, as producers do).
pub fn next_sequence(base: i32, count: u32) -> i32 {
    base.wrapping_add(count as i32) & i32::MAX
}

/// Whether sequence `a` comes before `b` on the wrapping sequence circle (`0..=i32::MAX`): within half a
/// circle, as Kafka compares them, so a window of a few batches around the wrap orders right.
pub fn sequence_before(a: i32, b: i32) -> bool {
    let d = (i64::from(b) - i64::from(a)).rem_euclid(1i64 << 31);
    d != 0 && d < 1i64 << 30
}

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub base_sequence: i32,
    pub record_count: u32,
    pub base_offset: u64,
    pub raft_index: u64,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Written>,
}

impl Producer {
    fn next_sequence(&self) -> Option<i32> {
        self.recent
            .back()
            .map(|w| next_sequence(w.base_sequence, w.record_count))
    }
}

/// What the table says of a new batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not an idempotent batch, or the next one expected: write it.
    Write,
    /// The first batch of a producer id (or of a newer epoch) this table knows nothing of: any sequence
    /// may be written (the producer may have been forgotten), though a new producer starts at 0.
    New,
    /// Already written: answer with where it landed.
    Duplicate(Written),
    /// A sequence gap: an earlier batch of this producer is missing.
    OutOfOrder { expected: i32, got: i32 },
    /// A newer epoch of this producer id has written.
    Fenced { current: i16, got: i16 },
}

/// The table of one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, Producer>,
}

impl ProducerTable {
    /// What to do with a batch stamped with `h`.
    pub fn check(&self, h: &BatchHeader) -> Check {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Check::Write;
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
            // Unknown producer (new, or forgotten): any first sequence is accepted.
            return Check::New;
        };
        if h.producer_epoch < p.epoch {
            return Check::Fenced {
                current: p.epoch,
                got: h.producer_epoch,
            };
        }
        if h.producer_epoch > p.epoch {
            return Check::New; // a new epoch starts its sequences afresh
        }
        if let Some(w) = p
            .recent
            .iter()
            .find(|w| w.base_sequence == h.base_sequence && w.record_count == h.record_count)
        {
            return Check::Duplicate(*w);
        }
        match p.next_sequence() {
            Some(expected) if expected != h.base_sequence => Check::OutOfOrder {
                expected,
                got: h.base_sequence,
            },
            _ => Check::Write,
        }
    }

    /// Records a batch written to the log at `raft_index`, its first record at `base_offset`.
    pub fn record(&mut self, h: &BatchHeader, base_offset: u64, raft_index: u64) {
        if h.producer_id < 0 || h.base_sequence < 0 || h.is_control() {
            return;
        }
        let p = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.recent.clear();
        }
        p.recent.push_back(Written {
            base_sequence: h.base_sequence,
            record_count: h.record_count,
            base_offset,
            raft_index,
        });
        while p.recent.len() > RECENT_BATCHES_MAX {
            p.recent.pop_front();
        }
        if self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.recent.back().map_or(0, |w| w.raft_index))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.producers.remove(&id);
            }
        }
    }

    /// The table of a log whose recent batches have these headers (in log order).
    pub fn rebuild(headers: &[BatchHeader]) -> Self {
        let mut t = ProducerTable::default();
        for h in headers {
            t.record(h, h.base_offset, h.raft_index);
        }
        t
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_order_across_the_wrap() {
        assert!(sequence_before(5, 6));
        assert!(!sequence_before(6, 5));
        assert!(!sequence_before(7, 7));
        let near_end = i32::MAX - 2;
        let wrapped = next_sequence(near_end, 10);
        assert_eq!(wrapped, 7);
        assert!(sequence_before(near_end, wrapped), "the wrap is later");
        assert!(!sequence_before(wrapped, near_end));
    }
    use ferry_protocol::batch::{BatchBuilder, ProducerStamp};

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(0);
        b.producer(ProducerStamp {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
        });
        for _ in 0..records {
            b.push(0, None, b"v", &[]);
        }
        BatchHeader::parse(&b.finish()).unwrap()
    }

    #[test]
    fn sequences_are_checked_and_retries_recognized() {
        let mut t = ProducerTable::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(t.check(&first), Check::New);
        t.record(&first, 100, 10);
        let retry = header(7, 0, 0, 3);
        assert_eq!(
            t.check(&retry),
            Check::Duplicate(Written {
                base_sequence: 0,
                record_count: 3,
                base_offset: 100,
                raft_index: 10
            })
        );
        assert_eq!(t.check(&header(7, 0, 3, 1)), Check::Write);
        assert_eq!(
            t.check(&header(7, 0, 5, 1)),
            Check::OutOfOrder {
                expected: 3,
                got: 5
            }
        );
        assert_eq!(
            t.check(&header(-1, -1, -1, 1)),
            Check::Write,
            "not idempotent"
        );
        assert_eq!(
            t.check(&header(8, 0, 42, 1)),
            Check::New,
            "unknown producer"
        );
        t.record(&header(7, 1, 0, 1), 200, 11);
        assert_eq!(
            t.check(&header(7, 0, 3, 1)),
            Check::Fenced { current: 1, got: 0 }
        );
    }

    #[test]
    fn rebuilt_from_headers_like_it_was_built() {
        let mut hs = Vec::new();
        for (i, seq) in [0, 2, 4].into_iter().enumerate() {
            let mut h = header(3, 0, seq, 2);
            h.base_offset = i as u64 * 2;
            h.raft_index = i as u64 + 1;
            hs.push(h);
        }
        let t = ProducerTable::rebuild(&hs);
        assert_eq!(t.len(), 1);
        assert!(matches!(t.check(&header(3, 0, 2, 2)), Check::Duplicate(w) if w.base_offset == 2));
        assert_eq!(t.check(&header(3, 0, 6, 1)), Check::Write);
    }
}
