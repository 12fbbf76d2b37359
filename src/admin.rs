//! The admin HTTP listener: `/healthz` (the process answers), `/readyz` (a policy set is loaded
//! and the server is not draining) and `/metrics` (Prometheus text format). Read-only; it must
//! never expose policies, tokens or request data.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Shared;

/// The admin routes over the shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    metrics::gauge!(crate::telemetry::DECISION_CACHE_BYTES)
        .set(shared.decision_cache_bytes() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}
