//! **oscillation**: periodic power swings (load-altering attacks, Aurora-style cycling).
//!
//! - For the watched metrics (active power, chiller and UPS power, IT load), a window of
//!   `window_samples` values is detrended, Hann-windowed and transformed (an FFT; the
//!   bins of the 0.02–1 Hz band below Nyquist are kept) every `hop_samples` samples.
//! - Samples are placed by their time on a grid of the point's own interval (the median
//!   of its first intervals): a missed poll or a late answer would otherwise shift every
//!   later sample, and a spectrum over sample indices shows a sampling pattern that
//!   changes as power. Empty grid cells are interpolated; a window with more than one in
//!   eight interpolated is not judged (a spectrum of guesses), and the report says how
//!   many were not.
//! - Each bin's normal power is learned over the first windows and then follows slowly
//!   (not while alarming); a bin's power divided by its normal power is, for noise,
//!   exponentially distributed, so a ratio of `threshold` = 25 happens by chance about
//!   once in 10¹¹ bins. That holds for a normal power known well; the first windows'
//!   average is not (it leaves some bin at a third of its level in one start in five),
//!   so a bin is never judged against less than the median normal power of the five
//!   bins around it.
//! - The highest ratio in the band is the score; it counts only when that bin also stands
//!   out from its neighbours two to four bins away (`line_contrast` × their median
//!   ratio): a periodic swing is a line, while a step or a ramp spreads smoothly over the
//!   spectrum. The finding names the period.
//!
//! - Square swings are also seen in time (a **pulse**, [`super::pulse`]): a step far
//!   larger than any of the point's recent sample-to-sample changes, held, and stepped
//!   back by about as much within half the longest period of the band. A switched load
//!   shows there at its second full edge, before the spectrum's window has filled.
//!
//! Blind spots: swings slower than 0.02 Hz (see `cusum`), faster than half the sampling
//! rate (aliased), or weaker than the point's normal variability at that frequency; a
//! source that answers too irregularly (the windows not judged; `staleness` sees holes).

use super::pulse::Pulses;
use super::{sig, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity, Ts, Words};
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
    /// Whether pulses (a load switched on and back off) are looked for.
    pub pulses: bool,
    /// A step is a change above this many times the largest of the point's recent
    /// sample-to-sample changes (plus its resolution).
    pub step_margin: f64,
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
        rule(
            self.step_margin.is_finite() && self.step_margin >= 1.0,
            "step_margin",
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
            pulses: true,
            step_margin: 1.25,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    grid: Grid,
    since: usize,
    windows: u32,
    baseline: Vec<f64>,
    /// Grid step and first bin the baseline was learned with.
    learned_with: (Ts, usize),
    alarm: Option<(f64, f64)>,
    /// Windows not judged for too many interpolated cells.
    unjudged: u64,
    pulses: Pulses,
    /// The grid's restarts the pulses have seen, and the grid step they learned on.
    restarts: u32,
    pulse_step: Ts,
}

/// Samples before the grid step is chosen (their median interval).
const STEP_SAMPLES: usize = 16;

/// A window with more than one interpolated cell in this many is not judged; a longer
/// hole starts a new window.
const ONE_GUESS_IN: usize = 8;

/// One point's samples on a regular time grid of its own sampling interval.
#[derive(Debug, Default)]
struct Grid {
    /// The first samples, until their median interval fixes `step`.
    first: Vec<(Ts, f64)>,
    /// Grid step in ms; 0 until chosen.
    step: Ts,
    origin: Ts,
    /// Cell of the newest value and how many samples were averaged into it.
    last: i64,
    last_n: u32,
    /// The window's cell values, oldest first, and whether each was interpolated.
    values: VecDeque<f64>,
    guessed: VecDeque<bool>,
    interpolated: usize,
    /// Times the grid started afresh (a long hole, a slower poll).
    restarts: u32,
}

impl Grid {
    /// Places one sample; returns how many cells were added (0 while the step is being
    /// learned or when the sample shares the newest cell, whose value becomes the mean).
    fn push(&mut self, ts: Ts, v: f64, cap: usize) -> usize {
        if self.step > 0 {
            return self.place(ts, v, cap);
        }
        self.first.push((ts, v));
        if self.first.len() < STEP_SAMPLES {
            return 0;
        }
        let mut gaps: Vec<Ts> = self
            .first
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].0))
            .collect();
        gaps.sort_unstable();
        self.step = gaps[gaps.len() / 2].max(1);
        self.origin = self.first[0].0;
        std::mem::take(&mut self.first)
            .into_iter()
            .map(|(ts, v)| self.place(ts, v, cap))
            .sum()
    }

    fn place(&mut self, ts: Ts, v: f64, cap: usize) -> usize {
        let cell = ts
            .saturating_sub(self.origin)
            .saturating_add(self.step / 2)
            .div_euclid(self.step);
        let prev = self.values.back().copied();
        if prev.is_some() && cell <= self.last {
            // Several answers within one interval (or a clock step back): their mean.
            self.last_n += 1;
            if let Some(newest) = self.values.back_mut() {
                *newest += (v - *newest) / f64::from(self.last_n);
            }
            return 0;
        }
        let mut missing = prev.map_or(0, |_| cell - self.last - 1);
        if missing > (cap / ONE_GUESS_IN) as i64 {
            // A hole this long leaves no window judgeable until it has passed: start
            // afresh (the hole itself is `staleness`'s to judge).
            self.values.clear();
            self.guessed.clear();
            self.interpolated = 0;
            self.restarts += 1;
            missing = 0;
        }
        if let Some(prev) = prev {
            for k in 1..=missing {
                let at = k as f64 / (missing + 1) as f64;
                self.append(prev + (v - prev) * at, true, cap);
            }
        }
        self.append(v, false, cap);
        self.last = cell;
        self.last_n = 1;
        // A source whose interval has grown for good (a slower poll) is re-learned.
        if self.values.len() == cap && self.interpolated * 2 > cap {
            let restarts = self.restarts + 1;
            *self = Self::default();
            self.restarts = restarts;
        }
        missing as usize + 1
    }

    fn append(&mut self, v: f64, guessed: bool, cap: usize) {
        self.values.push_back(v);
        self.guessed.push_back(guessed);
        self.interpolated += usize::from(guessed);
        if self.values.len() > cap {
            self.values.pop_front();
            if self.guessed.pop_front() == Some(true) {
                self.interpolated -= 1;
            }
        }
    }
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

    fn notes(&self) -> Vec<String> {
        let (windows, points) = self
            .state
            .iter()
            .filter(|s| s.unjudged > 0)
            .fold((0, 0), |(w, p), s| (w + s.unjudged, p + 1));
        if windows == 0 {
            return Vec::new();
        }
        vec![format!(
            "oscillation: {windows} windows on {points} points were not judged: more than one \
             sample in eight was missing from them (a source answering irregularly)"
        )]
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let (enabled, n) = {
            let params = self.params.get(frame.kind());
            (params.enabled, params.window_samples.max(16))
        };
        if !enabled {
            return;
        }
        self.tables(n);
        let params = self.params.get(frame.kind());
        for (p, st) in frame.good_analog() {
            let metric = &frame.registry.point(p).metric;
            if !params.metrics.iter().any(|m| m == metric) {
                continue;
            }
            let s = self.state.get_or_insert(p, State::default);
            let added = s.grid.push(frame.ts, st.value, n);
            s.since += added;
            if params.pulses {
                pulses(out, frame, p, params, s, added, metric);
            }
            if s.grid.values.len() < n || s.since < params.hop_samples.max(1) {
                if let Some((ratio, period)) = s.alarm {
                    push(out, frame, p, params, ratio, period, metric);
                }
                continue;
            }
            s.since = 0;
            if s.grid.interpolated * ONE_GUESS_IN > n {
                s.alarm = None;
                s.unjudged += 1;
                if s.unjudged == 1 {
                    let device = &frame.registry.device(frame.device).name;
                    // Detection is weaker here: the operator should know.
                    tracing::warn!(
                        device = %device,
                        metric = %metric,
                        step_ms = s.grid.step,
                        "oscillation not judged: more than one sample in eight missing from its window"
                    );
                }
                continue;
            }
            let dt_s = s.grid.step as f64 / 1000.0;
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
            let mean_v = s.grid.values.iter().sum::<f64>() / nf;
            let (mut sxy, mut sxx) = (0.0, 0.0);
            for (i, v) in s.grid.values.iter().enumerate() {
                let di = i as f64 - mean_i;
                sxy += di * (v - mean_v);
                sxx += di * di;
            }
            let slope = sxy / sxx;
            for (i, v) in s.grid.values.iter().enumerate() {
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
            if s.baseline.len() != power.len() || s.learned_with != (s.grid.step, k_min) {
                s.baseline = vec![0.0; power.len()];
                s.learned_with = (s.grid.step, k_min);
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
                .enumerate()
                .map(|(i, p)| p / noise_floor(&s.baseline, i).max(1e-12))
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
                push(out, frame, p, params, ratio, period, metric);
            } else {
                s.alarm = None;
                for (b, p) in s.baseline.iter_mut().zip(&power) {
                    *b += 0.02 * (p.min(10.0 * *b) - *b);
                }
            }
        }
    }
}

/// Bin `i`'s normal power as judged: its own, but never under the median of its own and
/// its neighbours' up to two bins away. A noise floor is smooth, and the first windows'
/// average (about eight independent looks, the windows overlapping) leaves some bin well
/// under its true level, where ordinary noise would read as a line; a normal line keeps
/// its own, higher, power (a tone spreads over three bins or more under the Hann window).
fn noise_floor(baseline: &[f64], i: usize) -> f64 {
    let lo = i.saturating_sub(2);
    let hi = (i + 3).min(baseline.len());
    let mut near = [0.0; 5];
    let near = &mut near[..hi - lo];
    near.copy_from_slice(&baseline[lo..hi]);
    near.sort_by(f64::total_cmp);
    // The lower median where a window at the spectrum's edge is even: the bin beside a
    // line at the edge is not lifted to the line.
    baseline[i].max(near[(near.len() - 1) / 2])
}

/// Feeds the cells just added to the point's pulse finder and reports what it closes.
fn pulses(
    out: &mut Vec<Finding>,
    frame: &Frame<'_>,
    p: u32,
    params: &OscillationParams,
    s: &mut State,
    added: usize,
    metric: &str,
) {
    if s.restarts != s.grid.restarts {
        s.restarts = s.grid.restarts;
        s.pulses.restart();
    }
    if s.grid.step == 0 {
        return;
    }
    if s.grid.step != s.pulse_step {
        // Changes over a cell of another length are another distribution: learn anew.
        s.pulse_step = s.grid.step;
        s.pulses = Pulses::default();
    }
    let dt_s = s.grid.step as f64 / 1000.0;
    // Half the longest period of the band, in cells.
    let max_held = (0.5 / params.min_hz / dt_s).floor() as u64;
    let values = &s.grid.values;
    for &v in values.range(values.len().saturating_sub(added)..) {
        let Some(x) = s.pulses.push(v, params.step_margin, max_held) else {
            continue;
        };
        let held_s = x.held as f64 * dt_s;
        let score = x.step.abs().min(x.back.abs());
        out.push(super::point_finding(
            frame,
            p,
            NAME,
            score,
            x.bar,
            Severity::Medium,
            attack::MANIPULATION_OF_CONTROL,
            Words::made(
                format!(
                    "{metric} stepped by {} and back by {} after {} s, the step back over {} \
                 (the largest such change of its recent samples, with a margin): a load \
                 switched on and off (a swing with a period of about {} s)",
                    sig(x.step),
                    sig(x.back),
                    sig(held_s),
                    sig(x.bar),
                    sig(2.0 * held_s)
                ),
                json!({"step": x.step, "back": x.back, "held_s": held_s, "step_bar": x.bar,
                   "period_s": 2.0 * held_s, "frequency_hz": 0.5 / held_s}),
            ),
        ));
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
        Words::made(
            format!(
                "{metric} swings with a period of {} s ({} Hz), {}× its normal power at that frequency: a load-altering oscillation",
                sig(period),
                sig(1.0 / period),
                sig(ratio)
            ),
            json!({"period_s": period, "frequency_hz": 1.0 / period, "power_ratio": ratio}),
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, wandering_load as load_at, Harness};

    fn det() -> Oscillation {
        Oscillation::new(PerKind::from_fn(|_| OscillationParams::default()))
    }

    #[test]
    fn a_bin_is_judged_against_no_less_than_its_neighbours_median() {
        // A dip (the first windows' average left bin 3 low) is lifted to the floor
        // around it; a normal line, spread over three bins, keeps its own power.
        let dip = [1.0, 1.2, 0.9, 0.2, 1.1, 1.0, 0.8];
        assert_eq!(noise_floor(&dip, 3), 1.0);
        assert_eq!(noise_floor(&dip, 0), 1.0);
        assert_eq!(noise_floor(&dip, 6), 1.0);
        let line = [1.0, 1.0, 10.0, 12.0, 9.0, 1.0, 1.0];
        for (i, &b) in line.iter().enumerate() {
            assert_eq!(noise_floor(&line, i), b, "bin {i}");
        }
        assert_eq!(noise_floor(&[3.0], 0), 3.0);
    }

    #[test]
    fn white_noise_from_cold_is_not_a_line_where_the_first_windows_left_a_bin_low() {
        // Seed 1925, the one of 6,000 one-hour starts of white noise where the 30
        // warm-up windows left a bin's normal power so low that, judged against it
        // alone, the next windows' ordinary noise there read as a line (at sample 1247).
        let series = noisy(256 + 32 * 90, 100.0, 1.0, 1925);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "grid_meter", "active_power_kw", &series);
        assert!(h.findings.is_empty(), "{:?}", h.findings.first());
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
            h.findings.first().map(|f| f.1.reason())
        );
    }

    /// Polls `load` (one value a second) at the intervals (ms) `intervals` gives in turn.
    fn poll(load: &[f64], intervals: &[Ts]) -> Harness {
        let mut h = Harness::new();
        let mut d = det();
        let (mut t, mut k) = (0, 0);
        while (t / 1000) < load.len() as Ts {
            let held = load[(t / 1000) as usize];
            h.feed_at(&mut d, "pdu", "it_load_kw", t, held);
            t += intervals[k % intervals.len()];
            k += 1;
        }
        h.notes = d.notes();
        h
    }

    #[test]
    fn a_source_polled_more_slowly_from_some_hour_raises_no_pulse() {
        // A load that wanders like a random walk, an hour polled every second, then ten
        // polled every 5 s: a change over one cell of the slower grid is √5 times one of
        // the faster, so the pulses must learn the new cadence afresh rather than call
        // its changes steps.
        let mut ar = 0.0;
        let load: Vec<f64> = noisy(11 * 3600, 0.0, 1.0, 41)
            .iter()
            .map(|s| {
                ar = 0.999 * ar + s;
                450.0 + ar
            })
            .collect();
        let mut intervals = vec![1000; 3600];
        intervals.extend(vec![5000; 10 * 720]);
        let mut h = Harness::new();
        let mut d = det();
        let (mut t, mut k) = (0, 0);
        while (t / 1000) < load.len() as Ts && k < intervals.len() {
            h.feed_at(&mut d, "pdu", "it_load_kw", t, load[(t / 1000) as usize]);
            t += intervals[k];
            k += 1;
        }
        assert!(
            h.findings.is_empty(),
            "{:?}",
            h.findings.first().map(|f| f.1.reason())
        );
    }

    proptest::proptest! {
        /// Whatever times a source forges (repeats, steps back, huge gaps), the grid stays
        /// within its window, counts its guesses exactly and adds what it says it added.
        #[test]
        fn the_grid_is_bounded_and_counts_its_guesses(
            steps in proptest::collection::vec((-5_000i64..400_000, -1e6f64..1e6), 1..600),
        ) {
            let cap = 64;
            let (mut g, mut t, mut added) = (Grid::default(), 0, 0);
            for (dt, v) in steps {
                t += dt;
                let n = g.push(t, v, cap);
                added += n;
                proptest::prop_assert!(g.values.len() <= cap);
                proptest::prop_assert_eq!(g.values.len(), g.guessed.len());
                proptest::prop_assert_eq!(g.interpolated, g.guessed.iter().filter(|&&x| x).count());
                // At most a hole's worth of guesses and the sample, for each sample placed.
                proptest::prop_assert!(n <= STEP_SAMPLES * (cap / ONE_GUESS_IN + 1));
                proptest::prop_assert!(g.values.iter().all(|v| v.is_finite()));
            }
            proptest::prop_assert!(added >= g.values.len());
        }
    }

    #[test]
    fn a_source_answering_irregularly_is_not_judged_and_the_report_says_so() {
        // A collector that cannot keep time: its windows are mostly interpolation,
        // whatever pattern the delays fall into, and judged on nothing.
        let load = load_at(3 * 3600, 23);
        // Answers 0.3 to 1.8 s apart, a second on average (as a debug build polling a
        // simulation at 300× does: a millisecond of wall time is 0.3 s of event time).
        let intervals = [
            900, 600, 1200, 900, 1500, 300, 1200, 900, 600, 1200, 1800, 900,
        ];
        let h = poll(&load, &intervals);
        assert!(
            h.findings.is_empty(),
            "{:?}",
            h.findings.first().map(|f| f.1.reason())
        );
        assert!(
            h.notes.iter().any(|n| n.contains("were not judged")),
            "the report says what was not judged: {:?}",
            h.notes
        );
    }

    #[test]
    fn a_swing_polled_with_jitter_and_missed_answers_is_found() {
        // ±24 kW with a 45 s period, from the second hour, polled every second with up to
        // ±150 ms of jitter and one answer in twenty lost.
        let mut load = load_at(3 * 3600, 29);
        let onset = 2 * 3600;
        for (i, v) in load.iter_mut().enumerate().skip(onset) {
            *v += 24.0
                * ((i - onset) as f64 / 45.0 * std::f64::consts::TAU)
                    .sin()
                    .signum();
        }
        let jitter = noisy(4 * 3600, 0.0, 60.0, 31);
        let intervals: Vec<Ts> = jitter
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let lost = if i % 20 == 7 { 1000 } else { 0 };
                1000 + lost + j.clamp(-150.0, 150.0) as Ts
            })
            .collect();
        let h = poll(&load, &intervals);
        let onset_sample = h
            .findings
            .iter()
            .map(|(s, _)| *s)
            .next()
            .expect("oscillation found");
        // Samples are ~1.05 s apart: the onset is near sample 6,850.
        assert!(
            (6_800..7_300).contains(&onset_sample),
            "found at sample {onset_sample}: {:?}",
            h.notes
        );
        // 256 one-second cells resolve periods of 256/k s: 42.7 or 51.2 s around 45 s.
        let period = h.findings[0].1.evidence()["period_s"].as_f64().unwrap();
        assert!((42.0..52.0).contains(&period), "period {period}");
        assert!(h.notes.is_empty(), "{:?}", h.notes);
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
        let period = h.findings[0].1.evidence()["period_s"].as_f64().unwrap();
        assert!((40.0..50.0).contains(&period), "period {period}");
        assert_eq!(h.count_before(onset), 0);
    }
}
