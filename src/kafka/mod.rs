//! Everything that talks to Kafka: the [`source`] (one consumer, a thread per assigned
//! partition, rewinds, commits) and the [`sink`] (the only producing code: output records,
//! producers, delivery reports).

pub mod sink;
pub mod source;
