//! **residual**: multivariate residuals — metrics of one device that stop moving together.
//!
//! Each device's first `warmup_samples` frames (every metric that varied in them,
//! standardised) fit three models of its normal operation (`fit.rs`), unless a model
//! trained on the facility's own normal captures is given (`models = "DIR"`,
//! `DIR/<kind>.residual.json`, made by `wattchdog train --detector residual`; `file.rs`):
//! - **PCA**: the components explaining `variance` of the variance; Hotelling's T² (how
//!   far along the normal directions) and SPE/Q (how far off them — the residual that
//!   grows when related metrics drift apart);
//! - **robust Mahalanobis distance** under a Ledoit–Wolf shrinkage covariance, refitted
//!   once without the warm-up's most distant 2.5 % of rows.
//!
//! A slow metric (warm-up von Neumann ratio under `drift_ratio`: a temperature creeping
//! up over a run) is modelled by its change over `drift_lag` frames rather than its
//! level, so it may go on drifting at its usual pace; a step in it still shows.
//!
//! Each statistic's threshold is the `quantile` of its own warm-up scores times
//! `margin`; a frame whose largest score ÷ threshold stays above 1 for
//! `persist_samples` frames is a finding. The evidence names the statistic and the
//! metrics that contribute most to it; the run's findings are filed under the metrics
//! that contributed most when it started, so one anomaly is one alert.
//!
//! Off by default until it has been judged on the simulated matrix; enable it per kind
//! (`[kinds.chiller.residual] enabled = true`) or for all (`[detectors.residual]`).
//! Blind spots: whatever the warm-up already contained; a metric that never varied
//! during the warm-up (left to limits, ewma_z and flatline).

use super::{
    sig,
    tap::{Rule, Tap},
    Detector, PerKind,
};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::points::{DeviceInfo, PointId};
use crate::model::{DeviceKind, Finding, Severity, Ts, Words};
use ndarray::{Array2, ArrayView2};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub mod file;
pub mod fit;

pub use fit::{Fitted, STATISTICS};

const NAME: &str = "residual";
/// Metrics named in a finding.
const TOP: usize = 3;

/// Parameters of the residual detector (per kind).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidualParams {
    /// Whether the detector runs.
    pub enabled: bool,
    /// Directory of trained `<kind>.residual.json` models; a device of a kind with one
    /// is judged from its first frames, without a warm-up.
    pub models: Option<PathBuf>,
    /// Frames of each device the models are fitted on.
    pub warmup_samples: usize,
    /// Share of the variance the PCA components keep.
    pub variance: f64,
    /// Quantile of the warm-up scores a threshold starts from.
    pub quantile: f64,
    /// Factor on that quantile.
    pub margin: f64,
    /// Frames above threshold before a finding.
    pub persist_samples: u32,
    /// A metric whose warm-up von Neumann ratio (mean squared step ÷ variance; 2 for
    /// white noise, near 0 for a slow drift) is below this is modelled by its change over
    /// `drift_lag` frames instead of its level. 0 turns it off.
    pub drift_ratio: f64,
    /// Frames over which a slow metric's change is taken.
    pub drift_lag: usize,
}

impl Default for ResidualParams {
    fn default() -> Self {
        Self {
            enabled: false,
            models: None,
            warmup_samples: 600,
            variance: 0.9,
            quantile: 0.995,
            margin: 1.5,
            persist_samples: 3,
            drift_ratio: 0.8,
            drift_lag: 10,
        }
    }
}

impl ResidualParams {
    /// Checks the ranges; `Err` names the key.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.warmup_samples < 20 {
            return Err(("warmup_samples", "must be at least 20"));
        }
        if !(self.variance > 0.0 && self.variance < 1.0) {
            return Err(("variance", "must be in (0, 1)"));
        }
        if !(self.quantile > 0.5 && self.quantile <= 1.0) {
            return Err(("quantile", "must be in (0.5, 1]"));
        }
        if !(self.margin.is_finite() && self.margin >= 1.0) {
            return Err(("margin", "must be at least 1"));
        }
        if !(0.0..=2.0).contains(&self.drift_ratio) {
            return Err(("drift_ratio", "must be in [0, 2]"));
        }
        if self.drift_lag == 0 || self.drift_lag > self.warmup_samples / 2 {
            return Err(("drift_lag", "must be between 1 and half of warmup_samples"));
        }
        Ok(())
    }
}

/// A run of frames above threshold.
#[derive(Default)]
struct Run {
    /// Frames above threshold in it.
    above: u32,
    /// Frames below threshold since the last one above (a run ends after
    /// `persist_samples` of them: brief dips do not split an anomaly).
    below: u32,
    /// The metrics its findings are filed under, chosen when it starts, so one anomaly
    /// is one alert.
    filed: Vec<String>,
}

/// A device being judged: its model, the model's columns as the device's points, the
/// current run and the last `lag` rows (oldest first) for slow columns.
struct Live {
    model: Arc<Fitted>,
    points: Vec<PointId>,
    run: Run,
    history: VecDeque<Vec<f64>>,
    /// A trained model's: where it came from, and the device's first frames' finest
    /// decimal step per column until its resolution is judged (see [`RESOLUTION_FRAMES`]).
    trained: Option<Trained>,
}

/// What a device judged by a trained model carries beyond its rows.
struct Trained {
    origin: String,
    steps: Vec<f64>,
    seen: usize,
    /// The model's constant metrics the device has, with their value.
    constant: Vec<(PointId, f64)>,
    /// Frames in a row in which one of them was off its value.
    moved: u32,
}

/// Frames of a device whose decimal steps decide whether its readings are as fine as
/// the trained model's (the finest of a few values is the export's resolution); the
/// model judges from the frame after.
const RESOLUTION_FRAMES: usize = 8;
/// A column is too coarse for a model when its readings' step is this many times the
/// model's…
const COARSER: f64 = 4.0;
/// …and a noticeable share of the column's spread in the model (rounding noise of a
/// step q is q/√12, a fifth of σ makes it 6 % of σ: enough to break correlations the
/// model holds tighter than that).
const COARSE_SHARE: f64 = 0.2;

/// Per device: warm-up rows, then the fitted models and the run above threshold.
#[derive(Default)]
enum State {
    #[default]
    Unseen,
    Warming(Vec<PointId>, Vec<f64>),
    Judging(Box<Live>),
    /// Nothing to model (fewer than two varying metrics).
    Idle,
}

/// The trained models: one per kind of the vocabulary, and one per custom kind (a
/// capture's own kind names, such as one per controller of a SCADA export).
#[derive(Clone, Debug, Default)]
pub struct Models {
    by_kind: Vec<Option<Arc<file::ResidualModel>>>,
    custom: BTreeMap<String, Arc<file::ResidualModel>>,
}

impl Models {
    /// The model a device is judged by: its custom kind's, else its kind's (`other`'s
    /// for a custom kind without one of its own).
    pub fn get(&self, device: &DeviceInfo) -> Option<&Arc<file::ResidualModel>> {
        let by_kind = || self.by_kind.get(device.kind.index())?.as_ref();
        match device.kind {
            DeviceKind::Other => self.custom.get(&device.kind_name).or_else(by_kind),
            _ => by_kind(),
        }
    }
}

/// Loads each enabled kind's trained model from its `models` directory; the directory
/// of the `other` kind also gives every custom kind's model (`<name>.residual.json`
/// whose name is not a kind of the vocabulary).
pub fn models_for(
    params: &PerKind<ResidualParams>,
) -> Result<Models, crate::detect::model_file::ModelError> {
    let mut models = Models::default();
    let mut dirs = crate::detect::model_file::ModelDirs::default();
    for kind in DeviceKind::ALL {
        let p = params.get(kind);
        let loaded = match (&p.models, p.enabled) {
            (Some(dir), true) => {
                dirs.serve(dir, kind.as_str())?;
                let m = file::load(dir, kind.as_str())?.map(Arc::new);
                if kind == DeviceKind::Other {
                    models.custom = file::load_custom(dir)?;
                }
                if m.is_some() || (kind == DeviceKind::Other && !models.custom.is_empty()) {
                    dirs.found(dir);
                }
                m
            }
            _ => None,
        };
        models.by_kind.push(loaded);
    }
    dirs.check("residual")?;
    Ok(models)
}

/// The residual detector.
pub struct Residual {
    params: PerKind<ResidualParams>,
    models: Models,
    devices: Vec<State>,
    raw: Vec<f64>,
    notes: Vec<String>,
    tap: Option<Tap>,
}

impl Residual {
    /// Builds it from per-kind parameters and trained models.
    pub fn new(params: PerKind<ResidualParams>, models: Models) -> Self {
        Self {
            params,
            models,
            devices: Vec::new(),
            raw: Vec::new(),
            notes: Vec::new(),
            tap: None,
        }
    }

    /// Records, for every frame a device judged by a model it fitted itself, its largest
    /// score ÷ the warm-up quantile (what `margin` is compared with) in `tap` (see
    /// [`crate::detect::tap`]). A trained model's thresholds are its file's: not tapped.
    pub fn tapped(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// The device's first frame: judged by the kind's trained model when the device has
    /// every metric of it, else warming up on its own points.
    fn start(&self, frame: &Frame<'_>) -> State {
        let device = frame.registry.device(frame.device);
        let points = device.points.clone();
        if let Some(m) = self.models.get(device) {
            let by_metric = |metric: &String| {
                points
                    .iter()
                    .copied()
                    .find(|&pt| &frame.registry.point(pt).metric == metric)
            };
            match m
                .model
                .columns
                .iter()
                .map(by_metric)
                .collect::<Option<Vec<_>>>()
            {
                Some(mapped) => {
                    let constant = m
                        .model
                        .constant
                        .iter()
                        .filter_map(|(metric, v)| Some((by_metric(metric)?, *v)))
                        .collect();
                    return State::Judging(Box::new(Live {
                        model: Arc::clone(&m.model),
                        points: mapped,
                        run: Run::default(),
                        history: VecDeque::new(),
                        trained: Some(Trained {
                            origin: m.origin.clone(),
                            steps: vec![f64::INFINITY; m.model.columns.len()],
                            seen: 0,
                            constant,
                            moved: 0,
                        }),
                    }));
                }
                None => tracing::warn!(
                    device = %device.name,
                    model = %m.origin,
                    "the device lacks metrics of its kind's residual model; it learns its own"
                ),
            }
        }
        State::Warming(points, Vec::new())
    }
}

/// A device judged by a trained model, in its first frames: notes its readings' finest
/// steps and, at the last of them, sets the model aside for one the device learns
/// itself when they are too coarse for it. `true` while the frame is not to be judged.
fn judge_resolution(
    state: &mut State,
    notes: &mut Vec<String>,
    frame: &Frame<'_>,
    value: &dyn Fn(PointId) -> Option<f64>,
) -> bool {
    let State::Judging(live) = state else {
        return false;
    };
    let Some(t) = live.trained.as_mut().filter(|t| t.seen < RESOLUTION_FRAMES) else {
        return false;
    };
    let row: Option<Vec<f64>> = live.points.iter().map(|&pt| value(pt)).collect();
    let Some(row) = row else {
        return true;
    };
    for (step, x) in t.steps.iter_mut().zip(row) {
        *step = step.min(crate::feature::decimal_step(x));
    }
    t.seen += 1;
    if t.seen < RESOLUTION_FRAMES {
        return true;
    }
    if let Some(why) = too_coarse(&live.model, &t.steps) {
        let device = frame.registry.device(frame.device);
        tracing::warn!(device = %device.name, model = %t.origin, %why, "readings coarser than the trained model: the device learns its own");
        notes.push(format!(
            "{}: readings coarser than {} was trained on ({why}); the device learned its own model",
            device.name, t.origin
        ));
        *state = State::Warming(device.points.clone(), Vec::new());
    }
    true
}

/// The device's model fitted on its warm-up rows (`points` their columns), with the
/// last `lag` of them as history.
fn fit_warmup(frame: &Frame<'_>, points: &[PointId], rows: Vec<f64>, p: &ResidualParams) -> State {
    let d = points.len().max(1);
    let Ok(data) = Array2::from_shape_vec((rows.len() / d, d), rows) else {
        return State::Idle;
    };
    let metrics = points
        .iter()
        .map(|&pt| frame.registry.point(pt).metric.clone())
        .collect();
    let Some(model) = Fitted::fit(&[data.view()], metrics, p) else {
        return State::Idle;
    };
    let idx: Vec<usize> = model
        .columns
        .iter()
        .filter_map(|m| {
            points
                .iter()
                .position(|&pt| &frame.registry.point(pt).metric == m)
        })
        .collect();
    let n = data.nrows();
    let history = (n.saturating_sub(model.lag)..n)
        .map(|i| idx.iter().map(|&j| data[[i, j]]).collect())
        .collect();
    State::Judging(Box::new(Live {
        points: idx.iter().map(|&j| points[j]).collect(),
        model: Arc::new(model),
        run: Run::default(),
        history,
        trained: None,
    }))
}

impl Detector for Residual {
    fn name(&self) -> &'static str {
        NAME
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let p = self.params.get(frame.kind());
        if !p.enabled {
            return;
        }
        let i = frame.device as usize;
        if self.devices.len() <= i {
            self.devices.resize_with(i + 1, State::default);
        }
        if matches!(self.devices[i], State::Unseen) {
            self.devices[i] = self.start(frame);
        }
        let value = |pt: PointId| frame.store.get(pt).filter(|s| s.n > 0).map(|s| s.value);
        if judge_resolution(&mut self.devices[i], &mut self.notes, frame, &value) {
            return;
        }
        let mut next = None;
        match &mut self.devices[i] {
            State::Unseen | State::Idle => {}
            State::Warming(points, rows) => {
                let row: Option<Vec<f64>> = points.iter().map(|&pt| value(pt)).collect();
                let Some(row) = row else {
                    return;
                };
                rows.extend(row);
                if rows.len() / points.len().max(1) >= p.warmup_samples {
                    next = Some(fit_warmup(frame, points, std::mem::take(rows), p));
                }
            }
            State::Judging(live) => {
                let Live {
                    model: f,
                    points,
                    run,
                    history,
                    trained,
                } = &mut **live;
                if let Some(t) = trained {
                    constant_moved(frame, t, p, out);
                }
                self.raw.clear();
                for &pt in points.iter() {
                    match value(pt) {
                        Some(v) => self.raw.push(v),
                        None => return,
                    }
                }
                let past = if f.lag == 0 {
                    None
                } else if history.len() < f.lag {
                    // A trained model's first frames: the change of slow metrics is not
                    // known yet.
                    history.push_back(self.raw.clone());
                    return;
                } else {
                    history.pop_front()
                };
                let z = f.standardise(&self.raw, past.as_deref());
                if f.lag > 0 {
                    history.push_back(self.raw.clone());
                }
                let scores = f.scores_z(&z);
                let (s, ratio) = (0..3)
                    .map(|s| (s, scores[s] / f.thresholds[s]))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, 0.0));
                if let Some(tap) = &self.tap {
                    let judged = trained.is_none().then_some(ratio * p.margin);
                    let kind = frame.kind();
                    tap.record(
                        Rule::ResidualMargin,
                        kind,
                        frame.device,
                        frame.ts,
                        judged,
                        p.persist_samples,
                    );
                }
                if ratio <= 1.0 {
                    run.below += 1;
                    if run.below >= p.persist_samples {
                        *run = Run::default();
                    }
                    return;
                }
                run.below = 0;
                run.above += 1;
                if run.above < p.persist_samples {
                    return;
                }
                let contrib = f.contributions(&z, s);
                let mut order: Vec<usize> = (0..contrib.len()).collect();
                order.sort_by(|&a, &b| contrib[b].total_cmp(&contrib[a]).then(a.cmp(&b)));
                let top: Vec<usize> = order
                    .into_iter()
                    .filter(|&j| contrib[j] > 0.0)
                    .take(TOP)
                    .collect();
                if run.filed.is_empty() {
                    run.filed = top.iter().map(|&j| f.columns[j].clone()).collect();
                }
                let name = &frame.registry.device(frame.device).name;
                let listed = top
                    .iter()
                    .map(|&j| format!("{} = {:.4} (z {:+.1})", f.columns[j], self.raw[j], z[j]))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(Finding {
                    ts: frame.ts,
                    device: frame.device,
                    metrics: run.filed.clone(),
                    detector: NAME,
                    score: scores[s],
                    threshold: f.thresholds[s],
                    severity: if ratio >= 3.0 { Severity::High } else { Severity::Medium },
                    technique: attack::MANIPULATION_OF_CONTROL,
                    words: Words::made(
                        format!(
                            "{name}'s metrics no longer move together as they did while learning: {} {:.1} over its threshold {:.1} for {} frames; most off: {listed}",
                            STATISTICS[s], scores[s], f.thresholds[s], run.above
                        ),
                        json!({
                            "statistic": STATISTICS[s],
                            "scores": {"t2": scores[0], "spe": scores[1], "mahalanobis2": scores[2]},
                            "thresholds": {"t2": f.thresholds[0], "spe": f.thresholds[1], "mahalanobis2": f.thresholds[2]},
                            "contributions": top.iter().map(|&j| json!({"metric": f.columns[j], "share": contrib[j]})).collect::<Vec<_>>(),
                        }),
                    ),
                });
            }
        }
        if let Some(n) = next {
            self.devices[i] = n;
        }
    }
}

/// The first column whose readings (their finest decimal step over the first frames)
/// are too coarse for the model, said as "metric at step, trained at step, σ sd".
fn too_coarse(f: &Fitted, steps: &[f64]) -> Option<String> {
    f.columns.iter().enumerate().find_map(|(j, metric)| {
        let trained = *f.resolution.get(j)?;
        let (live, sd) = (steps[j], f.spread(j));
        (trained > 0.0 && live > COARSER * trained && live > COARSE_SHARE * sd)
            .then(|| format!("{metric} at a step of {live}, trained at {trained}, spread {sd:.3e}"))
    })
}

/// A trained model's constant metric off its value for `persist_samples` frames in a
/// row: a state the training data never showed.
fn constant_moved(frame: &Frame<'_>, t: &mut Trained, p: &ResidualParams, out: &mut Vec<Finding>) {
    let off = t.constant.iter().find_map(|&(pt, c)| {
        let v = frame.store.get(pt).filter(|s| s.n > 0)?.value;
        let tolerance = (1e-9 * c.abs().max(1.0)).max(crate::feature::decimal_step(v) / 2.0);
        ((v - c).abs() > tolerance).then_some((pt, c, v, tolerance))
    });
    let Some((pt, c, v, tolerance)) = off else {
        t.moved = 0;
        return;
    };
    t.moved += 1;
    if t.moved < p.persist_samples {
        return;
    }
    let metric = frame.registry.point(pt).metric.clone();
    let name = &frame.registry.device(frame.device).name;
    out.push(Finding {
        ts: frame.ts,
        device: frame.device,
        metrics: vec![metric.clone()],
        detector: NAME,
        score: (v - c).abs(),
        threshold: tolerance,
        severity: Severity::Medium,
        technique: attack::MANIPULATION_OF_CONTROL,
        words: Words::made(
            format!(
                "{name}'s {metric} is {} for {} frames; it was {} throughout the data its model was trained on",
                sig(v),
                t.moved,
                sig(c)
            ),
            json!({"metric": metric, "value": v, "trained_value": c, "frames": t.moved}),
        ),
    });
}

/// Rows gathered for training: per device, its metrics and its stretches of
/// consecutive complete frames outside labelled windows.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Device (`site/name`) → metrics and stretches (rows concatenated).
    pub devices: BTreeMap<String, (Vec<String>, Vec<Vec<f64>>)>,
    /// Frames left out because they fell in a labelled window (or its margin).
    pub labelled: usize,
}

impl Recorded {
    /// The metrics every device has (in the first device's order) and each stretch
    /// projected onto them; `None` when fewer than two metrics are shared.
    pub fn shared(&self) -> Option<(Vec<String>, Vec<Array2<f64>>)> {
        let mut devices = self.devices.values();
        let (first, _) = devices.next()?;
        let metrics: Vec<String> = first
            .iter()
            .filter(|m| self.devices.values().all(|(ms, _)| ms.contains(m)))
            .cloned()
            .collect();
        if metrics.len() < 2 {
            return None;
        }
        let mut out = Vec::new();
        for (ms, stretches) in self.devices.values() {
            let idx: Vec<usize> = metrics
                .iter()
                .filter_map(|m| ms.iter().position(|x| x == m))
                .collect();
            for s in stretches {
                let n = s.len() / ms.len();
                out.push(Array2::from_shape_fn((n, idx.len()), |(i, j)| {
                    s[i * ms.len() + idx[j]]
                }));
            }
        }
        Some((metrics, out))
    }

    /// Rows recorded.
    pub fn rows(&self) -> usize {
        self.devices
            .values()
            .map(|(ms, ss)| ss.iter().map(|s| s.len() / ms.len().max(1)).sum::<usize>())
            .sum()
    }
}

/// Which devices a kind name picks: a kind of the vocabulary by its kind, a custom
/// one by the name the capture gave it.
struct KindFilter {
    kind: DeviceKind,
    name: String,
}

impl KindFilter {
    fn new(name: &str) -> Self {
        Self {
            kind: DeviceKind::parse(name),
            name: name.to_owned(),
        }
    }

    fn matches(&self, d: &DeviceInfo) -> bool {
        match self.kind {
            DeviceKind::Other => d.kind == DeviceKind::Other && d.kind_name == self.name,
            k => d.kind == k,
        }
    }
}

/// A pseudo-detector that records, for `wattchdog train --detector residual`, every
/// complete frame of one kind's devices outside the `skip` windows; a gap (a missing
/// value, a labelled window) ends a stretch, so slow metrics' changes never span one.
pub struct Recorder {
    kind: KindFilter,
    skip: Vec<(Ts, Ts)>,
    /// Per device: its points and whether its current stretch is open.
    seen: Vec<Option<(Vec<PointId>, bool)>>,
    sink: Arc<Mutex<Recorded>>,
}

impl Recorder {
    /// Records the devices of the kind named `kind` (of the vocabulary or a custom one)
    /// into `sink`.
    pub fn new(kind: &str, skip: Vec<(Ts, Ts)>, sink: Arc<Mutex<Recorded>>) -> Self {
        Self {
            kind: KindFilter::new(kind),
            skip,
            seen: Vec::new(),
            sink,
        }
    }
}

impl Detector for Recorder {
    fn name(&self) -> &'static str {
        "residual-recorder"
    }

    fn observe(&mut self, frame: &Frame<'_>, _out: &mut Vec<Finding>) {
        if !self.kind.matches(frame.registry.device(frame.device)) {
            return;
        }
        let i = frame.device as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, None);
        }
        let d = frame.registry.device(frame.device);
        let (points, open) = self.seen[i].get_or_insert_with(|| (d.points.clone(), false));
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        let row: Option<Vec<f64>> = points
            .iter()
            .map(|&pt| frame.store.get(pt).filter(|s| s.n > 0).map(|s| s.value))
            .collect();
        if self.skip.iter().any(|&(a, b)| (a..=b).contains(&frame.ts)) {
            sink.labelled += 1;
            *open = false;
            return;
        }
        let Some(row) = row else {
            *open = false;
            return;
        };
        let (_, stretches) = sink
            .devices
            .entry(format!("{}/{}", d.site, d.name))
            .or_insert_with(|| {
                let metrics = points
                    .iter()
                    .map(|&pt| frame.registry.point(pt).metric.clone())
                    .collect();
                (metrics, Vec::new())
            });
        if !*open || stretches.is_empty() {
            stretches.push(Vec::new());
            *open = true;
        }
        if let Some(s) = stretches.last_mut() {
            s.extend(row);
        }
    }
}

/// Fits a kind's model on recorded stretches with `p`'s settings.
pub fn fit_recorded(rec: &Recorded, p: &ResidualParams) -> Option<Fitted> {
    let (metrics, stretches) = rec.shared()?;
    let views: Vec<ArrayView2<f64>> = stretches.iter().map(Array2::view).collect();
    Fitted::fit(&views, metrics, p)
}
