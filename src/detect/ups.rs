//! **ups**: a UPS that leaves its protected state while its mains is healthy.
//!
//! - The input voltage's normal level is learned during a warm-up; mains is healthy
//!   while the input is within 15 % of it.
//! - With healthy mains: `bypass_active = 1` (the load is unprotected), `on_battery = 1`
//!   (the battery is being spent for nothing), or a battery charge falling faster than
//!   `drain_pct_per_min` over `window` (a drain the flags do not admit) are findings.
//!
//! Blind spots: a UPS without input-voltage or battery telemetry; attacks during a real
//! mains outage (the breaker and staleness detectors see those).

use super::{sig, Arrival, Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::points::DeviceId;
use crate::model::{DeviceKind, Finding, Quality, Severity, Ts, Words};
use crate::time::{format_duration, serde_duration};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;

const NAME: &str = "ups";

/// Parameters of the UPS state detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpsParams {
    /// Whether the detector runs for this kind (it only acts on `ups` devices).
    pub enabled: bool,
    /// Samples of input voltage used to learn its normal level.
    pub warmup_samples: u32,
    /// Battery charge falling faster than this (percent per minute) is a drain.
    pub drain_pct_per_min: f64,
    /// Window over which the charge's slope is measured.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub window: i64,
}

impl UpsParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.drain_pct_per_min > 0.0,
            "drain_pct_per_min",
            "must be greater than 0",
        )?;
        rule(self.window >= 1000, "window", "must be at least 1s")?;
        Ok(())
    }
}

impl Default for UpsParams {
    fn default() -> Self {
        Self {
            enabled: true,
            warmup_samples: 60,
            drain_pct_per_min: 0.2,
            window: 120_000,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    volts_sum: f64,
    volts_n: u32,
    charge: VecDeque<(Ts, f64)>,
}

/// The UPS state detector.
pub struct UpsState {
    params: PerKind<UpsParams>,
    state: PointTable<State>,
    /// By device: what arrived of its newest instant.
    arrived: PointTable<Arrived>,
}

impl UpsState {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<UpsParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
            arrived: PointTable::default(),
        }
    }
}

impl Detector for UpsState {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if frame.kind() != DeviceKind::Ups || !params.enabled {
            return;
        }
        let s = self.state.get_or_insert(frame.device, State::default);
        let Some(vin) = frame.metric("input_voltage_v").map(|p| p.value) else {
            return;
        };
        if s.volts_n < params.warmup_samples {
            if vin > 0.0 {
                s.volts_sum += vin;
                s.volts_n += 1;
            }
            return;
        }
        let nominal = s.volts_sum / f64::from(s.volts_n);
        if (vin - nominal).abs() > 0.15 * nominal {
            s.charge.clear();
            return;
        }
        let dev = &frame.registry.device(frame.device).name;
        for flag in FLAGS {
            if frame.metric(flag).is_some_and(|p| p.value >= 0.5) {
                out.push(flag_finding(
                    dev,
                    frame.device,
                    frame.ts,
                    flag,
                    vin,
                    nominal,
                ));
            }
        }
        let mut finding =
            |metric: &str, score: f64, reason: String, evidence: serde_json::Value| {
                out.push(Finding {
                    ts: frame.ts,
                    device: frame.device,
                    metrics: vec![metric.to_owned()],
                    detector: NAME,
                    score,
                    threshold: 1.0,
                    severity: Severity::High,
                    technique: attack::MANIPULATION_OF_CONTROL,
                    words: Words::made(reason, evidence),
                });
            };
        if let Some(c) = frame.metric("battery_charge_pct").map(|p| p.value) {
            s.charge.push_back((frame.ts, c));
            while s
                .charge
                .front()
                .is_some_and(|&(t, _)| frame.ts - t > params.window)
            {
                s.charge.pop_front();
            }
            if let Some(&(t0, c0)) = s.charge.front() {
                let span = frame.ts - t0;
                if span >= params.window / 2 && span > 0 {
                    let per_min = (c - c0) * 60_000.0 / span as f64;
                    if per_min <= -params.drain_pct_per_min {
                        finding(
                            "battery_charge_pct",
                            -per_min / params.drain_pct_per_min,
                            format!(
                                "{dev}'s battery charge fell from {} % to {} % in {} with healthy mains: the battery is being drained",
                                sig(c0),
                                sig(c),
                                format_duration(span)
                            ),
                            json!({"charge_pct": c, "charge_pct_before": c0, "pct_per_min": per_min, "input_voltage_v": vin}),
                        );
                    }
                }
            }
        }
    }

    /// A flag raised with healthy mains needs only the same instant's input voltage:
    /// found as soon as both have arrived (against the level learned so far).
    fn arrival(&mut self, r: &Arrival<'_>, out: &mut Vec<Finding>) {
        let info = r.registry.point(r.point);
        let dev = r.registry.device(info.device);
        let params = self.params.get(dev.kind);
        let flag = FLAGS.iter().position(|f| *f == info.metric);
        let is_vin = info.metric == "input_voltage_v";
        if dev.kind != DeviceKind::Ups
            || !params.enabled
            || r.quality != Quality::Good
            || (flag.is_none() && !is_vin)
        {
            return;
        }
        let Some(nominal) = self
            .state
            .get(info.device)
            .filter(|s| s.volts_n >= params.warmup_samples)
            .map(|s| s.volts_sum / f64::from(s.volts_n))
        else {
            return;
        };
        let a = self.arrived.get_or_insert(info.device, Arrived::default);
        if r.ts < a.ts {
            // Older than what already arrived: it is judged in its turn.
            return;
        }
        if r.ts > a.ts {
            *a = Arrived {
                ts: r.ts,
                ..Arrived::default()
            };
        }
        match flag {
            Some(i) => a.flags[i] = r.value >= 0.5,
            None => a.vin = Some(r.value),
        }
        let Some(vin) = a.vin.filter(|v| (v - nominal).abs() <= 0.15 * nominal) else {
            return;
        };
        for (i, flag) in FLAGS.iter().enumerate() {
            if a.flags[i] && !a.raised[i] {
                a.raised[i] = true;
                out.push(flag_finding(
                    &dev.name,
                    info.device,
                    r.ts,
                    flag,
                    vin,
                    nominal,
                ));
            }
        }
    }
}

/// The state flags a UPS must not raise while its mains is healthy.
const FLAGS: [&str; 2] = ["bypass_active", "on_battery"];

/// What arrived of one UPS's newest instant (live, before the reorder wait).
#[derive(Debug, Default)]
struct Arrived {
    ts: Ts,
    vin: Option<f64>,
    /// Each of [`FLAGS`] raised.
    flags: [bool; 2],
    /// Each of [`FLAGS`] already reported for this instant.
    raised: [bool; 2],
}

/// A state flag raised with healthy mains.
fn flag_finding(
    dev: &str,
    device: DeviceId,
    ts: Ts,
    flag: &str,
    vin: f64,
    nominal: f64,
) -> Finding {
    let reason = if flag == "bypass_active" {
        format!(
            "{dev} is in bypass although its mains is healthy ({} V): its load runs unprotected",
            sig(vin)
        )
    } else {
        format!(
            "{dev} runs on battery although its mains is healthy ({} V)",
            sig(vin)
        )
    };
    Finding {
        ts,
        device,
        metrics: vec![flag.to_owned()],
        detector: NAME,
        score: 1.0,
        threshold: 1.0,
        severity: Severity::High,
        technique: attack::MANIPULATION_OF_CONTROL,
        words: Words::made(
            reason,
            json!({"input_voltage_v": vin, "nominal_input_v": nominal}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::Harness;

    fn run(samples: &[(f64, f64, f64, f64)]) -> Vec<(usize, Finding)> {
        let mut h = Harness::new();
        let mut d = UpsState::new(PerKind::from_fn(|_| UpsParams::default()));
        for &(v, b, ob, c) in samples {
            let frame = [
                ("input_voltage_v", v),
                ("bypass_active", b),
                ("on_battery", ob),
                ("battery_charge_pct", c),
            ];
            h.feed_frame(&mut d, "ups", &frame);
        }
        h.findings
    }

    #[test]
    fn bypass_and_battery_with_healthy_mains() {
        let mut s = vec![(400.0, 0.0, 0.0, 100.0); 100];
        s.extend(vec![(400.0, 1.0, 0.0, 100.0); 5]);
        let f = run(&s);
        assert_eq!(f.first().map(|x| x.0), Some(100));
        assert_eq!(f[0].1.metrics, vec!["bypass_active".to_string()]);
        // Mains lost: being on battery is what a UPS is for.
        let mut s = vec![(400.0, 0.0, 0.0, 100.0); 100];
        s.extend(vec![(0.0, 0.0, 1.0, 99.0); 30]);
        assert!(run(&s).is_empty());
    }

    #[test]
    fn silent_drain_is_seen_from_the_charge() {
        let mut s = vec![(400.0, 0.0, 0.0, 100.0); 100];
        s.extend((0..300).map(|i| (400.0, 0.0, 0.0, 100.0 - i as f64 * 0.01)));
        let f = run(&s);
        let at = f.first().expect("drain seen").0;
        assert!((100..200).contains(&at), "at {at}");
        assert_eq!(f[0].1.metrics, vec!["battery_charge_pct".to_string()]);
    }

    #[test]
    fn on_arrival_a_flag_with_healthy_mains_is_found_once_both_are_in() {
        let mut h = Harness::new();
        let mut d = UpsState::new(PerKind::from_fn(|_| UpsParams::default()));
        for _ in 0..100 {
            h.feed_frame(
                &mut d,
                "ups",
                &[("input_voltage_v", 400.0), ("bypass_active", 0.0)],
            );
        }
        let t = 100_000;
        assert!(
            h.arrive(&mut d, "ups", "bypass_active", t, 1.0).is_empty(),
            "mains not known yet"
        );
        let got = h.arrive(&mut d, "ups", "input_voltage_v", t, 401.0);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].ts, got[0].metrics.as_slice()),
            (t, &["bypass_active".to_string()][..])
        );
        // The frame in its turn finds the same (what confirms the early alert).
        h.feed_frame(
            &mut d,
            "ups",
            &[("input_voltage_v", 401.0), ("bypass_active", 1.0)],
        );
        let (_, late) = h.findings.last().unwrap();
        assert_eq!(
            (late.ts, &late.metrics, late.reason()),
            (t, &got[0].metrics, got[0].reason())
        );
        assert!(
            h.arrive(&mut d, "ups", "bypass_active", t, 1.0).is_empty(),
            "once per instant"
        );
        assert!(
            h.arrive(&mut d, "ups", "bypass_active", t - 1_000, 1.0)
                .is_empty(),
            "older: in its turn"
        );
        // Mains lost: on battery is what a UPS is for.
        let t = t + 1_000;
        assert!(h
            .arrive(&mut d, "ups", "input_voltage_v", t, 0.0)
            .is_empty());
        assert!(h.arrive(&mut d, "ups", "on_battery", t, 1.0).is_empty());
    }

    #[test]
    fn on_arrival_nothing_before_the_mains_level_is_learned() {
        let mut h = Harness::new();
        let mut d = UpsState::new(PerKind::from_fn(|_| UpsParams::default()));
        h.arrive(&mut d, "ups", "input_voltage_v", 0, 400.0);
        assert!(h.arrive(&mut d, "ups", "bypass_active", 0, 1.0).is_empty());
    }
}
