//! kafka-infer: a micro-batching Kafka worker that scores tweets with a small text CNN.
//!
//! The library holds every piece; `main.rs` only wires them together. Inference core:
//! [`preprocess`] (text → ids, train/serve parity), [`batch`] (padding), [`model`]
//! (tract plan + per-thread sessions), [`json`] (wire format), [`score`] (offline scoring).

pub mod batch;
pub mod batcher;
pub mod budget;
pub mod commit;
pub mod config;
pub mod cpu;
pub mod data;
pub mod drift;
pub mod error;
pub mod http;
pub mod infer;
pub mod json;
pub mod metrics;
pub mod model;
pub mod model_files;
pub mod models;
pub mod pipeline;
pub mod preprocess;
pub mod score;
pub mod shadow;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod worker;

pub use error::{Error, Result};
pub use model::{Classifier, Session};
pub use preprocess::Tokenizer;
