//! Detectors: one small trait, one file per family.
//!
//! A detector sees every [`Frame`] (the samples of one device at one event time) and,
//! when the watermark advances, a [`Detector::tick`] for conditions that are about
//! silence rather than values. It pushes zero or more [`Finding`]s into a buffer owned by
//! the caller. Detectors are synchronous, do no I/O and keep their own per-point state,
//! so a capture replayed at any speed gives the same findings.
//!
//! Parameters are per device kind: `[detectors.<name>]` in the config sets them for every
//! kind, `[kinds.<kind>.<name>]` overrides them for one (see [`crate::config`]).

pub mod baseline;
pub mod cusum;
pub mod envelope;
pub mod ewma;
pub mod extreme;
pub mod flatline;
pub mod grid;
pub mod iforest;
pub mod limits;
pub mod model_file;
pub mod oscillation;
pub mod physics;
pub(crate) mod precedent;
pub mod pulse;
pub mod replay_attack;
pub mod residual;
pub mod seasonal;
pub mod staleness;
pub mod tail;
pub mod tap;
pub mod timescale;
pub mod ups;
pub mod wire;

use crate::feature::{FeatureStore, Frame};
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::{Command, DeviceKind, Finding, Severity, Technique, Ts, Words};
use crate::tomlfile::Broken;
use serde::Deserialize;
use std::sync::Arc;

/// Parameters of every detector for one kind (`[detectors.*]`, `[kinds.<kind>.*]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorParams {
    /// Physical limits.
    pub limits: limits::LimitsParams,
    /// Robust EWMA z-score.
    pub ewma_z: ewma::EwmaParams,
    /// A reading beyond its point's fitted tail.
    pub extreme: extreme::ExtremeParams,
    /// A reading far from its point's daily or weekly cycle.
    pub seasonal: seasonal::SeasonalParams,
    /// Two-sided CUSUM.
    pub cusum: cusum::CusumParams,
    /// Vanished noise.
    pub flatline: flatline::FlatlineParams,
    /// Repeated windows.
    pub replay: replay_attack::ReplayParams,
    /// Silence.
    pub staleness: staleness::StalenessParams,
    /// UPS bypass, on-battery and draining with healthy mains.
    pub ups: ups::UpsParams,
    /// Breaker openings without a grid disturbance.
    pub breaker: grid::BreakerParams,
    /// Learned physical relations between points.
    pub physics: physics::PhysicsParams,
    /// Periodic power swings.
    pub oscillation: oscillation::OscillationParams,
    /// Commands on the wire (global: `[detectors.protocol]`).
    pub protocol: wire::ProtocolParams,
    /// Isolation forest over each device's feature vector.
    pub iforest: iforest::IForestParams,
    /// PCA T²/SPE and robust Mahalanobis distance over each device's metrics.
    pub residual: residual::ResidualParams,
    /// The range of the site's clean history (written by `calibrate`).
    pub envelope: envelope::EnvelopeParams,
    /// Per-minute, per-15-minute and per-4-hour aggregates against their own history.
    pub timescale: timescale::TimescaleParams,
}

impl DetectorParams {
    /// The first parameter that breaks a rule, if any (keys name the detector's table).
    pub fn check(&self) -> Result<(), Broken> {
        self.ewma_z.check().map_err(|b| b.under("ewma_z"))?;
        self.extreme.check().map_err(|b| b.under("extreme"))?;
        self.seasonal.check().map_err(|b| b.under("seasonal"))?;
        self.cusum.check().map_err(|b| b.under("cusum"))?;
        self.flatline.check().map_err(|b| b.under("flatline"))?;
        self.replay.check().map_err(|b| b.under("replay"))?;
        self.staleness.check().map_err(|b| b.under("staleness"))?;
        self.physics.check().map_err(|b| b.under("physics"))?;
        self.oscillation
            .check()
            .map_err(|b| b.under("oscillation"))?;
        self.iforest.check().map_err(|b| b.under("iforest"))?;
        self.ups.check().map_err(|b| b.under("ups"))?;
        self.breaker.check().map_err(|b| b.under("breaker"))?;
        self.protocol.check().map_err(|b| b.under("protocol"))?;
        self.residual.check().map_err(|(key, r)| Broken {
            key: format!("residual.{key}"),
            rule: r.to_owned(),
        })?;
        self.envelope.check().map_err(|b| b.under("envelope"))?;
        self.timescale.check().map_err(|b| b.under("timescale"))?;
        self.limits.check().map_err(|b| b.under("limits"))
    }
}

/// A detector of one family.
///
/// Contract: `observe` and `tick` never fail and never block; they push findings for
/// conditions that hold *now* (a condition that persists yields a finding per frame,
/// which the correlator folds into one alert).
pub trait Detector: Send {
    /// Name used in alerts and config (`ewma_z`, `cusum`, …).
    fn name(&self) -> &'static str;
    /// Looks at the samples of one device at one event time.
    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>);
    /// Called when the watermark passes `now`; for detectors of silence.
    fn tick(&mut self, _now: Ts, _store: &FeatureStore, _reg: &Registry, _out: &mut Vec<Finding>) {}
    /// Looks at one reading the moment it arrives, before the reorder wait, for what it
    /// proves on its own (an impossible value, a declared death): live runs raise those
    /// at once. Each such finding must be one `observe` also makes, with the same
    /// device, detector and metrics, when the reading's frame comes in its turn: that
    /// confirms it (see [`crate::pipeline`]). State here may only be about arrivals.
    fn arrival(&mut self, _r: &Arrival<'_>, _out: &mut Vec<Finding>) {}
    /// Looks at one Modbus exchange seen on the wire (packet captures).
    fn traffic(
        &mut self,
        _t: &crate::model::event::Traffic,
        _reg: &Registry,
        _out: &mut Vec<Finding>,
    ) {
    }
    /// Looks at a control action seen on the wire; `device` is its target's id.
    fn command(
        &mut self,
        _cmd: &Command,
        _device: DeviceId,
        _reg: &Registry,
        _out: &mut Vec<Finding>,
    ) {
    }
    /// How it judged what it saw, for the report's reader (which rules applied).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Judges from now on against what a baseline file says was learned elsewhere.
    fn adopt(&mut self, _baseline: &baseline::Baseline) {}
}

/// A reading as it arrives, before it is ordered into a frame.
pub struct Arrival<'a> {
    /// Event time.
    pub ts: Ts,
    /// The point.
    pub point: PointId,
    /// Its value.
    pub value: f64,
    /// Its quality.
    pub quality: crate::model::Quality,
    /// Names of points and devices.
    pub registry: &'a Registry,
}

/// One value per device kind, indexed by [`DeviceKind::index`].
#[derive(Debug, Clone)]
pub struct PerKind<T>(Vec<T>);

impl<T> PerKind<T> {
    /// Builds the table by calling `f` for each kind.
    pub fn from_fn(f: impl FnMut(DeviceKind) -> T) -> Self {
        Self(DeviceKind::ALL.into_iter().map(f).collect())
    }

    /// The value for a kind.
    pub fn get(&self, kind: DeviceKind) -> &T {
        &self.0[kind.index()]
    }

    /// The value for a kind, mutably.
    pub fn get_mut(&mut self, kind: DeviceKind) -> &mut T {
        &mut self.0[kind.index()]
    }
}

/// Parameters every detector has.
pub trait Enabled {
    /// Whether the detector runs for a kind.
    fn enabled(&self) -> bool;
}

macro_rules! enabled {
    ($($t:ty),*) => {$(impl Enabled for $t { fn enabled(&self) -> bool { self.enabled } })*};
}
enabled!(
    limits::LimitsParams,
    ewma::EwmaParams,
    extreme::ExtremeParams,
    seasonal::SeasonalParams,
    cusum::CusumParams,
    flatline::FlatlineParams,
    replay_attack::ReplayParams,
    staleness::StalenessParams,
    ups::UpsParams,
    grid::BreakerParams,
    physics::PhysicsParams,
    oscillation::OscillationParams,
    wire::ProtocolParams,
    iforest::IForestParams,
    residual::ResidualParams,
    envelope::EnvelopeParams,
    timescale::TimescaleParams
);

/// The per-kind table of one detector's parameters, if any kind enables it.
fn table<P: Clone + Enabled>(
    cfg: &PerKind<DetectorParams>,
    pick: fn(&DetectorParams) -> &P,
) -> Option<PerKind<P>> {
    let t = PerKind::from_fn(|k| pick(cfg.get(k)).clone());
    DeviceKind::ALL
        .iter()
        .any(|&k| t.get(k).enabled())
        .then_some(t)
}

/// What the detectors are built from.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Each kind's checked parameters.
    pub params: PerKind<DetectorParams>,
    /// The isolation-forest model of each kind (none where disabled or absent).
    pub models: PerKind<Option<Arc<iforest::Model>>>,
    /// The trained residual model of each kind (none where disabled or absent).
    pub residual_models: residual::Models,
    /// The shared feature settings (the forest's vectors use them).
    pub features: crate::feature::FeatureParams,
    /// Register maps of the configured devices, by site and name (for the protocol
    /// detector; other devices get their kind's built-in profile).
    pub device_maps: Arc<crate::protocol::registers::DeviceMaps>,
    /// BACnet object maps of the configured devices, by site and name (other devices
    /// get their kind's built-in map).
    pub bacnet_maps: Arc<crate::protocol::bacnet_map::BacnetMaps>,
    /// Where detectors with a threshold record the statistic they compare with it
    /// (`calibrate`; none otherwise).
    pub tap: Option<tap::Tap>,
}

/// Builds the enabled detectors.
pub fn build(config: &Setup) -> Vec<Box<dyn Detector>> {
    let cfg = &config.params;
    let mut out: Vec<Box<dyn Detector>> = Vec::new();
    if let Some(t) = table(cfg, |c| &c.limits) {
        out.push(Box::new(limits::Limits::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.ewma_z) {
        out.push(Box::new(ewma::EwmaZ::new(t).tapped(config.tap.clone())));
    }
    if let Some(t) = table(cfg, |c| &c.extreme) {
        out.push(Box::new(extreme::Extreme::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.seasonal) {
        out.push(Box::new(seasonal::Seasonal::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.envelope) {
        if DeviceKind::ALL
            .iter()
            .any(|&k| !t.get(k).metrics.is_empty())
        {
            out.push(Box::new(envelope::Envelope::new(t)));
        }
    }
    if let Some(t) = table(cfg, |c| &c.timescale) {
        out.push(Box::new(
            timescale::Timescale::new(t).tapped(config.tap.clone()),
        ));
    }
    if let Some(t) = table(cfg, |c| &c.cusum) {
        out.push(Box::new(cusum::Cusum::new(t).tapped(config.tap.clone())));
    }
    if let Some(t) = table(cfg, |c| &c.flatline) {
        out.push(Box::new(flatline::Flatline::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.replay) {
        out.push(Box::new(replay_attack::Replay::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.staleness) {
        out.push(Box::new(staleness::Staleness::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.ups) {
        out.push(Box::new(ups::UpsState::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.breaker) {
        out.push(Box::new(grid::Breaker::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.physics) {
        out.push(Box::new(
            physics::Physics::new(t).tapped(config.tap.clone()),
        ));
    }
    if let Some(t) = table(cfg, |c| &c.oscillation) {
        out.push(Box::new(oscillation::Oscillation::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.residual) {
        out.push(Box::new(
            residual::Residual::new(t, config.residual_models.clone()).tapped(config.tap.clone()),
        ));
    }
    if let Some(t) = table(cfg, |c| &c.iforest) {
        if DeviceKind::ALL
            .iter()
            .any(|&k| config.models.get(k).is_some())
        {
            out.push(Box::new(
                iforest::IForest::new(t, config.models.clone(), config.features)
                    .tapped(config.tap.clone()),
            ));
        }
    }
    // Commands carry no device kind worth trusting: the global parameters apply.
    let protocol = &cfg.get(DeviceKind::Other).protocol;
    if protocol.enabled {
        out.push(Box::new(
            wire::Protocol::new(protocol.clone(), config.device_maps.clone())
                .with_bacnet(config.bacnet_maps.clone()),
        ));
    }
    out
}

/// Per-point detector state, grown on demand, indexed by point id.
#[derive(Debug)]
pub(crate) struct PointTable<S>(Vec<Option<S>>);

impl<S> Default for PointTable<S> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<S> PointTable<S> {
    /// The state of `p`, created with `init` on first use.
    pub(crate) fn get_or_insert(&mut self, p: PointId, init: impl FnOnce() -> S) -> &mut S {
        let i = p as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i].get_or_insert_with(init)
    }

    /// The state of `p`, if created.
    pub(crate) fn get(&self, p: PointId) -> Option<&S> {
        self.0.get(p as usize).and_then(Option::as_ref)
    }

    /// Every point's state created so far.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &S> {
        self.0.iter().flatten()
    }
}

/// The severity of a statistical finding: medium once its score is twice its threshold.
pub(crate) fn statistical_severity(score: f64, threshold: f64) -> Severity {
    if score >= 2.0 * threshold {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// Builds a finding about one point of a frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn point_finding(
    frame: &Frame<'_>,
    point: PointId,
    detector: &'static str,
    score: f64,
    threshold: f64,
    severity: Severity,
    technique: Technique,
    words: Words,
) -> Finding {
    Finding {
        ts: frame.ts,
        device: frame.device,
        metrics: vec![frame.registry.point(point).metric.clone()],
        detector,
        score,
        threshold,
        severity,
        technique,
        words,
    }
}

/// Rounds for human-readable reasons: 4 significant digits.
pub(crate) fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 1e15 {
        // A reading an attacker wrote as 1e308 is 309 digits in fixed notation.
        return format!("{v:.3e}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Drives one detector over synthetic series without the rest of the pipeline.
    use super::*;
    use crate::feature::{FeatureParams, FeatureStore};
    use crate::model::points::Registry;
    use crate::model::Quality;

    /// A one-device harness: feed values at 1 Hz, collect findings.
    pub struct Harness {
        pub reg: Registry,
        pub store: FeatureStore,
        pub findings: Vec<(usize, Finding)>,
        pub step: usize,
        /// What the detector noted for the report (filled by tests that ask).
        pub notes: Vec<String>,
        /// As the pipeline's open alerts do: a point's baseline does not learn for this
        /// many samples after a finding (none by default).
        pub freeze_after_finding: usize,
    }

    impl Harness {
        pub fn new() -> Self {
            Self {
                reg: Registry::new(1000),
                store: FeatureStore::new(FeatureParams::default()),
                findings: Vec::new(),
                step: 0,
                notes: Vec::new(),
                freeze_after_finding: 0,
            }
        }

        /// Feeds one sample per series at time `step` seconds.
        pub fn feed(&mut self, det: &mut dyn Detector, kind: &str, metric: &str, v: f64) {
            self.feed_at(det, kind, metric, self.step as Ts * 1000, v);
        }

        /// Feeds one sample at event time `ts` (findings are kept with the sample's
        /// number, `step`).
        pub fn feed_at(
            &mut self,
            det: &mut dyn Detector,
            kind: &str,
            metric: &str,
            ts: Ts,
            v: f64,
        ) {
            let p = self.reg.intern("site", "dev-1", kind, metric).unwrap();
            let frozen = (self.findings.last())
                .is_some_and(|&(at, _)| self.step - at <= self.freeze_after_finding);
            self.store
                .update_learning(&self.reg, p, ts, v, Quality::Good, !frozen);
            let frame = Frame {
                ts,
                device: 0,
                updated: &[p],
                store: &self.store,
                registry: &self.reg,
            };
            let mut out = Vec::new();
            det.observe(&frame, &mut out);
            det.tick(ts, &self.store, &self.reg, &mut out);
            self.findings
                .extend(out.into_iter().map(|f| (self.step, f)));
            self.step += 1;
        }

        /// Feeds one frame of several metrics of one device at time `step` seconds.
        pub fn feed_frame(&mut self, det: &mut dyn Detector, kind: &str, values: &[(&str, f64)]) {
            let ts = self.step as Ts * 1000;
            let pts: Vec<PointId> = values
                .iter()
                .map(|(m, _)| self.reg.intern("site", "dev-1", kind, m).unwrap())
                .collect();
            for (p, (_, v)) in pts.iter().zip(values) {
                self.store.update(&self.reg, *p, ts, *v, Quality::Good);
            }
            let device = self.reg.point(pts[0]).device;
            let frame = Frame {
                ts,
                device,
                updated: &pts,
                store: &self.store,
                registry: &self.reg,
            };
            let mut out = Vec::new();
            det.observe(&frame, &mut out);
            self.findings
                .extend(out.into_iter().map(|f| (self.step, f)));
            self.step += 1;
        }

        /// One reading of `dev-1` arriving at `ts` (before any frame): what the
        /// detector raises on arrival.
        pub fn arrive(
            &mut self,
            det: &mut dyn Detector,
            kind: &str,
            metric: &str,
            ts: Ts,
            value: f64,
        ) -> Vec<Finding> {
            let point = self.reg.intern("site", "dev-1", kind, metric).unwrap();
            let r = Arrival {
                ts,
                point,
                value,
                quality: Quality::Good,
                registry: &self.reg,
            };
            let mut out = Vec::new();
            det.arrival(&r, &mut out);
            out
        }

        /// Feeds a whole series.
        pub fn run(&mut self, det: &mut dyn Detector, kind: &str, metric: &str, series: &[f64]) {
            for &v in series {
                self.feed(det, kind, metric, v);
            }
        }

        /// Step of the first finding at or after `from`.
        pub fn first_after(&self, from: usize) -> Option<usize> {
            self.findings.iter().map(|(s, _)| *s).find(|&s| s >= from)
        }

        /// Number of findings before `until`.
        pub fn count_before(&self, until: usize) -> usize {
            self.findings.iter().filter(|(s, _)| *s < until).count()
        }
    }

    /// A load like a facility's, one value a second: a shared red-noise wander (AR(1)
    /// steps of 1) plus each meter's own noise (σ 1.5) around 450.
    pub fn wandering_load(n: usize, seed: u64) -> Vec<f64> {
        let steps = noisy(n, 0.0, 1.0, seed);
        let own = noisy(n, 0.0, 1.5, seed + 1);
        let mut ar = 0.0;
        steps
            .iter()
            .zip(&own)
            .map(|(s, o)| {
                ar = 0.995 * ar + s;
                450.0 + ar + o
            })
            .collect()
    }

    /// Seeded Gaussian noise around a level.
    pub fn noisy(n: usize, level: f64, sd: f64, seed: u64) -> Vec<f64> {
        use rand::{rngs::StdRng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = StdRng::seed_from_u64(seed);
        let d = Normal::new(0.0, sd).unwrap();
        (0..n).map(|_| level + d.sample(&mut rng)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::sig;

    #[test]
    fn reasons_keep_four_significant_digits_and_huge_values_short() {
        assert_eq!(sig(21.0749), "21.07");
        assert_eq!(sig(1234.56), "1235");
        assert_eq!(sig(0.0), "0");
        assert_eq!(sig(1.7e308), "1.700e308");
        assert_eq!(sig(-2.5e20), "-2.500e20");
    }
}
