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

use crate::collect::modbus::ModbusConfig;
use crate::collect::mqtt::MqttConfig;
use crate::detect::cusum::CusumParams;
use crate::detect::ewma::EwmaParams;
use crate::detect::flatline::FlatlineParams;
use crate::detect::grid::BreakerParams;
use crate::detect::limits::LimitsParams;
use crate::detect::oscillation::OscillationParams;
use crate::detect::physics::PhysicsParams;
use crate::detect::protocol::ProtocolParams;
use crate::detect::replay::ReplayParams;
use crate::detect::staleness::StalenessParams;
use crate::detect::ups::UpsParams;
use crate::detect::PerKind;
use crate::feature::FeatureParams;
use crate::model::DeviceKind;
use crate::time::serde_duration;
use crate::tomlfile::{self, check, TomlError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why a config could not be loaded (the file, and the key and line or rule).
pub type ConfigError = TomlError;

/// Ingestion and event-time settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Readings up to this far behind the newest one are reordered; later ones are
    /// counted as late. Default `"5s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub reorder_tolerance: i64,
    /// Silence detectors are consulted each time the watermark advances this much.
    /// Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub tick: i64,
    /// Upper bound on distinct points (memory guard against hostile captures). Default
    /// 200000.
    pub max_points: usize,
    /// Longest accepted capture line in bytes; longer lines are counted and skipped.
    /// Default 1 MiB.
    pub max_line_bytes: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            reorder_tolerance: 5_000,
            tick: 1_000,
            max_points: 200_000,
            max_line_bytes: 1 << 20,
        }
    }
}

/// Shared per-point feature settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Half-life of the running mean/variance in samples. Default 600.
    pub halflife_samples: f64,
    /// Residual clipping for the running statistics, in σ. Default 3.
    pub clip_sigma: f64,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        let d = FeatureParams::default();
        Self {
            halflife_samples: d.halflife_samples,
            clip_sigma: d.clip_sigma,
        }
    }
}

/// How findings become alerts and incidents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelatorConfig {
    /// An alert closes after this long without a finding (at least 3 of the device's
    /// intervals). Default `"2m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub clear_after: i64,
    /// A new alert joins a site's open incident if it starts within this long of the
    /// incident's latest activity. Default `"15m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub incident_window: i64,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        Self {
            clear_after: 120_000,
            incident_window: 900_000,
        }
    }
}

/// Parameters of every detector (for all kinds, or one kind's override).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorsConfig {
    /// Physical limits.
    pub limits: LimitsParams,
    /// Robust EWMA z-score.
    pub ewma_z: EwmaParams,
    /// Two-sided CUSUM.
    pub cusum: CusumParams,
    /// Vanished noise.
    pub flatline: FlatlineParams,
    /// Repeated windows.
    pub replay: ReplayParams,
    /// Silence.
    pub staleness: StalenessParams,
    /// UPS bypass, on-battery and draining with healthy mains.
    pub ups: UpsParams,
    /// Breaker openings without a grid disturbance.
    pub breaker: BreakerParams,
    /// Learned physical relations between points.
    pub physics: PhysicsParams,
    /// Periodic power swings.
    pub oscillation: OscillationParams,
    /// Commands on the wire (global: `[detectors.protocol]`).
    pub protocol: ProtocolParams,
    /// Isolation forest over each device's feature vector.
    pub iforest: crate::detect::iforest::IForestParams,
    /// PCA T²/SPE and robust Mahalanobis distance over each device's metrics.
    pub residual: crate::detect::residual::ResidualParams,
}

/// The file as written. Parsed twice: with typed detector tables (`D =
/// DetectorsConfig`) so that unknown keys and wrong types are reported with their line,
/// then with raw tables (`D = toml::Table`) for the key-by-key merge of overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig<D: Default> {
    pipeline: PipelineConfig,
    features: FeaturesConfig,
    correlator: CorrelatorConfig,
    detectors: D,
    kinds: BTreeMap<String, D>,
    clock: ClockConfig,
    modbus: ModbusConfig,
    pcap: crate::source::pcap::PcapConfig,
    mqtt: MqttConfig,
    kafka: crate::kafka::config::KafkaConfig,
    sinks: SinksConfig,
    store: crate::soc::StoreConfig,
    http: Option<crate::soc::HttpConfig>,
    webhooks: Vec<crate::webhook::Receiver>,
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
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ingestion and event time.
    pub pipeline: PipelineConfig,
    /// Shared features.
    pub features: FeatureParams,
    /// Alerts and incidents.
    pub correlator: CorrelatorConfig,
    /// Effective detector parameters per kind.
    pub detectors: PerKind<DetectorsConfig>,
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
    /// Many sites over Kafka.
    pub kafka: crate::kafka::config::KafkaConfig,
    /// Outputs of `run`.
    pub sinks: SinksConfig,
    /// Store, HTTP server and webhooks.
    pub soc: crate::soc::SocConfig,
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

    /// Parses config text whose relative paths (model directories) are relative to
    /// `base`, the config file's directory.
    fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let typed: RawConfig<DetectorsConfig> = tomlfile::parse(text, origin)?;
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
            let eff: DetectorsConfig =
                toml::Value::Table(merged)
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: origin.to_owned(),
                        message: format!("in [{at}]: {}", e.message()),
                    })?;
            validate_detectors(&eff, &at, origin)?;
            per_kind.push(eff);
        }
        let mut it = per_kind.into_iter();
        let detectors = PerKind::from_fn(|_| it.next().unwrap_or_default());
        // Model directories are relative to the config file; a bad model is an error of
        // the `models` key that names the file.
        let bad_model = |detector: &str| {
            let key = format!("detectors.{detector}.models");
            move |e: crate::model_file::ModelError| ConfigError::Invalid {
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
        let wire = std::sync::Arc::new(crate::source::pcap::WireMap::new(
            &typed.pcap,
            &typed.modbus.site,
            &plans,
        ));
        let cfg = Self {
            pipeline: typed.pipeline,
            features: FeatureParams {
                halflife_samples: typed.features.halflife_samples,
                clip_sigma: typed.features.clip_sigma,
            },
            correlator: typed.correlator,
            detectors,
            models,
            residual_models,
            clock: typed.clock,
            modbus: typed.modbus,
            pcap: typed.pcap,
            wire,
            mqtt: typed.mqtt,
            kafka: typed.kafka,
            sinks: typed.sinks,
            soc: crate::soc::SocConfig {
                store: typed.store,
                http: typed.http,
                webhooks: typed.webhooks,
            },
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let p = &self.pipeline;
        let f = &self.features;
        let c = &self.correlator;
        check(
            origin,
            "pipeline.reorder_tolerance",
            p.reorder_tolerance >= 0,
            "must not be negative",
        )?;
        check(origin, "pipeline.tick", p.tick >= 1, "must be at least 1ms")?;
        check(
            origin,
            "pipeline.max_points",
            p.max_points >= 1,
            "must be at least 1",
        )?;
        check(
            origin,
            "pipeline.max_line_bytes",
            p.max_line_bytes >= 64,
            "must be at least 64",
        )?;
        check(
            origin,
            "features.halflife_samples",
            f.halflife_samples >= 1.0,
            "must be at least 1",
        )?;
        check(
            origin,
            "features.clip_sigma",
            f.clip_sigma > 0.0,
            "must be greater than 0",
        )?;
        check(
            origin,
            "correlator.clear_after",
            c.clear_after >= 1,
            "must be at least 1ms",
        )?;
        check(
            origin,
            "correlator.incident_window",
            c.incident_window >= 0,
            "must not be negative",
        )?;
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

fn validate_detectors(d: &DetectorsConfig, at: &str, origin: &str) -> Result<(), ConfigError> {
    let k = |s: &str| format!("{at}.{s}");
    check(
        origin,
        &k("ewma_z.threshold"),
        d.ewma_z.threshold > 0.0,
        "must be greater than 0",
    )?;
    check(
        origin,
        &k("ewma_z.persist_samples"),
        d.ewma_z.persist_samples >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("cusum.block_samples"),
        d.cusum.block_samples >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("cusum.k"),
        d.cusum.k >= 0.0,
        "must not be negative",
    )?;
    check(
        origin,
        &k("cusum.threshold"),
        d.cusum.threshold > 0.0,
        "must be greater than 0",
    )?;
    check(
        origin,
        &k("cusum.warmup_blocks"),
        d.cusum.warmup_blocks >= 2,
        "must be at least 2",
    )?;
    check(
        origin,
        &k("cusum.reference_halflife_blocks"),
        d.cusum.reference_halflife_blocks >= 1.0,
        "must be at least 1",
    )?;
    let fap = d.flatline.false_alarm_prob;
    check(
        origin,
        &k("flatline.false_alarm_prob"),
        fap > 0.0 && fap < 1.0,
        "must be between 0 and 1",
    )?;
    check(
        origin,
        &k("flatline.warmup_samples"),
        d.flatline.warmup_samples >= 10,
        "must be at least 10",
    )?;
    check(
        origin,
        &k("flatline.min_run"),
        d.flatline.min_run >= 2,
        "must be at least 2",
    )?;
    check(
        origin,
        &k("flatline.tolerance"),
        d.flatline.tolerance >= 0.0,
        "must not be negative",
    )?;
    check(
        origin,
        &k("replay.window_samples"),
        d.replay.window_samples >= 4,
        "must be at least 4",
    )?;
    check(
        origin,
        &k("replay.stride"),
        d.replay.stride >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("replay.confirm"),
        d.replay.confirm >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("replay.lookback_samples"),
        d.replay.lookback_samples as usize >= 2 * d.replay.window_samples,
        "must be at least twice replay.window_samples",
    )?;
    check(
        origin,
        &k("replay.warmup_samples"),
        d.replay.warmup_samples >= 16,
        "must be at least 16",
    )?;
    check(
        origin,
        &k("replay.min_change_frac"),
        (0.0..=1.0).contains(&d.replay.min_change_frac),
        "must be between 0 and 1",
    )?;
    check(
        origin,
        &k("staleness.factor"),
        d.staleness.factor > 1.0,
        "must be greater than 1",
    )?;
    check(
        origin,
        &k("staleness.min_silence"),
        d.staleness.min_silence >= 0,
        "must not be negative",
    )?;
    check(
        origin,
        &k("physics.threshold"),
        d.physics.threshold > 0.0,
        "must be greater than 0",
    )?;
    check(
        origin,
        &k("physics.warmup_samples"),
        d.physics.warmup_samples >= 10,
        "must be at least 10",
    )?;
    check(
        origin,
        &k("physics.persist_samples"),
        d.physics.persist_samples >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("physics.halflife_samples"),
        d.physics.halflife_samples >= 1.0,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("physics.sustained_halflife_samples"),
        d.physics.sustained_halflife_samples >= 1.0,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("physics.sustained_threshold"),
        d.physics.sustained_threshold > 0.0,
        "must be greater than 0",
    )?;
    let o = &d.oscillation;
    check(
        origin,
        &k("oscillation.window_samples"),
        (16..=4096).contains(&o.window_samples),
        "must be between 16 and 4096",
    )?;
    check(
        origin,
        &k("oscillation.hop_samples"),
        o.hop_samples >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("oscillation.min_hz"),
        o.min_hz > 0.0 && o.min_hz < o.max_hz,
        "must be positive and below max_hz",
    )?;
    check(
        origin,
        &k("oscillation.threshold"),
        o.threshold > 1.0,
        "must be greater than 1",
    )?;
    check(
        origin,
        &k("oscillation.warmup_windows"),
        o.warmup_windows >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("oscillation.line_contrast"),
        d.oscillation.line_contrast >= 1.0,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("iforest.persist_samples"),
        d.iforest.persist_samples >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("iforest.threshold"),
        d.iforest.threshold.is_none_or(|t| t > 0.0 && t <= 1.0),
        "must be in (0, 1]",
    )?;
    check(
        origin,
        &k("ups.drain_pct_per_min"),
        d.ups.drain_pct_per_min > 0.0,
        "must be greater than 0",
    )?;
    check(
        origin,
        &k("ups.window"),
        d.ups.window >= 1000,
        "must be at least 1s",
    )?;
    check(
        origin,
        &k("breaker.disturbance_z"),
        d.breaker.disturbance_z > 0.0,
        "must be greater than 0",
    )?;
    check(
        origin,
        &k("breaker.lookback"),
        d.breaker.lookback >= 0,
        "must not be negative",
    )?;
    check(
        origin,
        &k("protocol.scan_devices"),
        d.protocol.scan_devices >= 1,
        "must be at least 1",
    )?;
    check(
        origin,
        &k("protocol.scan_window"),
        d.protocol.scan_window >= 1,
        "must be at least 1ms",
    )?;
    check(
        origin,
        &k("protocol.learn"),
        d.protocol.learn >= 0,
        "must not be negative",
    )?;
    if let Err((key, rule)) = d.residual.check() {
        check(origin, &k(&format!("residual.{key}")), false, rule)?;
    }
    for (metric, l) in &d.limits.metrics {
        if let (Some(lo), Some(hi)) = (l.min, l.max) {
            check(
                origin,
                &k(&format!("limits.metrics.{metric}")),
                lo < hi,
                "needs min < max",
            )?;
        }
        if let Some(r) = l.max_rate {
            check(
                origin,
                &k(&format!("limits.metrics.{metric}.max_rate")),
                r > 0.0,
                "must be greater than 0",
            )?;
        }
    }
    Ok(())
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
    fn empty_config_is_all_defaults() {
        let c = Config::from_toml_str("", "t").unwrap();
        assert_eq!(c.pipeline, PipelineConfig::default());
        assert_eq!(
            c.detectors.get(DeviceKind::Ups).ewma_z,
            EwmaParams::default()
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
