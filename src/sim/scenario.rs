//! Attack scenarios (the design's table) and their schedule.

use super::facility::Facility;
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

/// An attack the simulator can stage (the design's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// A chiller's setpoint written up by a foreign client.
    ChillerSetpointTamper,
    /// A chiller runs warm while its supply sensor reports the setpoint.
    ChillerSensorSpoof,
    /// A chiller's supply temperature replayed from an hour earlier.
    SensorReplay,
    /// A chiller's flow slowly choked.
    FlowDrift,
    /// A UPS forced to bypass by a coil write.
    UpsForcedBypass,
    /// A UPS put on battery by a battery-test command.
    UpsBatteryDrain,
    /// The IT load swung in a square wave down the power chain.
    LoadOscillation,
    /// The grid breaker opened by a coil write.
    BreakerTripInjection,
    /// The grid meter reports a steady, plausible fake.
    GridMeterSpoof,
    /// A UPS falls silent.
    TelemetryBlackout,
    /// A scanner probes devices with diagnostic function codes.
    ModbusRecon,
}

impl Scenario {
    /// Every scenario, in the design's order.
    pub const ALL: [Scenario; 11] = [
        Self::ChillerSetpointTamper,
        Self::ChillerSensorSpoof,
        Self::SensorReplay,
        Self::FlowDrift,
        Self::UpsForcedBypass,
        Self::UpsBatteryDrain,
        Self::LoadOscillation,
        Self::BreakerTripInjection,
        Self::GridMeterSpoof,
        Self::TelemetryBlackout,
        Self::ModbusRecon,
    ];

    /// The name in labels and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChillerSetpointTamper => "chiller-setpoint-tamper",
            Self::ChillerSensorSpoof => "chiller-sensor-spoof",
            Self::SensorReplay => "sensor-replay",
            Self::FlowDrift => "flow-drift",
            Self::UpsForcedBypass => "ups-forced-bypass",
            Self::UpsBatteryDrain => "ups-battery-drain",
            Self::LoadOscillation => "load-oscillation",
            Self::BreakerTripInjection => "breaker-trip-injection",
            Self::GridMeterSpoof => "grid-meter-spoof",
            Self::TelemetryBlackout => "telemetry-blackout",
            Self::ModbusRecon => "modbus-recon",
        }
    }

    /// The scenario of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// How long the attacker acts.
    fn duration_s(self) -> i64 {
        match self {
            Self::FlowDrift => 30 * 60,
            Self::TelemetryBlackout | Self::BreakerTripInjection => 5 * 60,
            Self::ModbusRecon => 4 * 60,
            _ => 15 * 60,
        }
    }

    /// Devices the scenario acts on, for a facility.
    fn targets(self, f: &Facility) -> Vec<String> {
        let ups = f.ups_names();
        let ch = f.chiller_names();
        let last = |v: &[String]| v.last().cloned().unwrap_or_default();
        match self {
            Self::ChillerSetpointTamper => vec![last(&ch)],
            Self::ChillerSensorSpoof | Self::SensorReplay | Self::FlowDrift => vec![ch[0].clone()],
            Self::UpsForcedBypass => vec![ups[0].clone()],
            Self::UpsBatteryDrain | Self::TelemetryBlackout => vec![last(&ups)],
            Self::LoadOscillation => {
                // The swing runs down the whole power chain.
                let mut v = f.pdu_names();
                v.extend(ups);
                v.push("grid-1".into());
                v
            }
            Self::ModbusRecon => {
                let mut v = ups;
                v.extend(ch);
                v.push("grid-1".into());
                v
            }
            Self::BreakerTripInjection | Self::GridMeterSpoof => vec!["grid-1".into()],
        }
    }
}

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
    /// What the attacker does.
    pub scenario: Scenario,
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
        self.scenario.name()
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

/// Plans onsets: after a clean warm-up, one attack per slot at a seeded offset, in the
/// order given. Needs `WARMUP_S + n × SLOT_S` seconds.
pub fn schedule(
    scenarios: &[Scenario],
    intensity: Intensity,
    total_s: i64,
    f: &Facility,
    rng: &mut StdRng,
) -> Result<Vec<Attack>, super::SimError> {
    let need = WARMUP_S + SLOT_S * scenarios.len() as i64;
    if !scenarios.is_empty() && total_s < need {
        return Err(super::SimError::TooShort {
            hours: total_s as f64 / 3600.0,
            attacks: scenarios.len(),
            // Rounded up to the tenth shown, so the advice is enough.
            need: (need as f64 / 360.0).ceil() / 10.0,
        });
    }
    let slot = if scenarios.is_empty() {
        0
    } else {
        (total_s - WARMUP_S) / scenarios.len() as i64
    };
    Ok(scenarios
        .iter()
        .enumerate()
        .map(|(i, &scenario)| {
            let len = scenario.duration_s();
            let slack = (slot - len - 5 * 60).max(1);
            let start = WARMUP_S + i as i64 * slot + rng.random_range(0..slack);
            Attack {
                scenario,
                intensity,
                start,
                end: start + len,
                devices: scenario.targets(f),
            }
        })
        .collect())
}
