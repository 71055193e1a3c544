//! The Ferry broker.
//!
//! # Layout (lower layers never import higher ones)
//! - [`storage`]: the segment log of a partition (segments, indexes, recovery) and the disk seam.
//! - [`consensus`]: Raft's view of a partition log (`raft::Storage`), its durable state file.
//! - [`replica`]: one Raft group per partition, driven by one task with group commit.
//! - [`metadata`]: the cluster metadata state machine of the controller group.
//! - [`peer`]: Raft traffic between brokers (the peer port), batched per destination.
//! - [`config`]: broker settings.
//! - [`broker`]: the broker core: controller, local replicas, operations.
//! - [`server`]: the gRPC services and the HTTP endpoints over the core.
pub mod broker;
pub mod config;
pub mod consensus;
pub mod groups;
pub mod membership;
pub mod metadata;
pub mod peer;
pub mod replica;
pub mod server;

/// Partition storage lives in its own crate ([`ferry_storage`]), re-exported under its old path.
pub use ferry_storage as storage;
