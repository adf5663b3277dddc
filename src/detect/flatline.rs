//! **flatline**: a live analog sensor whose noise vanished.
//!
//! - During a warm-up the detector learns how often the point's value does *not* change
//!   from one sample to the next (`p0`, with |delta| below a small fraction of the usual
//!   |delta| counting as unchanged). Points that were mostly still (p0 > 0.5) are skipped.
//! - For a quantised sensor the chance of staying put depends on the value: it is
//!   highest at the most common reading. So the per-sample chance used is the larger of
//!   `p0` and the frequency of the most common warm-up value.
//! - The run length that chance would produce with probability below `false_alarm_prob`
//!   is `ln(false_alarm_prob) / ln(p)` samples; a run of unchanged values that long is a
//!   finding, which persists while the value stays frozen.
//! - Learned statistics are frozen after the warm-up, so a frozen value cannot teach the
//!   detector that frozen is normal.
//!
//! Blind spots: a spoofer who adds fake noise (see `replay` for recorded noise and the
//! physics detectors for made-up noise); sensors that were quiet in their warm-up.

use super::{point_finding, sig, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity, Ts};
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
        }
    }
}

#[derive(Debug, Default)]
struct State {
    seen: u64,
    still: u64,
    values: Vec<f64>,
    abs_delta_sum: f64,
    eps: f64,
    p0: f64,
    needed: u32,
    eligible: bool,
    run: u32,
    run_start: Ts,
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
                if d == 0.0 {
                    s.still += 1;
                }
                if s.seen == params.warmup_samples {
                    s.eps = params.tolerance * s.abs_delta_sum / s.seen as f64;
                    // Laplace-smoothed chance that a sample does not move.
                    let p_still = (s.still as f64 + 1.0) / (s.seen as f64 + 2.0);
                    let values = std::mem::take(&mut s.values);
                    s.p0 = p_still.max(mode_frequency(values));
                    s.eligible = s.p0 <= 0.5 && s.abs_delta_sum > 0.0;
                    let run = params.false_alarm_prob.ln() / s.p0.ln();
                    s.needed = (run.ceil() as u32).max(params.min_run);
                }
                continue;
            }
            if !s.eligible {
                continue;
            }
            if d <= s.eps {
                if s.run == 0 {
                    s.run_start = st.prev_ts;
                }
                s.run += 1;
            } else {
                s.run = 0;
            }
            if s.run >= s.needed {
                let metric = &frame.registry.point(p).metric;
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    f64::from(s.run) / f64::from(s.needed),
                    1.0,
                    Severity::Medium,
                    attack::SPOOF_REPORTING,
                    format!(
                        "{metric} has stayed at {} for {} samples ({}), though it moved on {:.0}% of samples while learned: its noise vanished",
                        sig(st.value),
                        s.run,
                        format_duration(frame.ts - s.run_start),
                        100.0 * (1.0 - s.p0)
                    ),
                    json!({"value": st.value, "run_samples": s.run, "needed_samples": s.needed,
                           "learned_p_unchanged": s.p0, "tolerance": s.eps,
                           "recent": st.window().collect::<Vec<_>>()}),
                ));
            }
        }
    }
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
    fn naturally_still_points_are_skipped() {
        let mut series = vec![5.0; 400];
        series.extend(vec![5.5; 400]);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "other", "level", &series);
        assert!(h.findings.is_empty());
    }
}
