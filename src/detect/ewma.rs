//! **ewma_z**: a value far from its point's learned baseline.
//!
//! - The feature store keeps a robust running mean and variance per point (exponential
//!   weights, residuals clipped at a few σ so an attack cannot drag the baseline along).
//! - Each new value's z-score is taken against the baseline *before* the value joins it.
//! - After a warm-up, `|z| >= threshold` for `persist` consecutive samples is a finding;
//!   the persistence requirement ignores lone spikes.
//!
//! Blind spots: slow drifts the baseline follows (see `cusum`), values that stay within
//! the noise (see the physics detectors), booleans and setpoints (not analog).

use super::{
    point_finding, sig,
    tap::{Rule, Tap},
    Detector, PerKind, PointTable,
};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "ewma_z";

/// Parameters of the EWMA z-score detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EwmaParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// |z| at or above which a sample counts.
    pub threshold: f64,
    /// Samples a point must have before it is judged.
    pub warmup_samples: u64,
    /// Consecutive samples over the threshold needed for a finding.
    pub persist_samples: u32,
}

impl EwmaParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.threshold > 0.0, "threshold", "must be greater than 0")?;
        rule(
            self.persist_samples >= 1,
            "persist_samples",
            "must be at least 1",
        )?;
        Ok(())
    }
}

impl Default for EwmaParams {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 6.0,
            warmup_samples: 300,
            persist_samples: 3,
        }
    }
}

/// The EWMA z-score detector.
pub struct EwmaZ {
    params: PerKind<EwmaParams>,
    run: PointTable<u32>,
    tap: Option<Tap>,
}

impl EwmaZ {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<EwmaParams>) -> Self {
        Self {
            params,
            run: PointTable::default(),
            tap: None,
        }
    }

    /// Records every judgement's |z| in `tap` (see [`crate::detect::tap`]), and every
    /// analog value for the range of its metric.
    pub fn tapped(mut self, tap: Option<Tap>) -> Self {
        self.tap = tap;
        self
    }
}

impl Detector for EwmaZ {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for (p, st) in frame.good_analog() {
            let run = self.run.get_or_insert(p, || 0);
            if let Some(tap) = &self.tap {
                let metric = &frame.registry.point(p).metric;
                tap.value(frame.kind(), p, metric, frame.ts, st.value);
                let judged = (st.n > params.warmup_samples).then_some(st.z.abs());
                tap.record(
                    Rule::EwmaZ,
                    frame.kind(),
                    p,
                    frame.ts,
                    judged,
                    params.persist_samples,
                );
            }
            if st.n <= params.warmup_samples || st.z.abs() < params.threshold {
                *run = 0;
                continue;
            }
            *run += 1;
            if *run < params.persist_samples {
                continue;
            }
            let metric = &frame.registry.point(p).metric;
            let dir = if st.z > 0.0 { "above" } else { "below" };
            let severity = if st.z.abs() >= 2.0 * params.threshold {
                Severity::Medium
            } else {
                Severity::Low
            };
            out.push(point_finding(
                frame,
                p,
                NAME,
                st.z.abs(),
                params.threshold,
                severity,
                attack::for_process_change(metric, st.class),
                format!(
                    "{metric} = {} is {:.1}σ {dir} its learned baseline {} ± {} for {} samples",
                    sig(st.value),
                    st.z.abs(),
                    sig(st.mean),
                    sig(st.sigma()),
                    run
                ),
                json!({"value": st.value, "baseline_mean": st.mean, "baseline_sigma": st.sigma(), "z": st.z, "consecutive": *run,
                       "recent": st.window().collect::<Vec<_>>()}),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn det() -> EwmaZ {
        EwmaZ::new(PerKind::from_fn(|_| EwmaParams::default()))
    }

    #[test]
    fn step_detected_within_persistence_and_clean_part_quiet() {
        let mut series = noisy(3000, 7.0, 0.1, 1);
        for v in &mut series[2000..] {
            *v += 1.5; // a 15σ step
        }
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &series);
        assert_eq!(h.count_before(2000), 0, "no alert on the clean part");
        let at = h.first_after(2000).expect("step detected");
        assert!(at <= 2000 + 3, "detected at {at}");
    }

    #[test]
    fn lone_spike_is_ignored() {
        let mut series = noisy(1000, 50.0, 1.0, 2);
        series[700] = 70.0;
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "flow_lps", &series);
        assert!(h.findings.is_empty());
    }

    #[test]
    fn setpoints_and_booleans_are_not_judged() {
        let mut h = Harness::new();
        let mut d = det();
        let mut sp = vec![7.0; 600];
        sp.extend(vec![12.0; 10]);
        h.run(&mut d, "chiller", "setpoint_c", &sp);
        assert!(h.findings.is_empty());
    }
}
