//! **envelope**: a value outside the range the site's clean history spanned — the bound
//! on a drift too slow for any baseline to notice (the "boiling frog").
//!
//! - Every online baseline (`ewma_z`'s running mean, `cusum`'s reference, `physics`'
//!   fits) follows a ramp slow enough, by design: daily load profiles must not alarm. An
//!   attacker who walks a sensor or a setpoint a little each hour is followed too.
//! - `wattchdog calibrate` writes, per kind and metric, the lowest and highest value of
//!   the clean history (`[kinds.<kind>.envelope.metrics.<metric>] min, max`). A value
//!   beyond that band widened by `margin` × its width on each side, for
//!   `persist_samples` samples in a row, is a finding — however slowly it got there.
//! - Nothing is learned online (an attacker cannot move the band); a metric without a
//!   band is not judged, so with no calibration the detector is silent.
//!
//! Blind spots: drifts that stay inside the history's range; operating points the
//! history never covered (a summer peak after a winter calibration) — recalibrate, or
//! widen `margin`.

use super::{point_finding, sig, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity, Words};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

const NAME: &str = "envelope";

/// The range one metric spanned in the clean history.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Lowest value seen.
    pub min: f64,
    /// Highest value seen.
    pub max: f64,
}

/// Parameters of the envelope detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnvelopeParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Each side of a band is widened by this share of its width.
    pub margin: f64,
    /// Consecutive samples outside needed for a finding.
    pub persist_samples: u32,
    /// The bands, by metric name (written by `wattchdog calibrate`).
    pub metrics: BTreeMap<String, Band>,
}

impl Default for EnvelopeParams {
    fn default() -> Self {
        Self {
            enabled: true,
            margin: 0.5,
            persist_samples: 30,
            metrics: BTreeMap::new(),
        }
    }
}

impl EnvelopeParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.margin.is_finite() && self.margin >= 0.0,
            "margin",
            "must not be negative",
        )?;
        rule(
            self.persist_samples >= 1,
            "persist_samples",
            "must be at least 1",
        )?;
        for (metric, b) in &self.metrics {
            rule(
                b.min.is_finite() && b.max.is_finite() && b.min <= b.max,
                format!("metrics.{metric}"),
                "needs finite min <= max",
            )?;
        }
        Ok(())
    }
}

/// Per point: its band widened (none when its metric has none), and the run outside.
struct State {
    bounds: Option<(f64, f64)>,
    run: u32,
}

/// The envelope detector.
pub struct Envelope {
    params: PerKind<EnvelopeParams>,
    state: PointTable<State>,
}

impl Envelope {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<EnvelopeParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
        }
    }
}

impl Detector for Envelope {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled || params.metrics.is_empty() {
            return;
        }
        for (p, st) in frame.good_analog() {
            let s = self.state.get_or_insert(p, || State {
                // Looked up by name once per point, not per reading.
                bounds: params
                    .metrics
                    .get(&frame.registry.point(p).metric)
                    .map(|b| {
                        let widen = params.margin * (b.max - b.min);
                        (b.min - widen, b.max + widen)
                    }),
                run: 0,
            });
            let Some((lo, hi)) = s.bounds else {
                continue;
            };
            if (lo..=hi).contains(&st.value) {
                s.run = 0;
                continue;
            }
            s.run += 1;
            if s.run < params.persist_samples {
                continue;
            }
            let metric = &frame.registry.point(p).metric;
            let (dir, bound) = if st.value > hi {
                ("above", hi)
            } else {
                ("below", lo)
            };
            let width = (hi - lo).max(f64::MIN_POSITIVE);
            out.push(point_finding(
                frame,
                p,
                NAME,
                1.0 + (st.value - bound).abs() / width,
                1.0,
                Severity::Medium,
                attack::for_process_change(metric, st.class),
                Words::made(
                    format!(
                        "{metric} = {} is {dir} the range the site's clean history spanned, widened: [{}, {}], for {} samples",
                        sig(st.value),
                        sig(lo),
                        sig(hi),
                        s.run
                    ),
                    json!({"value": st.value, "low": lo, "high": hi, "margin": params.margin, "consecutive": s.run}),
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ewma::{EwmaParams, EwmaZ};
    use crate::detect::testkit::{noisy, Harness};

    fn det(metric: &str, min: f64, max: f64) -> Envelope {
        Envelope::new(PerKind::from_fn(|_| EnvelopeParams {
            metrics: [(metric.to_owned(), Band { min, max })].into(),
            ..EnvelopeParams::default()
        }))
    }

    #[test]
    fn a_ramp_too_slow_for_the_baseline_is_stopped_at_the_calibrated_range() {
        // Ten hours of a chilled-water supply at 7 °C ± 0.1 walked up by 3.6 °C at
        // 0.36 °C an hour (1 mσ per sample): the running baseline follows it, the
        // envelope of a clean history that spanned 6.6–7.4 °C stops it at 7.8 °C.
        let n = 36_000;
        let mut series = noisy(n, 7.0, 0.1, 5);
        for (i, v) in series.iter_mut().enumerate() {
            *v += 3.6 * i as f64 / n as f64;
        }
        let mut h = Harness::new();
        let mut e = det("supply_temp_c", 6.6, 7.4);
        h.run(&mut e, "chiller", "supply_temp_c", &series);
        // The ramp's mean passes 7.8 °C at sample 8,000 and 8 °C (2σ above) at 10,000.
        let at = h.first_after(0).expect("the envelope stops the ramp");
        assert!((8_000..10_000).contains(&at), "at {at}");

        let mut h = Harness::new();
        let mut z = EwmaZ::new(PerKind::from_fn(|_| EwmaParams::default()));
        h.run(&mut z, "chiller", "supply_temp_c", &series);
        assert!(h.findings.is_empty(), "the baseline follows the ramp");
    }

    #[test]
    fn metrics_without_a_band_and_values_inside_are_not_judged() {
        let mut h = Harness::new();
        let mut e = det("supply_temp_c", 6.6, 7.4);
        h.run(&mut e, "chiller", "flow_lps", &[500.0; 100]);
        h.run(&mut e, "chiller", "supply_temp_c", &noisy(500, 7.0, 0.2, 2));
        assert!(h.findings.is_empty());
        let mut none = Envelope::new(PerKind::from_fn(|_| EnvelopeParams::default()));
        h.run(&mut none, "chiller", "supply_temp_c", &[100.0; 100]);
        assert!(h.findings.is_empty(), "no calibration, no judgement");
    }

    #[test]
    fn bands_are_checked() {
        let mut p = EnvelopeParams::default();
        p.metrics.insert("x".into(), Band { min: 2.0, max: 1.0 });
        assert_eq!(p.check().unwrap_err().key, "metrics.x");
        let p = EnvelopeParams {
            margin: -1.0,
            ..EnvelopeParams::default()
        };
        assert!(p.check().is_err());
    }
}
