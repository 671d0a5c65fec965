//! A minimal HTTP/1.0 endpoint for `/metrics` (Prometheus text) and `/healthz`.
//!
//! Two GET routes on a listener that scrapers hit every few seconds do not justify an async
//! runtime or a web framework; this is a blocking accept loop on its own thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Health as seen by `/healthz`.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves on a background thread. Returns the bound address (useful with
/// port 0). The thread lives as long as the process.
pub fn serve(addr: &str, metrics: Arc<Metrics>, health: HealthCheck) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::Config(format!("cannot listen on metrics address {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::io(addr, e))?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                // A slow or broken client must not wedge the endpoint.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = handle(conn, &metrics, &health);
            }
        })
        .map_err(|e| Error::io("metrics thread", e))?;
    Ok(bound)
}

fn handle(mut conn: TcpStream, metrics: &Metrics, health: &HealthCheck) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let r = conn.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].ends_with(b"\n\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let mut parts = req.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render_prometheus(),
        ),
        ("GET", "/healthz") => match health() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
