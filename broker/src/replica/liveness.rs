//! Which peer brokers this broker has heard from lately. The peer server records every batch it receives;
//! links send a keepalive when they have nothing else to say, so an idle peer is still heard. Quiesced
//! replicas (idle groups that stopped ticking) rely on it: they resume Raft's timers as soon as a broker
//! their group needs goes quiet.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::RwLock;

/// Last time each peer broker was heard from.
#[derive(Debug, Default)]
pub struct Liveness {
    heard: RwLock<HashMap<u64, Instant>>,
}

impl Liveness {
    /// Records that broker `id` was just heard from.
    pub fn heard(&self, id: u64) {
        let now = Instant::now();
        if let Some(t) = self.heard.write().get_mut(&id) {
            *t = now;
            return;
        }
        self.heard.write().insert(id, now);
    }

    /// Whether broker `id` was heard from within `within`.
    pub fn is_live(&self, id: u64, within: std::time::Duration) -> bool {
        self.is_live_at(id, within, Instant::now())
    }

    /// Whether broker `id` was heard from within `within` before `now`.
    pub fn is_live_at(&self, id: u64, within: std::time::Duration, now: Instant) -> bool {
        self.heard
            .read()
            .get(&id)
            .is_some_and(|t| now.saturating_duration_since(*t) <= within)
    }

    /// Records that broker `id` was heard from at `at` (tests drive time by hand).
    pub fn heard_at(&self, id: u64, at: Instant) {
        self.heard.write().insert(id, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_live_only_when_heard_recently() {
        let l = Liveness::default();
        let d = std::time::Duration::from_millis(50);
        assert!(!l.is_live(2, d), "never heard");
        l.heard(2);
        assert!(l.is_live(2, d));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(!l.is_live(2, d), "quiet for longer than the window");
    }
}
