//! Fitting a kind's forest on recorded feature rows: standardise the columns, fit,
//! take the alert threshold from the training scores. `wattchdog train` records the rows.

use super::file::{ModelFile, Scaler, FORMAT_VERSION};
use super::forest::{IForestError, IsolationForestParams};
use super::vectors;
use super::Recorded;
use crate::detect::model_file::{Input, Provenance};
use crate::model::DeviceKind;
use linfa::traits::{Fit, Predict};
use linfa::{DatasetBase, ParamGuard};
use ndarray::Array2;
use thiserror::Error;

/// Fewest rows worth fitting on.
pub const MIN_ROWS: usize = 64;

/// How to fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Trees.
    pub trees: usize,
    /// Rows per tree (ψ).
    pub sample_size: usize,
    /// Seed.
    pub seed: u64,
    /// Extrapolating scores.
    pub extrapolate: bool,
    /// Quantile of the training scores used as the alert threshold.
    pub quantile: f64,
    /// Every n-th frame was kept (recorded in the provenance).
    pub every: u32,
    /// Samples a device needed before its rows were kept (recorded in the provenance).
    pub warmup_samples: u64,
}

impl Default for FitOptions {
    /// 100 trees, ψ = 256, seed 0, extrapolating, threshold at the 99.99th percentile,
    /// every 5th frame, 600-sample warm-up.
    fn default() -> Self {
        Self {
            trees: 100,
            sample_size: 256,
            seed: 0,
            extrapolate: true,
            quantile: 0.9999,
            every: 5,
            warmup_samples: 600,
        }
    }
}

/// Why a forest could not be fitted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FitError {
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
    /// The recorded rows do not have the kind's width.
    #[error("{0}")]
    Shape(String),
    /// The forest's parameters are invalid or fitting failed.
    #[error(transparent)]
    Forest(#[from] IForestError),
}

/// Fits the forest of `kind` on recorded rows; the threshold is the `quantile` of the
/// training rows' scores.
pub fn fit_rows(
    kind: DeviceKind,
    opts: &FitOptions,
    rec: Recorded,
    inputs: Vec<Input>,
) -> Result<ModelFile, FitError> {
    let kf = vectors::for_kind(kind).ok_or(FitError::NoFeatures(kind))?;
    let params = IsolationForestParams::default()
        .n_trees(opts.trees)
        .sample_size(opts.sample_size)
        .seed(opts.seed)
        .extrapolate(opts.extrapolate)
        .check()?;
    if rec.rows < MIN_ROWS {
        return Err(FitError::TooFewRows {
            kind,
            rows: rec.rows,
            need: MIN_ROWS,
        });
    }
    if rec.data.len() != rec.rows * kf.len() {
        return Err(FitError::Shape(format!(
            "{} values for {} rows of {} features",
            rec.data.len(),
            rec.rows,
            kf.len()
        )));
    }
    let mut x = Array2::from_shape_vec((rec.rows, kf.len()), rec.data)
        .map_err(|e| FitError::Shape(e.to_string()))?;
    let scaler = standardise(&mut x);
    let forest = params.fit(&DatasetBase::from(x.view()))?;
    let mut scores = forest.predict(&x).to_vec();
    scores.sort_by(f64::total_cmp);
    let at = ((scores.len() - 1) as f64 * opts.quantile).round() as usize;
    let threshold = scores[at.min(scores.len() - 1)];
    tracing::info!(
        kind = %kind,
        rows = rec.rows,
        labelled_rows_left_out = rec.labelled,
        devices = rec.devices.len(),
        threshold,
        "trained"
    );
    Ok(ModelFile {
        format_version: FORMAT_VERSION,
        kind: kind.as_str().to_owned(),
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
}
