//! `[kafka]`: many sites over a Kafka-protocol broker (Apache Kafka, Redpanda, tansu,
//! the managed services). Parsed in every build so a config names its problem clearly;
//! acted on only in a build with the `kafka` feature.

use serde::Deserialize;

/// `[kafka]` of a config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,host:port`).
    pub brokers: String,
    /// Telemetry topic: records keyed by site, each a chunk of capture JSONL.
    pub telemetry_topic: String,
    /// Topic alerts and incidents are also produced to (keyed by their id), for a SIEM;
    /// empty: none.
    pub alerts_topic: String,
    /// Edge: forward what the collectors read to `telemetry_topic`.
    pub forward: bool,
    /// Edge: with `forward`, also detect locally.
    pub detect: bool,
    /// Central: read `telemetry_topic` in the consumer group `group` instead of polling.
    pub consume: bool,
    /// Consumer group.
    pub group: String,
    /// How much event time a new owner of a partition replays, muted, before the
    /// committed offset, so its detectors are warm when it goes live (e.g. `30m`).
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub warmup: i64,
    /// Producer queue bound, in records; what does not fit is dropped and counted.
    pub buffer: u32,
    /// librdkafka properties for every client, as given (`"security.protocol" =
    /// "SASL_SSL"`, `"sasl.mechanisms"`, `"ssl.ca.location"`, `"debug" = "cgrp"`, …).
    /// They come last, so they override wattchdog's own settings: use with care.
    pub client: std::collections::BTreeMap<String, String>,
    /// Test mode: append `partition offset` of every record processed live, and
    /// `partition offset muted` of every record replayed to warm up, to this file.
    pub audit: Option<std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            telemetry_topic: "wattchdog.telemetry.v1".into(),
            alerts_topic: String::new(),
            forward: false,
            detect: true,
            consume: false,
            group: "wattchdog".into(),
            warmup: 30 * 60_000,
            buffer: 100_000,
            client: Default::default(),
            audit: None,
        }
    }
}

impl KafkaConfig {
    /// A librdkafka client config: the brokers, `ours`, then `[kafka.client]`.
    #[cfg(feature = "kafka")]
    pub fn client_config(&self, ours: &[(&str, &str)]) -> rdkafka::config::ClientConfig {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in ours {
            c.set(*k, *v);
        }
        for (k, v) in &self.client {
            c.set(k, v);
        }
        // Debug contexts asked for: let their lines through (`--log librdkafka=debug`).
        if self.client.contains_key("debug") {
            c.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        c
    }

    /// Whether the config asks for Kafka at all.
    pub fn used(&self) -> bool {
        self.forward || self.consume
    }
}
