//! Per-point state and per-device frames.
//!
//! Points are interned in the [`Registry`]. The [`FeatureStore`] keeps, per
//! point, the last value, delta, rate, the usual sampling interval, a robust running mean
//! and variance (the z-score of each new value is taken *before* it updates them), and a
//! short rolling window. Nothing here allocates once a point exists.

use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::vocabulary::{MetricClass, MetricSpec};
use crate::model::{DeviceKind, Quality, Ts};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;

/// Parameters of the shared per-point features (`[features]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureParams {
    /// Half-life of the robust running mean/variance, in samples.
    pub halflife_samples: f64,
    /// Residuals beyond this many standard deviations are clipped before they update the
    /// running statistics (Huber), so an attack does not become the baseline at once.
    pub clip_sigma: f64,
    /// While an open alert of a detector that judges values names it (not `event_time`,
    /// `protocol` or `staleness`), a settled point's running statistics do not learn
    /// (an attack under way must not become the baseline and close its own alert), for
    /// at most this many samples in a row and at most `freeze_for`: a lasting change
    /// nobody reverts is learned, Huber-clipped, after that. 0 never freezes.
    pub freeze_samples: u32,
    /// The longest a point's running statistics stay frozen, in event time (`"1d"`): a
    /// point read every 5 minutes is not frozen for the 12 days its samples would span.
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub freeze_for: i64,
}

impl Default for FeatureParams {
    fn default() -> Self {
        Self {
            halflife_samples: 600.0,
            clip_sigma: 3.0,
            freeze_samples: 3_600,
            freeze_for: 86_400_000,
        }
    }
}

impl FeatureParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.halflife_samples >= 1.0,
            "halflife_samples",
            "must be at least 1",
        )?;
        rule(
            self.clip_sigma > 0.0,
            "clip_sigma",
            "must be greater than 0",
        )?;
        rule(self.freeze_for >= 0, "freeze_for", "must not be negative")
    }
}

/// Length of the rolling window kept per point.
pub const WINDOW: usize = 32;
/// A point that showed more distinct values than this, or a fraction, is continuous.
const DISCRETE_MAX_DISTINCT: usize = 8;

/// Everything the detectors may read about one point.
#[derive(Debug, Clone)]
pub struct PointState {
    /// Device of the point.
    pub device: DeviceId,
    /// Behaviour class: from the vocabulary, else learned (see [`PointState::is_analog`]).
    pub class: Option<MetricClass>,
    /// Physical limits and max rate, from the vocabulary.
    pub spec: Option<&'static MetricSpec>,
    /// Number of good samples seen.
    pub n: u64,
    /// Event time of the latest sample (good or not).
    pub ts: Ts,
    /// Event time of the latest good sample.
    pub good_ts: Ts,
    /// Latest good value.
    pub value: f64,
    /// Quality of the latest sample.
    pub quality: Quality,
    /// Event time of the good sample before the latest.
    pub prev_ts: Ts,
    /// `value - previous value` (0 for the first sample).
    pub delta: f64,
    /// `delta` per second (0 when the two samples share a timestamp).
    pub rate: f64,
    /// Running estimate of the sampling interval in ms (0 until known).
    pub interval_ms: f64,
    /// Robust running mean (before this sample).
    pub mean: f64,
    /// Robust running variance (before this sample).
    pub var: f64,
    /// Smallest non-zero |delta| seen: the sensor's resolution, a floor for σ.
    pub resolution: f64,
    /// z-score of this sample against the running statistics before it.
    pub z: f64,
    /// Samples in a row not learned from because an open alert named the point.
    pub frozen: u32,
    /// Samples in a row an open alert named the point, and the first one's time (the
    /// freeze's bounds count them).
    suspect_run: u32,
    suspect_since: Ts,
    window: [f64; WINDOW],
    distinct: Vec<f64>,
    continuous: bool,
}

impl PointState {
    fn new(device: DeviceId, spec: Option<&'static MetricSpec>) -> Self {
        Self {
            device,
            class: spec.map(|s| s.class),
            spec,
            n: 0,
            ts: Ts::MIN,
            good_ts: Ts::MIN,
            value: f64::NAN,
            quality: Quality::Good,
            prev_ts: Ts::MIN,
            delta: 0.0,
            rate: 0.0,
            interval_ms: 0.0,
            mean: 0.0,
            var: 0.0,
            resolution: f64::INFINITY,
            z: 0.0,
            frozen: 0,
            suspect_run: 0,
            suspect_since: Ts::MIN,
            window: [0.0; WINDOW],
            distinct: Vec::with_capacity(DISCRETE_MAX_DISTINCT + 1),
            continuous: false,
        }
    }

    /// Analog points get the statistical detectors. A vocabulary metric's class decides;
    /// an unknown metric is analog once it showed a fraction or many distinct values.
    pub fn is_analog(&self) -> bool {
        match self.class {
            Some(c) => c == MetricClass::Analog,
            None => self.continuous,
        }
    }

    /// Standard deviation of the running statistics, floored by the sensor resolution.
    pub fn sigma(&self) -> f64 {
        let res = if self.resolution.is_finite() {
            self.resolution
        } else {
            0.0
        };
        self.var
            .sqrt()
            .max(res)
            .max(1e-9 * self.mean.abs())
            .max(1e-12)
    }

    /// The last `min(n, WINDOW)` values, oldest first (evidence for analysts, and the
    /// rolling window later feature vectors are built from).
    pub fn window(&self) -> impl Iterator<Item = f64> + '_ {
        let len = (self.n as usize).min(WINDOW);
        let start = self.n as usize + WINDOW - len;
        (start..start + len).map(move |i| self.window[i % WINDOW])
    }

    fn update(&mut self, ts: Ts, value: f64, quality: Quality, learn: bool, p: &FeatureParams) {
        self.quality = quality;
        if quality != Quality::Good {
            self.ts = ts;
            return;
        }
        if self.n > 0 {
            self.delta = value - self.value;
            let dt = ts - self.ts;
            self.rate = if dt > 0 {
                self.delta * 1000.0 / dt as f64
            } else {
                0.0
            };
            if dt > 0 {
                // Intervals: the first one is taken as is, later ones with a slow EWMA.
                self.interval_ms = if self.interval_ms == 0.0 {
                    dt as f64
                } else {
                    self.interval_ms + 0.05 * (dt as f64 - self.interval_ms)
                };
            }
            if self.delta != 0.0 {
                self.resolution = self.resolution.min(self.delta.abs());
            }
            self.prev_ts = self.ts;
        }
        if !self.continuous {
            if value.fract() != 0.0 {
                self.continuous = true;
            } else if !self.distinct.contains(&value) {
                self.distinct.push(value);
                if self.distinct.len() > DISCRETE_MAX_DISTINCT {
                    self.continuous = true;
                    self.distinct = Vec::new();
                }
            }
        }
        // A baseline still settling (its first half-life of samples) is not frozen.
        let settled = self.n as f64 >= p.halflife_samples;
        if learn {
            self.suspect_run = 0;
        } else {
            if self.suspect_run == 0 {
                self.suspect_since = ts;
            }
            self.suspect_run = self.suspect_run.saturating_add(1);
        }
        // Past either bound, every sample is learned until no alert names the point.
        let thawed = self.suspect_run > p.freeze_samples
            || ts.saturating_sub(self.suspect_since) >= p.freeze_for;
        if learn || !settled || thawed {
            self.frozen = 0;
            self.update_stats(value, p);
        } else {
            self.frozen += 1;
            self.z = (value - self.mean) / self.sigma();
        }
        self.window[self.n as usize % WINDOW] = value;
        self.value = value;
        self.ts = ts;
        self.good_ts = ts;
        self.n += 1;
    }

    fn update_stats(&mut self, value: f64, p: &FeatureParams) {
        if self.n == 0 {
            self.mean = value;
            self.var = 0.0;
            self.z = 0.0;
            return;
        }
        let sigma = self.sigma();
        self.z = robust_update(&mut self.mean, &mut self.var, self.n, sigma, value, p);
    }
}

/// One step of the robust running mean and variance shared by points and derived
/// quantities: returns the z-score of `value` against (`mean`, `sigma`) *before* the
/// update, then folds it in. `n` is the number of values folded so far (≥ 1).
///
/// Warm-up uses a growing window (1/n) so early samples are not underweighted; after
/// that the weight settles at the half-life's. Past the first few samples, residuals
/// are clipped at `clip_sigma` σ (Huber), so an attack does not become the baseline.
pub(crate) fn robust_update(
    mean: &mut f64,
    var: &mut f64,
    n: u64,
    sigma: f64,
    value: f64,
    p: &FeatureParams,
) -> f64 {
    let resid = value - *mean;
    let alpha_hl = 1.0 - 0.5f64.powf(1.0 / p.halflife_samples);
    let alpha = (1.0 / (n as f64 + 1.0)).max(alpha_hl);
    let warm = (n as f64) < p.halflife_samples.min(30.0);
    let clipped = if warm {
        resid
    } else {
        resid.clamp(-p.clip_sigma * sigma, p.clip_sigma * sigma)
    };
    *mean += alpha * clipped;
    *var = (1.0 - alpha) * (*var + alpha * clipped * clipped);
    resid / sigma
}

/// The decimal step of a number: 0.01 for 21.07, 1 for 1200, 0.001 for 3.141 — the
/// coarsest power of ten it is a multiple of, to 12 significant digits (so 7.03 + 0.03,
/// held as 7.0600000000000005, is 0.01); 1e-16 for a number that is not one at 15
/// decimals, `f64::INFINITY` for a non-finite one. An export with two decimals has
/// readings no finer than 0.01 whatever their noise; the finest step over a few of them
/// is the export's resolution.
pub fn decimal_step(x: f64) -> f64 {
    if !x.is_finite() {
        return f64::INFINITY;
    }
    let tolerance = 1e-12 * x.abs().max(1.0);
    let mut scale = 1.0;
    for d in 0..=15 {
        if ((x * scale).round() / scale - x).abs() <= tolerance {
            return 10f64.powi(-d);
        }
        scale *= 10.0;
    }
    1e-16
}

/// Per-point state for every registered point.
#[derive(Debug, Default)]
pub struct FeatureStore {
    points: Vec<PointState>,
    params: FeatureParams,
}

impl FeatureStore {
    /// An empty store.
    pub fn new(params: FeatureParams) -> Self {
        Self {
            points: Vec::new(),
            params,
        }
    }

    /// Folds one sample into its point's state.
    pub fn update(&mut self, registry: &Registry, point: PointId, ts: Ts, value: f64, q: Quality) {
        self.update_learning(registry, point, ts, value, q, true);
    }

    /// [`FeatureStore::update`], learning from the sample only when `learn` (no open
    /// alert names the point; see [`FeatureParams::freeze_samples`]).
    pub fn update_learning(
        &mut self,
        registry: &Registry,
        point: PointId,
        ts: Ts,
        value: f64,
        q: Quality,
        learn: bool,
    ) {
        let i = point as usize;
        while self.points.len() <= i {
            let id = self.points.len() as PointId;
            let info = registry.point(id);
            self.points.push(PointState::new(info.device, info.spec));
        }
        self.points[i].update(ts, value, q, learn, &self.params);
    }

    /// State of a point (the point must have had a sample).
    pub fn point(&self, id: PointId) -> &PointState {
        &self.points[id as usize]
    }

    /// State of a point, if it has had a sample yet (a point is registered when its
    /// first reading is read, which can be before that reading leaves the reorder
    /// buffer).
    pub fn get(&self, id: PointId) -> Option<&PointState> {
        self.points.get(id as usize)
    }

    /// All point states, indexed by point id.
    pub fn points(&self) -> &[PointState] {
        &self.points
    }
}

/// What detectors see: the samples of one device that share one event time.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Event time of the samples.
    pub ts: Ts,
    /// The device.
    pub device: DeviceId,
    /// Points of the device updated at `ts`, in arrival order.
    pub updated: &'a [PointId],
    /// Every point's state (indexed by point id).
    pub store: &'a FeatureStore,
    /// Names and kinds.
    pub registry: &'a Registry,
}

impl<'a> Frame<'a> {
    /// Kind of the frame's device.
    pub fn kind(&self) -> DeviceKind {
        self.registry.device(self.device).kind
    }

    /// The frame's points that carry a good value at this instant.
    pub fn good(&self) -> impl Iterator<Item = (PointId, &'a PointState)> + '_ {
        let (store, ts) = (self.store, self.ts);
        self.updated.iter().filter_map(move |&p| {
            let st = store.point(p);
            (st.quality == Quality::Good && st.ts == ts).then_some((p, st))
        })
    }

    /// A metric of the frame's device with a good value at this instant.
    pub fn metric(&self, name: &str) -> Option<&'a PointState> {
        let (store, reg, ts) = (self.store, self.registry, self.ts);
        reg.device(self.device)
            .point_named(reg, name)
            .and_then(|p| store.get(p))
            .filter(|st| st.quality == Quality::Good && st.ts == ts)
    }

    /// The good points that are analog (what the statistical detectors judge).
    pub fn good_analog(&self) -> impl Iterator<Item = (PointId, &'a PointState)> + '_ {
        self.good().filter(|(_, st)| st.is_analog())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store_with(values: &[f64]) -> (Registry, FeatureStore) {
        let mut reg = Registry::new(10);
        let p = reg.intern("s", "d", "other", "x").unwrap();
        let mut st = FeatureStore::new(FeatureParams::default());
        for (i, &v) in values.iter().enumerate() {
            st.update(&reg, p, i as Ts * 1000, v, Quality::Good);
        }
        (reg, st)
    }

    #[test]
    fn delta_rate_interval_and_window() {
        let (_, st) = store_with(&[1.0, 2.0, 4.0]);
        let p = st.point(0);
        assert_eq!((p.delta, p.rate, p.interval_ms), (2.0, 2.0, 1000.0));
        assert_eq!(p.window().collect::<Vec<_>>(), vec![1.0, 2.0, 4.0]);
        assert!(
            !p.is_analog(),
            "integers with few values are not analog yet"
        );
    }

    #[test]
    fn discrete_unknown_points_are_not_analog() {
        let (_, st) = store_with(&[0.0, 1.0, 0.0, 1.0, 1.0]);
        assert!(!st.point(0).is_analog());
        let (_, st) = store_with(&[0.0, 1.5]);
        assert!(st.point(0).is_analog());
    }

    #[test]
    fn robust_stats_learn_and_flag_a_step() {
        let noise: Vec<f64> = (0..2000)
            .map(|i| 10.0 + ((i * 7919) % 13) as f64 * 0.01)
            .collect();
        let (reg, mut st) = store_with(&noise);
        let p = st.point(0);
        assert!((p.mean - 10.06).abs() < 0.03, "mean {}", p.mean);
        st.update(&reg, 0, 3_000_000, 12.0, Quality::Good);
        assert!(st.point(0).z > 20.0, "z {}", st.point(0).z);
    }

    /// The samples learned while an open alert names a point the whole time: a settled
    /// point read every `every` ms, then a step held for `held` samples.
    fn learned_under_an_alert(every: Ts, held: u32) -> Vec<bool> {
        let mut reg = Registry::new(10);
        let p = reg.intern("s", "d", "other", "x").unwrap();
        let mut st = FeatureStore::new(FeatureParams::default());
        for i in 0..1_000 {
            let v = 10.0 + (i % 7) as f64 * 0.1;
            st.update(&reg, p, i * every, v, Quality::Good);
        }
        (1_000..1_000 + Ts::from(held))
            .map(|i| {
                st.update_learning(&reg, p, i * every, 20.0, Quality::Good, false);
                st.point(p).frozen == 0
            })
            .collect()
    }

    #[test]
    fn a_freeze_ends_after_its_samples_or_a_day_and_then_every_sample_is_learned() {
        // At 1 Hz the 3,600-sample bound comes first: an hour frozen, then the lasting
        // change is learned sample after sample (not one sample in 3,601 as once).
        let learned = learned_under_an_alert(1_000, 5_000);
        assert!(learned[..3_600].iter().all(|&l| !l));
        assert!(learned[3_600..].iter().all(|&l| l));
        // Every 5 minutes a day comes first: 288 samples frozen, not 12 days' worth.
        let learned = learned_under_an_alert(300_000, 1_000);
        assert!(learned[..288].iter().all(|&l| !l));
        assert!(learned[288..].iter().all(|&l| l));
    }

    #[test]
    fn a_freeze_bound_in_time_is_read_from_the_config() {
        let c = crate::Config::from_toml_str("[features]\nfreeze_for = \"2h\"\n", "t").unwrap();
        assert_eq!(c.features.freeze_for, 7_200_000);
        assert_eq!(c.features.freeze_samples, 3_600);
        assert!(crate::Config::from_toml_str("[features]\nfreeze_for = \"soon\"\n", "t").is_err());
    }

    #[test]
    fn a_point_registered_but_not_yet_sampled_is_absent_not_a_panic() {
        // Live sources intern a reading when it arrives; it may still sit in the
        // reorder buffer while another frame of its device is judged.
        let (mut reg, st) = store_with(&[1.0]);
        reg.intern("s", "d", "other", "y").unwrap();
        let frame = Frame {
            ts: 0,
            device: 0,
            updated: &[0],
            store: &st,
            registry: &reg,
        };
        assert!(frame.metric("x").is_some());
        assert!(frame.metric("y").is_none());
    }

    proptest! {
        /// Whatever finite values arrive, the running statistics stay finite.
        #[test]
        fn stats_stay_finite(values in proptest::collection::vec(-1e12f64..1e12, 1..300)) {
            let (_, st) = store_with(&values);
            let p = st.point(0);
            prop_assert!(p.mean.is_finite() && p.var.is_finite() && p.var >= 0.0);
            prop_assert!(p.z.is_finite());
            prop_assert!(p.sigma() > 0.0);
        }
    }
}
