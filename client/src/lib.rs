//! The Ferry client SDK: a cluster connection that routes by partition leader, a batching [`Producer`],
//! fetch and subscribe for consumers, and topic administration.
//!
//! ```no_run
//! # async fn example() -> Result<(), ferry_client::ClientError> {
//! use ferry_client::{Client, Producer, ProducerConfig, ProducerRecord};
//!
//! let client = Client::connect(vec!["127.0.0.1:7400".into()]).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default())?;
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").with_key("user-42")).await;
//! let (partition, offset) = delivery.await?;
//! let fetched = client.fetch("orders", partition, offset, 1024 * 1024, 0).await?;
//! assert_eq!(&fetched.records[0].value[..], b"hello");
//! producer.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! From the bottom layer up; a module only uses modules above it in this list.
//!
//! - [`error`]: [`ClientError`], the one error type.
//! - [`config`]: [`ClientConfig`], timeouts and the retry budget.
//! - [`record`]: [`ProducerRecord`] and [`ConsumedRecord`], what applications send and receive.
//! - [`trace`]: W3C trace context: a producer's span into a record header, a consumer's span from it.
//! - [`retry`]: which failures are retried and the backoff between attempts (pure).
//! - [`metadata`]: the cached map of brokers, topics and partition leaders (pure).
//! - [`partitioner`]: explicit partition, key hash or round robin (pure).
//! - [`accumulator`]: the producer's per-partition batching state machine (pure).
//! - [`channels`]: one gRPC channel per broker, with Ferry's message size limits.
//! - [`client`]: [`Client`]: bootstrap, metadata refresh, routing to leaders, bounded retries.
//! - [`admin`]: topic and cluster administration on [`Client`].
//! - [`publish`]: publishing one batch and mapping its acknowledgement to record offsets.
//! - `publish_call`: the publish RPC with the batch sent as it is, not copied by tonic's encoder.
//! - [`fetch`]: [`Client::fetch`], batch decoding, offset lookups ([`Client::list_offsets`]).
//! - [`subscribe`]: [`Client::subscribe`], a resuming record stream over the `Subscribe` RPC.
//! - [`group`]: consumer groups: joining, heartbeats, cooperative assignment, offset commits.
//! - [`group_admin`]: the calls at a group's coordinator: heartbeat, commit, describe, delete, list.
//! - [`delivery`]: [`Delivery`], the future of one produced record.
//! - [`producer_task`]: the producer's background task (the I/O around the accumulator).
//! - [`producer`]: [`Producer`] and [`ProducerConfig`], the handle applications use.

pub mod accumulator;
pub mod acls;
pub mod admin;
pub mod channels;
pub mod client;
pub mod config;
pub mod delivery;
pub mod error;
pub mod fetch;
pub mod group;
pub mod group_admin;
pub mod metadata;
pub mod partitioner;
pub mod producer;
pub mod producer_task;
pub mod publish;
mod publish_call;
pub mod record;
pub mod retry;
pub mod subscribe;
pub mod tls;
pub mod token;
pub mod trace;

pub use client::Client;
pub use config::ClientConfig;
pub use delivery::{Delivery, DeliveryResult};
pub use error::{ClientError, ConnectAttempt};
pub use fetch::{FetchResult, FetchedBatches, OffsetSpec, PartitionOffsets};
pub use group::{GroupConfig, GroupConsumer, GroupEvent, SeekTo, StartFrom};
pub use producer::{Producer, ProducerConfig};
pub use record::{ConsumedRecord, ProducerRecord};
pub use tls::ClientTls;
pub use token::Token;

/// The generated `ferry.v1` types that appear in this crate's API (`TopicInfo`, `Acks`, ...).
pub use ferry_protocol::v1;
/// Batch compression codecs a producer can use.
pub mod batch_compression {
    pub use ferry_protocol::batch::Compression;
}
