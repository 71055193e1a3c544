//! Broker-to-broker Raft traffic on the peer port (7401): one long-lived client stream per destination
//! broker carries the messages of every Raft group, batched per destination.
//!
//! Layers: [`router`] (group id → local replica inbox) and [`network`] (the outgoing links, a
//! [`crate::replica::Transport`]). The `Peer` gRPC server that feeds the router is `server::peer`.

pub mod faults;
pub mod network;
pub mod router;

pub use network::PeerNetwork;
pub use router::Router;
