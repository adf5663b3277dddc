//! **seasonal**: a reading far from what its point's daily or weekly cycle predicts for
//! this time.
//!
//! Loads, cooling and grid draw follow the clock: a night at the afternoon's level, a
//! weekday that runs like a Sunday, a chiller working at 3 am as at 3 pm stay inside
//! the range the point spans every day, so `ewma_z`, `extreme` and the limits see
//! nothing. This rule learns each point's cycle and judges the reading against it
//! (Holt–Winters' additive decomposition, learned online):
//!
//! - each cycle (`periods`: a day and a week) cuts event time into clock-aligned slots of
//!   `slot` (5 minutes: 288 a day, 2,016 a week); a slot's profile is the mean of its
//!   readings on each pass, less the cycle's level, averaged over its last passes
//!   (weights 1/n, settling at 1/4); a point keeps 2,304 slots, about 21 kB;
//! - the level follows the point between passes (half-life an eighth of the period, 3
//!   hours of a day), so a load that grew since yesterday is not news at every slot;
//! - a reading's residual is its value less level and profile, in units of the cycle's
//!   scale (the mean absolute residual × 1.25, about σ on Gaussian noise; half-life one
//!   period); the cycle whose scale is the smaller judges;
//! - a cycle judges only once it **explains** the point: its scale at most `explained`
//!   (0.5) of the point's own spread about its mean (so the cycle accounts for at least
//!   three quarters of the variance); a point with no cycle is left to the other rules;
//! - `persist_samples` (6) readings in a row at or past `threshold` (5) are a finding,
//!   each reading of the run after that too, if the run also beats its **precedent**
//!   (as in `ewma_z`: the second strongest run among the point's last
//!   `precedent_samples` readings learned; a point whose residuals burst is news past
//!   its bursts, and one excursion never excuses the next; while an open alert holds
//!   the point the threshold alone keeps it open);
//! - nothing is learned while an open alert holds the point (the feature store bounds
//!   that by `freeze_samples`); a reading past the threshold is learned by the level
//!   alone, its step clipped at 3 scales (Huber), so a level that lasts ends its alert
//!   and an attacker walks the level no faster than that; the profile and the scales
//!   learn only readings within it.
//!
//! A point is judged once its longest cycle has been seen twice (a daily cycle cannot
//! know a weekend before a week has shown one): two weeks with the defaults, so no
//! simulated capture shorter than that, and no SKAB run, is judged by it.
//!
//! Blind spots: points without a cycle (see `ewma_z`, `timescale`); anything within the
//! cycle's residual noise; changes that recur at the same hour (they become the
//! profile within four passes); lone readings (see `extreme`); the first two weeks.
//! Slots are UTC: a site's daylight-saving change shifts its cycle by an hour, which
//! the profiles relearn within four passes (the ramps may be news on the first days).

use super::{
    point_finding, precedent::Recent, sig, statistical_severity, Detector, PerKind, PointTable,
};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Ts, Words};
use crate::time::{format_duration, serde_duration};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "seasonal";

/// Passes a slot's profile averages over (its weight settles at 1/PASSES).
const PASSES: u8 = 4;
/// Residuals the level follows through a reading past the threshold are clipped here,
/// in scales.
const CLIP: f64 = 3.0;
/// Mean absolute deviation to σ on Gaussian noise (√(π/2)).
const MAD_TO_SIGMA: f64 = 1.253_314_137_315_500_3;
/// Most slots a cycle may have (memory per point).
const MAX_SLOTS: i64 = 10_080;

/// Parameters of the seasonal detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeasonalParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// The cycles learned (e.g. `["1d", "7d"]`).
    #[serde(deserialize_with = "serde_duration::deserialize_vec")]
    pub periods: Vec<i64>,
    /// The width of a cycle's slots (e.g. `"5m"`).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub slot: i64,
    /// |residual| in scales at or past which a reading counts.
    pub threshold: f64,
    /// Readings in a row past the threshold needed for a finding.
    pub persist_samples: u32,
    /// Largest share of the point's spread a cycle may leave for it to judge.
    pub explained: f64,
    /// Readings over which a run's precedent is remembered (0: no precedent).
    pub precedent_samples: u32,
}

impl SeasonalParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.slot > 0, "slot", "must be longer than 0")?;
        rule(
            self.periods
                .iter()
                .all(|&p| p > 0 && p % self.slot == 0 && p / self.slot <= MAX_SLOTS),
            "periods",
            "each must be a whole number of slots, at most 10080 of them",
        )?;
        rule(self.periods.len() <= 4, "periods", "must be at most 4")?;
        rule(self.threshold > 0.0, "threshold", "must be greater than 0")?;
        rule(
            (1..=1000).contains(&self.persist_samples),
            "persist_samples",
            "must be 1 to 1000",
        )?;
        rule(
            self.explained > 0.0 && self.explained <= 1.0,
            "explained",
            "must be greater than 0 and at most 1",
        )?;
        Ok(())
    }
}

impl Default for SeasonalParams {
    fn default() -> Self {
        Self {
            enabled: true,
            periods: vec![86_400_000, 7 * 86_400_000],
            slot: 300_000,
            threshold: 5.0,
            persist_samples: 6,
            explained: 0.5,
            precedent_samples: 2016,
        }
    }
}

/// An exponentially weighted mean whose weight is 1/n until it settles at `alpha`; a
/// value that would make it overflow is not taken (readings are written by attackers
/// too: 1e308 then −1e308 must not leave a point's state infinite, silenced for good).
#[derive(Default)]
struct Ewm {
    value: f64,
    n: u64,
}

impl Ewm {
    fn push(&mut self, x: f64, alpha: f64) {
        let a = (1.0 / (self.n + 1) as f64).max(alpha);
        let next = self.value + a * (x - self.value);
        if next.is_finite() {
            self.value = next;
            self.n += 1;
        }
    }
}

/// The weight of a half-life of `halflife_ms` for a reading `interval_ms` after the last.
fn alpha(interval_ms: f64, halflife_ms: f64) -> f64 {
    1.0 - 0.5f64.powf(interval_ms.max(0.0) / halflife_ms)
}

/// One cycle of one point.
struct Cycle {
    period: i64,
    /// Each slot's profile (value less level) and the passes it learned (saturating).
    profile: Vec<f64>,
    passes: Vec<u8>,
    /// The profile and passes of the slot of the pass under way, read when it starts: a
    /// point's readings fall in that slot for a whole pass, and a point's slots (a week
    /// of them) are far apart in memory from every other point's, so reading them at
    /// each reading of thousands of points is a cache miss each time.
    now: (f64, u8),
    /// The level the profile is taken about.
    level: f64,
    /// Mean absolute residual.
    scale: Ewm,
    /// When the scale took its first residual.
    scale_from: Option<Ts>,
    /// The pass under way (event time / slot), its sum and count of readings less level,
    /// and the weights of the level and the scale for its readings (set as it starts,
    /// from the point's interval then: a power per pass, not per reading).
    pass: i64,
    sum: f64,
    count: u32,
    weights: (f64, f64),
}

impl Cycle {
    fn new(period: i64, slot: i64) -> Self {
        let slots = (period / slot) as usize;
        Self {
            period,
            profile: vec![0.0; slots],
            passes: vec![0; slots],
            now: (0.0, 0),
            level: 0.0,
            scale: Ewm::default(),
            scale_from: None,
            pass: i64::MIN,
            sum: 0.0,
            count: 0,
            weights: (0.0, 0.0),
        }
    }

    /// The slot of a pass (slots are clock-aligned: the period is a whole number of them).
    fn slot(&self, pass: i64) -> usize {
        pass.rem_euclid(self.profile.len() as i64) as usize
    }

    /// A slot's profile and passes.
    fn at(&self, pass: i64) -> (f64, u8) {
        if pass == self.pass {
            return self.now;
        }
        let s = self.slot(pass);
        (self.profile[s], self.passes[s])
    }

    /// What the cycle predicts in `pass` at `ts` and its scale, if it judges there (a
    /// slot on its second pass, a scale that has seen a whole period).
    fn predict(&self, ts: Ts, pass: i64) -> Option<(f64, f64)> {
        let (profile, passes) = self.at(pass);
        let ready = passes >= 2
            && self
                .scale_from
                .is_some_and(|from| ts.saturating_sub(from) >= self.period);
        ready.then_some((self.level + profile, self.scale.value))
    }

    /// Closes the pass under way into its slot's profile and starts `pass`.
    fn roll(&mut self, pass: i64, interval_ms: f64) {
        if self.count > 0 {
            let s = self.slot(self.pass);
            let mean = self.sum / f64::from(self.count);
            let (profile, n) = self.now;
            let next = if n == 0 {
                mean
            } else {
                let w = 1.0 / f64::from(n.min(PASSES - 1) + 1);
                profile + w * (mean - profile)
            };
            if next.is_finite() {
                self.profile[s] = next;
                self.passes[s] = n.saturating_add(1);
            }
        }
        let s = self.slot(pass);
        self.now = (self.profile[s], self.passes[s]);
        self.pass = pass;
        self.sum = 0.0;
        self.count = 0;
        let period = self.period as f64;
        self.weights = (alpha(interval_ms, period / 8.0), alpha(interval_ms, period));
    }

    /// Learns a reading `x` at `ts`, in `pass`; unless `normal` (within the threshold)
    /// only the level follows it, clipped.
    fn learn(&mut self, ts: Ts, pass: i64, x: f64, interval_ms: f64, normal: bool) {
        if pass != self.pass {
            self.roll(pass, interval_ms);
        }
        let (profile, passes) = self.now;
        if passes > 0 {
            let r = x - self.level - profile;
            if !(MAD_TO_SIGMA * r).is_finite() {
                // Past anything an f64 residual can hold: nothing to learn from it.
                return;
            }
            let step = if self.scale.n > 0 {
                let c = CLIP * self.scale.value;
                r.clamp(-c, c)
            } else {
                r
            };
            self.level = Some(self.level + self.weights.0 * step)
                .filter(|l| l.is_finite())
                .unwrap_or(self.level);
            if normal {
                self.scale.push(MAD_TO_SIGMA * r.abs(), self.weights.1);
                self.scale_from.get_or_insert(ts);
            }
        }
        if normal && (self.sum + (x - self.level)).is_finite() {
            self.sum += x - self.level;
            self.count += 1;
        }
    }
}

/// One point's cycles, spread and runs.
struct Point {
    cycles: Vec<Cycle>,
    /// The point's mean and mean absolute deviation about it (half-life the longest
    /// period).
    mean: Ewm,
    spread: Ewm,
    recent: Recent,
    /// The point's first reading.
    since: Ts,
    /// The pass of its last normal reading, and the spread's weight then.
    pass: i64,
    weight: f64,
}

/// The seasonal detector.
pub struct Seasonal {
    params: PerKind<SeasonalParams>,
    points: PointTable<Point>,
}

impl Seasonal {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<SeasonalParams>) -> Self {
        Self {
            params,
            points: PointTable::default(),
        }
    }
}

impl Detector for Seasonal {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled || params.periods.is_empty() {
            return;
        }
        for (p, st) in frame.good_analog() {
            let pt = self.points.get_or_insert(p, || Point {
                cycles: params
                    .periods
                    .iter()
                    .map(|&period| Cycle::new(period, params.slot))
                    .collect(),
                mean: Ewm::default(),
                spread: Ewm::default(),
                recent: Recent::default(),
                since: st.good_ts,
                pass: i64::MIN,
                weight: 0.0,
            });
            let (ts, x) = (st.good_ts, st.value);
            let pass = ts.div_euclid(params.slot);
            let longest = params.periods.iter().copied().max().unwrap_or(1);
            let floor = if st.resolution.is_finite() {
                st.resolution
            } else {
                0.0
            }
            .max(1e-12);
            // The cycle that explains the point best, if any explains it, once every cycle
            // has been seen twice (a daily cycle cannot know a weekend before the week has
            // shown one).
            let spread = pt.spread.value;
            let judge = pt
                .cycles
                .iter()
                .filter(|_| ts.saturating_sub(pt.since) >= longest.saturating_mul(2))
                .filter_map(|c| c.predict(ts, pass).map(|(at, sc)| (c, at, sc)))
                .filter(|&(_, _, sc)| sc <= params.explained * spread)
                .min_by(|a, b| a.2.total_cmp(&b.2));
            let z = judge.map(|(_, at, sc)| (x - at) / sc.max(floor));
            let over = z.is_some_and(|z| z.abs() >= params.threshold);
            let learned = st.frozen == 0;
            let mut precedent = 0.0;
            let finding = match (judge, z) {
                (Some((c, at, sc)), Some(z)) => {
                    // As in `ewma_z`: a run must also beat its precedent.
                    let found;
                    (found, precedent) = pt.recent.judge(
                        z,
                        params.threshold,
                        params.persist_samples,
                        params.precedent_samples,
                        learned,
                    );
                    (found && pt.recent.run >= params.persist_samples)
                        .then(|| (c.period, c.level, at, sc.max(floor), z))
                }
                _ => {
                    pt.recent.run = 0;
                    None
                }
            };
            // Nothing is learned while an open alert holds the point (the feature store
            // bounds that: `freeze_samples`); the level alone follows a reading past the
            // threshold, clipped, so a level that lasts ends its alert and an attacker
            // walks it no faster than that.
            if learned {
                for c in &mut pt.cycles {
                    c.learn(ts, pass, x, st.interval_ms, !over);
                }
            }
            if learned && !over {
                if pass != pt.pass {
                    pt.pass = pass;
                    pt.weight = alpha(st.interval_ms, longest as f64);
                }
                pt.mean.push(x, pt.weight);
                pt.spread
                    .push(MAD_TO_SIGMA * (x - pt.mean.value).abs(), pt.weight);
            }
            let Some((period, level, at, scale, z)) = finding else {
                continue;
            };
            let metric = &frame.registry.point(p).metric;
            let dir = if z > 0.0 { "above" } else { "below" };
            out.push(point_finding(
                frame,
                p,
                NAME,
                z.abs(),
                params.threshold,
                statistical_severity(z.abs(), params.threshold),
                attack::for_process_change(metric, st.class),
                Words::made(
                    format!(
                        "{metric} = {} is {:.1}σ {dir} what its {} cycle predicts for this time, {} ± {}, for {} readings",
                        sig(x),
                        z.abs(),
                        format_duration(period),
                        sig(at),
                        sig(scale),
                        pt.recent.run
                    ),
                    json!({"value": x, "predicted": at, "level": level, "scale": scale, "z": z,
                           "cycle_ms": period, "consecutive": pt.recent.run, "precedent": precedent,
                           "recent": st.window().collect::<Vec<_>>()}),
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};
    use std::f64::consts::TAU;

    const FIVE_MIN: Ts = 300_000;
    const DAY: usize = 288;

    fn det() -> Seasonal {
        Seasonal::new(PerKind::from_fn(|_| SeasonalParams::default()))
    }

    /// Readings every 5 minutes from midnight UTC: `shape(i)` plus Gaussian noise of σ 2.
    fn series(days: usize, seed: u64, shape: impl Fn(usize) -> f64) -> Vec<f64> {
        noisy(days * DAY, 0.0, 2.0, seed)
            .into_iter()
            .enumerate()
            .map(|(i, e)| shape(i) + e)
            .collect()
    }

    /// A daily swing of ±40 about 100, lowest at midnight.
    fn daily(i: usize) -> f64 {
        100.0 - 40.0 * (TAU * (i % DAY) as f64 / DAY as f64).cos()
    }

    /// The readings found, each finding freezing the point for `freeze` readings as the
    /// pipeline's open alerts do.
    fn found(series: &[f64], freeze: usize) -> Vec<usize> {
        let mut h = Harness::new();
        h.freeze_after_finding = freeze;
        let mut d = det();
        for (i, &v) in series.iter().enumerate() {
            h.feed_at(&mut d, "ups", "output_kw", i as Ts * FIVE_MIN, v);
        }
        h.findings.iter().map(|(i, _)| *i).collect()
    }

    fn run(series: &[f64]) -> Vec<usize> {
        found(series, 10)
    }

    #[test]
    fn a_night_at_the_days_mean_is_found_and_clean_days_are_not() {
        // Two hours of day 15's night held at 100, the day's mean (well inside the range
        // the point spans every day): found within six readings, only then (a point is
        // judged once its longest cycle, a week, has been seen twice).
        let start = 15 * DAY + 12;
        let mut s = series(17, 1, daily);
        for v in &mut s[start..start + 24] {
            *v = 100.0;
        }
        let at = run(&s);
        assert!(!at.is_empty(), "not found");
        assert!(at[0] >= start && at[0] < start + 6, "{at:?}");
        assert!(at.iter().all(|&i| i < start + 24), "{at:?}");
        assert!(run(&series(17, 1, daily)).is_empty());
    }

    #[test]
    fn a_weekday_that_runs_like_a_weekend_is_found_by_the_weekly_cycle() {
        // Weekdays swing ±40, weekends stay near 60; the fourth week's Wednesday runs
        // like a weekend. The daily cycle cannot tell (its weekends are its noise); the
        // weekly one, judging from the third week, does.
        let weekly = |i: usize| {
            let weekend = (i / DAY) % 7 >= 5;
            if weekend {
                60.0
            } else {
                daily(i)
            }
        };
        let holiday = 23 * DAY;
        let mut s = series(26, 2, weekly);
        let calm = noisy(DAY, 60.0, 2.0, 3);
        s[holiday..holiday + DAY].copy_from_slice(&calm);
        let at = run(&s);
        assert!(
            at.iter().all(|&i| i >= holiday && i < holiday + DAY),
            "{at:?}"
        );
        assert!(at.len() > 100, "found {} readings of the day", at.len());
        assert!(run(&series(26, 2, weekly)).is_empty());
    }

    #[test]
    fn a_point_without_a_cycle_is_left_to_the_other_rules() {
        // Noise about a level: no cycle explains it, so even a step of 10σ is not this
        // rule's to judge.
        let mut s = series(17, 4, |_| 50.0);
        for v in &mut s[15 * DAY..15 * DAY + 24] {
            *v += 20.0;
        }
        assert!(run(&s).is_empty());
    }

    #[test]
    fn a_lasting_new_level_is_one_run_that_ends() {
        // The load steps up by 30 for good on day 15: found at once, followed by the level
        // (clipped, so at most 3 scales a step's weight), not news a day later. (In the
        // pipeline the open alert freezes the point for `freeze_samples`; here nothing
        // does.)
        let shift = 15 * DAY + 100;
        let s = series(18, 5, |i| daily(i) + if i >= shift { 30.0 } else { 0.0 });
        let at = found(&s, 0);
        assert!(at.first().is_some_and(|&i| i < shift + 6), "{at:?}");
        assert!(at.iter().all(|&i| i < shift + DAY / 2), "{at:?}");
        // One excursion (its end may flicker about the threshold as the level catches
        // up), not one for every slot of the day.
        let runs = 1 + at.windows(2).filter(|w| w[1] > w[0] + 1).count();
        assert!(runs <= 2, "{runs} runs: {at:?}");
    }

    #[test]
    fn absurd_readings_neither_panic_nor_silence_the_point() {
        // Readings an attacker could write, at the edge of what an f64 holds, on a point
        // whose cycle is learned: nothing panics, and a night at the day's mean is still
        // found afterwards.
        let start = 16 * DAY + 12;
        let mut s = series(17, 6, daily);
        for (i, v) in [
            f64::MAX,
            -f64::MAX,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN_POSITIVE,
        ]
        .into_iter()
        .enumerate()
        {
            s[15 * DAY + 100 + 3 * i] = v;
        }
        for (i, v) in s.iter_mut().enumerate().skip(start).take(24) {
            *v += 100.0 - daily(i);
        }
        let at = run(&s);
        assert!(at.iter().any(|&i| i >= start && i < start + 24), "{at:?}");
    }

    proptest::proptest! {
        #[test]
        fn the_slot_at_hand_is_always_the_slot_of_its_pass(
            steps in proptest::collection::vec((-3i64..4, -100.0f64..100.0, proptest::bool::ANY), 1..400),
        ) {
            // Passes that stay, move on, wrap around the period and go back; readings
            // normal and not: what a cycle keeps at hand is always its pass's slot.
            let mut c = Cycle::new(4 * FIVE_MIN, FIVE_MIN);
            let mut pass = 0;
            for (i, &(step, x, normal)) in steps.iter().enumerate() {
                pass += step;
                c.learn(i as Ts * 1000, pass, x, 1000.0, normal);
                let s = c.slot(c.pass);
                proptest::prop_assert_eq!(c.now, (c.profile[s], c.passes[s]));
                for other in pass - 5..pass + 5 {
                    let o = c.slot(other);
                    proptest::prop_assert_eq!(c.at(other), (c.profile[o], c.passes[o]));
                }
            }
        }

        #[test]
        fn any_readings_leave_every_state_finite(
            xs in proptest::collection::vec(
                proptest::prop_oneof![
                    -1e6f64..1e6,
                    proptest::sample::select(vec![f64::MAX, -f64::MAX, 1e300, -1e300, 0.0]),
                ],
                1..1500,
            ),
        ) {
            // Hour-long and two-hour cycles, so a point is judged after 48 readings.
            let params = SeasonalParams {
                periods: vec![3_600_000, 7_200_000],
                ..SeasonalParams::default()
            };
            let mut d = Seasonal::new(PerKind::from_fn(|_| params.clone()));
            let mut h = Harness::new();
            for (i, &v) in xs.iter().enumerate() {
                h.feed_at(&mut d, "ups", "output_kw", i as Ts * FIVE_MIN, v);
            }
            for pt in d.points.iter() {
                proptest::prop_assert!(pt.mean.value.is_finite() && pt.spread.value.is_finite());
                for c in &pt.cycles {
                    proptest::prop_assert!(c.level.is_finite() && c.scale.value.is_finite());
                    proptest::prop_assert!(c.sum.is_finite());
                    proptest::prop_assert!(c.profile.iter().all(|p| p.is_finite()));
                }
            }
        }
    }

    #[test]
    fn parameters_are_checked() {
        let p = SeasonalParams::default();
        assert!(p.check().is_ok());
        let bad = [
            SeasonalParams {
                slot: 0,
                ..p.clone()
            },
            SeasonalParams {
                periods: vec![86_400_000 + 1],
                ..p.clone()
            },
            SeasonalParams {
                periods: vec![60 * 86_400_000],
                ..p.clone()
            },
            SeasonalParams {
                threshold: 0.0,
                ..p.clone()
            },
            SeasonalParams {
                persist_samples: 0,
                ..p.clone()
            },
            SeasonalParams {
                explained: 1.5,
                ..p.clone()
            },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?}");
        }
    }
}
