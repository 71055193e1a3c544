//! The client listener a request came in on, and what that changes in its answers: the broker addresses
//! a client is told (in the broker list and in a not-leader redirect) are those of its own listener, so a
//! client outside the cluster never gets an in-cluster address (docs/configuration.md, "Listeners").

use std::sync::Arc;

use tonic::Status;

use super::status::to_status;
use crate::broker::{Broker, BrokerError};
use crate::replica::ReplicaError;

/// A client listener: the main one, or a named one.
#[derive(Debug, Clone, Default)]
pub struct Via(Option<Arc<str>>);

impl Via {
    /// The main listener (`None`) or the named listener `name`.
    pub fn new(name: Option<String>) -> Via {
        Via(name.map(Arc::from))
    }

    /// The listener's name; `None` for the main one.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The gRPC status of `e` for this listener's clients: a redirect names the leader's address on it.
    pub fn status(&self, b: &Broker, e: BrokerError) -> Status {
        let e = match (e, self.name()) {
            (BrokerError::NotLeader { leader, address }, Some(name)) => BrokerError::NotLeader {
                leader,
                address: b.client_address(leader, Some(name)).unwrap_or(address),
            },
            (e, _) => e,
        };
        to_status(e)
    }

    /// [`Via::status`] of a replica's error.
    pub fn replica_status(&self, b: &Broker, e: ReplicaError) -> Status {
        self.status(b, b.replica_error(e))
    }
}
