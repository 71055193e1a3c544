//! Leader leases: a leader serves reads (fetches, offsets, consumer-group answers) only while a quorum is
//! known to have heard from it recently enough that no other leader can have been elected since (M3 in the
//! durability audit). A partitioned leader's reads stop at once when its lease runs out, not an election
//! timeout or more later when raft-rs's check-quorum steps it down.
//!
//! Why a lease holds: with check-quorum on, a follower ignores vote requests for `election_ticks` ticks
//! after it last heard from its leader (raft-rs's in-lease check), and ticks come no faster than one per
//! `tick_ms`, so it cannot help elect anyone else for `(election_ticks - 1) * tick_ms` after it received a
//! heartbeat. A quiesced follower does not tick, and wakes only once the leader's broker has been silent for
//! a whole election timeout. Each heartbeat carries its send time (leader-local monotonic clock) in its
//! context, which raft-rs echoes in the answer: once a quorum answered heartbeats sent at or after `t`, the
//! lease runs to `t + duration`, with `duration` a margin below that bound. A leadership transfer ends the
//! lease (the transferee campaigns at once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// Context prefix of an ordinary heartbeat (followed by the send time, µs, u64 LE).
pub const HEARTBEAT_CONTEXT: &[u8] = b"ferry-hb";
/// Context prefix of the heartbeat that quiesces a group.
pub const QUIESCE_CONTEXT: &[u8] = b"ferry-quiesce";
/// Part of the vote-refusal window the lease uses (a margin for clock-rate drift between brokers).
const LEASE_SHARE: f64 = 0.9;

/// The lease bookkeeping of one replica (empty unless it leads).
#[derive(Debug)]
pub struct Lease {
    epoch: Instant,
    duration: Duration,
    /// Per peer: send time (µs since `epoch`) of the latest heartbeat it answered.
    acked: HashMap<u64, u64>,
}

impl Lease {
    /// A lease for a group ticking every `tick_ms` with an election timeout of `election_ticks` ticks; `now`
    /// is the origin of the send times heartbeats carry.
    pub fn new(tick_ms: u64, election_ticks: usize, now: Instant) -> Self {
        let refusal_ms = tick_ms.saturating_mul(election_ticks.saturating_sub(1) as u64);
        Lease {
            epoch: now,
            duration: Duration::from_millis(refusal_ms).mul_f64(LEASE_SHARE),
            acked: HashMap::new(),
        }
    }

    /// How long a lease lasts from a heartbeat's send time.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The context for a heartbeat sent `now`, with `prefix` (ordinary or quiesce).
    pub fn context(&self, prefix: &[u8], now: Instant) -> Bytes {
        let micros = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let mut b = BytesMut::with_capacity(prefix.len() + 8);
        b.put_slice(prefix);
        b.put_u64_le(micros);
        b.freeze()
    }

    /// Records an answer from `from` to a heartbeat whose context is `ctx` (ignored when not one of ours).
    pub fn on_answer(&mut self, from: u64, ctx: &[u8]) {
        let Some(sent) = [HEARTBEAT_CONTEXT, QUIESCE_CONTEXT]
            .iter()
            .find_map(|p| ctx.strip_prefix(*p))
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_le_bytes)
        else {
            return;
        };
        let e = self.acked.entry(from).or_insert(sent);
        *e = (*e).max(sent);
    }

    /// Forgets every answer (no longer leading, or leadership being handed over).
    pub fn reset(&mut self) {
        self.acked.clear();
    }

    /// Until when reads are safe for leader `me` of a group whose voters are `voters`, now: the latest send
    /// time that a quorum (this replica counting as current) answered, plus the lease duration. `None`
    /// while no quorum answered.
    pub fn until(
        &self,
        me: u64,
        voters: &[u64],
        now: Instant,
        has_quorum: impl Fn(&[u64]) -> bool,
    ) -> Option<Instant> {
        if voters == [me] {
            // Nobody else can be elected: the lease is the lifetime of this leadership.
            return Some(now + Duration::from_secs(3600));
        }
        let mut times: Vec<u64> = voters
            .iter()
            .filter(|v| **v != me)
            .filter_map(|v| self.acked.get(v).copied())
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        for t in times {
            let set: Vec<u64> = voters
                .iter()
                .copied()
                .filter(|v| *v == me || self.acked.get(v).is_some_and(|a| *a >= t))
                .collect();
            if has_quorum(&set) {
                return Some(self.epoch + Duration::from_micros(t) + self.duration);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn majority(voters: &'static [u64]) -> impl Fn(&[u64]) -> bool {
        move |s: &[u64]| s.iter().filter(|v| voters.contains(v)).count() * 2 > voters.len()
    }

    #[test]
    fn a_lease_runs_from_what_a_quorum_answered() {
        let mut l = Lease::new(200, 4, Instant::now());
        assert_eq!(l.duration(), Duration::from_millis(540));
        let voters: &'static [u64] = &[1, 2, 3];
        let t0 = Instant::now();
        assert_eq!(
            l.until(1, voters, t0, majority(voters)),
            None,
            "nobody answered"
        );
        let early = l.context(HEARTBEAT_CONTEXT, t0);
        let late = l.context(HEARTBEAT_CONTEXT, t0 + Duration::from_millis(100));
        l.on_answer(2, &early);
        let until = l.until(1, voters, t0, majority(voters)).unwrap();
        assert!(
            until >= t0 + Duration::from_millis(539) && until <= t0 + Duration::from_millis(541)
        );
        // Another answer to the later heartbeat moves it; an answer to an old one never takes it back.
        l.on_answer(3, &late);
        let later = l.until(1, voters, t0, majority(voters)).unwrap();
        assert!(later >= until + Duration::from_millis(99));
        l.on_answer(3, &early);
        assert_eq!(l.until(1, voters, t0, majority(voters)).unwrap(), later);
        l.on_answer(2, b"not ours");
        l.reset();
        assert_eq!(l.until(1, voters, t0, majority(voters)), None);
    }

    #[test]
    fn five_voters_need_two_answers_and_one_voter_none() {
        let mut l = Lease::new(20, 4, Instant::now());
        let voters: &'static [u64] = &[1, 2, 3, 4, 5];
        let now = Instant::now();
        l.on_answer(2, &l.context(QUIESCE_CONTEXT, now));
        assert_eq!(l.until(1, voters, now, majority(voters)), None);
        l.on_answer(5, &l.context(HEARTBEAT_CONTEXT, now));
        assert!(l.until(1, voters, now, majority(voters)).is_some());
        assert!(Lease::new(20, 4, now)
            .until(7, &[7], now, |_| true)
            .is_some());
    }
}
