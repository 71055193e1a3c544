//! The start-up phase of a broker, shared between the broker starting and the HTTP server that answers
//! liveness meanwhile (before the broker exists).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

/// Where a broker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Opening the data dir and the controller's log.
    Starting,
    /// Checking this broker's identity with its peers (a new data dir waits here until it may take part).
    Identifying,
    /// Waiting for the controller to commit what its log holds (bounded by `CONTROLLER_CATCH_UP`).
    CatchingUp,
    /// Opening and recovering the local partitions.
    Opening,
    Serving,
    /// SIGTERM: handing off leaderships, then closing.
    Stopping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Identifying => "identifying",
            Phase::CatchingUp => "catching-up",
            Phase::Opening => "opening",
            Phase::Serving => "serving",
            Phase::Stopping => "stopping",
        }
    }

    const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::CatchingUp,
        Phase::Opening,
        Phase::Serving,
        Phase::Stopping,
    ];
}

/// The start-up phase, shared between the broker starting and the HTTP server answering meanwhile.
#[derive(Debug, Clone)]
pub struct Startup(Arc<StartupState>);

#[derive(Debug)]
struct StartupState {
    phase: AtomicU8,
    since: Instant,
    /// Set once the controller's log has been committed as far as it reached at start.
    caught_up: AtomicBool,
    /// Set once the directories of topics deleted while the broker was down have been removed.
    orphans_removed: AtomicBool,
}

impl Default for Startup {
    fn default() -> Self {
        Startup(Arc::new(StartupState {
            phase: AtomicU8::new(0),
            since: Instant::now(),
            caught_up: AtomicBool::new(false),
            orphans_removed: AtomicBool::new(false),
        }))
    }
}

impl Startup {
    pub fn set(&self, phase: Phase) {
        let i = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.0.phase.store(i as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        Phase::ALL[usize::from(self.0.phase.load(Ordering::Acquire)).min(Phase::ALL.len() - 1)]
    }

    /// Seconds since the process began starting.
    pub fn uptime_secs(&self) -> u64 {
        self.0.since.elapsed().as_secs()
    }

    pub(crate) fn set_caught_up(&self) {
        self.0.caught_up.store(true, Ordering::Release);
    }

    pub(crate) fn caught_up(&self) -> bool {
        self.0.caught_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_orphans_removed(&self) {
        self.0.orphans_removed.store(true, Ordering::Release);
    }

    pub(crate) fn orphans_removed(&self) -> bool {
        self.0.orphans_removed.load(Ordering::Acquire)
    }
}
