//! kafka-infer: a micro-batching Kafka worker that scores tweets with a small text CNN.
//!
//! The stages, in the order a tweet meets them (each folder has a module doc that says why it is
//! built the way it is):
//!
//! ```text
//!  kafka::source ──Chunk──► batching ──Batch──► inference ──Scored──► kafka::sink ──► Kafka
//!  (consumer, a thread       (the inference      (one tract run     (per-partition order,
//!   per partition:           threads gather      per batch)          acknowledgements,
//!   decode, tokenize)        their own batches)                      dead letters)
//!        ▲                                                                 │
//!        └───────────── pipeline: lanes, offsets, the byte budget ◄───────┘
//! ```
//!
//! - [`pipeline`]: the types that flow between stages (chunks, batches, lanes), per-partition
//!   offset tracking, the in-flight byte budget. Stages depend on these, never on each other.
//! - [`kafka`]: everything that talks to Kafka — the source (consumer, partition threads,
//!   rewinds, commits), the sink (record building, producers, delivery reports), the delivery
//!   guarantee, client settings.
//! - [`batching`]: batch policy (pure), the queue the inference threads gather from, the
//!   latency budget.
//! - [`inference`]: inference threads and shadow scoring.
//! - [`model`]: the classifier (tract plans, the fused op), the tokenizer (train/serve parity),
//!   model files, the live model and its reloads, drift.
//! - [`obs`]: metrics, CPU accounting, `/metrics` and `/healthz`.
//! - [`app`]: the commands — `run` (the worker assembled), `score`, `demo` — their command line,
//!   signals and data. `main.rs` only dispatches.
//! - [`wire`]: the record format, `{"value": "<tweet>"}` in and `{"value":[score]}` out.

pub mod app;
pub mod batching;
pub mod error;
pub mod inference;
pub mod kafka;
pub mod model;
pub mod obs;
pub mod pipeline;
pub mod wire;

pub use error::{Error, Result};
pub use model::tokenizer::Tokenizer;
pub use model::{Classifier, Session};
