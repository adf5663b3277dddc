//! **cusum**: slow drifts ("boiling frog" manipulation) that a tracking baseline follows.
//!
//! - Samples are averaged in blocks, which tames the autocorrelation of 1 Hz telemetry.
//! - After a warm-up of blocks, a reference level and the spread of block means around
//!   it are learned; both keep adapting slowly, but only while no drift is building up.
//! - Two-sided CUSUM on the standardised block means: `S⁺ = max(0, S⁺ + z − k)`,
//!   `S⁻ = max(0, S⁻ − z − k)`; `max(S⁺, S⁻) >= h` is a finding.
//!
//! Blind spots: drifts slower than the reference's adaptation (hours-long half-life by
//! default), and signals whose normal swing is as large as the drift (daily load
//! profiles): the physics detectors see those through the quantities that must follow.

use super::{point_finding, sig, Detector, PerKind, PointTable};
use crate::attack;
use crate::feature::Frame;
use crate::model::{Finding, Quality, Severity, Ts};
use crate::time::format_ts;
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "cusum";

/// Parameters of the CUSUM detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CusumParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Samples averaged into one block.
    pub block_samples: u32,
    /// Allowance k, in standard deviations of block means.
    pub k: f64,
    /// Decision threshold h.
    pub threshold: f64,
    /// Blocks used to learn the reference before judging.
    pub warmup_blocks: u32,
    /// Half-life of the reference's adaptation, in blocks.
    pub reference_halflife_blocks: f64,
}

impl Default for CusumParams {
    fn default() -> Self {
        Self {
            enabled: true,
            block_samples: 30,
            k: 0.5,
            threshold: 12.0,
            warmup_blocks: 20,
            reference_halflife_blocks: 240.0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sum: f64,
    count: u32,
    blocks: u32,
    reference: f64,
    var: f64,
    s_hi: f64,
    s_lo: f64,
    since: Ts,
    since_ref: f64,
}

/// The CUSUM detector.
pub struct Cusum {
    params: PerKind<CusumParams>,
    state: PointTable<State>,
}

impl Cusum {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<CusumParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
        }
    }
}

impl Detector for Cusum {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for &p in frame.updated {
            let st = frame.store.point(p);
            if st.quality != Quality::Good || st.ts != frame.ts || !st.is_analog() {
                continue;
            }
            let s = self.state.get_or_insert(p, State::default);
            s.sum += st.value;
            s.count += 1;
            if s.count < params.block_samples.max(1) {
                continue;
            }
            let block = s.sum / f64::from(s.count);
            s.sum = 0.0;
            s.count = 0;
            s.blocks += 1;
            if s.blocks <= params.warmup_blocks.max(2) {
                // Welford over the warm-up blocks.
                let n = f64::from(s.blocks);
                let d = block - s.reference;
                s.reference += d / n;
                s.var += (d * (block - s.reference) - s.var) / n;
                continue;
            }
            let res = if st.resolution.is_finite() {
                st.resolution
            } else {
                0.0
            };
            let sigma = s
                .var
                .sqrt()
                .max(res / f64::from(params.block_samples.max(1)).sqrt())
                .max(1e-9 * s.reference.abs())
                .max(1e-12);
            let z = (block - s.reference) / sigma;
            if s.s_hi == 0.0 && s.s_lo == 0.0 {
                s.since = frame.ts;
                s.since_ref = s.reference;
            }
            s.s_hi = (s.s_hi + z - params.k).max(0.0);
            s.s_lo = (s.s_lo - z - params.k).max(0.0);
            let score = s.s_hi.max(s.s_lo);
            if score < params.threshold / 2.0 {
                let alpha = 1.0 - 0.5f64.powf(1.0 / params.reference_halflife_blocks.max(1.0));
                let d = block - s.reference;
                s.reference += alpha * d;
                s.var = (1.0 - alpha) * (s.var + alpha * d * d);
            }
            if score >= params.threshold {
                let metric = &frame.registry.point(p).metric;
                let dir = if s.s_hi >= s.s_lo { "up" } else { "down" };
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    score,
                    params.threshold,
                    Severity::Medium,
                    attack::for_process_change(metric, st.class),
                    format!(
                        "{metric} has drifted {dir} from its reference {} to {} (block means, σ {}) since {}",
                        sig(s.since_ref),
                        sig(block),
                        sig(sigma),
                        format_ts(s.since)
                    ),
                    json!({"reference": s.since_ref, "block_mean": block, "block_sigma": sigma,
                           "s_hi": s.s_hi, "s_lo": s.s_lo, "drift_since": format_ts(s.since)}),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> Cusum {
        Cusum::new(PerKind::from_fn(|_| CusumParams::default()))
    }

    #[test]
    fn slow_ramp_is_caught_and_flat_noise_is_not() {
        // 2 h of 1 Hz flow with noise, then a decay of 10 % over the next 2 hours.
        let n = 4 * 3600;
        let mut series = noisy(n, 50.0, 0.5, 3);
        let onset = 2 * 3600;
        for (i, v) in series.iter_mut().enumerate().skip(onset) {
            *v -= 5.0 * (i - onset) as f64 / (2.0 * 3600.0);
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "flow_lps", &series);
        assert_eq!(h.count_before(onset), 0, "no alert before the drift");
        let at = h.first_after(onset).expect("drift detected");
        // The ramp reaches 1 σ of the raw noise after 12 minutes; caught within 30.
        assert!(at - onset < 30 * 60, "detected after {} s", at - onset);
        assert!(h.findings[0].1.reason.contains("down"));
    }

    #[test]
    fn long_clean_noise_stays_quiet() {
        let series = noisy(24 * 3600, 7.0, 0.05, 4);
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &series);
        assert_eq!(h.findings.len(), 0);
    }
}
