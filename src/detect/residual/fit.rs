//! The models behind the residual detector: PCA (Hotelling T², SPE/Q) and a robust
//! Mahalanobis distance over one device's metrics, fitted on stretches of normal
//! operation (a device's warm-up online, or the captures given to `wattchdog train`).

use super::ResidualParams;
use crate::feature::decimal_step;
use linfa_linalg::eigh::Eigh;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Longest lag a model file may ask for (a day of 1 Hz frames).
const MAX_LAG: usize = 86_400;

/// The fitted models of one device, or of one kind's devices when trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fitted {
    /// Columns: metric names.
    pub columns: Vec<String>,
    /// Columns modelled by their change over `lag` frames (slow drifts).
    pub slow: Vec<bool>,
    /// Frames over which slow columns' changes are taken (0: none is slow).
    pub lag: usize,
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
    /// Metrics that never moved in the rows fitted on, with their value: left out of the
    /// models (nothing to correlate), but a change of one is itself news — a pump that
    /// never ran switching on.
    #[serde(default)]
    pub constant: Vec<(String, f64)>,
    /// Each column's resolution in the rows fitted on: the finest decimal step of its
    /// values (0: unknown, a model file from before it was kept). Readings reported
    /// far coarser than this cannot be judged by the model.
    #[serde(default)]
    pub resolution: Vec<f64>,
}

/// Names of the statistics, in [`Fitted::thresholds`] order.
pub const STATISTICS: [&str; 3] = ["Hotelling T²", "SPE (Q)", "Mahalanobis d²"];

impl Fitted {
    /// Fits on stretches of consecutive rows of normal operation (each `n × metrics`,
    /// in `metrics` order); `None` when fewer than two metrics varied or too few rows
    /// remain.
    pub fn fit(
        segments: &[ArrayView2<f64>],
        metrics: Vec<String>,
        p: &ResidualParams,
    ) -> Option<Self> {
        let all = ndarray::concatenate(Axis(0), segments).ok()?;
        let sd = all.std_axis(Axis(0), 1.0);
        let mean = all.mean_axis(Axis(0))?;
        let keep: Vec<usize> = (0..all.ncols())
            .filter(|&j| sd[j] > 1e-9 * mean[j].abs().max(1.0))
            .collect();
        if keep.len() < 2 || all.nrows() < 10 {
            return None;
        }
        let columns: Vec<String> = keep.iter().map(|&j| metrics[j].clone()).collect();
        let constant = (0..all.ncols())
            .filter(|j| !keep.contains(j))
            .map(|j| (metrics[j].clone(), mean[j]))
            .collect();
        let resolution = keep
            .iter()
            .map(|&j| {
                all.column(j)
                    .iter()
                    .copied()
                    .map(decimal_step)
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let segments: Vec<Array2<f64>> =
            segments.iter().map(|s| s.select(Axis(1), &keep)).collect();
        // Slow metrics are modelled by their change over `lag` frames, from a stretch's
        // frame `lag` on.
        let lag = p.drift_lag;
        let slow: Vec<bool> = (0..keep.len())
            .map(|j| p.drift_ratio > 0.0 && von_neumann(&segments, j) < p.drift_ratio)
            .collect();
        let lag = if slow.iter().any(|&s| s) { lag } else { 0 };
        let mut data = Vec::new();
        let mut n = 0;
        for seg in &segments {
            for i in lag..seg.nrows() {
                data.extend((0..seg.ncols()).map(|j| {
                    if slow[j] {
                        seg[[i, j]] - seg[[i - lag, j]]
                    } else {
                        seg[[i, j]]
                    }
                }));
                n += 1;
            }
        }
        if n < 10 {
            return None;
        }
        let rows = Array2::from_shape_vec((n, keep.len()), data).ok()?;
        let n = rows.nrows();
        let mean = rows.mean_axis(Axis(0))?;
        let sd = rows.std_axis(Axis(0), 1.0).mapv(|s| s.max(1e-12));
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
            slow,
            lag,
            mean,
            sd,
            loadings,
            eigen,
            centre,
            precision,
            thresholds: [1.0; 3],
            constant,
            resolution,
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

    /// Checks a model read from a file: shapes agree, numbers are finite, scales and
    /// thresholds positive. `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let d = self.columns.len();
        let k = self.eigen.len();
        if d < 2 {
            return Err(format!("{d} column(s); a model needs at least 2"));
        }
        let mut names: Vec<&String> = self.columns.iter().collect();
        names.sort();
        names.dedup();
        if names.len() != d {
            return Err("a column is named twice".into());
        }
        let shapes = [
            ("slow", self.slow.len(), d),
            ("mean", self.mean.len(), d),
            ("sd", self.sd.len(), d),
            ("centre", self.centre.len(), d),
            ("loadings rows", self.loadings.nrows(), d),
            ("loadings columns", self.loadings.ncols(), k),
            ("precision rows", self.precision.nrows(), d),
            ("precision columns", self.precision.ncols(), d),
        ];
        if let Some((what, got, want)) = shapes.iter().find(|(_, g, w)| g != w) {
            return Err(format!("{what}: {got}, expected {want}"));
        }
        if k == 0 || k > d {
            return Err(format!("{k} components for {d} columns"));
        }
        let numbers = self
            .mean
            .iter()
            .chain(&self.sd)
            .chain(&self.centre)
            .chain(&self.loadings)
            .chain(&self.eigen)
            .chain(&self.precision)
            .chain(&self.thresholds);
        if numbers.into_iter().any(|x| !x.is_finite()) {
            return Err("a number is not finite".into());
        }
        if self
            .sd
            .iter()
            .chain(&self.eigen)
            .chain(&self.thresholds)
            .any(|&x| x <= 0.0)
        {
            return Err("a scale, eigenvalue or threshold is not positive".into());
        }
        if !(self.resolution.is_empty() || self.resolution.len() == d) {
            return Err(format!(
                "resolution: {}, expected {d}",
                self.resolution.len()
            ));
        }
        if self
            .resolution
            .iter()
            .any(|r| !(r.is_finite() && *r >= 0.0))
            || self.constant.iter().any(|(_, v)| !v.is_finite())
        {
            return Err("a resolution or constant value is not a finite number".into());
        }
        if self.constant.iter().any(|(m, _)| self.columns.contains(m)) {
            return Err("a metric is both a column and constant".into());
        }
        if (self.lag > 0) != self.slow.iter().any(|&s| s) || self.lag > MAX_LAG {
            return Err(format!("lag {} does not fit the slow columns", self.lag));
        }
        Ok(())
    }

    /// Column `j`'s spread in the rows fitted on (of its change over `lag`, when slow).
    pub fn spread(&self, j: usize) -> f64 {
        self.sd[j]
    }

    /// Standardises a raw row, given the row `lag` frames earlier for slow columns.
    pub fn standardise(&self, raw: &[f64], past: Option<&[f64]>) -> Array1<f64> {
        Array1::from_iter(raw.iter().enumerate().map(|(j, x)| {
            let x = match past {
                Some(past) if self.slow[j] => x - past[j],
                _ => *x,
            };
            (x - self.mean[j]) / self.sd[j]
        }))
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

/// Column `j`'s mean squared step (within stretches) ÷ its variance (over all rows):
/// about 2 for white noise, near 0 for a slow drift.
fn von_neumann(segments: &[Array2<f64>], j: usize) -> f64 {
    let (mut n, mut sum, mut sq, mut steps, mut m) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for seg in segments {
        let c = seg.column(j);
        for (i, &v) in c.iter().enumerate() {
            n += 1.0;
            sum += v;
            sq += v * v;
            if i > 0 {
                steps += (v - c[i - 1]).powi(2);
                m += 1.0;
            }
        }
    }
    let var = sq / n - (sum / n).powi(2);
    if var > 0.0 && m > 0.0 {
        steps / m / var
    } else {
        2.0
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

    fn cols() -> Vec<String> {
        ["flow", "power", "temp"].map(String::from).to_vec()
    }

    #[test]
    fn decimal_steps_and_what_training_keeps_of_resolution_and_constants() {
        assert_eq!(decimal_step(21.07), 0.01);
        assert_eq!(decimal_step(-3.125), 0.001);
        assert_eq!(decimal_step(1200.0), 1.0);
        assert_eq!(decimal_step(0.123456789), 1e-9);
        assert_eq!(
            decimal_step(7.03 + 0.03),
            0.01,
            "float noise is not resolution"
        );
        assert!(decimal_step(std::f64::consts::PI) <= 1e-10);
        assert!(decimal_step(f64::NAN).is_infinite());
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut data = rows(400, &mut rng);
        data.column_mut(0)
            .mapv_inplace(|x| (x * 100.0).round() / 100.0);
        let mut with_idle =
            ndarray::concatenate(Axis(1), &[data.view(), Array2::zeros((400, 1)).view()]).unwrap();
        with_idle.column_mut(3).fill(0.0);
        let mut names = cols();
        names.push("pump_kw".into());
        let f = Fitted::fit(&[with_idle.view()], names, &ResidualParams::default()).unwrap();
        assert_eq!(f.constant, vec![("pump_kw".to_owned(), 0.0)]);
        assert_eq!(f.resolution[0], 0.01);
        assert!(f.resolution[1] < 1e-6);
        assert_eq!(f.check(), Ok(()));
    }

    #[test]
    fn metrics_that_stop_moving_together_raise_spe_and_are_named() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let f = Fitted::fit(
            &[rows(600, &mut rng).view()],
            cols(),
            &ResidualParams::default(),
        )
        .unwrap();
        // In range for each metric alone, but power no longer follows flow.
        let z = f.standardise(&[8.0, 4.0, 5.0], None);
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
        let z = f.standardise(&[3.0, 6.0, 5.0], None);
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
    fn a_slow_drift_is_modelled_by_its_change_so_it_can_go_on_drifting() {
        // flow and power tied together; the water warms by 0.01 °C per frame.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let noise = Normal::new(0.0, 0.02).unwrap();
        let row = |i: usize, rng: &mut rand::rngs::StdRng| {
            let x: f64 = rng.random_range(0.0..10.0);
            [
                x,
                2.0 * x + noise.sample(rng),
                20.0 + 0.01 * i as f64 + noise.sample(rng),
            ]
        };
        let data: Vec<f64> = (0..400).flat_map(|i| row(i, &mut rng)).collect();
        let data = Array2::from_shape_vec((400, 3), data).unwrap();
        let drifting = ResidualParams::default();
        let frozen = ResidualParams {
            drift_ratio: 0.0,
            ..drifting.clone()
        };
        let (fd, ff) = (
            Fitted::fit(&[data.view()], cols(), &drifting).unwrap(),
            Fitted::fit(&[data.view()], cols(), &frozen).unwrap(),
        );
        assert_eq!(fd.slow, [false, false, true]);
        assert_eq!(fd.lag, drifting.drift_lag);
        assert!(ff.slow.iter().all(|s| !s) && ff.lag == 0);
        // 600 frames later the water is 6 °C warmer, still warming at the same pace.
        let past = [5.0, 10.0, 20.0 + 0.01 * 990.0];
        let now = [5.0, 10.0, 20.0 + 0.01 * 1000.0];
        let over = |f: &Fitted, z: &Array1<f64>| {
            let s = f.scores_z(z);
            (0..3).map(|i| s[i] / f.thresholds[i]).fold(0.0, f64::max)
        };
        let r = over(&ff, &ff.standardise(&now, None));
        assert!(
            r > 2.0,
            "the frozen model calls the warmer water an anomaly: {r}"
        );
        assert!(over(&fd, &fd.standardise(&now, Some(&past))) < 1.0);
        // A sudden 2 °C jump still stands out.
        let jump = [5.0, 10.0, now[2] + 2.0];
        assert!(over(&fd, &fd.standardise(&jump, Some(&past))) > 10.0);
    }

    #[test]
    fn constant_metrics_are_left_out_and_one_varying_metric_is_not_a_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut r = rows(100, &mut rng);
        r.column_mut(2).fill(7.0);
        let f = Fitted::fit(&[r.view()], cols(), &ResidualParams::default()).unwrap();
        assert_eq!(f.columns.len(), 2);
        r.column_mut(1).fill(1.0);
        assert!(Fitted::fit(&[r.view()], cols(), &ResidualParams::default()).is_none());
    }
}
