//! Observability: the [`metrics`] (Prometheus and a one-line log summary), what the process
//! costs per thread role ([`cpu`]), and the HTTP endpoint for `/metrics` and `/healthz`
//! ([`http`]).

pub mod cpu;
pub mod http;
pub mod metrics;
