//! The simulated facility's topology, constants and noise, from TOML.
//!
//! Every key is optional (the default is the `default` variant); unknown keys and
//! impossible values (negative flow, an efficiency above 1, an unknown variant) are errors
//! that name the key. Three built-in variants differ in size, grid frequency, constants
//! and sensor quality, so detectors can be checked on facilities they were not tuned on.

use crate::tomlfile::{self, TomlError};
use serde::Deserialize;
use std::path::Path;
use thiserror::Error;

/// Why a facility description was rejected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FacilityError {
    /// Unreadable file, syntax, unknown key, or a value that breaks a rule.
    #[error(transparent)]
    File(#[from] TomlError),
    /// Unknown variant name.
    #[error("unknown facility variant {0:?} (known: {known})", known = VARIANTS.join(", "))]
    UnknownVariant(String),
}

/// Built-in variants.
pub const VARIANTS: [&str; 4] = ["default", "hyperscale-60hz", "edge-small", "colo-legacy"];

/// IT load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ItLoad {
    /// Mean IT load, kW.
    pub nominal_kw: f64,
    /// Relative amplitude of the daily profile.
    pub daily_amplitude: f64,
    /// Hour of the daily peak.
    pub peak_hour: f64,
    /// Step of the AR(1) load noise, kW.
    pub noise_kw: f64,
    /// Number of PDUs sharing it.
    pub pdus: usize,
}

/// UPS units (identical, sharing the load).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ups {
    /// Number of units.
    pub count: usize,
    /// Rating per unit, kW.
    pub rated_kw: f64,
    /// Efficiency at full load (0–1).
    pub efficiency: f64,
    /// Efficiency loss at no load relative to full load.
    pub efficiency_droop: f64,
    /// Battery energy per unit, kWh.
    pub battery_kwh: f64,
    /// Nominal input/output voltage, V.
    pub voltage_v: f64,
    /// Nominal battery voltage, V.
    pub battery_voltage_v: f64,
}

/// Chillers (identical, sharing the heat).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chillers {
    /// Number of chillers.
    pub count: usize,
    /// Chilled-water supply setpoint, °C.
    pub setpoint_c: f64,
    /// Chilled-water flow per chiller, L/s.
    pub flow_lps: f64,
    /// Coefficient of performance at the setpoint.
    pub cop: f64,
    /// COP gained per °C of warmer supply water.
    pub cop_per_c: f64,
    /// Time constant of the supply temperature, s.
    pub tau_s: f64,
}

/// CRAHs and the room.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Room {
    /// Number of CRAHs.
    pub crahs: usize,
    /// Fan power per CRAH, kW.
    pub fan_kw: f64,
    /// Room temperature at nominal load, °C.
    pub nominal_c: f64,
    /// Thermal time constant of the room, s.
    pub tau_s: f64,
    /// CRAH supply air above chilled-water supply, °C.
    pub approach_c: f64,
}

/// The grid interconnect.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grid {
    /// Nominal frequency, Hz.
    pub frequency_hz: f64,
    /// Phase voltage at the meter, V.
    pub voltage_v: f64,
    /// Power factor.
    pub power_factor: f64,
    /// Other site load (lighting, offices), kW.
    pub other_kw: f64,
    /// Step of the frequency's random walk, Hz.
    pub frequency_walk_hz: f64,
}

/// Sensor noise (standard deviations) and resolutions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Noise {
    /// Temperatures, °C.
    pub temp_c: f64,
    /// Resolution of temperatures, °C.
    pub temp_resolution_c: f64,
    /// Flow, L/s.
    pub flow_lps: f64,
    /// Power, kW.
    pub power_kw: f64,
    /// Voltage, V.
    pub voltage_v: f64,
    /// Frequency, Hz.
    pub frequency_hz: f64,
}

/// A facility.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Facility {
    /// Site name.
    pub site: String,
    /// IT load and PDUs.
    pub it: ItLoad,
    /// UPS units.
    pub ups: Ups,
    /// Chillers.
    pub chillers: Chillers,
    /// CRAHs and room.
    pub room: Room,
    /// Grid meter.
    pub grid: Grid,
    /// Sensors.
    pub noise: Noise,
    /// Clients that write setpoints in normal operation (the BMS).
    pub bms_client: String,
    /// How often the BMS rewrites the chillers' setpoints to their nominal value
    /// (default `"15m"`; a rarely-writing BMS: `"5h"`).
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub bms_rewrite: i64,
}

impl Default for Facility {
    fn default() -> Self {
        Self {
            site: "ams1".into(),
            it: ItLoad::default(),
            ups: Ups::default(),
            chillers: Chillers::default(),
            room: Room::default(),
            grid: Grid::default(),
            noise: Noise::default(),
            bms_client: "10.20.0.5".into(),
            bms_rewrite: 900_000,
        }
    }
}

impl Default for ItLoad {
    fn default() -> Self {
        Self {
            nominal_kw: 800.0,
            daily_amplitude: 0.12,
            peak_hour: 15.0,
            noise_kw: 1.0,
            pdus: 2,
        }
    }
}

impl Default for Ups {
    fn default() -> Self {
        Self {
            count: 2,
            rated_kw: 600.0,
            efficiency: 0.965,
            efficiency_droop: 0.05,
            battery_kwh: 200.0,
            voltage_v: 400.0,
            battery_voltage_v: 545.0,
        }
    }
}

impl Default for Chillers {
    fn default() -> Self {
        Self {
            count: 2,
            setpoint_c: 7.0,
            flow_lps: 40.0,
            cop: 4.2,
            cop_per_c: 0.12,
            tau_s: 300.0,
        }
    }
}

impl Default for Room {
    fn default() -> Self {
        Self {
            crahs: 4,
            fan_kw: 3.5,
            nominal_c: 24.0,
            tau_s: 900.0,
            approach_c: 11.0,
        }
    }
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            frequency_hz: 50.0,
            voltage_v: 230.0,
            power_factor: 0.97,
            other_kw: 20.0,
            frequency_walk_hz: 0.004,
        }
    }
}

impl Default for Noise {
    fn default() -> Self {
        Self {
            temp_c: 0.03,
            temp_resolution_c: 0.01,
            flow_lps: 0.25,
            power_kw: 1.5,
            voltage_v: 0.6,
            frequency_hz: 0.004,
        }
    }
}

impl Facility {
    /// A built-in variant.
    pub fn variant(name: &str) -> Result<Self, FacilityError> {
        let text = match name {
            "default" => "",
            "hyperscale-60hz" => HYPERSCALE,
            "edge-small" => EDGE,
            "colo-legacy" => COLO,
            other => return Err(FacilityError::UnknownVariant(other.to_owned())),
        };
        Self::from_toml_str(text, name)
    }

    /// Loads and validates a facility file.
    pub fn load(path: &Path) -> Result<Self, FacilityError> {
        Self::from_toml_str(&tomlfile::read(path)?, &path.display().to_string())
    }

    /// Parses and validates facility TOML.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, FacilityError> {
        let f: Self = tomlfile::parse(text, origin)?;
        f.validate(origin)?;
        Ok(f)
    }

    fn validate(&self, origin: &str) -> Result<(), TomlError> {
        let check = |ok: bool, key: &str, rule: &str| tomlfile::check(origin, key, ok, rule);
        let pos = |v: f64| v.is_finite() && v > 0.0;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        check(
            name_ok(&self.site),
            "site",
            "must be letters, digits, '-', '_' or '.'",
        )?;
        check(
            !self.bms_client.is_empty() && !self.bms_client.contains('"'),
            "bms_client",
            "must be a non-empty client id",
        )?;
        check(
            self.bms_rewrite >= 1000,
            "bms_rewrite",
            "must be at least 1s",
        )?;
        check(pos(self.it.nominal_kw), "it.nominal_kw", "must be positive")?;
        check(
            (0.0..0.9).contains(&self.it.daily_amplitude),
            "it.daily_amplitude",
            "must be in [0, 0.9)",
        )?;
        check(
            self.it.noise_kw >= 0.0,
            "it.noise_kw",
            "must not be negative",
        )?;
        check(
            (1..=64).contains(&self.it.pdus),
            "it.pdus",
            "must be between 1 and 64",
        )?;
        check(
            (1..=64).contains(&self.ups.count),
            "ups.count",
            "must be between 1 and 64",
        )?;
        check(pos(self.ups.rated_kw), "ups.rated_kw", "must be positive")?;
        check(
            self.ups.rated_kw * self.ups.count as f64
                > self.it.nominal_kw * (1.0 + self.it.daily_amplitude),
            "ups.rated_kw",
            "× ups.count must exceed the peak IT load",
        )?;
        check(
            self.ups.efficiency > 0.5 && self.ups.efficiency <= 1.0,
            "ups.efficiency",
            "must be in (0.5, 1]",
        )?;
        check(
            (0.0..0.4).contains(&self.ups.efficiency_droop),
            "ups.efficiency_droop",
            "must be in [0, 0.4)",
        )?;
        check(
            pos(self.ups.battery_kwh),
            "ups.battery_kwh",
            "must be positive",
        )?;
        check(pos(self.ups.voltage_v), "ups.voltage_v", "must be positive")?;
        check(
            pos(self.ups.battery_voltage_v),
            "ups.battery_voltage_v",
            "must be positive",
        )?;
        check(
            (1..=64).contains(&self.chillers.count),
            "chillers.count",
            "must be between 1 and 64",
        )?;
        check(
            (0.0..25.0).contains(&self.chillers.setpoint_c),
            "chillers.setpoint_c",
            "must be in [0, 25) °C",
        )?;
        check(
            pos(self.chillers.flow_lps),
            "chillers.flow_lps",
            "must be positive (a flow cannot be negative)",
        )?;
        check(
            self.chillers.cop > 1.0 && self.chillers.cop < 15.0,
            "chillers.cop",
            "must be in (1, 15)",
        )?;
        check(
            self.chillers.cop_per_c >= 0.0,
            "chillers.cop_per_c",
            "must not be negative",
        )?;
        check(
            self.chillers.tau_s >= 10.0,
            "chillers.tau_s",
            "must be at least 10 s",
        )?;
        check(
            (1..=256).contains(&self.room.crahs),
            "room.crahs",
            "must be between 1 and 256",
        )?;
        check(
            self.room.fan_kw >= 0.0,
            "room.fan_kw",
            "must not be negative",
        )?;
        check(
            self.room.nominal_c > self.chillers.setpoint_c + self.room.approach_c,
            "room.nominal_c",
            "must be above chillers.setpoint_c + room.approach_c",
        )?;
        check(
            self.room.tau_s >= 60.0,
            "room.tau_s",
            "must be at least 60 s",
        )?;
        check(
            self.room.approach_c > 0.0,
            "room.approach_c",
            "must be positive",
        )?;
        check(
            self.grid.frequency_hz == 50.0 || self.grid.frequency_hz == 60.0,
            "grid.frequency_hz",
            "must be 50 or 60",
        )?;
        check(
            pos(self.grid.voltage_v),
            "grid.voltage_v",
            "must be positive",
        )?;
        check(
            self.grid.power_factor > 0.5 && self.grid.power_factor <= 1.0,
            "grid.power_factor",
            "must be in (0.5, 1]",
        )?;
        check(
            self.grid.other_kw >= 0.0,
            "grid.other_kw",
            "must not be negative",
        )?;
        check(
            self.grid.frequency_walk_hz >= 0.0,
            "grid.frequency_walk_hz",
            "must not be negative",
        )?;
        let n = &self.noise;
        for (key, v) in [
            ("noise.temp_c", n.temp_c),
            ("noise.flow_lps", n.flow_lps),
            ("noise.power_kw", n.power_kw),
            ("noise.voltage_v", n.voltage_v),
            ("noise.frequency_hz", n.frequency_hz),
        ] {
            check(
                v.is_finite() && v > 0.0,
                key,
                "must be positive (real sensors are noisy)",
            )?;
        }
        check(
            pos(n.temp_resolution_c),
            "noise.temp_resolution_c",
            "must be positive",
        )?;
        Ok(())
    }

    /// Device names, in the order the simulator reports them.
    pub fn ups_names(&self) -> Vec<String> {
        (1..=self.ups.count).map(|i| format!("ups-{i}")).collect()
    }

    /// PDU names.
    pub fn pdu_names(&self) -> Vec<String> {
        (1..=self.it.pdus).map(|i| format!("pdu-{i}")).collect()
    }

    /// Chiller names.
    pub fn chiller_names(&self) -> Vec<String> {
        (1..=self.chillers.count)
            .map(|i| format!("chiller-{i}"))
            .collect()
    }
}

const HYPERSCALE: &str = r#"
site = "iad7"
bms_client = "172.16.4.10"
[it]
nominal_kw = 3200
daily_amplitude = 0.08
peak_hour = 19
noise_kw = 4.0
pdus = 8
[ups]
count = 4
rated_kw = 1200
efficiency = 0.975
efficiency_droop = 0.03
battery_kwh = 600
voltage_v = 480
battery_voltage_v = 480
[chillers]
count = 3
setpoint_c = 9.5
flow_lps = 110
cop = 5.6
cop_per_c = 0.18
tau_s = 420
[room]
crahs = 12
fan_kw = 5.5
nominal_c = 26.5
tau_s = 1500
approach_c = 9.0
[grid]
frequency_hz = 60
voltage_v = 7200
power_factor = 0.95
other_kw = 90
frequency_walk_hz = 0.003
[noise]
temp_c = 0.05
temp_resolution_c = 0.01
flow_lps = 0.8
power_kw = 6.0
voltage_v = 8.0
frequency_hz = 0.003
"#;

const EDGE: &str = r#"
site = "edge-03"
bms_client = "192.168.1.20"
[it]
nominal_kw = 140
daily_amplitude = 0.25
peak_hour = 13
noise_kw = 0.6
pdus = 1
[ups]
count = 1
rated_kw = 250
efficiency = 0.94
efficiency_droop = 0.08
battery_kwh = 60
voltage_v = 208
battery_voltage_v = 384
[chillers]
count = 1
setpoint_c = 10
flow_lps = 9
cop = 3.3
cop_per_c = 0.09
tau_s = 200
[room]
crahs = 2
fan_kw = 1.2
nominal_c = 25
tau_s = 600
approach_c = 10.5
[grid]
frequency_hz = 50
voltage_v = 230
power_factor = 0.92
other_kw = 6
frequency_walk_hz = 0.006
[noise]
temp_c = 0.08
temp_resolution_c = 0.1
flow_lps = 0.15
power_kw = 0.8
voltage_v = 1.2
frequency_hz = 0.01
"#;

const COLO: &str = r#"
site = "fra2"
bms_client = "10.1.1.40"
[it]
nominal_kw = 1500
daily_amplitude = 0.05
peak_hour = 11
noise_kw = 2.5
pdus = 6
[ups]
count = 3
rated_kw = 800
efficiency = 0.93
efficiency_droop = 0.1
battery_kwh = 250
voltage_v = 415
battery_voltage_v = 432
[chillers]
count = 2
setpoint_c = 6.0
flow_lps = 75
cop = 3.6
cop_per_c = 0.1
tau_s = 600
[room]
crahs = 8
fan_kw = 4.0
nominal_c = 23
tau_s = 1200
approach_c = 12.0
[grid]
frequency_hz = 50
voltage_v = 11000
power_factor = 0.9
other_kw = 60
frequency_walk_hz = 0.005
[noise]
temp_c = 0.1
temp_resolution_c = 0.1
flow_lps = 1.0
power_kw = 4.0
voltage_v = 15.0
frequency_hz = 0.01
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_valid() {
        for v in VARIANTS {
            Facility::variant(v).unwrap();
        }
        assert!(matches!(
            Facility::variant("mars"),
            Err(FacilityError::UnknownVariant(_))
        ));
    }

    #[test]
    fn impossible_values_name_the_key() {
        let e = |t: &str| {
            Facility::from_toml_str(t, "f.toml")
                .unwrap_err()
                .to_string()
        };
        assert!(e("[chillers]\nflow_lps = -3\n").contains("chillers.flow_lps"));
        assert!(e("[ups]\nefficiency = 1.2\n").contains("ups.efficiency"));
        assert!(e("[toaster]\ncount = 1\n").contains("toaster"));
        assert!(e("[ups]\ncount = 1\nrated_kw = 100\n").contains("exceed the peak"));
        assert!(e("site = \"a b\"\n").contains("site"));
    }
}
