//! Broker-to-broker Raft traffic on the peer port (7401): one long-lived client stream per destination
//! broker carries the messages of every Raft group, batched per destination.
//!
//! Layers: [`router`] (group id → local replica inbox), [`network`] (the outgoing links, a
//! [`crate::replica::Transport`]) and [`envelope`] (one message on the wire, entry data beside it). The `Peer` gRPC server that feeds the router is `server::peer`.

pub mod envelope;
/// Test-only network faults (`FERRY_FAULT_FILE`): compiled only with the `fault-injection` feature, which
/// the tests and `ferry-chaos` enable and release builds of `ferryd` do not (L10 in the durability audit).
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(feature = "fault-injection"))]
#[path = "no_faults.rs"]
pub mod faults;
pub mod network;
pub mod router;

pub use network::PeerNetwork;
pub use router::Router;
