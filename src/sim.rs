//! A simulated facility, driven by event time and deterministic by seed, that writes
//! labelled captures.
//!
//! The plant is small but closed-loop, so an attack's physics follows through:
//! - IT load with a daily profile and AR(1) noise, split over PDUs and UPS units; UPS
//!   losses from a load-dependent efficiency; losses and IT load are the room's heat.
//! - Chillers: chilled-water supply temperature follows the setpoint (first order);
//!   the heat CRAHs remove is `UA × (room − supply)`; each chiller's return temperature
//!   is `supply + Q / (c_p × flow)` and its power `Q / COP(supply)`.
//! - The room integrates heat in minus heat removed through its thermal mass.
//! - The grid meter sees UPS inputs + chillers + fans + a remainder.
//! - Every reported value is the truth plus sensor noise, quantised to a resolution; a
//!   spoofed sensor changes the report, never the truth.
//!
//! Scenarios (see DESIGN.md): `chiller-setpoint-tamper` (a setpoint write from an unknown
//! client; supply and room temperatures climb), `chiller-sensor-spoof` (supply
//! temperature frozen at its nominal value while the plant drifts), `sensor-replay`
//! (a window recorded an hour earlier is replayed), `flow-drift` (pump flow decays over
//! an hour and a half), `telemetry-blackout` (a UPS stops reporting).

use crate::model::Ts;
use crate::time::format_ts;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, Write};
use thiserror::Error;

/// Scenarios this simulator can stage.
pub const SCENARIOS: [&str; 5] = [
    "chiller-setpoint-tamper",
    "chiller-sensor-spoof",
    "sensor-replay",
    "flow-drift",
    "telemetry-blackout",
];

/// Why a simulation could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SimError {
    /// Unknown scenario name.
    #[error("unknown attack {0:?} (known: {known})", known = SCENARIOS.join(", "))]
    UnknownAttack(String),
    /// Not enough simulated time for the attacks asked for.
    #[error("{hours} h is too short for {attacks} attacks: give at least {need:.1} h")]
    TooShort {
        /// Hours asked.
        hours: f64,
        /// Attacks asked.
        attacks: usize,
        /// Hours needed.
        need: f64,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A labelled attack window, in the labels sidecar format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    /// Onset.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub start: Ts,
    /// End of the attacker's action.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub end: Ts,
    /// Scenario name.
    pub scenario: String,
    /// Devices attacked.
    pub devices: Vec<String>,
}

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Start of event time.
    pub start: Ts,
    /// Duration in hours.
    pub hours: f64,
    /// Seed.
    pub seed: u64,
    /// Scenarios to stage.
    pub attacks: Vec<String>,
}

/// Parses `all`, `none` or a comma-separated list.
pub fn parse_attacks(s: &str) -> Result<Vec<String>, SimError> {
    match s.trim() {
        "all" => Ok(SCENARIOS.map(String::from).to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|a| {
                let a = a.trim();
                SCENARIOS
                    .contains(&a)
                    .then(|| a.to_owned())
                    .ok_or_else(|| SimError::UnknownAttack(a.to_owned()))
            })
            .collect(),
    }
}

const SITE: &str = "ams1";
const STEP_MS: Ts = 1000;
const WARMUP_S: i64 = 90 * 60;
const SLOT_S: i64 = 50 * 60;
const CP: f64 = 4.186; // kJ/(kg·K), water; 1 L ≈ 1 kg

#[derive(Debug, Clone, Copy)]
struct Attack {
    scenario: usize,
    start: i64,
    end: i64,
}

/// Plans onsets: after a clean warm-up, one attack per slot at a seeded offset.
fn schedule(opts: &SimOptions, rng: &mut StdRng) -> Result<Vec<Attack>, SimError> {
    let total = (opts.hours * 3600.0) as i64;
    let need = WARMUP_S + SLOT_S * opts.attacks.len() as i64;
    if !opts.attacks.is_empty() && total < need {
        return Err(SimError::TooShort {
            hours: opts.hours,
            attacks: opts.attacks.len(),
            need: need as f64 / 3600.0,
        });
    }
    let slot = if opts.attacks.is_empty() {
        0
    } else {
        (total - WARMUP_S) / opts.attacks.len() as i64
    };
    opts.attacks
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let scenario = SCENARIOS
                .iter()
                .position(|s| s == name)
                .ok_or_else(|| SimError::UnknownAttack(name.clone()))?;
            let len = match SCENARIOS[scenario] {
                "flow-drift" => 40 * 60,
                "telemetry-blackout" => 5 * 60,
                _ => 15 * 60,
            };
            let slack = (slot - len - 5 * 60).max(1);
            let start = WARMUP_S + i as i64 * slot + rng.random_range(0..slack);
            Ok(Attack {
                scenario,
                start,
                end: start + len,
            })
        })
        .collect()
}

/// The plant's state (the truth).
struct Plant {
    it_load: f64,
    load_noise: f64,
    room: f64,
    setpoint: [f64; 2],
    supply: [f64; 2],
    flow: [f64; 2],
    grid_f: f64,
}

/// Writes one capture and returns its labels.
pub fn simulate(opts: &SimOptions, out: &mut dyn Write) -> Result<Vec<Label>, SimError> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let attacks = schedule(opts, &mut rng)?;
    let n = (opts.hours * 3600.0) as i64;
    let noise =
        |sd: f64| Normal::new(0.0, sd).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("valid"));
    let (n_load, n_temp, n_flow, n_kw, n_v, n_f) = (
        noise(1.0),
        noise(0.03),
        noise(0.25),
        noise(1.5),
        noise(0.6),
        noise(0.004),
    );
    let it_nominal = 800.0;
    let ua = it_nominal * 1.04 / 17.0; // kW/K: removes the nominal heat at room 24 °C, water 7 °C
    let thermal_mass = ua * 900.0; // kJ/K: room time constant of 15 minutes
    let mut p = Plant {
        it_load: it_nominal,
        load_noise: 0.0,
        room: 24.0,
        setpoint: [7.0, 7.0],
        supply: [7.0, 7.0],
        flow: [40.0, 40.0],
        grid_f: 50.0,
    };
    // Reported chiller-1 supply temperatures, kept for the replay attack.
    let mut history: VecDeque<f64> = VecDeque::with_capacity(3700);
    let mut frozen: Option<f64> = None;
    let mut line = Vec::with_capacity(256);
    let mut w = LineWriter {
        out,
        line: &mut line,
    };
    for s in 0..n {
        let ts = opts.start + s * STEP_MS;
        let tss = format_ts(ts);
        let active = |name: &str| {
            attacks
                .iter()
                .find(|a| SCENARIOS[a.scenario] == name && s >= a.start && s < a.end)
                .copied()
        };
        // --- truth ---
        let hour = (s as f64 / 3600.0 + 0.0) % 24.0;
        let daily = 1.0 + 0.12 * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin();
        p.load_noise = 0.995 * p.load_noise + n_load.sample(&mut rng);
        p.it_load = it_nominal * daily + p.load_noise;
        if let Some(a) = active("chiller-setpoint-tamper") {
            if s == a.start {
                p.setpoint[1] = 13.0;
                w.command(&tss, "chiller-2", "10.20.0.99", 6, 1201, 1300)?;
            }
        } else if p.setpoint[1] != 7.0 {
            p.setpoint[1] = 7.0;
            w.command(&tss, "chiller-2", "10.20.0.5", 6, 1201, 700)?;
        }
        if let Some(a) = active("flow-drift") {
            let frac = (s - a.start) as f64 / (a.end - a.start) as f64;
            p.flow[0] = 40.0 * (1.0 - 0.25 * frac);
        } else {
            p.flow[0] = 40.0;
        }
        for c in 0..2 {
            p.supply[c] += (p.setpoint[c] - p.supply[c]) / 300.0;
        }
        let water = (p.supply[0] + p.supply[1]) / 2.0;
        let removed = ua * (p.room - water);
        let ups_out = [p.it_load * 0.5, p.it_load * 0.5];
        let eff = |kw: f64| 0.965 - 0.05 * (1.0 - kw / 600.0).powi(2);
        let ups_in = [ups_out[0] / eff(ups_out[0]), ups_out[1] / eff(ups_out[1])];
        let heat = ups_in[0] + ups_in[1];
        p.room += (heat - removed) / thermal_mass;
        p.grid_f += -0.002 * (p.grid_f - 50.0) + n_f.sample(&mut rng);

        // --- reports ---
        let q = |v: f64, res: f64| (v / res).round() * res;
        for name in ["pdu-1", "pdu-2"] {
            w.reading(
                &tss,
                name,
                "pdu",
                "it_load_kw",
                q(p.it_load * 0.5 + n_kw.sample(&mut rng), 0.1),
            )?;
        }
        for (i, name) in ["ups-1", "ups-2"].iter().enumerate() {
            if i == 1 && active("telemetry-blackout").is_some() {
                continue;
            }
            let vals = [
                ("input_voltage_v", q(400.0 + n_v.sample(&mut rng), 0.1)),
                (
                    "input_frequency_hz",
                    q(p.grid_f + n_f.sample(&mut rng), 0.001),
                ),
                ("input_power_kw", q(ups_in[i] + n_kw.sample(&mut rng), 0.1)),
                (
                    "output_voltage_v",
                    q(400.0 + 0.3 * n_v.sample(&mut rng), 0.1),
                ),
                (
                    "output_power_kw",
                    q(ups_out[i] + n_kw.sample(&mut rng), 0.1),
                ),
                (
                    "load_pct",
                    q(
                        ups_out[i] / 600.0 * 100.0 + 0.2 * n_load.sample(&mut rng),
                        0.1,
                    ),
                ),
                (
                    "battery_voltage_v",
                    q(545.0 + 0.2 * n_v.sample(&mut rng), 0.1),
                ),
                ("battery_charge_pct", 100.0),
                ("battery_temp_c", q(25.0 + n_temp.sample(&mut rng), 0.01)),
                ("on_battery", 0.0),
                ("bypass_active", 0.0),
            ];
            for (metric, v) in vals {
                w.reading(&tss, name, "ups", metric, v)?;
            }
        }
        let per_chiller = removed / 2.0;
        for c in 0..2 {
            let name = ["chiller-1", "chiller-2"][c];
            let mut supply_rep = q(p.supply[c] + n_temp.sample(&mut rng), 0.01);
            if c == 0 {
                if active("sensor-replay").is_some() {
                    let back = history.len().saturating_sub(3600);
                    supply_rep = history.get(back).copied().unwrap_or(supply_rep);
                    history.pop_front();
                }
                if active("chiller-sensor-spoof").is_some() {
                    supply_rep = *frozen.get_or_insert(7.0);
                } else {
                    frozen = None;
                }
                history.push_back(supply_rep);
                if history.len() > 3600 {
                    history.pop_front();
                }
            }
            let ret = p.supply[c] + per_chiller / (CP * p.flow[c]);
            let cop = 4.2 + 0.12 * (p.supply[c] - 7.0);
            let vals = [
                ("supply_temp_c", supply_rep),
                ("return_temp_c", q(ret + n_temp.sample(&mut rng), 0.01)),
                ("flow_lps", q(p.flow[c] + n_flow.sample(&mut rng), 0.01)),
                (
                    "power_kw",
                    q(per_chiller / cop + n_kw.sample(&mut rng), 0.1),
                ),
                ("setpoint_c", p.setpoint[c]),
                ("running", 1.0),
            ];
            for (metric, v) in vals {
                w.reading(&tss, name, "chiller", metric, v)?;
            }
        }
        for (i, name) in ["crah-1", "crah-2", "crah-3", "crah-4"].iter().enumerate() {
            let sat = water + 11.0 + 0.1 * i as f64;
            let vals = [
                ("supply_air_temp_c", q(sat + n_temp.sample(&mut rng), 0.01)),
                (
                    "return_air_temp_c",
                    q(p.room + 6.0 + n_temp.sample(&mut rng), 0.01),
                ),
                (
                    "fan_speed_pct",
                    q(60.0 + 0.2 * n_load.sample(&mut rng), 0.1),
                ),
            ];
            for (metric, v) in vals {
                w.reading(&tss, name, "crah", metric, v)?;
            }
        }
        w.reading(
            &tss,
            "room-1",
            "env",
            "room_temp_c",
            q(p.room + n_temp.sample(&mut rng), 0.01),
        )?;
        w.reading(
            &tss,
            "room-1",
            "env",
            "humidity_pct",
            q(45.0 + 5.0 * n_temp.sample(&mut rng), 0.1),
        )?;
        let chiller_kw = removed / (4.2 + 0.12 * (water - 7.0));
        let active_kw = ups_in[0] + ups_in[1] + chiller_kw + 4.0 * 3.5 + 20.0;
        let pf: f64 = 0.97;
        let vals = [
            ("frequency_hz", q(p.grid_f + n_f.sample(&mut rng), 0.001)),
            ("voltage_l1_v", q(230.0 + n_v.sample(&mut rng), 0.1)),
            ("voltage_l2_v", q(230.0 + n_v.sample(&mut rng), 0.1)),
            ("voltage_l3_v", q(230.0 + n_v.sample(&mut rng), 0.1)),
            ("active_power_kw", q(active_kw + n_kw.sample(&mut rng), 0.1)),
            (
                "reactive_power_kvar",
                q(
                    active_kw * (1.0 - pf * pf).sqrt() / pf + n_kw.sample(&mut rng),
                    0.1,
                ),
            ),
            (
                "power_factor",
                q(pf + 0.001 * n_load.sample(&mut rng), 0.001),
            ),
            ("breaker_closed", 1.0),
        ];
        for (metric, v) in vals {
            w.reading(&tss, "grid-1", "grid_meter", metric, v)?;
        }
    }
    Ok(attacks
        .iter()
        .map(|a| Label {
            start: opts.start + a.start * STEP_MS,
            end: opts.start + a.end * STEP_MS,
            scenario: SCENARIOS[a.scenario].to_owned(),
            devices: vec![match SCENARIOS[a.scenario] {
                "chiller-setpoint-tamper" => "chiller-2",
                "telemetry-blackout" => "ups-2",
                _ => "chiller-1",
            }
            .to_owned()],
        })
        .collect())
}

struct LineWriter<'a> {
    out: &'a mut dyn Write,
    line: &'a mut Vec<u8>,
}

impl LineWriter<'_> {
    fn reading(
        &mut self,
        ts: &str,
        device: &str,
        kind: &str,
        metric: &str,
        v: f64,
    ) -> io::Result<()> {
        self.line.clear();
        // Names are fixed identifiers: no JSON escaping needed. `{v}` prints the shortest
        // text that reads back as the same f64.
        writeln!(
            self.line,
            "{{\"ts\":\"{ts}\",\"site\":\"{SITE}\",\"device\":\"{device}\",\"kind\":\"{kind}\",\"metric\":\"{metric}\",\"value\":{v}}}"
        )?;
        self.out.write_all(self.line)
    }

    fn command(
        &mut self,
        ts: &str,
        device: &str,
        client: &str,
        function: u8,
        address: u32,
        value: u16,
    ) -> io::Result<()> {
        self.line.clear();
        writeln!(
            self.line,
            "{{\"ts\":\"{ts}\",\"type\":\"command\",\"site\":\"{SITE}\",\"device\":\"{device}\",\"client\":\"{client}\",\"function\":{function},\"address\":{address},\"values\":[{value}]}}"
        )?;
        self.out.write_all(self.line)
    }
}

/// The labels sidecar path of a capture: `x.jsonl.zst` → `x.labels.json`.
pub fn labels_path(capture: &std::path::Path) -> std::path::PathBuf {
    let name = capture
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (base, _) = crate::source::split_compression(&name);
    let stem = base
        .strip_suffix(".jsonl")
        .or_else(|| base.strip_suffix(".csv"))
        .unwrap_or(base);
    capture.with_file_name(format!("{stem}.labels.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hours: f64, attacks: &str, seed: u64) -> (String, Vec<Label>) {
        let opts = SimOptions {
            start: 1_783_382_400_000,
            hours,
            seed,
            attacks: parse_attacks(attacks).unwrap(),
        };
        let mut buf = Vec::new();
        let labels = simulate(&opts, &mut buf).unwrap();
        (String::from_utf8(buf).unwrap(), labels)
    }

    #[test]
    fn deterministic_by_seed() {
        assert_eq!(run(0.05, "none", 3).0, run(0.05, "none", 3).0);
        assert_ne!(run(0.05, "none", 3).0, run(0.05, "none", 4).0);
    }

    #[test]
    fn every_line_parses_and_labels_are_ordered() {
        let (text, labels) = run(6.0, "all", 1);
        let mut reg = crate::feature::Registry::new(10_000);
        for l in text.lines().take(20_000) {
            crate::source::jsonl::parse_line(l.as_bytes(), &mut reg).unwrap();
        }
        assert_eq!(labels.len(), 5);
        assert!(labels.windows(2).all(|w| w[0].end < w[1].start));
        assert!(text.contains("\"type\":\"command\""));
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            parse_attacks("all,nope"),
            Err(SimError::UnknownAttack(_))
        ));
        let opts = SimOptions {
            start: 0,
            hours: 1.0,
            seed: 1,
            attacks: parse_attacks("all").unwrap(),
        };
        assert!(matches!(
            simulate(&opts, &mut Vec::new()),
            Err(SimError::TooShort { .. })
        ));
        assert_eq!(
            labels_path(std::path::Path::new("d/x.jsonl.zst")),
            std::path::Path::new("d/x.labels.json")
        );
    }
}
