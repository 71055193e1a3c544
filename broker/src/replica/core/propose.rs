//! Proposals: publishes into Raft, with idempotent producers' duplicates answered, not appended.

use std::collections::HashMap;

use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;

use super::{Action, Pending, Proposal, ReplicaCore};
use crate::replica::raft_log::producers::{next_sequence, sequence_before, Check};
use crate::replica::types::{Ack, ReplicaError};

impl<R> ReplicaCore<R> {
    pub(super) fn propose(&mut self, proposals: Vec<Proposal<R>>) {
        if self.node.raft.state != StateRole::Leader {
            let leader = self.node.raft.leader_id;
            for p in proposals {
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
    /// committed) and refuses sequence gaps and fenced epochs; returns the proposals to write.
    fn deduplicate(&mut self, proposals: Vec<Proposal<R>>) -> Vec<Proposal<R>> {
        if proposals.iter().all(|p| p.header.producer_id < 0) {
            return proposals;
        }
        let committed = self.node.raft.raft_log.committed;
        let storage = self.storage.clone();
        let core = storage.read();
        // Sequences accepted earlier in this same step (not in the log yet).
        let mut accepted: HashMap<i64, (i16, i32)> = Default::default();
        let mut out = Vec::with_capacity(proposals.len());
        for p in proposals {
            let h = &p.header;
            if h.producer_id < 0 || h.base_sequence < 0 {
                out.push(p);
                continue;
            }
            let verdict = match accepted.get(&h.producer_id) {
                Some(&(epoch, next)) if epoch == h.producer_epoch => {
                    if h.base_sequence == next {
                        Ok(())
                    } else if sequence_before(h.base_sequence, next) {
                        Err(ReplicaError::Dropped(
                            "duplicate of a batch being written; retry".into(),
                        ))
                    } else {
                        Err(ReplicaError::Sequence(format!(
                            "out-of-order sequence from producer {}: expected {next}, got {}",
                            h.producer_id, h.base_sequence
                        )))
                    }
                }
                _ => match core.producers.check(h) {
                    Check::Write => Ok(()),
                    Check::Duplicate(w) if w.raft_index <= committed => {
                        metrics::counter!("ferry_publish_duplicates_total").increment(1);
                        self.actions.push_back(Action::Answer(
                            p.reply,
                            Ok(Ack {
                                base_offset: w.base_offset,
                                record_count: w.record_count,
                            }),
                        ));
                        continue;
                    }
                    Check::Duplicate(_) => Err(ReplicaError::Dropped(
                        "duplicate of a batch being replicated; retry".into(),
                    )),
                    Check::OutOfOrder { expected, got } => Err(ReplicaError::Sequence(format!(
                        "out-of-order sequence from producer {}: expected {expected}, got {got}",
                        h.producer_id
                    ))),
                    Check::Fenced { current, got } => Err(ReplicaError::Sequence(format!(
                        "producer {} epoch {got} is fenced by epoch {current}",
                        h.producer_id
                    ))),
                },
            };
            match verdict {
                Ok(()) => {
                    let next = next_sequence(h.base_sequence, h.record_count);
                    accepted.insert(h.producer_id, (h.producer_epoch, next));
                    out.push(p);
                }
                Err(e) => self.actions.push_back(Action::Answer(p.reply, Err(e))),
            }
        }
        out
    }
}
