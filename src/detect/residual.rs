//! **residual**: multivariate residuals — metrics of one device that stop moving together.
//!
//! Each device's first `warmup_samples` frames (every metric that varied in them,
//! standardised) fit three models of its normal operation:
//! - **PCA**: the components explaining `variance` of the variance; Hotelling's T² (how
//!   far along the normal directions) and SPE/Q (how far off them — the residual that
//!   grows when related metrics drift apart);
//! - **robust Mahalanobis distance** under a Ledoit–Wolf shrinkage covariance, refitted
//!   once without the warm-up's most distant 2.5 % of rows.
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

use super::{Detector, PerKind};
use crate::attack;
use crate::feature::{Frame, PointId};
use crate::model::{Finding, Severity};
use linfa_linalg::eigh::Eigh;
use ndarray::{Array1, Array2, Axis};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "residual";
/// Metrics named in a finding.
const TOP: usize = 3;

/// Parameters of the residual detector (per kind).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidualParams {
    /// Whether the detector runs.
    pub enabled: bool,
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
}

impl Default for ResidualParams {
    fn default() -> Self {
        Self {
            enabled: false,
            warmup_samples: 600,
            variance: 0.9,
            quantile: 0.995,
            margin: 1.5,
            persist_samples: 3,
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
        Ok(())
    }
}

/// The fitted models of one device.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// Columns: point and metric name.
    pub columns: Vec<(PointId, String)>,
    mean: Array1<f64>,
    sd: Array1<f64>,
    /// PCA loadings (d × k) and eigenvalues (k).
    loadings: Array2<f64>,
    eigen: Array1<f64>,
    /// Robust centre and inverse shrinkage covariance (standardised space).
    centre: Array1<f64>,
    precision: Array2<f64>,
    /// Thresholds of T², SPE and the Mahalanobis distance².
    pub thresholds: [f64; 3],
}

/// Names of the statistics, in [`Fitted::thresholds`] order.
pub const STATISTICS: [&str; 3] = ["Hotelling T²", "SPE (Q)", "Mahalanobis d²"];

impl Fitted {
    /// Fits on warm-up rows (`n × columns`); `None` when fewer than two columns varied.
    pub fn fit(
        rows: &Array2<f64>,
        columns: Vec<(PointId, String)>,
        p: &ResidualParams,
    ) -> Option<Self> {
        let n = rows.nrows();
        let mean = rows.mean_axis(Axis(0))?;
        let sd = rows.std_axis(Axis(0), 1.0);
        let keep: Vec<usize> = (0..rows.ncols())
            .filter(|&j| sd[j] > 1e-9 * mean[j].abs().max(1.0))
            .collect();
        if keep.len() < 2 || n < 10 {
            return None;
        }
        let rows = rows.select(Axis(1), &keep);
        let (mean, sd) = (mean.select(Axis(0), &keep), sd.select(Axis(0), &keep));
        let columns: Vec<_> = keep.iter().map(|&j| columns[j].clone()).collect();
        let z = (&rows - &mean) / &sd;
        let d = z.ncols();
        // PCA on the correlation matrix.
        let cov = z.t().dot(&z) / (n as f64 - 1.0);
        let (vals, vecs) = cov.eigh().ok()?;
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
        let mut k = 0;
        let mut acc = 0.0;
        while k < d - 1 && acc < p.variance * total {
            acc += vals[order[k]].max(0.0);
            k += 1;
        }
        let k = k.max(1);
        let picked = &order[..k];
        let loadings = vecs.select(Axis(1), picked);
        let eigen = Array1::from_iter(picked.iter().map(|&i| vals[i].max(1e-9)));
        // Robust Mahalanobis: shrinkage covariance, refitted without the farthest rows.
        let (centre, precision) = shrunk_precision(&z)?;
        let d2: Vec<f64> = z
            .rows()
            .into_iter()
            .map(|r| mahalanobis(&(&r - &centre), &precision))
            .collect();
        let cut = quantile(&d2, 0.975);
        let inliers: Vec<usize> = (0..n).filter(|&i| d2[i] <= cut).collect();
        let (centre, precision) = shrunk_precision(&z.select(Axis(0), &inliers))?;
        let mut fitted = Self {
            columns,
            mean,
            sd,
            loadings,
            eigen,
            centre,
            precision,
            thresholds: [1.0; 3],
        };
        let scores: Vec<[f64; 3]> = z
            .rows()
            .into_iter()
            .map(|r| fitted.scores_z(&r.to_owned()))
            .collect();
        for s in 0..3 {
            let v: Vec<f64> = scores.iter().map(|x| x[s]).collect();
            fitted.thresholds[s] = (quantile(&v, p.quantile) * p.margin).max(1e-9);
        }
        Some(fitted)
    }

    /// Standardises a raw row.
    pub fn standardise(&self, raw: &[f64]) -> Array1<f64> {
        Array1::from_iter(
            raw.iter()
                .zip(self.mean.iter().zip(&self.sd))
                .map(|(x, (m, s))| (x - m) / s),
        )
    }

    /// T², SPE and Mahalanobis d² of a standardised row.
    pub fn scores_z(&self, z: &Array1<f64>) -> [f64; 3] {
        let t = self.loadings.t().dot(z);
        let t2: f64 = t.iter().zip(&self.eigen).map(|(t, l)| t * t / l).sum();
        let back = self.loadings.dot(&t);
        let spe: f64 = z.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum();
        let d2 = mahalanobis(&(z - &self.centre), &self.precision);
        [t2, spe, d2]
    }

    /// Each column's share of statistic `s` for a standardised row.
    pub fn contributions(&self, z: &Array1<f64>, s: usize) -> Vec<f64> {
        match s {
            0 => {
                let t = self.loadings.t().dot(z) / &self.eigen;
                let w = self.loadings.dot(&t);
                z.iter().zip(&w).map(|(a, b)| a * b).collect()
            }
            1 => {
                let back = self.loadings.dot(&self.loadings.t().dot(z));
                z.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).collect()
            }
            _ => {
                let c = z - &self.centre;
                let w = self.precision.dot(&c);
                c.iter().zip(&w).map(|(a, b)| a * b).collect()
            }
        }
    }
}

fn mahalanobis(c: &Array1<f64>, precision: &Array2<f64>) -> f64 {
    c.dot(&precision.dot(c)).max(0.0)
}

/// The `q` quantile (nearest rank above) of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::INFINITY;
    }
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// Centre and inverse of the Ledoit–Wolf shrinkage covariance of the rows.
fn shrunk_precision(z: &Array2<f64>) -> Option<(Array1<f64>, Array2<f64>)> {
    let n = z.nrows() as f64;
    let d = z.ncols();
    let centre = z.mean_axis(Axis(0))?;
    let c = z - &centre;
    let s = c.t().dot(&c) / n;
    let mu = s.diag().sum() / d as f64;
    let mut target = s.clone();
    for i in 0..d {
        target[[i, i]] -= mu;
    }
    let delta2 = target.iter().map(|x| x * x).sum::<f64>() / d as f64;
    let s_norm2: f64 = s.iter().map(|x| x * x).sum();
    let mut beta2 = 0.0;
    for r in c.rows() {
        let norm2: f64 = r.iter().map(|x| x * x).sum();
        let rsr = r.dot(&s.dot(&r));
        beta2 += norm2 * norm2 - 2.0 * rsr + s_norm2;
    }
    let beta2 = (beta2 / (n * n) / d as f64).min(delta2);
    let alpha = if delta2 > 0.0 { beta2 / delta2 } else { 1.0 };
    let mut sigma = s * (1.0 - alpha);
    for i in 0..d {
        sigma[[i, i]] += alpha * mu;
    }
    let (vals, vecs) = sigma.eigh().ok()?;
    let inv = Array1::from_iter(vals.iter().map(|v| 1.0 / v.max(1e-9)));
    let precision = (&vecs * &inv).dot(&vecs.t());
    Some((centre, precision))
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

/// Per device: warm-up rows, then the fitted models and the run above threshold.
#[derive(Default)]
enum State {
    #[default]
    Unseen,
    Warming(Vec<PointId>, Vec<f64>),
    /// The models and the current run above threshold.
    Fitted(Box<Fitted>, Run),
    /// Nothing to model (fewer than two varying metrics).
    Idle,
}

/// The residual detector.
pub struct Residual {
    params: PerKind<ResidualParams>,
    devices: Vec<State>,
    raw: Vec<f64>,
}

impl Residual {
    /// Builds it.
    pub fn new(params: PerKind<ResidualParams>) -> Self {
        Self {
            params,
            devices: Vec::new(),
            raw: Vec::new(),
        }
    }
}

impl Detector for Residual {
    fn name(&self) -> &'static str {
        NAME
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
        let value = |pt: PointId| frame.store.get(pt).filter(|s| s.n > 0).map(|s| s.value);
        let mut next = None;
        match &mut self.devices[i] {
            s @ State::Unseen => {
                // The columns: the device's points known at its first frame.
                let points: Vec<PointId> = frame.registry.device(frame.device).points.clone();
                *s = State::Warming(points, Vec::new());
            }
            State::Warming(points, rows) => {
                let row: Option<Vec<f64>> = points.iter().map(|&pt| value(pt)).collect();
                let Some(row) = row else {
                    return;
                };
                rows.extend(row);
                let d = points.len();
                if rows.len() / d.max(1) >= p.warmup_samples {
                    let columns = points
                        .iter()
                        .map(|&pt| (pt, frame.registry.point(pt).metric.clone()))
                        .collect();
                    let data =
                        Array2::from_shape_vec((rows.len() / d, d), std::mem::take(rows)).ok();
                    next = Some(match data.and_then(|m| Fitted::fit(&m, columns, p)) {
                        Some(f) => State::Fitted(Box::new(f), Run::default()),
                        None => State::Idle,
                    });
                }
            }
            State::Fitted(f, run) => {
                self.raw.clear();
                for (pt, _) in &f.columns {
                    match value(*pt) {
                        Some(v) => self.raw.push(v),
                        None => return,
                    }
                }
                let z = f.standardise(&self.raw);
                let scores = f.scores_z(&z);
                let (s, ratio) = (0..3)
                    .map(|s| (s, scores[s] / f.thresholds[s]))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, 0.0));
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
                    run.filed = top.iter().map(|&j| f.columns[j].1.clone()).collect();
                }
                let name = &frame.registry.device(frame.device).name;
                let listed = top
                    .iter()
                    .map(|&j| format!("{} = {:.4} (z {:+.1})", f.columns[j].1, self.raw[j], z[j]))
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
                    reason: format!(
                        "{name}'s metrics no longer move together as they did while learning: {} {:.1} over its threshold {:.1} for {} frames; most off: {listed}",
                        STATISTICS[s], scores[s], f.thresholds[s], run.above
                    ),
                    evidence: json!({
                        "statistic": STATISTICS[s],
                        "scores": {"t2": scores[0], "spe": scores[1], "mahalanobis2": scores[2]},
                        "thresholds": {"t2": f.thresholds[0], "spe": f.thresholds[1], "mahalanobis2": f.thresholds[2]},
                        "contributions": top.iter().map(|&j| json!({"metric": f.columns[j].1, "share": contrib[j]})).collect::<Vec<_>>(),
                    }),
                });
            }
            State::Idle => {}
        }
        if let Some(n) = next {
            self.devices[i] = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Two metrics tied together (y = 2x + noise) and one independent.
    fn rows(n: usize, rng: &mut rand::rngs::StdRng) -> Array2<f64> {
        let noise = Normal::new(0.0, 0.05).unwrap();
        let mut v = Vec::new();
        for _ in 0..n {
            let x: f64 = rng.random_range(0.0..10.0);
            v.extend([x, 2.0 * x + noise.sample(rng), 5.0 + noise.sample(rng)]);
        }
        Array2::from_shape_vec((n, 3), v).unwrap()
    }

    fn cols() -> Vec<(PointId, String)> {
        ["flow", "power", "temp"]
            .iter()
            .enumerate()
            .map(|(i, m)| (i as PointId, (*m).to_owned()))
            .collect()
    }

    #[test]
    fn metrics_that_stop_moving_together_raise_spe_and_are_named() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let f = Fitted::fit(&rows(600, &mut rng), cols(), &ResidualParams::default()).unwrap();
        // In range for each metric alone, but power no longer follows flow.
        let z = f.standardise(&[8.0, 4.0, 5.0]);
        let s = f.scores_z(&z);
        assert!(
            s[1] > 10.0 * f.thresholds[1],
            "SPE {s:?} vs {:?}",
            f.thresholds
        );
        let c = f.contributions(&z, 1);
        assert!(
            c[2] < c[0] && c[2] < c[1],
            "the independent metric is not to blame: {c:?}"
        );
        // A normal row stays under every threshold.
        let z = f.standardise(&[3.0, 6.0, 5.0]);
        let s = f.scores_z(&z);
        assert!(
            (0..3).all(|i| s[i] < f.thresholds[i]),
            "{s:?} {:?}",
            f.thresholds
        );
    }

    #[test]
    fn shrinkage_keeps_a_singular_covariance_invertible() {
        // Three copies of one metric: the sample covariance is singular.
        let data = Array2::from_shape_fn((100, 3), |(i, _)| (i % 10) as f64);
        let (_, p) = shrunk_precision(&data).unwrap();
        assert!(p.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn constant_metrics_are_left_out_and_one_varying_metric_is_not_a_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut r = rows(100, &mut rng);
        r.column_mut(2).fill(7.0);
        let f = Fitted::fit(&r, cols(), &ResidualParams::default()).unwrap();
        assert_eq!(f.columns.len(), 2);
        r.column_mut(1).fill(1.0);
        assert!(Fitted::fit(&r, cols(), &ResidualParams::default()).is_none());
    }
}
