//! A replica's Raft log: `raft::Storage` over the partition's segment log ([`raft_storage`]), the durable
//! Raft state file (term, vote, commit, configuration: [`state`]), the table of idempotent producers
//! ([`producers`], [`recent`]), the repair marker of a damaged log ([`repair`]) and raft-rs's logger bridge
//! ([`logger`]). Synchronous, through the disk seam; no runtime.

pub mod logger;
pub mod producers;
pub mod raft_storage;
pub mod recent;
pub mod repair;
pub mod state;

pub use raft_storage::{Placed, RaftLog, ReplicaStorage};

#[cfg(test)]
mod tests;
