//! Observability: the [`metrics`] (Prometheus and a one-line log summary), what the process
//! costs per thread role ([`cpu`]), the time to drain the lag ([`drain`]), and the HTTP endpoint
//! for `/metrics` and `/healthz` ([`http`]) in the format the scraper asks for ([`exposition`]).

pub mod cpu;
pub mod drain;
pub mod exposition;
pub mod http;
pub mod metrics;
