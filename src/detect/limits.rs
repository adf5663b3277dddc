//! **limits**: values no healthy sensor can report.
//!
//! - Physical min/max and max rate of change per metric come from the vocabulary
//!   ([`crate::model::vocabulary`]); the config can override them or add them for any metric.
//! - A value outside `[min, max]` scores `1 + excess / (max - min)`; a rate beyond
//!   `max_rate` scores `|rate| / max_rate`; both against a threshold of 1.
//! - No learning and no warm-up: it fires on the first impossible sample.
//!
//! Blind spots: anything physically possible. The limits are deliberately wide
//! (operating bands differ between facilities and are learned by the other detectors).

use super::{point_finding, sig, Detector, PerKind};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{Finding, Severity};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "limits";
use std::collections::BTreeMap;

/// Limits for one metric; unset fields keep the vocabulary's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricLimits {
    /// Lowest possible value.
    pub min: Option<f64>,
    /// Highest possible value.
    pub max: Option<f64>,
    /// Largest possible |rate of change| per second.
    pub max_rate: Option<f64>,
}

/// Parameters of the limits detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Per-metric overrides and additions, by metric name.
    pub metrics: BTreeMap<String, MetricLimits>,
}

impl Default for LimitsParams {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics: BTreeMap::new(),
        }
    }
}

impl LimitsParams {
    /// The first per-metric limit that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        for (metric, l) in &self.metrics {
            if let (Some(lo), Some(hi)) = (l.min, l.max) {
                rule(lo < hi, format!("metrics.{metric}"), "needs min < max")?;
            }
            if let Some(r) = l.max_rate {
                rule(
                    r > 0.0,
                    format!("metrics.{metric}.max_rate"),
                    "must be greater than 0",
                )?;
            }
        }
        Ok(())
    }
}

/// The limits detector.
pub struct Limits {
    params: PerKind<LimitsParams>,
}

impl Limits {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<LimitsParams>) -> Self {
        Self { params }
    }
}

impl Detector for Limits {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        for (p, st) in frame.good() {
            let metric = &frame.registry.point(p).metric;
            let over = params.metrics.get(metric.as_str());
            let pick = |o: Option<f64>, s: Option<f64>| o.or(s);
            let min = pick(over.and_then(|o| o.min), st.spec.map(|s| s.min));
            let max = pick(over.and_then(|o| o.max), st.spec.map(|s| s.max));
            let max_rate = pick(over.and_then(|o| o.max_rate), st.spec.map(|s| s.max_rate));
            let v = st.value;
            let lo = min.unwrap_or(f64::NEG_INFINITY);
            let hi = max.unwrap_or(f64::INFINITY);
            if v < lo || v > hi {
                let range = hi - lo;
                let excess = if v < lo { lo - v } else { v - hi };
                let score = if range.is_finite() && range > 0.0 {
                    1.0 + excess / range
                } else {
                    2.0
                };
                let side = if v < lo {
                    "below its physical minimum"
                } else {
                    "above its physical maximum"
                };
                let bound = if v < lo { lo } else { hi };
                out.push(point_finding(
                    frame,
                    p,
                    NAME,
                    score,
                    1.0,
                    Severity::High,
                    attack::SPOOF_REPORTING,
                    format!(
                        "{metric} reads {}, {side} of {}: no working sensor reports that",
                        sig(v),
                        sig(bound)
                    ),
                    json!({"value": v, "min": min, "max": max}),
                ));
            } else if let Some(max_rate) = max_rate.filter(|r| r.is_finite() && *r > 0.0) {
                // A jump back from an impossible value is not a second finding.
                let prev = v - st.delta;
                if st.n >= 2 && prev >= lo && prev <= hi && st.rate.abs() > max_rate {
                    out.push(point_finding(
                        frame,
                        p,
                        NAME,
                        st.rate.abs() / max_rate,
                        1.0,
                        Severity::Medium,
                        attack::SPOOF_REPORTING,
                        format!(
                            "{metric} changed at {}/s, faster than the physical limit of {}/s",
                            sig(st.rate),
                            sig(max_rate)
                        ),
                        json!({"value": v, "delta": st.delta, "rate_per_s": st.rate, "max_rate_per_s": max_rate}),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::Harness;

    fn det() -> Limits {
        Limits::new(PerKind::from_fn(|_| LimitsParams::default()))
    }

    #[test]
    fn impossible_value_fires_at_once_and_only_then() {
        let mut h = Harness::new();
        let mut d = det();
        h.run(
            &mut d,
            "ups",
            "battery_charge_pct",
            &[80.0, 80.5, 81.0, 140.0, 81.0],
        );
        assert_eq!(h.findings.len(), 1);
        assert_eq!(h.findings[0].0, 3);
        assert!(h.findings[0].1.reason.contains("physical maximum"));
    }

    #[test]
    fn rate_limit_fires() {
        let mut h = Harness::new();
        let mut d = det();
        h.run(
            &mut d,
            "chiller",
            "supply_temp_c",
            &[7.0, 7.1, 7.0, 12.0, 12.1],
        );
        assert_eq!(h.first_after(0), Some(3));
        assert_eq!(h.findings.len(), 1);
    }

    #[test]
    fn unknown_metrics_get_configured_limits_only() {
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "other", "vibration_g", &[1.0, 1e9]);
        assert!(h.findings.is_empty());
        let mut p = LimitsParams::default();
        p.metrics.insert(
            "vibration_g".into(),
            MetricLimits {
                min: Some(0.0),
                max: Some(50.0),
                max_rate: None,
            },
        );
        let mut d = Limits::new(PerKind::from_fn(|_| p.clone()));
        let mut h = Harness::new();
        h.run(&mut d, "other", "vibration_g", &[1.0, 1e9]);
        assert_eq!(h.findings.len(), 1);
    }
}
