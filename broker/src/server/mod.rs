//! The broker's servers: gRPC services on the client port and the HTTP endpoints.

pub mod admin;
pub mod client;
pub mod groups;
pub mod http;
pub mod limits;
pub mod peer;
pub mod status;
pub mod views;

use std::sync::Arc;

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::metadata::TopicMeta;

/// HTTP/2 flow-control window of one stream (bytes): room for a whole batch in flight.
const GRPC_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window of one connection (bytes): several partitions' batches in flight.
const GRPC_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Most concurrent HTTP/2 streams per client connection.
const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// Most requests one client connection has being processed at once (others wait in its stream queue).
const GRPC_REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// Longest a client request may take to answer (a long-poll fetch waits at most 30 s; a subscribe stream
/// answers at once and then streams).
const GRPC_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// HTTP/2 keepalive pings: a connection whose peer stopped answering is closed, its buffers freed.
const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The brokers clients can use: every registered broker (this one at least), and whether it is reachable
/// from here.
pub fn brokers(b: &Broker) -> Vec<v1::BrokerInfo> {
    let meta = b.metadata();
    let mut known = meta.brokers.clone();
    if meta.members.is_empty() || meta.members.contains_key(&b.config.node_id) {
        known
            .entry(b.config.node_id)
            .or_insert_with(|| b.config.advertise.clone());
    }
    // Members that have not registered a client address yet are listed too (without one).
    for id in meta.members.keys() {
        known.entry(*id).or_default();
    }
    let voters = b.controller().membership().voters;
    known
        .into_iter()
        .filter(|(id, _)| meta.members.is_empty() || meta.members.contains_key(id))
        .map(|(id, address)| {
            let member = meta.members.get(&id);
            let state = match member {
                Some(m) if m.leaving => "leaving",
                Some(_) if !voters.contains(&id) => "joining",
                _ => "active",
            };
            v1::BrokerInfo {
                id,
                address,
                up: b.is_up(id),
                state: state.to_owned(),
                peer_address: member.map(|m| m.peer_address.clone()).unwrap_or_default(),
                replicas: meta.replicas_on(id) as u32,
            }
        })
        .collect()
}

/// Partitions whose replicas are being moved.
pub fn moving_partitions(b: &Broker) -> u32 {
    let meta = b.metadata();
    meta.topics
        .values()
        .map(|t| (0..t.partitions).filter(|p| t.moving(*p)).count() as u32)
        .sum()
}

/// A topic as the API shows it.
pub fn topic_info(b: &Broker, t: &TopicMeta) -> v1::TopicInfo {
    let partition_info = (0..t.partitions)
        .map(|p| {
            let replicas = t.replica_sets[p as usize].clone();
            match b.partition(&t.name, p) {
                Ok(r) => v1::PartitionInfo {
                    partition: p,
                    leader: r.leader(),
                    // Only the leader knows who is caught up; other brokers leave it empty.
                    in_sync: r.in_sync(),
                    replicas,
                    high_watermark: r.high_watermark(),
                    log_start_offset: r.log_start_offset(),
                    error: r.trouble().unwrap_or_default(),
                },
                // Not hosted here: other brokers know (`views::merge_views`).
                Err(_) if !t.hosts(p, b.config.node_id) => v1::PartitionInfo {
                    partition: p,
                    replicas,
                    ..Default::default()
                },
                Err(e) => v1::PartitionInfo {
                    partition: p,
                    replicas,
                    error: e.to_string(),
                    ..Default::default()
                },
            }
        })
        .collect();
    v1::TopicInfo {
        name: t.name.clone(),
        partitions: t.partitions,
        replicas: t.replica_sets.first().map_or(0, |r| r.len() as u32),
        partition_info,
        config: Some(v1::TopicConfig {
            retention_bytes: t.settings.retention_bytes,
            retention_ms: t.settings.retention_ms,
            segment_bytes: t.settings.segment_bytes,
            segment_ms: t.settings.segment_ms,
        }),
    }
}

/// Serves the gRPC services on `listener` until `cancel` fires.
pub async fn serve_grpc(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let connections_max = broker.config.connections_max;
    let client = v1::ferry_server::FerryServer::new(client::ClientService::new(broker.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let admin = v1::admin_server::AdminServer::new(admin::AdminService::new(broker))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION_MAX)
        .concurrency_limit_per_connection(GRPC_REQUESTS_PER_CONNECTION_MAX)
        .timeout(GRPC_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // HTTP/2's default 64 KiB windows would stall every large batch on window updates.
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW_BYTES))
        .tcp_nodelay(true)
        .add_service(client)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            limits::incoming(listener, connections_max, "client"),
            cancel.cancelled_owned(),
        )
        .await
}
