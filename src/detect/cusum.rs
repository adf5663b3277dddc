//! **cusum**: slow drifts ("boiling frog" manipulation) that a tracking baseline follows.
//!
//! - Samples are averaged in blocks; a reference level *and trend* (Holt) follow the
//!   block means, the trend slowly (ten times the level's half-life), with each step
//!   clipped at 3σ. While a drift builds up the reference only extrapolates its trend,
//!   so the drift is not absorbed; after `rebaseline_blocks` in alarm the new level is
//!   accepted, and once an alarm ends the point is judged afresh from its present level
//!   (the sums it leaves would carry its drift into the next alarm). Following the trend
//!   keeps daily load profiles from looking like drifts.
//! - σ is the long-run spread of block means around the reference's one-block-ahead
//!   prediction, learned online; so is how much autocorrelation inflates the variance of
//!   a sum of 16 consecutive deviations, and z is divided by the square root of that
//!   inflation, so a wandering signal (grid frequency, a room's slow thermal swings) does
//!   not look like a drift.
//! - Two-sided CUSUM on the scaled z: `S⁺ = max(0, S⁺ + z − k)`, `S⁻ = max(0, S⁻ − z − k)`;
//!   `max(S⁺, S⁻) >= threshold` is a finding. σ and the inflation stop learning while S is
//!   above half the threshold.
//!
//! Blind spots: drifts slower than the reference's adaptation, drifts within a signal's
//! normal swing (daily load profiles); the physics detectors see those through the
//! quantities that must follow. Nothing is judged before the warm-up (2 h at 1 Hz).

use super::{
    point_finding, sig,
    tap::{Rule, Tap},
    Detector, PerKind, PointTable,
};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity, Ts, Words};
use crate::time::format_ts;
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "cusum";

/// Parameters of the CUSUM detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CusumParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Samples averaged into one block.
    pub block_samples: u32,
    /// Allowance k, in (decorrelated) standard deviations.
    pub k: f64,
    /// Decision threshold h.
    pub threshold: f64,
    /// Blocks used to learn the reference, σ and the variance inflation before judging.
    pub warmup_blocks: u32,
    /// Half-life of the reference level, in blocks (its trend's is ten times longer).
    pub reference_halflife_blocks: f64,
    /// Half-life of the σ and variance-inflation estimates, in blocks.
    pub spread_halflife_blocks: f64,
    /// After this many blocks in alarm, the new level is accepted as the baseline (a
    /// lasting change of operating point then gives one alert, not an endless one).
    pub rebaseline_blocks: u32,
}

impl CusumParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.block_samples >= 1,
            "block_samples",
            "must be at least 1",
        )?;
        rule(self.k >= 0.0, "k", "must not be negative")?;
        rule(self.threshold > 0.0, "threshold", "must be greater than 0")?;
        rule(
            self.warmup_blocks >= 2,
            "warmup_blocks",
            "must be at least 2",
        )?;
        rule(
            self.reference_halflife_blocks >= 1.0,
            "reference_halflife_blocks",
            "must be at least 1",
        )?;
        Ok(())
    }
}

impl Default for CusumParams {
    fn default() -> Self {
        Self {
            enabled: true,
            block_samples: 30,
            // k = 1 ignores wander of up to one (decorrelated) σ: minutes-long load swings
            // are normal. With h = 15 an in-control series essentially never alarms
            // (Siegmund: ~e^32 blocks), and a drift of δσ is caught in ~15/(δ−1) blocks.
            k: 1.0,
            threshold: 15.0,
            warmup_blocks: 240,
            reference_halflife_blocks: 30.0,
            spread_halflife_blocks: 960.0,
            rebaseline_blocks: 120,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sum: f64,
    count: u32,
    blocks: u32,
    reference: f64,
    slope: f64,
    var: f64,
    /// The last `VIF_BLOCKS` z-scores and their sum.
    recent_z: std::collections::VecDeque<f64>,
    recent_sum: f64,
    /// Learned variance of a sum of `VIF_BLOCKS` consecutive z divided by their number:
    /// the variance inflation autocorrelation causes (1 for independent blocks).
    vif: f64,
    s_hi: f64,
    s_lo: f64,
    alarm_blocks: u32,
    relearn: u32,
    since: Ts,
    since_ref: f64,
}

/// Blocks over which the variance inflation of correlated block means is measured
/// (8 minutes at 1 Hz with 30-sample blocks).
const VIF_BLOCKS: usize = 16;

/// Blocks averaged into the new reference after a rebaseline.
const RELEARN_BLOCKS: u32 = 10;

fn alpha(halflife: f64) -> f64 {
    1.0 - 0.5f64.powf(1.0 / halflife.max(1.0))
}

/// The CUSUM detector.
pub struct Cusum {
    params: PerKind<CusumParams>,
    state: PointTable<State>,
    tap: Option<Tap>,
}

impl Cusum {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<CusumParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
            tap: None,
        }
    }

    /// Records every block's `max(S⁺, S⁻)` in `tap` (see [`crate::detect::tap`]); the
    /// sums are then not capped, so the statistic does not depend on the threshold.
    pub fn tapped(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }
}

impl Detector for Cusum {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for (p, st) in frame.good_analog() {
            let s = self.state.get_or_insert(p, State::default);
            s.sum += st.value;
            s.count += 1;
            if s.count < params.block_samples.max(1) {
                continue;
            }
            let block = s.sum / f64::from(s.count);
            s.sum = 0.0;
            s.count = 0;
            s.blocks += 1;
            if s.blocks == 1 {
                s.reference = block;
                continue;
            }
            let res = if st.resolution.is_finite() {
                st.resolution
            } else {
                0.0
            };
            let floor = (res / f64::from(params.block_samples.max(1)).sqrt())
                .max(1e-9 * s.reference.abs())
                .max(1e-12);
            let sigma = s.var.sqrt().max(floor);
            let pred = s.reference + s.slope;
            let d = block - pred;
            let z = d / sigma;
            let warm = s.blocks <= params.warmup_blocks.max(2);
            let n = f64::from(s.blocks);
            // During the warm-up the weights start at 1/n so the first blocks count fully.
            let (a_ref, a_spread) = if warm {
                (
                    alpha(params.reference_halflife_blocks).max(1.0 / n),
                    (1.0 / n).max(alpha(params.spread_halflife_blocks)),
                )
            } else {
                (
                    alpha(params.reference_halflife_blocks),
                    alpha(params.spread_halflife_blocks),
                )
            };
            let learning = warm || s.s_hi.max(s.s_lo) < params.threshold / 2.0;
            let clipped = if warm {
                d
            } else {
                d.clamp(-3.0 * sigma, 3.0 * sigma)
            };
            // While a drift builds up nothing is learned: the attack must not become
            // the baseline (a lasting new level is accepted by the rebaseline below).
            if learning {
                s.var += a_spread * (clipped * clipped - s.var);
                let zc = z.clamp(-3.0, 3.0);
                s.recent_z.push_back(zc);
                s.recent_sum += zc;
                if s.recent_z.len() > VIF_BLOCKS {
                    s.recent_sum -= s.recent_z.pop_front().unwrap_or(0.0);
                }
                if s.recent_z.len() == VIF_BLOCKS {
                    let inflation = s.recent_sum * s.recent_sum / VIF_BLOCKS as f64;
                    s.vif += a_spread.max(1.0 / n) * (inflation - s.vif);
                }
                s.reference = pred + a_ref * clipped;
                s.slope += 0.1 * alpha(params.reference_halflife_blocks) * clipped;
            } else {
                s.reference = pred;
            }
            if warm {
                continue;
            }
            if s.relearn > 0 {
                // After a rebaseline: the reference is the plain mean of a few blocks.
                s.relearn -= 1;
                let m = f64::from(RELEARN_BLOCKS - s.relearn);
                s.reference += (block - s.reference) / m;
                continue;
            }
            let vif = s.vif.clamp(1.0, 100.0);
            let ze = z / vif.sqrt();
            if s.s_hi == 0.0 && s.s_lo == 0.0 {
                s.since = frame.ts;
                s.since_ref = pred;
            }
            // Capping the sums a little above the threshold bounds how long an alarm
            // outlives its cause (the sums fall by k per block once z is back near 0).
            let cap = if self.tap.is_some() {
                f64::INFINITY
            } else {
                1.5 * params.threshold
            };
            s.s_hi = (s.s_hi + ze - params.k).clamp(0.0, cap);
            s.s_lo = (s.s_lo - ze - params.k).clamp(0.0, cap);
            let score = s.s_hi.max(s.s_lo);
            if let Some(tap) = &self.tap {
                tap.record(Rule::Cusum, frame.kind(), p, frame.ts, Some(score), 1);
            }
            if score < params.threshold && s.alarm_blocks > 0 {
                // An alarm ended: its drift was reported, and the sums it leaves (up to
                // the threshold, with learning stopped above half of it) would carry it
                // into the next alarm hours later. The point is judged afresh from where
                // it is now, its trend kept.
                s.reference = block;
                (s.s_hi, s.s_lo, s.alarm_blocks, s.relearn) = (0.0, 0.0, 0, RELEARN_BLOCKS - 1);
            } else if score < params.threshold {
                s.alarm_blocks = 0;
            } else if s.alarm_blocks >= params.rebaseline_blocks {
                s.reference = block;
                s.slope = 0.0;
                (s.s_hi, s.s_lo, s.alarm_blocks, s.relearn) = (0.0, 0.0, 0, RELEARN_BLOCKS - 1);
                continue;
            } else {
                s.alarm_blocks += 1;
                let metric = &frame.registry.point(p).metric;
                let dir = if s.s_hi >= s.s_lo { "up" } else { "down" };
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    score,
                    params.threshold,
                    Severity::Medium,
                    attack::for_process_change(metric, st.class),
                    Words::made(
                        format!(
                            "{metric} has drifted {dir} from {} to {} since {}, beyond its learned normal swing (σ {} of {}-sample means)",
                            sig(s.since_ref),
                            sig(block),
                            format_ts(s.since),
                            sig(sigma),
                            params.block_samples
                        ),
                        json!({"reference_at_start": s.since_ref, "block_mean": block, "block_sigma": sigma,
                               "variance_inflation": vif, "s_hi": s.s_hi, "s_lo": s.s_lo, "drift_since": format_ts(s.since)}),
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> Cusum {
        Cusum::new(PerKind::from_fn(|_| CusumParams::default()))
    }

    #[test]
    fn slow_ramp_is_caught_and_flat_noise_is_not() {
        // 3 h of 1 Hz flow with noise, then a decay of 10 % over 2 hours, then a new level.
        let n = 9 * 3600;
        let mut series = noisy(n, 50.0, 0.5, 3);
        let onset = 3 * 3600;
        for (i, v) in series.iter_mut().enumerate().skip(onset) {
            *v -= 5.0 * ((i - onset) as f64 / (2.0 * 3600.0)).min(1.0);
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "flow_lps", &series);
        assert_eq!(h.count_before(onset), 0, "no alert before the drift");
        let at = h.first_after(onset).expect("drift detected");
        // The ramp reaches 1 σ of the raw noise after 12 minutes; caught within 30.
        assert!(at - onset < 30 * 60, "detected after {} s", at - onset);
        assert!(h.findings[0].1.reason().contains("down"));
        // The level stays down: after the rebaseline period the alarm stops for good.
        let last = h.findings.last().unwrap().0;
        assert!(last < n - 3600, "alarm ended at {last}");
    }

    #[test]
    fn an_ended_alarm_does_not_carry_its_drift_into_another_one() {
        // A room's supply air after a thermal upset: 20 minutes far up, then settled a
        // little above where it was. When the alarm ends its sums are still near the
        // threshold, learning stopped above half of it; they once hovered there for an
        // hour on the simulator's CRAH and crossed again: a second alert "since" the
        // old upset. Now the point is judged afresh from where it is when one ends.
        let n = 8 * 3600;
        let mut series = noisy(n, 18.6, 0.5, 7);
        let (upset, settled) = (3 * 3600, 3 * 3600 + 20 * 60);
        for (i, v) in series.iter_mut().enumerate().skip(upset) {
            *v += if i < settled { 1.0 } else { 0.073 };
        }
        let mut h = Harness::new();
        let mut d = det();
        let mut ended = None;
        for (i, &v) in series.iter().enumerate() {
            h.feed(&mut d, "crah", "supply_air_temp_c", v);
            let last = h.findings.last().map(|f| f.0);
            if ended.is_none() && last.is_some_and(|at| i == at + 30) {
                ended = Some(i);
                let s = d.state.get(0).expect("judged");
                assert_eq!((s.s_hi, s.s_lo), (0.0, 0.0), "the sums start again");
                assert!((s.reference - 18.673).abs() < 0.3, "{}", s.reference);
            }
        }
        assert_eq!(h.count_before(upset), 0);
        let at: Vec<usize> = h.findings.iter().map(|f| f.0).collect();
        assert!(at[0] < settled && ended.is_some(), "{at:?}");
        // A finding every block while in alarm: a gap of more than one is another.
        let alarms = 1 + at.windows(2).filter(|w| w[1] - w[0] > 30).count();
        assert_eq!(alarms, 1, "{at:?}");
    }

    #[test]
    fn wandering_and_daily_signals_stay_quiet() {
        use rand::{rngs::StdRng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = StdRng::seed_from_u64(11);
        let step = Normal::new(0.0, 0.004).unwrap();
        let mut f = 50.0;
        let freq: Vec<f64> = (0..24 * 3600)
            .map(|_| {
                f += -0.002 * (f - 50.0) + step.sample(&mut rng);
                f
            })
            .collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "grid_meter", "frequency_hz", &freq);
        assert_eq!(h.findings.len(), 0, "AR(1) wander is not a drift");
        let noise = noisy(24 * 3600, 0.0, 4.0, 12);
        let load: Vec<f64> = noise
            .iter()
            .enumerate()
            .map(|(i, n)| {
                800.0 * (1.0 + 0.12 * (i as f64 / 86_400.0 * std::f64::consts::TAU).sin()) + n
            })
            .collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "pdu", "it_load_kw", &load);
        assert_eq!(h.findings.len(), 0, "a daily profile is not a drift");
    }

    #[test]
    fn long_clean_noise_stays_quiet() {
        let series = noisy(24 * 3600, 7.0, 0.05, 4);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &series);
        assert_eq!(h.findings.len(), 0);
    }
}
