//! **ewma_z**: a value far from its point's learned baseline.
//!
//! - The feature store keeps a robust running mean and variance per point (exponential
//!   weights, residuals clipped at a few σ so an attack cannot drag the baseline along).
//! - Each new value's z-score is taken against the baseline *before* the value joins it.
//! - After a warm-up, `|z| >= threshold` for `persist` consecutive samples is a finding;
//!   the persistence requirement ignores lone spikes.
//! - A run must also beat its **precedent**: the second strongest run (a run's
//!   strength is the least |z| of `persist` samples in a row) among the point's last
//!   `precedent_samples` samples its baseline learned — its normal ones, and those that
//!   opened alerts. Telemetry is often heavy-tailed (load bursts, request counts): a
//!   point whose normal bursts reach 20σ of its robust baseline is news at 25σ, not at
//!   every burst, and a burst no stronger than two reported a few minutes ago is the
//!   same story. The second strongest, not the strongest: one excursion, an attack
//!   among them, never excuses the next. On Gaussian noise the precedent stays near 3σ,
//!   under the threshold, so it changes nothing there. Once an open alert names the
//!   point (its baseline frozen) the threshold alone keeps it open: the precedent
//!   decides what starts an alert, not how long it lasts (the window:
//!   [`super::precedent`]).
//!
//! Blind spots: slow drifts the baseline follows (see `cusum`), values that stay within
//! the noise (see the physics detectors), booleans and setpoints (not analog); for
//! `precedent_samples` after two strong runs of a point, ewma_z does not start an
//! alert on a weaker one (the other detectors still do: `limits`, `timescale`,
//! physics).

use super::{
    point_finding,
    precedent::Recent,
    sig, statistical_severity,
    tap::{Rule, Tap},
    Detector, PerKind, PointTable,
};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Words};
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
    /// Samples over which a run's precedent is remembered (0: no precedent).
    pub precedent_samples: u32,
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
        rule(
            self.persist_samples <= MAX_PERSIST,
            "persist_samples",
            "must be at most 1000",
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
            precedent_samples: 2016,
        }
    }
}

/// Longest persistence (each point keeps that many recent |z|).
const MAX_PERSIST: u32 = 1000;

/// The EWMA z-score detector.
pub struct EwmaZ {
    params: PerKind<EwmaParams>,
    recent: PointTable<Recent>,
    tap: Option<Tap>,
}

impl EwmaZ {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<EwmaParams>) -> Self {
        Self {
            params,
            recent: PointTable::default(),
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
            let recent = self.recent.get_or_insert(p, Recent::default);
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
            if st.n <= params.warmup_samples || st.z.is_nan() {
                recent.run = 0;
                continue;
            }
            // A sample its baseline learned is normal history; one an open alert froze
            // is judged on the threshold alone (see the module's notes).
            let (found, precedent) = recent.judge(
                st.z,
                params.threshold,
                params.persist_samples,
                params.precedent_samples,
                st.frozen == 0,
            );
            if !found {
                continue;
            }
            let run = recent.run;
            let metric = &frame.registry.point(p).metric;
            let technique = attack::for_process_change(metric, st.class);
            // Made only if read: most findings repeat their open alert's.
            let (metric, value, mean, sigma, z) =
                (metric.clone(), st.value, st.mean, st.sigma(), st.z);
            let recent: Vec<f64> = st.window().collect();
            out.push(point_finding(
                frame,
                p,
                NAME,
                z.abs(),
                params.threshold,
                statistical_severity(z.abs(), params.threshold),
                technique,
                Words::later(move || {
                    let dir = if z > 0.0 { "above" } else { "below" };
                    (
                        format!(
                            "{metric} = {} is {:.1}σ {dir} its learned baseline {} ± {} for {run} samples",
                            sig(value),
                            z.abs(),
                            sig(mean),
                            sig(sigma),
                        ),
                        json!({"value": value, "baseline_mean": mean, "baseline_sigma": sigma, "z": z,
                               "consecutive": run, "precedent": precedent, "recent": recent}),
                    )
                }),
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
    fn a_burst_no_stronger_than_two_recent_ones_starts_nothing_and_a_stronger_one_does() {
        // Bursts of 6 samples every 100 on noise of σ 1, each alert freezing the
        // baseline as the pipeline does: the first two are found (one never excuses the
        // next), weaker ones within the window are not, one twice as strong after them
        // is; with no precedent every burst is.
        let mut series = noisy(2000, 100.0, 1.0, 3);
        let bursts = [700, 800, 900, 1000, 1100, 1800];
        for (&at, height) in bursts.iter().zip([30.0, 30.0, 25.0, 27.0, 25.0, 60.0]) {
            for v in &mut series[at..at + 6] {
                *v += height;
            }
        }
        let found = |precedent_samples| {
            let mut h = Harness::new();
            h.freeze_after_finding = 10;
            let mut d = EwmaZ::new(PerKind::from_fn(|_| EwmaParams {
                precedent_samples,
                ..EwmaParams::default()
            }));
            h.run(&mut d, "chiller", "flow_lps", &series);
            bursts
                .iter()
                .map(|&at| h.count_before(at + 6) - h.count_before(at))
                .collect::<Vec<_>>()
        };
        let with = found(600);
        assert!(with[0] > 0 && with[1] > 0, "{with:?}");
        assert_eq!(with[2..5], [0, 0, 0], "{with:?}");
        assert!(with[5] > 0, "the stronger burst: {with:?}");
        assert!(found(0).iter().all(|&n| n > 0), "{:?}", found(0));
    }

    #[test]
    fn a_persistence_each_point_cannot_hold_is_refused() {
        let p = |persist_samples| EwmaParams {
            persist_samples,
            ..EwmaParams::default()
        };
        assert!(p(MAX_PERSIST).check().is_ok());
        assert!(p(MAX_PERSIST + 1).check().is_err());
        assert!(p(0).check().is_err());
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
