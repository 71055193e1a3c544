//! The Ferry broker.
//!
//! # Layout
//! Lower layers first; a module imports only modules listed before it (checked by
//! `tests/tests/layout.rs`, with no module circle and no tokio, tonic or axum in the cores).
//! - [`storage`]: the segment log of a partition (segments, indexes, recovery), the disk seam and the
//!   wall clock: the `ferry-storage` crate, re-exported here.
//! - [`acl`] (core): access control lists and the decision for one request.
//! - [`quota`] (core): byte-rate quotas per principal, as response delays.
//! - [`groups`] (core): consumer-group assignment and the per-group state machine.
//! - [`replica`]: this broker's replica of a partition, one Raft group per partition: its Raft log over the
//!   segment log (`replica::raft_log`, core), every replication decision (`replica::core`, core), and the
//!   task that drives it with group commit (`replica::driver`). Raft lives here and nowhere else.
//! - [`identity`]: the data dir's identity (node id, incarnation, cluster id) and the judgements of a
//!   starting broker's Hello answers.
//! - [`tls`]: rustls configurations from PEM files, reloaded when they change; the broker id a peer's
//!   certificate names.
//! - [`jwt`]: signed JWTs as bearer tokens, verified against configured public keys.
//! - [`metadata`] (core): the cluster metadata state machine of the controller group.
//! - [`peer`]: Raft traffic between brokers (the peer port), batched per destination.
//! - [`membership`]: planning replica moves when brokers join or leave.
//! - [`config`]: broker settings.
//! - [`settings`]: `ferryd`'s settings in human units, layered from defaults, a TOML file, `FERRY_*` and flags.
//! - [`views`]: cluster views as plain types, and the `Dialer` through which the broker asks others.
//! - [`broker`]: the broker: controller, local replicas, operations, group coordination (no gRPC).
//! - [`server`]: the gRPC services, the gRPC `Dialer` (`server::dial`), and the HTTP endpoints over the broker.
pub mod acl;
pub mod broker;
pub mod config;
pub mod groups;
pub mod identity;
pub mod jwt;
pub mod membership;
pub mod metadata;
pub mod peer;
pub mod quota;
pub mod replica;
pub mod server;
pub mod settings;
pub mod tls;
pub mod views;

/// Partition storage lives in its own crate ([`ferry_storage`]), re-exported under its old path.
pub use ferry_storage as storage;
