//! Broker-to-broker Raft traffic on the peer port (7401): one long-lived client stream per destination
//! broker carries the messages of every Raft group, batched per destination.
//!
//! Layers: [`router`] (group id → local replica inbox) ← [`service`] (the `Peer` gRPC server) and
//! [`network`] (the outgoing links, a [`crate::replica::Transport`]).

pub mod network;
pub mod router;
pub mod service;

pub use network::PeerNetwork;
pub use router::Router;
pub use service::serve_peer;

#[cfg(test)]
mod tests;
