//! **physics**: cross-signal invariants that a spoofed or manipulated value breaks.
//!
//! Each relation predicts one metric from another quantity and learns its constants
//! online per device, so each facility's UPS efficiency, chiller COP, other load and
//! meter ratios are learned, never assumed. Quantities that are proportional by physics
//! use a ratio `y ≈ b·x` with `b` the ratio of exponentially weighted means (noise in `x`
//! does not bias it, where a regression slope would be diluted towards zero); the site
//! balance, which has an unknown remainder, uses `y ≈ a + b·x` by recursive least
//! squares (centred inputs, exponential forgetting, bounded covariance). The residual's spread is learned too; after a
//! warm-up, `|residual| / σ ≥ threshold` for `persist` samples is a finding. Nothing is
//! learned while the residual is large, so an attack does not teach the model.
//!
//! | relation | y | x | model | only when |
//! |---|---|---|---|---|
//! | UPS efficiency | input_power_kw | output_power_kw | ratio | online (not on battery, not in bypass, battery full and not charging) |
//! | UPS load | load_pct | output_power_kw | ratio | always |
//! | chiller COP | power_kw | heat removed = flow × (return − supply) × c_p, at the rating point's supply temperature | ratio | running |
//! | chiller setpoint | supply_temp_c | setpoint_c | ratio | running |
//! | site balance | grid active_power_kw | Σ UPS input_power_kw + Σ chiller power_kw | linear | breaker closed |
//! | grid frequency | grid frequency_hz | mean UPS input_frequency_hz | ratio | UPS inputs live |
//! | grid voltage | grid voltage_l1_v | mean UPS input_voltage_v | ratio | UPS inputs live |
//!
//! A chiller's COP is not a constant: warmer supply water means less lift, so it rises by
//! about 3 % per kelvin (vendors' part-load data; "1–2 % per °F" in the trade), and a
//! plant settling back from a trip or a changed setpoint runs for many minutes off its
//! usual supply temperature. The COP relation therefore refers the heat removed to the
//! AHRI 550/590 rating point (6.7 °C supply): `heat × e^(−g·(supply − 6.7))`, with `g` =
//! `cop_gain_per_k`. A spoofed supply temperature moves the heat far more than the
//! correction (flow × c_p per kelvin against a few percent), so it hides nothing.
//!
//! Three tests run on the residual's z-score:
//! - a jump: `|z| ≥ threshold` for `persist` samples;
//! - a sustained shift: an exponential average of z, over about
//!   `sustained_halflife_samples`, beyond `sustained_threshold` times its own learned
//!   spread. It catches a persistent offset of a few σ, such as a UPS silently put in
//!   bypass, whose conversion losses are only a few percent of its input;
//! - a sequential test: a two-sided CUSUM (Page) of z in units of its *long-run* spread,
//!   `S⁺ = max(0, S⁺ + z/τ − k)`, `S⁻ = max(0, S⁻ − z/τ − k)`, a finding at
//!   `max(S⁺, S⁻) ≥ cusum_threshold`. τ² is how much the residual's autocorrelation
//!   inflates the variance of its running average, learned from the spread of that
//!   average (at least 1), so a slowly wandering residual is not mistaken for a shift.
//!   It is tuned to offsets of 2·`cusum_k` long-run σ and gathers evidence of any
//!   larger than `cusum_k` from the first sample on, where the averaged test waits for
//!   its average to climb (`wattchdog eval --sweep` draws the curves that compare
//!   them: docs/evaluation.md). Each step is clipped at
//!   ±[`CUSUM_STEP`] (a jump is the first test's business, and one wild sample must not
//!   fill the sum), and the sum at 1.2 × the threshold ([`CUSUM_CAP`]; uncapped while
//!   `calibrate` taps it).
//!
//! Blind spots: an attacker who spoofs every quantity of a relation consistently;
//! relations whose inputs are missing from the capture are simply not evaluated.

use super::{
    sig,
    tap::{Rule, Tap},
    Detector, PerKind,
};
use crate::feature::{Frame, PointState};
use crate::model::attack;
use crate::model::points::DeviceId;
use crate::model::{DeviceKind, Finding, Quality, Severity, Technique, Ts, Words};
use crate::tomlfile::{rule, Broken};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "physics";
const CP_WATER: f64 = 4.186;
/// Supply water temperature of the AHRI 550/590 rating point (44 °F), °C.
const RATED_SUPPLY_C: f64 = 6.7;
/// Largest step of the CUSUM, in long-run σ.
const CUSUM_STEP: f64 = 4.0;
/// The CUSUM's ceiling, in thresholds: it says that a shift is on, not how long it has
/// lasted, so it falls under the threshold within `0.2 × threshold / k` samples (10 at
/// the defaults) of the shift's end, and an alert does not outlive its attack to run
/// into the next one on the same device.
const CUSUM_CAP: f64 = 1.2;

/// Parameters of the physics detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhysicsParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// |residual| / σ at or above which a sample counts.
    pub threshold: f64,
    /// Samples each relation learns from before it is judged.
    pub warmup_samples: u64,
    /// Consecutive samples over the threshold needed for a finding.
    pub persist_samples: u32,
    /// Half-life of the relation's memory, in samples.
    pub halflife_samples: f64,
    /// Half-life of the averaged z-score of the sustained-shift test, in samples.
    pub sustained_halflife_samples: f64,
    /// The averaged z-score over its learned spread at or above which a shift counts.
    pub sustained_threshold: f64,
    /// Allowance k of the CUSUM, in long-run σ (half the smallest shift it is tuned to).
    pub cusum_k: f64,
    /// Decision threshold of the CUSUM.
    pub cusum_threshold: f64,
    /// Chillers: the COP's relative gain per kelvin of warmer supply water, by which the
    /// COP relation refers the heat removed to the rating point's supply temperature (0
    /// takes the COP as constant).
    pub cop_gain_per_k: f64,
}

impl PhysicsParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.threshold > 0.0, "threshold", "must be greater than 0")?;
        rule(
            self.warmup_samples >= 10,
            "warmup_samples",
            "must be at least 10",
        )?;
        rule(
            self.persist_samples >= 1,
            "persist_samples",
            "must be at least 1",
        )?;
        rule(
            self.halflife_samples >= 1.0,
            "halflife_samples",
            "must be at least 1",
        )?;
        rule(
            self.sustained_halflife_samples >= 1.0,
            "sustained_halflife_samples",
            "must be at least 1",
        )?;
        rule(
            self.sustained_threshold > 0.0,
            "sustained_threshold",
            "must be greater than 0",
        )?;
        rule(
            self.cusum_k > 0.0 && self.cusum_k < CUSUM_STEP,
            "cusum_k",
            "must be greater than 0 and less than 4",
        )?;
        rule(
            self.cusum_threshold > 0.0,
            "cusum_threshold",
            "must be greater than 0",
        )?;
        rule(
            (0.0..=0.2).contains(&self.cop_gain_per_k),
            "cop_gain_per_k",
            "must be 0 to 0.2 (a fraction of the COP per kelvin)",
        )?;
        Ok(())
    }
}

impl Default for PhysicsParams {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 8.0,
            warmup_samples: 1800,
            persist_samples: 5,
            halflife_samples: 7200.0,
            sustained_halflife_samples: 60.0,
            sustained_threshold: 10.0,
            cusum_k: 0.5,
            cusum_threshold: 25.0,
            cop_gain_per_k: 0.03,
        }
    }
}

/// Where a relation's input comes from.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// Another metric of the same device.
    Metric(&'static str),
    /// Heat removed by a chiller: flow × (return − supply) × c_p, kW.
    ChillerHeat,
    /// Sum of metrics over the site's devices of some kinds.
    SiteSum(&'static [(DeviceKind, &'static str)]),
    /// Mean of a metric over the site's devices of a kind (only live, non-zero values).
    SiteMean(DeviceKind, &'static str),
}

/// When a relation holds.
#[derive(Debug, Clone, Copy)]
enum Gate {
    Always,
    UpsOnline,
    Running,
    BreakerClosed,
}

/// How a relation's constants are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// `y ≈ b·x`, `b` = ratio of weighted means.
    Ratio,
    /// `y ≈ a + b·x` by recursive least squares.
    Linear,
}

struct Spec {
    model: Model,
    kind: DeviceKind,
    name: &'static str,
    target: &'static str,
    input: Input,
    gate: Gate,
    technique: Technique,
    meaning: &'static str,
}

const SITE_POWER: &[(DeviceKind, &str)] = &[
    (DeviceKind::Ups, "input_power_kw"),
    (DeviceKind::Chiller, "power_kw"),
];

// Taps name a relation in six bits.
const _: () = assert!(RELATIONS.len() < 64);

const RELATIONS: &[Spec] = &[
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::Ups,
        name: "ups_efficiency",
        target: "input_power_kw",
        input: Input::Metric("output_power_kw"),
        gate: Gate::UpsOnline,
        technique: attack::MANIPULATION_OF_CONTROL,
        meaning: "input power no longer matches output power at the learned efficiency",
    },
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::Ups,
        name: "ups_load",
        target: "load_pct",
        input: Input::Metric("output_power_kw"),
        gate: Gate::Always,
        technique: attack::SPOOF_REPORTING,
        meaning: "reported load no longer matches output power",
    },
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::Chiller,
        name: "chiller_cop",
        target: "power_kw",
        input: Input::ChillerHeat,
        gate: Gate::Running,
        technique: attack::SPOOF_REPORTING,
        meaning:
            "electrical power no longer matches the heat removed (flow × ΔT, referred to 6.7 °C supply) at the learned COP",
    },
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::Chiller,
        name: "chiller_setpoint",
        target: "supply_temp_c",
        input: Input::Metric("setpoint_c"),
        gate: Gate::Running,
        technique: attack::MODIFY_PARAMETER,
        meaning: "supply temperature no longer tracks the setpoint",
    },
    Spec {
        model: Model::Linear,
        kind: DeviceKind::GridMeter,
        name: "site_balance",
        target: "active_power_kw",
        input: Input::SiteSum(SITE_POWER),
        gate: Gate::BreakerClosed,
        technique: attack::SPOOF_REPORTING,
        meaning:
            "interconnect power no longer matches UPS inputs + chillers + the learned remainder",
    },
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::GridMeter,
        name: "grid_frequency",
        target: "frequency_hz",
        input: Input::SiteMean(DeviceKind::Ups, "input_frequency_hz"),
        gate: Gate::Always,
        technique: attack::SPOOF_REPORTING,
        meaning: "meter frequency no longer matches the frequency the UPS inputs see",
    },
    Spec {
        model: Model::Ratio,
        kind: DeviceKind::GridMeter,
        name: "grid_voltage",
        target: "voltage_l1_v",
        input: Input::SiteMean(DeviceKind::Ups, "input_voltage_v"),
        gate: Gate::Always,
        technique: attack::SPOOF_REPORTING,
        meaning: "meter voltage no longer matches the voltage the UPS inputs see",
    },
];

/// A two-parameter recursive least-squares fit `y' = a + b·x'` on centred data.
#[derive(Debug, Clone)]
struct Fit {
    model: Model,
    mx: f64,
    my: f64,
    x0: f64,
    y0: f64,
    theta: [f64; 2],
    p: [[f64; 2]; 2],
    /// Trace of the prior covariance: the bound that stops windup.
    p_max: f64,
    var: f64,
    n: u64,
    run: u32,
    /// Exponential average of z, and its learned variance.
    zs: f64,
    zs_var: f64,
    /// The CUSUM's upper and lower sums.
    cs: [f64; 2],
}

impl Fit {
    fn new(model: Model, x: f64, y: f64) -> Self {
        let b0 = if x.abs() > 1e-9 { y / x } else { 1.0 };
        let scale = y.abs().max(1.0);
        let xs = x.abs().max(1.0);
        let p = [[scale * scale, 0.0], [0.0, (scale / xs).powi(2)]];
        Self {
            model,
            mx: x,
            my: y,
            x0: x,
            y0: y,
            theta: [0.0, b0],
            // Weak priors: offset within the target's scale, slope within y/x's.
            p,
            p_max: p[0][0] + p[1][1],
            var: 0.0,
            n: 0,
            run: 0,
            zs: 0.0,
            zs_var: 0.0,
            cs: [0.0; 2],
        }
    }

    fn predict(&self, x: f64) -> f64 {
        match self.model {
            Model::Ratio => x * self.my / self.mx,
            Model::Linear => self.y0 + self.theta[0] + self.theta[1] * (x - self.x0),
        }
    }

    fn learn(&mut self, x: f64, y: f64, lambda: f64) {
        if self.model == Model::Ratio {
            // Weighted means; 1/n at first so the start is not over-weighted.
            let a = (1.0 / (self.n as f64 + 2.0)).max(1.0 - lambda);
            self.mx += a * (x - self.mx);
            self.my += a * (y - self.my);
            return;
        }
        let phi = [1.0, x - self.x0];
        let e = (y - self.y0) - (self.theta[0] + self.theta[1] * phi[1]);
        let pphi = [
            self.p[0][0] * phi[0] + self.p[0][1] * phi[1],
            self.p[1][0] * phi[0] + self.p[1][1] * phi[1],
        ];
        let denom = lambda + phi[0] * pphi[0] + phi[1] * pphi[1];
        if !denom.is_finite() || denom <= 0.0 {
            return;
        }
        let k = [pphi[0] / denom, pphi[1] / denom];
        self.theta[0] += k[0] * e;
        self.theta[1] += k[1] * e;
        for (row, ki) in self.p.iter_mut().zip(k) {
            for (pij, pj) in row.iter_mut().zip(pphi) {
                *pij = (*pij - ki * pj) / lambda;
            }
        }
        // Forgetting divides P by λ at every step, so a direction the data never excites
        // (a nearly constant input) grows without bound and the fit goes wild after a few
        // days ("windup"). Keeping the trace under the prior's prevents it.
        let sym = 0.5 * (self.p[0][1] + self.p[1][0]);
        (self.p[0][1], self.p[1][0]) = (sym, sym);
        let trace = self.p[0][0] + self.p[1][1];
        if trace > self.p_max {
            let f = self.p_max / trace;
            self.p.iter_mut().flatten().for_each(|v| *v *= f);
        }
    }
}

/// The physics detector.
pub struct Physics {
    params: PerKind<PhysicsParams>,
    fits: FxHashMap<(DeviceId, usize), Fit>,
    charging: FxHashMap<DeviceId, Charging>,
    tap: Option<Tap>,
}

/// A battery's charge rising by this many points (from its lowest since the last rise)
/// means its charger is drawing power. Larger than the 0.1-point steps a full battery's
/// reading jitters by.
const CHARGE_RISE_PCT: f64 = 0.2;
/// How long after its charge last rose a battery may still be charging: a charger keeps
/// drawing while the reading already says nearly full (absorption), and stops at once.
const CHARGE_SETTLE_MS: Ts = 600_000;

/// Whether a UPS's battery is charging, from its charge reading alone. Its charger draws
/// on top of output / efficiency, so the efficiency relation holds only once the charge
/// has stopped rising: learning it while charging would teach the charger's draw as
/// losses, and its end would then look like an attack.
#[derive(Debug, Clone, Copy)]
struct Charging {
    /// Lowest charge since it last rose.
    low: f64,
    /// Until when the battery counts as charging.
    until: Ts,
}

impl Charging {
    fn observe(&mut self, ts: Ts, pct: f64) {
        if pct < self.low {
            self.low = pct;
        } else if pct >= self.low + CHARGE_RISE_PCT {
            self.low = pct;
            self.until = ts + CHARGE_SETTLE_MS;
        }
    }
}

impl Physics {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<PhysicsParams>) -> Self {
        Self {
            params,
            fits: FxHashMap::default(),
            charging: FxHashMap::default(),
            tap: None,
        }
    }

    /// Records every judgement's |z| and sustained shift in `tap` (see
    /// [`crate::detect::tap`]).
    pub fn tapped(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }
}

fn fresh<'a>(frame: &Frame<'a>, name: &str) -> Option<&'a PointState> {
    frame.metric(name)
}

fn flag(frame: &Frame<'_>, name: &str) -> Option<bool> {
    fresh(frame, name).map(|p| p.value >= 0.5)
}

/// A metric of another device of the site, if it was reported at this instant.
fn site_values<'a>(
    frame: &'a Frame<'_>,
    kind: DeviceKind,
    metric: &'a str,
) -> impl Iterator<Item = Option<f64>> + 'a {
    let reg = frame.registry;
    reg.site_devices(frame.device)
        .iter()
        .map(|&d| reg.device(d))
        .filter(move |d| d.kind == kind)
        .map(move |d| {
            d.point_named(reg, metric)
                .and_then(|p| frame.store.get(p))
                .filter(|st| st.quality == Quality::Good && st.ts == frame.ts)
                .map(|st| st.value)
        })
}

fn input_value(frame: &Frame<'_>, input: Input, params: &PhysicsParams) -> Option<f64> {
    match input {
        Input::Metric(m) => fresh(frame, m).map(|p| p.value),
        Input::ChillerHeat => {
            let flow = fresh(frame, "flow_lps")?.value;
            let ret = fresh(frame, "return_temp_c")?.value;
            let sup = fresh(frame, "supply_temp_c")?.value;
            // Bounded so that a forged temperature cannot overflow the exponential.
            let lift = (sup - RATED_SUPPLY_C).clamp(-50.0, 50.0);
            Some(flow * (ret - sup) * CP_WATER * (-params.cop_gain_per_k * lift).exp())
        }
        Input::SiteSum(parts) => {
            let mut sum = 0.0;
            let mut any = false;
            for &(kind, metric) in parts {
                for v in site_values(frame, kind, metric) {
                    sum += v?; // a device missing this instant: no balance to check
                    any = true;
                }
            }
            any.then_some(sum)
        }
        Input::SiteMean(kind, metric) => {
            let (mut sum, mut n) = (0.0, 0);
            for v in site_values(frame, kind, metric).flatten() {
                if v > 0.0 {
                    sum += v;
                    n += 1;
                }
            }
            (n > 0).then(|| sum / f64::from(n))
        }
    }
}

fn gate_open(frame: &Frame<'_>, gate: Gate, charging: Option<&Charging>) -> bool {
    match gate {
        Gate::Always => true,
        Gate::UpsOnline => {
            flag(frame, "on_battery") != Some(true)
                && flag(frame, "bypass_active") != Some(true)
                && fresh(frame, "battery_charge_pct").is_none_or(|p| p.value >= 99.5)
                && charging.is_none_or(|c| frame.ts >= c.until)
                && fresh(frame, "input_voltage_v").is_none_or(|p| p.value > 0.0)
        }
        Gate::Running => flag(frame, "running") != Some(false),
        Gate::BreakerClosed => flag(frame, "breaker_closed") != Some(false),
    }
}

impl Detector for Physics {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let kind = frame.kind();
        let params = self.params.get(kind);
        if !params.enabled {
            return;
        }
        let lambda = 0.5f64.powf(1.0 / params.halflife_samples.max(1.0));
        if let Some(p) = fresh(frame, "battery_charge_pct") {
            self.charging
                .entry(frame.device)
                .or_insert(Charging {
                    low: p.value,
                    until: Ts::MIN,
                })
                .observe(frame.ts, p.value);
        }
        let charging = self.charging.get(&frame.device);
        for (i, spec) in RELATIONS.iter().enumerate().filter(|(_, s)| s.kind == kind) {
            let Some(target) = fresh(frame, spec.target) else {
                continue;
            };
            if !gate_open(frame, spec.gate, charging) {
                // A relation out of force gathers no evidence: what its tests had
                // accumulated before (a charger's draw as the gate closed) must not be
                // judged against the plant it returns to.
                if let Some(fit) = self.fits.get_mut(&(frame.device, i)) {
                    (fit.run, fit.zs, fit.cs) = (0, 0.0, [0.0; 2]);
                }
                continue;
            }
            let Some(x) = input_value(frame, spec.input, params) else {
                continue;
            };
            let y = target.value;
            if spec.model == Model::Ratio && x.abs() < 1e-6 {
                continue; // no ratio through zero
            }
            let fit = self
                .fits
                .entry((frame.device, i))
                .or_insert_with(|| Fit::new(spec.model, x, y));
            let predicted = fit.predict(x);
            let resid = y - predicted;
            let res_floor = if target.resolution.is_finite() {
                target.resolution
            } else {
                0.0
            };
            let sigma = fit.var.sqrt().max(res_floor).max(1e-9 * y.abs()).max(1e-12);
            let z = resid / sigma;
            let warm = fit.n < params.warmup_samples;
            if warm || z.abs() < 3.0 {
                fit.learn(x, y, lambda);
                let a = if warm {
                    1.0 / (fit.n as f64 + 1.0)
                } else {
                    1.0 - lambda
                };
                let r = if warm {
                    resid
                } else {
                    resid.clamp(-3.0 * sigma, 3.0 * sigma)
                };
                fit.var += a * (r * r - fit.var);
                fit.n += 1;
            }
            // Sustained shift: the averaged z against its own learned spread, floored by
            // what white noise would give (so a very smooth warm-up cannot make it touchy).
            let a_s = 1.0 - 0.5f64.powf(1.0 / params.sustained_halflife_samples.max(1.0));
            fit.zs += a_s * (z.clamp(-50.0, 50.0) - fit.zs);
            let zs_sigma = fit.zs_var.sqrt().max((a_s / (2.0 - a_s)).sqrt());
            let shift = fit.zs / zs_sigma;
            if warm || shift.abs() < 3.0 {
                let aw = if warm {
                    1.0 / (fit.n as f64 + 1.0)
                } else {
                    1.0 - lambda
                };
                fit.zs_var += aw * (fit.zs * fit.zs - fit.zs_var);
            }
            let judged_shift = !warm && fit.n > 2 * params.warmup_samples;
            // The CUSUM in long-run σ: the averaged z's variance over a white noise's.
            let tau = (zs_sigma * zs_sigma * (2.0 - a_s) / a_s).sqrt().max(1.0);
            let step = (z / tau).clamp(-CUSUM_STEP, CUSUM_STEP);
            // Uncapped while tapped: calibration must see how far the sum goes on the
            // site's own history, not where this threshold would have stopped it.
            let cap = if self.tap.is_some() {
                f64::INFINITY
            } else {
                CUSUM_CAP * params.cusum_threshold
            };
            fit.cs = if judged_shift {
                [
                    (fit.cs[0] + step - params.cusum_k).clamp(0.0, cap),
                    (fit.cs[1] - step - params.cusum_k).clamp(0.0, cap),
                ]
            } else {
                [0.0; 2]
            };
            let seq = fit.cs[0].max(fit.cs[1]);
            if let Some(tap) = &self.tap {
                // One subject per device and relation (RELATIONS has fewer than 64).
                let subject = frame.device << 6 | i as u32;
                let judged = (!warm).then_some(z.abs());
                tap.record(
                    Rule::Physics,
                    kind,
                    subject,
                    frame.ts,
                    judged,
                    params.persist_samples,
                );
                let judged = judged_shift.then_some(shift.abs());
                tap.record(Rule::PhysicsSustained, kind, subject, frame.ts, judged, 1);
                let judged = judged_shift.then_some(seq);
                tap.record(Rule::PhysicsCusum, kind, subject, frame.ts, judged, 1);
            }
            let jump = !warm && z.abs() >= params.threshold;
            fit.run = if jump { fit.run + 1 } else { 0 };
            let jumped = jump && fit.run >= params.persist_samples;
            let sustained = judged_shift && shift.abs() >= params.sustained_threshold;
            let cumulated = judged_shift && seq >= params.cusum_threshold;
            let (score, threshold, how) = if jumped {
                (z.abs(), params.threshold, "")
            } else if sustained {
                (
                    shift.abs(),
                    params.sustained_threshold,
                    ", a sustained offset",
                )
            } else if cumulated {
                (seq, params.cusum_threshold, ", a cumulative offset")
            } else {
                continue;
            };
            // Made only if read: most findings repeat their open alert's.
            let dev = frame.registry.device(frame.device).name.clone();
            let zs = fit.zs;
            let words = Words::later(move || {
                (
                    format!(
                        "{dev}: {} ({} = {}, expected {} ± {} from the learned relation{how})",
                        spec.meaning,
                        spec.target,
                        sig(y),
                        sig(predicted),
                        sig(sigma),
                    ),
                    json!({"relation": spec.name, "value": y, "expected": predicted, "input": x,
                           "residual_sigma": sigma, "z": z, "averaged_z": zs, "shift": shift,
                           "cusum": seq, "long_run_factor": tau,
                           "model": format!("{:?}", spec.model).to_lowercase()}),
                )
            });
            out.push(Finding {
                ts: frame.ts,
                device: frame.device,
                metrics: vec![spec.target.to_owned()],
                detector: NAME,
                score,
                threshold,
                severity: if score >= 3.0 * threshold {
                    Severity::High
                } else {
                    Severity::Medium
                },
                technique: spec.technique,
                words,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};
    use crate::feature::{FeatureParams, FeatureStore};
    use crate::model::points::Registry;
    use crate::model::Ts;

    /// Feeds a chiller whose power follows heat at a COP of `cop`, optionally with the
    /// supply sensor reading `lie` °C low from step `from` on.
    fn chiller(cop: f64, lie: f64, from: usize) -> Vec<(usize, Finding)> {
        let lie = |i| if i >= from { lie } else { 0.0 };
        chiller_with(physics(PhysicsParams::default()), cop, lie)
    }

    fn physics(params: PhysicsParams) -> Physics {
        Physics::new(PerKind::from_fn(|_| params.clone()))
    }

    /// [`chiller`] judged by `d`, with the supply sensor's error at each step: the heat
    /// it removes wanders (AR(1)), its supply water stays at 7 °C.
    fn chiller_with(d: Physics, cop: f64, lie: impl Fn(usize) -> f64) -> Vec<(usize, Finding)> {
        let load = noisy(6000, 0.0, 1.0, 7);
        let mut l = 0.0;
        feed_chiller(d, |i| {
            l = 0.999 * l + load[i];
            (400.0 + 3.0 * l, 7.0, lie(i), cop)
        })
    }

    /// Feeds `d` 6,000 frames of a chiller moving 40 L/s; `plant(i)` gives the heat it
    /// removes (kW), its supply water (°C), how far its supply sensor reads low and its
    /// COP; every measurement has noise.
    fn feed_chiller(
        mut d: Physics,
        mut plant: impl FnMut(usize) -> (f64, f64, f64, f64),
    ) -> Vec<(usize, Finding)> {
        let mut h = Harness::new();
        let n = 6000;
        let (nf, nt, np) = (
            noisy(n, 0.0, 0.2, 8),
            noisy(n, 0.0, 0.03, 9),
            noisy(n, 0.0, 1.0, 10),
        );
        for i in 0..n {
            let (heat, sup, lie, cop) = plant(i);
            let flow = 40.0;
            let ret = sup + heat / (CP_WATER * flow);
            let frame = [
                ("flow_lps", flow + nf[i]),
                ("return_temp_c", ret + nt[i]),
                ("supply_temp_c", sup - lie + nt[(i + 1) % n]),
                ("power_kw", heat / cop + np[i]),
                ("running", 1.0),
            ];
            h.feed_frame(&mut d, "chiller", &frame);
        }
        h.findings
    }

    #[test]
    fn cop_is_learned_whatever_it_is_and_a_lying_supply_sensor_breaks_it() {
        for cop in [2.8, 4.2, 6.5] {
            assert!(
                chiller(cop, 0.0, usize::MAX).is_empty(),
                "clean at COP {cop}"
            );
            let f = chiller(cop, 1.0, 4000);
            let at = f.first().map(|x| x.0).expect("spoof detected");
            assert!((4000..4010).contains(&at), "COP {cop}: at {at}");
            assert_eq!(f[0].1.evidence()["relation"], "chiller_cop");
        }
    }

    /// A chiller at a COP of 4.2 at 7 °C supply gaining `gain` of it per kelvin, whose
    /// supply water runs a kelvin warmer from step 4000 to 4700, then settles back by 5000.
    fn settling_chiller(params: PhysicsParams, gain: f64) -> Vec<(usize, Finding)> {
        feed_chiller(physics(params), |i| {
            let warm = match i {
                4000..=4700 => 1.0,
                4701..=5000 => (5000 - i) as f64 / 300.0,
                _ => 0.0,
            };
            (400.0, 7.0 + warm, 0.0, 4.2 * (1.0 + gain * warm))
        })
    }

    #[test]
    fn warmer_supply_water_raises_the_cop_and_breaks_no_relation() {
        // Whether the plant gains 2.5 % or 3.5 % per kelvin: the correction's 3 % leaves
        // a fraction of the residual's spread.
        for gain in [0.025, 0.035] {
            let f = settling_chiller(PhysicsParams::default(), gain);
            assert!(f.is_empty(), "gain {gain}: {:?}", f[0].1.reason());
        }
        // Taken as a constant COP, the same kelvin is a 3 % drop of power: a cumulative
        // offset of the relation.
        let constant = PhysicsParams {
            cop_gain_per_k: 0.0,
            ..PhysicsParams::default()
        };
        let f = settling_chiller(constant, 0.03);
        let (at, first) = f.first().expect("a constant COP sees the warm water");
        assert!((4000..4200).contains(at), "at {at}");
        assert_eq!(first.evidence()["relation"], "chiller_cop");
    }

    #[test]
    fn an_offset_of_one_sigma_is_cumulated_by_the_sequential_test_first() {
        // A supply sensor 0.05 °C low: about 1σ of the COP relation's residual, far
        // under the jump test and slow to move the averaged one. Judging starts at 3600.
        let f = chiller(4.2, 0.05, 4000);
        let (at, first) = f.first().expect("offset detected");
        assert!((4000..4100).contains(at), "at {at}");
        assert!(
            first.reason().ends_with("a cumulative offset)"),
            "{}",
            first.reason()
        );
        assert!(first.evidence()["cusum"].as_f64().unwrap() >= 25.0);
    }

    #[test]
    fn the_tap_sees_the_cusum_uncapped() {
        // Calibration fits the tail of what the sum reaches; capped at 1.2 × the
        // threshold, a site whose clean sums go higher would get a threshold too low.
        let tap = Tap::default();
        let d = physics(PhysicsParams::default()).tapped(Some(tap.clone()));
        chiller_with(d, 4.2, |i| if i >= 4000 { 0.05 } else { 0.0 });
        let taken = tap.take();
        let sums = &taken.series[&(Rule::PhysicsCusum, DeviceKind::Chiller)];
        let top = sums.maxima.iter().copied().fold(0.0, f64::max);
        assert!(top > CUSUM_CAP * 25.0, "{top}");
    }

    #[test]
    fn a_wandering_residual_is_judged_in_its_long_run_spread() {
        // The supply sensor wanders (AR(1), φ = 0.95, no offset): its residual's
        // running sums spread ~6× wider than white noise's. Counted in one sample's σ
        // the CUSUM would fire at once; in the learned long-run σ it stays quiet.
        let innovations = noisy(6000, 0.0, 0.03, 40);
        let mut wander = vec![0.0; 6000];
        for i in 1..6000 {
            wander[i] = 0.95 * wander[i - 1] + innovations[i];
        }
        let only_cusum = PhysicsParams {
            threshold: 1e9,
            sustained_threshold: 1e9,
            ..PhysicsParams::default()
        };
        let quiet = chiller_with(physics(only_cusum.clone()), 4.2, |i| wander[i]);
        assert!(
            quiet.is_empty(),
            "{:?}",
            quiet.first().map(|f| f.1.reason())
        );
        // A 0.6 °C lie on top of the same wander (about one long-run σ) is still seen.
        let lie = chiller_with(physics(only_cusum), 4.2, |i| {
            wander[i] + if i >= 4000 { 0.6 } else { 0.0 }
        });
        let at = lie.first().map(|f| f.0);
        assert!(at.is_some_and(|i| (4000..4200).contains(&i)), "{at:?}");
    }

    /// A UPS at float for an hour, then recharging its battery from `from_pct` (its charger
    /// drawing `charger_kw` on top of output / efficiency, the reading rising 1 point a
    /// minute in 0.1 steps), then full; optionally losing its conversion losses (a silent
    /// bypass) from step `bypass` on. Returns the efficiency findings' steps.
    fn recharge(from_pct: f64, charger_kw: f64, bypass: usize) -> Vec<usize> {
        let mut h = Harness::new();
        let mut d = Physics::new(PerKind::from_fn(|_| PhysicsParams::default()));
        let n = 9000;
        let noise = noisy(2 * n, 0.0, 1.0, 31);
        let (eff, full_at) = (0.94, 3600 + ((100.0 - from_pct) * 60.0) as usize);
        for i in 0..n {
            let out = 600.0 + 5.0 * noise[2 * i];
            let pct = if i < 3600 {
                100.0
            } else {
                (from_pct + ((i - 3600) / 6) as f64 * 0.1).min(100.0)
            };
            let charger = if (3600..full_at).contains(&i) {
                charger_kw
            } else {
                0.0
            };
            let losses = if i >= bypass { 1.0 } else { 1.0 / eff };
            h.feed_frame(
                &mut d,
                "ups",
                &[
                    (
                        "input_power_kw",
                        out * losses + charger + 0.5 * noise[2 * i + 1],
                    ),
                    ("output_power_kw", out),
                    ("battery_charge_pct", pct),
                    ("on_battery", 0.0),
                ],
            );
        }
        h.findings
            .iter()
            .filter(|(_, f)| f.evidence()["relation"] == "ups_efficiency")
            .map(|(i, _)| *i)
            .collect()
    }

    #[test]
    fn a_recharging_battery_is_not_mistaken_for_losses_and_its_end_is_not_an_attack() {
        // The charger draws a sixth of the load until the battery is full: the relation
        // is neither learned nor judged until the charge has stopped rising.
        assert_eq!(recharge(85.0, 100.0, usize::MAX), Vec::<usize>::new());
        // Judged again once the battery has settled: a bypass after it is caught.
        let full = 3600 + 15 * 60;
        let bypass = full + 1200;
        let fired = recharge(85.0, 100.0, bypass);
        assert!(
            fired
                .first()
                .is_some_and(|&i| (bypass..bypass + 120).contains(&i)),
            "{fired:?}"
        );
    }

    /// A small site (a grid meter, two UPS, a chiller) whose readings obey every relation,
    /// with constants drawn from `k`; `fault(step, device, metric, value)` may change a
    /// reported value. Returns the relations that fired, with their first step.
    fn site(k: f64, fault: impl Fn(usize, &str, &str, f64) -> f64) -> Vec<(usize, String)> {
        const UPS_METRICS: &[&str] = &[
            "input_power_kw",
            "output_power_kw",
            "load_pct",
            "input_frequency_hz",
            "input_voltage_v",
        ];
        let mut reg = Registry::new(1000);
        let devices: [(&str, &str, &[&str]); 4] = [
            ("ups-1", "ups", UPS_METRICS),
            ("ups-2", "ups", UPS_METRICS),
            (
                "chiller-1",
                "chiller",
                &[
                    "flow_lps",
                    "return_temp_c",
                    "supply_temp_c",
                    "setpoint_c",
                    "power_kw",
                ],
            ),
            (
                "grid-1",
                "grid_meter",
                &["active_power_kw", "frequency_hz", "voltage_l1_v"],
            ),
        ];
        let ids: Vec<Vec<u32>> = devices
            .iter()
            .map(|(d, kind, ms)| {
                ms.iter()
                    .map(|m| reg.intern("s", d, kind, m).unwrap())
                    .collect()
            })
            .collect();
        let mut st = FeatureStore::new(FeatureParams::default());
        let mut det = Physics::new(PerKind::from_fn(|_| PhysicsParams::default()));
        let n = 5000;
        let noise = noisy(n * 16, 0.0, 1.0, 21);
        let mut nz = noise.iter().copied();
        let (mut wander, mut f) = (0.0, 50.0);
        let mut fired: Vec<(usize, String)> = Vec::new();
        for i in 0..n {
            let mut e = || nz.next().unwrap_or(0.0);
            wander = 0.998 * wander + e();
            f += -0.002 * (f - 50.0) + 0.004 * e();
            let out_kw = 300.0 * k + 2.0 * wander;
            let eff = 0.9 + 0.05 * k;
            let heat = 500.0 * k + 3.0 * wander;
            let flow = 30.0 * k;
            let cop = 3.0 + k;
            let v = 400.0 + 2.0 * e();
            let ups = |e: &mut dyn FnMut() -> f64| {
                vec![
                    out_kw / eff + 0.5 * e(),
                    out_kw + 0.5 * e(),
                    out_kw / (6.0 * k) + 0.05 * e(),
                    f + 0.002 * e(),
                    v + 0.3 * e(),
                ]
            };
            let u1 = ups(&mut e);
            let u2 = ups(&mut e);
            let ch = vec![
                flow + 0.1 * e(),
                7.0 + heat / (CP_WATER * flow) + 0.02 * e(),
                7.0 + 0.02 * e(),
                7.0,
                heat / cop + 0.5 * e(),
            ];
            let grid = vec![
                u1[0] + u2[0] + ch[4] + 40.0 * k + 0.8 * e(),
                f + 0.002 * e(),
                v * 0.575 + 0.2 * e(),
            ];
            let ts = i as Ts * 1000;
            for (d, vals) in [u1, u2, ch, grid].into_iter().enumerate() {
                for (j, &p) in ids[d].iter().enumerate() {
                    let value = fault(i, devices[d].0, devices[d].2[j], vals[j]);
                    st.update(&reg, p, ts, value, Quality::Good);
                }
            }
            for (d, pts) in ids.iter().enumerate() {
                let frame = Frame {
                    ts,
                    device: d as u32,
                    updated: pts,
                    store: &st,
                    registry: &reg,
                };
                let mut out = Vec::new();
                det.observe(&frame, &mut out);
                for f in out {
                    let r = f.evidence()["relation"].as_str().unwrap().to_owned();
                    if !fired.iter().any(|(_, x)| *x == r) {
                        fired.push((i, r));
                    }
                }
            }
        }
        fired
    }

    #[test]
    fn every_relation_is_quiet_on_consistent_sites_with_other_constants() {
        for k in [0.7, 1.0, 1.6] {
            assert!(
                site(k, |_, _, _, v| v).is_empty(),
                "k = {k}: {:?}",
                site(k, |_, _, _, v| v)
            );
        }
    }

    #[test]
    fn every_relation_catches_its_own_fault() {
        type Case = (&'static str, &'static str, &'static str, fn(f64) -> f64);
        let cases: [Case; 7] = [
            ("ups_efficiency", "ups-1", "input_power_kw", |v| v * 0.93), // silent bypass: losses vanish
            ("ups_load", "ups-2", "load_pct", |v| v * 0.8),
            ("chiller_cop", "chiller-1", "supply_temp_c", |v| v - 1.5), // the supply sensor lies
            ("chiller_setpoint", "chiller-1", "setpoint_c", |v| v + 4.0), // setpoint moved, water did not follow
            ("site_balance", "grid-1", "active_power_kw", |v| v + 60.0),  // load behind the meter
            ("grid_frequency", "grid-1", "frequency_hz", |_| 50.0),       // meter frozen at nominal
            ("grid_voltage", "grid-1", "voltage_l1_v", |v| v + 12.0),
        ];
        for (relation, device, metric, change) in cases {
            let fired = site(1.0, |i, d, m, v| {
                if i >= 4000 && d == device && m == metric {
                    change(v)
                } else {
                    v
                }
            });
            let hit = fired.iter().find(|(_, r)| r == relation);
            assert!(
                hit.is_some_and(|(i, _)| (4000..4060).contains(i)),
                "{relation}: {fired:?}"
            );
        }
    }

    #[test]
    fn a_week_of_an_unexciting_input_does_not_wind_the_fit_up() {
        // Meter voltage against a UPS's input voltage: the same slowly wandering grid,
        // each with its own noise, for a week at 1 Hz.
        let noise = noisy(3 * 604_800, 0.0, 1.0, 23);
        let lambda = 0.5f64.powf(1.0 / 7200.0);
        let mut g = 230.0;
        let mut fit = Fit::new(Model::Linear, 208.0, 230.0);
        let mut worst: f64 = 0.0;
        for i in 0..604_800 {
            g += -0.003 * (g - 230.0) + 0.092 * noise[3 * i];
            let x = 208.0 * g / 230.0 + 1.2 * noise[3 * i + 1];
            let y = g + 1.2 * noise[3 * i + 2];
            if i > 1800 {
                worst = worst.max((fit.predict(x) - y).abs());
            }
            fit.learn(x, y, lambda);
        }
        assert!(worst < 12.0, "worst prediction error {worst} V");
        assert!(fit.p.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn a_small_sustained_offset_is_caught_by_the_averaged_test() {
        // A silent bypass: input power 0.6 % low, under 3σ of one sample's residual.
        let fired = site(1.0, |i, d, m, v| {
            if i >= 4000 && d == "ups-1" && m == "input_power_kw" {
                v * 0.994
            } else {
                v
            }
        });
        let hit = fired.iter().find(|(_, r)| r == "ups_efficiency");
        assert!(
            hit.is_some_and(|(i, _)| (4000..4300).contains(i)),
            "{fired:?}"
        );
    }

    #[test]
    fn fit_recovers_a_line() {
        let mut fit = Fit::new(Model::Linear, 100.0, 250.0);
        for i in 0..2000 {
            let x = 100.0 + (i % 50) as f64;
            fit.learn(x, 30.0 + 2.2 * x, 0.9999);
        }
        assert!((fit.predict(180.0) - (30.0 + 2.2 * 180.0)).abs() < 0.01);
    }
}
