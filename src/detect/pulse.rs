//! Load switched on and back off: the time-domain half of [`super::oscillation`].
//!
//! A load-altering attack switches real load (servers, compressors, a botnet of
//! appliances) on and off, so its swing is square: each edge is a step far larger than
//! anything the point does from one sample to the next, while the swing's power at its
//! own period may stay within the red noise of a wandering load for minutes (the
//! spectrum needs a good part of its window filled). A **pulse** is two opposite steps
//! of like size (each within a factor of two of the other) with the level held in
//! between, for at least [`MIN_HELD`] cells and at most half the longest period the
//! band watches. A step is a change over one grid cell, or over two that moved the same
//! way (a meter averaging over its interval splits an edge between two readings), above
//! `margin` × the largest change of the point's last [`BLOCKS`] × [`BLOCK`] ordinary
//! cells, plus the smallest change seen (the sensor's resolution, so a quantised point
//! needs more than one count of change beyond the margin). One maximum is a noisy
//! statistic (its spread is a tenth of its size in Gaussian changes, so one history in
//! five comes out 8 % low), so the largest change taken is never less than the typical
//! largest of a history with the same block maxima ([`TYPICAL_LARGEST`] × their mean,
//! whose spread is under half the maximum's); a heavier tail than Gaussian has a larger
//! maximum, which then rules. A step is learned as ordinary
//! only when it is the [`EXPIRED`]th to expire unpaired within the history's span (a
//! noisier source has many): an attack's edge does not raise the bar for the next, even
//! when a few edges between them were lost in the noise.
//!
//! Blind spots: edges slower than two samples (a soft start spread over several polls),
//! swings smaller than the point's largest normal change, a source whose samples were
//! interpolated across the edge.

use std::collections::VecDeque;

/// Cells per block of the history of changes.
const BLOCK: u32 = 64;
/// Blocks remembered: the bar is the largest change of about the last 1,024 cells.
const BLOCKS: usize = 16;
/// Blocks learned before steps are judged: all of them, as a shorter history's largest
/// change is a smaller one.
const WARM: usize = BLOCKS;
/// The expected largest of 1,024 Gaussian changes over the expected largest of 64 (3.44
/// and 2.60 σ of the change, by simulation of 20,000 histories).
const TYPICAL_LARGEST: f64 = 1.33;
/// Steps awaiting their return.
const PENDING: usize = 4;
/// Cells averaged for the level before a step: one sample before it may be noise's
/// low as much as the step's start.
const BEFORE: usize = 4;
/// Steps expiring unpaired within the history's span after which they are learned.
const EXPIRED: usize = 4;
/// Fewest cells the level must be held between the two steps: a shorter excursion is
/// a glitch of one or two polls, not a load switched.
pub const MIN_HELD: u64 = 3;

/// A step waiting for the step back.
#[derive(Debug, Clone, Copy)]
struct Step {
    cell: u64,
    delta: f64,
    /// Cells its edge took (1 or 2).
    span: u8,
    /// The level before the step (the mean of the last [`BEFORE`] cells before it).
    before: f64,
    /// Sum and count of the values since the step (the held level).
    sum: f64,
    n: u32,
}

/// A load switched on and back off (or off and back on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pulse {
    /// The first step's change.
    pub step: f64,
    /// The second step's change (of the opposite sign).
    pub back: f64,
    /// Cells between them.
    pub held: u64,
    /// The size the second step had to reach to be a step.
    pub bar: f64,
}

/// The largest ordinary changes of one kind (over one cell, or over two), per block.
#[derive(Debug, Default)]
struct Spread {
    blocks: VecDeque<f64>,
    block_max: f64,
    block_n: u32,
}

impl Spread {
    fn learn(&mut self, change: f64) {
        self.block_max = self.block_max.max(change);
        self.block_n += 1;
        if self.block_n == BLOCK {
            if self.blocks.len() == BLOCKS {
                self.blocks.pop_front();
            }
            self.blocks.push_back(self.block_max);
            self.block_max = 0.0;
            self.block_n = 0;
        }
    }

    /// The largest change of the history, once it is whole, or the typical largest of
    /// its block maxima if more (see the module's introduction).
    fn largest(&self) -> Option<f64> {
        (self.blocks.len() >= WARM)
            .then(|| {
                let (largest, mean) = self.maxima();
                largest.max(TYPICAL_LARGEST * mean)
            })
            .filter(|&l| l > 0.0)
    }

    /// The largest change of the history and the mean of its whole blocks' maxima.
    fn maxima(&self) -> (f64, f64) {
        let largest = self.blocks.iter().fold(self.block_max, |a, &b| a.max(b));
        let mean = self.blocks.iter().sum::<f64>() / self.blocks.len().max(1) as f64;
        (largest, mean)
    }
}

/// One point's steps, on its grid of cells.
#[derive(Debug, Default)]
pub struct Pulses {
    prev: Option<f64>,
    /// The last values (up to [`BEFORE`] + 1), newest last.
    recent: VecDeque<f64>,
    cell: u64,
    /// Cell of the last step (0: none yet).
    last_step: u64,
    /// Changes over one cell, and over two cells that moved the same way.
    one: Spread,
    two: Spread,
    /// The smallest non-zero change learned: the sensor's resolution, as far as seen.
    resolution: f64,
    pending: VecDeque<Step>,
    /// Cells of the last steps that expired unpaired (up to [`EXPIRED`] − 1).
    expired: VecDeque<u64>,
}

impl Pulses {
    /// Forgets the last value and the waiting steps (a hole in the samples), keeping
    /// what was learned of the point's changes.
    pub fn restart(&mut self) {
        self.prev = None;
        self.recent.clear();
        for s in std::mem::take(&mut self.pending) {
            self.expire(s);
        }
    }

    /// The change over one cell a step must exceed, once enough changes were learned.
    pub fn bar(&self, margin: f64) -> Option<f64> {
        self.bar_of(&self.one, margin)
    }

    fn bar_of(&self, spread: &Spread, margin: f64) -> Option<f64> {
        spread.largest().map(|l| margin * l + self.resolution)
    }

    /// Takes the next cell's value; returns the pulse it closes, if any. `max_held` is
    /// the longest a level may be held between the steps, in cells.
    pub fn push(&mut self, v: f64, margin: f64, max_held: u64) -> Option<Pulse> {
        self.cell += 1;
        if !v.is_finite() {
            self.restart();
            return None;
        }
        let found = self.judge(v, margin, max_held);
        if self.recent.len() == BEFORE + 1 {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
        found
    }

    fn judge(&mut self, v: f64, margin: f64, max_held: u64) -> Option<Pulse> {
        let prev = self.prev.replace(v)?;
        let d1 = v - prev;
        // The change over the last two cells when both moved the same way (an edge that
        // a meter averaging over its interval splits between two readings), unless the
        // cell before was a step's: its change is in both.
        let n = self.recent.len();
        let d2 = match n.checked_sub(2) {
            Some(k) if self.last_step + 1 != self.cell && (prev - self.recent[k]) * d1 > 0.0 => {
                Some(v - self.recent[k])
            }
            _ => None,
        };
        while let Some(s) = self.pending.front().copied() {
            if self.cell - s.cell <= max_held {
                break;
            }
            self.pending.pop_front();
            self.expire(s);
        }
        let over = |bar: Option<f64>, d: f64| bar.filter(|&b| d.abs() > b);
        let step = match over(self.bar_of(&self.one, margin), d1) {
            Some(bar) => Some((d1, 1, bar)),
            None => d2.and_then(|d| over(self.bar_of(&self.two, margin), d).map(|b| (d, 2, b))),
        };
        let Some((delta, span, bar)) = step else {
            self.learn(1, d1.abs());
            if let Some(d) = d2 {
                self.learn(2, d.abs());
            }
            for s in &mut self.pending {
                s.sum += v;
                s.n += 1;
            }
            return None;
        };
        let mut found = None;
        if let Some(i) = self
            .pending
            .iter()
            .rposition(|s| s.delta.signum() != delta.signum())
        {
            let s = self.pending[i];
            let held = self.cell - s.cell;
            let level = s.sum / f64::from(s.n.max(1));
            let like = (0.5..=2.0).contains(&(delta.abs() / s.delta.abs()));
            // The level between the steps stayed at least half a step from where it was.
            let kept = (level - s.before) * s.delta.signum() >= s.delta.abs() / 2.0;
            if held >= MIN_HELD && like && kept {
                found = Some(Pulse {
                    step: s.delta,
                    back: delta,
                    held,
                    bar,
                });
                // The steps of a pulse are the swing's, never the point's normal.
                self.pending.drain(..=i);
            }
        }
        for s in &mut self.pending {
            s.sum += v;
            s.n += 1;
        }
        if self.pending.len() == PENDING {
            if let Some(s) = self.pending.pop_front() {
                self.expire(s);
            }
        }
        // The level before the edge: the cells before its first.
        let end = n + 1 - usize::from(span);
        let from = end.saturating_sub(BEFORE);
        let before = self.recent.range(from..end).sum::<f64>() / (end - from).max(1) as f64;
        self.last_step = self.cell;
        self.pending.push_back(Step {
            cell: self.cell,
            delta,
            span,
            before,
            sum: v,
            n: 1,
        });
        found
    }

    /// A step that no step back paired: learned if [`EXPIRED`] − 1 others expired
    /// within the span of the history (the source is noisier than learned), else left out.
    fn expire(&mut self, s: Step) {
        let span = u64::from(BLOCK) * BLOCKS as u64;
        if self.expired.len() == EXPIRED - 1 {
            if self.expired.front().is_some_and(|&e| s.cell - e <= span) {
                self.learn(s.span, s.delta.abs());
            }
            self.expired.pop_front();
        }
        self.expired.push_back(s.cell);
    }

    fn learn(&mut self, span: u8, change: f64) {
        if span == 1 {
            if change > 0.0 && (self.resolution == 0.0 || change < self.resolution) {
                self.resolution = change;
            }
            self.one.learn(change);
        } else {
            self.two.learn(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, wandering_load as load};

    const MARGIN: f64 = 1.25;

    fn pulses(series: &[f64]) -> Vec<(usize, Pulse)> {
        let mut p = Pulses::default();
        series
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| p.push(v, MARGIN, 25).map(|x| (i, x)))
            .collect()
    }

    fn square(series: &mut [f64], onset: usize, amplitude: f64, period: f64) {
        for (i, v) in series.iter_mut().enumerate().skip(onset) {
            *v += amplitude
                * ((i - onset) as f64 / period * std::f64::consts::TAU)
                    .sin()
                    .signum();
        }
    }

    #[test]
    fn a_wandering_load_has_no_pulse() {
        // Ten hours of a load whose sample-to-sample change is about 2.1 (σ).
        for seed in [3, 5, 7] {
            let found = pulses(&load(36_000, seed));
            assert!(found.is_empty(), "seed {seed}: {:?}", found.first());
        }
    }

    #[test]
    fn the_level_a_step_left_is_not_one_low_reading_before_it() {
        // A low reading, a high one, a little above the level for four cells, a low one:
        // both changes exceed the bar and the "held" level is 0.74 bar above the low
        // reading before the first, but only 0.44 above the level of the four before it.
        let mut p = Pulses::default();
        for v in noisy(2_000, 400.0, 6.5, 31) {
            p.push(v, MARGIN, 25);
        }
        let b = p.bar(MARGIN).expect("learned");
        let mut tail = vec![400.0; 4];
        tail.extend([400.0 - 0.4 * b, 400.0 + 0.7 * b]);
        tail.extend([400.0 + 0.25 * b; 4]);
        tail.extend([400.0 - 0.9 * b, 400.0, 400.0]);
        let found: Vec<Pulse> = tail.iter().filter_map(|&v| p.push(v, MARGIN, 25)).collect();
        assert_eq!(found, vec![]);
    }

    #[test]
    fn a_history_whose_largest_change_came_out_low_does_not_lower_the_bar() {
        // Of these wandering loads, the first whose largest change of 1,024 cells came out
        // under the typical largest of its block maxima: steps between the two bars are
        // not pulses, steps above the higher one are.
        let (mut p, largest, mean) = (1..)
            .find_map(|seed| {
                let mut p = Pulses::default();
                for v in load(2_000, seed) {
                    p.push(v, MARGIN, 25);
                }
                let (largest, mean) = p.one.maxima();
                (largest < 0.95 * TYPICAL_LARGEST * mean).then_some((p, largest, mean))
            })
            .expect("one in a few histories");
        let (low, typical) = (
            MARGIN * largest + p.resolution,
            MARGIN * TYPICAL_LARGEST * mean + p.resolution,
        );
        assert_eq!(p.bar(MARGIN), Some(typical));
        let level = p.recent.iter().sum::<f64>() / p.recent.len() as f64;
        let mut swing = |size: f64| -> Vec<Pulse> {
            let mut v = vec![level; 10];
            v.extend([level + size; 10]);
            v.extend([level; 10]);
            v.iter().filter_map(|&x| p.push(x, MARGIN, 25)).collect()
        };
        assert_eq!(swing((low + typical) / 2.0), vec![]);
        assert_eq!(swing(1.2 * typical).len(), 1);
    }

    #[test]
    fn a_square_swing_is_found_at_its_second_full_edge() {
        // ±7.5 (edges of 15, 6.4σ of the change, whose largest in 1,024 samples is
        // about 3.4σ) with a 45 s period from 3,000 s: the onset is a half edge; the
        // full edges come at 22.5 s and 45 s.
        let mut series = load(6_000, 11);
        square(&mut series, 3_000, 7.5, 45.0);
        let found = pulses(&series);
        let (at, first) = found.first().copied().expect("a pulse");
        assert!((3_040..3_050).contains(&at), "found at {at}");
        assert!((20..=25).contains(&first.held), "{first:?}");
        assert!(first.step * first.back < 0.0);
        // The swing goes on: pulses again, though an edge lost in the noise leaves its
        // partner unpaired, learned, and the bar raised (the spectrum carries on).
        assert!(found.len() >= 2, "{}", found.len());
        assert!(found.iter().all(|(i, _)| *i >= 3_000));
    }

    #[test]
    fn a_swing_averaged_over_each_sampling_interval_is_found() {
        // A meter reporting its interval's mean: the edges that fall between two samples
        // (every other one, with a 22.5 s half period) are split half and half. Edges of
        // 20, 8.5σ of the change over one cell (the change over two, same way, spreads
        // wider: its bar is about a quarter higher).
        let mut series = load(6_000, 11);
        let sq = |t: f64| {
            if t < 0.0 {
                0.0
            } else {
                10.0 * (t / 45.0 * std::f64::consts::TAU).sin().signum()
            }
        };
        for (i, v) in series.iter_mut().enumerate().skip(3_000) {
            let t = (i - 3_000) as f64;
            *v += (sq(t - 0.25) + sq(t - 0.75)) / 2.0;
        }
        let found = pulses(&series);
        let (at, first) = found.first().copied().expect("a pulse");
        // At the first full edge (paired with the onset's half edge, which clears the
        // bar here) or at a later one.
        assert!((3_020..3_075).contains(&at), "found at {at}");
        assert!((20..=25).contains(&first.held), "{first:?}");
        assert!(found.len() >= 2, "{}", found.len());
    }

    #[test]
    fn a_lasting_step_a_glitch_and_a_slow_return_are_not_pulses() {
        let mut series = load(8_000, 13);
        // A load switched on for good.
        for v in &mut series[3_000..] {
            *v += 40.0;
        }
        // A reading wrong for two polls.
        series[4_000] += 60.0;
        series[4_001] += 60.0;
        // Switched off for two minutes (longer than half the longest period).
        for v in &mut series[5_000..5_120] {
            *v -= 40.0;
        }
        // A step up and, later, a step down half its size.
        for v in &mut series[6_000..6_010] {
            *v += 40.0;
        }
        for v in &mut series[6_010..] {
            *v += 20.0;
        }
        assert_eq!(pulses(&series), vec![]);
    }

    #[test]
    fn a_quantised_point_needs_more_than_one_count_beyond_its_margin() {
        // A meter reading whole kW whose value moves by at most one count a sample.
        let mut series: Vec<f64> = load(4_000, 17).iter().map(|v| (v / 8.0).round()).collect();
        for w in 1..series.len() {
            series[w] = series[w].clamp(series[w - 1] - 1.0, series[w - 1] + 1.0);
        }
        for v in &mut series[3_000..3_010] {
            *v += 6.0;
        }
        let mut p = Pulses::default();
        for &v in &series[..3_000] {
            assert_eq!(p.push(v, MARGIN, 25), None);
        }
        let b = p.bar(MARGIN).unwrap();
        assert!(
            (b - (MARGIN * TYPICAL_LARGEST + 1.0)).abs() < 1e-9,
            "1.25 × the typical largest of one-count blocks, plus one count: {b}"
        );
        let found: Vec<Pulse> = series[3_000..]
            .iter()
            .filter_map(|&v| p.push(v, MARGIN, 25))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].held, 10);
    }

    proptest::proptest! {
        /// Whatever values come (huge, tiny, repeated, non-finite), the state stays
        /// bounded and a pulse reported is two opposite steps above the bar.
        #[test]
        fn bounded_and_consistent(values in proptest::collection::vec(
            proptest::prop_oneof![-1e12f64..1e12, proptest::strategy::Just(f64::NAN), -2.0f64..2.0],
            1..3_000,
        )) {
            let mut p = Pulses::default();
            for v in values {
                if let Some(x) = p.push(v, MARGIN, 25) {
                    proptest::prop_assert!(x.step * x.back < 0.0);
                    proptest::prop_assert!(x.step != 0.0 && x.back.abs() > x.bar);
                    proptest::prop_assert!((MIN_HELD..=25).contains(&x.held));
                }
                proptest::prop_assert!(p.pending.len() <= PENDING);
                proptest::prop_assert!(p.one.blocks.len() <= BLOCKS && p.two.blocks.len() <= BLOCKS);
            }
        }
    }
}
