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

pub mod cusum;
pub mod ewma;
pub mod flatline;
pub mod grid;
pub mod iforest;
pub mod limits;
pub mod oscillation;
pub mod physics;
pub mod protocol;
pub mod replay;
pub mod residual;
pub mod staleness;
pub mod ups;

use crate::config::DetectorsConfig;
use crate::feature::{DeviceId, FeatureStore, Frame, PointId, Registry};
use crate::model::{Command, DeviceKind, Finding, Severity, Technique, Ts};

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
    /// Looks at one Modbus exchange seen on the wire (packet captures).
    fn traffic(&mut self, _t: &crate::source::Traffic, _reg: &Registry, _out: &mut Vec<Finding>) {}
    /// Looks at a control action seen on the wire; `device` is its target's id.
    fn command(
        &mut self,
        _cmd: &Command,
        _device: DeviceId,
        _reg: &Registry,
        _out: &mut Vec<Finding>,
    ) {
    }
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
    cusum::CusumParams,
    flatline::FlatlineParams,
    replay::ReplayParams,
    staleness::StalenessParams,
    ups::UpsParams,
    grid::BreakerParams,
    physics::PhysicsParams,
    oscillation::OscillationParams,
    protocol::ProtocolParams,
    iforest::IForestParams,
    residual::ResidualParams
);

/// The per-kind table of one detector's parameters, if any kind enables it.
fn table<P: Clone + Enabled>(
    cfg: &PerKind<DetectorsConfig>,
    pick: fn(&DetectorsConfig) -> &P,
) -> Option<PerKind<P>> {
    let t = PerKind::from_fn(|k| pick(cfg.get(k)).clone());
    DeviceKind::ALL
        .iter()
        .any(|&k| t.get(k).enabled())
        .then_some(t)
}

/// Builds the enabled detectors from a validated configuration.
pub fn build(config: &crate::config::Config) -> Vec<Box<dyn Detector>> {
    let cfg = &config.detectors;
    let mut out: Vec<Box<dyn Detector>> = Vec::new();
    if let Some(t) = table(cfg, |c| &c.limits) {
        out.push(Box::new(limits::Limits::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.ewma_z) {
        out.push(Box::new(ewma::EwmaZ::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.cusum) {
        out.push(Box::new(cusum::Cusum::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.flatline) {
        out.push(Box::new(flatline::Flatline::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.replay) {
        out.push(Box::new(replay::Replay::new(t)));
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
        out.push(Box::new(physics::Physics::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.oscillation) {
        out.push(Box::new(oscillation::Oscillation::new(t)));
    }
    if let Some(t) = table(cfg, |c| &c.residual) {
        out.push(Box::new(residual::Residual::new(
            t,
            config.residual_models.clone(),
        )));
    }
    if let Some(t) = table(cfg, |c| &c.iforest) {
        if DeviceKind::ALL
            .iter()
            .any(|&k| config.models.get(k).is_some())
        {
            out.push(Box::new(iforest::IForest::new(
                t,
                config.models.clone(),
                config.features,
            )));
        }
    }
    // Commands carry no device kind worth trusting: the global parameters apply.
    let protocol = &cfg.get(DeviceKind::Other).protocol;
    if protocol.enabled {
        out.push(Box::new(protocol::Protocol::new(
            protocol.clone(),
            config.wire.clone(),
        )));
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
    reason: String,
    evidence: serde_json::Value,
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
        reason,
        evidence,
    }
}

/// Rounds for human-readable reasons: 4 significant digits.
pub(crate) fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Drives one detector over synthetic series without the rest of the pipeline.
    use super::*;
    use crate::feature::{FeatureParams, FeatureStore, Registry};
    use crate::model::Quality;

    /// A one-device harness: feed values at 1 Hz, collect findings.
    pub struct Harness {
        pub reg: Registry,
        pub store: FeatureStore,
        pub findings: Vec<(usize, Finding)>,
        pub step: usize,
    }

    impl Harness {
        pub fn new() -> Self {
            Self {
                reg: Registry::new(1000),
                store: FeatureStore::new(FeatureParams::default()),
                findings: Vec::new(),
                step: 0,
            }
        }

        /// Feeds one sample per series at time `step` seconds.
        pub fn feed(&mut self, det: &mut dyn Detector, kind: &str, metric: &str, v: f64) {
            let p = self.reg.intern("site", "dev-1", kind, metric).unwrap();
            let ts = self.step as Ts * 1000;
            self.store.update(&self.reg, p, ts, v, Quality::Good);
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

    /// Seeded Gaussian noise around a level.
    pub fn noisy(n: usize, level: f64, sd: f64, seed: u64) -> Vec<f64> {
        use rand::{rngs::StdRng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = StdRng::seed_from_u64(seed);
        let d = Normal::new(0.0, sd).unwrap();
        (0..n).map(|_| level + d.sample(&mut rng)).collect()
    }
}
