//! The HTTP endpoints, answered from the first second of the process (before the broker has started):
//! - `GET /healthz` (liveness): 200 `ok phase=<phase>` while the process runs;
//! - `GET /readyz` (readiness): 200 once this broker can take client traffic (joined, metadata caught up,
//!   replicas opened), with the replicas that cannot serve named; 503 with the reason before that and while
//!   stopping;
//! - `GET /health/cluster`: JSON, 200 when no partition is leaderless or under-replicated, no registered
//!   broker unreachable and the controller has a leader; 503 otherwise (or before the broker started);
//! - `GET /metrics`: Prometheus text.
//!
//! Served over HTTP/1.1 (or HTTP/2), through TLS when the broker has TLS (no client certificates: the
//! kubelet's probes present none), at most [`HTTP_CONNECTIONS_MAX`] connections at once.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::broker::startup::Startup;
use crate::broker::Broker;
use crate::replica::Replica;
use crate::tls::Tls;

/// Most open HTTP connections (probes and scrapes need a few).
pub const HTTP_CONNECTIONS_MAX: usize = 256;
/// Longest an open HTTP connection may take to finish once the server stops.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors): the loop must not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves the HTTP router on `listener` (through TLS with `tls`) until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<Tls>>,
    state: HttpState,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use futures::StreamExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = router(state);
    let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    let tls = tls.map(|t| (t, super::conn::Side::Http));
    let mut incoming = super::conn::incoming(listener, permits, "http", tls);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            next = incoming.next() => next,
        };
        let conn = match next {
            None => return Ok(()),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = builder.serve_connection(TokioIo::new(conn), service);
            tokio::pin!(served);
            tokio::select! {
                _ = served.as_mut() => {}
                _ = cancel.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_DRAIN, served).await;
                }
            }
        });
    }
}

/// What the endpoints read: the broker once it has started, its start-up phase meanwhile.
#[derive(Clone)]
pub struct HttpState {
    pub broker: Arc<OnceLock<Arc<Broker>>>,
    pub startup: Startup,
    /// Renders the metrics the binary's recorder collected.
    pub prometheus: Option<PrometheusHandle>,
}

/// The HTTP router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health/cluster", get(cluster_health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<HttpState>) -> String {
    format!(
        "ok phase={} uptime_s={}\n",
        s.startup.phase().name(),
        s.startup.uptime_secs()
    )
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    let Some(broker) = s.broker.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: phase {}\n", s.startup.phase().name()),
        );
    };
    match broker.readiness() {
        Ok(ready) => {
            let mut out = String::from("ready\n");
            for down in ready.down {
                out.push_str(&format!("down: {down}\n"));
            }
            (StatusCode::OK, out)
        }
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn cluster_health(State(s): State<HttpState>) -> Response {
    let Some(broker) = s.broker.get() else {
        let body = serde_json::json!({"healthy": false, "phase": s.startup.phase().name()});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    };
    let health = broker.cluster_health().await;
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(health)).into_response()
}

/// A per-partition series on `/metrics`: its name, its Prometheus type, and how to read it off a replica.
type PartitionSeries = (&'static str, &'static str, fn(&Replica) -> u64);

async fn metrics(State(s): State<HttpState>) -> (StatusCode, String) {
    let mut out = String::new();
    if let Some(p) = &s.prometheus {
        out.push_str(&p.render());
    }
    let Some(broker) = s.broker.get() else {
        return (StatusCode::OK, out);
    };
    // Partition gauges are read at scrape time rather than pushed on every commit.
    let parts = broker.local_partitions();
    let per_partition: [PartitionSeries; 5] = [
        (
            "ferry_partition_high_watermark",
            "gauge",
            Replica::high_watermark,
        ),
        ("ferry_partition_size_bytes", "gauge", Replica::size_bytes),
        (
            "ferry_partition_retention_passes_total",
            "counter",
            Replica::retention_passes,
        ),
        (
            "ferry_partition_segments_scanned_at_open",
            "gauge",
            Replica::scanned_at_open,
        ),
        ("ferry_partition_fenced", "gauge", |r| {
            u64::from(r.failure().is_some())
        }),
    ];
    for (name, kind, value) in per_partition {
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for ((t, p), r) in &parts {
            out.push_str(&format!(
                "{name}{{topic=\"{t}\",partition=\"{p}\"}} {}\n",
                value(r)
            ));
        }
    }
    // Idle groups whose Raft timers are stopped here (see docs/design.md, quiescence).
    let quiesced = parts.iter().filter(|(_, r)| r.is_quiesced()).count();
    out.push_str("# TYPE ferry_partitions_quiesced gauge\n");
    out.push_str(&format!("ferry_partitions_quiesced {quiesced}\n"));
    (StatusCode::OK, out)
}
