//! Maps broker errors onto gRPC statuses with messages a user can act on.

use tonic::Status;

use crate::broker::BrokerError;
use crate::replica::ReplicaError;

/// Response metadata of a not-leader error: `ID=HOST:PORT` of the partition's leader.
pub const LEADER_HEADER: &str = "ferry-leader";

/// The gRPC status of a broker error.
pub fn to_status(e: BrokerError) -> Status {
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            Status::not_found(e.to_string())
        }
        BrokerError::TopicExists(_) => Status::already_exists(e.to_string()),
        BrokerError::Invalid(_) => Status::invalid_argument(e.to_string()),
        BrokerError::Unsatisfiable(_) => Status::failed_precondition(e.to_string()),
        BrokerError::Storage(e) => Status::internal(e.to_string()),
        BrokerError::Identity(_) | BrokerError::Refused(_) => {
            Status::failed_precondition(e.to_string())
        }
        BrokerError::NotLeader {
            leader,
            ref address,
        } => {
            // Clients redirect from the metadata without another round trip.
            let mut s = Status::unavailable(e.to_string());
            if let Ok(v) = format!("{leader}={address}").parse() {
                s.metadata_mut().insert(LEADER_HEADER, v);
            }
            s
        }
        BrokerError::NoLeader => Status::unavailable(e.to_string()),
        BrokerError::Busy(_) => Status::resource_exhausted(e.to_string()),
        BrokerError::Replica(r) => match r {
            ReplicaError::NotLeader { .. }
            | ReplicaError::Dropped(_)
            | ReplicaError::NoLease
            | ReplicaError::ShuttingDown => Status::unavailable(r.to_string()),
            ReplicaError::DiskFull(_) => Status::resource_exhausted(r.to_string()),
            ReplicaError::OutOfRange(_) => Status::out_of_range(r.to_string()),
            ReplicaError::Sequence(_) => Status::failed_precondition(r.to_string()),
            // gRPC's own meaning of ABORTED: a sequencer check failed, retry at a higher level.
            ReplicaError::Gap(_) => Status::aborted(r.to_string()),
            ReplicaError::Failed(_) => Status::data_loss(r.to_string()),
        },
    }
}
