//! `/metrics` and `/healthz`, served by axum on a small single-threaded tokio runtime of its own,
//! away from the pipeline's threads. `/metrics` answers in the format the scraper's `Accept`
//! header asks for (OpenMetrics for Prometheus, the text format 0.0.4 otherwise: see
//! [`crate::obs::exposition`]), and includes `kafka_infer_healthy`, what `/healthz` would say at
//! that moment, so that an alert can see a failing health check through the scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};
use crate::obs::exposition::Format;
use crate::obs::metrics::Metrics;

/// Health as seen by `/healthz`: `Err` carries why the worker is not healthy.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

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
    let health_for_metrics = health.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let format = Format::negotiate(accept);
                metrics.healthy.set(i64::from(health_for_metrics().is_ok()));
                let body = metrics.render_as(format);
                async move { ([(header::CONTENT_TYPE, format.content_type())], body) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One HTTP/1.1 GET with an optional Accept header: (head, body).
    fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
        )
        .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        let (head, body) = resp.split_once("\r\n\r\n").expect("a head and a body");
        (head.to_ascii_lowercase(), body.to_owned())
    }

    fn server(healthy: bool) -> SocketAddr {
        let metrics = Arc::new(Metrics::new("abc123"));
        metrics.consumed_total.inc_by(5);
        let health: HealthCheck = Arc::new(move || {
            if healthy {
                Ok(())
            } else {
                Err("partition 0: stalled".to_owned())
            }
        });
        serve("127.0.0.1:0".parse().expect("addr"), metrics, health).expect("serve")
    }

    #[test]
    fn metrics_answer_openmetrics_to_a_scraper_that_asks_for_it() {
        let addr = server(true);
        let (head, body) = get(
            addr,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(body.contains("# TYPE kafka_infer_records_consumed counter\n"));
        assert!(body.contains("kafka_infer_records_consumed_total 5\n"));
        assert!(body.contains("kafka_infer_healthy 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn metrics_answer_the_text_format_to_everyone_else_with_help_on_counter_samples() {
        let addr = server(false);
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (head, body) = get(addr, "/metrics", accept);
            assert!(
                head.contains("content-type: text/plain; version=0.0.4"),
                "{accept:?}: {head}"
            );
            assert!(body.contains("# HELP kafka_infer_records_consumed_total Records read"));
            assert!(body.contains("# TYPE kafka_infer_records_consumed_total counter\n"));
            assert!(body.contains("kafka_infer_records_consumed_total 5\n"));
            assert!(!body.contains("# EOF"), "{body}");
            // The health check fails: the gauge says so.
            assert!(body.contains("kafka_infer_healthy 0\n"), "{body}");
        }
        let (head, body) = get(addr, "/healthz", None);
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert_eq!(body, "partition 0: stalled\n");
    }
}
