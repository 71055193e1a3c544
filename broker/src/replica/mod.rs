//! A replica: this broker's copy of a partition (a topic's unit of order, addressed by offsets) and its
//! member of the partition's Raft group, the one home of Raft in the broker. Publishes become proposals;
//! each Ready is persisted with one write and one fsync for every batch it holds (group commit), then
//! messages go out, committed entries advance the high watermark and acknowledge their publishers.
//!
//! Layers, bottom up: [`types`] (the values a replica answers with), [`raft_log`] (Raft's storage over the
//! segment log, and the durable Raft state), [`clock`], [`liveness`], [`lease`] and [`transport`] →
//! [`core`] (every decision: a synchronous state machine, events in, actions out, no
//! runtime) → [`handle`] (the handle servers call, and the commands it sends the task) → [`driver`] (the
//! async shell: channels, timers, fsyncs on the blocking pool).

pub mod clock;
pub mod core;
pub mod driver;
pub mod handle;
pub mod lease;
pub mod liveness;
pub mod raft_log;
pub mod transport;
pub mod types;

pub use self::core::{Apply, FsyncPolicy, ReplicaConfig};
pub use clock::Clock;
pub use driver::{spawn, Wiring};
pub use handle::Replica;
pub use liveness::Liveness;
pub use transport::{NoPeers, Transport};
pub use types::{Ack, Durability, ReplicaError};

#[cfg(test)]
mod tests;
