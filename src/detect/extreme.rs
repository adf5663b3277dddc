//! **extreme**: a reading beyond anything its point's recent history makes plausible.
//!
//! `ewma_z` needs a run of samples far from the baseline, so a lone reading is never
//! news to it: at 1 Hz one wild sample is a glitch. Yet on a point read every few
//! minutes one reading is minutes of the plant, and a burst that lasts one reading
//! (a request storm, a load spike, a compressor surge) shows in no run. This rule asks
//! of each reading whether the point's own history, extrapolated by extreme-value
//! theory, would produce it less often than the site's budget allows — `once_per` (a
//! year) shared among the points it watches, so a site of 200 points gives each one
//! in 200 years. It is the question SPOT (Siffer et al., KDD 2017) asks of a stream,
//! asked of raw values: a heavy-tailed point (request counts, bursty loads) sets a far
//! bar and a calm one a near bar, with no z-score whose σ a quiet hour shrinks:
//!
//! - the point's readings are cut into blocks, each a 128th (`history_blocks`) of the
//!   `history` (a week, so a day's cycle and a week's are in it: 79 minutes), and at
//!   least `block_samples` (16) readings; each block's maximum and minimum are kept for
//!   the last 128 blocks;
//! - at each block's close, the upper tail of the maxima (and of the negated minima) is
//!   fitted by a generalised Pareto over their 90th percentile (see [`super::tail`]),
//!   and the threshold is the value a block's maximum passes with probability
//!   `block's duration / (once_per × points watched)`;
//! - a reading beyond either threshold is a finding, unless two readings at least as
//!   far on its side were reported within the history (the precedent rule of `ewma_z`,
//!   `timescale` and `flatline`: peaks that recur are the same story, not news each
//!   time; one excursion never excuses the next); while an open alert holds the point,
//!   the bar alone keeps it open, so a level that lasts is one alert;
//! - a reading beyond a threshold is not learned (nor is one an open alert froze), so
//!   excursions do not widen the tail that judges the next — a few outliers among a
//!   tail's dozen peaks would make it look heavy enough to excuse anything; a level
//!   that lasts is learned from its second reading on once no alert holds the point,
//!   so it is one alert, not one for ever.
//!
//! On Gaussian noise read at 1 Hz the bar sits about 6σ out for a point watched alone
//! and 7σ for one of a hundred (medians of 40 simulated fits; a block's maximum of 4,725
//! readings is near 4σ); one fit in ten takes its dozen peaks for a heavier tail and
//! puts it past 8σ and 10σ.
//!
//! Blind spots: anything within the range the last blocks spanned (see `ewma_z`,
//! `timescale`); a reading no farther than two reported within the history; the first
//! 50 blocks (the fit needs them: 2.7 days of a week's history).

use super::{point_finding, sig, statistical_severity, tail, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Words};
use crate::time::{format_duration, serde_duration};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "extreme";

/// Parameters of the extreme-reading detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtremeParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// The time the history spans (e.g. `"7d"`: a day's cycle and a week's are in it).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub history: i64,
    /// Blocks the history is cut into (their maxima and minima are what is fitted).
    pub history_blocks: u32,
    /// Fewest readings in a block (a point read rarely has longer blocks and a longer
    /// history).
    pub block_samples: u32,
    /// How rarely, across every point it watches, the points' histories, extrapolated,
    /// may produce a reading that is reported (e.g. `"365d"`): the false-alarm rate the
    /// thresholds aim at, shared evenly among the points (a site of 200 points gives
    /// each one in 200 years).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub once_per: i64,
}

impl ExtremeParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            (1..=3600).contains(&self.block_samples),
            "block_samples",
            "must be 1 to 3600",
        )?;
        rule(
            (tail::MIN_MAXIMA as u32..=4096).contains(&self.history_blocks),
            "history_blocks",
            "must be 50 to 4096",
        )?;
        rule(self.once_per > 0, "once_per", "must be longer than 0")?;
        rule(self.history > 0, "history", "must be longer than 0")?;
        Ok(())
    }
}

impl Default for ExtremeParams {
    fn default() -> Self {
        Self {
            enabled: true,
            history: 7 * 86_400_000,
            history_blocks: 128,
            block_samples: 16,
            once_per: 365 * 86_400_000,
        }
    }
}

/// Reports kept per side: enough to know the second most extreme of a history.
const REPORTS: usize = 8;

/// The last readings reported on one side, newest last.
#[derive(Default)]
struct Reports(Vec<(u64, f64)>);

impl Reports {
    /// Whether two readings at least `m` far were reported within the last `window`
    /// blocks (before block `now`): then a reading `m` far is the story again, not news.
    fn twice(&self, m: f64, now: u64, window: u64) -> bool {
        self.0
            .iter()
            .filter(|&&(at, r)| now - at < window && r >= m)
            .count()
            >= 2
    }

    fn push(&mut self, now: u64, m: f64) {
        if self.0.len() == REPORTS {
            self.0.remove(0);
        }
        self.0.push((now, m));
    }
}

/// One point's history: the extremes of its last blocks and the thresholds fitted on
/// them.
struct History {
    /// Each closed block's maximum and negated minimum (a ring: block `b` at
    /// `b % history_blocks`).
    highs: Vec<f64>,
    lows: Vec<f64>,
    /// The block under way: its maximum, negated minimum, readings learned and length
    /// in readings (set when it starts, from the point's interval then).
    high: f64,
    low: f64,
    in_block: u32,
    block_len: u32,
    /// Readings in a row beyond a threshold.
    run: u32,
    /// Blocks closed so far (reports are dated by it).
    blocks: u64,
    /// The last readings reported on each side: (block, distance past 0 on that side:
    /// the value above, its negation below).
    reported: [Reports; 2],
    /// The thresholds of the last fit (`None`: not judged on that side).
    above: Option<f64>,
    below: Option<f64>,
}

impl History {
    fn new() -> Self {
        Self {
            highs: Vec::new(),
            lows: Vec::new(),
            high: f64::NEG_INFINITY,
            low: f64::NEG_INFINITY,
            in_block: 0,
            block_len: 0,
            run: 0,
            blocks: 0,
            reported: Default::default(),
            above: None,
            below: None,
        }
    }

    /// Takes a reading, `interval_ms` after the one before, into the block under way;
    /// returns the closed block's length in readings if that closed it.
    fn learn(&mut self, x: f64, interval_ms: f64, p: &ExtremeParams) -> Option<u32> {
        if self.in_block == 0 {
            // A block is a 128th of the history, and at least `block_samples` readings.
            let per_block = p.history as f64 / f64::from(p.history_blocks);
            let readings = if interval_ms > 0.0 {
                (per_block / interval_ms).round().min(f64::from(u32::MAX))
            } else {
                0.0
            };
            self.block_len = p.block_samples.max(readings as u32);
        }
        self.high = self.high.max(x);
        self.low = self.low.max(-x);
        self.in_block += 1;
        if self.in_block < self.block_len {
            return None;
        }
        let cap = p.history_blocks as usize;
        if self.highs.len() < cap {
            self.highs.push(self.high);
            self.lows.push(self.low);
        } else {
            let at = (self.blocks % cap as u64) as usize;
            self.highs[at] = self.high;
            self.lows[at] = self.low;
        }
        self.blocks += 1;
        self.high = f64::NEG_INFINITY;
        self.low = f64::NEG_INFINITY;
        self.in_block = 0;
        Some(self.block_len)
    }

    /// Fits both tails for a block's exceedance probability `p` (`scratch` reused).
    #[inline(never)]
    fn fit(&mut self, p: f64, scratch: &mut Vec<f64>) {
        let mut rare = |blocks: &[f64]| {
            scratch.clear();
            scratch.extend_from_slice(blocks);
            tail::rare_quantile(scratch, p)
        };
        self.above = rare(&self.highs);
        self.below = rare(&self.lows).map(|t| -t);
    }
}

/// The extreme-reading detector.
pub struct Extreme {
    params: PerKind<ExtremeParams>,
    points: PointTable<History>,
    /// Points judged so far: the budget is the site's, shared among them.
    watched: usize,
    scratch: Vec<f64>,
}

impl Extreme {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<ExtremeParams>) -> Self {
        Self {
            params,
            points: PointTable::default(),
            watched: 0,
            scratch: Vec::new(),
        }
    }
}

impl Detector for Extreme {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for (p, st) in frame.good_analog() {
            let mut fresh = false;
            let h = self.points.get_or_insert(p, || {
                fresh = true;
                History::new()
            });
            self.watched += usize::from(fresh);
            let x = st.value;
            let high = h.above.filter(|&t| x > t);
            let low = h.below.filter(|&t| x < t);
            let side = usize::from(high.is_none());
            let window = u64::from(params.history_blocks);
            let over = high.or(low);
            h.run = if over.is_some() { h.run + 1 } else { 0 };
            // A reading beyond the bar is learned only as part of a level that lasts
            // (from its second reading on), and not while an open alert froze the point.
            if st.frozen == 0 && (over.is_none() || h.run > 1) {
                if let Some(len) = h.learn(x, st.interval_ms, params) {
                    let block_ms = f64::from(len) * st.interval_ms.max(0.0);
                    let budget = params.once_per as f64 * self.watched as f64;
                    h.fit(block_ms / budget, &mut self.scratch);
                }
            }
            // News unless two readings at least as far on its side were reported within
            // the history (peaks that recur are the same story; one excursion never
            // excuses the next). While an open alert holds the point the bar alone keeps
            // it open: the precedent decides what starts an alert, not how long it lasts.
            let m = if side == 0 { x } else { -x };
            let Some(bar) =
                over.filter(|_| st.frozen != 0 || !h.reported[side].twice(m, h.blocks, window))
            else {
                continue;
            };
            if h.run == 1 {
                h.reported[side].push(h.blocks, m);
            }
            let metric = &frame.registry.point(p).metric;
            // The score is the reading's distance past the largest block extreme kept,
            // in units of the bar's distance past it (1 at the bar).
            let (side, largest) = if side == 0 {
                ("above", h.highs.iter().copied().fold(f64::MIN, f64::max))
            } else {
                ("below", -h.lows.iter().copied().fold(f64::MIN, f64::max))
            };
            let reach = (bar - largest).abs().max(f64::MIN_POSITIVE);
            let score = 1.0 + (x - bar).abs() / reach;
            let span = f64::from(h.block_len) * h.highs.len() as f64 * st.interval_ms.max(0.0);
            out.push(point_finding(
                frame,
                p,
                NAME,
                score,
                1.0,
                statistical_severity(score, 1.0),
                attack::for_process_change(metric, st.class),
                Words::made(
                    format!(
                        "{metric} = {} is {side} {}, past what its last {} make likely once in {}; the most extreme of them was {}",
                        sig(x),
                        sig(bar),
                        format_duration(span as i64),
                        format_duration((params.once_per as f64 * self.watched as f64).min(i64::MAX as f64) as i64),
                        sig(largest),
                    ),
                    json!({"value": x, "bar": bar, "most_extreme": largest, "readings": h.run,
                           "history_ms": span as i64, "recent": st.window().collect::<Vec<_>>()}),
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    /// The defaults but for a history of 2,048 s: blocks of 16 readings at 1 Hz, so a
    /// test is minutes of readings (and the bar farther than the defaults' in σ of
    /// Gaussian noise, a block being 295× fewer readings for the same budget).
    fn params() -> ExtremeParams {
        ExtremeParams {
            history: 2_048_000,
            ..ExtremeParams::default()
        }
    }

    fn det() -> Extreme {
        Extreme::new(PerKind::from_fn(|_| params()))
    }

    #[test]
    fn a_lone_reading_far_beyond_a_calm_history_is_found_and_noise_is_not() {
        // 10,000 readings of Gaussian noise: nothing (the bar sits near 7σ); one reading
        // at 12σ is found, on its own, and only it.
        let mut series = noisy(10_000, 50.0, 1.0, 4);
        series[9_000] = 62.0;
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "flow_lps", &series);
        let at: Vec<usize> = h.findings.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [9_000], "{:?}", h.findings.first());
        let bar = h.findings[0].1.evidence()["bar"].as_f64().unwrap();
        assert!(bar > 55.0 && bar < 60.0, "{bar}");
    }

    #[test]
    fn a_heavy_tailed_point_sets_its_own_bar() {
        // Bursts of 10σ to 40σ every 100 readings: the bar rises far past them (a burst
        // of 60σ, half again the largest, is not news there, where it would be on a calm
        // point), and a burst of 250σ is.
        let mut series = noisy(6_000, 100.0, 1.0, 5);
        for (i, at) in (500..5_500).step_by(100).enumerate() {
            series[at] += 10.0 + (i % 7) as f64 * 5.0;
        }
        series[5_550] += 60.0;
        series[5_700] += 250.0;
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "output_kw", &series);
        let at: Vec<usize> = h.findings.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [5_700]);
        let mut calm = noisy(6_000, 100.0, 1.0, 5);
        calm[5_550] += 60.0;
        let mut h = Harness::new();
        h.run(&mut det(), "ups", "output_kw", &calm);
        assert_eq!(h.findings.first().map(|f| f.0), Some(5_550));
    }

    #[test]
    fn a_lasting_new_level_is_one_excursion_then_learned() {
        // A step that stays: found at once, then learned, so it is not news for ever.
        let mut series = noisy(8_000, 20.0, 0.5, 6);
        for v in &mut series[4_000..] {
            *v += 15.0;
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "crah", "supply_temp_c", &series);
        assert_eq!(h.findings.first().map(|f| f.0), Some(4_000));
        let last = h.findings.last().unwrap().0;
        assert!(last < 6_500, "still reported at {last}");
    }

    #[test]
    fn a_peak_no_higher_than_two_lately_reported_is_not_news_again() {
        // Lone peaks of 30σ, 30σ, 25σ, 26σ, then 60σ on a calm point: the first two are
        // reported (one never excuses the next), the next two are the same story, the
        // higher one is news.
        let mut series = noisy(6_000, 100.0, 1.0, 8);
        let peaks = [
            (3_000, 30.0),
            (3_300, 30.0),
            (3_600, 25.0),
            (3_900, 26.0),
            (4_200, 60.0),
        ];
        for &(at, height) in &peaks {
            series[at] += height;
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "output_kw", &series);
        let at: Vec<usize> = h.findings.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [3_000, 3_300, 4_200]);
    }

    #[test]
    fn an_open_alert_is_held_by_the_bar_alone() {
        // From reading 4,000 the point sits 15σ low four readings in five: runs of the
        // same depth. With nothing freezing the point, the first runs are reported and
        // the rest are the same story (a run whose first reading the noise makes deeper
        // than two reported is news, so a few, not all 40). With an open alert freezing
        // it, as the pipeline's does, every run keeps the alert open.
        let mut series = noisy(5_000, 50.0, 1.0, 9);
        for (i, v) in series[4_000..].iter_mut().enumerate() {
            if i % 5 != 4 {
                *v -= 15.0;
            }
        }
        let runs_reported = |freeze| {
            let mut h = Harness::new();
            h.freeze_after_finding = freeze;
            h.run(&mut det(), "crah", "supply_temp_c", &series);
            (4_000..4_200)
                .step_by(5)
                .filter(|&at| h.findings.iter().any(|(i, _)| *i == at))
                .count()
        };
        assert_eq!(runs_reported(10), 40);
        let alone = runs_reported(0);
        assert!((2..=5).contains(&alone), "{alone}");
    }

    #[test]
    fn the_budget_sets_the_bar() {
        // A rarer budget is a farther bar: the same reading is news once a day but not
        // once a century.
        let mut series = noisy(4_000, 0.0, 1.0, 7);
        series[3_900] = 6.5;
        let found = |once_per| {
            let mut h = Harness::new();
            let mut d = Extreme::new(PerKind::from_fn(|_| ExtremeParams {
                once_per,
                ..params()
            }));
            h.run(&mut d, "chiller", "flow_lps", &series);
            h.findings.iter().any(|(i, _)| *i == 3_900)
        };
        assert!(found(86_400_000));
        assert!(!found(100 * 365 * 86_400_000));
    }

    #[test]
    fn the_sites_budget_is_shared_among_its_points() {
        // A point watched alone has the whole budget; beside 999 others a thousandth of
        // it, so its bar is farther out (by about ln 1000 ≈ 6.9 scales of its tail).
        let bar = |others: usize| {
            let mut h = Harness::new();
            let mut d = det();
            for k in 0..others {
                h.feed(&mut d, "chiller", &format!("other_{k}"), 0.5);
            }
            let mut series = noisy(4_000, 0.0, 1.0, 7);
            series[3_900] = 40.0;
            h.run(&mut d, "chiller", "flow_lps", &series);
            assert_eq!(h.findings.len(), 1);
            h.findings[0].1.evidence()["bar"].as_f64().unwrap()
        };
        let (alone, shared) = (bar(0), bar(999));
        assert!(shared > alone + 1.0, "{alone} {shared}");
    }

    #[test]
    fn a_block_is_a_share_of_the_history_in_time() {
        // The defaults: a week in 128 blocks is 4,725 readings at 1 Hz, and never fewer
        // than 16 readings (a point read every 5 minutes: 80-minute blocks).
        let p = ExtremeParams::default();
        let mut h = History::new();
        h.learn(0.0, 1_000.0, &p);
        assert_eq!(h.block_len, 4_725);
        let mut h = History::new();
        h.learn(0.0, 300_000.0, &p);
        assert_eq!(h.block_len, 16);
        let mut h = History::new();
        h.learn(0.0, 0.0, &p);
        assert_eq!(h.block_len, 16, "no interval known yet");
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        let p = ExtremeParams::default();
        assert!(p.check().is_ok());
        for bad in [
            ExtremeParams {
                block_samples: 0,
                ..p.clone()
            },
            ExtremeParams {
                history_blocks: 10,
                ..p.clone()
            },
            ExtremeParams {
                once_per: 0,
                ..p.clone()
            },
            ExtremeParams {
                history: 0,
                ..p.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
