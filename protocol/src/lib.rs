//! Ferry's wire types, shared by brokers, the client SDK and the CLI.
//!
//! # Layout
//! - [`batch`]: the packed record batch, Ferry's one data format on the wire and on disk (docs/design.md).
//! - [`stamp`]: the broker's stamp in a stored batch (offset, Raft term and index) and its checksum.
//! - [`partitioner`]: the stable key hash that maps a key to a partition (murmur2, as Kafka).
//! - [`topic`]: topic name rules shared by every component.
//! - `v1`: the generated `ferry.v1` gRPC messages and services (feature `grpc`, on by default).
//! - `codec`: the gRPC codec of the `ferry.v1` services (feature `grpc`): prost's, with undecodable
//!   messages as `INVALID_ARGUMENT`.
//! - [`limits`]: named protocol limits.

pub mod batch;
#[cfg(feature = "grpc")]
pub mod codec;
pub mod limits;
pub mod partitioner;
pub mod stamp;
pub mod topic;

/// Generated code of the `ferry.v1` gRPC package.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}
