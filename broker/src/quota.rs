//! Byte-rate quotas per principal (core: time is passed in). A client over its rate is not refused: its
//! responses are delayed (as Kafka throttles), so a producer or consumer that waits for answers slows to its
//! quota. Each principal's bytes advance a virtual clock by `bytes / rate`; a request is answered once that
//! clock, less a small burst allowance, is no longer ahead of real time.
//!
//! Quotas are per broker: a principal talking to three leaders gets up to three times its rate overall.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far ahead of real time a principal's clock may run before its answers wait: short bursts pass, a
/// sustained rate is held to the quota.
const BURST: Duration = Duration::from_millis(100);
/// Longest one response is delayed: a single huge request does not park its connection past a client's request timeout.
pub const THROTTLE_MAX: Duration = Duration::from_secs(10);
/// Most principals tracked at once; past it, idle ones (whose clocks are not ahead) are forgotten.
const PRINCIPALS_MAX: usize = 10_000;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaKind {
    /// Bytes of publish requests.
    Publish,
    /// Bytes of fetch responses (and subscribe stream messages).
    Fetch,
}

/// The configured rates: per principal, and a default (`*`) for every other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaConfig {
    /// (principal or `*`, kind) → bytes per second.
    pub rates: HashMap<(String, QuotaKind), u64>,
}

impl QuotaConfig {
    /// The rate of `principal` for `kind`, if any: its own, else the default.
    pub fn rate(&self, principal: &str, kind: QuotaKind) -> Option<u64> {
        self.rates
            .get(&(principal.to_owned(), kind))
            .or_else(|| self.rates.get(&("*".to_owned(), kind)))
            .copied()
            .filter(|r| *r > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }
}

/// The principals' virtual clocks.
#[derive(Debug, Default)]
pub struct Pacer {
    clocks: HashMap<(String, QuotaKind), Instant>,
}

impl Pacer {
    /// Accounts `bytes` of `kind` to `principal` at `now`, at `rate` bytes/s; answers how long the response
    /// must wait (zero within the quota).
    pub fn charge(
        &mut self,
        principal: &str,
        kind: QuotaKind,
        bytes: u64,
        rate: u64,
        now: Instant,
    ) -> Duration {
        debug_assert!(rate > 0);
        if self.clocks.len() >= PRINCIPALS_MAX {
            self.clocks.retain(|_, at| *at > now);
        }
        let clock = self
            .clocks
            .entry((principal.to_owned(), kind))
            .or_insert(now);
        let start = (*clock).max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64).min(THROTTLE_MAX);
        *clock = start + cost;
        clock
            .saturating_duration_since(now + BURST)
            .min(THROTTLE_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sustained_rate_is_held_to_the_quota() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let rate = 1_000_000; // 1 MB/s
                              // A client that sends 100 KB, waits for the answer, and sends again.
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let wait = p.charge("User:a", QuotaKind::Publish, 100_000, rate, now);
            sent += 100_000;
            now += wait + Duration::from_millis(1);
        }
        let secs = (now - t0).as_secs_f64();
        let achieved = sent as f64 / secs;
        assert!(
            (achieved - rate as f64).abs() / (rate as f64) < 0.05,
            "{achieved} B/s for a quota of {rate}"
        );
        // Another principal is not slowed by the first.
        assert_eq!(
            p.charge("User:b", QuotaKind::Publish, 50_000, rate, now),
            Duration::ZERO
        );
        // Kinds are apart.
        assert_eq!(
            p.charge("User:a", QuotaKind::Fetch, 50_000, rate, now),
            Duration::ZERO
        );
    }

    #[test]
    fn bursts_pass_and_delays_are_bounded() {
        let mut p = Pacer::default();
        let now = Instant::now();
        assert_eq!(
            p.charge("User:a", QuotaKind::Fetch, 50, 1_000, now),
            Duration::ZERO
        );
        let huge = p.charge("User:a", QuotaKind::Fetch, u64::MAX / 2, 1, now);
        assert!(huge <= THROTTLE_MAX);
        let c = QuotaConfig {
            rates: HashMap::from([
                (("*".to_owned(), QuotaKind::Publish), 10),
                (("User:a".to_owned(), QuotaKind::Publish), 20),
            ]),
        };
        assert_eq!(c.rate("User:a", QuotaKind::Publish), Some(20));
        assert_eq!(c.rate("User:b", QuotaKind::Publish), Some(10));
        assert_eq!(c.rate("User:b", QuotaKind::Fetch), None);
    }
}
