//! The one pipeline: events in arrival order → reorder buffer → features → detectors →
//! correlator. Live sources and replays drive the same code.
//!
//! Time is event time only. Events wait in a reorder buffer until the site's present
//! (what most of its points say, see [`present`]; never one point's word) is
//! `reorder_tolerance` ahead of them (the watermark), then are released in timestamp
//! order; an event older than what was already released is *late*: counted, logged
//! (the first few) and not used, since the state it would update has moved on. An event
//! dated more than `max_ahead` past the present is *ahead*: held apart, used only once
//! the present catches up with it; a point that claims a time ahead and then reports
//! in the present again is a clock that jumps, itself a finding. A second reading of a
//! point at an instant it already reported is dropped (the first kept) and counted, as
//! disagreeing when its value or quality differs.
//! Samples of one device that share a timestamp form a [`Frame`]. Each time the
//! watermark crosses a multiple of `tick`, detectors of silence and the correlator's
//! closing logic run at that instant. Because nothing depends on arrival timing, feeding
//! a capture in one batch, in chunks, or paced at any speed gives the same alerts.

use crate::correlate::{Correlator, Output};
use crate::detect::Detector;
use crate::feature::{FeatureParams, FeatureStore, Frame, PointState};
use crate::model::event::Event;
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::{attack, Finding, Quality, Severity, Ts, Words};
use crate::time::serde_duration;
use crate::tomlfile::{rule, Broken};
use present::Present;
use reorder::{Queued, Reorder};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BinaryHeap;

mod present;
mod reorder;

/// Ingestion and event-time settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineParams {
    /// Readings up to this far behind the newest one are reordered; later ones are
    /// counted as late. Default `"5s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub reorder_tolerance: i64,
    /// Readings dated further than this past the site's present are held apart until
    /// the present catches up with them. Default `"1m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub max_ahead: i64,
    /// Silence detectors are consulted each time the watermark advances this much.
    /// Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub tick: i64,
    /// Upper bound on distinct points (memory guard against hostile captures). Default
    /// 200000.
    pub max_points: usize,
    /// Longest accepted capture line in bytes; longer lines are counted and skipped.
    /// Default 1 MiB.
    pub max_line_bytes: usize,
    /// Live runs raise what one reading proves alone (an impossible value, a UPS in
    /// bypass with healthy mains, a declared death) on its arrival, as an early alert
    /// confirmed or withdrawn after the reorder wait. Default true; replays never do.
    pub early_alerts: bool,
    /// Live runs learn how late readings really arrive (the trusted clock at arrival less
    /// the reading's time) and wait only that long, plus `reorder_margin`, instead of the
    /// whole `reorder_tolerance`; the tolerance stays the bound. Default true; replays
    /// never do.
    pub learn_reorder_wait: bool,
    /// What the learned wait adds to the latest arrival seen, for jitter. Wall time: at
    /// an accelerated clock it stretches with the clock, as `reorder_learning` does.
    /// Default `"100ms"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub reorder_margin: i64,
    /// How long a live run measures arrival delays, waiting the whole tolerance, before
    /// it waits only as long as they need. Wall time. Default `"30s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub reorder_learning: i64,
}

impl Default for PipelineParams {
    fn default() -> Self {
        Self {
            reorder_tolerance: 5_000,
            max_ahead: 60_000,
            tick: 1_000,
            max_points: 200_000,
            max_line_bytes: 1 << 20,
            early_alerts: true,
            learn_reorder_wait: true,
            reorder_margin: 100,
            reorder_learning: 30_000,
        }
    }
}

impl PipelineParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.reorder_tolerance >= 0,
            "reorder_tolerance",
            "must not be negative",
        )?;
        rule(
            self.reorder_margin >= 0,
            "reorder_margin",
            "must not be negative",
        )?;
        rule(
            self.reorder_learning >= 0,
            "reorder_learning",
            "must not be negative",
        )?;
        rule(self.max_ahead >= 1_000, "max_ahead", "must be at least 1s")?;
        rule(self.tick >= 1, "tick", "must be at least 1ms")?;
        rule(self.max_points >= 1, "max_points", "must be at least 1")?;
        rule(
            self.max_line_bytes >= 64,
            "max_line_bytes",
            "must be at least 64",
        )
    }
}

/// Counters of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PipelineStats {
    /// Samples processed.
    pub readings: u64,
    /// Modbus exchanges seen on the wire (packet captures).
    pub exchanges: u64,
    /// Commands processed.
    pub commands: u64,
    /// Events that arrived after the watermark passed them.
    pub late: u64,
    /// Events dated further than `max_ahead` past the site's present when they arrived:
    /// held apart, used only if the present caught up with them.
    pub ahead: u64,
    /// Frames given to the detectors.
    pub frames: u64,
    /// Findings produced.
    pub findings: u64,
    /// Findings an analyst's exception covered (behaviour taught as expected).
    #[serde(skip_serializing_if = "is_zero")]
    pub excepted: u64,
    /// Alerts raised early: on their reading's arrival, before the reorder wait (live).
    #[serde(skip_serializing_if = "is_zero")]
    pub early: u64,
    /// Early alerts withdrawn: the readings before them, once in, did not bear them out.
    #[serde(skip_serializing_if = "is_zero")]
    pub withdrawn: u64,
    /// Samples dropped because their point already had a sample at that instant (an
    /// at-least-once source redelivering, or the same file given twice).
    pub duplicates: u64,
    /// Of the duplicates, those whose value or quality differed from the reading kept
    /// (two sources disagreeing about one instant, or a clock standing still).
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicting: u64,
    /// `late` and `ahead` by the device they came from (`site/device`): which source's
    /// clock is wrong, or forged.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_device: BTreeMap<String, TimeTrouble>,
    /// Live, once learned: how long events wait for the ones that may still overtake
    /// them, in milliseconds (see `learn_reorder_wait`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reorder_wait_ms: Option<i64>,
    /// The device (`site/device`) whose reading arrived latest: the one that sets the
    /// learned wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reorder_wait_from: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One device's events that were late or ahead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeTrouble {
    /// Arrived after the watermark passed them.
    pub late: u64,
    /// Dated further than `max_ahead` past the site's present.
    pub ahead: u64,
}

impl PipelineStats {
    /// Adds another pipeline's counters (several pipelines, one report).
    pub fn add(&mut self, o: &PipelineStats) {
        self.readings += o.readings;
        self.exchanges += o.exchanges;
        self.commands += o.commands;
        self.late += o.late;
        self.ahead += o.ahead;
        self.frames += o.frames;
        self.findings += o.findings;
        self.excepted += o.excepted;
        self.early += o.early;
        self.withdrawn += o.withdrawn;
        self.duplicates += o.duplicates;
        self.conflicting += o.conflicting;
        if o.reorder_wait_ms > self.reorder_wait_ms {
            self.reorder_wait_ms = o.reorder_wait_ms;
            self.reorder_wait_from.clone_from(&o.reorder_wait_from);
        }
        for (device, t) in &o.by_device {
            let mine = self.by_device.entry(device.clone()).or_default();
            mine.late += t.late;
            mine.ahead += t.ahead;
        }
    }
}

/// Devices counted apart in `PipelineStats::by_device`.
const MAX_SOURCES: usize = 10_000;

/// How many late events, and how many events ahead, are logged individually.
const LOG_LATE: u64 = 5;
/// Events that decide the site's present when a capture starts.
const FIRST_EVENTS: usize = 64;
/// Events held apart at most; beyond, they are dropped (counted as ahead all the same).
const MAX_HELD: usize = 100_000;
/// Early alerts awaiting their turn at most; beyond, findings wait for their turn like
/// any other (a flood of impossible values cannot grow memory).
const MAX_EARLY: usize = 1_024;
/// Most silence checks run for one gap in the data; a longer gap is crossed in bigger
/// steps so a capture with a week-long hole does not stall.
const MAX_TICKS_PER_GAP: i64 = 10_000;

/// The pipeline. Owns the registry, the features, the detectors and the correlator.
pub struct Pipeline {
    /// Names of sites, devices and points.
    pub registry: Registry,
    store: FeatureStore,
    detectors: Vec<Box<dyn Detector>>,
    correlator: Correlator,
    queue: Reorder,
    seq: u64,
    tolerance: i64,
    tick: i64,
    present: Present,
    /// Events dated too far past the present, oldest first.
    held: BinaryHeap<Reverse<Queued>>,
    /// The newest time each point with events held apart claimed.
    claims: FxHashMap<PointId, Ts>,
    /// Points that claimed a time ahead and then reported in the present: their next
    /// processed reading raises the finding.
    jumped: FxHashMap<PointId, Ts>,
    released: Ts,
    /// Event time of the first and the last event processed.
    span: Option<(Ts, Ts)>,
    next_tick: Ts,
    frame_ts: Ts,
    dirty: Vec<DeviceId>,
    updated: Vec<Vec<PointId>>,
    findings: Vec<Finding>,
    stats: PipelineStats,
    score_log: Option<Vec<ScorePoint>>,
    /// Whether findings a reading proves alone are raised on its arrival (live).
    instant: bool,
    /// Findings from arrivals, before they become early alerts.
    arrived: Vec<Finding>,
    /// Early alerts whose reading has not had its turn yet.
    early: Vec<Early>,
    /// Live: the reorder wait learned from the readings' arrival delays.
    delay: Option<ArrivalDelay>,
}

/// How late a live run's readings arrive: the reorder wait they need.
///
/// A reading can be overtaken only by one that arrives later yet is dated earlier. If
/// every reading arrives within `largest` of its time, then once the trusted clock is
/// past `t + largest` nothing dated before `t` can still come: the wait need not be the
/// whole tolerance. It is learned, not assumed: for the first `learn_for` of trusted
/// time the wait is the tolerance while delays are measured; afterwards a reading that
/// arrives later than any before is late (counted, logged with its source, as any late
/// reading) and the wait grows to cover it. Delays beyond the tolerance teach nothing
/// (they are late under any wait: a backlog, or a forged time), so one forged reading
/// cannot lengthen the wait past the tolerance, and none can shorten it; nor do those
/// arriving while a disturbed source's backlog may come ([`Pipeline::disturbed`]).
struct ArrivalDelay {
    margin: i64,
    learn_for: i64,
    /// The trusted clock when the readings being pushed were received.
    clock: Option<Ts>,
    /// Trusted time when learning ends (`None` until the clock is first heard).
    learned_at: Option<Ts>,
    /// The latest arrival seen, within the tolerance, and the device it came from.
    largest: i64,
    from: Option<String>,
    /// Until this trusted time the wait is the whole tolerance again: a source was
    /// disturbed (see [`Pipeline::disturbed`]).
    whole_until: Ts,
}

/// An alert raised on its reading's arrival, awaiting the reading's turn.
struct Early {
    key: crate::correlate::AlertKey,
    alert: crate::model::Alert,
}

/// One finding's score, kept for reports that plot scores over time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePoint {
    /// Event time.
    pub ts: Ts,
    /// Device name.
    pub device: String,
    /// Detector.
    pub detector: &'static str,
    /// Metrics, as the alert names them.
    pub metrics: Vec<String>,
    /// Score.
    pub score: f64,
    /// Threshold.
    pub threshold: f64,
}

/// Findings a score log keeps at most (a report needs the incidents' neighbourhoods, not
/// every finding of a noisy capture).
const MAX_SCORE_LOG: usize = 2_000_000;

impl Pipeline {
    /// Builds the pipeline from its parts (checked parameters).
    pub fn new(
        params: &PipelineParams,
        features: FeatureParams,
        detectors: Vec<Box<dyn Detector>>,
        correlator: Correlator,
    ) -> Self {
        Self {
            registry: Registry::new(params.max_points),
            store: FeatureStore::new(features),
            detectors,
            correlator,
            queue: Reorder::default(),
            seq: 0,
            tolerance: params.reorder_tolerance,
            tick: params.tick,
            present: Present::new(params.max_ahead),
            held: BinaryHeap::new(),
            claims: FxHashMap::default(),
            jumped: FxHashMap::default(),
            released: Ts::MIN,
            span: None,
            next_tick: Ts::MIN,
            frame_ts: Ts::MIN,
            dirty: Vec::new(),
            updated: Vec::new(),
            findings: Vec::new(),
            stats: PipelineStats::default(),
            score_log: None,
            instant: false,
            arrived: Vec::new(),
            early: Vec::new(),
            delay: None,
        }
    }

    /// Waits only as long as readings are seen to arrive late, plus `margin`, within the
    /// tolerance, once delays were measured for `learn_for` (see [`ArrivalDelay`]). For
    /// live runs that say when each batch of readings was received
    /// ([`Pipeline::arriving_at`]) and move the trusted clock ([`Pipeline::advance_to`])
    /// only when every reading sent before it has been pushed.
    pub fn learn_reorder_wait(&mut self, margin: i64, learn_for: i64) {
        self.delay = Some(ArrivalDelay {
            margin,
            learn_for,
            clock: None,
            learned_at: None,
            largest: 0,
            from: None,
            whole_until: Ts::MIN,
        });
    }

    /// The readings pushed next were received at trusted time `now` (live): how late
    /// they are is measured against it.
    pub fn arriving_at(&mut self, now: Ts) {
        if let Some(d) = self.delay.as_mut() {
            d.clock = Some(now);
            d.learned_at.get_or_insert(now.saturating_add(d.learn_for));
        }
    }

    /// A source was disturbed at trusted time `at` (it lost or regained a connection to
    /// a broker that keeps its messages): what comes next may be dated back to then, later
    /// than readings were seen to arrive. Events wait the whole tolerance again until a
    /// tolerance past `at`.
    pub fn disturbed(&mut self, at: Ts) {
        if let Some(d) = self.delay.as_mut() {
            d.whole_until = d.whole_until.max(at.saturating_add(self.tolerance));
        }
    }

    /// The wait learned from arrival delays, once learning is over.
    fn learned_wait(&self) -> Option<i64> {
        let d = self.delay.as_ref()?;
        let clock = self.present.clock()?;
        (clock >= d.learned_at?).then(|| d.largest.saturating_add(d.margin).min(self.tolerance))
    }

    /// The learned wait, if it holds now (learned, and no source disturbed).
    fn short_wait(&self) -> Option<i64> {
        let disturbed = self.delay.as_ref().zip(self.present.clock());
        self.learned_wait()
            .filter(|_| disturbed.is_some_and(|(d, clock)| clock >= d.whole_until))
    }

    /// How long events wait for ones that may still overtake them.
    fn wait(&self) -> i64 {
        self.short_wait().unwrap_or(self.tolerance)
    }

    /// Everything before this can be released once the site's present is `now`: a
    /// tolerance behind it, or the learned wait behind the trusted clock. The delays are
    /// measured against the clock, not the present: where most points' clocks run ahead
    /// of ours, the present does too, and a wait behind it would pass the readings of
    /// the points on time.
    fn watermark(&self, now: Ts) -> Ts {
        let whole = now.saturating_sub(self.tolerance);
        match (self.short_wait(), self.present.clock()) {
            (Some(w), Some(clock)) => whole.max(clock.min(now).saturating_sub(w)),
            _ => whole,
        }
    }

    /// The trusted time at which the earliest event waiting can be released, if any: a
    /// live run wakes then instead of at its next heartbeat.
    pub fn next_release(&self) -> Option<Ts> {
        let earliest = self.queue.peek_ts()?;
        Some(earliest.saturating_add(self.wait()).saturating_add(1))
    }

    /// Measures how late a reading dated `ts` arrived (live, learning the wait).
    fn arrival_delay(&mut self, ts: Ts, event: &Event) {
        let Some(d) = self.delay.as_ref() else {
            return;
        };
        let Some(clock) = d.clock else {
            return;
        };
        let late_by = clock.saturating_sub(ts);
        // What a disturbed source kept for its session is a backlog, not its delay.
        if late_by <= d.largest || late_by > self.tolerance || clock < d.whole_until {
            return;
        }
        let learning = d.learned_at.is_none_or(|at| clock < at);
        let source = self.source(event);
        if let Some(d) = self.delay.as_mut() {
            d.largest = late_by;
            d.from = Some(source.clone());
        }
        if !learning {
            let wait = self.learned_wait().unwrap_or(self.tolerance);
            self.stats.reorder_wait_ms = Some(wait);
            self.stats.reorder_wait_from = Some(source.clone());
            tracing::warn!(
                %source,
                arrived_late_by = %crate::time::format_duration(late_by),
                wait = %crate::time::format_duration(wait),
                "a reading arrived later than any before: the reorder wait grows to cover it"
            );
        }
    }

    /// Raises what a reading proves on its own (an impossible value, a UPS forced to
    /// bypass, a declared death) the moment it arrives, as an early alert, instead of
    /// after the reorder wait; the same alert follows in its turn, placed in its
    /// incident (see [`Detector::arrival`]). For live runs: a replay has no one waiting.
    pub fn raise_on_arrival(&mut self) {
        self.instant = true;
    }

    /// Keeps every finding's score from now on (for the HTML report).
    pub fn log_scores(&mut self) {
        self.score_log.get_or_insert_with(Vec::new);
    }

    /// The scores logged so far, handed over.
    pub fn take_scores(&mut self) -> Vec<ScorePoint> {
        self.score_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Adds a detector after those the config enabled (training adds a recorder).
    pub fn add_detector(&mut self, detector: Box<dyn Detector>) {
        self.detectors.push(detector);
    }

    /// Counters so far.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Has every detector judge against `baseline` instead of learning (see
    /// [`Detector::adopt`]).
    pub fn adopt_baseline(&mut self, baseline: &crate::detect::baseline::Baseline) {
        for d in &mut self.detectors {
            d.adopt(baseline);
        }
    }

    /// The detectors' notes on how they judged (see [`Detector::notes`]).
    pub fn detector_notes(&self) -> Vec<String> {
        self.detectors.iter().flat_map(|d| d.notes()).collect()
    }

    /// Names of the enabled detectors.
    pub fn detector_names(&self) -> Vec<&'static str> {
        self.detectors.iter().map(|d| d.name()).collect()
    }

    /// Takes one event in arrival order; emits whatever it lets the pipeline conclude.
    pub fn push(&mut self, event: Event, out: &mut Vec<Output>) {
        let ts = event.ts();
        if self.delay.is_some() {
            self.arrival_delay(ts, &event);
        }
        if ts < self.released {
            self.stats.late += 1;
            let source = self.source(&event);
            self.stats.by_device.entry(source.clone()).or_default().late += 1;
            if self.stats.late <= LOG_LATE {
                tracing::warn!(
                    %source,
                    ts = %crate::time::format_ts(ts),
                    watermark = %crate::time::format_ts(self.released),
                    "late event: older than the reorder tolerance allows; counted, not used"
                );
            }
            return;
        }
        let point = match &event {
            Event::Sample { point, .. } => Some(*point),
            _ => None,
        };
        self.seq += 1;
        let queued = Reverse(Queued {
            ts,
            seq: self.seq,
            event,
        });
        if self.present.admits(ts) {
            if let Event::Sample {
                point,
                value,
                quality,
                ..
            } = queued.0.event
            {
                if self.instant && self.present.at().is_some() {
                    self.arrival(ts, point, value, quality, out);
                }
            }
            if let Some(p) = point {
                match self.claims.remove(&p) {
                    Some(claim) => {
                        self.present.retract(p as usize, ts);
                        self.jumped.insert(p, claim);
                    }
                    None => self.present.vote(p as usize, ts),
                }
            }
            self.queue.push(queued.0);
        } else {
            if let Some(p) = point {
                self.present.vote(p as usize, ts);
                self.claim(p, ts);
            }
            self.hold(queued);
        }
        if self.present.at().is_none() {
            if self.queue.len() + self.held.len() >= FIRST_EVENTS {
                self.establish(None, out);
            }
        } else if let Some(now) = self.present.settle(false) {
            self.present_moved(now, out);
        }
    }

    /// Decides the site's present from a trusted clock's `now`, or from the first
    /// events: the biggest cluster of their times, clusters parted by gaps longer than
    /// `max_ahead`. What lies past it is held apart (a capture's forged first line); what
    /// lies before the cluster is late (a line dated decades early would otherwise open
    /// a decade of silence).
    fn establish(&mut self, now: Option<Ts>, out: &mut Vec<Output>) {
        if now.is_none() {
            // A capture sampled every 5 minutes or every hour steps further than
            // `max_ahead` between rows: every row would be "ahead". The points' own
            // cadence (most of them must agree) widens it to a few of their steps.
            let samples = self.queue.iter().filter_map(|q| match q.event {
                Event::Sample { point, .. } => Some((point, q.ts)),
                _ => None,
            });
            if let Some(step) = cadence(samples.collect()) {
                let wide = step.saturating_mul(AHEAD_STEPS);
                if wide > self.present.max_ahead() {
                    tracing::info!(
                        cadence = %crate::time::format_duration(step),
                        max_ahead = %crate::time::format_duration(wide),
                        "the capture's points report less often than max_ahead: widened to {AHEAD_STEPS} of their steps"
                    );
                    self.present.widen(wide);
                }
            }
        }
        let max_ahead = self.present.max_ahead();
        let mut times: Vec<Ts> = self.queue.iter().map(|q| q.ts).collect();
        let (from, to) = match now {
            // A trusted clock: what came before it is a backlog, not a lie.
            Some(now) => (Ts::MIN, now),
            None => biggest_cluster(&mut times, max_ahead).unwrap_or((Ts::MIN, Ts::MIN)),
        };
        if to == Ts::MIN {
            return;
        }
        match now {
            Some(now) => self.present.trust(now),
            None => self.present.start(to),
        }
        let queued: Vec<Queued> = self.queue.take().collect();
        for q in queued {
            if q.ts < from {
                self.stats.late += 1;
                let source = self.source(&q.event);
                self.stats.by_device.entry(source.clone()).or_default().late += 1;
                tracing::warn!(
                    %source,
                    ts = %crate::time::format_ts(q.ts),
                    present = %crate::time::format_ts(to),
                    "event dated far before the site's present: counted late, not used"
                );
            } else if self.present.admits(q.ts) {
                self.queue.push(q);
            } else {
                if let Event::Sample { point, .. } = &q.event {
                    self.claim(*point, q.ts);
                }
                self.hold(Reverse(q));
            }
        }
        let now = self.present.settle(true).unwrap_or(to).max(to);
        self.present_moved(now, out);
    }

    /// The device an event came from, as `site/device` (past `MAX_SOURCES` distinct
    /// ones, `other`: a capture can name as many devices in commands as it likes).
    fn source(&self, event: &Event) -> String {
        let name = self.source_name(event);
        if self.stats.by_device.len() >= MAX_SOURCES && !self.stats.by_device.contains_key(&name) {
            return "other".into();
        }
        name
    }

    fn source_name(&self, event: &Event) -> String {
        let device = |id| {
            let d = self.registry.device(id);
            format!("{}/{}", d.site, d.name)
        };
        match event {
            Event::Sample { point, .. } => device(self.registry.point(*point).device),
            Event::Traffic(t) => device(t.device),
            Event::Command(c) => format!("{}/{}", c.site, c.device),
        }
    }

    /// `point` has an event held apart at `ts`.
    fn claim(&mut self, point: PointId, ts: Ts) {
        let c = self.claims.entry(point).or_insert(ts);
        *c = (*c).max(ts);
    }

    /// Keeps an event dated too far past the present apart (bounded), counted.
    fn hold(&mut self, q: Reverse<Queued>) {
        self.stats.ahead += 1;
        let source = self.source(&q.0.event);
        self.stats
            .by_device
            .entry(source.clone())
            .or_default()
            .ahead += 1;
        if self.stats.ahead <= LOG_LATE {
            tracing::warn!(
                %source,
                ts = %crate::time::format_ts(q.0.ts),
                present = %self.present.at().map(crate::time::format_ts).unwrap_or_default(),
                "event dated far ahead of the site's present: held apart until the site's time catches up"
            );
        }
        if self.held.len() < MAX_HELD {
            self.held.push(q);
        }
    }

    /// The present moved to `now`: what was held apart and is now admitted goes in, and
    /// the watermark follows.
    fn present_moved(&mut self, now: Ts, out: &mut Vec<Output>) {
        while self
            .held
            .peek()
            .is_some_and(|Reverse(q)| self.present.admits(q.ts))
        {
            if let Some(Reverse(q)) = self.held.pop() {
                if let Event::Sample { point, .. } = &q.event {
                    if self
                        .claims
                        .get(point)
                        .is_some_and(|c| self.present.admits(*c))
                    {
                        self.claims.remove(point);
                    }
                }
                self.queue.push(q);
            }
        }
        self.release(self.watermark(now), out);
    }

    /// Moves the watermark to `now` without an event (live sources call this from a clock
    /// when a site is silent, so silence is still judged).
    pub fn advance_to(&mut self, now: Ts, out: &mut Vec<Output>) {
        if self.present.at().is_none() {
            self.establish(Some(now), out);
        }
        self.present.trust(now);
        if let Some(d) = self.delay.as_mut() {
            let at = *d.learned_at.get_or_insert(now.saturating_add(d.learn_for));
            if now >= at && self.stats.reorder_wait_ms.is_none() {
                let latest = d.largest;
                let from = d.from.clone();
                let wait = self.learned_wait().unwrap_or(self.tolerance);
                self.stats.reorder_wait_ms = Some(wait);
                tracing::info!(
                    wait = %crate::time::format_duration(wait),
                    latest_arrival = %crate::time::format_duration(latest),
                    from = from.as_deref().unwrap_or("none"),
                    "reorder wait learned from how late readings arrive"
                );
                self.stats.reorder_wait_from = from;
            }
        }
        self.present_moved(now, out);
    }

    /// Releases everything still buffered (end of a capture). Alerts still open stay
    /// open: see [`Pipeline::open_alerts`].
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        if self.present.at().is_none() {
            self.establish(None, out);
        } else if let Some(now) = self.present.settle(true) {
            self.present_moved(now, out);
        }
        // What is still held apart never had the site's time follow it: not used.
        if !self.held.is_empty() {
            tracing::warn!(
                events = self.held.len(),
                "events dated far ahead of the site's present were never caught up with: not used"
            );
            self.held.clear();
        }
        let start = out.len();
        while let Some(q) = self.queue.pop() {
            self.process(q.ts, q.event, out);
        }
        self.flush_frames(out);
        self.settle_early(Ts::MAX, start, out);
    }

    /// The site's present: what most of its points say the time is (`None` until enough
    /// have spoken).
    pub fn present(&self) -> Option<Ts> {
        self.present.at()
    }

    /// Whether an event dated `ts` would go in now rather than be held apart as ahead
    /// (before the present is known, every one would).
    pub fn admits(&self, ts: Ts) -> bool {
        self.present.admits(ts)
    }

    /// Event time of the first and the last event processed (not of events late or
    /// held apart).
    pub fn span(&self) -> Option<(Ts, Ts)> {
        self.span
    }

    /// Everything before this event time has been processed (the watermark).
    pub fn released(&self) -> Ts {
        self.released
    }

    /// Alerts open at this point, oldest first.
    pub fn open_alerts(&self) -> Vec<&crate::model::Alert> {
        self.correlator.open_alerts()
    }

    /// Processes every buffered event older than `watermark`. Afterwards everything
    /// before `watermark` is final: frames before it are complete and silence checks up
    /// to it can run. A tick at `now` always sees exactly the events before `now`, however
    /// the watermark got there, which is what makes the output independent of batching.
    fn release(&mut self, watermark: Ts, out: &mut Vec<Output>) {
        if watermark <= self.released {
            return;
        }
        let start = out.len();
        while self.queue.peek_ts().is_some_and(|ts| ts < watermark) {
            if let Some(q) = self.queue.pop() {
                self.process(q.ts, q.event, out);
            }
        }
        self.released = watermark;
        self.flush_frames(out);
        self.ticks_until(watermark, out);
        self.settle_early(watermark, start, out);
    }

    /// One reading arrived (admitted, live): what it proves alone is raised now.
    fn arrival(
        &mut self,
        ts: Ts,
        point: PointId,
        value: f64,
        quality: Quality,
        out: &mut Vec<Output>,
    ) {
        let r = crate::detect::Arrival {
            ts,
            point,
            value,
            quality,
            registry: &self.registry,
        };
        for d in &mut self.detectors {
            d.arrival(&r, &mut self.arrived);
        }
        for f in self.arrived.drain(..) {
            let key = crate::correlate::key_of(&f);
            if self.early.len() >= MAX_EARLY || self.early.iter().any(|e| e.key == key) {
                continue;
            }
            if let Some(alert) = self.correlator.early(&key, f, &self.registry) {
                self.stats.early += 1;
                out.push(Output::Alert(alert.clone()));
                self.early.push(Early { key, alert });
            }
        }
    }

    /// Early alerts whose reading had its turn (before `watermark`): the alert the
    /// correlator opened in `out[start..]` confirms one; one it did not open is
    /// withdrawn, saying why.
    fn settle_early(&mut self, watermark: Ts, start: usize, out: &mut Vec<Output>) {
        if self.early.iter().all(|e| e.alert.ts >= watermark) {
            return;
        }
        let opened: rustc_hash::FxHashSet<&str> = out[start..]
            .iter()
            .filter_map(|o| match o {
                Output::Alert(a) if !a.early => Some(a.id.as_str()),
                _ => None,
            })
            .collect();
        let mut withdrawn = Vec::new();
        self.early.retain(|e| {
            if e.alert.ts >= watermark {
                return true;
            }
            if !opened.contains(e.alert.id.as_str()) {
                let why = match self.correlator.open_id(&e.key) {
                    Some(other) => format!(
                        "withdrawn: once the readings before it were in, alert {other} of the same rule was already open; this finding counts there"
                    ),
                    None => "withdrawn: once the readings before it were in, its finding was not borne out (an analyst's exception, a repeated reading or one out of order)".to_owned(),
                };
                withdrawn.push(crate::model::Alert {
                    status: crate::model::AlertStatus::Closed,
                    summary: why,
                    ..e.alert.clone()
                });
            }
            false
        });
        self.stats.withdrawn += withdrawn.len() as u64;
        out.extend(withdrawn.into_iter().map(Output::Alert));
    }

    fn process(&mut self, ts: Ts, event: Event, out: &mut Vec<Output>) {
        // Processing is in event-time order: the first processed is the earliest.
        self.span = Some((self.span.map_or(ts, |(first, _)| first), ts));
        if self.next_tick == Ts::MIN {
            self.next_tick = ts.div_euclid(self.tick) * self.tick + self.tick;
        }
        if ts > self.frame_ts {
            self.flush_frames(out);
            self.ticks_until(ts, out);
            self.frame_ts = ts;
        }
        match event {
            Event::Sample {
                point,
                value,
                quality,
                ..
            } => {
                if let Some(kept) = self.store.get(point).filter(|st| st.n > 0 && st.ts == ts) {
                    self.stats.duplicates += 1;
                    if !same_reading(kept, value, quality) {
                        self.stats.conflicting += 1;
                        let info = self.registry.point(point);
                        tracing::debug!(
                            device = %self.registry.device(info.device).name,
                            metric = %info.metric,
                            ts = %crate::time::format_ts(kept.ts),
                            kept = kept.value,
                            kept_quality = ?kept.quality,
                            dropped = value,
                            dropped_quality = ?quality,
                            "a second reading at one instant disagrees with the first; the first is kept"
                        );
                    }
                    return;
                }
                self.stats.readings += 1;
                if let Some(claim) = self.jumped.remove(&point) {
                    self.findings.push(self.clock_jump(point, ts, claim));
                }
                let learn = !self.correlator.suspect(point);
                self.store
                    .update_learning(&self.registry, point, ts, value, quality, learn);
                let dev = self.registry.point(point).device as usize;
                if self.updated.len() <= dev {
                    self.updated.resize_with(dev + 1, Vec::new);
                }
                if self.updated[dev].is_empty() {
                    self.dirty.push(dev as DeviceId);
                }
                self.updated[dev].push(point);
            }
            Event::Command(cmd) => {
                self.stats.commands += 1;
                match self.registry.intern_device(&cmd.site, &cmd.device, "") {
                    Ok(dev) => {
                        for d in &mut self.detectors {
                            d.command(&cmd, dev, &self.registry, &mut self.findings);
                        }
                        self.correlate(out);
                    }
                    Err(e) => {
                        tracing::warn!(device = %cmd.device, error = %e, "command not judged")
                    }
                }
            }
            Event::Traffic(t) => {
                self.stats.exchanges += 1;
                for d in &mut self.detectors {
                    d.traffic(&t, &self.registry, &mut self.findings);
                }
                self.correlate(out);
            }
        }
    }

    /// `point` claimed `claim`, far ahead of the site, and now reports `ts` again.
    fn clock_jump(&self, point: PointId, ts: Ts, claim: Ts) -> Finding {
        let info = self.registry.point(point);
        let ahead = claim.saturating_sub(ts);
        Finding {
            ts,
            device: info.device,
            metrics: vec![info.metric.clone()],
            detector: "event_time",
            score: ahead as f64 / 1_000.0,
            threshold: self.present.max_ahead() as f64 / 1_000.0,
            severity: Severity::High,
            technique: attack::SPOOF_REPORTING,
            words: Words::made(
                format!(
                    "{} was reported at {}, {} ahead of the site's time, then in the present again: \
                     a clock that jumps (spoofed or broken reporting); the reading ahead was held apart",
                    info.metric,
                    crate::time::format_ts(claim),
                    crate::time::format_duration(ahead)
                ),
                serde_json::json!({
                    "claimed": crate::time::format_ts(claim),
                    "present": crate::time::format_ts(ts),
                    "ahead_ms": ahead,
                }),
            ),
        }
    }

    /// Runs the silence checks at every tick boundary up to and including `until`.
    fn ticks_until(&mut self, until: Ts, out: &mut Vec<Output>) {
        if self.next_tick == Ts::MIN || until < self.next_tick {
            return;
        }
        let steps = (until - self.next_tick) / self.tick + 1;
        let stride = (steps / MAX_TICKS_PER_GAP + 1) * self.tick;
        while self.next_tick <= until {
            let now = self.next_tick;
            for d in &mut self.detectors {
                d.tick(now, &self.store, &self.registry, &mut self.findings);
            }
            self.correlate(out);
            self.correlator.tick(now, &self.registry, &self.store, out);
            self.next_tick += stride;
        }
    }

    fn flush_frames(&mut self, out: &mut Vec<Output>) {
        if self.dirty.is_empty() {
            return;
        }
        for &dev in &self.dirty {
            let updated = &self.updated[dev as usize];
            let frame = Frame {
                ts: self.frame_ts,
                device: dev,
                updated,
                store: &self.store,
                registry: &self.registry,
            };
            for d in &mut self.detectors {
                d.observe(&frame, &mut self.findings);
            }
            self.stats.frames += 1;
        }
        for &dev in &self.dirty {
            self.updated[dev as usize].clear();
        }
        self.dirty.clear();
        self.correlate(out);
    }

    fn correlate(&mut self, out: &mut Vec<Output>) {
        self.stats.findings += self.findings.len() as u64;
        // Findings of one instant come in the order devices happened to arrive in; a
        // canonical order makes alert and incident ids independent of file order.
        if self.findings.len() > 1 {
            let reg = &self.registry;
            self.findings.sort_by(|a, b| {
                let (da, db) = (reg.device(a.device), reg.device(b.device));
                (&da.site, &da.name, a.detector, &a.metrics)
                    .cmp(&(&db.site, &db.name, b.detector, &b.metrics))
            });
        }
        if let Some(log) = &mut self.score_log {
            for f in &self.findings {
                if log.len() < MAX_SCORE_LOG {
                    log.push(ScorePoint {
                        ts: f.ts,
                        device: self.registry.device(f.device).name.clone(),
                        detector: f.detector,
                        metrics: f.metrics.clone(),
                        score: f.score,
                        threshold: f.threshold,
                    });
                }
            }
        }
        for f in self.findings.drain(..) {
            self.correlator.observe(f, &self.registry, out);
        }
        self.stats.excepted = self.correlator.excepted();
    }

    /// Applies analysts' exceptions from now on (a shared set: changes apply live).
    pub fn set_exceptions(&mut self, e: crate::correlate::exceptions::Exceptions) {
        self.correlator.set_exceptions(e);
    }
}

/// The biggest run of `times` (sorted here) with no gap longer than `gap`, as its first
/// and last time; the later one of equal runs.
/// The steps of a capture's cadence that `max_ahead` is widened to, at least.
const AHEAD_STEPS: i64 = 3;
/// Steps between points' consecutive samples needed to tell a capture's cadence.
const CADENCE_STEPS: usize = 16;

/// The median step between consecutive samples of the same point, over every point's
/// steps (so a few forged lines move it no more than their share); `None` with fewer than
/// `CADENCE_STEPS` steps.
fn cadence(mut samples: Vec<(PointId, Ts)>) -> Option<i64> {
    samples.sort_unstable();
    let mut steps: Vec<i64> = samples
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[1].1 > w[0].1)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    if steps.len() < CADENCE_STEPS {
        return None;
    }
    let mid = steps.len() / 2;
    Some(*steps.select_nth_unstable(mid).1)
}

fn biggest_cluster(times: &mut [Ts], gap: i64) -> Option<(Ts, Ts)> {
    times.sort_unstable();
    let mut best: Option<(usize, Ts, Ts)> = None;
    let mut start = 0;
    for i in 1..=times.len() {
        if i == times.len() || times[i].saturating_sub(times[i - 1]) > gap {
            let run = (i - start, times[start], times[i - 1]);
            if best.is_none_or(|b| run.0 >= b.0) {
                best = Some(run);
            }
            start = i;
        }
    }
    best.map(|(_, from, to)| (from, to))
}

/// Whether a second reading at the instant of `kept` (the reading already taken) says
/// the same thing: the same quality and, when good, the same value. One that does not is
/// two sources disagreeing about one instant, a forged report racing the genuine one or
/// a clock standing still while the values move. Counted and logged, not yet a finding:
/// this build's own pollers can date two answers of one point in one millisecond (at
/// 300× a millisecond is 300 ms of event time), which would be taken for such a
/// disagreement.
fn same_reading(kept: &PointState, value: f64, quality: Quality) -> bool {
    kept.quality == quality
        && (quality != Quality::Good
            || kept.value == value
            || (kept.value.is_nan() && value.is_nan()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cadence_is_what_most_points_step_by() {
        let hourly: Vec<(PointId, Ts)> = (0..3)
            .flat_map(|p| (0..20).map(move |h| (p, h * 3_600_000)))
            .collect();
        assert_eq!(cadence(hourly.clone()), Some(3_600_000));
        // A forged point claiming a year per step does not move it.
        let mut forged = hourly;
        forged.extend((0..10).map(|i| (9, i * 31_536_000_000)));
        assert_eq!(cadence(forged), Some(3_600_000));
        assert_eq!(cadence(vec![(0, 0), (0, 1_000), (1, 5)]), None);
    }

    #[test]
    fn the_biggest_cluster_is_the_present() {
        assert_eq!(biggest_cluster(&mut [], 10), None);
        let mut forged_first = [i64::MAX, 100, 101, 103, 102];
        assert_eq!(biggest_cluster(&mut forged_first, 10), Some((100, 103)));
        let mut early = [-5_000, 100, 101, 102];
        assert_eq!(biggest_cluster(&mut early, 10), Some((100, 102)));
        let mut slow = [0, 10, 20, 30];
        assert_eq!(
            biggest_cluster(&mut slow, 10),
            Some((0, 30)),
            "gaps of gap join"
        );
        let mut tie = [0, 1, 100, 101];
        assert_eq!(
            biggest_cluster(&mut tie, 10),
            Some((100, 101)),
            "the later of equals"
        );
    }

    /// The first and the last time an `ewma_z` alert saw a sustained step of 8σ (from
    /// 2,000 s to 4,500 s of a 1 Hz point) with `[features]` from `features`.
    fn ewma_span_of_a_step(features: &str) -> (Ts, Ts) {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let cfg = crate::Config::from_toml_str(features, "t").unwrap();
        let mut p = cfg.build_pipeline();
        let point = p.registry.intern("s", "pump-1", "other", "x").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let noise = Normal::new(0.0, 1.0).unwrap();
        let mut out = Vec::new();
        let t0 = 1_783_382_400_000;
        for i in 0..5_000 {
            let step = if (2_000..4_500).contains(&i) {
                8.0
            } else {
                0.0
            };
            let value = 50.0 + step + noise.sample(&mut rng);
            p.push(
                Event::Sample {
                    ts: t0 + i * 1_000,
                    point,
                    value,
                    quality: Quality::Good,
                },
                &mut out,
            );
        }
        p.finish(&mut out);
        let (first, last) = out
            .iter()
            .filter_map(|o| match o {
                Output::Alert(a) if a.detector == "ewma_z" => Some((a.ts, a.last_seen)),
                _ => None,
            })
            .fold((Ts::MAX, Ts::MIN), |(f, l), (a, b)| (f.min(a), l.max(b)));
        ((first - t0) / 1_000, (last - t0) / 1_000)
    }

    #[test]
    fn an_attack_under_way_does_not_become_the_baseline_that_closes_its_alert() {
        let (first, last) = ewma_span_of_a_step("");
        assert!((2_000..2_010).contains(&first), "{first}");
        assert!(last >= 4_490, "the alert lasts as long as the step: {last}");
        // Learning through the alert, the baseline absorbed the step within a minute
        // and the alert ended while the step went on for 40 more.
        let (_, learned) = ewma_span_of_a_step("[features]\nfreeze_samples = 0\n");
        assert!(learned < 2_200, "{learned}");
    }

    #[test]
    fn live_a_reading_dated_past_the_clock_by_more_than_max_ahead_is_not_admitted() {
        let cfg = crate::Config::from_toml_str("", "t").unwrap();
        let mut p = cfg.build_pipeline();
        let now = 1_783_382_400_000;
        p.advance_to(now, &mut Vec::new());
        assert!(p.admits(now + 30_000));
        assert!(
            !p.admits(now + 61_000),
            "held apart, so not shown on the board either"
        );
    }

    /// A live pipeline on a UPS reporting `battery_charge_pct` once a second: `feed`
    /// pushes one reading, then moves the clock to it as a live run's heartbeat does.
    struct Live {
        p: Pipeline,
        point: PointId,
        t0: Ts,
    }

    impl Live {
        fn new(early: bool) -> Self {
            let cfg = crate::Config::from_toml_str("", "t").unwrap();
            let mut p = cfg.build_pipeline();
            if early {
                p.raise_on_arrival();
            }
            let point = p
                .registry
                .intern("s", "ups-1", "ups", "battery_charge_pct")
                .unwrap();
            let t0 = 1_783_382_400_000;
            p.advance_to(t0, &mut Vec::new());
            Self { p, point, t0 }
        }

        /// The outputs of pushing `value` at second `s` and of the clock reaching `now`.
        fn feed(&mut self, s: i64, value: f64, now: i64) -> Vec<Output> {
            let mut out = Vec::new();
            let event = Event::Sample {
                ts: self.t0 + s * 1_000,
                point: self.point,
                value,
                quality: Quality::Good,
            };
            self.p.push(event, &mut out);
            self.p.advance_to(self.t0 + now * 1_000, &mut out);
            out
        }
    }

    fn alerts(out: &[Output]) -> Vec<&crate::model::Alert> {
        out.iter()
            .filter_map(|o| match o {
                Output::Alert(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn live_an_impossible_value_is_raised_on_arrival_and_confirmed_in_its_turn() {
        let (mut live, mut replay) = (Live::new(true), Live::new(false));
        let mut finals = [Vec::new(), Vec::new()];
        for s in 1..=20 {
            let v = if s == 10 { 140.0 } else { 90.0 };
            for (i, l) in [&mut live, &mut replay].into_iter().enumerate() {
                let out = l.feed(s, v, s);
                let now = alerts(&out);
                if s == 10 && i == 0 {
                    // The push that brought it, 5 s before the watermark passes it.
                    assert_eq!(now.len(), 1, "{now:?}");
                    assert!(now[0].early && now[0].incident_id.is_empty());
                    assert!(now[0].summary.contains("physical maximum"));
                } else if s < 15 {
                    assert!(now.is_empty(), "second {s}: {now:?}");
                }
                finals[i].extend(now.into_iter().filter(|a| !a.early).cloned());
            }
        }
        assert_eq!(finals[0], finals[1], "the same alerts as a replay");
        assert_eq!(finals[0].len(), 1);
        let confirmed = &finals[0][0];
        assert_eq!(confirmed.ts, live.t0 + 10_000);
        assert!(!confirmed.incident_id.is_empty());
        let stats = live.p.stats();
        assert_eq!((stats.early, stats.withdrawn), (1, 0));
        assert_eq!(replay.p.stats().early, 0);
    }

    #[test]
    fn live_an_early_alert_the_earlier_readings_overtake_is_withdrawn_saying_why() {
        let mut l = Live::new(true);
        for s in 1..=8 {
            l.feed(s, 90.0, s);
        }
        // 12 s arrives before 10 s (both impossible, both within the tolerance).
        let first = l.feed(12, 150.0, 12);
        let early = alerts(&first)[0].clone();
        assert!(early.early && early.ts == l.t0 + 12_000);
        let second = l.feed(10, 140.0, 12);
        assert!(
            alerts(&second).is_empty(),
            "one early alert per rule and point"
        );
        let mut out = Vec::new();
        for s in 13..=20 {
            out.extend(l.feed(s, 90.0, s));
        }
        let got = alerts(&out);
        let real = got
            .iter()
            .find(|a| !a.early)
            .expect("the alert in its turn");
        assert_eq!(real.ts, l.t0 + 10_000, "opened by the earlier reading");
        let withdrawn = got
            .iter()
            .find(|a| a.early)
            .expect("the early one withdrawn");
        assert_eq!(withdrawn.id, early.id);
        assert_eq!(withdrawn.status, crate::model::AlertStatus::Closed);
        assert!(
            withdrawn.summary.contains(&real.id),
            "{}",
            withdrawn.summary
        );
        assert_ne!(withdrawn.snapshot_id(), early.snapshot_id());
        assert_eq!(l.p.stats().withdrawn, 1);
    }

    /// A second reading at an instant already reported is dropped, the first kept; one
    /// that says something else (a forged value published ahead of the genuine one, a
    /// bad flag where the first was good) is counted apart from a redelivery.
    #[test]
    fn a_second_reading_at_one_instant_is_dropped_and_a_disagreeing_one_counted() {
        let mut l = Live::new(true);
        let mut out = Vec::new();
        for s in 1..=8 {
            out.extend(l.feed(s, 90.0, s));
        }
        out.extend(l.feed(10, 91.0, 10)); // forged, first
        out.extend(l.feed(10, 140.0, 10)); // genuine: impossible, raised on arrival
        for s in 11..=20 {
            out.extend(l.feed(s, 90.0, s));
            if s == 12 {
                out.extend(l.feed(s, 90.0, s)); // QoS 1 delivering twice
            }
        }
        l.p.push(
            Event::Sample {
                ts: l.t0 + 20_000,
                point: l.point,
                value: f64::NAN,
                quality: crate::model::Quality::Bad,
            },
            &mut out,
        );
        l.p.advance_to(l.t0 + 30_000, &mut out);
        let got = alerts(&out);
        let limits: Vec<_> = got.iter().filter(|a| a.detector == "limits").collect();
        assert!(
            limits.len() == 2 && limits.iter().all(|a| a.early),
            "the genuine reading was raised on arrival, then withdrawn: {got:?}"
        );
        let stats = l.p.stats();
        assert_eq!((stats.duplicates, stats.conflicting), (3, 2));
        assert_eq!(stats.withdrawn, 1);
    }

    #[test]
    fn live_early_alerts_are_bounded_and_a_flood_still_alerts_in_its_turn() {
        let cfg = crate::Config::from_toml_str("", "t").unwrap();
        let mut p = cfg.build_pipeline();
        p.raise_on_arrival();
        let t0 = 1_783_382_400_000;
        p.advance_to(t0, &mut Vec::new());
        let mut out = Vec::new();
        let n = MAX_EARLY + 500;
        for i in 0..n {
            let point = p
                .registry
                .intern("s", &format!("ups-{i}"), "ups", "battery_charge_pct")
                .unwrap();
            let event = Event::Sample {
                ts: t0 + 1_000,
                point,
                value: 500.0,
                quality: Quality::Good,
            };
            p.push(event, &mut out);
        }
        assert_eq!(alerts(&out).len(), MAX_EARLY);
        p.advance_to(t0 + 10_000, &mut out);
        let confirmed = alerts(&out).iter().filter(|a| !a.early).count();
        assert_eq!(confirmed, n, "every one in its turn");
        assert!(p.early.is_empty());
        assert_eq!(p.stats().withdrawn, 0);
    }

    /// How long the tests' live pipelines measure arrival delays.
    const LEARN_FOR: i64 = 60_000;

    /// A live pipeline learning its wait, on one UPS point: `arrive` pushes a reading
    /// dated `ts` received at `at`, then moves the clock there.
    fn learning() -> (Pipeline, PointId, Ts) {
        let cfg = crate::Config::from_toml_str("", "t").unwrap();
        let mut p = cfg.build_pipeline();
        p.learn_reorder_wait(100, LEARN_FOR);
        let point = p
            .registry
            .intern("s", "ups-1", "ups", "battery_charge_pct")
            .unwrap();
        let t0 = 1_783_382_400_000;
        p.arriving_at(t0);
        p.advance_to(t0, &mut Vec::new());
        (p, point, t0)
    }

    fn arrive(p: &mut Pipeline, point: PointId, ts: Ts, at: Ts) {
        let mut out = Vec::new();
        p.arriving_at(at);
        let quality = Quality::Good;
        p.push(
            Event::Sample {
                ts,
                point,
                value: 90.0,
                quality,
            },
            &mut out,
        );
        p.advance_to(at, &mut out);
    }

    /// A reading a second for the first minute, each received 20 ms after its time: the
    /// learned wait is 120 ms.
    fn arrive_20ms_late_until_learned(p: &mut Pipeline, point: PointId, t0: Ts) {
        for s in 1..=60 {
            let ts = t0 + s * 1_000;
            arrive(p, point, ts, ts + 20);
        }
    }

    #[test]
    fn live_the_wait_is_how_late_readings_arrive_once_learned() {
        let (mut p, point, t0) = learning();
        for s in 1..=59 {
            let ts = t0 + s * 1_000;
            let at = ts + if s == 7 { 350 } else { 20 };
            arrive(&mut p, point, ts, at);
            assert_eq!(p.released(), at - 5_000, "learning: the whole tolerance");
        }
        let ts = t0 + 60_000;
        arrive(&mut p, point, ts, ts + 20);
        assert_eq!(
            p.stats().reorder_wait_ms,
            Some(450),
            "the latest (350 ms) + 100 ms"
        );
        assert_eq!(p.stats().reorder_wait_from.as_deref(), Some("s/ups-1"));
        assert_eq!(p.released(), ts + 20 - 450);
        assert_eq!(
            p.next_release(),
            Some(ts + 451),
            "due when the wait is over"
        );
        assert_eq!(p.stats().late, 0);
    }

    #[test]
    fn live_a_reading_later_than_any_before_is_late_once_and_the_wait_grows() {
        let (mut p, point, t0) = learning();
        arrive_20ms_late_until_learned(&mut p, point, t0);
        assert_eq!(p.stats().reorder_wait_ms, Some(120));
        // 800 ms late: the clock already passed it by more than the wait.
        let ts = t0 + 61_000;
        arrive(&mut p, point, ts + 500, ts + 500);
        arrive(&mut p, point, ts, ts + 800);
        assert_eq!(p.stats().late, 1, "later than learned: late, counted");
        assert_eq!(p.stats().reorder_wait_ms, Some(900));
        for s in 62..=70 {
            let ts = t0 + s * 1_000;
            arrive(&mut p, point, ts + 500, ts + 500);
            arrive(&mut p, point, ts, ts + 800);
        }
        assert_eq!(p.stats().late, 1, "the same lateness again is waited for");
    }

    #[test]
    fn live_a_disturbed_source_has_the_whole_tolerance_for_what_it_kept() {
        let (mut p, point, t0) = learning();
        arrive_20ms_late_until_learned(&mut p, point, t0);
        let other = p
            .registry
            .intern("s", "ups-2", "ups", "battery_charge_pct")
            .unwrap();
        // `other`'s broker connection drops at 61 s and is back at 64 s; what the broker
        // kept for it meanwhile comes then.
        let lost = t0 + 61_000;
        p.disturbed(lost);
        for s in 61..=63 {
            let ts = t0 + s * 1_000;
            arrive(&mut p, point, ts, ts + 20);
        }
        p.disturbed(t0 + 64_000);
        for s in 61..=63 {
            arrive(&mut p, other, t0 + s * 1_000, t0 + 64_000);
        }
        assert_eq!(p.stats().late, 0, "kept for it, not lost");
        assert_eq!(
            p.stats().reorder_wait_ms,
            Some(120),
            "a disturbance teaches nothing"
        );
        // A tolerance after it was back, the learned wait again.
        let ts = t0 + 69_000;
        arrive(&mut p, point, ts, ts + 20);
        assert_eq!(p.released(), ts + 20 - 120);
    }

    #[test]
    fn live_points_whose_clocks_run_ahead_do_not_pass_those_on_time() {
        let (mut p, point, t0) = learning();
        let ahead: Vec<PointId> = (2..5)
            .map(|i| {
                p.registry
                    .intern("s", &format!("ups-{i}"), "ups", "battery_charge_pct")
                    .unwrap()
            })
            .collect();
        // Three of four points are dated 3 s ahead of the clock: the present follows them.
        for s in 1..=70 {
            let ts = t0 + s * 1_000;
            for &a in &ahead {
                arrive(&mut p, a, ts + 3_000, ts);
            }
            arrive(&mut p, point, ts, ts + 20);
        }
        assert!(
            p.present().unwrap() >= t0 + 72_000,
            "the present runs ahead"
        );
        assert_eq!(p.stats().reorder_wait_ms, Some(120));
        assert_eq!(p.stats().late, 0, "the point on time is not passed");
    }

    #[test]
    fn live_a_reading_dated_long_ago_does_not_lengthen_the_wait() {
        let (mut p, point, t0) = learning();
        arrive_20ms_late_until_learned(&mut p, point, t0);
        let now = t0 + 61_000;
        arrive(&mut p, point, now - 3_600_000, now);
        assert_eq!(p.stats().late, 1);
        assert_eq!(
            p.stats().reorder_wait_ms,
            Some(120),
            "a backlog or a lie teaches nothing"
        );
        arrive(&mut p, point, now, now + 20);
        assert_eq!(p.released(), now + 20 - 120);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Early alerts change nothing else: a live pipeline's other outputs are exactly
        /// those of the same pipeline without them, and each early alert is settled once,
        /// confirmed (its id opened in its turn) or withdrawn, never both.
        #[test]
        fn early_alerts_are_settled_once_and_leave_the_rest_unchanged(
            readings in proptest::collection::vec((0usize..3, 0i64..40, proptest::bool::weighted(0.2), 0i64..4), 1..120),
        ) {
            let t0 = 1_783_382_400_000;
            let cfg = crate::Config::from_toml_str("", "t").unwrap();
            let run = |early: bool| {
                let mut p = cfg.build_pipeline();
                if early {
                    p.raise_on_arrival();
                }
                let points: Vec<PointId> = (0..3)
                    .map(|i| p.registry.intern("s", &format!("ups-{i}"), "ups", "battery_charge_pct").unwrap())
                    .collect();
                let mut out = Vec::new();
                p.advance_to(t0, &mut out);
                let mut newest = t0;
                // Arrival order: by second, each reading up to 3 s late.
                let mut order: Vec<_> = readings.iter().map(|&(pt, s, bad, late)| (s + late, pt, s, bad)).collect();
                order.sort();
                for (_, pt, s, bad) in order {
                    let ts = t0 + 1_000 + s * 1_000;
                    let value = if bad { 300.0 } else { 90.0 };
                    p.push(Event::Sample { ts, point: points[pt], value, quality: Quality::Good }, &mut out);
                    newest = newest.max(ts);
                    p.advance_to(newest, &mut out);
                }
                p.finish(&mut out);
                (out, p.stats().clone())
            };
            let (live, stats) = run(true);
            let (plain, _) = run(false);
            let others: Vec<&Output> = live
                .iter()
                .filter(|o| !matches!(o, Output::Alert(a) if a.early))
                .collect();
            proptest::prop_assert_eq!(others, plain.iter().collect::<Vec<_>>());
            let mut settled = 0;
            for (i, o) in live.iter().enumerate() {
                let Output::Alert(e) = o else { continue };
                if !e.early || e.status != crate::model::AlertStatus::Open {
                    continue;
                }
                let later = &live[i + 1..];
                let confirmed = later.iter().any(|o| matches!(o, Output::Alert(a) if a.id == e.id && !a.early));
                let withdrawn = later.iter().filter(|o| matches!(o, Output::Alert(a) if a.id == e.id && a.early)).count();
                proptest::prop_assert!(confirmed != (withdrawn == 1), "{} confirmed {} withdrawn {}", e.id, confirmed, withdrawn);
                proptest::prop_assert!(withdrawn <= 1);
                settled += 1;
            }
            proptest::prop_assert_eq!(settled as u64, stats.early);
        }

        /// A live run that learns its wait gives the alerts a run with the whole tolerance
        /// gives, sooner, and loses no reading, when no reading arrives later than one
        /// did while it learned.
        #[test]
        fn a_learned_wait_changes_when_alerts_come_not_which(
            readings in proptest::collection::vec((0usize..3, 0i64..150, proptest::bool::weighted(0.1), 0i64..1_000), 1..200),
            latest in 0i64..3_000,
        ) {
            let t0 = 1_783_382_400_000;
            let cfg = crate::Config::from_toml_str("", "t").unwrap();
            // Arrival order: each reading `late` ms after its time; the first arrives as
            // late as any, while the wait is learned.
            let mut order: Vec<(Ts, usize, Ts, bool)> = readings
                .iter()
                .map(|&(pt, s, bad, late)| {
                    let ts = t0 + 1_000 + s * 1_000;
                    (ts + late.min(latest), pt, ts, bad)
                })
                .collect();
            order.push((t0 + 500 + latest, 0, t0 + 500, false));
            order.sort();
            let run = |learn: bool| {
                let mut p = cfg.build_pipeline();
                if learn {
                    p.learn_reorder_wait(100, LEARN_FOR);
                }
                let points: Vec<PointId> = (0..3)
                    .map(|i| p.registry.intern("s", &format!("ups-{i}"), "ups", "battery_charge_pct").unwrap())
                    .collect();
                let mut out = Vec::new();
                p.arriving_at(t0);
                p.advance_to(t0, &mut out);
                let mut released = Vec::new();
                for &(at, pt, ts, bad) in &order {
                    p.arriving_at(at);
                    let value = if bad { 300.0 } else { 90.0 };
                    p.push(Event::Sample { ts, point: points[pt], value, quality: Quality::Good }, &mut out);
                    p.advance_to(at, &mut out);
                    released.push(p.released());
                }
                p.finish(&mut out);
                (out, p.stats().clone(), released)
            };
            let (learned, stats, sooner) = run(true);
            let (whole, whole_stats, later) = run(false);
            proptest::prop_assert_eq!(stats.late, 0);
            proptest::prop_assert_eq!(whole_stats.late, 0);
            if order.last().is_some_and(|o| o.0 >= t0 + LEARN_FOR) {
                proptest::prop_assert_eq!(stats.reorder_wait_ms, Some((latest + 100).min(5_000)));
            }
            proptest::prop_assert_eq!(learned, whole);
            proptest::prop_assert!(sooner.iter().zip(&later).all(|(a, b)| a >= b));
        }
    }
}
