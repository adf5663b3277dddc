//! Attack scenarios (the design's table) and their schedule.

use super::facility::Facility;
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

/// Every scenario the simulator can stage, in the design's order.
pub const SCENARIOS: [&str; 11] = [
    "chiller-setpoint-tamper",
    "chiller-sensor-spoof",
    "sensor-replay",
    "flow-drift",
    "ups-forced-bypass",
    "ups-battery-drain",
    "load-oscillation",
    "breaker-trip-injection",
    "grid-meter-spoof",
    "telemetry-blackout",
    "modbus-recon",
];

/// How hard the attacker pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    /// Small effects, meant to stay under naive thresholds.
    Subtle,
    /// Large effects.
    Obvious,
}

impl Intensity {
    /// Parses `subtle` / `obvious`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "subtle" => Some(Self::Subtle),
            "obvious" => Some(Self::Obvious),
            _ => None,
        }
    }
}

/// One scheduled attack, in seconds from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Attack {
    /// Index into [`SCENARIOS`].
    pub scenario: usize,
    /// Intensity.
    pub intensity: Intensity,
    /// Onset, seconds from the start.
    pub start: i64,
    /// End of the attacker's action.
    pub end: i64,
    /// Devices attacked.
    pub devices: Vec<String>,
}

impl Attack {
    /// Scenario name.
    pub fn name(&self) -> &'static str {
        SCENARIOS[self.scenario]
    }

    /// Whether the attack is under way at second `s`.
    pub fn active(&self, s: i64) -> bool {
        s >= self.start && s < self.end
    }
}

/// Clean time before the first attack: every detector's warm-up.
pub const WARMUP_S: i64 = 150 * 60;
/// Time per attack slot.
pub const SLOT_S: i64 = 40 * 60;

/// How long each scenario lasts.
fn duration_s(name: &str) -> i64 {
    match name {
        "flow-drift" => 30 * 60,
        "telemetry-blackout" | "breaker-trip-injection" => 5 * 60,
        "modbus-recon" => 4 * 60,
        _ => 15 * 60,
    }
}

/// Devices a scenario acts on, for a facility.
fn targets(name: &str, f: &Facility) -> Vec<String> {
    let ups = f.ups_names();
    let ch = f.chiller_names();
    let last = |v: &[String]| v.last().cloned().unwrap_or_default();
    match name {
        "chiller-setpoint-tamper" => vec![last(&ch)],
        "chiller-sensor-spoof" | "sensor-replay" | "flow-drift" => vec![ch[0].clone()],
        "ups-forced-bypass" => vec![ups[0].clone()],
        "ups-battery-drain" | "telemetry-blackout" => vec![last(&ups)],
        "load-oscillation" => {
            // The swing runs down the whole power chain.
            let mut v = f.pdu_names();
            v.extend(ups);
            v.push("grid-1".into());
            v
        }
        "modbus-recon" => {
            let mut v = ups;
            v.extend(ch);
            v.push("grid-1".into());
            v
        }
        _ => vec!["grid-1".into()],
    }
}

/// Plans onsets: after a clean warm-up, one attack per slot at a seeded offset, in the
/// order given. Needs `WARMUP_S + n × SLOT_S` seconds.
pub fn schedule(
    names: &[String],
    intensity: Intensity,
    total_s: i64,
    f: &Facility,
    rng: &mut StdRng,
) -> Result<Vec<Attack>, super::SimError> {
    let need = WARMUP_S + SLOT_S * names.len() as i64;
    if !names.is_empty() && total_s < need {
        return Err(super::SimError::TooShort {
            hours: total_s as f64 / 3600.0,
            attacks: names.len(),
            // Rounded up to the tenth shown, so the advice is enough.
            need: (need as f64 / 360.0).ceil() / 10.0,
        });
    }
    let slot = if names.is_empty() {
        0
    } else {
        (total_s - WARMUP_S) / names.len() as i64
    };
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let scenario = SCENARIOS
                .iter()
                .position(|s| s == name)
                .ok_or_else(|| super::SimError::UnknownAttack(name.clone()))?;
            let len = duration_s(name);
            let slack = (slot - len - 5 * 60).max(1);
            let start = WARMUP_S + i as i64 * slot + rng.random_range(0..slack);
            Ok(Attack {
                scenario,
                intensity,
                start,
                end: start + len,
                devices: targets(name, f),
            })
        })
        .collect()
}
