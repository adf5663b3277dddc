//! `wattchdog.toml`: every field optional with a documented default; unknown keys and
//! invalid values are errors that name the key (and, for syntax and type errors, the line).
//!
//! Detector parameters are set for every device kind under `[detectors.<name>]` and
//! overridden for one kind under `[kinds.<kind>.<name>]`; the override is merged key by
//! key over the global table.
//!
//! ```toml
//! [pipeline]
//! reorder_tolerance = "5s"   # readings later than this behind the newest are "late"
//! [detectors.ewma_z]
//! threshold = 6.0
//! [kinds.grid_meter.ewma_z]
//! threshold = 8.0            # only for grid meters
//! ```

use crate::correlate::{Correlator, CorrelatorParams};
use crate::detect::{DetectorParams, PerKind};
use crate::feature::FeatureParams;
use crate::model::DeviceKind;
use crate::pipeline::{Pipeline, PipelineParams};
use crate::source::modbus::ModbusConfig;
use crate::source::mqtt::MqttConfig;
use crate::tomlfile::{self, check, Broken, TomlError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a config could not be loaded (the file, and the key and line or rule).
pub type ConfigError = TomlError;

/// The file as written. Parsed twice: with typed detector tables (`D =
/// DetectorParams`) so that unknown keys and wrong types are reported with their line,
/// then with raw tables (`D = toml::Table`) for the key-by-key merge of overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig<D: Default> {
    pipeline: PipelineParams,
    features: FeatureParams,
    correlator: CorrelatorParams,
    detectors: D,
    kinds: BTreeMap<String, D>,
    clock: ClockConfig,
    modbus: ModbusConfig,
    pcap: crate::source::pcap::PcapConfig,
    mqtt: MqttConfig,
    snmp: crate::source::snmp::SnmpConfig,
    bacnet: crate::source::bacnet::BacnetConfig,
    kafka: crate::kafka::config::KafkaConfig,
    sinks: SinksConfig,
    store: crate::sink::store::StoreConfig,
    http: Option<crate::http::HttpConfig>,
    webhooks: Vec<crate::sink::webhook::Receiver>,
}

/// `[clock]`: event time of live sources (`wattchdog run`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// Event-time speed relative to the wall clock; 1 (the default) is real time. Faster
    /// clocks poll simulated devices served at the same speed (`simulate --serve-modbus`).
    pub speed: f64,
    /// Where event time and wall time coincide when `speed` is not 1 (a TOML date-time,
    /// an RFC 3339 string, or epoch seconds/milliseconds).
    #[serde(default, deserialize_with = "epoch")]
    pub epoch: Option<crate::model::Ts>,
}

fn epoch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<crate::model::Ts>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Toml(toml::value::Datetime),
        Other(#[serde(deserialize_with = "crate::time::serde_ts::deserialize")] crate::model::Ts),
    }
    match Written::deserialize(d)? {
        Written::Other(ts) => Ok(Some(ts)),
        Written::Toml(dt) => crate::time::TimeFormat::Auto
            .parse(&dt.to_string())
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            speed: 1.0,
            epoch: None,
        }
    }
}

impl ClockConfig {
    /// The clock.
    pub fn clock(&self) -> crate::time::Clock {
        crate::time::Clock {
            epoch: self.epoch.unwrap_or(0),
            speed: self.speed,
        }
    }
}

/// `[sinks]`: where `wattchdog run` sends alerts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// Alert JSONL file (appended); default: standard output.
    pub alerts: Option<std::path::PathBuf>,
    /// `[[sinks.syslog]]`: SIEMs fed over syslog from the store's outbox (a loaded
    /// [`Config`] holds them in its `soc`, with the other sinks that read the store).
    pub syslog: Vec<crate::sink::syslog::SyslogSink>,
}

/// Everything `[store]`, `[http]` and `[[webhooks]]` configure.
#[derive(Debug, Clone, Default)]
pub struct SocConfig {
    /// Store.
    pub store: crate::sink::store::StoreConfig,
    /// HTTP server.
    pub http: Option<crate::http::HttpConfig>,
    /// Webhook receivers.
    pub webhooks: Vec<crate::sink::webhook::Receiver>,
    /// Syslog sinks (`[[sinks.syslog]]`).
    pub syslog: Vec<crate::sink::syslog::SyslogSink>,
}

impl SocConfig {
    /// Whether any SOC sink is configured.
    pub fn enabled(&self) -> bool {
        self.store.path.is_some()
            || self.http.is_some()
            || !self.webhooks.is_empty()
            || !self.syslog.is_empty()
    }

    /// Checks the sections.
    pub fn validate(&self, origin: &str) -> Result<(), TomlError> {
        crate::sink::webhook::validate(&self.webhooks, origin)?;
        let hooks: Vec<&str> = self.webhooks.iter().map(|w| w.name.as_str()).collect();
        crate::sink::syslog::validate(&self.syslog, &hooks, origin)?;
        check(
            origin,
            "store.path",
            self.store.path.is_some()
                || (self.http.is_none() && self.webhooks.is_empty() && self.syslog.is_empty()),
            "is required by [http], [[webhooks]] and [[sinks.syslog]] (they read from the store)",
        )?;
        if let Some(h) = &self.http {
            check(
                origin,
                "http.token",
                h.token.is_some() != h.token_file.is_some(),
                "give token or token_file (exactly one)",
            )?;
            check(
                origin,
                "http.token",
                h.token.as_ref().is_none_or(|t| t.len() >= 16),
                "must be at least 16 characters",
            )?;
            check(
                origin,
                "http.cert_file",
                h.cert_file.is_some() == h.key_file.is_some(),
                "and key_file go together",
            )?;
            check(
                origin,
                "http.max_connections",
                (1..=100_000).contains(&h.max_connections),
                "must be between 1 and 100000",
            )?;
            check(
                origin,
                "http.max_streams",
                (1..=h.max_connections).contains(&h.max_streams),
                "must be between 1 and max_connections",
            )?;
            check(
                origin,
                "http.max_connections_per_address",
                (1..=h.max_connections).contains(&h.max_connections_per_address),
                "must be between 1 and max_connections",
            )?;
            check(
                origin,
                "http.idle_timeout",
                (1_000..=3_600_000).contains(&h.idle_timeout),
                "must be between 1s and 1h",
            )?;
        }
        check(
            origin,
            "store.retention",
            self.store.retention >= 3_600_000,
            "must be at least 1h",
        )
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ingestion and event time.
    pub pipeline: PipelineParams,
    /// Shared features.
    pub features: FeatureParams,
    /// Alerts and incidents.
    pub correlator: CorrelatorParams,
    /// Effective detector parameters per kind.
    pub detectors: PerKind<DetectorParams>,
    /// The isolation-forest model of each kind (none where disabled or absent).
    pub models: PerKind<Option<std::sync::Arc<crate::detect::iforest::Model>>>,
    /// The trained residual model of each kind (none where disabled or absent).
    pub residual_models: crate::detect::residual::Models,
    /// Event time of live sources.
    pub clock: ClockConfig,
    /// Modbus devices to poll.
    pub modbus: ModbusConfig,
    /// How packet captures are read.
    pub pcap: crate::source::pcap::PcapConfig,
    /// Modbus ports and devices by server address, for packet captures.
    pub wire: std::sync::Arc<crate::source::pcap::WireMap>,
    /// MQTT brokers to subscribe to.
    pub mqtt: MqttConfig,
    /// SNMP agents to poll, and where their traps arrive.
    pub snmp: crate::source::snmp::SnmpConfig,
    /// BACnet/IP devices to poll and subscribe to.
    pub bacnet: crate::source::bacnet::BacnetConfig,
    /// Many sites over Kafka.
    pub kafka: crate::kafka::config::KafkaConfig,
    /// Outputs of `run`.
    pub sinks: SinksConfig,
    /// Store, HTTP server and webhooks.
    pub soc: SocConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_toml_str("", "<defaults>").expect("the defaults are valid")
    }
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse(&tomlfile::read(path)?, &path.display().to_string(), base)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse(text, origin, Path::new(""))
    }

    /// Loads `path` (or the defaults) with one detector parameter, `detector.field`, set
    /// to `value` for every device kind: a kind's own setting of that field is dropped,
    /// so the value holds everywhere (`wattchdog eval --sweep`).
    pub fn load_setting(
        path: Option<&Path>,
        key: &str,
        value: &toml::Value,
    ) -> Result<Self, ConfigError> {
        let (text, origin, base) = match path {
            Some(p) => (
                tomlfile::read(p)?,
                p.display().to_string(),
                p.parent().unwrap_or(Path::new("")),
            ),
            None => (String::new(), "<defaults>".to_owned(), Path::new("")),
        };
        let origin = format!("{origin} with {key} = {value}");
        let invalid = |rule: &str| ConfigError::Invalid {
            path: origin.clone(),
            key: key.to_owned(),
            rule: rule.to_owned(),
        };
        let Some((detector, field)) = key.split_once('.').filter(|(_, f)| !f.contains('.')) else {
            return Err(invalid("is not of the form detector.field"));
        };
        let mut table: toml::Table = tomlfile::parse(&text, &origin)?;
        let section = |t: &mut toml::Table, name: &str| -> Result<toml::Table, ConfigError> {
            match t.remove(name) {
                None => Ok(toml::Table::new()),
                Some(toml::Value::Table(t)) => Ok(t),
                Some(_) => Err(invalid(&format!("[{name}] is not a table"))),
            }
        };
        let mut detectors = section(&mut table, "detectors")?;
        let mut params = section(&mut detectors, detector)?;
        params.insert(field.to_owned(), value.clone());
        detectors.insert(detector.to_owned(), params.into());
        table.insert("detectors".to_owned(), detectors.into());
        if let Some(toml::Value::Table(kinds)) = table.get_mut("kinds") {
            for (_, over) in kinds.iter_mut() {
                if let Some(toml::Value::Table(p)) = over.get_mut(detector) {
                    p.remove(field);
                }
            }
        }
        let text = toml::to_string(&table).map_err(|e| invalid(&e.to_string()))?;
        Self::parse(&text, &origin, base)
    }

    /// Parses config text whose relative paths (model directories) are relative to
    /// `base`, the config file's directory.
    fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut typed: RawConfig<DetectorParams> = tomlfile::parse(text, origin)?;
        // Syslog sinks are SOC sinks (they read the store's outbox).
        let syslog = std::mem::take(&mut typed.sinks.syslog);
        for kind in typed.kinds.keys() {
            if DeviceKind::parse(kind) == DeviceKind::Other && kind != "other" {
                return Err(ConfigError::Invalid {
                    path: origin.to_owned(),
                    key: format!("kinds.{kind}"),
                    rule: format!(
                        "is not a device kind (use one of: {})",
                        DeviceKind::ALL.map(|k| k.as_str()).join(", ")
                    ),
                });
            }
        }
        let raw: RawConfig<toml::Table> = tomlfile::parse(text, origin)?;
        let mut per_kind = Vec::new();
        for kind in DeviceKind::ALL {
            let mut merged = raw.detectors.clone();
            if let Some(over) = raw.kinds.get(kind.as_str()) {
                merge(&mut merged, over);
            }
            let at = if raw.kinds.contains_key(kind.as_str()) {
                format!("kinds.{kind}")
            } else {
                "detectors".to_owned()
            };
            let eff: DetectorParams =
                toml::Value::Table(merged)
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: origin.to_owned(),
                        message: format!("in [{at}]: {}", e.message()),
                    })?;
            eff.check().map_err(|b| b.within(&at, origin))?;
            per_kind.push(eff);
        }
        let mut it = per_kind.into_iter();
        let detectors = PerKind::from_fn(|_| it.next().unwrap_or_default());
        // Model directories are relative to the config file; a bad model is an error of
        // the `models` key that names the file.
        let bad_model = |detector: &str| {
            let key = format!("detectors.{detector}.models");
            move |e: crate::detect::model_file::ModelError| ConfigError::Invalid {
                path: origin.to_owned(),
                key,
                rule: e.to_string(),
            }
        };
        let models = crate::detect::iforest::models_for(&PerKind::from_fn(|k| {
            let mut p = detectors.get(k).iforest.clone();
            p.models = p.models.map(|dir| base.join(dir));
            p
        }))
        .map_err(bad_model("iforest"))?;
        let residual_models = crate::detect::residual::models_for(&PerKind::from_fn(|k| {
            let mut p = detectors.get(k).residual.clone();
            p.models = p.models.map(|dir| base.join(dir));
            p
        }))
        .map_err(bad_model("residual"))?;
        let plans = typed.modbus.resolve(base, origin)?;
        let bacnet = typed.bacnet.resolve(base, origin)?;
        let wire = std::sync::Arc::new(crate::source::pcap::WireMap::new(
            &typed.pcap,
            &typed.modbus.site,
            &plans,
            &bacnet,
        ));
        let cfg = Self {
            pipeline: typed.pipeline,
            features: typed.features,
            correlator: typed.correlator,
            detectors,
            models,
            residual_models,
            clock: typed.clock,
            modbus: typed.modbus,
            pcap: typed.pcap,
            wire,
            mqtt: typed.mqtt,
            snmp: typed.snmp,
            bacnet: typed.bacnet,
            kafka: typed.kafka,
            sinks: typed.sinks,
            soc: SocConfig {
                store: typed.store,
                http: typed.http,
                webhooks: typed.webhooks,
                syslog,
            },
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// What the detectors are built from.
    pub fn detect_setup(&self) -> crate::detect::Setup {
        crate::detect::Setup {
            params: self.detectors.clone(),
            models: self.models.clone(),
            residual_models: self.residual_models.clone(),
            features: self.features,
            device_maps: std::sync::Arc::new(self.wire.device_maps()),
            bacnet_maps: std::sync::Arc::new(self.wire.bacnet_maps()),
            tap: None,
        }
    }

    /// A pipeline running the configured detectors.
    pub fn build_pipeline(&self) -> Pipeline {
        self.build_tapped_pipeline(None)
    }

    /// A pipeline whose detectors also record what they compare with their thresholds
    /// in `tap` (`calibrate`).
    pub fn build_tapped_pipeline(&self, tap: Option<crate::detect::tap::Tap>) -> Pipeline {
        let setup = crate::detect::Setup {
            tap,
            ..self.detect_setup()
        };
        Pipeline::new(
            &self.pipeline,
            self.features,
            crate::detect::build(&setup),
            Correlator::new(self.correlator.clone()),
        )
    }

    /// What a central Kafka instance judges with.
    #[cfg(feature = "kafka")]
    pub fn central(&self) -> crate::kafka::central::Central {
        let cfg = self.clone();
        crate::kafka::central::Central {
            kafka: self.kafka.clone(),
            reorder_tolerance: self.pipeline.reorder_tolerance,
            early_alerts: self.pipeline.early_alerts,
            max_points: self.pipeline.max_points,
            new_pipeline: Box::new(move || cfg.build_pipeline()),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let at = |prefix: &'static str| move |b: Broken| b.within(prefix, origin);
        self.pipeline.check().map_err(at("pipeline"))?;
        self.features.check().map_err(at("features"))?;
        self.correlator.check().map_err(at("correlator"))?;
        self.kafka.check().map_err(at("kafka"))?;
        let speed = self.clock.speed;
        check(
            origin,
            "clock.speed",
            speed.is_finite() && speed > 0.0 && speed <= 10_000.0,
            "must be in (0, 10000]",
        )?;
        check(
            origin,
            "clock.epoch",
            speed == 1.0 || self.clock.epoch.is_some(),
            "must be given when clock.speed is not 1",
        )?;
        self.soc.validate(origin)
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, other values replace.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_holds_for_every_kind_and_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        std::fs::write(
            &base,
            "[detectors.physics]\nthreshold = 7\n[kinds.ups.physics]\ncusum_threshold = 99\npersist_samples = 3\n",
        )
        .unwrap();
        let c = Config::load_setting(Some(&base), "physics.cusum_threshold", &12.into()).unwrap();
        for kind in DeviceKind::ALL {
            let p = &c.detectors.get(kind).physics;
            assert_eq!((p.cusum_threshold, p.threshold), (12.0, 7.0), "{kind}");
        }
        assert_eq!(c.detectors.get(DeviceKind::Ups).physics.persist_samples, 3);
        let d = Config::load_setting(None, "ewma_z.enabled", &false.into()).unwrap();
        assert!(!d.detectors.get(DeviceKind::Chiller).ewma_z.enabled);
        let e = Config::load_setting(None, "ewma_z.threshold", &"high".into()).unwrap_err();
        assert!(e.to_string().contains("ewma_z.threshold = \"high\""), "{e}");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::from_toml_str("", "t").unwrap();
        assert_eq!(c.pipeline, PipelineParams::default());
        assert_eq!(
            c.detectors.get(DeviceKind::Ups).ewma_z,
            crate::detect::ewma::EwmaParams::default()
        );
    }

    #[test]
    fn kind_override_merges_over_global() {
        let c = Config::from_toml_str(
            "[detectors.ewma_z]\nthreshold = 7.0\nwarmup_samples = 50\n[kinds.chiller.ewma_z]\nthreshold = 9.0\n",
            "t",
        )
        .unwrap();
        let ch = &c.detectors.get(DeviceKind::Chiller).ewma_z;
        assert_eq!((ch.threshold, ch.warmup_samples), (9.0, 50));
        assert_eq!(c.detectors.get(DeviceKind::Ups).ewma_z.threshold, 7.0);
    }

    #[test]
    fn misspelt_keys_are_named() {
        let e = Config::from_toml_str("[pipeline]\nreorder_tolerence = \"5s\"\n", "t").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("reorder_tolerence") && msg.contains("line 2"),
            "{msg}"
        );
        let e = Config::from_toml_str("[detectors.ewma_z]\nthreshhold = 3\n", "t").unwrap_err();
        assert!(e.to_string().contains("threshhold"), "{e}");
        let e = Config::from_toml_str("[kinds.chiller.cusum]\nkk = 3\n", "t").unwrap_err();
        assert!(
            e.to_string().contains("kk") && e.to_string().contains("line 2"),
            "{e}"
        );
        let e = Config::from_toml_str("[kinds.toaster.cusum]\nk = 3\n", "t").unwrap_err();
        assert!(e.to_string().contains("kinds.toaster"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key_and_rule() {
        let e = Config::from_toml_str("[kinds.ups.ewma_z]\nthreshold = -1\n", "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: kinds.ups.ewma_z.threshold must be greater than 0"
        );
        let e = Config::from_toml_str("[pipeline]\nreorder_tolerance = \"5 parsecs\"\n", "t")
            .unwrap_err();
        assert!(
            e.to_string().contains("parsecs") && e.to_string().contains("line 2"),
            "{e}"
        );
        let e = Config::from_toml_str(
            "[detectors.limits.metrics.flow_lps]\nmin = 10\nmax = 5\n",
            "t",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("limits.metrics.flow_lps needs min < max"),
            "{e}"
        );
    }
}
