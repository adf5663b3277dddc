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

use crate::config::Config;
use crate::detect::iforest::{Recorded, Recorder};
use crate::detect::residual::{
    self,
    file::{FitSettings, ResidualFile},
};
use crate::detect::Detector;
use crate::eval::{load_labels, EvalError};
use crate::iforest::{IForestError, IsolationForestParams};
use crate::model::{DeviceKind, Ts};
use crate::model_file::{Input, ModelFile, Provenance, Scaler, FORMAT_VERSION};
use crate::pipeline::Pipeline;
use crate::replay::{replay_into, ReplayError};
use crate::source::{open_capture, ByteCounter, OpenOptions};
use crate::vectors;
use linfa::traits::{Fit, Predict};
use linfa::{DatasetBase, ParamGuard};
use ndarray::Array2;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// What to train on and how.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Normal captures (labelled windows in them are left out).
    pub inputs: Vec<PathBuf>,
    /// Device kind.
    pub kind: DeviceKind,
    /// Mapping for wide CSV captures.
    pub mapping: Option<crate::source::csv::WideMapping>,
    /// Trees.
    pub trees: usize,
    /// Rows per tree (ψ).
    pub sample_size: usize,
    /// Seed.
    pub seed: u64,
    /// Extrapolating scores (see [`crate::iforest::IsolationForest::extrapolate`]).
    pub extrapolate: bool,
    /// Quantile of the training scores used as the alert threshold.
    pub quantile: f64,
    /// Keep every n-th described frame of a device (neighbouring frames are near copies).
    pub every: u32,
    /// Samples a device needs before its vectors are kept.
    pub warmup_samples: u64,
    /// Time after a labelled window's end still left out.
    pub label_margin: Ts,
}

impl TrainOptions {
    /// Defaults for `kind` (100 trees, ψ = 256, seed 0, extrapolating, threshold at the 99.99th
    /// percentile, every 5th frame, 600-sample warm-up, 30 min after labelled windows).
    pub fn new(inputs: Vec<PathBuf>, kind: DeviceKind) -> Self {
        Self {
            inputs,
            kind,
            mapping: None,
            trees: 100,
            sample_size: 256,
            seed: 0,
            extrapolate: true,
            quantile: 0.9999,
            every: 5,
            warmup_samples: 600,
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
    /// A labels sidecar is malformed.
    #[error(transparent)]
    Labels(#[from] EvalError),
    /// The kind has no feature definition.
    #[error("{0} devices have no feature definition; nothing to train")]
    NoFeatures(DeviceKind),
    /// Too little data.
    #[error("only {rows} feature rows of {kind} devices (need at least {need}): longer captures, or devices of that kind, are needed")]
    TooFewRows {
        /// Kind.
        kind: DeviceKind,
        /// Rows found.
        rows: usize,
        /// Rows needed.
        need: usize,
    },
    /// An option out of range.
    #[error("{0}")]
    Options(String),
    /// Fitting failed.
    #[error(transparent)]
    Fit(#[from] IForestError),
}

/// Fewest rows worth fitting on.
const MIN_ROWS: usize = 64;

/// Trains a model. `cfg` gives the feature parameters (its own iforest is not run).
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<ModelFile, TrainError> {
    if !(opts.quantile > 0.0 && opts.quantile < 1.0) {
        return Err(TrainError::Options(format!(
            "quantile {} is not in (0, 1)",
            opts.quantile
        )));
    }
    // Options are checked before the (long) replay.
    vectors::for_kind(opts.kind).ok_or(TrainError::NoFeatures(opts.kind))?;
    IsolationForestParams::default()
        .n_trees(opts.trees)
        .sample_size(opts.sample_size)
        .check()?;
    let (inputs, rec) = record(cfg, opts, |windows, sink| {
        Box::new(Recorder::new(
            opts.kind,
            cfg.features,
            opts.warmup_samples,
            opts.every,
            windows,
            sink,
        ))
    })?;
    fit_rows(opts, rec, inputs)
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
    quiet.residual_models = crate::detect::PerKind::from_fn(|_| None);
    // Each capture on its own: captures are separate facilities or periods, and merging
    // them by event time would interleave unrelated devices of the same name.
    for path in &opts.inputs {
        // The name, not the path: where the file sat is not part of the model.
        inputs.push(Input {
            file: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            sha256: sha256_file(path)?,
        });
        let sidecar = crate::sim::labels_path(path);
        let mut skip = Vec::new();
        if sidecar.exists() {
            let (labels, _) = load_labels(&sidecar)?;
            skip.extend(
                labels
                    .iter()
                    .map(|l| (l.start, l.end.saturating_add(opts.label_margin))),
            );
        }
        let mut pipeline = Pipeline::new(&quiet);
        pipeline.add_detector(make(skip, Arc::clone(&recorded)));
        let how = OpenOptions::from_config(cfg, opts.mapping.clone());
        let source =
            open_capture(path, &how, &ByteCounter::default()).map_err(ReplayError::from)?;
        let report = replay_into(pipeline, vec![source], None, &mut |_| {}, &mut |_| Ok(()))?;
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
/// settings are the kind's `[detectors.residual]` ones in `cfg`, `opts.quantile`
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
        Box::new(residual::Recorder::new(opts.kind, windows, sink))
    })?;
    let rows = rec.rows();
    if rows < MIN_ROWS {
        return Err(TrainError::TooFewRows {
            kind: opts.kind,
            rows,
            need: MIN_ROWS,
        });
    }
    let model = residual::fit_recorded(&rec, &p).ok_or_else(|| {
        TrainError::Options(format!(
            "no residual model of {}: fewer than two metrics shared by every device varied, or too few rows after the {}-frame drift lag",
            opts.kind, p.drift_lag
        ))
    })?;
    tracing::info!(kind = %opts.kind, rows, devices = rec.devices.len(), columns = model.columns.len(), "trained");
    Ok(ResidualFile {
        format_version: residual::file::FORMAT_VERSION,
        detector: "residual".into(),
        kind: opts.kind.as_str().to_owned(),
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

/// Fits a model of `opts.kind` on recorded rows (the second half of [`train`]).
pub fn fit_rows(
    opts: &TrainOptions,
    rec: Recorded,
    inputs: Vec<Input>,
) -> Result<ModelFile, TrainError> {
    let kf = vectors::for_kind(opts.kind).ok_or(TrainError::NoFeatures(opts.kind))?;
    let params = IsolationForestParams::default()
        .n_trees(opts.trees)
        .sample_size(opts.sample_size)
        .seed(opts.seed)
        .extrapolate(opts.extrapolate)
        .check()?;
    if rec.rows < MIN_ROWS {
        return Err(TrainError::TooFewRows {
            kind: opts.kind,
            rows: rec.rows,
            need: MIN_ROWS,
        });
    }
    if rec.data.len() != rec.rows * kf.len() {
        return Err(TrainError::Options(format!(
            "{} values for {} rows of {} features",
            rec.data.len(),
            rec.rows,
            kf.len()
        )));
    }
    let mut x = Array2::from_shape_vec((rec.rows, kf.len()), rec.data)
        .map_err(|e| TrainError::Options(e.to_string()))?;
    let scaler = standardise(&mut x);
    let forest = params.fit(&DatasetBase::from(x.view()))?;
    let mut scores = forest.predict(&x).to_vec();
    scores.sort_by(f64::total_cmp);
    let at = ((scores.len() - 1) as f64 * opts.quantile).round() as usize;
    let threshold = scores[at.min(scores.len() - 1)];
    tracing::info!(
        kind = %opts.kind,
        rows = rec.rows,
        labelled_rows_left_out = rec.labelled,
        devices = rec.devices.len(),
        threshold,
        "trained"
    );
    Ok(ModelFile {
        format_version: FORMAT_VERSION,
        kind: opts.kind.as_str().to_owned(),
        features: kf.names.clone(),
        scaler,
        params,
        threshold,
        forest,
        provenance: Provenance {
            inputs,
            rows: rec.rows,
            labelled_rows_left_out: rec.labelled,
            devices: rec.devices.into_iter().collect(),
            threshold_quantile: opts.quantile,
            every: opts.every,
            warmup_samples: opts.warmup_samples,
            wattchdog: env!("CARGO_PKG_VERSION").to_owned(),
        },
    })
}

/// Standardises each column in place (missing entries → the column mean, i.e. 0) and
/// returns the scaler. A column without spread gets scale 1.
fn standardise(x: &mut Array2<f64>) -> Scaler {
    let (mut mean, mut scale) = (Vec::new(), Vec::new());
    for mut col in x.columns_mut() {
        let (mut n, mut sum) = (0.0, 0.0);
        for &v in col.iter().filter(|v| !v.is_nan()) {
            n += 1.0;
            sum += v;
        }
        let m = if n > 0.0 { sum / n } else { 0.0 };
        let var = col
            .iter()
            .filter(|v| !v.is_nan())
            .map(|v| (v - m) * (v - m))
            .sum::<f64>()
            / n.max(1.0);
        let sd = if var.sqrt() > 1e-12 && var.is_finite() {
            var.sqrt()
        } else {
            1.0
        };
        col.mapv_inplace(|v| if v.is_nan() { 0.0 } else { (v - m) / sd });
        mean.push(m);
        scale.push(sd);
    }
    Scaler { mean, scale }
}

/// SHA-256 of a file, hex.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardising_centres_scales_and_fills_gaps() {
        let mut x = ndarray::array![[1.0, 5.0, f64::NAN], [3.0, 5.0, 2.0], [f64::NAN, 5.0, 4.0]];
        let s = standardise(&mut x);
        assert_eq!(s.mean, vec![2.0, 5.0, 3.0]);
        assert_eq!(s.scale, vec![1.0, 1.0, 1.0]);
        assert_eq!(
            x,
            ndarray::array![[-1.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
        );
    }

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
