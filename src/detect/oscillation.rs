//! **oscillation**: periodic power swings (load-altering attacks, Aurora-style cycling).
//!
//! - For the watched metrics (active power, chiller and UPS power, IT load), a window of
//!   `window_samples` values is detrended, Hann-windowed and transformed (an FFT; the
//!   bins of the 0.02–1 Hz band below Nyquist are kept) every `hop_samples` samples.
//! - Each bin's normal power is learned over the first windows and then follows slowly
//!   (not while alarming); a bin's power divided by its normal power is, for noise,
//!   exponentially distributed, so a ratio of `threshold` = 25 happens by chance about
//!   once in 10¹¹ bins.
//! - The highest ratio in the band is the score; it counts only when that bin also stands
//!   out from its neighbours two to four bins away (`line_contrast` × their median
//!   ratio): a periodic swing is a line, while a step or a ramp spreads smoothly over the
//!   spectrum. The finding names the period.
//!
//! Blind spots: swings slower than 0.02 Hz (see `cusum`), faster than half the sampling
//! rate (aliased), or weaker than the point's normal variability at that frequency.

use super::{sig, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity};
use crate::tomlfile::{rule, Broken};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;

const NAME: &str = "oscillation";

/// Parameters of the oscillation detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OscillationParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Metrics watched.
    pub metrics: Vec<String>,
    /// Samples per analysis window.
    pub window_samples: usize,
    /// Samples between analyses.
    pub hop_samples: usize,
    /// Lower edge of the band, Hz.
    pub min_hz: f64,
    /// Upper edge of the band, Hz.
    pub max_hz: f64,
    /// Bin power over its learned normal at or above which a window counts.
    pub threshold: f64,
    /// Windows used to learn the normal spectrum.
    pub warmup_windows: u32,
    /// How far the peak bin's ratio must stand above its neighbours' (median of the bins
    /// two to four away).
    pub line_contrast: f64,
}

impl OscillationParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            (16..=4096).contains(&self.window_samples),
            "window_samples",
            "must be between 16 and 4096",
        )?;
        rule(self.hop_samples >= 1, "hop_samples", "must be at least 1")?;
        rule(
            self.min_hz > 0.0 && self.min_hz < self.max_hz,
            "min_hz",
            "must be positive and below max_hz",
        )?;
        rule(self.threshold > 1.0, "threshold", "must be greater than 1")?;
        rule(
            self.warmup_windows >= 1,
            "warmup_windows",
            "must be at least 1",
        )?;
        rule(
            self.line_contrast >= 1.0,
            "line_contrast",
            "must be at least 1",
        )?;
        Ok(())
    }
}

impl Default for OscillationParams {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics: [
                "active_power_kw",
                "power_kw",
                "input_power_kw",
                "it_load_kw",
            ]
            .map(String::from)
            .to_vec(),
            window_samples: 256,
            hop_samples: 32,
            min_hz: 0.02,
            max_hz: 1.0,
            threshold: 25.0,
            warmup_windows: 30,
            line_contrast: 8.0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    values: VecDeque<f64>,
    since: usize,
    windows: u32,
    baseline: Vec<f64>,
    k_min: usize,
    alarm: Option<(f64, f64)>,
}

/// The oscillation detector.
pub struct Oscillation {
    params: PerKind<OscillationParams>,
    state: PointTable<State>,
    planner: FftPlanner<f64>,
    fft: Option<Arc<dyn Fft<f64>>>,
    hann: Vec<f64>,
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

impl Oscillation {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<OscillationParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
            planner: FftPlanner::new(),
            fft: None,
            hann: Vec::new(),
            buf: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Plans the transform and the window for `n` samples (once per size).
    fn tables(&mut self, n: usize) {
        if self.hann.len() == n {
            return;
        }
        let w = std::f64::consts::TAU / n as f64;
        self.hann = (0..n).map(|i| 0.5 - 0.5 * (w * i as f64).cos()).collect();
        let fft = self.planner.plan_fft_forward(n);
        self.scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        self.fft = Some(fft);
    }
}

impl Detector for Oscillation {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind()).clone();
        if !params.enabled {
            return;
        }
        let n = params.window_samples.max(16);
        self.tables(n);
        for (p, st) in frame.good_analog() {
            let metric = &frame.registry.point(p).metric;
            if !params.metrics.iter().any(|m| m == metric) {
                continue;
            }
            let s = self.state.get_or_insert(p, State::default);
            s.values.push_back(st.value);
            if s.values.len() > n {
                s.values.pop_front();
            }
            s.since += 1;
            if s.values.len() < n || s.since < params.hop_samples.max(1) {
                if let Some((ratio, period)) = s.alarm {
                    push(out, frame, p, &params, ratio, period, metric);
                }
                continue;
            }
            s.since = 0;
            let dt_s = if st.interval_ms > 0.0 {
                st.interval_ms / 1000.0
            } else {
                1.0
            };
            // The bin holding the band edge is included: a swing just inside the band leaks
            // into it.
            let k_min = ((params.min_hz * n as f64 * dt_s).floor() as usize).max(1);
            // The Nyquist bin is real-valued (χ² with one degree of freedom): left out.
            let k_max = ((params.max_hz * n as f64 * dt_s).floor() as usize).min(n / 2 - 1);
            if k_min > k_max {
                continue;
            }
            // Detrend (least-squares line), window, transform.
            self.buf.clear();
            let nf = n as f64;
            let mean_i = (nf - 1.0) / 2.0;
            let mean_v = s.values.iter().sum::<f64>() / nf;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for (i, v) in s.values.iter().enumerate() {
                let di = i as f64 - mean_i;
                sxy += di * (v - mean_v);
                sxx += di * di;
            }
            let slope = sxy / sxx;
            for (i, v) in s.values.iter().enumerate() {
                let detrended = v - mean_v - slope * (i as f64 - mean_i);
                self.buf.push(Complex::new(detrended * self.hann[i], 0.0));
            }
            if let Some(fft) = &self.fft {
                fft.process_with_scratch(&mut self.buf, &mut self.scratch);
            }
            let power: Vec<f64> = self.buf[k_min..=k_max]
                .iter()
                .map(|c| c.norm_sqr())
                .collect();
            if s.baseline.len() != power.len() || s.k_min != k_min {
                s.baseline = vec![0.0; power.len()];
                s.k_min = k_min;
                s.windows = 0;
            }
            if s.windows < params.warmup_windows {
                s.windows += 1;
                let w = f64::from(s.windows);
                for (b, p) in s.baseline.iter_mut().zip(&power) {
                    *b += (p - *b) / w;
                }
                continue;
            }
            let ratios: Vec<f64> = power
                .iter()
                .zip(&s.baseline)
                .map(|(p, b)| p / b.max(1e-12))
                .collect();
            let ratio = ratios.iter().copied().fold(0.0, f64::max);
            // The period named is the strongest bin over the threshold: for a square
            // wave that is the fundamental, not a harmonic over a quieter background.
            let best = (0..power.len())
                .filter(|&i| ratios[i] >= params.threshold)
                .max_by(|&a, &b| power[a].total_cmp(&power[b]))
                .unwrap_or(0);
            let peak = (0..ratios.len())
                .max_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
                .unwrap_or(0);
            let mut around: Vec<f64> = (2..=4)
                .flat_map(|d| [peak.checked_sub(d), Some(peak + d)])
                .flatten()
                .filter_map(|i| ratios.get(i).copied())
                .collect();
            around.sort_by(f64::total_cmp);
            let neighbours = around.get(around.len() / 2).copied().unwrap_or(0.0);
            if ratio >= params.threshold && ratio >= params.line_contrast * neighbours {
                let period = n as f64 * dt_s / (k_min + best) as f64;
                s.alarm = Some((ratio, period));
                push(out, frame, p, &params, ratio, period, metric);
            } else {
                s.alarm = None;
                for (b, p) in s.baseline.iter_mut().zip(&power) {
                    *b += 0.02 * (p.min(10.0 * *b) - *b);
                }
            }
        }
    }
}

fn push(
    out: &mut Vec<Finding>,
    frame: &Frame<'_>,
    p: u32,
    params: &OscillationParams,
    ratio: f64,
    period: f64,
    metric: &str,
) {
    out.push(super::point_finding(
        frame,
        p,
        NAME,
        ratio,
        params.threshold,
        if ratio >= 10.0 * params.threshold { Severity::High } else { Severity::Medium },
        attack::MANIPULATION_OF_CONTROL,
        format!(
            "{metric} swings with a period of {} s ({} Hz), {}× its normal power at that frequency: a load-altering oscillation",
            sig(period),
            sig(1.0 / period),
            sig(ratio)
        ),
        json!({"period_s": period, "frequency_hz": 1.0 / period, "power_ratio": ratio}),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> Oscillation {
        Oscillation::new(PerKind::from_fn(|_| OscillationParams::default()))
    }

    #[test]
    fn steps_are_not_oscillations() {
        let mut series = noisy(3 * 3600, 500.0, 2.0, 19);
        for v in &mut series[9000..9300] {
            *v -= 400.0; // a UPS going to battery for five minutes
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "ups", "input_power_kw", &series);
        assert!(
            h.findings.is_empty(),
            "{:?}",
            h.findings.first().map(|f| &f.1.reason)
        );
    }

    #[test]
    fn a_square_wave_load_is_caught_and_red_noise_is_not() {
        let n = 3 * 3600;
        let steps = noisy(n, 0.0, 1.0, 17);
        let mut ar = 0.0;
        let mut series: Vec<f64> = steps
            .iter()
            .map(|s| {
                ar = 0.995 * ar + s;
                1000.0 + ar
            })
            .collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "grid_meter", "active_power_kw", &series);
        assert!(h.findings.is_empty(), "AR(1) load is not an oscillation");
        let onset = 2 * 3600;
        for (i, v) in series.iter_mut().enumerate().skip(onset) {
            // ±24 kW (3 % of 800 kW) with a 45 s period.
            *v += 24.0
                * ((i - onset) as f64 / 45.0 * std::f64::consts::TAU)
                    .sin()
                    .signum();
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "grid_meter", "active_power_kw", &series);
        let at = h.first_after(onset).expect("oscillation found");
        assert!(at - onset < 300, "after {} s", at - onset);
        let period = h.findings[0].1.evidence["period_s"].as_f64().unwrap();
        assert!((40.0..50.0).contains(&period), "period {period}");
        assert_eq!(h.count_before(onset), 0);
    }
}
