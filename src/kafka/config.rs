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
    /// Central: how long the group coordinator waits without a heartbeat before it gives
    /// an instance's partitions to the others (`session.timeout.ms`): the failover time
    /// after a crash, against rebalances a busy host or a slow broker causes needlessly.
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub session_timeout: i64,
    /// Central: how long a partition read to its end must stay quiet, and left behind by
    /// the others' event time, before its sites are judged silent on that time
    /// (`"auto"`: twice the reorder tolerance, at least 2 s; a duration; or `"off"`,
    /// when the edges detect silence themselves). Readings a site sends later than this
    /// are late and counted, not used: raise it for a slow or jittery uplink.
    pub silence: Silence,
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
            session_timeout: 10_000,
            silence: Silence::Auto,
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

    /// How long a quiet partition waits before its sites are judged silent, in ms;
    /// `None`: never.
    pub fn silence_ms(&self, reorder_tolerance: i64) -> Option<i64> {
        match self.silence {
            Silence::Auto => Some(2 * reorder_tolerance.max(1_000)),
            Silence::Off => None,
            Silence::After(ms) => Some(ms),
        }
    }

    /// Broken values, named by key.
    pub fn check(&self) -> Result<(), crate::tomlfile::Broken> {
        use crate::tomlfile::rule;
        rule(self.warmup >= 0, "warmup", "must not be negative")?;
        // librdkafka's own bounds; Apache Kafka brokers accept 6 s to 30 min by default
        // (`group.min/max.session.timeout.ms`).
        rule(
            (1_000..=3_600_000).contains(&self.session_timeout),
            "session_timeout",
            "must be between 1s and 1h",
        )
    }

    /// Whether the config asks for Kafka at all.
    pub fn used(&self) -> bool {
        self.forward || self.consume
    }
}

/// When a central instance judges a quiet partition's sites silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Silence {
    /// Twice the reorder tolerance (at least 2 s).
    #[default]
    Auto,
    /// Never: the edges (`detect = true`) judge silence themselves.
    Off,
    /// After this many milliseconds.
    After(i64),
}

impl<'de> Deserialize<'de> for Silence {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "auto" => Ok(Silence::Auto),
            "off" => Ok(Silence::Off),
            other => match crate::time::parse_duration(other) {
                Ok(ms) if ms > 0 => Ok(Silence::After(ms)),
                Ok(_) => Err(serde::de::Error::custom(
                    "silence must be positive (or \"off\")",
                )),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "{e} (expected \"auto\", \"off\" or a duration such as \"30s\")"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<KafkaConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn silence_is_auto_off_or_a_positive_duration() {
        let auto = parse("").unwrap();
        assert_eq!(auto.silence_ms(5_000), Some(10_000));
        assert_eq!(auto.silence_ms(200), Some(2_000), "at least 2 s");
        assert_eq!(parse("silence = \"off\"").unwrap().silence_ms(5_000), None);
        assert_eq!(
            parse("silence = \"1m\"").unwrap().silence_ms(5_000),
            Some(60_000)
        );
        assert!(parse("silence = \"0s\"").is_err());
        assert!(parse("silence = \"soon\"").is_err());
    }

    #[test]
    fn session_timeout_is_a_duration_within_librdkafka_s_bounds() {
        assert_eq!(parse("").unwrap().session_timeout, 10_000);
        let c = parse("session_timeout = \"45s\"").unwrap();
        assert_eq!(c.session_timeout, 45_000);
        assert!(c.check().is_ok());
        let short = parse("session_timeout = \"500ms\"").unwrap();
        assert_eq!(short.check().unwrap_err().key, "session_timeout");
        assert!(parse("session_timeout = \"2h\"").unwrap().check().is_err());
        assert!(
            parse("session_timeout = 10").is_err(),
            "a bare number has no unit"
        );
    }
}
