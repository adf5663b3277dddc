//! **limits**: values no healthy sensor can report.
//!
//! - Physical min/max and max rate of change per metric come from the vocabulary
//!   ([`crate::model::vocabulary`]); the config can override them or add them for any metric.
//! - A value outside `[min, max]` scores `1 + excess / (max - min)`; a rate beyond
//!   `max_rate` scores `|rate| / max_rate`; both against a threshold of 1.
//! - No learning and no warm-up: it fires on the first impossible sample, and a value
//!   out of range needs no other reading, so live runs raise it on arrival.
//!
//! Blind spots: anything physically possible. The limits are deliberately wide
//! (operating bands differ between facilities and are learned by the other detectors).

use super::{point_finding, sig, Arrival, Detector, PerKind};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::points::{PointId, Registry};
use crate::model::vocabulary::MetricSpec;
use crate::model::{Finding, Quality, Severity, Ts, Words};
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
            let info = frame.registry.point(p);
            let b = Bounds::of(params, &info.metric, st.spec);
            let v = st.value;
            if let Some(f) = b.breach(frame.registry, p, frame.ts, v) {
                out.push(f);
            } else if let Some(max_rate) = b.max_rate.filter(|r| r.is_finite() && *r > 0.0) {
                // A jump back from an impossible value is not a second finding.
                let prev = v - st.delta;
                if st.n >= 2 && b.holds(prev) && st.rate.abs() > max_rate {
                    let metric = &info.metric;
                    out.push(point_finding(
                        frame,
                        p,
                        NAME,
                        st.rate.abs() / max_rate,
                        1.0,
                        Severity::Medium,
                        attack::SPOOF_REPORTING,
                        Words::made(
                            format!(
                                "{metric} changed at {}/s, faster than the physical limit of {}/s",
                                sig(st.rate),
                                sig(max_rate)
                            ),
                            json!({"value": v, "delta": st.delta, "rate_per_s": st.rate, "max_rate_per_s": max_rate}),
                        ),
                    ));
                }
            }
        }
    }

    /// An impossible value needs no other reading: found on arrival.
    fn arrival(&mut self, r: &Arrival<'_>, out: &mut Vec<Finding>) {
        if r.quality != Quality::Good {
            return;
        }
        let info = r.registry.point(r.point);
        let params = self.params.get(r.registry.device(info.device).kind);
        if !params.enabled {
            return;
        }
        let b = Bounds::of(params, &info.metric, info.spec);
        out.extend(b.breach(r.registry, r.point, r.ts, r.value));
    }
}

/// One metric's limits: the config's where set, else the vocabulary's.
struct Bounds {
    min: Option<f64>,
    max: Option<f64>,
    max_rate: Option<f64>,
}

impl Bounds {
    fn of(params: &LimitsParams, metric: &str, spec: Option<&MetricSpec>) -> Self {
        let over = params.metrics.get(metric);
        Self {
            min: over.and_then(|o| o.min).or(spec.map(|s| s.min)),
            max: over.and_then(|o| o.max).or(spec.map(|s| s.max)),
            max_rate: over.and_then(|o| o.max_rate).or(spec.map(|s| s.max_rate)),
        }
    }

    fn lo(&self) -> f64 {
        self.min.unwrap_or(f64::NEG_INFINITY)
    }

    fn hi(&self) -> f64 {
        self.max.unwrap_or(f64::INFINITY)
    }

    fn holds(&self, v: f64) -> bool {
        v >= self.lo() && v <= self.hi()
    }

    /// The finding for a value outside `[min, max]`, if it is.
    fn breach(&self, reg: &Registry, p: PointId, ts: Ts, v: f64) -> Option<Finding> {
        let (lo, hi) = (self.lo(), self.hi());
        if !(v < lo || v > hi) {
            return None;
        }
        let range = hi - lo;
        let excess = if v < lo { lo - v } else { v - hi };
        let score = if range.is_finite() && range > 0.0 {
            1.0 + excess / range
        } else {
            2.0
        };
        let (side, bound) = if v < lo {
            ("below its physical minimum", lo)
        } else {
            ("above its physical maximum", hi)
        };
        let info = reg.point(p);
        Some(Finding {
            ts,
            device: info.device,
            metrics: vec![info.metric.clone()],
            detector: NAME,
            score,
            threshold: 1.0,
            severity: Severity::High,
            technique: attack::SPOOF_REPORTING,
            words: Words::made(
                format!(
                    "{} reads {}, {side} of {}: no working sensor reports that",
                    info.metric,
                    sig(v),
                    sig(bound)
                ),
                json!({"value": v, "min": self.min, "max": self.max}),
            ),
        })
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
        assert!(h.findings[0].1.reason().contains("physical maximum"));
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

    #[test]
    fn on_arrival_only_an_impossible_value_is_found_and_as_its_frame_finds_it() {
        let mut h = Harness::new();
        let mut d = det();
        h.run(&mut d, "chiller", "supply_temp_c", &[7.0, 7.1]);
        // A jump too fast but possible needs the reading before it: not on arrival.
        assert!(h
            .arrive(&mut d, "chiller", "supply_temp_c", 2_000, 30.0)
            .is_empty());
        let got = h.arrive(&mut d, "chiller", "supply_temp_c", 2_000, 500.0);
        assert_eq!(got.len(), 1);
        h.feed(&mut d, "chiller", "supply_temp_c", 500.0);
        let (_, f) = h.findings.last().unwrap();
        assert_eq!(
            (f.ts, &f.metrics, f.detector),
            (got[0].ts, &got[0].metrics, got[0].detector)
        );
        assert_eq!(f.reason(), got[0].reason());
    }
}
