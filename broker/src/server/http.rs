//! The HTTP endpoints: `GET /healthz` (the process serves), `GET /readyz` (every local partition has a
//! leader and none is fenced) and `GET /metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::broker::Broker;

#[derive(Clone)]
struct AppState {
    broker: Arc<Broker>,
    prometheus: Option<PrometheusHandle>,
}

/// The HTTP router. `prometheus` renders the metrics the binary's recorder collected.
pub fn router(broker: Arc<Broker>, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { broker, prometheus })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.broker.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    let mut out = String::new();
    if let Some(p) = &s.prometheus {
        out.push_str(&p.render());
    }
    // Partition gauges are read at scrape time rather than pushed on every commit.
    out.push_str("# TYPE ferry_partition_high_watermark gauge\n");
    let parts = s.broker.local_partitions();
    for ((t, p), r) in &parts {
        out.push_str(&format!(
            "ferry_partition_high_watermark{{topic=\"{t}\",partition=\"{p}\"}} {}\n",
            r.high_watermark()
        ));
    }
    out.push_str("# TYPE ferry_partition_size_bytes gauge\n");
    for ((t, p), r) in &parts {
        out.push_str(&format!(
            "ferry_partition_size_bytes{{topic=\"{t}\",partition=\"{p}\"}} {}\n",
            r.size_bytes()
        ));
    }
    out.push_str("# TYPE ferry_partition_fenced gauge\n");
    for ((t, p), r) in &parts {
        out.push_str(&format!(
            "ferry_partition_fenced{{topic=\"{t}\",partition=\"{p}\"}} {}\n",
            u8::from(r.failure().is_some())
        ));
    }
    // Idle groups whose Raft timers are stopped here (see docs/design.md, quiescence).
    let quiesced = parts.iter().filter(|(_, r)| r.is_quiesced()).count();
    out.push_str("# TYPE ferry_partitions_quiesced gauge\n");
    out.push_str(&format!("ferry_partitions_quiesced {quiesced}\n"));
    (StatusCode::OK, out)
}
