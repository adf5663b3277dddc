//! Per-kind feature vectors for the multivariate detectors (isolation forest).
//!
//! A vector describes one device at one frame. Every entry is measured against the
//! device's *own* learned baseline, never in engineering units, so a model trained on
//! one facility reads another with other set points, ratings and noise levels:
//!
//! | feature | meaning |
//! |---|---|
//! | `<metric>.z` | (value − robust running mean) / running σ |
//! | `<metric>.step` | last change / running σ |
//! | `<metric>.vol` | standard deviation of the last 32 values / running σ (0: frozen; ≫ 1: noisy) |
//! | `<state>` | a 0/1 state as is (on battery, bypass, running, breaker closed) |
//! | `<derived>.z` | a physical relation's value against its own running baseline |
//!
//! The derived relations per kind (each needs all its inputs; see [`KindFeatures`]):
//! UPS efficiency (output / input power) and load per kW (load % / output power);
//! chiller COP (flow × ΔT × c_p / power) and approach (supply − setpoint); CRAH air
//! ΔT (return − supply); grid voltage imbalance ((max − min) / mean of the three
//! phases) and power-factor consistency (P / √(P² + Q²) − |PF|).
//!
//! A metric the device does not report, or whose latest sample is not good, is a
//! missing entry (NaN); the detector puts the training mean in its place. A device is
//! not described until every reported point and relation has `warmup` samples.

use crate::feature::{robust_update, FeatureParams, Frame, PointState};
use crate::model::points::{DeviceId, PointId};
use crate::model::{DeviceKind, Quality};
use std::sync::OnceLock;

const CP_WATER: f64 = 4.186;

/// How unusual a 0/1 state's value is here: −ln of the share of time the device spent
/// in it (its running mean), floored at 10⁻⁶. A UPS that never left bypass 0 scores
/// about 14 nats the moment it reports 1; a state that flips often scores little.
fn surprise(st: &PointState) -> f64 {
    let share = if st.value >= 0.5 {
        st.mean
    } else {
        1.0 - st.mean
    };
    -share.clamp(1e-6, 1.0).ln()
}

/// Largest |z| taken into account (a state that never changed has σ ≈ 0).
const Z_CAP: f64 = 1e6;

/// sign(z)·ln(1 + |z|): keeps the order, tames the tails, so the forest's uniform
/// splits fall where the data is instead of between one outlier and the rest.
fn slog(z: f64) -> f64 {
    let z = z.clamp(-Z_CAP, Z_CAP);
    z.signum() * z.abs().ln_1p()
}

/// A quantity computed from several metrics of one device.
#[derive(Debug)]
pub struct Derived {
    /// Name (the feature is `<name>.z`).
    pub name: &'static str,
    /// Metrics it is computed from, in the order `f` takes them.
    pub inputs: &'static [&'static str],
    /// The quantity, or `None` where it is undefined (a stopped machine, no flow).
    pub f: fn(&[f64]) -> Option<f64>,
}

/// The feature definition of one device kind.
#[derive(Debug)]
pub struct KindFeatures {
    /// Kind.
    pub kind: DeviceKind,
    /// Analog metrics: one feature each (`.z`).
    pub analog: &'static [&'static str],
    /// 0/1 states, one feature each.
    pub states: &'static [&'static str],
    /// Derived relations, one feature each (`.z`).
    pub derived: &'static [Derived],
    /// Feature names in column order.
    pub names: Vec<String>,
    /// Every metric read (analog, states, derived inputs), without repeats.
    metrics: Vec<&'static str>,
    /// Positions in `metrics` of the analog metrics, the states and each relation's
    /// inputs (resolved once, so a frame compares no strings).
    analog_at: Vec<usize>,
    states_at: Vec<usize>,
    inputs_at: Vec<Vec<usize>>,
}

impl KindFeatures {
    fn new(
        kind: DeviceKind,
        analog: &'static [&'static str],
        states: &'static [&'static str],
        derived: &'static [Derived],
    ) -> Self {
        let mut names = Vec::new();
        for m in analog {
            names.push(format!("{m}.z"));
        }
        names.extend(states.iter().map(|s| format!("{s}.surprise")));
        names.extend(derived.iter().map(|d| format!("{}.z", d.name)));
        names.extend(SUMMARY.iter().map(|s| (*s).to_owned()));
        let mut metrics: Vec<&'static str> = Vec::new();
        for m in analog
            .iter()
            .chain(states)
            .chain(derived.iter().flat_map(|d| d.inputs))
        {
            if !metrics.contains(m) {
                metrics.push(m);
            }
        }
        let at = |m: &&str| metrics.iter().position(|x| x == m).unwrap_or(0);
        let analog_at = analog.iter().map(at).collect();
        let states_at = states.iter().map(at).collect();
        let inputs_at = derived
            .iter()
            .map(|d| d.inputs.iter().map(at).collect())
            .collect();
        Self {
            kind,
            analog,
            states,
            derived,
            names,
            metrics,
            analog_at,
            states_at,
            inputs_at,
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no features (never, for a defined kind).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Feature names as `&str`.
    pub fn name_refs(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// A feature's value as a person reads it: z-scores and summaries back from the
    /// sign(z)·ln(1 + |z|) the forest sees; surprises as they are.
    pub fn natural(&self, feature: usize, v: f64) -> f64 {
        let states = self.analog.len()..self.analog.len() + self.states.len();
        if states.contains(&feature) {
            v
        } else {
            v.signum() * v.abs().exp_m1()
        }
    }

    /// The metrics a feature is about (a derived feature is about its inputs).
    pub fn metrics_of(&self, feature: usize) -> Vec<&'static str> {
        let a = self.analog.len();
        let s = a + self.states.len();
        if feature < a {
            vec![self.analog[feature]]
        } else if feature < s {
            vec![self.states[feature - a]]
        } else if let Some(d) = self.derived.get(feature - s) {
            d.inputs.to_vec()
        } else {
            Vec::new()
        }
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den.abs() > 1e-9).then(|| num / den)
}

static UPS_DERIVED: [Derived; 2] = [
    Derived {
        name: "efficiency",
        inputs: &["output_power_kw", "input_power_kw"],
        f: |v| ratio(v[0], v[1]),
    },
    Derived {
        name: "load_per_kw",
        inputs: &["load_pct", "output_power_kw"],
        f: |v| ratio(v[0], v[1]),
    },
];

static CHILLER_DERIVED: [Derived; 2] = [
    Derived {
        name: "cop",
        inputs: &["flow_lps", "return_temp_c", "supply_temp_c", "power_kw"],
        f: |v| ratio(v[0] * (v[1] - v[2]) * CP_WATER, v[3]),
    },
    Derived {
        name: "approach",
        inputs: &["supply_temp_c", "setpoint_c"],
        f: |v| Some(v[0] - v[1]),
    },
];

static CRAH_DERIVED: [Derived; 1] = [Derived {
    name: "air_delta_t",
    inputs: &["return_air_temp_c", "supply_air_temp_c"],
    f: |v| Some(v[0] - v[1]),
}];

static GRID_DERIVED: [Derived; 2] = [
    Derived {
        name: "voltage_imbalance",
        inputs: &["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"],
        f: |v| {
            let (lo, hi) = (v[0].min(v[1]).min(v[2]), v[0].max(v[1]).max(v[2]));
            ratio(hi - lo, (v[0] + v[1] + v[2]) / 3.0)
        },
    },
    Derived {
        name: "pf_consistency",
        inputs: &["active_power_kw", "reactive_power_kvar", "power_factor"],
        f: |v| ratio(v[0].abs(), v[0].hypot(v[1])).map(|pf| pf - v[2].abs()),
    },
];

/// Features describing the whole device, after the per-metric ones.
pub const SUMMARY: [&str; 2] = ["max_abs_z", "rms_z"];

/// The feature definition of a kind, `None` for kinds without one (`other`).
pub fn for_kind(kind: DeviceKind) -> Option<&'static KindFeatures> {
    static ALL: OnceLock<Vec<KindFeatures>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        use DeviceKind::{Chiller, Crah, Env, GridMeter, Ups};
        vec![
            KindFeatures::new(
                Ups,
                &[
                    "input_voltage_v",
                    "input_frequency_hz",
                    "input_power_kw",
                    "output_voltage_v",
                    "output_power_kw",
                    "load_pct",
                    "battery_voltage_v",
                    "battery_charge_pct",
                    "battery_temp_c",
                ],
                &["on_battery", "bypass_active"],
                &UPS_DERIVED,
            ),
            KindFeatures::new(
                Chiller,
                &["supply_temp_c", "return_temp_c", "flow_lps", "power_kw"],
                &["running"],
                &CHILLER_DERIVED,
            ),
            KindFeatures::new(
                Crah,
                &["supply_air_temp_c", "return_air_temp_c", "fan_speed_pct"],
                &[],
                &CRAH_DERIVED,
            ),
            KindFeatures::new(
                GridMeter,
                &[
                    "frequency_hz",
                    "voltage_l1_v",
                    "voltage_l2_v",
                    "voltage_l3_v",
                    "active_power_kw",
                    "reactive_power_kvar",
                    "power_factor",
                ],
                &["breaker_closed"],
                &GRID_DERIVED,
            ),
            // A PDU reports one metric: not a multivariate question (ewma_z and cusum
            // watch it), and a forest over it only adds false alarms.
            KindFeatures::new(Env, &["room_temp_c", "humidity_pct"], &[], &[]),
        ]
    });
    all.iter().find(|k| k.kind == kind)
}

/// Robust running statistics of one derived quantity.
#[derive(Debug, Clone, Default)]
struct DerivedStats {
    n: u64,
    mean: f64,
    var: f64,
    z: f64,
}

impl DerivedStats {
    fn sigma(&self) -> f64 {
        self.var.sqrt().max(1e-9 * self.mean.abs()).max(1e-12)
    }

    fn update(&mut self, value: f64, p: &FeatureParams) {
        if self.n == 0 {
            (self.mean, self.var, self.z) = (value, 0.0, 0.0);
        } else {
            let sigma = self.sigma();
            self.z = robust_update(&mut self.mean, &mut self.var, self.n, sigma, value, p);
        }
        self.n += 1;
    }
}

/// What the extractor keeps per device.
#[derive(Debug, Default)]
struct DeviceState {
    /// Point of each of the kind's metrics (`None`: not reported so far).
    points: Vec<Option<PointId>>,
    /// How many points the device had when `points` was resolved.
    resolved_at: usize,
    derived: Vec<DerivedStats>,
}

/// Builds feature vectors frame by frame; keeps the derived relations' baselines.
#[derive(Debug)]
pub struct Extractor {
    params: FeatureParams,
    warmup: u64,
    devices: Vec<DeviceState>,
    inputs: Vec<f64>,
}

/// A vector built for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// Features that were missing (NaN in the row).
    pub missing: usize,
    /// The metric (or relation's first input) furthest from its baseline: what the
    /// summary features are about.
    pub loudest: Option<&'static str>,
}

impl Extractor {
    /// An extractor whose derived baselines follow `params` and that describes a device
    /// only once its points and relations have `warmup` samples.
    pub fn new(params: FeatureParams, warmup: u64) -> Self {
        Self {
            params,
            warmup,
            devices: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// Fills `row` with the kind's features for the frame's device. `None` when the
    /// kind has no features, the device is still warming up, or more than half of the
    /// features are missing. Derived baselines learn from every frame.
    pub fn describe(&mut self, frame: &Frame<'_>, row: &mut Vec<f64>) -> Option<Described> {
        let kf = for_kind(frame.kind())?;
        let dev = device(&mut self.devices, frame.device, kf, frame);
        let point = |i: usize| -> Option<&PointState> {
            dev.points[i]
                .and_then(|p| frame.store.get(p))
                .filter(|st| st.n > 0 && st.quality == Quality::Good)
        };
        let mut warm = true;
        let (mut loudest, mut max_z, mut sum_sq, mut n_z) = (None, 0.0f64, 0.0, 0usize);
        let mut seen = |z: f64, metric: &'static str| {
            let z = z.abs().min(Z_CAP);
            if loudest.is_none() || z > max_z {
                (loudest, max_z) = (Some(metric), z);
            }
            sum_sq += z * z;
            n_z += 1;
        };
        row.clear();
        for (&m, &i) in kf.analog.iter().zip(&kf.analog_at) {
            match point(i) {
                Some(st) => {
                    warm &= st.n >= self.warmup;
                    let z = (st.value - st.mean) / st.sigma();
                    seen(z, m);
                    row.push(slog(z));
                }
                None => row.push(f64::NAN),
            }
        }
        for (&s, &i) in kf.states.iter().zip(&kf.states_at) {
            match point(i) {
                Some(st) => {
                    let surprise = surprise(st);
                    seen(surprise, s);
                    row.push(surprise);
                }
                None => row.push(f64::NAN),
            }
        }
        for ((d, at), stats) in kf.derived.iter().zip(&kf.inputs_at).zip(&mut dev.derived) {
            self.inputs.clear();
            self.inputs
                .extend(at.iter().filter_map(|&i| point(i).map(|st| st.value)));
            let value = (self.inputs.len() == d.inputs.len())
                .then(|| (d.f)(&self.inputs))
                .flatten()
                .filter(|v| v.is_finite());
            match value {
                Some(v) => {
                    stats.update(v, &self.params);
                    warm &= stats.n >= self.warmup;
                    seen(stats.z, d.inputs[0]);
                    row.push(slog(stats.z));
                }
                None => row.push(f64::NAN),
            }
        }
        if n_z == 0 {
            return None;
        }
        row.push(max_z.ln_1p());
        row.push((sum_sq / n_z as f64).sqrt().ln_1p());
        let missing = row.iter().filter(|v| v.is_nan()).count();
        (warm && missing * 2 <= row.len()).then_some(Described { missing, loudest })
    }
}

/// The extractor's state of a device, its points (re)resolved when the device gained some.
fn device<'a>(
    devices: &'a mut Vec<DeviceState>,
    id: DeviceId,
    kf: &KindFeatures,
    frame: &Frame<'_>,
) -> &'a mut DeviceState {
    let i = id as usize;
    if devices.len() <= i {
        devices.resize_with(i + 1, DeviceState::default);
    }
    {
        let dev = &mut devices[i];
        let info = frame.registry.device(id);
        if dev.resolved_at != info.points.len() || dev.points.is_empty() {
            dev.points = kf
                .metrics
                .iter()
                .map(|m| info.point_named(frame.registry, m))
                .collect();
            dev.resolved_at = info.points.len();
            dev.derived
                .resize_with(kf.derived.len(), DerivedStats::default);
        }
    }
    &mut devices[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};
    use crate::feature::Frame;

    fn frame_row(h: &Harness, ex: &mut Extractor, device: DeviceId) -> Option<(Vec<f64>, usize)> {
        let pts = h.reg.device(device).points.clone();
        let frame = Frame {
            ts: (h.step as i64 - 1) * 1000,
            device,
            updated: &pts,
            store: &h.store,
            registry: &h.reg,
        };
        let mut row = Vec::new();
        ex.describe(&frame, &mut row).map(|d| (row, d.missing))
    }

    #[test]
    fn natural_values_undo_the_log() {
        let kf = for_kind(DeviceKind::Chiller).unwrap();
        assert!((kf.natural(0, slog(-40.0)) + 40.0).abs() < 1e-9);
        let running = kf.analog.len();
        assert_eq!(kf.natural(running, 2.5), 2.5);
    }

    #[test]
    fn every_kind_names_its_features_once_and_maps_them_to_metrics() {
        for kind in DeviceKind::ALL {
            let Some(kf) = for_kind(kind) else {
                assert!(
                    matches!(kind, DeviceKind::Other | DeviceKind::Pdu),
                    "{kind}"
                );
                continue;
            };
            let mut names = kf.names.clone();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), kf.len(), "{kind}: duplicate feature names");
            for i in 0..kf.len() - SUMMARY.len() {
                assert!(!kf.metrics_of(i).is_empty(), "{kind} feature {i}");
                for m in kf.metrics_of(i) {
                    assert!(
                        crate::model::vocabulary::lookup(kind, m).is_some(),
                        "{kind}: {m} is not in the vocabulary"
                    );
                }
            }
        }
    }

    #[test]
    fn vectors_are_scale_free_and_wait_for_warm_up() {
        // Two chillers that differ only in units and rating give the same vector.
        let mut rows = Vec::new();
        for scale in [1.0, 40.0] {
            let mut h = Harness::new();
            let mut ex = Extractor::new(FeatureParams::default(), 50);
            let mut d = crate::detect::limits::Limits::new(crate::detect::PerKind::from_fn(|_| {
                crate::detect::limits::LimitsParams::default()
            }));
            let (s, r, f, p) = (
                noisy(80, 7.0, 0.05, 1),
                noisy(80, 12.0, 0.05, 2),
                noisy(80, 30.0, 0.5, 3),
                noisy(80, 150.0, 2.0, 4),
            );
            let mut last = None;
            for i in 0..80 {
                h.feed_frame(
                    &mut d,
                    "chiller",
                    &[
                        ("supply_temp_c", s[i]),
                        ("return_temp_c", r[i]),
                        ("flow_lps", f[i] * scale),
                        ("power_kw", p[i] * scale),
                        ("setpoint_c", 7.0),
                        ("running", 1.0),
                    ],
                );
                last = frame_row(&h, &mut ex, 0);
                if i < 49 {
                    assert!(last.is_none(), "described during warm-up at {i}");
                }
            }
            let (row, missing) = last.expect("described after warm-up");
            assert_eq!(missing, 0);
            assert_eq!(row.len(), for_kind(DeviceKind::Chiller).unwrap().len());
            rows.push(row);
        }
        for (a, b) in rows[0].iter().zip(&rows[1]) {
            assert!((a - b).abs() < 1e-6 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn missing_metrics_are_nan_and_too_many_missing_is_no_vector() {
        let mut h = Harness::new();
        let mut ex = Extractor::new(FeatureParams::default(), 5);
        let mut d = crate::detect::limits::Limits::new(crate::detect::PerKind::from_fn(|_| {
            crate::detect::limits::LimitsParams::default()
        }));
        // A CRAH without a fan speed: 1 of 6 features missing.
        let mut last = None;
        for i in 0..10 {
            h.feed_frame(
                &mut d,
                "crah",
                &[
                    ("supply_air_temp_c", 18.0 + i as f64 * 0.01),
                    ("return_air_temp_c", 30.0 - i as f64 * 0.01),
                ],
            );
            last = frame_row(&h, &mut ex, 0);
        }
        let (row, missing) = last.expect("described");
        assert_eq!(missing, 1);
        assert!(row[2].is_nan());
        assert_eq!(row.len(), for_kind(DeviceKind::Crah).unwrap().len());
        // A PDU that reports nothing the kind knows: nothing to describe.
        let mut h = Harness::new();
        for _ in 0..10 {
            h.feed_frame(&mut d, "pdu", &[("outlet_count", 24.0)]);
        }
        assert!(frame_row(&h, &mut ex, 0).is_none());
    }
}
