//! `/metrics` (OpenMetrics text, which Prometheus scrapes) and `/healthz`, served by axum on a
//! small single-threaded tokio runtime of its own, away from the pipeline's threads.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};
use crate::obs::metrics::Metrics;

/// Health as seen by `/healthz`: `Err` carries why the worker is not healthy.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves on a background thread. Returns the bound address (useful with
/// port 0). The server lives as long as the process.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: HealthCheck) -> Result<SocketAddr> {
    // Bind here, synchronously, so a taken port is a start-up error, not a log line.
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Config(format!("cannot listen on metrics address {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(addr.to_string(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(addr.to_string(), e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("metrics runtime", e))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], body) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let result = health();
                async move {
                    match result {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        );
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("metrics endpoint stopped: {e}");
                        }
                    }
                    Err(e) => tracing::error!("metrics endpoint: {e}"),
                }
            })
        })
        .map_err(|e| Error::io("metrics thread", e))?;
    Ok(bound)
}
