//! The metric vocabulary of docs/design.md as a typed table.
//!
//! Each known metric has a class (analog, boolean, setpoint), a unit and generous
//! *physical* limits: values no healthy sensor of that kind can report anywhere, whatever
//! the facility. They are not operating bands; those are learned online by the
//! statistical detectors. Metrics outside the table are carried through with
//! [`MetricClass::Analog`] and no limits.

use crate::model::DeviceKind;

/// How a metric behaves, which decides the detectors that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricClass {
    /// A continuous measurement with noise.
    Analog,
    /// A 0/1 state.
    Boolean,
    /// A value set by an operator or controller: flat by design, changes are commands.
    Setpoint,
}

/// One row of the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricSpec {
    /// Device kind.
    pub kind: DeviceKind,
    /// Metric name.
    pub name: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Behaviour class.
    pub class: MetricClass,
    /// Lowest physically possible value.
    pub min: f64,
    /// Highest physically possible value.
    pub max: f64,
    /// Largest physically possible rate of change, units per second.
    pub max_rate: f64,
}

const INF: f64 = f64::INFINITY;

const fn m(
    kind: DeviceKind,
    name: &'static str,
    unit: &'static str,
    class: MetricClass,
    min: f64,
    max: f64,
    max_rate: f64,
) -> MetricSpec {
    MetricSpec {
        kind,
        name,
        unit,
        class,
        min,
        max,
        max_rate,
    }
}

use DeviceKind::{Chiller, Crah, Env, GridMeter, Pdu, Ups};
use MetricClass::{Analog as A, Boolean as B, Setpoint as S};

/// Every metric of the design's vocabulary.
pub const VOCABULARY: &[MetricSpec] = &[
    m(Ups, "input_voltage_v", "V", A, 0.0, 1_000.0, INF),
    m(Ups, "input_frequency_hz", "Hz", A, 0.0, 70.0, INF),
    m(Ups, "input_power_kw", "kW", A, 0.0, 100_000.0, INF),
    m(Ups, "output_voltage_v", "V", A, 0.0, 1_000.0, INF),
    m(Ups, "output_power_kw", "kW", A, 0.0, 100_000.0, INF),
    m(Ups, "load_pct", "%", A, 0.0, 200.0, INF),
    m(Ups, "battery_voltage_v", "V", A, 0.0, 1_500.0, INF),
    m(Ups, "battery_charge_pct", "%", A, 0.0, 100.0, 10.0),
    m(Ups, "battery_temp_c", "°C", A, -40.0, 90.0, 2.0),
    m(Ups, "on_battery", "", B, 0.0, 1.0, INF),
    m(Ups, "bypass_active", "", B, 0.0, 1.0, INF),
    m(Chiller, "supply_temp_c", "°C", A, -20.0, 50.0, 2.0),
    m(Chiller, "return_temp_c", "°C", A, -20.0, 60.0, 2.0),
    m(Chiller, "flow_lps", "L/s", A, 0.0, 10_000.0, INF),
    m(Chiller, "power_kw", "kW", A, 0.0, 100_000.0, INF),
    m(Chiller, "setpoint_c", "°C", S, -20.0, 40.0, INF),
    m(Chiller, "running", "", B, 0.0, 1.0, INF),
    m(Crah, "supply_air_temp_c", "°C", A, -20.0, 70.0, 3.0),
    m(Crah, "return_air_temp_c", "°C", A, -20.0, 80.0, 3.0),
    m(Crah, "fan_speed_pct", "%", A, 0.0, 100.0, INF),
    m(GridMeter, "frequency_hz", "Hz", A, 0.0, 70.0, INF),
    m(GridMeter, "voltage_l1_v", "V", A, 0.0, 1_000_000.0, INF),
    m(GridMeter, "voltage_l2_v", "V", A, 0.0, 1_000_000.0, INF),
    m(GridMeter, "voltage_l3_v", "V", A, 0.0, 1_000_000.0, INF),
    m(GridMeter, "active_power_kw", "kW", A, -1e6, 1e6, INF),
    m(GridMeter, "reactive_power_kvar", "kvar", A, -1e6, 1e6, INF),
    m(GridMeter, "power_factor", "", A, -1.0, 1.0, INF),
    m(GridMeter, "breaker_closed", "", B, 0.0, 1.0, INF),
    m(Pdu, "it_load_kw", "kW", A, 0.0, 100_000.0, INF),
    m(Env, "room_temp_c", "°C", A, -40.0, 80.0, 2.0),
    m(Env, "humidity_pct", "%", A, 0.0, 100.0, 10.0),
];

/// Looks up a metric of a kind; `None` for metrics outside the vocabulary.
pub fn lookup(kind: DeviceKind, metric: &str) -> Option<&'static MetricSpec> {
    VOCABULARY
        .iter()
        .find(|s| s.kind == kind && s.name == metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, s) in VOCABULARY.iter().enumerate() {
            assert!(s.min < s.max, "{}: min < max", s.name);
            assert!(s.max_rate > 0.0, "{}: max_rate > 0", s.name);
            assert!(
                !VOCABULARY[..i]
                    .iter()
                    .any(|o| o.kind == s.kind && o.name == s.name),
                "{} listed twice",
                s.name
            );
            if s.class == MetricClass::Boolean {
                assert_eq!((s.min, s.max), (0.0, 1.0));
            }
        }
    }

    #[test]
    fn unknown_metrics_are_not_in_the_table() {
        assert!(lookup(DeviceKind::Chiller, "supply_temp_c").is_some());
        assert!(lookup(DeviceKind::Ups, "supply_temp_c").is_none());
        assert!(lookup(DeviceKind::Other, "vibration_g").is_none());
    }
}
