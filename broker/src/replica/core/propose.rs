//! Proposals: publishes into Raft, with idempotent producers' duplicates answered, not appended.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;

use super::{Action, Parked, Pending, Proposal, ReplicaCore, PARKED_MAX, SEQUENCE_WAIT_MS};
use crate::replica::raft_log::producers::{next_sequence, sequence_before, Check};
use crate::replica::types::{Ack, ReplicaError};

impl<R> ReplicaCore<R> {
    pub(super) fn propose(&mut self, proposals: Vec<Proposal<R>>) {
        self.propose_waited(proposals.into_iter().map(|p| (p, None)).collect());
    }

    /// [`ReplicaCore::propose`] of publishes each with the deadline of its wait for earlier sequences,
    /// if it was parked.
    fn propose_waited(&mut self, proposals: VecDeque<(Proposal<R>, Option<Instant>)>) {
        if self.node.raft.state != StateRole::Leader {
            let leader = self.node.raft.leader_id;
            for (p, _) in proposals {
                self.actions.push_back(Action::Answer(
                    p.reply,
                    Err(ReplicaError::NotLeader { leader }),
                ));
            }
            return;
        }
        let proposals = self.deduplicate(proposals);
        if proposals.is_empty() {
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        let mut entries = Vec::with_capacity(proposals.len());
        for p in &proposals {
            entries.push(Entry {
                data: p.batch.clone(),
                ..Default::default()
            });
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.node.raft.id;
        m.entries = entries.into();
        if let Err(e) = self.node.step(m) {
            for p in proposals {
                self.actions.push_back(Action::Answer(
                    p.reply,
                    Err(ReplicaError::Dropped(e.to_string())),
                ));
            }
            return;
        }
        let term = self.node.raft.term;
        assert_eq!(
            self.node.raft.raft_log.last_index(),
            before + proposals.len() as u64
        );
        for (i, p) in proposals.into_iter().enumerate() {
            self.pending.push_back(Pending {
                index: before + 1 + i as u64,
                term,
                durability: p.durability,
                placed: None,
                reply: Some(p.reply),
            });
        }
    }

    /// Answers idempotent producers' retries of batches already written (with their offsets, once
    /// committed), holds batches that arrived ahead of their sequence until the ones before them come,
    /// and refuses sequence gaps that stay open and fenced epochs; returns the proposals to write, in
    /// sequence order per producer.
    fn deduplicate(
        &mut self,
        proposals: VecDeque<(Proposal<R>, Option<Instant>)>,
    ) -> Vec<Proposal<R>> {
        if self.parked.is_empty() && proposals.iter().all(|(p, _)| p.header.producer_id < 0) {
            return proposals.into_iter().map(|(p, _)| p).collect();
        }
        let committed = self.node.raft.raft_log.committed;
        let storage = self.storage.clone();
        let core = storage.read();
        // Sequences accepted earlier in this same step (not in the log yet).
        let mut accepted: HashMap<i64, (i16, i32)> = Default::default();
        let mut out = Vec::with_capacity(proposals.len());
        // Each with the deadline it got when first parked, if it was.
        let mut queue = proposals;
        while let Some((p, parked_until)) = queue.pop_front() {
            let h = &p.header;
            if h.producer_id < 0 || h.base_sequence < 0 {
                out.push(p);
                continue;
            }
            let waited_out = parked_until.is_some_and(|until| until <= self.now);
            let verdict = match accepted.get(&h.producer_id) {
                Some(&(epoch, next)) if epoch == h.producer_epoch => {
                    if h.base_sequence == next {
                        Verdict::Write
                    } else if sequence_before(h.base_sequence, next) {
                        Verdict::Refuse(ReplicaError::Dropped(
                            "duplicate of a batch being written; retry".into(),
                        ))
                    } else if waited_out {
                        Verdict::Refuse(gap(h.producer_id, next, h.base_sequence))
                    } else {
                        Verdict::Park
                    }
                }
                _ => match core.producers.check(h) {
                    Check::Write => Verdict::Write,
                    // A new producer's first batch is sequence 0; a later one that came first waits
                    // for it. Once the wait is over it is written anyway: the producer may have been
                    // forgotten (evicted, or older than the table rebuilt at open) and go on from where
                    // it was.
                    Check::New if h.base_sequence == 0 || waited_out => Verdict::Write,
                    Check::New => Verdict::Park,
                    Check::Duplicate(w) if w.raft_index <= committed => {
                        metrics::counter!("ferry_publish_duplicates_total").increment(1);
                        Verdict::Answered(Ack {
                            base_offset: w.base_offset,
                            record_count: w.record_count,
                        })
                    }
                    Check::Duplicate(_) => Verdict::Refuse(ReplicaError::Dropped(
                        "duplicate of a batch being replicated; retry".into(),
                    )),
                    Check::OutOfOrder { expected, got } if sequence_before(expected, got) => {
                        if waited_out {
                            Verdict::Refuse(gap(h.producer_id, expected, got))
                        } else {
                            Verdict::Park
                        }
                    }
                    // Behind the window of batches remembered: an old retry whose fate is unknown.
                    Check::OutOfOrder { expected, got } => {
                        Verdict::Refuse(ReplicaError::Sequence(format!(
                            "out-of-order sequence from producer {}: expected {expected}, got {got} \
                             (older than the batches remembered)",
                            h.producer_id
                        )))
                    }
                    Check::Fenced { current, got } => {
                        Verdict::Refuse(ReplicaError::Sequence(format!(
                            "producer {} epoch {got} is fenced by epoch {current}",
                            h.producer_id
                        )))
                    }
                },
            };
            match verdict {
                Verdict::Write => {
                    let (id, epoch) = (h.producer_id, h.producer_epoch);
                    let next = next_sequence(h.base_sequence, h.record_count);
                    accepted.insert(id, (epoch, next));
                    out.push(p);
                    self.unpark(id, epoch, next, &mut queue);
                }
                Verdict::Answered(ack) => self.actions.push_back(Action::Answer(p.reply, Ok(ack))),
                Verdict::Refuse(e) => self.actions.push_back(Action::Answer(p.reply, Err(e))),
                Verdict::Park if self.parked.len() >= PARKED_MAX => {
                    self.actions.push_back(Action::Answer(
                        p.reply,
                        Err(ReplicaError::Dropped(format!(
                            "{PARKED_MAX} publishes already wait for earlier sequences; retry"
                        ))),
                    ));
                }
                Verdict::Park => {
                    if parked_until.is_none() {
                        metrics::counter!("ferry_publish_sequence_waits_total").increment(1);
                    }
                    self.parked.push_back(Parked {
                        until: parked_until
                            .unwrap_or(self.now + Duration::from_millis(SEQUENCE_WAIT_MS)),
                        proposal: p,
                    });
                }
            }
        }
        out
    }

    /// Puts the parked publishes of producer `id` at `epoch` back at the front of `queue`, nearest to its
    /// `next` sequence first: the one just accepted may be what they waited for (or they are retries of
    /// it, refused as being written).
    fn unpark(
        &mut self,
        id: i64,
        epoch: i16,
        next: i32,
        queue: &mut VecDeque<(Proposal<R>, Option<Instant>)>,
    ) {
        if self.parked.is_empty() {
            return;
        }
        let (mut mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.parked).into_iter().partition(|p| {
                p.proposal.header.producer_id == id && p.proposal.header.producer_epoch == epoch
            });
        self.parked = rest.into();
        let distance = |seq: i32| (i64::from(seq) - i64::from(next)).rem_euclid(1i64 << 31);
        // Farthest first, each pushed to the front: the nearest ends up first.
        mine.sort_by_key(|p| std::cmp::Reverse(distance(p.proposal.header.base_sequence)));
        for p in mine {
            queue.push_front((p.proposal, Some(p.until)));
        }
    }

    /// Looks again at parked publishes whose wait ran out: a gap still open is refused (the batches
    /// before never came: lost for good, or sent under an id this leader does not know); the first batch
    /// of a producer this leader does not know is written. When one of a producer's batches has waited
    /// out, all its waiting batches are looked at together, lowest sequence first and all counted as
    /// waited out: of several that waited for a forgotten producer's next sequence the lowest goes first,
    /// and the rest follow it or are refused with it, never written ahead of it.
    pub(super) fn expire_parked(&mut self) {
        if !self.parked.iter().any(|p| p.until <= self.now) {
            return;
        }
        let now = self.now;
        let key = |p: &Parked<R>| {
            (
                p.proposal.header.producer_id,
                p.proposal.header.producer_epoch,
            )
        };
        let expired_producers: std::collections::HashSet<(i64, i16)> = self
            .parked
            .iter()
            .filter(|p| p.until <= now)
            .map(key)
            .collect();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| expired_producers.contains(&key(p)));
        self.parked = waiting.into();
        // Per producer, in sequence order: distances from a reference 2^30 before one of its sequences (a
        // total order over any window under 2^30, as sequence comparisons assume).
        let mut groups: std::collections::BTreeMap<(i64, i16), Vec<Parked<R>>> = Default::default();
        for p in due {
            groups.entry(key(&p)).or_default().push(p);
        }
        let mut ordered = VecDeque::new();
        for (_, mut group) in groups {
            let reference = i64::from(group[0].proposal.header.base_sequence) - (1i64 << 30);
            group.sort_by_key(|p| {
                (i64::from(p.proposal.header.base_sequence) - reference).rem_euclid(1i64 << 31)
            });
            ordered.extend(group.into_iter().map(|p| (p.proposal, Some(now))));
        }
        self.propose_waited(ordered);
    }
}

/// The refusal of a batch that waited [`SEQUENCE_WAIT_MS`] for the batches before it in vain.
fn gap(producer_id: i64, expected: i32, got: i32) -> ReplicaError {
    ReplicaError::Gap(format!(
        "out-of-order sequence from producer {producer_id}: expected {expected}, got {got}; the \
         batches before it did not arrive within {SEQUENCE_WAIT_MS} ms (retry once they are written)"
    ))
}

enum Verdict {
    Write,
    /// A duplicate of a committed batch: answered with where it landed.
    Answered(Ack),
    Refuse(ReplicaError),
    /// Ahead of the producer's next sequence: wait for the batches before it.
    Park,
}
