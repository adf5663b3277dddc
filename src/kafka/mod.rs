//! Many sites over Kafka: the edge forwards its collectors' readings to a telemetry
//! topic keyed by site; central instances in one consumer group each own some of its
//! partitions (so every reading of a site is judged by one instance), warm a newly
//! assigned partition's detectors up on its recent past, and commit offsets only after
//! the alerts derived from them are stored. The broker's group coordinator does the
//! clustering; wattchdog has none of its own.

#[cfg(feature = "kafka")]
pub mod admin;
pub mod assignment;
#[cfg(feature = "kafka")]
pub mod central;
pub mod codec;
pub mod config;
pub mod counts;
#[cfg(feature = "kafka")]
pub mod edge;
#[cfg(feature = "kafka")]
mod logs;
pub mod metrics;
pub mod offsets;
