//! HTTP endpoints: health (`--healthz-bind-address`, default 0.0.0.0:10256)
//! and metrics (`--metrics-bind-address`, default 127.0.0.1:10249).

use crate::health::{Health, Report};
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// What the HTTP handlers read.
pub struct Shared {
    pub health: Health,
    pub metrics: Metrics,
    pub proxy_mode: &'static str,
}

fn json(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        body,
    )
        .into_response()
}

fn report(r: Report) -> Response {
    let code = if r.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, r.body)
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    report(s.health.healthz(SystemTime::now()))
}

async fn livez(State(s): State<Arc<Shared>>) -> Response {
    report(s.health.livez(SystemTime::now()))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn proxy_mode(State(s): State<Arc<Shared>>) -> Response {
    s.proxy_mode.into_response()
}

pub fn health_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(shared)
}

pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/proxyMode", get(proxy_mode))
        .with_state(shared)
}

/// Binds and serves in the background; a bind failure is returned (the caller
/// decides whether it is fatal, as `bindAddressHardFail` does upstream).
pub async fn serve(addr: SocketAddr, router: Router, what: &'static str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, what, "serving");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, what, "HTTP server stopped");
        }
    });
    Ok(())
}
