//! The HTTP endpoint on `http.addr`: `/metrics` (Prometheus text), `/health`
//! (liveness) and `/ready` (readiness, with a JSON reason).

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::metrics::{self, Snapshot};
use crate::server::Shared;

#[derive(Clone)]
struct Http {
    shared: Arc<Shared>,
    handle: PrometheusHandle,
}

/// Binds `http.addr` (so a taken port fails startup) and returns the server task.
pub async fn bind(
    shared: Arc<Shared>,
    handle: PrometheusHandle,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let addr = shared.config().http.addr;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding http.addr {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /health and /ready");
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Http { shared, handle });
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    })
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(http): State<Http>) -> Response {
    let readiness = http.shared.health.readiness();
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::to_string(&readiness).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn render_metrics(State(http): State<Http>) -> Response {
    let shared = &http.shared;
    let gate = shared.pool.gate_stats();
    let snap = Snapshot {
        server_active: gate.lent,
        server_idle: shared.pool.idle_count(),
        server_open: shared.pool.open_count(),
        pool_size: shared.config().upstream.pool_size,
        clients_connected: shared.tenants.connected_clients(),
        clients_waiting: gate.waiting,
        active_tenants: shared.tenants.active(),
        ready: shared.health.readiness().ready,
        draining: shared.health.is_draining(),
    };
    let text = metrics::render(&http.handle, snap, &shared.tenants, &shared.config().http);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
