//! The edge: what the collectors read goes to the telemetry topic, one record per site
//! and batch, keyed by site, stamped with the batch's newest event time (so a new owner
//! can seek by event time). Idempotent, `acks=all`; the queue is bounded and what does
//! not fit is dropped and counted, never blocking the pollers.

use super::codec;
use super::config::KafkaConfig;
use super::logs::Logs;
use crate::model::Reading;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What the forwarder did.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Records handed to the producer.
    pub queued: AtomicU64,
    /// Records the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Readings in acknowledged records.
    pub readings: AtomicU64,
    /// Records that failed after the producer's retries.
    pub failed: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Readings in dropped or failed records.
    pub readings_lost: AtomicU64,
}

/// A snapshot of [`ForwardStats`] for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardCounts {
    /// Records handed to the producer.
    pub queued: u64,
    /// Records acknowledged.
    pub delivered: u64,
    /// Readings in the records acknowledged (what a central instance should count).
    pub readings: u64,
    /// Records failed.
    pub failed: u64,
    /// Records dropped at a full queue.
    pub dropped: u64,
    /// Readings lost in those.
    pub readings_lost: u64,
}

impl ForwardStats {
    /// The counters now.
    pub fn counts(&self) -> ForwardCounts {
        ForwardCounts {
            queued: self.queued.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            readings: self.readings.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            readings_lost: self.readings_lost.load(Relaxed),
        }
    }
}

struct Context(Arc<ForwardStats>, Logs);

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.1.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.1.error(error, reason);
    }
}

impl ProducerContext for Context {
    /// Readings in the record.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, readings: Box<u64>) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Relaxed);
                self.0.readings.fetch_add(*readings, Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Relaxed);
                self.0.readings_lost.fetch_add(*readings, Relaxed);
                tracing::warn!(error = %e, readings = *readings, "telemetry record not delivered");
            }
        }
    }
}

/// Forwards readings to the telemetry topic.
pub struct Forwarder {
    producer: ThreadedProducer<Context>,
    topic: String,
    /// Counters (shared with the delivery callback).
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Connects a producer (brokers are reached lazily; a down broker is retried).
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let stats = Arc::new(ForwardStats::default());
        let buffer = cfg.buffer.to_string();
        let producer = cfg
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // One request in flight: a site's records stay in order even on a
                // broker that does not check idempotent producers' sequence numbers
                // (tansu 0.6 appends concurrent requests out of order). A site's
                // telemetry is far below what one request per round trip carries.
                ("max.in.flight.requests.per.connection", "1"),
                ("linger.ms", "20"),
                ("compression.type", "lz4"),
                ("queue.buffering.max.messages", &buffer),
                ("message.timeout.ms", "300000"),
            ])
            .create_with_context(Context(Arc::clone(&stats), Logs::default()))?;
        Ok(Self {
            producer,
            topic: cfg.telemetry_topic.clone(),
            stats,
        })
    }

    /// Queues one record per site of `batch`; a full queue drops (and counts) it.
    pub fn send(&self, batch: &[Reading]) {
        for (site, readings) in codec::by_site(batch) {
            let value = codec::encode(&readings);
            let newest = readings.iter().map(|r| r.ts).max().unwrap_or_default();
            let n = readings.len() as u64;
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(n))
                .key(site)
                .payload(&value)
                .timestamp(newest);
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.queued.fetch_add(1, Relaxed);
                }
                Err((e, _)) => {
                    self.stats.dropped.fetch_add(1, Relaxed);
                    self.stats.readings_lost.fetch_add(n, Relaxed);
                    if !matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        tracing::warn!(error = %e, site, "telemetry record not queued");
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "telemetry not all delivered at shutdown");
        }
    }
}
