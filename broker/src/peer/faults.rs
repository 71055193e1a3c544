//! Network faults for fault-injection runs (`ferry-chaos`): with `FERRY_FAULT_FILE` set, a broker rereads that
//! file every 100 ms and drops Raft traffic to and from the peers it names, as a network partition would,
//! while clients still reach it. Lines: `drop-to ID` (messages this broker sends to ID) and `drop-from ID`
//! (messages it receives from ID); an absent or empty file means no fault. Unset (production), the checks
//! cost one relaxed atomic load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// How often the fault file is reread.
const POLL: Duration = Duration::from_millis(100);

static ENABLED: AtomicBool = AtomicBool::new(false);
static BLOCKED: RwLock<(Vec<u64>, Vec<u64>)> = RwLock::new((Vec::new(), Vec::new()));

/// Whether messages to broker `id` are dropped.
pub fn drops_to(id: u64) -> bool {
    ENABLED.load(Ordering::Relaxed) && BLOCKED.read().0.contains(&id)
}

/// Whether messages from broker `id` are dropped.
pub fn drops_from(id: u64) -> bool {
    ENABLED.load(Ordering::Relaxed) && BLOCKED.read().1.contains(&id)
}

fn parse(text: &str) -> (Vec<u64>, Vec<u64>) {
    let (mut to, mut from) = (HashSet::new(), HashSet::new());
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
            _ => {}
        }
    }
    (to.into_iter().collect(), from.into_iter().collect())
}

/// Starts watching `path` (the value of `FERRY_FAULT_FILE`).
pub fn watch(path: std::path::PathBuf) {
    ENABLED.store(true, Ordering::Relaxed);
    tracing::warn!(file = %path.display(), "fault injection enabled: peer traffic follows this file");
    tokio::spawn(async move {
        loop {
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let parsed = parse(&text);
            if *BLOCKED.read() != parsed {
                tracing::warn!(drop_to = ?parsed.0, drop_from = ?parsed.1, "injected network faults changed");
                *BLOCKED.write() = parsed;
            }
            tokio::time::sleep(POLL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_directions() {
        let (to, from) = super::parse("drop-to 2\ndrop-from 3\nnonsense\ndrop-to x\n");
        assert_eq!((to, from), (vec![2], vec![3]));
    }
}
