//! **breaker**: the interconnect breaker opening with no grid disturbance before it.
//!
//! - A protective trip follows a disturbance: frequency or voltage far from normal.
//!   The feature store's robust z-scores of `frequency_hz` and `voltage_l*_v` say whether
//!   there was one within `lookback` before the opening.
//! - `breaker_closed` going 1 → 0 without one is a finding (an injected trip command),
//!   repeated while the breaker stays open; with one it is a low-severity finding
//!   (probably a protective trip, still worth a look).
//!
//! Blind spots: a trip timed to coincide with a real disturbance; a meter whose
//! frequency and voltage are spoofed as well (see `physics`).

use super::{Detector, PerKind, PointTable};
use crate::feature::Frame;
use crate::model::attack;
use crate::model::{DeviceKind, Finding, Severity, Ts, Words};
use crate::time::{format_duration, format_ts, serde_duration};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

const NAME: &str = "breaker";

/// Parameters of the breaker detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerParams {
    /// Whether the detector runs for this kind (it only acts on `grid_meter` devices).
    pub enabled: bool,
    /// |z| of frequency or voltage that counts as a disturbance.
    pub disturbance_z: f64,
    /// How far back a disturbance explains an opening.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub lookback: i64,
}

impl BreakerParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(
            self.disturbance_z > 0.0,
            "disturbance_z",
            "must be greater than 0",
        )?;
        rule(self.lookback >= 0, "lookback", "must not be negative")?;
        Ok(())
    }
}

impl Default for BreakerParams {
    fn default() -> Self {
        Self {
            enabled: true,
            disturbance_z: 5.0,
            lookback: 60_000,
        }
    }
}

#[derive(Debug)]
struct State {
    closed: bool,
    disturbed_at: Option<Ts>,
    opened: Option<(Ts, bool)>,
}

/// The breaker detector.
pub struct Breaker {
    params: PerKind<BreakerParams>,
    state: PointTable<State>,
}

impl Breaker {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<BreakerParams>) -> Self {
        Self {
            params,
            state: PointTable::default(),
        }
    }
}

const GRID_SIGNALS: [&str; 4] = [
    "frequency_hz",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
];

impl Detector for Breaker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if frame.kind() != DeviceKind::GridMeter || !params.enabled {
            return;
        }
        let s = self.state.get_or_insert(frame.device, || State {
            closed: true,
            disturbed_at: None,
            opened: None,
        });
        // Judged before the breaker state, so a disturbance in the very frame of the
        // opening counts as explaining it.
        let disturbed = GRID_SIGNALS
            .iter()
            .filter_map(|m| frame.metric(m))
            .any(|p| p.n > 300 && p.z.abs() >= params.disturbance_z);
        if disturbed {
            s.disturbed_at = Some(frame.ts);
        }
        let Some(closed) = frame.metric("breaker_closed").map(|p| p.value >= 0.5) else {
            return;
        };
        if s.closed && !closed {
            let explained = s
                .disturbed_at
                .is_some_and(|t| frame.ts - t <= params.lookback);
            s.opened = Some((frame.ts, explained));
        }
        if closed {
            s.opened = None;
        }
        s.closed = closed;
        let Some((at, explained)) = s.opened else {
            return;
        };
        let dev = &frame.registry.device(frame.device).name;
        let (severity, reason) = if explained {
            (
                Severity::Low,
                format!("{dev}'s breaker opened at {} after a grid disturbance: probably a protective trip", format_ts(at)),
            )
        } else {
            (
                Severity::Critical,
                format!(
                    "{dev}'s breaker opened at {} with normal frequency and voltage in the {} before: not a protective trip",
                    format_ts(at),
                    format_duration(params.lookback)
                ),
            )
        };
        out.push(Finding {
            ts: frame.ts,
            device: frame.device,
            metrics: vec!["breaker_closed".into()],
            detector: NAME,
            score: if explained { 1.0 } else { 2.0 },
            threshold: 1.0,
            severity,
            technique: attack::UNAUTHORIZED_COMMAND,
            words: Words::made(
                reason,
                json!({"opened_at": format_ts(at), "disturbance_before": explained}),
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::{noisy, Harness};

    fn run(freq: &[f64], closed: &[f64]) -> Vec<(usize, Finding)> {
        let mut h = Harness::new();
        let mut d = Breaker::new(PerKind::from_fn(|_| BreakerParams::default()));
        for (&f, &b) in freq.iter().zip(closed) {
            h.feed_frame(
                &mut d,
                "grid_meter",
                &[("frequency_hz", f), ("breaker_closed", b)],
            );
        }
        h.findings
    }

    #[test]
    fn trip_out_of_the_blue_is_critical_and_after_a_disturbance_is_low() {
        let freq = noisy(1000, 50.0, 0.01, 5);
        let mut closed = vec![1.0; 1000];
        closed[800..900].iter_mut().for_each(|c| *c = 0.0);
        let f = run(&freq, &closed);
        assert_eq!(f.first().map(|x| x.0), Some(800));
        assert_eq!(f[0].1.severity, Severity::Critical);
        assert_eq!(f.len(), 100, "repeated while open, quiet once closed");
        let mut freq = freq;
        freq[790] = 49.2; // an under-frequency event ten seconds before
        let f = run(&freq, &closed);
        assert_eq!(f[0].1.severity, Severity::Low);
    }
}
