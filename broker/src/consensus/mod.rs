//! Raft for a partition: the durable state file, `raft::Storage` over the segment log, and the slog bridge.

pub mod logger;
pub mod producers;
pub mod recent;
pub mod repair;
pub mod state;
pub mod storage;

pub use storage::{Placed, ReplicaStorage};

#[cfg(test)]
mod tests;
