//! `wattchdog train`: fits the isolation forest (or, `--detector residual`, the
//! residual model) of one device kind on normal captures.
//!
//! The captures go through the ordinary replay pipeline (so features are exactly what
//! the detector will see); a recorder keeps every `every`-th feature vector of the
//! kind's devices, leaving out frames inside labelled windows (plus a margin for the
//! plant to settle) when a labels sidecar sits beside a capture. Columns are
//! standardised (the scaler is saved; missing entries take the column mean), the
//! forest is fitted, and the alert threshold is the `quantile` of the training rows'
//! scores. Same inputs and options give the same file, byte for byte.

use crate::app::cli::{TrainArgs, TrainDetector};
use crate::app::replay::{capture_labels, replay_into, ReplayError};
use crate::app::Summary;
use crate::config::Config;
use crate::detect::iforest::file::ModelFile;
use crate::detect::iforest::fit::{self, FitError, FitOptions, MIN_ROWS};
use crate::detect::iforest::forest::{IForestError, IsolationForestParams};
use crate::detect::iforest::vectors;
use crate::detect::iforest::Recorder;
use crate::detect::model_file::{Input, Provenance};
use crate::detect::residual::{
    self,
    file::{FitSettings, ResidualFile},
};
use crate::detect::Detector;
use crate::model::{DeviceKind, Ts};
use crate::report::eval::EvalError;
use crate::sink::discard;
use crate::source::csv::WideMapping;
use crate::source::{open_capture, ByteCounter, OpenOptions};
use anyhow::Context;
use linfa::ParamGuard;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// What to train on and how.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Normal captures (labelled windows in them are left out).
    pub inputs: Vec<PathBuf>,
    /// Device kind (`Other` for a custom kind).
    pub kind: DeviceKind,
    /// The kind's name: the vocabulary's, or a custom kind as the captures spell it.
    pub kind_name: String,
    /// Mapping for wide CSV captures.
    pub mapping: Option<crate::source::csv::WideMapping>,
    /// The forest's settings (trees, ψ, seed, threshold quantile, every n-th frame,
    /// warm-up).
    pub fit: FitOptions,
    /// Time after a labelled window's end still left out.
    pub label_margin: Ts,
}

impl TrainOptions {
    /// Defaults for `kind` (100 trees, ψ = 256, seed 0, extrapolating, threshold at the 99.99th
    /// percentile, every 5th frame, 600-sample warm-up, 30 min after labelled windows).
    pub fn new(inputs: Vec<PathBuf>, kind_name: &str) -> Self {
        Self {
            inputs,
            kind: DeviceKind::parse(kind_name),
            kind_name: kind_name.to_owned(),
            mapping: None,
            fit: FitOptions::default(),
            label_margin: 30 * 60_000,
        }
    }
}

/// Why training failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A capture could not be read.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// A capture could not be hashed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A labels sidecar is malformed, or a capture's label columns cannot be read.
    #[error(transparent)]
    Labels(#[from] EvalError),
    /// An option out of range.
    #[error("{0}")]
    Options(String),
    /// Invalid forest parameters.
    #[error(transparent)]
    Params(#[from] IForestError),
    /// Too little data, no feature definition, or fitting failed.
    #[error(transparent)]
    Fit(#[from] FitError),
}

/// Trains a model. `cfg` gives the feature parameters (its own iforest is not run).
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<ModelFile, TrainError> {
    if !(opts.fit.quantile > 0.0 && opts.fit.quantile < 1.0) {
        return Err(TrainError::Options(format!(
            "quantile {} is not in (0, 1)",
            opts.fit.quantile
        )));
    }
    // Options are checked before the (long) replay.
    vectors::for_kind(opts.kind).ok_or(FitError::NoFeatures(opts.kind))?;
    IsolationForestParams::default()
        .n_trees(opts.fit.trees)
        .sample_size(opts.fit.sample_size)
        .check()?;
    let (inputs, rec) = record(cfg, opts, |windows, sink| {
        Box::new(Recorder::new(
            opts.kind,
            cfg.features,
            opts.fit.warmup_samples,
            opts.fit.every,
            windows,
            sink,
        ))
    })?;
    Ok(fit::fit_rows(opts.kind, &opts.fit, rec, inputs)?)
}

/// Hashes the inputs and replays each on its own through a pipeline (without any
/// configured model) that also runs the recorder `make` builds for that capture's
/// labelled windows (plus the margin) and the shared record; returns the inputs and
/// what was recorded.
fn record<R: Default>(
    cfg: &Config,
    opts: &TrainOptions,
    make: impl Fn(Vec<(Ts, Ts)>, Arc<Mutex<R>>) -> Box<dyn Detector>,
) -> Result<(Vec<Input>, R), TrainError> {
    let recorded = Arc::new(Mutex::new(R::default()));
    let mut inputs = Vec::new();
    let mut quiet = cfg.clone();
    // The models already configured play no part in making a new one.
    quiet.models = crate::detect::PerKind::from_fn(|_| None);
    quiet.residual_models = residual::Models::default();
    // Each capture on its own: captures are separate facilities or periods, and merging
    // them by event time would interleave unrelated devices of the same name.
    for path in &opts.inputs {
        inputs.push(Input {
            file: file_name(path),
            sha256: sha256_file(path)?,
        });
        let how = OpenOptions::from_config(cfg, opts.mapping.clone());
        let labels = capture_labels(path, &how)?.map_or_else(Vec::new, |(l, _)| l);
        let skip = labels
            .iter()
            .map(|l| (l.start, l.end.saturating_add(opts.label_margin)))
            .collect();
        let mut pipeline = quiet.build_pipeline();
        pipeline.add_detector(make(skip, Arc::clone(&recorded)));
        let source =
            open_capture(path, &how, &ByteCounter::default()).map_err(ReplayError::from)?;
        let report = replay_into(pipeline, vec![source], None, &mut |_| {}, &mut discard())?;
        if let Some(e) = report.errors.first() {
            return Err(TrainError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e.clone()),
            });
        }
    }
    let rec = std::mem::take(
        &mut *recorded
            .lock()
            .map_err(|_| TrainError::Options("recorder poisoned".into()))?,
    );
    Ok((inputs, rec))
}

/// Trains the residual model of `opts.kind` on every complete frame of its devices
/// (`every` and `warmup_samples` are the isolation forest's and play no part); the
/// settings are the kind's `[detectors.residual]` ones in `cfg`, `opts.fit.quantile`
/// aside.
pub fn train_residual(
    cfg: &Config,
    opts: &TrainOptions,
    quantile: Option<f64>,
) -> Result<ResidualFile, TrainError> {
    let mut p = cfg.detectors.get(opts.kind).residual.clone();
    if let Some(q) = quantile {
        p.quantile = q;
    }
    p.check()
        .map_err(|(key, rule)| TrainError::Options(format!("residual {key} {rule}")))?;
    let (inputs, rec) = record(cfg, opts, |windows, sink| {
        Box::new(residual::Recorder::new(&opts.kind_name, windows, sink))
    })?;
    let rows = rec.rows();
    if rows < MIN_ROWS {
        return Err(FitError::TooFewRows {
            kind: opts.kind,
            rows,
            need: MIN_ROWS,
        }
        .into());
    }
    let model = residual::fit_recorded(&rec, &p).ok_or_else(|| {
        TrainError::Options(format!(
            "no residual model of {}: fewer than two metrics shared by every device varied, or too few rows after the {}-frame drift lag",
            opts.kind_name, p.drift_lag
        ))
    })?;
    tracing::info!(kind = %opts.kind_name, rows, devices = rec.devices.len(), columns = model.columns.len(), "trained");
    Ok(ResidualFile {
        format_version: residual::file::FORMAT_VERSION,
        detector: "residual".into(),
        kind: opts.kind_name.clone(),
        settings: FitSettings::from(&p),
        model,
        provenance: Provenance {
            inputs,
            rows,
            labelled_rows_left_out: rec.labelled,
            devices: rec.devices.into_keys().collect(),
            threshold_quantile: p.quantile,
            every: 1,
            warmup_samples: 0,
            wattchdog: env!("CARGO_PKG_VERSION").to_owned(),
        },
    })
}

/// A capture's name without where it sat: where a file sat is no part of a model or a
/// calibration made from it.
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let io = |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// What was trained (one line, on standard error).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct TrainSummary(pub String);

impl fmt::Display for TrainSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.0)
    }
}

impl Summary for TrainSummary {
    fn human_to_stderr(&self) -> bool {
        true
    }
}

/// `wattchdog train`.
pub fn run(a: TrainArgs) -> anyhow::Result<TrainSummary> {
    let cfg = crate::app::load_config(a.config.as_deref())?;
    let kind = &a.kind;
    let named = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    anyhow::ensure!(
        named,
        "--kind {kind:?}: a kind is 1-64 letters, digits, '_' or '-' (one of {} or a custom kind of the captures)",
        DeviceKind::ALL.map(|k| k.as_str()).join(", ")
    );
    if a.detector == TrainDetector::Iforest && vectors::for_kind(DeviceKind::parse(kind)).is_none()
    {
        anyhow::bail!(
            "--kind {kind}: the isolation forest has features only for {}; train a residual model (--detector residual) for other kinds",
            DeviceKind::ALL
                .into_iter()
                .filter(|&k| vectors::for_kind(k).is_some())
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut opts = TrainOptions::new(a.files, kind);
    opts.mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    opts.fit.trees = a.trees;
    opts.fit.sample_size = a.sample_size;
    opts.fit.seed = a.seed;
    opts.fit.extrapolate = !a.no_extrapolate;
    if let (Some(q), TrainDetector::Iforest) = (a.quantile, a.detector) {
        opts.fit.quantile = q;
    }
    opts.fit.every = a.every;
    opts.fit.warmup_samples = a.warmup_samples;
    opts.label_margin = crate::time::parse_duration(&a.label_margin)
        .map_err(|e| anyhow::anyhow!("--label-margin {}: {e}", a.label_margin))?;
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let write = |json: String| {
        std::fs::write(&a.output, json + "\n")
            .with_context(|| format!("cannot write {}", a.output.display()))
    };
    match a.detector {
        TrainDetector::Iforest => {
            let model = train(&cfg, &opts)?;
            write(model.to_json())?;
            let p = &model.provenance;
            Ok(TrainSummary(format!(
                "wrote {}: {kind} model, {} features, {} rows from {} device(s) ({} labelled rows left out), threshold {:.4} (q{})",
                a.output.display(),
                model.features.len(),
                p.rows,
                p.devices.len(),
                p.labelled_rows_left_out,
                model.threshold,
                p.threshold_quantile
            )))
        }
        TrainDetector::Residual => {
            let file = train_residual(&cfg, &opts, a.quantile)?;
            write(file.to_json())?;
            let (m, p) = (&file.model, &file.provenance);
            Ok(TrainSummary(format!(
                "wrote {}: {kind} residual model over {} metrics ({} slow), {} rows from {} device(s) ({} labelled rows left out), thresholds T² {:.2} SPE {:.2} d² {:.2} (q{} × {})",
                a.output.display(),
                m.columns.len(),
                m.slow.iter().filter(|&&s| s).count(),
                p.rows,
                p.devices.len(),
                p.labelled_rows_left_out,
                m.thresholds[0],
                m.thresholds[1],
                m.thresholds[2],
                file.settings.quantile,
                file.settings.margin
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
