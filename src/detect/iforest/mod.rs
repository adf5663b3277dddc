//! **iforest**: a device whose telemetry, taken as a whole, is unlike normal operation.
//!
//! Each frame of a device becomes a feature vector ([`crate::detect::iforest::vectors`]: every metric
//! against its own baseline, states' surprise, physical relations, their maximum and
//! RMS), standardised
//! with the model's scaler and scored by the kind's isolation forest. A score at or above
//! the model's threshold (a quantile of its training scores) for `persist_samples`
//! consecutive frames is a finding. The evidence names the features that raised the
//! score most: each one's contribution is how much the score falls when that feature
//! alone is put back to its training mean. They are found once per run of anomalous
//! frames (their values are updated every frame), so a run is one alert about the same
//! metrics.
//!
//! Models come from `models/` (built into the binary) or from the directory set with
//! `[detectors.iforest] models = "dir"` (`<dir>/<kind>.iforest.json`); a model is
//! checked at load (version, kind, feature list, every tree) and a bad one is a config
//! error naming the file.
//!
//! Blind spots: what training data already contained; a kind without a model; the
//! first `warmup_samples` frames of a device (its baselines are still being learned).

pub mod file;
pub mod fit;
pub mod forest;
pub mod vectors;

use super::{
    sig,
    tap::{Rule, Tap},
    Detector, PerKind,
};
use crate::detect::model_file::{ModelDirs, ModelError};
use crate::feature::{FeatureParams, Frame};
use crate::model::attack;
use crate::model::{DeviceKind, Finding, Severity, Ts, Words};
use crate::tomlfile::{rule, Broken};
use file::ModelFile;
use ndarray::ArrayView1;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use vectors::Extractor;

const NAME: &str = "iforest";
/// Features named in the evidence.
const TOP: usize = 3;

/// Parameters of the isolation-forest detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IForestParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Directory of `<kind>.iforest.json` models; default: the models built in.
    pub models: Option<PathBuf>,
    /// Samples every point (and relation) of a device needs before it is judged: 1800,
    /// three of the baselines' default half-life, because a load that wanders slowly
    /// has shown only part of its spread after one (its z-scores run high) and the
    /// models learned from baselines mostly long past their start.
    pub warmup_samples: u64,
    /// Consecutive frames at or above the threshold needed for a finding.
    pub persist_samples: u32,
    /// Overrides the model's threshold (a score in (0, 1]).
    pub threshold: Option<f64>,
}

impl IForestParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.persist_samples >= 1,
            "persist_samples",
            "must be at least 1",
        )?;
        rule(
            self.threshold.is_none_or(|t| t > 0.0 && t <= 1.0),
            "threshold",
            "must be in (0, 1]",
        )?;
        Ok(())
    }
}

impl Default for IForestParams {
    fn default() -> Self {
        Self {
            enabled: true,
            models: None,
            warmup_samples: 1800,
            persist_samples: 10,
            threshold: None,
        }
    }
}

/// A model checked against this build's feature definition of its kind.
#[derive(Debug)]
pub struct Model {
    /// The model file.
    pub file: ModelFile,
    /// Where it came from (a path, or `built-in:<kind>`).
    pub origin: String,
}

impl Model {
    /// Checks that `file` judges `kind` with exactly the features the extractor gives.
    pub fn new(file: ModelFile, origin: String, kind: DeviceKind) -> Result<Self, ModelError> {
        let invalid = |problem: String| ModelError::Invalid {
            path: origin.clone(),
            problem,
        };
        if file.kind != kind.as_str() {
            return Err(invalid(format!(
                "is a model of {:?}, expected {kind}",
                file.kind
            )));
        }
        let kf = vectors::for_kind(kind)
            .ok_or_else(|| invalid(format!("{kind} devices have no feature definition")))?;
        file.expects(&kf.name_refs()).map_err(invalid)?;
        Ok(Self { file, origin })
    }

    /// Loads `<dir>/<kind>.iforest.json`; `Ok(None)` when there is no such file.
    pub fn load(dir: &Path, kind: DeviceKind) -> Result<Option<Self>, ModelError> {
        let path = dir.join(format!("{kind}.iforest.json"));
        if !path.exists() {
            return Ok(None);
        }
        let file = ModelFile::load(&path)?;
        Self::new(file, path.display().to_string(), kind).map(Some)
    }

    /// Standardises `raw` into `scaled` (missing entries become the training mean, 0) and
    /// returns its score if it is at least `threshold`; `None` (often without visiting
    /// every tree) otherwise.
    pub fn score_at_least(
        &self,
        raw: &[f64],
        scaled: &mut Vec<f64>,
        threshold: f64,
    ) -> Option<f64> {
        self.scale(raw, scaled);
        self.file
            .forest
            .score_row_at_least(ArrayView1::from(&scaled[..]), threshold)
    }

    fn scale(&self, raw: &[f64], scaled: &mut Vec<f64>) {
        let s = &self.file.scaler;
        scaled.clear();
        scaled.extend(
            raw.iter()
                .zip(s.mean.iter().zip(&s.scale))
                .map(|(x, (m, sd))| if x.is_nan() { 0.0 } else { (x - m) / sd }),
        );
    }

    /// For each feature, how much the score of `scaled` falls when that feature alone
    /// is set to its training mean.
    fn contributions(&self, scaled: &[f64]) -> Vec<f64> {
        let base = self.file.forest.score_row(ArrayView1::from(scaled));
        let mut probe = scaled.to_vec();
        (0..scaled.len())
            .map(|j| {
                probe[j] = 0.0;
                let s = self.file.forest.score_row(ArrayView1::from(&probe[..]));
                probe[j] = scaled[j];
                base - s
            })
            .collect()
    }
}

/// The models built into the binary (made by `scripts/train-models.sh`; see
/// `models/README.md`).
const BUILT_IN: &[(DeviceKind, &str)] = &[
    (
        DeviceKind::Ups,
        include_str!("../../../models/ups.iforest.json"),
    ),
    (
        DeviceKind::Chiller,
        include_str!("../../../models/chiller.iforest.json"),
    ),
    (
        DeviceKind::Crah,
        include_str!("../../../models/crah.iforest.json"),
    ),
    (
        DeviceKind::GridMeter,
        include_str!("../../../models/grid_meter.iforest.json"),
    ),
    (
        DeviceKind::Env,
        include_str!("../../../models/env.iforest.json"),
    ),
];

/// The built-in model of a kind, parsed once.
pub fn built_in(kind: DeviceKind) -> Option<Arc<Model>> {
    static MODELS: OnceLock<Vec<(DeviceKind, Arc<Model>)>> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            BUILT_IN
                .iter()
                .filter_map(|&(k, text)| {
                    let origin = format!("built-in:{k}");
                    let m =
                        ModelFile::from_json(text, &origin).and_then(|f| Model::new(f, origin, k));
                    match m {
                        Ok(m) => Some((k, Arc::new(m))),
                        Err(e) => {
                            // The build's own tests load every built-in model; this is
                            // unreachable in a tested build, and a config error would
                            // blame the user for it.
                            tracing::error!(error = %e, "built-in model unusable");
                            None
                        }
                    }
                })
                .collect()
        })
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, m)| Arc::clone(m))
}

/// The model each kind uses: none where disabled, else from `models` or built in.
pub fn models_for(
    params: &PerKind<IForestParams>,
) -> Result<PerKind<Option<Arc<Model>>>, ModelError> {
    let mut loaded = Vec::new();
    let mut dirs = ModelDirs::default();
    for kind in DeviceKind::ALL {
        let p = params.get(kind);
        let m = match (&p.models, p.enabled) {
            (_, false) => None,
            // Only the kinds the forest has features for can have a model.
            (Some(dir), true) if vectors::for_kind(kind).is_some() => {
                dirs.serve(dir, kind.as_str())?;
                let m = Model::load(dir, kind)?.map(Arc::new);
                if m.is_some() {
                    dirs.found(dir);
                }
                m
            }
            (Some(_), true) => None,
            (None, true) => built_in(kind),
        };
        loaded.push(m);
    }
    dirs.check("iforest")?;
    let mut it = loaded.into_iter();
    Ok(PerKind::from_fn(|_| it.next().flatten()))
}

/// The isolation-forest detector.
pub struct IForest {
    params: PerKind<IForestParams>,
    models: PerKind<Option<Arc<Model>>>,
    /// One per kind, each with that kind's warm-up.
    extractors: PerKind<Extractor>,
    /// Per device: consecutive frames over the threshold, and the features that made
    /// the current run anomalous (found once per run, so the alert keeps its metrics).
    runs: Vec<(u32, Vec<(usize, f64)>)>,
    row: Vec<f64>,
    scaled: Vec<f64>,
    tap: Option<Tap>,
}

impl IForest {
    /// Builds it from per-kind parameters and models.
    pub fn new(
        params: PerKind<IForestParams>,
        models: PerKind<Option<Arc<Model>>>,
        features: FeatureParams,
    ) -> Self {
        let extractors =
            PerKind::from_fn(|k| Extractor::new(features, params.get(k).warmup_samples));
        Self {
            params,
            models,
            extractors,
            runs: Vec::new(),
            row: Vec::new(),
            scaled: Vec::new(),
            tap: None,
        }
    }

    /// Records every scored frame's score in `tap` (see [`crate::detect::tap`]).
    pub fn tapped(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }
}

impl Detector for IForest {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let kind = frame.kind();
        let (params, Some(model)) = (self.params.get(kind), self.models.get(kind)) else {
            return;
        };
        if !params.enabled {
            return;
        }
        let Some(described) = self.extractors.get_mut(kind).describe(frame, &mut self.row) else {
            if let Some(r) = self.runs.get_mut(frame.device as usize) {
                r.0 = 0;
            }
            if let Some(tap) = &self.tap {
                tap.record(Rule::Iforest, kind, frame.device, frame.ts, None, 1);
            }
            return;
        };
        let (persist, threshold) = (
            params.persist_samples,
            params.threshold.unwrap_or(model.file.threshold),
        );
        let score = match &self.tap {
            // The whole score, not only whether it reaches the threshold.
            Some(tap) => {
                let s = model.score_at_least(&self.row, &mut self.scaled, f64::MIN_POSITIVE);
                tap.record(Rule::Iforest, kind, frame.device, frame.ts, s, persist);
                s.filter(|&s| s >= threshold)
            }
            None => model.score_at_least(&self.row, &mut self.scaled, threshold),
        };
        let i = frame.device as usize;
        if self.runs.len() <= i {
            self.runs.resize_with(i + 1, Default::default);
        }
        let (row, scaled, state) = (&self.row, &self.scaled, &mut self.runs[i]);
        let Some(score) = score else {
            state.0 = 0;
            return;
        };
        state.0 += 1;
        if state.0 < persist {
            return;
        }
        if state.0 == persist {
            state.1 = top_features(model, scaled);
        }
        out.push(finding(
            frame, model, row, score, threshold, state.0, &state.1, described,
        ));
    }
}

/// The features whose return to the training mean lowers the score most, with that
/// drop, largest first.
fn top_features(model: &Model, scaled: &[f64]) -> Vec<(usize, f64)> {
    let contrib = model.contributions(scaled);
    let mut order: Vec<usize> = (0..contrib.len()).collect();
    order.sort_by(|&a, &b| contrib[b].total_cmp(&contrib[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .filter(|&j| contrib[j] > 0.0)
        .take(TOP)
        .map(|j| (j, contrib[j]))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn finding(
    frame: &Frame<'_>,
    model: &Arc<Model>,
    raw: &[f64],
    score: f64,
    threshold: f64,
    run: u32,
    top: &[(usize, f64)],
    described: vectors::Described,
) -> Finding {
    let kind = frame.kind();
    let kf = vectors::for_kind(kind).expect("a model exists only for kinds with features");
    let mut metrics: Vec<String> = Vec::new();
    for &(j, _) in top {
        // A summary feature is about whichever metric is furthest from its baseline.
        let about = kf.metrics_of(j);
        let about = if about.is_empty() {
            described.loudest.into_iter().collect()
        } else {
            about
        };
        for m in about {
            if !metrics.iter().any(|x| x == m) {
                metrics.push(m.to_owned());
            }
        }
    }
    if metrics.is_empty() {
        metrics.push(described.loudest.unwrap_or(kf.analog[0]).to_owned());
    }
    let technique = attack::for_process_change(
        &metrics[0],
        crate::model::vocabulary::lookup(kind, &metrics[0]).map(|s| s.class),
    );
    let severity = if score >= threshold + (1.0 - threshold) / 2.0 {
        Severity::High
    } else {
        Severity::Medium
    };
    // Made only if read: most findings repeat their open alert's.
    let top: Vec<(usize, f64, f64)> = top
        .iter()
        .map(|&(j, c)| (j, kf.natural(j, raw[j]), c))
        .collect();
    let device = frame.registry.device(frame.device).name.clone();
    let origin = Arc::clone(model);
    let words = Words::later(move || {
        let listed = top
            .iter()
            .map(|&(j, v, _)| format!("{} = {}", kf.names[j], sig(v)))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!(
                "{device}'s telemetry taken together is unlike normal {kind} operation \
                 (isolation score {} ≥ {} for {run} frames); most unusual: {listed}",
                sig(score),
                sig(threshold)
            ),
            json!({
                "score": score,
                "threshold": threshold,
                "consecutive": run,
                "missing_features": described.missing,
                "furthest_from_baseline": described.loudest,
                "model": origin.origin,
                "top": top.iter().map(|&(j, v, c)| json!({
                    "feature": kf.names[j],
                    "value": v,
                    "contribution": c,
                })).collect::<Vec<_>>(),
            }),
        )
    });
    Finding {
        ts: frame.ts,
        device: frame.device,
        metrics,
        detector: NAME,
        score,
        threshold,
        severity,
        technique,
        words,
    }
}

/// Feature rows gathered for training.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Rows, concatenated (each the kind's feature count long; NaN = missing).
    pub data: Vec<f64>,
    /// Number of rows.
    pub rows: usize,
    /// Rows left out because they fell in a labelled window (or its margin).
    pub labelled: usize,
    /// Devices that gave rows.
    pub devices: std::collections::BTreeSet<String>,
}

/// A pseudo-detector that records the feature rows of one kind (for `wattchdog train`):
/// every `every`-th described frame of each device, outside the `skip` windows.
pub struct Recorder {
    kind: DeviceKind,
    extractor: Extractor,
    every: u32,
    skip: Vec<(Ts, Ts)>,
    seen: Vec<u32>,
    row: Vec<f64>,
    sink: Arc<Mutex<Recorded>>,
}

impl Recorder {
    /// Records `kind` into `sink`.
    pub fn new(
        kind: DeviceKind,
        features: FeatureParams,
        warmup: u64,
        every: u32,
        skip: Vec<(Ts, Ts)>,
        sink: Arc<Mutex<Recorded>>,
    ) -> Self {
        Self {
            kind,
            extractor: Extractor::new(features, warmup),
            every: every.max(1),
            skip,
            seen: Vec::new(),
            row: Vec::new(),
            sink,
        }
    }
}

impl Detector for Recorder {
    fn name(&self) -> &'static str {
        "iforest-recorder"
    }

    fn observe(&mut self, frame: &Frame<'_>, _out: &mut Vec<Finding>) {
        if frame.kind() != self.kind || self.extractor.describe(frame, &mut self.row).is_none() {
            return;
        }
        let i = frame.device as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, 0);
        }
        self.seen[i] += 1;
        if self.seen[i] % self.every != 0 {
            return;
        }
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        if self.skip.iter().any(|&(a, b)| (a..=b).contains(&frame.ts)) {
            sink.labelled += 1;
            return;
        }
        sink.data.extend_from_slice(&self.row);
        sink.rows += 1;
        let d = frame.registry.device(frame.device);
        let name = format!("{}/{}", d.site, d.name);
        sink.devices.insert(name);
    }
}

#[cfg(test)]
mod tests {
    use super::fit::{fit_rows, FitOptions};
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    /// A CRAH whose supply and return air move together with the load, as they do.
    fn crah_frame(h: &mut Harness, det: &mut dyn Detector, i: usize, noise: &[Vec<f64>]) {
        let load = (i as f64 / 300.0).sin();
        h.feed_frame(
            det,
            "crah",
            &[
                ("supply_air_temp_c", 18.0 + 0.5 * load + noise[0][i]),
                ("return_air_temp_c", 30.0 + 2.0 * load + noise[1][i]),
                ("fan_speed_pct", 60.0 + 10.0 * load + noise[2][i]),
            ],
        );
    }

    fn noise(n: usize, seed: u64) -> Vec<Vec<f64>> {
        (0..3).map(|k| noisy(n, 0.0, 0.05, seed + k)).collect()
    }

    /// Trains a CRAH model on `n` normal frames, as `wattchdog train` would.
    fn crah_model(n: usize) -> Arc<Model> {
        let sink = Arc::new(Mutex::new(Recorded::default()));
        let mut rec = Recorder::new(
            DeviceKind::Crah,
            FeatureParams::default(),
            100,
            1,
            Vec::new(),
            Arc::clone(&sink),
        );
        let mut h = Harness::new();
        let z = noise(n, 10);
        for i in 0..n {
            crah_frame(&mut h, &mut rec, i, &z);
        }
        let rows = std::mem::take(&mut *sink.lock().unwrap());
        assert_eq!(rows.rows, n - 99, "every frame after the warm-up is a row");
        let opts = FitOptions {
            trees: 50,
            ..FitOptions::default()
        };
        let file = fit_rows(DeviceKind::Crah, &opts, rows, Vec::new()).unwrap();
        let text = file.to_json();
        let file = ModelFile::from_json(&text, "test").unwrap();
        Arc::new(Model::new(file, "test".into(), DeviceKind::Crah).unwrap())
    }

    fn detector(model: Arc<Model>) -> IForest {
        let params = PerKind::from_fn(|_| IForestParams {
            warmup_samples: 100,
            ..IForestParams::default()
        });
        let models = PerKind::from_fn(|k| (k == DeviceKind::Crah).then(|| Arc::clone(&model)));
        IForest::new(params, models, FeatureParams::default())
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn normal_operation_is_quiet_and_a_broken_relation_is_flagged_with_its_features() {
        let model = crah_model(4000);
        let mut det = detector(model);
        let mut h = Harness::new();
        let z = noise(3000, 99);
        for i in 0..2000 {
            crah_frame(&mut h, &mut det, i, &z);
        }
        assert_eq!(h.findings.len(), 0, "no finding on fresh normal data");
        // Return air now reads what supply air reads: a spoofed sensor.
        for i in 2000..2100 {
            let load = (i as f64 / 300.0).sin();
            let supply = 18.0 + 0.5 * load + z[0][i];
            h.feed_frame(
                &mut det,
                "crah",
                &[
                    ("supply_air_temp_c", supply),
                    ("return_air_temp_c", supply + 1.0),
                    ("fan_speed_pct", 60.0 + 10.0 * load + z[2][i]),
                ],
            );
        }
        let at = h.first_after(2000).unwrap_or_else(|| {
            let mut row = Vec::new();
            let d = det.extractors.get_mut(DeviceKind::Crah).describe(
                &crate::feature::Frame {
                    ts: 0,
                    device: 0,
                    updated: &[],
                    store: &h.store,
                    registry: &h.reg,
                },
                &mut row,
            );
            let m = det.models.get(DeviceKind::Crah).clone().unwrap();
            let mut sc = Vec::new();
            panic!(
                "not flagged: {d:?} {row:?} score {} threshold {}",
                m.score_at_least(&row, &mut sc, f64::MIN_POSITIVE)
                    .unwrap_or(0.0),
                m.file.threshold
            )
        });
        assert!(at < 2000 + 20, "flagged at {at}");
        let f = &h.findings[0].1;
        assert_eq!(f.detector, "iforest");
        assert!(f.score >= f.threshold);
        let evidence = f.evidence();
        let top = evidence["top"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= TOP);
        let named: Vec<&str> = top.iter().map(|t| t["feature"].as_str().unwrap()).collect();
        assert!(
            named.iter().any(|n| n.starts_with("return_air")
                || n.starts_with("air_delta")
                || *n == "max_abs_z"
                || *n == "rms_z"),
            "{named:?}"
        );
        assert!(
            f.metrics.iter().any(|m| m == "return_air_temp_c"),
            "{:?}",
            f.metrics
        );
    }

    #[test]
    fn built_in_models_cover_every_kind_with_features() {
        for kind in DeviceKind::ALL {
            match vectors::for_kind(kind) {
                Some(kf) => {
                    let m = built_in(kind).unwrap_or_else(|| panic!("no built-in {kind} model"));
                    assert_eq!(m.file.features, kf.names);
                    assert!(m.file.threshold > 0.5 && m.file.threshold < 1.0);
                }
                None => assert!(built_in(kind).is_none()),
            }
        }
    }

    #[test]
    fn a_model_of_another_kind_or_feature_list_is_refused() {
        let m = built_in(DeviceKind::Ups).unwrap();
        let e = Model::new(m.file.clone(), "x.json".into(), DeviceKind::Chiller).unwrap_err();
        assert!(
            e.to_string().contains("x.json") && e.to_string().contains("ups"),
            "{e}"
        );
        let mut f = built_in(DeviceKind::Crah).unwrap().file.clone();
        f.features.swap(0, 1);
        let e = Model::new(f, "y.json".into(), DeviceKind::Crah).unwrap_err();
        assert!(e.to_string().contains("expects features"), "{e}");
    }

    #[test]
    fn models_load_from_a_directory_and_bad_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let crah = built_in(DeviceKind::Crah).unwrap();
        std::fs::write(dir.path().join("crah.iforest.json"), crah.file.to_json()).unwrap();
        let params = PerKind::from_fn(|_| IForestParams {
            models: Some(dir.path().to_owned()),
            ..IForestParams::default()
        });
        let models = models_for(&params).unwrap();
        assert!(models.get(DeviceKind::Crah).is_some());
        assert!(models.get(DeviceKind::Ups).is_none(), "no file, no model");
        std::fs::write(
            dir.path().join("ups.iforest.json"),
            "{\"format_version\": 1, \"kind\": 3}",
        )
        .unwrap();
        let e = models_for(&params).unwrap_err().to_string();
        assert!(e.contains("ups.iforest.json"), "{e}");
    }
}
