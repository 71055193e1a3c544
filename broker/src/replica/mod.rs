//! A partition replica: one Raft group driven by one task. Publishes become proposals; each Ready is
//! persisted with one write and one fsync for every batch it holds (group commit), then messages go out,
//! committed entries advance the high watermark and acknowledge their publishers.
//!
//! Layers, bottom up: [`clock`], [`liveness`], [`lease`] and [`transport`] (what the task uses) →
//! [`handle`] (the handle servers call, and the commands it sends the task) → [`driver`] (the task).

pub mod clock;
pub mod driver;
pub mod handle;
pub mod lease;
pub mod liveness;
pub mod transport;

pub use clock::Clock;
pub use driver::{spawn, Apply, FsyncPolicy, ReplicaConfig, Wiring};
pub use handle::{Ack, Replica, ReplicaError};
pub use liveness::Liveness;
pub use transport::{NoPeers, Transport};

#[cfg(test)]
mod tests;
