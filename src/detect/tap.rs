//! The statistic a detector compares with its threshold, kept below the threshold too,
//! for `wattchdog calibrate`.
//!
//! A detector with a tap records, for every judgement it makes, the value its threshold
//! is compared with: for a rule that needs `persist` judgements in a row over the
//! threshold, the smallest of the last `persist` values (the run fires exactly when that
//! is at or above the threshold). The tap keeps only each subject's (point's or
//! device's) largest value per block of event time: consecutive judgements are strongly
//! dependent and a burst of them is one alert, so block maxima are what a tail can be
//! fitted to (see [`crate::detect::tail`]).

use crate::model::{DeviceKind, Ts};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Event time per block by default: long enough that one alert rarely spans two, short
/// enough that a day gives each subject over a hundred.
pub const BLOCK: Ts = 10 * 60_000;

/// A threshold rule a tap records, named for its config key under `[kinds.<kind>]`.
/// Declared in the keys' alphabetical order, so records sort as their keys do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `cusum.threshold`: max(S⁺, S⁻).
    Cusum,
    /// `ewma_z.threshold`: |z|.
    EwmaZ,
    /// `iforest.threshold`: a device frame's anomaly score.
    Iforest,
    /// `physics.cusum_threshold`: a relation's two-sided CUSUM.
    PhysicsCusum,
    /// `physics.sustained_threshold`: a relation's sustained shift.
    PhysicsSustained,
    /// `physics.threshold`: a relation's |z|.
    Physics,
    /// `residual.margin`: a device frame's score over its warm-up quantile.
    ResidualMargin,
    /// `timescale.margin`: how far a block's aggregate lies beyond its history's range,
    /// in widths of that range.
    TimescaleMargin,
}

impl Rule {
    /// The detector's table and the field set under `[kinds.<kind>.<detector>]`.
    pub fn detector_and_field(self) -> (&'static str, &'static str) {
        match self {
            Rule::Cusum => ("cusum", "threshold"),
            Rule::EwmaZ => ("ewma_z", "threshold"),
            Rule::Iforest => ("iforest", "threshold"),
            Rule::PhysicsCusum => ("physics", "cusum_threshold"),
            Rule::PhysicsSustained => ("physics", "sustained_threshold"),
            Rule::Physics => ("physics", "threshold"),
            Rule::ResidualMargin => ("residual", "margin"),
            Rule::TimescaleMargin => ("timescale", "margin"),
        }
    }

    /// `detector.field`.
    pub fn key(self) -> String {
        let (d, f) = self.detector_and_field();
        format!("{d}.{f}")
    }
}

/// Where a detector's judgements go while calibrating. Cloning shares the record.
#[derive(Debug, Clone)]
pub struct Tap(Arc<Mutex<Tapped>>);

impl Default for Tap {
    fn default() -> Self {
        Self::new(BLOCK)
    }
}

/// What one rule of one kind judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Each subject's largest statistic per block (a block without a judgement has none).
    pub maxima: Vec<f64>,
    /// Subjects (points or devices) judged.
    pub subjects: usize,
}

/// Everything recorded, by threshold key and kind.
#[derive(Debug)]
pub struct Tapped {
    /// Event time per block.
    block: Ts,
    series: BTreeMap<(Rule, DeviceKind), Series>,
    open: FxHashMap<(Rule, u32), Open>,
    /// Event-time windows not recorded (labelled attacks in a capture called clean).
    left_out: Vec<(Ts, Ts)>,
    /// Each point's kind, metric and the range of its values per block.
    values: FxHashMap<u32, (DeviceKind, String, Vec<Range>)>,
}

/// What a tap recorded.
#[derive(Debug, Default)]
pub struct Taken {
    /// Block maxima of each threshold rule, by rule and kind.
    pub series: BTreeMap<(Rule, DeviceKind), Series>,
    /// The ranges of each kind's metrics, per point and block, in time order per point.
    pub ranges: BTreeMap<(DeviceKind, String), Vec<Range>>,
}

/// The lowest and highest value of one point in one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// The block's start, in event time.
    pub block: Ts,
    /// Lowest value.
    pub lo: f64,
    /// Highest value.
    pub hi: f64,
}

#[derive(Debug)]
struct Open {
    kind: DeviceKind,
    block: Ts,
    max: f64,
    recent: VecDeque<f64>,
}

impl Tap {
    /// A tap keeping each subject's largest value per `block` of event time (≥ 1 ms).
    pub fn new(block: Ts) -> Self {
        Self(Arc::new(Mutex::new(Tapped {
            block: block.max(1),
            series: BTreeMap::new(),
            open: FxHashMap::default(),
            left_out: Vec::new(),
            values: FxHashMap::default(),
        })))
    }

    /// One analog reading of `point` (of metric `metric`), for the range of its metric.
    pub fn value(&self, kind: DeviceKind, point: u32, metric: &str, ts: Ts, v: f64) {
        let Ok(mut t) = self.0.lock() else {
            return;
        };
        if !v.is_finite() || t.left_out.iter().any(|&(a, b)| (a..=b).contains(&ts)) {
            return;
        }
        let block = ts.div_euclid(t.block) * t.block;
        let (_, _, blocks) = t
            .values
            .entry(point)
            .or_insert_with(|| (kind, metric.to_owned(), Vec::new()));
        match blocks.last_mut() {
            Some(r) if r.block == block => (r.lo, r.hi) = (r.lo.min(v), r.hi.max(v)),
            _ => blocks.push(Range {
                block,
                lo: v,
                hi: v,
            }),
        }
    }

    /// One judgement of `subject` (a point or device id of the detector's own choosing,
    /// unique within it) at `ts` by `rule`: `stat` is
    /// what the threshold is compared with, `None` when the rule did not judge (warm-up,
    /// missing input), which breaks a run.
    pub fn record(
        &self,
        rule: Rule,
        kind: DeviceKind,
        subject: u32,
        ts: Ts,
        stat: Option<f64>,
        persist: u32,
    ) {
        let Ok(mut t) = self.0.lock() else {
            return;
        };
        let block = ts.div_euclid(t.block);
        let Tapped {
            series,
            open,
            left_out,
            ..
        } = &mut *t;
        let stat = stat.filter(|_| !left_out.iter().any(|&(a, b)| (a..=b).contains(&ts)));
        let o = open.entry((rule, subject)).or_insert_with(|| {
            series.entry((rule, kind)).or_default().subjects += 1;
            Open {
                kind,
                block,
                max: f64::NEG_INFINITY,
                recent: VecDeque::new(),
            }
        });
        if o.block != block {
            if o.max.is_finite() {
                series.entry((rule, o.kind)).or_default().maxima.push(o.max);
            }
            (o.block, o.max) = (block, f64::NEG_INFINITY);
        }
        let Some(v) = stat.filter(|v| v.is_finite()) else {
            o.recent.clear();
            return;
        };
        o.recent.push_back(v);
        if o.recent.len() > persist.max(1) as usize {
            o.recent.pop_front();
        }
        if o.recent.len() == persist.max(1) as usize {
            let least = o.recent.iter().copied().fold(f64::INFINITY, f64::min);
            o.max = o.max.max(least);
        }
    }

    /// Judgements inside these windows (inclusive) are not recorded from now on; each
    /// breaks a run as a missing judgement does.
    pub fn leave_out(&self, windows: Vec<(Ts, Ts)>) {
        if let Ok(mut t) = self.0.lock() {
            t.left_out = windows;
        }
    }

    /// Closes every open block and hands the record over (the tap starts empty, without
    /// windows left out).
    pub fn take(&self) -> Taken {
        let Ok(mut t) = self.0.lock() else {
            return Taken::default();
        };
        t.left_out.clear();
        let Tapped {
            series,
            open,
            values,
            ..
        } = &mut *t;
        // Subjects in a stable order, so the maxima are too.
        let mut left: Vec<_> = open.drain().collect();
        left.sort_by_key(|((d, s), _)| (*d, *s));
        for ((rule, _), o) in left {
            if o.max.is_finite() {
                series.entry((rule, o.kind)).or_default().maxima.push(o.max);
            }
        }
        let mut points: Vec<_> = values.drain().collect();
        points.sort_by_key(|(p, _)| *p);
        let mut ranges: BTreeMap<(DeviceKind, String), Vec<Range>> = BTreeMap::new();
        for (_, (kind, metric, blocks)) in points {
            ranges.entry((kind, metric)).or_default().extend(blocks);
        }
        Taken {
            series: std::mem::take(series),
            ranges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_blocks_largest_run_minimum_per_subject() {
        let tap = Tap::default();
        let k = DeviceKind::Chiller;
        // Subject 1, persist 2: in block 0 the runs' minima are 1, 1, 1, 5, 6 → 6; the 9
        // after a missing judgement makes no run of two.
        for (i, v) in [1.0, 2.0, 1.0, 5.0, 6.0].into_iter().enumerate() {
            tap.record(Rule::EwmaZ, k, 1, i as Ts * 1000, Some(v), 2);
        }
        tap.record(Rule::EwmaZ, k, 1, 6_000, Some(7.0), 2);
        tap.record(Rule::EwmaZ, k, 1, 7_000, None, 2);
        tap.record(Rule::EwmaZ, k, 1, 8_000, Some(9.0), 2);
        // Next block: 3 then 4 → 3.
        tap.record(Rule::EwmaZ, k, 1, BLOCK, Some(3.0), 2);
        tap.record(Rule::EwmaZ, k, 1, BLOCK + 1000, Some(4.0), 2);
        // Another subject of another kind, with its second block left out.
        tap.record(Rule::EwmaZ, DeviceKind::Ups, 2, 0, Some(0.5), 1);
        tap.leave_out(vec![(BLOCK, 2 * BLOCK)]);
        tap.record(Rule::EwmaZ, DeviceKind::Ups, 2, BLOCK + 5, Some(50.0), 1);
        tap.value(k, 1, "supply_temp_c", 0, 7.0);
        tap.value(k, 3, "supply_temp_c", 0, 6.5);
        tap.value(k, 1, "supply_temp_c", BLOCK + 1, 99.0); // left out
        let taken = tap.take();
        let r = |lo, hi| Range { block: 0, lo, hi };
        assert_eq!(
            taken.ranges[&(k, "supply_temp_c".to_owned())],
            vec![r(7.0, 7.0), r(6.5, 6.5)],
            "per point and block, under its kind and metric"
        );
        let got = taken.series;
        let chiller = &got[&(Rule::EwmaZ, k)];
        assert_eq!(chiller.subjects, 1);
        assert_eq!(chiller.maxima, vec![6.0, 3.0]);
        assert_eq!(got[&(Rule::EwmaZ, DeviceKind::Ups)].maxima, vec![0.5]);
        assert!(tap.take().series.is_empty(), "handed over");
    }
}
