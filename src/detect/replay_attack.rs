//! **replay**: a recent window of values repeats an earlier window (Stuxnet-style replay
//! of recorded telemetry).
//!
//! - After a warm-up, each value is quantised on a fixed power-of-two grid of about half
//!   the point's typical |delta| (so re-encoding noise does not break a match, while
//!   independent noise never matches), and a polynomial rolling hash covers the last
//!   `window` quantised values.
//! - Windows whose hash falls in a content-defined sample (1 in `stride`) are looked up in
//!   a table of earlier sampled windows within `lookback` samples, then inserted; windows
//!   with too few changes (flat signals) are never used. Memory per point is
//!   `lookback / stride` entries; time per sample is O(1).
//! - `confirm` consecutive sampled hits at the same lag (≥ one window apart) are a finding.
//!
//! Blind spots: a replay shorter than about `window + confirm × stride` samples; replays
//! older than the lookback; recorded values that are rescaled or offset before replay.

use super::{point_finding, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity, Ts, Words};
use crate::time::{format_duration, format_ts};
use crate::tomlfile::{rule, Broken};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "replay";
use std::collections::VecDeque;

/// Parameters of the replay detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Values per hashed window.
    pub window_samples: usize,
    /// How far back a repeat is looked for, in samples (7200 = 2 h of 1 Hz data).
    pub lookback_samples: u64,
    /// One in `stride` windows (chosen by content) is stored and looked up.
    pub stride: u64,
    /// Consecutive sampled hits at one lag needed for a finding.
    pub confirm: u32,
    /// Samples used to choose the quantisation grid.
    pub warmup_samples: usize,
    /// Fraction of a window's steps that must change for it to count as informative.
    pub min_change_frac: f64,
}

impl ReplayParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.window_samples >= 4,
            "window_samples",
            "must be at least 4",
        )?;
        rule(self.stride >= 1, "stride", "must be at least 1")?;
        rule(self.confirm >= 1, "confirm", "must be at least 1")?;
        rule(
            self.lookback_samples as usize >= 2 * self.window_samples,
            "lookback_samples",
            "must be at least twice replay.window_samples",
        )?;
        rule(
            self.warmup_samples >= 16,
            "warmup_samples",
            "must be at least 16",
        )?;
        rule(
            (0.0..=1.0).contains(&self.min_change_frac),
            "min_change_frac",
            "must be between 0 and 1",
        )?;
        Ok(())
    }
}

impl Default for ReplayParams {
    fn default() -> Self {
        Self {
            enabled: true,
            window_samples: 32,
            lookback_samples: 7200,
            stride: 4,
            confirm: 3,
            warmup_samples: 120,
            min_change_frac: 0.5,
        }
    }
}

const BASE: u64 = 0x100_0000_01b3;

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct State {
    warm: Vec<f64>,
    quantum: f64,
    eligible: bool,
    /// Last `window` (mixed quantised value, changed-from-previous) pairs.
    ring: VecDeque<(u64, bool)>,
    prev_q: i64,
    changes: usize,
    hash: u64,
    base_pow: u64,
    index: u64,
    seen: FxHashMap<u64, (u64, Ts)>,
    order: VecDeque<(u64, u64)>,
    lag: u64,
    hits: u32,
    match_since: Ts,
    earlier: Ts,
}

impl State {
    fn new(window: usize) -> Self {
        Self {
            warm: Vec::new(),
            quantum: 0.0,
            eligible: false,
            ring: VecDeque::with_capacity(window + 1),
            prev_q: 0,
            changes: 0,
            hash: 0,
            base_pow: (0..window).fold(1u64, |a, _| a.wrapping_mul(BASE)),
            index: 0,
            seen: FxHashMap::default(),
            order: VecDeque::new(),
            lag: 0,
            hits: 0,
            match_since: 0,
            earlier: 0,
        }
    }

    /// Picks the grid from the warm-up: a power of two near half the median |delta|.
    fn choose_quantum(&mut self) {
        let mut d: Vec<f64> = self
            .warm
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .filter(|d| *d > 0.0)
            .collect();
        self.warm = Vec::new();
        if d.len() < 8 {
            return;
        }
        let mid = d.len() / 2;
        let (_, med, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
        let q = (*med / 2.0).log2().floor().exp2();
        self.eligible = q.is_finite() && q > 0.0;
        self.quantum = q;
    }
}

/// The replay detector.
pub struct Replay {
    params: PerKind<ReplayParams>,
    state: PointTable<State>,
}

impl Replay {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<ReplayParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
        }
    }
}

impl Detector for Replay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        let w = params.window_samples.max(2);
        for (p, st) in frame.good_analog() {
            let s = self.state.get_or_insert(p, || State::new(w));
            if s.warm.len() < params.warmup_samples && !s.eligible && s.quantum == 0.0 {
                s.warm.push(st.value);
                if s.warm.len() == params.warmup_samples {
                    s.choose_quantum();
                    if !s.eligible {
                        s.quantum = f64::NAN; // decided: not eligible
                    }
                }
                continue;
            }
            if !s.eligible {
                continue;
            }
            let q = (st.value / s.quantum).round() as i64;
            let m = mix(q as u64);
            let changed = !s.ring.is_empty() && q != s.prev_q;
            s.prev_q = q;
            s.hash = s.hash.wrapping_mul(BASE).wrapping_add(m);
            s.ring.push_back((m, changed));
            s.changes += usize::from(changed);
            if s.ring.len() > w {
                if let Some((old, old_changed)) = s.ring.pop_front() {
                    s.hash = s.hash.wrapping_sub(old.wrapping_mul(s.base_pow));
                    s.changes -= usize::from(old_changed);
                }
            }
            s.index += 1;
            let i = s.index;
            while s
                .order
                .front()
                .is_some_and(|&(j, _)| j + params.lookback_samples < i)
            {
                if let Some((j, h)) = s.order.pop_front() {
                    if s.seen.get(&h).is_some_and(|&(k, _)| k == j) {
                        s.seen.remove(&h);
                    }
                }
            }
            if s.ring.len() < w || (s.changes as f64) < params.min_change_frac * (w - 1) as f64 {
                s.hits = 0;
                continue;
            }
            let h = mix(s.hash);
            if h % params.stride.max(1) != 0 {
                continue;
            }
            match s.seen.get(&h) {
                Some(&(j, ts_j)) if i - j >= w as u64 => {
                    if s.hits > 0 && i - j == s.lag {
                        s.hits += 1;
                    } else {
                        s.lag = i - j;
                        s.hits = 1;
                        s.match_since = frame.ts;
                        s.earlier = ts_j;
                    }
                }
                _ => s.hits = 0,
            }
            // The newest occurrence wins, so eviction by index stays exact.
            s.seen.insert(h, (i, frame.ts));
            s.order.push_back((i, h));
            if s.hits >= params.confirm {
                let metric = &frame.registry.point(p).metric;
                let lag_ms = s.match_since - s.earlier;
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    f64::from(s.hits),
                    f64::from(params.confirm),
                    Severity::High,
                    attack::MANIPULATION_OF_VIEW,
                    Words::made(
                        format!(
                            "{metric} is repeating, value for value, what it reported {} earlier (the window ending {}): recorded telemetry is being replayed",
                            format_duration(lag_ms),
                            format_ts(s.earlier)
                        ),
                        json!({"lag_samples": s.lag, "lag_ms": lag_ms, "earlier_window_end": format_ts(s.earlier),
                               "window_samples": w, "confirmed_hits": s.hits, "quantum": s.quantum}),
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> Replay {
        Replay::new(PerKind::from_fn(|_| ReplayParams::default()))
    }

    #[test]
    fn replayed_window_detected_and_clean_noise_quiet() {
        // 2 h of clean data, then the attacker replays 10 minutes recorded an hour ago.
        let mut series = noisy(3 * 3600, 7.0, 0.08, 7);
        let onset = 2 * 3600;
        let (src, len) = (3600, 600);
        let recorded: Vec<f64> = series[src..src + len].to_vec();
        series[onset..onset + len].copy_from_slice(&recorded);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &series);
        assert_eq!(h.count_before(onset), 0);
        let at = h.first_after(onset).expect("replay detected");
        assert!(at - onset <= 120, "after {} samples", at - onset);
        let f = &h.findings[0].1;
        assert_eq!(f.evidence()["lag_samples"], 3600);
        assert!(
            h.first_after(onset + len + 40).is_none(),
            "ends with the replay"
        );
    }

    #[test]
    fn periodic_but_noisy_signal_is_not_a_replay() {
        let noise = noisy(4 * 3600, 0.0, 0.3, 8);
        let series: Vec<f64> = noise
            .iter()
            .enumerate()
            .map(|(i, n)| 100.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 600.0).sin() + n)
            .collect();
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "grid_meter", "active_power_kw", &series);
        assert!(h.findings.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_lookback() {
        let series = noisy(20_000, 7.0, 0.08, 9);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &series);
        let s = d.state.get_or_insert(0, || unreachable!());
        assert!(
            s.order.len() as u64 <= 7200 / 4 * 2,
            "{} entries",
            s.order.len()
        );
    }
}
