//! The upper tail of a statistic's block maxima on clean data, fitted by extreme-value
//! theory, so a threshold can be set for a false-alarm rate rarer than anything the
//! history shows (a week's budget from a day of data).
//!
//! Peaks over a high level: the maxima above their 90th percentile (at least
//! [`MIN_EXCEEDANCES`]) follow a generalised Pareto distribution (Pickands–Balkema–de
//! Haan), fitted by probability-weighted moments (Hosking & Wallis 1987), which are
//! stable on the few hundred values a short history gives. The shape is floored at 0
//! (an exponential tail): a bounded tail fitted on a short history would promise a
//! ceiling the site has simply not reached yet.

/// Block maxima needed for a fit.
pub const MIN_MAXIMA: usize = 50;
/// Exceedances of the level needed for a fit.
pub const MIN_EXCEEDANCES: usize = 10;
/// Largest shape accepted (the moments need ξ < 1; heavier tails are capped).
const MAX_SHAPE: f64 = 0.9;

/// A fitted tail.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    /// The level the peaks are taken over.
    pub level: f64,
    /// Share of the maxima above the level.
    pub share: f64,
    /// Generalised Pareto shape ξ (≥ 0).
    pub shape: f64,
    /// Generalised Pareto scale σ.
    pub scale: f64,
    /// Maxima fitted.
    pub n: usize,
    /// The largest maximum seen.
    pub largest: f64,
    /// The maxima, sorted (quantiles inside the body are taken from them).
    sorted: Vec<f64>,
}

impl Tail {
    /// Fits the tail of `maxima` (non-finite values are dropped); `None` when there are
    /// too few values or too few distinct ones above the level to say anything.
    pub fn fit(maxima: &[f64]) -> Option<Tail> {
        let mut sorted: Vec<f64> = maxima.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.len() < MIN_MAXIMA {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let top = (n / 10).max(MIN_EXCEEDANCES).min(n / 2);
        let level = sorted[n - top - 1];
        let peaks: Vec<f64> = sorted
            .iter()
            .filter(|&&v| v > level)
            .map(|v| v - level)
            .collect();
        if peaks.len() < MIN_EXCEEDANCES {
            return None;
        }
        let (shape, scale) = pareto(&peaks)?;
        Some(Tail {
            level,
            share: peaks.len() as f64 / n as f64,
            shape,
            scale,
            n,
            largest: sorted[n - 1],
            sorted,
        })
    }

    /// The value a block maximum exceeds with probability `p` (0 < p < 1).
    pub fn quantile(&self, p: f64) -> f64 {
        let p = p.clamp(f64::MIN_POSITIVE, 1.0);
        if p >= self.share {
            // Inside the body: the empirical quantile.
            let i = ((1.0 - p) * self.n as f64).floor() as usize;
            return self.sorted[i.min(self.n - 1)];
        }
        self.level + excess(self.shape, self.scale, p / self.share)
    }

    /// Probability that a block maximum exceeds `x`.
    pub fn exceedance(&self, x: f64) -> f64 {
        if x <= self.level {
            let above = self.sorted.partition_point(|&v| v <= x);
            return (self.n - above) as f64 / self.n as f64;
        }
        let y = x - self.level;
        let tail = if self.shape < 1e-9 {
            (-y / self.scale).exp()
        } else {
            (1.0 + self.shape * y / self.scale).powf(-1.0 / self.shape)
        };
        self.share * tail
    }
}

/// The generalised Pareto shape and scale of `peaks` (excesses over a level, sorted
/// ascending) by probability-weighted moments, the shape floored at 0 and capped at
/// [`MAX_SHAPE`]; `None` when the moments say nothing (no spread).
fn pareto(peaks: &[f64]) -> Option<(f64, f64)> {
    let m = peaks.len() as f64;
    let a0 = peaks.iter().sum::<f64>() / m;
    let a1 = peaks
        .iter()
        .enumerate()
        .map(|(i, y)| (m - 1.0 - i as f64) / (m - 1.0) * y)
        .sum::<f64>()
        / m;
    let d = a0 - 2.0 * a1;
    if !(a0 > 0.0 && d > 0.0) {
        return None;
    }
    // Hosking's k is −ξ.
    let shape = (2.0 - a0 / d).clamp(0.0, MAX_SHAPE);
    // With ξ floored the scale keeps the mean of the peaks: E[Y] = σ / (1 − ξ).
    let scale = if shape == 0.0 { a0 } else { 2.0 * a0 * a1 / d };
    Some((shape, scale))
}

/// What [`Tail::fit`] followed by [`Tail::quantile`] gives for a probability `p` beyond
/// the body (below the share of maxima over the level), without allocating: `maxima`
/// (finite) is reordered and overwritten. `None` when there is no fit or `p` falls
/// inside the body.
pub fn rare_quantile(maxima: &mut [f64], p: f64) -> Option<f64> {
    let n = maxima.len();
    if n < MIN_MAXIMA {
        return None;
    }
    let top = (n / 10).max(MIN_EXCEEDANCES).min(n / 2);
    let (_, level, upper) = maxima.select_nth_unstable_by(n - top - 1, f64::total_cmp);
    let level = *level;
    upper.sort_unstable_by(f64::total_cmp);
    let first = upper.partition_point(|&v| v <= level);
    let peaks = &mut upper[first..];
    if peaks.len() < MIN_EXCEEDANCES {
        return None;
    }
    for v in peaks.iter_mut() {
        *v -= level;
    }
    let (shape, scale) = pareto(peaks)?;
    let share = peaks.len() as f64 / n as f64;
    let q = p.max(f64::MIN_POSITIVE) / share;
    if q >= 1.0 {
        return None;
    }
    Some(level + excess(shape, scale, q))
}

/// The excess over the level that a peak passes with probability `q`.
fn excess(shape: f64, scale: f64, q: f64) -> f64 {
    if shape < 1e-9 {
        -scale * q.ln()
    } else {
        scale / shape * (q.powf(-shape) - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Distribution, Exp1, Normal};

    #[test]
    fn recovers_rare_quantiles_of_known_tails() {
        let mut rng = StdRng::seed_from_u64(11);
        // Exponential maxima: P(X > x) = e^−x, so the 1e-5 quantile is 11.5, far beyond
        // the largest of 5,000 values (about 8.5).
        let exp: Vec<f64> = (0..5000).map(|_| Exp1.sample(&mut rng)).collect();
        let t = Tail::fit(&exp).unwrap();
        assert!(t.shape < 0.1, "{t:?}");
        let q = t.quantile(1e-5);
        assert!((q - 1e5f64.ln()).abs() < 1.2, "{q}");
        assert!(q > t.largest);
        // Pareto with ξ = 0.5: P(X > x) = (1 + x/2)^−2; the 1e-4 quantile is 198.
        let par: Vec<f64> = (0..5000)
            .map(|_| {
                let u: f64 = rand::Rng::random::<f64>(&mut rng);
                2.0 * ((1.0 - u).powf(-0.5) - 1.0)
            })
            .collect();
        let t = Tail::fit(&par).unwrap();
        assert!((t.shape - 0.5).abs() < 0.15, "{t:?}");
        let q = t.quantile(1e-4);
        assert!(q > 100.0 && q < 400.0, "{q}");
        // Gaussian maxima have a light tail: the floor keeps it exponential, so the
        // threshold errs high, not low.
        let d = Normal::new(3.0, 0.5).unwrap();
        let g: Vec<f64> = (0..5000).map(|_| d.sample(&mut rng)).collect();
        let t = Tail::fit(&g).unwrap();
        assert_eq!(t.shape, 0.0);
        assert!(
            t.quantile(1e-6) > 3.0 + 0.5 * 4.75,
            "above the true 1e-6 quantile"
        );
    }

    #[test]
    fn too_little_or_flat_data_is_not_fitted() {
        assert!(Tail::fit(&[1.0; 10]).is_none());
        assert!(Tail::fit(&[0.0; 500]).is_none(), "nothing above the level");
        assert!(Tail::fit(&[f64::NAN; 500]).is_none());
    }

    proptest! {
        #[test]
        fn the_allocation_free_quantile_is_the_fitted_one(
            xs in proptest::collection::vec(-1e6f64..1e6, 0..400),
            p in 1e-12f64..1e-2,
        ) {
            let fitted = Tail::fit(&xs).filter(|t| p < t.share).map(|t| t.quantile(p));
            let mut scratch = xs.clone();
            prop_assert_eq!(rare_quantile(&mut scratch, p), fitted);
        }

        #[test]
        fn quantiles_fall_as_the_probability_rises_and_agree_with_exceedance(
            xs in proptest::collection::vec(-1e6f64..1e6, 0..400),
            p in 1e-9f64..0.5,
        ) {
            if let Some(t) = Tail::fit(&xs) {
                let (a, b) = (t.quantile(p), t.quantile(p / 10.0));
                prop_assert!(a.is_finite() && b.is_finite());
                prop_assert!(b >= a, "{b} < {a}");
                if p < t.share {
                    let e = t.exceedance(a);
                    prop_assert!((e - p).abs() <= 1e-6 * p.max(1e-300) + 1e-12, "{e} vs {p}");
                }
            }
        }
    }
}
