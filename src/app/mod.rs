//! The commands, and the worker assembled from the stages: `run` ([`worker`]), `score`
//! ([`score`]), `demo` ([`demo`]); their command line ([`cli`]), signals ([`shutdown`]) and the
//! tweets shipped for demos and load tests ([`data`]).

pub mod cli;
pub mod data;
pub mod demo;
pub mod score;
pub mod shutdown;
pub mod worker;
