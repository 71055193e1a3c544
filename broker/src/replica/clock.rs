//! One tick source per broker. Every replica steps its Raft clock on the same beat, so a broker with
//! thousands of groups wakes once per tick rather than once per group at scattered times, and the
//! heartbeats those ticks produce leave together, coalesced into one batch per peer.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A shared Raft tick counter.
#[derive(Debug, Clone)]
pub struct Clock {
    rx: watch::Receiver<u64>,
}

impl Clock {
    /// Starts ticking every `tick_ms` until `cancel` fires.
    pub fn start(tick_ms: u64, cancel: CancellationToken) -> Clock {
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = interval.tick() => {
                        tx.send_modify(|t| *t += 1);
                    }
                }
            }
        });
        Clock { rx }
    }

    /// Waits for the next beat; returns how many ticks passed since the last call (at least 1), or None
    /// once the clock stopped.
    pub async fn next(&mut self, last: &mut u64) -> Option<u64> {
        self.rx.changed().await.ok()?;
        let now = *self.rx.borrow_and_update();
        let passed = now.saturating_sub(*last).max(1);
        *last = now;
        Some(passed)
    }
}
