//! Network faults for fault-injection runs (`ferry-chaos`): with `FERRY_FAULT_FILE` set, a broker rereads that
//! file every 100 ms and applies the faults it names to Raft traffic between brokers, while clients still
//! reach it. Lines:
//! - `drop-to ID`: messages this broker sends to ID are dropped (a partition, one direction);
//! - `drop-from ID`: messages it receives from ID are dropped;
//! - `impair DELAY_MS JITTER_MS LOSS_PCT DUPLICATE_PCT`: every batch of messages it receives from any peer is
//!   lost with probability LOSS_PCT %, otherwise delivered after DELAY_MS ± JITTER_MS (so batches reorder),
//!   and delivered twice with probability DUPLICATE_PCT %. This is netem's `delay 100ms 50ms loss 5%
//!   duplicate 1%` applied where this sandbox allows it: its kernel has no netem qdisc. Losing a whole batch
//!   is harsher than netem under TCP, which only retransmits; Raft must tolerate both.
//!
//! What the broker applied is written back to `FILE.applied` (the file's text as read), so a harness can
//! wait until a fault is in force. An absent or empty file means no fault. Unset (production), the checks cost one relaxed atomic load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// How often the fault file is reread.
const POLL: Duration = Duration::from_millis(100);

static ENABLED: AtomicBool = AtomicBool::new(false);
static ACTIVE: RwLock<Faults> = RwLock::new(Faults {
    drop_to: Vec::new(),
    drop_from: Vec::new(),
    impair: None,
});
/// State of the generator behind loss, jitter and duplication (splitmix64; seeded at `watch`).
static RNG: AtomicU64 = AtomicU64::new(0);

/// The faults one fault file names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Faults {
    drop_to: Vec<u64>,
    drop_from: Vec<u64>,
    impair: Option<Impairment>,
}

/// Delay, loss and duplication of received peer batches (the `impair` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Impairment {
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// Percent of batches lost, 0-100.
    pub loss_pct: u64,
    /// Percent of batches delivered twice, 0-100.
    pub duplicate_pct: u64,
}

impl Impairment {
    /// What happens to one received batch: `None` when it is lost, else its delay and how many copies arrive.
    pub fn roll(&self) -> Option<(Duration, usize)> {
        if next_random() % 100 < self.loss_pct {
            return None;
        }
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            next_random() % (2 * self.jitter_ms + 1)
        };
        let delay = (self.delay_ms + jitter).saturating_sub(self.jitter_ms);
        let copies = if next_random() % 100 < self.duplicate_pct {
            2
        } else {
            1
        };
        Some((Duration::from_millis(delay), copies))
    }
}

fn next_random() -> u64 {
    // splitmix64: statistically fine for fault dice, lock-free, no dependency.
    let mut z = RNG
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether messages to broker `id` are dropped.
pub fn drops_to(id: u64) -> bool {
    ENABLED.load(Ordering::Relaxed) && ACTIVE.read().drop_to.contains(&id)
}

/// Whether messages from broker `id` are dropped.
pub fn drops_from(id: u64) -> bool {
    ENABLED.load(Ordering::Relaxed) && ACTIVE.read().drop_from.contains(&id)
}

/// The impairment of received peer batches, if one is injected.
pub fn impairment() -> Option<Impairment> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    ACTIVE.read().impair
}

fn parse(text: &str) -> Faults {
    let (mut to, mut from) = (HashSet::new(), HashSet::new());
    let mut impair = None;
    for line in text.lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["drop-to", id] => {
                if let Ok(id) = id.parse() {
                    to.insert(id);
                }
            }
            ["drop-from", id] => {
                if let Ok(id) = id.parse() {
                    from.insert(id);
                }
            }
            ["impair", delay, jitter, loss, dup] => {
                if let (Ok(delay_ms), Ok(jitter_ms), Ok(loss_pct), Ok(duplicate_pct)) =
                    (delay.parse(), jitter.parse(), loss.parse(), dup.parse())
                {
                    impair = Some(Impairment {
                        delay_ms,
                        jitter_ms,
                        loss_pct: u64::min(loss_pct, 100),
                        duplicate_pct: u64::min(duplicate_pct, 100),
                    });
                }
            }
            _ => {}
        }
    }
    let (mut drop_to, mut drop_from): (Vec<u64>, Vec<u64>) =
        (to.into_iter().collect(), from.into_iter().collect());
    drop_to.sort_unstable();
    drop_from.sort_unstable();
    Faults {
        drop_to,
        drop_from,
        impair,
    }
}

/// Starts watching `path` (the value of `FERRY_FAULT_FILE`).
pub fn watch(path: std::path::PathBuf) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    RNG.store(seed, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
    tracing::warn!(file = %path.display(), "fault injection enabled: peer traffic follows this file");
    // What was applied is echoed to `PATH.applied`, so a harness waits for the fault to be in force
    // rather than sleeping and hoping.
    let mut applied_path = path.clone().into_os_string();
    applied_path.push(".applied");
    tokio::spawn(async move {
        let mut echoed: Option<String> = None;
        loop {
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let parsed = parse(&text);
            if *ACTIVE.read() != parsed {
                tracing::warn!(
                    drop_to = ?parsed.drop_to,
                    drop_from = ?parsed.drop_from,
                    impair = ?parsed.impair,
                    "injected network faults changed"
                );
                *ACTIVE.write() = parsed;
            }
            if echoed.as_deref() != Some(text.as_str()) {
                match tokio::fs::write(&applied_path, &text).await {
                    Ok(()) => echoed = Some(text),
                    Err(e) => tracing::warn!(%e, "could not echo the applied fault file"),
                }
            }
            tokio::time::sleep(POLL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_directions() {
        let f = super::parse("drop-to 2\ndrop-from 3\nnonsense\ndrop-to x\n");
        assert_eq!((f.drop_to, f.drop_from, f.impair), (vec![2], vec![3], None));
    }

    #[test]
    fn impairment_rolls_within_its_bounds() {
        let f = super::parse("impair 100 50 5 1\n");
        let imp = f.impair.expect("parsed");
        assert_eq!(
            (imp.delay_ms, imp.jitter_ms, imp.loss_pct, imp.duplicate_pct),
            (100, 50, 5, 1)
        );
        let (mut lost, mut doubled) = (0, 0);
        for _ in 0..10_000 {
            match imp.roll() {
                None => lost += 1,
                Some((d, copies)) => {
                    assert!(
                        (50..=150).contains(&d.as_millis()),
                        "delay {d:?} outside 100 ± 50 ms"
                    );
                    doubled += usize::from(copies == 2);
                }
            }
        }
        // 5 % and 1 % of 10,000, with generous room for chance.
        assert!((300..700).contains(&lost), "lost {lost}");
        assert!((40..200).contains(&doubled), "doubled {doubled}");
        let all_lost = super::parse("impair 0 0 100 0").impair.expect("parsed");
        assert!((0..100).all(|_| all_lost.roll().is_none()));
    }
}
