//! **flatline**: a live analog sensor whose noise vanished.
//!
//! - During a warm-up the detector learns how often the point's value does *not* change
//!   from one sample to the next (`p0`, with |delta| below a small fraction of the usual
//!   |delta| counting as unchanged). Points that were mostly still (p0 > 0.5) are skipped.
//! - For a quantised sensor the chance of staying put depends on where its mean sits
//!   within a step: about a half at a step's edge, most at its centre. A slow signal
//!   read at a coarse resolution (a UPS's output voltage in whole volts over SNMP) that
//!   was learned near an edge and later drifts to a centre stays put far more often than
//!   it did while learning. So the per-sample chance used is the largest of `p0`, the
//!   frequency of the most common warm-up value, and the chance of staying in a step of
//!   the learned resolution (the smallest move seen) with the mean at its centre,
//!   `erf(q / (2√2 σ))`, σ the learned noise; and the run needed is never shorter than
//!   twice the longest still run the warm-up itself showed. For a fine-grained sensor
//!   the centre term is nil and nothing changes.
//! - The run length that chance would produce with probability below `false_alarm_prob`
//!   is `ln(false_alarm_prob) / ln(p)` samples; a run of unchanged values that long is a
//!   finding, which persists while the value stays frozen.
//! - Learned statistics are frozen after the warm-up, so a frozen value cannot teach the
//!   detector that frozen is normal.
//! - A run must also outlast its **precedent**: the second longest still run the point
//!   ended over its last `precedent_samples` samples, reported ones included (not
//!   those that began while an open alert named the point; then the run needed alone
//!   keeps the alert open: the precedent decides what starts one, as for `ewma_z`). A point
//!   that idles in a few states (a machine's CPU at rest, a quantised reading that holds
//!   for hours) has still runs of its own, and one no longer than two it had lately is
//!   not news. The second longest, not the longest: one freeze, an attacker's, never
//!   excuses the next (the window: [`super::precedent`]). A live analog sensor's still
//!   runs last a few samples, far under the run needed, so this changes nothing there.
//!
//! Blind spots: a spoofer who adds fake noise (see `replay` for recorded noise and the
//! physics detectors for made-up noise); sensors that were quiet in their warm-up; a
//! freeze no longer than two still runs the point ended in its last
//! `precedent_samples` samples.

use super::{point_finding, precedent::Precedent, sig, Detector, PerKind, PointTable};
use crate::feature::{decimal_step, Frame};
use crate::model::attack;
use crate::model::{Finding, Severity, Ts, Words};
use crate::time::format_duration;
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "flatline";

/// Parameters of the flatline detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlatlineParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Samples used to learn how noisy the point is.
    pub warmup_samples: u64,
    /// Accepted chance of a run that long in clean data, per sample.
    pub false_alarm_prob: f64,
    /// Never fire on runs shorter than this.
    pub min_run: u32,
    /// |delta| below this fraction of the mean warm-up |delta| counts as unchanged.
    pub tolerance: f64,
    /// Samples over which a still run's precedent is remembered (0: no precedent).
    pub precedent_samples: u32,
}

impl FlatlineParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.false_alarm_prob > 0.0 && self.false_alarm_prob < 1.0,
            "false_alarm_prob",
            "must be between 0 and 1",
        )?;
        rule(
            self.warmup_samples >= 10,
            "warmup_samples",
            "must be at least 10",
        )?;
        rule(self.min_run >= 2, "min_run", "must be at least 2")?;
        rule(self.tolerance >= 0.0, "tolerance", "must not be negative")?;
        Ok(())
    }
}

impl Default for FlatlineParams {
    fn default() -> Self {
        Self {
            enabled: true,
            warmup_samples: 300,
            // About one chance alarm in 30 years of a 1 Hz point.
            false_alarm_prob: 1e-9,
            min_run: 10,
            tolerance: 0.01,
            precedent_samples: 600,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    seen: u64,
    still: u64,
    /// Smallest non-zero move while learning (the resolution).
    quantum: f64,
    /// Sum of squared moves while learning (the noise: var(delta) = 2σ²).
    sq_delta_sum: f64,
    /// The current and the longest still run while learning.
    warm_run: u32,
    longest_warm_run: u32,
    values: Vec<f64>,
    abs_delta_sum: f64,
    eps: f64,
    p0: f64,
    /// Noise learned (σ of the value; the moves have 2σ²).
    sigma: f64,
    /// The resolution `needed` was worked out for.
    needed_at: f64,
    needed: u32,
    eligible: bool,
    run: u32,
    run_start: Ts,
    /// The run began with no open alert on the point: it may become a precedent.
    run_learned: bool,
    /// The longest still runs the point ended lately.
    precedent: Precedent,
}

/// Values just before a still run whose decimal steps say at what resolution the
/// point is reported now.
const BEFORE_RUN: usize = 8;
/// How much coarser than the learned resolution those must be to count.
const COARSER: f64 = 4.0;

impl State {
    /// A run about to be reported: if the values just before it were written coarser
    /// than the point was learned at (a new recorder, an export with fewer decimals),
    /// rounding alone keeps it still more often, and the run needed is worked out again
    /// at that resolution. Judged on the values *before* the run, so a sensor frozen at
    /// a round number is still a freeze; `window` is the latest values, oldest first.
    fn rounded(&mut self, window: Vec<f64>, params: &FlatlineParams) {
        // A run of n unchanged moves holds n + 1 values.
        let held = self.run as usize + 1;
        let Some(before) = window.len().checked_sub(held).filter(|&n| n >= BEFORE_RUN) else {
            return;
        };
        let step = window[before - BEFORE_RUN..before]
            .iter()
            .map(|&v| decimal_step(v))
            .fold(f64::INFINITY, f64::min);
        if step.is_finite() && step > COARSER * self.quantum && step > self.needed_at {
            self.needed_at = step;
            self.needed = self.needed.max(self.needed(step, params));
        }
    }

    /// The still run that the learned chance of staying put, at resolution `quantum`,
    /// gives with probability below `false_alarm_prob`.
    fn needed(&self, quantum: f64, params: &FlatlineParams) -> u32 {
        let p_centre = if self.sigma > 0.0 {
            erf(quantum / (2.0 * std::f64::consts::SQRT_2 * self.sigma))
        } else {
            1.0
        };
        let p = self.p0.max(p_centre).min(1.0 - 1e-9);
        let run = params.false_alarm_prob.ln() / p.ln();
        // Past u32 (a point rounded far coarser than its noise): never.
        (run.ceil().min(f64::from(u32::MAX)) as u32)
            .max(params.min_run)
            .max(2 * self.longest_warm_run)
    }
}

/// The flatline detector.
pub struct Flatline {
    params: PerKind<FlatlineParams>,
    state: PointTable<State>,
}

impl Flatline {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<FlatlineParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
        }
    }
}

impl Detector for Flatline {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for (p, st) in frame.good_analog().filter(|(_, st)| st.n >= 2) {
            let s = self.state.get_or_insert(p, State::default);
            let d = st.delta.abs();
            if s.seen < params.warmup_samples {
                s.seen += 1;
                s.abs_delta_sum += d;
                s.values.push(st.value);
                s.sq_delta_sum += d * d;
                if d > 0.0 && (s.quantum == 0.0 || d < s.quantum) {
                    s.quantum = d;
                }
                if d == 0.0 {
                    s.still += 1;
                    s.warm_run += 1;
                    s.longest_warm_run = s.longest_warm_run.max(s.warm_run);
                } else {
                    s.warm_run = 0;
                }
                if s.seen == params.warmup_samples {
                    s.eps = params.tolerance * s.abs_delta_sum / s.seen as f64;
                    // Laplace-smoothed chance that a sample does not move.
                    let p_still = (s.still as f64 + 1.0) / (s.seen as f64 + 2.0);
                    let values = std::mem::take(&mut s.values);
                    s.p0 = p_still.max(mode_frequency(values));
                    s.eligible = s.p0 <= 0.5 && s.abs_delta_sum > 0.0;
                    s.sigma = (s.sq_delta_sum / (2.0 * s.seen as f64)).sqrt();
                    s.needed_at = s.quantum;
                    s.needed = s.needed(s.quantum, params);
                }
                continue;
            }
            if !s.eligible {
                continue;
            }
            // As `ewma_z`'s runs: while an open alert names the point (its baseline
            // frozen) the run needed alone keeps it open, and runs that began then are
            // not precedents (an attack's own freezes never excuse it).
            let learned = st.frozen == 0;
            let mut ended = None;
            if d <= s.eps {
                if s.run == 0 {
                    s.run_start = st.prev_ts;
                    s.run_learned = learned;
                }
                s.run += 1;
            } else {
                ended = (s.run > 0 && s.run_learned).then_some(f64::from(s.run));
                s.run = 0;
            }
            if params.precedent_samples > 0 {
                s.precedent.count(ended, params.precedent_samples);
            }
            if s.run == s.needed {
                s.rounded(st.window().collect(), params);
            }
            if s.run < s.needed {
                continue;
            }
            let precedent = if learned { s.precedent.second() } else { 0.0 };
            if f64::from(s.run) > precedent {
                let metric = &frame.registry.point(p).metric;
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    f64::from(s.run) / f64::from(s.needed),
                    1.0,
                    Severity::Medium,
                    attack::SPOOF_REPORTING,
                    Words::made(
                        format!(
                            "{metric} has stayed at {} for {} samples ({}), though it moved on {:.0}% of samples while learned: its noise vanished",
                            sig(st.value),
                            s.run,
                            format_duration(frame.ts - s.run_start),
                            100.0 * (1.0 - s.p0)
                        ),
                        json!({"value": st.value, "run_samples": s.run, "needed_samples": s.needed,
                               "learned_p_unchanged": s.p0, "tolerance": s.eps, "precedent_run": precedent,
                               "recent": st.window().collect::<Vec<_>>()}),
                    ),
                ));
            }
        }
    }
}

/// The error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// Frequency of the most common value (1 / n for all-distinct values).
fn mode_frequency(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 1.0;
    }
    values.sort_by(f64::total_cmp);
    let (mut best, mut run) = (1, 1);
    for w in values.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 1 };
        best = best.max(run);
    }
    best as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> Flatline {
        Flatline::new(PerKind::from_fn(|_| FlatlineParams::default()))
    }

    #[test]
    fn a_still_run_no_longer_than_two_lately_is_not_news_again() {
        // A point that idles: after its warm-up it holds still for 60 values every 200.
        // The first two holds are news (one never excuses the next), the next two as
        // long are not, and a hold of 150 is once it outlasts them. Without the
        // precedent every hold is news.
        let mut series = noisy(1_600, 20.0, 1.0, 12);
        let holds = [(400, 60), (600, 60), (800, 60), (1_000, 60), (1_200, 150)];
        for &(at, len) in &holds {
            let v = series[at];
            series[at..at + len].fill(v);
        }
        let reported = |precedent_samples, freeze_after_finding| {
            let mut h = Harness::new();
            h.freeze_after_finding = freeze_after_finding;
            let mut d = Flatline::new(PerKind::from_fn(|_| FlatlineParams {
                precedent_samples,
                ..FlatlineParams::default()
            }));
            h.run(&mut d, "chiller", "supply_temp_c", &series);
            holds
                .iter()
                .map(|&(at, len)| {
                    h.findings
                        .iter()
                        .map(|(i, _)| *i)
                        .find(|i| (at..at + len).contains(i))
                })
                .collect::<Vec<_>>()
        };
        // 59 unchanged moves in a hold of 60: the fifth is news at its 60th. The same
        // when each finding's alert freezes the point for a while: a reported hold
        // began before its alert, so it is a precedent all the same.
        for freeze in [0, 30] {
            assert_eq!(
                reported(600, freeze),
                vec![Some(410), Some(610), None, None, Some(1_260)]
            );
        }
        assert!(reported(0, 0).iter().all(Option::is_some));
    }

    #[test]
    fn readings_rounded_coarser_than_learned_are_no_flatline_but_a_freeze_still_is() {
        // Learned at full resolution; then the recorder rounds to whole units, four
        // times the noise: the value stays put for long stretches by rounding alone.
        let mut series = noisy(20_000, 12.3, 0.25, 9);
        for v in &mut series[600..] {
            *v = v.round();
        }
        let onset = 16_000;
        for v in &mut series[onset..] {
            *v = 12.0;
        }
        // A sensor of the same resolution frozen at a round number is a freeze at once.
        let mut round = noisy(2_000, 12.3, 0.25, 10);
        for v in &mut round[1_000..] {
            *v = 12.0;
        }
        let mut h = Harness::new();
        h.run(&mut det(), "chiller", "return_temp_c", &round);
        assert_eq!(h.count_before(1_000), 0);
        assert!(h.first_after(1_000).is_some_and(|at| at < 1_030));
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "return_temp_c", &series);
        assert_eq!(h.count_before(onset), 0, "rounding is not a freeze");
        assert!(h.first_after(onset).is_some(), "a long freeze still is");
    }

    #[test]
    fn frozen_sensor_detected_quickly_and_clean_noise_quiet() {
        let mut series = noisy(5000, 12.0, 0.2, 5);
        let onset = 4000;
        let frozen = series[onset - 1];
        for v in &mut series[onset..4500] {
            *v = frozen;
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "return_temp_c", &series);
        assert_eq!(h.count_before(onset), 0);
        let at = h.first_after(onset).expect("flatline detected");
        assert!(at - onset <= 30, "after {} samples", at - onset);
        assert!(
            h.first_after(4502).is_none(),
            "clears when the noise is back"
        );
    }

    #[test]
    fn quantised_slow_sensor_needs_a_longer_run() {
        // A 0.1-resolution sensor that changes on only ~40% of samples.
        let raw = noisy(3000, 20.0, 0.05, 6);
        let series: Vec<f64> = raw.iter().map(|v| (v * 10.0).round() / 10.0).collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "env", "room_temp_c", &series);
        assert_eq!(
            h.findings.len(),
            0,
            "chance runs of a coarse sensor are not flatlines"
        );
    }

    #[test]
    fn runs_at_the_most_common_reading_are_not_flatlines() {
        // σ just above the resolution: the middle reading comes up a third of the time.
        let raw = noisy(7 * 86_400, 545.0, 0.12, 13);
        let series: Vec<f64> = raw.iter().map(|v| (v * 10.0).round() / 10.0).collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "battery_voltage_v", &series);
        assert_eq!(
            h.findings.len(),
            0,
            "a week of a coarse sensor, no flatline"
        );
    }

    #[test]
    fn a_slow_signal_read_in_whole_units_is_not_a_flatline() {
        // A UPS's output voltage around 399.6 V drifting slowly, read in whole volts (as
        // UPS-MIB reports it): it sits on one step for runs of tens of samples, though
        // it moves on more than half of the warm-up's samples taken one by one.
        // Learned with the mean at a step's edge (399.5 V); from sample 600 it wanders
        // to the steps' centres and back every hour; the noise is 0.4 V. (With this
        // seed the warm-up's commonest value is just under half the samples, so the
        // point is watched; the previous rule fired here by chance.)
        let noise = noisy(20_000, 0.0, 0.4, 21);
        let series: Vec<f64> = noise
            .iter()
            .enumerate()
            .map(|(t, n)| {
                let phase = t.saturating_sub(600) as f64 * std::f64::consts::TAU / 3_600.0;
                (399.5 + 0.5 * phase.sin() + n).round()
            })
            .collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "output_voltage_v", &series);
        assert!(h.findings.is_empty(), "{} findings", h.findings.len());
        // Frozen for good, it is still found.
        let mut frozen = series.clone();
        let v = frozen[15_000];
        for x in &mut frozen[15_000..] {
            *x = v;
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "output_voltage_v", &frozen);
        assert!(h.first_after(15_000).is_some());
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn naturally_still_points_are_skipped() {
        let mut series = vec![5.0; 400];
        series.extend(vec![5.5; 400]);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "other", "level", &series);
        assert!(h.findings.is_empty());
    }
}
