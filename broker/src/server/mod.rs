//! The broker's servers: gRPC services on the client port and the HTTP endpoints.

pub mod acls;
pub mod admin;
pub mod auth;
pub mod client;
pub mod conn;
pub mod dial;
pub mod groups;
pub mod http;
pub mod limits;
pub mod peer;
pub mod status;
pub mod via;
pub mod views;

use std::sync::Arc;

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

/// HTTP/2 flow-control window of one stream (bytes): room for a whole batch in flight.
const GRPC_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window of one connection (bytes): several partitions' batches in flight.
const GRPC_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// HTTP/2's default frame payload limit, the least a listener may advertise (bytes).
const HTTP2_FRAME_BYTES_MIN: u32 = 16 * 1024;
/// The largest frame payload HTTP/2 allows (bytes).
const HTTP2_FRAME_BYTES_MAX: u32 = (1 << 24) - 1;

/// The HTTP/2 frame size the client listener takes for batches of up to `batch_bytes_max`: a whole batch in
/// one DATA frame. At HTTP/2's default 16 KiB a 1 MiB batch was 64 frames, each parsed, flow-controlled,
/// appended to tonic's buffer and written by the client on its own.
fn client_frame_bytes_max(batch_bytes_max: u32) -> u32 {
    batch_bytes_max.clamp(HTTP2_FRAME_BYTES_MIN, HTTP2_FRAME_BYTES_MAX)
}

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

/// How often the gRPC health service re-reads readiness.
const GRPC_HEALTH_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// `grpc.health.v1.Health` on the client port: `SERVING` for the whole server ("") and `ferry.v1.Ferry`
/// exactly when `/readyz` would answer 200.
fn grpc_health(
    broker: Arc<Broker>,
    cancel: CancellationToken,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (mut reporter, service) = tonic_health::server::health_reporter();
    let broker = Arc::downgrade(&broker);
    tokio::spawn(async move {
        loop {
            let Some(b) = broker.upgrade() else { return };
            let status = if b.readiness().is_ok() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            drop(b);
            for name in ["", "ferry.v1.Ferry"] {
                reporter.set_service_status(name, status).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(GRPC_HEALTH_REFRESH) => {}
            }
        }
    });
    service
}

/// Serves the gRPC services (and `grpc.health.v1`) on `listener` until `cancel` fires: the main client
/// listener (`name` `None`) or the named one `name`, whose clients are told the brokers' addresses on it.
/// Each open connection holds one of `connections`, the pool every client listener shares
/// (`connections_max`); `auth` is shared by every client listener too, so a principal's quota is one per
/// broker whichever listener it comes in on.
pub async fn serve_grpc(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    name: Option<String>,
    (connections, auth): (Arc<tokio::sync::Semaphore>, auth::Auth),
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let tls = broker.config.tls.clone();
    let frame_bytes_max = client_frame_bytes_max(broker.config.batch_bytes_max);
    let via = via::Via::new(name);
    let client = v1::ferry_server::FerryServer::new(client::ClientService::new(
        broker.clone(),
        via.clone(),
        auth.clone(),
    ))
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let health = grpc_health(broker.clone(), cancel.clone());
    let admin = v1::admin_server::AdminServer::new(admin::AdminService::new(broker, via, auth))
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
        .max_frame_size(Some(frame_bytes_max))
        .tcp_nodelay(true)
        .add_service(client)
        .add_service(admin)
        .add_service(health)
        .serve_with_incoming_shutdown(
            conn::incoming(
                listener,
                connections,
                "client",
                tls.map(|t| (t, conn::Side::Client)),
            ),
            cancel.cancelled_owned(),
        )
        .await
}

#[cfg(test)]
mod frame_tests {
    use super::client_frame_bytes_max;

    #[test]
    fn a_whole_batch_fits_one_frame_within_http2s_bounds() {
        assert_eq!(client_frame_bytes_max(1 << 20), 1 << 20);
        assert_eq!(
            client_frame_bytes_max(100),
            16 * 1024,
            "never below HTTP/2's default"
        );
        assert_eq!(
            client_frame_bytes_max(u32::MAX),
            (1 << 24) - 1,
            "never above HTTP/2's largest"
        );
    }
}
