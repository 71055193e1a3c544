//! The fault seam of a production build: no network fault is ever injected (`fault-injection` is the cargo
//! feature that compiles the real one, `faults.rs`, for tests and `ferry-chaos`). These inline to nothing.

use std::time::Duration;

/// Never constructed in a production build.
#[derive(Debug, Clone, Copy)]
pub struct Impairment;

impl Impairment {
    /// Unreachable: [`impairment`] is always `None`.
    pub fn roll(&self) -> Option<(Duration, usize)> {
        None
    }
}

/// Never: messages are never dropped in a production build.
#[inline(always)]
pub fn drops_to(_id: u64) -> bool {
    false
}

/// Never.
#[inline(always)]
pub fn drops_from(_id: u64) -> bool {
    false
}

/// None.
#[inline(always)]
pub fn impairment() -> Option<Impairment> {
    None
}
