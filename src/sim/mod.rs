//! A simulated facility, driven by event time and deterministic by seed.
//!
//! The plant is small but closed-loop, so an attack's physics follows through:
//! - IT load with a daily profile and AR(1) noise, split over PDUs and UPS units; UPS
//!   losses from a load-dependent efficiency (none in bypass); batteries discharge when
//!   carrying the load and recharge from the mains afterwards.
//! - Chillers: chilled-water supply temperature follows the setpoint (first order);
//!   the heat the CRAHs remove is `UA × (room − water)`; each chiller's return
//!   temperature is `supply + Q / (c_p × flow)` and its power `Q / COP(supply)`.
//! - The room integrates heat in minus heat removed through its thermal mass.
//! - The grid meter sees UPS inputs + chillers + fans + other load; frequency and voltage
//!   wander, and the UPS inputs see the same grid.
//! - Every reported value is the truth plus sensor noise, quantised; a spoofed sensor
//!   changes the report, never the truth. Control actions on the wire (setpoint and coil
//!   writes, diagnostics) are emitted as `command` lines.
//!
//! [`Simulator`] steps one second at a time and hands out events (the live demo and the
//! simulated devices use it); [`simulate`] writes a JSONL capture and returns its labels.

pub mod bacnet_device;
pub mod facility;
pub mod pcap;
pub mod publish;
pub mod scenario;
pub mod serve;
pub mod snmp_agent;

use crate::model::Ts;
pub use facility::{Facility, FacilityError, VARIANTS};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
pub use scenario::{Attack, Intensity, Scenario};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, Write};
use thiserror::Error;

/// Why a simulation could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SimError {
    /// Unknown scenario name.
    #[error("unknown attack {0:?} (known: {known})", known = Scenario::ALL.map(Scenario::name).join(", "))]
    UnknownAttack(String),
    /// Not enough simulated time for the attacks asked for.
    #[error("{hours:.1} h is too short for {attacks} attacks: give at least {need:.1} h")]
    TooShort {
        /// Hours asked.
        hours: f64,
        /// Attacks asked.
        attacks: usize,
        /// Hours needed.
        need: f64,
    },
    /// Bad facility.
    #[error(transparent)]
    Facility(#[from] FacilityError),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A labelled attack window, in the labels sidecar format (plus `intensity`).
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
    /// Intensity.
    pub intensity: Intensity,
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
    /// Scenarios to stage, in order.
    pub attacks: Vec<Scenario>,
    /// Their intensity.
    pub intensity: Intensity,
}

/// Parses `all`, `none` or a comma-separated list of scenarios.
pub fn parse_attacks(s: &str) -> Result<Vec<Scenario>, SimError> {
    match s.trim() {
        "all" => Ok(Scenario::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|a| {
                let a = a.trim();
                Scenario::parse(a).ok_or_else(|| SimError::UnknownAttack(a.to_owned()))
            })
            .collect(),
    }
}

/// One thing the simulator reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimEvent<'a> {
    /// A reading.
    Reading {
        /// Device name.
        device: &'a str,
        /// Device kind.
        kind: &'static str,
        /// Metric.
        metric: &'static str,
        /// Value.
        value: f64,
    },
    /// A control action on the wire.
    Command {
        /// Target device.
        device: &'a str,
        /// Client address.
        client: &'a str,
        /// Modbus function code.
        function: u8,
        /// Register or coil address.
        address: u32,
        /// Value written (0 for diagnostics).
        value: u16,
    },
}

const STEP_MS: Ts = 1000;
const CP: f64 = 4.186; // kJ/(kg·K), water; 1 L ≈ 1 kg
const ATTACKER: &str = "10.66.0.99";
const SCANNER: &str = "10.66.6.6";
/// Registers of the simulated devices that commands name.
const REG_SETPOINT: u32 = 1201;
const COIL_BYPASS: u32 = 2001;
const REG_BATTERY_TEST: u32 = 3010;
const COIL_BREAKER: u32 = 1;

/// Gaussian noise sources, one per sensor family.
struct Noises {
    temp: Normal<f64>,
    flow: Normal<f64>,
    power: Normal<f64>,
    volt: Normal<f64>,
    freq: Normal<f64>,
    unit: Normal<f64>,
}

/// A command on the wire: device, client (`"bms"` for the facility's BMS), function,
/// address, value.
type Cmd = (String, &'static str, u8, u32, u16);

/// What the attackers do in one second.
struct Acts {
    cmds: Vec<Cmd>,
    spoof: Option<Attack>,
    flow: Vec<f64>,
    bypass: Option<Attack>,
    drain: Option<Attack>,
    breaker_open: bool,
}

/// The plant's true state in one second, before sensors report it.
struct Plant {
    it_load: f64,
    ups_out: f64,
    ups_in: Vec<f64>,
    on_battery: Vec<bool>,
    bypass_flag: Vec<bool>,
    water: f64,
    ch_power: Vec<f64>,
    ret: Vec<f64>,
    site_kw: f64,
}

/// The facility's true state and the attacker's bookkeeping.
pub struct Simulator {
    f: Facility,
    attacks: Vec<Attack>,
    rng: StdRng,
    n: Noises,
    start: Ts,
    s: i64,
    end_s: i64,
    names: Names,
    load_ar: f64,
    grid_f: f64,
    grid_v: f64,
    meter_fake_f: f64,
    room: f64,
    setpoint: Vec<f64>,
    supply: Vec<f64>,
    charge: Vec<f64>,
    ua: f64,
    thermal_mass: f64,
    history: VecDeque<f64>,
    frozen: Option<f64>,
    wire: Wire,
}

/// Control actions that arrived over the wire (simulated devices served over Modbus);
/// they hold until written back.
#[derive(Debug, Default)]
struct Wire {
    setpoint: Vec<Option<f64>>,
    bypass: Vec<bool>,
    drain: Vec<bool>,
    breaker_open: bool,
}

struct Names {
    ups: Vec<String>,
    chillers: Vec<String>,
    crahs: Vec<String>,
    pdus: Vec<String>,
}

impl Simulator {
    /// Plans the attacks and sets the plant at its nominal operating point.
    pub fn new(f: Facility, opts: &SimOptions) -> Result<Self, SimError> {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let end_s = (opts.hours * 3600.0).round() as i64;
        let attacks = scenario::schedule(&opts.attacks, opts.intensity, end_s, &f, &mut rng)?;
        let normal = |sd: f64| {
            Normal::new(0.0, sd).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("σ = 1 is valid"))
        };
        let nz = &f.noise;
        let n = Noises {
            temp: normal(nz.temp_c),
            flow: normal(nz.flow_lps),
            power: normal(nz.power_kw),
            volt: normal(nz.voltage_v),
            freq: normal(nz.frequency_hz),
            unit: normal(1.0),
        };
        // UA removes the nominal heat (IT + UPS losses) at the nominal room and water temperatures.
        let heat = f.it.nominal_kw / f.ups.efficiency;
        let ua = heat / (f.room.nominal_c - f.chillers.setpoint_c);
        let names = Names {
            ups: f.ups_names(),
            chillers: f.chiller_names(),
            crahs: (1..=f.room.crahs).map(|i| format!("crah-{i}")).collect(),
            pdus: f.pdu_names(),
        };
        Ok(Self {
            attacks,
            rng,
            n,
            start: opts.start,
            s: 0,
            end_s,
            names,
            load_ar: 0.0,
            grid_f: f.grid.frequency_hz,
            grid_v: f.grid.voltage_v,
            meter_fake_f: f.grid.frequency_hz,
            room: f.room.nominal_c,
            setpoint: vec![f.chillers.setpoint_c; f.chillers.count],
            supply: vec![f.chillers.setpoint_c; f.chillers.count],
            charge: vec![100.0; f.ups.count],
            ua,
            thermal_mass: ua * f.room.tau_s,
            history: VecDeque::with_capacity(3700),
            frozen: None,
            wire: Wire {
                setpoint: vec![None; f.chillers.count],
                bypass: vec![false; f.ups.count],
                drain: vec![false; f.ups.count],
                breaker_open: false,
            },
            f,
        })
    }

    /// The labels of the planned attacks.
    pub fn labels(&self) -> Vec<Label> {
        self.attacks
            .iter()
            .map(|a| Label {
                start: self.start + a.start * STEP_MS,
                end: self.start + a.end * STEP_MS,
                scenario: a.name().to_owned(),
                devices: a.devices.clone(),
                intensity: a.intensity,
            })
            .collect()
    }

    /// Every device as `(name, kind)`, in the order the simulator reports them.
    pub fn devices(&self) -> Vec<(String, &'static str)> {
        let n = &self.names;
        let mut out: Vec<(String, &'static str)> = Vec::new();
        out.extend(n.pdus.iter().map(|d| (d.clone(), "pdu")));
        out.extend(n.ups.iter().map(|d| (d.clone(), "ups")));
        out.extend(n.chillers.iter().map(|d| (d.clone(), "chiller")));
        out.extend(n.crahs.iter().map(|d| (d.clone(), "crah")));
        out.push(("room-1".into(), "env"));
        out.push(("grid-1".into(), "grid_meter"));
        out
    }

    /// Each device's position in [`Simulator::devices`], by name (live outputs keep
    /// per-device state in that order).
    pub fn device_index(&self) -> rustc_hash::FxHashMap<String, usize> {
        self.devices()
            .into_iter()
            .enumerate()
            .map(|(i, (d, _))| (d, i))
            .collect()
    }

    /// Event time of the next second to simulate.
    pub fn now(&self) -> Ts {
        self.start + self.s * STEP_MS
    }

    /// Applies a control point written over the wire: a chiller's `setpoint_c` (the
    /// nominal value releases it), a UPS's `bypass_command` and `battery_test_command`
    /// (non-zero forces static bypass / discharges the battery), the grid's
    /// `breaker_close_command` (0 trips the incomer). Returns false for anything else.
    pub fn apply_write(&mut self, device: &str, metric: &str, value: f64) -> bool {
        let idx = |list: &[String]| list.iter().position(|d| d == device);
        let on = value != 0.0;
        match metric {
            "setpoint_c" => match idx(&self.names.chillers) {
                Some(c) => {
                    let nominal = (value - self.f.chillers.setpoint_c).abs() < 1e-6;
                    self.wire.setpoint[c] = (!nominal).then_some(value);
                }
                None => return false,
            },
            "bypass_command" => match idx(&self.names.ups) {
                Some(j) => self.wire.bypass[j] = on,
                None => return false,
            },
            "battery_test_command" => match idx(&self.names.ups) {
                Some(j) => self.wire.drain[j] = on,
                None => return false,
            },
            "breaker_close_command" if device == "grid-1" => self.wire.breaker_open = !on,
            _ => return false,
        }
        true
    }

    /// Whether every second has been simulated.
    pub fn done(&self) -> bool {
        self.s >= self.end_s
    }

    /// Simulates every second up to event time `target` (live use: `target` is a
    /// [`crate::time::Clock`]'s now). Returns how much event time remains until the next
    /// second is due.
    pub fn catch_up(
        &mut self,
        target: Ts,
        emit: &mut dyn FnMut(Ts, SimEvent<'_>) -> io::Result<()>,
    ) -> io::Result<Ts> {
        while self.now() <= target && !self.done() {
            self.step(emit)?;
        }
        Ok(self.now() - target)
    }

    fn active(&self, scenario: Scenario) -> Option<&Attack> {
        self.attacks
            .iter()
            .find(|a| a.scenario == scenario && a.active(self.s))
    }

    fn starts(&self, scenario: Scenario) -> Option<&Attack> {
        self.attacks
            .iter()
            .find(|a| a.scenario == scenario && a.start == self.s)
    }

    fn ends(&self, scenario: Scenario) -> bool {
        self.attacks
            .iter()
            .any(|a| a.scenario == scenario && a.end == self.s)
    }

    fn obvious(a: &Attack) -> bool {
        a.intensity == Intensity::Obvious
    }

    /// Simulates one second and hands its events to `emit` with their event time.
    pub fn step(
        &mut self,
        emit: &mut dyn FnMut(Ts, SimEvent<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let ts = self.now();
        let acts = self.act();
        let plant = self.plant(ts, &acts);
        self.report(ts, acts, &plant, emit)?;
        self.s += 1;
        Ok(())
    }

    /// The attackers' (and the BMS's) actions this second: commands on the wire and
    /// what they do to the truth.
    fn act(&mut self) -> Acts {
        let f = self.f.clone();
        let s = self.s;
        let mut cmds: Vec<Cmd> = Vec::new();

        let nominal_sp = f.chillers.setpoint_c;
        let last_ch = f.chillers.count - 1;
        let tamper = self.active(Scenario::ChillerSetpointTamper).cloned();
        if let Some(a) = self.starts(Scenario::ChillerSetpointTamper).cloned() {
            let sp = nominal_sp + if Self::obvious(&a) { 6.0 } else { 2.5 };
            cmds.push((
                a.devices[0].clone(),
                ATTACKER,
                6,
                REG_SETPOINT,
                (sp * 100.0).round() as u16,
            ));
        }
        if self.ends(Scenario::ChillerSetpointTamper) {
            cmds.push((
                self.names.chillers[last_ch].clone(),
                "bms",
                6,
                REG_SETPOINT,
                (nominal_sp * 100.0).round() as u16,
            ));
        }
        let spoof = self.active(Scenario::ChillerSensorSpoof).cloned();
        for (c, sp) in self.setpoint.iter_mut().enumerate() {
            *sp = self.wire.setpoint[c].unwrap_or(nominal_sp);
            if c == last_ch {
                if let Some(a) = &tamper {
                    *sp += if Self::obvious(a) { 6.0 } else { 2.5 };
                }
            }
            if c == 0 {
                if let Some(a) = &spoof {
                    // The chiller is made to run warm while its sensor is made to lie.
                    *sp += if Self::obvious(a) { 5.0 } else { 3.0 };
                }
            }
        }
        // Routine BMS rewrites of the setpoints (every 15 minutes by default), half a
        // period after each multiple of it.
        let wire_setpoint = self.wire.setpoint.iter().any(Option::is_some);
        let every = (f.bms_rewrite / 1000).max(1);
        if s % every == every / 2 && tamper.is_none() && !wire_setpoint {
            for c in &self.names.chillers {
                cmds.push((
                    c.clone(),
                    "bms",
                    6,
                    REG_SETPOINT,
                    (nominal_sp * 100.0).round() as u16,
                ));
            }
        }
        let flow: Vec<f64> = (0..f.chillers.count)
            .map(|c| match self.active(Scenario::FlowDrift) {
                Some(a) if c == 0 => {
                    let frac = (s - a.start) as f64 / (a.end - a.start) as f64;
                    f.chillers.flow_lps * (1.0 - frac * if Self::obvious(a) { 0.3 } else { 0.12 })
                }
                _ => f.chillers.flow_lps,
            })
            .collect();
        let bypass = self.active(Scenario::UpsForcedBypass).cloned();
        if let Some(a) = self.starts(Scenario::UpsForcedBypass).cloned() {
            cmds.push((a.devices[0].clone(), ATTACKER, 5, COIL_BYPASS, 0xFF00));
        }
        if self.ends(Scenario::UpsForcedBypass) {
            cmds.push((self.names.ups[0].clone(), "bms", 5, COIL_BYPASS, 0));
        }
        let drain = self.active(Scenario::UpsBatteryDrain).cloned();
        if let Some(a) = self.starts(Scenario::UpsBatteryDrain).cloned() {
            cmds.push((a.devices[0].clone(), ATTACKER, 6, REG_BATTERY_TEST, 1));
        }
        let breaker_open =
            self.active(Scenario::BreakerTripInjection).is_some() || self.wire.breaker_open;
        if self.starts(Scenario::BreakerTripInjection).is_some() {
            cmds.push(("grid-1".into(), ATTACKER, 5, COIL_BREAKER, 0));
        }
        if self.ends(Scenario::BreakerTripInjection) {
            cmds.push(("grid-1".into(), "bms", 5, COIL_BREAKER, 0xFF00));
        }
        if let Some(a) = self.active(Scenario::ModbusRecon).cloned() {
            let every = if Self::obvious(&a) { 1 } else { 20 };
            if (s - a.start) % every == 0 {
                let k = ((s - a.start) / every) as usize;
                let functions = [43u8, 17, 8];
                let function = if Self::obvious(&a) {
                    functions[k % 3]
                } else {
                    43
                };
                // Known devices first, then unit ids nobody answers for.
                let device = a
                    .devices
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("unit-{}", k + 1));
                cmds.push((device, SCANNER, function, 0, 0));
            }
        }

        Acts {
            cmds,
            spoof,
            flow,
            bypass,
            drain,
            breaker_open,
        }
    }

    /// The plant's physics for one second, under the attackers' actions.
    fn plant(&mut self, ts: Ts, acts: &Acts) -> Plant {
        let f = self.f.clone();
        let s = self.s;
        let nominal_sp = f.chillers.setpoint_c;
        let (flow, bypass, drain) = (&acts.flow, &acts.bypass, &acts.drain);
        let breaker_open = acts.breaker_open;

        let hour = (ts.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
        let daily = 1.0
            + f.it.daily_amplitude
                * ((hour - f.it.peak_hour + 6.0) / 24.0 * std::f64::consts::TAU).sin();
        self.load_ar = 0.995 * self.load_ar + f.it.noise_kw * self.n.unit.sample(&mut self.rng);
        let mut it_load = f.it.nominal_kw * daily + self.load_ar;
        if let Some(a) = self.active(Scenario::LoadOscillation) {
            let (amp, period) = if Self::obvious(a) {
                (0.10, 30.0)
            } else {
                (0.03, 45.0)
            };
            let phase = (s - a.start) as f64 / period * std::f64::consts::TAU;
            it_load += amp * f.it.nominal_kw * phase.sin().signum();
        }
        self.grid_f += -0.002 * (self.grid_f - f.grid.frequency_hz)
            + f.grid.frequency_walk_hz * self.n.unit.sample(&mut self.rng);
        self.grid_v += -0.003 * (self.grid_v - f.grid.voltage_v)
            + 0.0004 * f.grid.voltage_v * self.n.unit.sample(&mut self.rng);
        let n_ups = f.ups.count as f64;
        let ups_out = it_load / n_ups;
        let mut ups_in = vec![0.0; f.ups.count];
        let mut ups_loss_heat = 0.0;
        let mut on_battery = vec![false; f.ups.count];
        let mut bypass_flag = vec![false; f.ups.count];
        for j in 0..f.ups.count {
            let frac = (ups_out / f.ups.rated_kw).clamp(0.0, 1.2);
            let mut eff = f.ups.efficiency - f.ups.efficiency_droop * (1.0 - frac).powi(2);
            if (j == 0 && bypass.is_some()) || self.wire.bypass[j] {
                eff = 0.995;
                bypass_flag[j] = true;
            }
            let draw = ups_out / eff;
            ups_loss_heat += draw;
            // Share of the load the battery carries.
            let battery_share = if breaker_open || self.wire.drain[j] {
                1.0
            } else if j == f.ups.count - 1 {
                match &drain {
                    Some(a) if Self::obvious(a) => 1.0,
                    Some(_) => 0.3,
                    None => 0.0,
                }
            } else {
                0.0
            };
            on_battery[j] = battery_share >= 1.0;
            let dis = draw * battery_share / 3600.0 / f.ups.battery_kwh * 100.0;
            self.charge[j] = (self.charge[j] - dis).max(0.0);
            let mut input = draw * (1.0 - battery_share);
            if battery_share == 0.0 && self.charge[j] < 100.0 {
                // Recharge at up to 10 % of the rating.
                let kw = 0.1 * f.ups.rated_kw;
                self.charge[j] =
                    (self.charge[j] + kw / 3600.0 / f.ups.battery_kwh * 100.0).min(100.0);
                input += kw;
            }
            ups_in[j] = input;
        }
        let water = self.supply.iter().sum::<f64>() / self.supply.len() as f64;
        let removed = (self.ua * (self.room - water)).max(0.0);
        self.room += (ups_loss_heat - removed) / self.thermal_mass;
        let per_chiller = removed / f.chillers.count as f64;
        let mut ch_power = vec![0.0; f.chillers.count];
        let mut ret = vec![0.0; f.chillers.count];
        for c in 0..f.chillers.count {
            if breaker_open {
                // No power: the loop warms towards the room.
                self.supply[c] += (self.room - 4.0 - self.supply[c]) / (4.0 * f.chillers.tau_s);
                ch_power[c] = 0.0;
            } else {
                self.supply[c] += (self.setpoint[c] - self.supply[c]) / f.chillers.tau_s;
                let cop = f.chillers.cop + f.chillers.cop_per_c * (self.supply[c] - nominal_sp);
                ch_power[c] = per_chiller / cop;
            }
            ret[c] = self.supply[c] + per_chiller / (CP * flow[c]);
        }
        let fans = f.room.crahs as f64 * f.room.fan_kw;
        let site_kw = if breaker_open {
            0.0
        } else {
            ups_in.iter().sum::<f64>() + ch_power.iter().sum::<f64>() + fans + f.grid.other_kw
        };

        Plant {
            it_load,
            ups_out,
            ups_in,
            on_battery,
            bypass_flag,
            water,
            ch_power,
            ret,
            site_kw,
        }
    }

    /// What the devices report (and the commands seen on the wire), with sensor noise
    /// and the attackers' lies.
    fn report(
        &mut self,
        ts: Ts,
        acts: Acts,
        p: &Plant,
        emit: &mut dyn FnMut(Ts, SimEvent<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let f = self.f.clone();
        let nominal_sp = f.chillers.setpoint_c;
        let last_ch = f.chillers.count - 1;
        let Acts {
            cmds,
            spoof,
            flow,
            bypass,
            breaker_open,
            ..
        } = acts;
        for c in cmds {
            let client = if c.1 == "bms" {
                f.bms_client.as_str()
            } else {
                c.1
            };
            emit(
                ts,
                SimEvent::Command {
                    device: &c.0,
                    client,
                    function: c.2,
                    address: c.3,
                    value: c.4,
                },
            )?;
        }
        let q = |v: f64, res: f64| (v / res).round() * res;
        let tres = f.noise.temp_resolution_c;
        for name in &self.names.pdus {
            let v = q(
                p.it_load / f.it.pdus as f64 + self.n.power.sample(&mut self.rng),
                0.1,
            );
            emit(ts, reading(name, "pdu", "it_load_kw", v))?;
        }
        let blackout = self
            .active(Scenario::TelemetryBlackout)
            .map(|a| a.devices[0].clone());
        let ups_v = f.ups.voltage_v * self.grid_v / f.grid.voltage_v;
        for j in 0..f.ups.count {
            let name = &self.names.ups[j];
            if blackout.as_deref() == Some(name.as_str()) {
                continue;
            }
            let (vin, fin) = if breaker_open {
                (0.0, 0.0)
            } else {
                (ups_v, self.grid_f)
            };
            // The subtle attacks hide the state flags; the powers still tell.
            let show_bypass = p.bypass_flag[j]
                && (self.wire.bypass[j] || bypass.as_ref().is_some_and(Self::obvious));
            let vbat = f.ups.battery_voltage_v * (0.96 + 0.04 * self.charge[j] / 100.0)
                - if p.on_battery[j] {
                    0.02 * f.ups.battery_voltage_v
                } else {
                    0.0
                };
            let vals = [
                (
                    "input_voltage_v",
                    q(
                        vin + self.n.volt.sample(&mut self.rng) * (vin > 0.0) as u8 as f64,
                        0.1,
                    ),
                ),
                (
                    "input_frequency_hz",
                    q(
                        fin + self.n.freq.sample(&mut self.rng) * (fin > 0.0) as u8 as f64,
                        0.001,
                    ),
                ),
                (
                    "input_power_kw",
                    q(
                        (p.ups_in[j] + self.n.power.sample(&mut self.rng)).max(0.0),
                        0.1,
                    ),
                ),
                (
                    "output_voltage_v",
                    q(
                        f.ups.voltage_v + 0.3 * self.n.volt.sample(&mut self.rng),
                        0.1,
                    ),
                ),
                (
                    "output_power_kw",
                    q(p.ups_out + self.n.power.sample(&mut self.rng), 0.1),
                ),
                (
                    "load_pct",
                    q(
                        p.ups_out / f.ups.rated_kw * 100.0
                            + 0.2 * self.n.unit.sample(&mut self.rng),
                        0.1,
                    ),
                ),
                (
                    "battery_voltage_v",
                    q(vbat + 0.2 * self.n.volt.sample(&mut self.rng), 0.1),
                ),
                ("battery_charge_pct", q(self.charge[j], 0.1)),
                (
                    "battery_temp_c",
                    q(25.0 + self.n.temp.sample(&mut self.rng), tres),
                ),
                ("on_battery", f64::from(p.on_battery[j])),
                ("bypass_active", f64::from(show_bypass)),
            ];
            for (metric, v) in vals {
                emit(ts, reading(name, "ups", metric, v))?;
            }
        }
        for (c, &flow) in flow.iter().enumerate() {
            let name = &self.names.chillers[c];
            let mut supply_rep = q(self.supply[c] + self.n.temp.sample(&mut self.rng), tres);
            if c == 0 {
                if self.active(Scenario::SensorReplay).is_some() && self.history.len() >= 3600 {
                    supply_rep = self.history[self.history.len() - 3600];
                }
                match &spoof {
                    Some(a) if Self::obvious(a) => {
                        supply_rep = *self.frozen.get_or_insert(q(nominal_sp, tres))
                    }
                    Some(_) => supply_rep = q(nominal_sp + self.n.temp.sample(&mut self.rng), tres),
                    None => self.frozen = None,
                }
                self.history.push_back(supply_rep);
                if self.history.len() > 3600 {
                    self.history.pop_front();
                }
            }
            let reported_sp = if c == last_ch || self.wire.setpoint[c].is_some() {
                self.setpoint[c]
            } else {
                nominal_sp
            };
            let vals = [
                ("supply_temp_c", supply_rep),
                (
                    "return_temp_c",
                    q(p.ret[c] + self.n.temp.sample(&mut self.rng), tres),
                ),
                (
                    "flow_lps",
                    q(flow + self.n.flow.sample(&mut self.rng), 0.01),
                ),
                (
                    "power_kw",
                    q(
                        (p.ch_power[c] + self.n.power.sample(&mut self.rng)).max(0.0),
                        0.1,
                    ),
                ),
                ("setpoint_c", reported_sp),
                ("running", f64::from(!breaker_open)),
            ];
            for (metric, v) in vals {
                emit(ts, reading(name, "chiller", metric, v))?;
            }
        }
        for (i, name) in self.names.crahs.iter().enumerate() {
            let sat = p.water + f.room.approach_c + 0.1 * (i % 5) as f64;
            let vals = [
                (
                    "supply_air_temp_c",
                    q(sat + self.n.temp.sample(&mut self.rng), tres),
                ),
                (
                    "return_air_temp_c",
                    q(self.room + 6.0 + self.n.temp.sample(&mut self.rng), tres),
                ),
                (
                    "fan_speed_pct",
                    q(60.0 + 0.2 * self.n.unit.sample(&mut self.rng), 0.1),
                ),
            ];
            for (metric, v) in vals {
                emit(ts, reading(name, "crah", metric, v))?;
            }
        }
        emit(
            ts,
            reading(
                "room-1",
                "env",
                "room_temp_c",
                q(self.room + self.n.temp.sample(&mut self.rng), tres),
            ),
        )?;
        emit(
            ts,
            reading(
                "room-1",
                "env",
                "humidity_pct",
                q(45.0 + 5.0 * self.n.temp.sample(&mut self.rng), 0.1),
            ),
        )?;
        if blackout.as_deref() != Some("grid-1") {
            let meter_spoof = self.active(Scenario::GridMeterSpoof).cloned();
            self.meter_fake_f += -0.002 * (self.meter_fake_f - f.grid.frequency_hz)
                + f.grid.frequency_walk_hz * self.n.unit.sample(&mut self.rng);
            let (freq, volt) = match &meter_spoof {
                Some(a) if Self::obvious(a) => (f.grid.frequency_hz, Some(f.grid.voltage_v)),
                Some(_) => (self.meter_fake_f + self.n.freq.sample(&mut self.rng), None),
                None => (self.grid_f + self.n.freq.sample(&mut self.rng), None),
            };
            let pf = f.grid.power_factor;
            let mut vals = vec![("frequency_hz", q(freq, 0.001))];
            for m in ["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"] {
                vals.push((
                    m,
                    q(
                        volt.unwrap_or(self.grid_v + self.n.volt.sample(&mut self.rng)),
                        0.1,
                    ),
                ));
            }
            let noisy_kw = if p.site_kw > 0.0 {
                p.site_kw + self.n.power.sample(&mut self.rng)
            } else {
                0.0
            };
            vals.extend([
                ("active_power_kw", q(noisy_kw, 0.1)),
                (
                    "reactive_power_kvar",
                    q(noisy_kw * (1.0 - pf * pf).sqrt() / pf, 0.1),
                ),
                (
                    "power_factor",
                    q(pf + 0.001 * self.n.unit.sample(&mut self.rng), 0.001),
                ),
                ("breaker_closed", f64::from(!breaker_open)),
            ]);
            for (metric, v) in vals {
                emit(ts, reading("grid-1", "grid_meter", metric, v))?;
            }
        }
        Ok(())
    }
}

fn reading<'a>(
    device: &'a str,
    kind: &'static str,
    metric: &'static str,
    value: f64,
) -> SimEvent<'a> {
    SimEvent::Reading {
        device,
        kind,
        metric,
        value,
    }
}

/// Writes a whole capture as canonical JSONL and returns its labels.
pub fn simulate(
    f: &Facility,
    opts: &SimOptions,
    out: &mut dyn Write,
) -> Result<Vec<Label>, SimError> {
    let mut sim = Simulator::new(f.clone(), opts)?;
    let site = f.site.clone();
    let mut line = Vec::with_capacity(256);
    let mut ts_text = (Ts::MIN, String::new());
    while !sim.done() {
        sim.step(&mut |ts, ev| {
            if ts_text.0 != ts {
                ts_text = (ts, crate::time::format_ts(ts));
            }
            write_event(&mut line, &ts_text.1, &site, &ev)?;
            out.write_all(&line)
        })?;
    }
    Ok(sim.labels())
}

/// One JSONL line. Names are validated identifiers and fixed strings: no escaping needed;
/// `{value}` prints the shortest text that reads back as the same f64.
pub(crate) fn write_event(
    line: &mut Vec<u8>,
    ts: &str,
    site: &str,
    ev: &SimEvent<'_>,
) -> io::Result<()> {
    line.clear();
    match ev {
        SimEvent::Reading { device, kind, metric, value } => writeln!(
            line,
            "{{\"ts\":\"{ts}\",\"site\":\"{site}\",\"device\":\"{device}\",\"kind\":\"{kind}\",\"metric\":\"{metric}\",\"value\":{value}}}"
        ),
        SimEvent::Command { device, client, function, address, value } => writeln!(
            line,
            "{{\"ts\":\"{ts}\",\"type\":\"command\",\"site\":\"{site}\",\"device\":\"{device}\",\"client\":\"{client}\",\"function\":{function},\"address\":{address},\"values\":[{value}]}}"
        ),
    }
}

/// Writes a live simulation's capture: readings and commands as canonical JSONL.
pub(crate) struct CaptureWriter {
    out: Box<dyn Write + Send>,
    site: String,
    line: Vec<u8>,
    ts_text: (Ts, String),
}

/// A `command` line of the capture format (docs/design.md).
#[derive(Serialize)]
struct CommandLine<'a> {
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    ts: Ts,
    #[serde(rename = "type")]
    kind: &'static str,
    site: &'a str,
    device: &'a str,
    client: &'a str,
    function: u8,
    address: u32,
    values: &'a [u16],
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    property: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
}

impl CaptureWriter {
    pub(crate) fn new(out: Box<dyn Write + Send>, site: &str) -> Self {
        Self {
            out,
            site: site.to_owned(),
            line: Vec::with_capacity(256),
            ts_text: (Ts::MIN, String::new()),
        }
    }

    /// One event of the simulator.
    pub(crate) fn event(&mut self, ts: Ts, ev: &SimEvent<'_>) -> io::Result<()> {
        if self.ts_text.0 != ts {
            self.ts_text = (ts, crate::time::format_ts(ts));
        }
        write_event(&mut self.line, &self.ts_text.1, &self.site, ev)?;
        self.out.write_all(&self.line)
    }

    /// A request a client sent over the wire.
    pub(crate) fn command(
        &mut self,
        ts: Ts,
        device: &str,
        client: &str,
        function: u8,
        address: u32,
        values: &[u16],
    ) -> io::Result<()> {
        let line = CommandLine {
            ts,
            kind: "command",
            site: &self.site,
            device,
            client,
            function,
            address,
            values,
            protocol: None,
            property: None,
            value: None,
        };
        write_line(&mut self.out, &line)
    }

    /// A BACnet WriteProperty a client sent: `object` as its 32-bit identifier.
    pub(crate) fn bacnet_write(
        &mut self,
        ts: Ts,
        (device, client): (&str, &str),
        object: u32,
        property: u32,
        value: f64,
    ) -> io::Result<()> {
        let line = CommandLine {
            ts,
            kind: "command",
            site: &self.site,
            device,
            client,
            function: crate::protocol::bacnet::confirmed::WRITE_PROPERTY,
            address: object,
            values: &[],
            protocol: Some("bacnet"),
            property: Some(property),
            value: Some(value),
        };
        write_line(&mut self.out, &line)
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn write_line(out: &mut Box<dyn Write + Send>, line: &CommandLine<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line).map_err(io::Error::from)?;
    out.write_all(b"\n")
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
        .or_else(|| base.strip_suffix(".pcapng"))
        .or_else(|| base.strip_suffix(".pcap"))
        .unwrap_or(base);
    capture.with_file_name(format!("{stem}.labels.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(variant: &str, hours: f64, attacks: &str, seed: u64) -> (String, Vec<Label>) {
        let opts = SimOptions {
            start: 1_783_382_400_000,
            hours,
            seed,
            attacks: parse_attacks(attacks).unwrap(),
            intensity: Intensity::Obvious,
        };
        let mut buf = Vec::new();
        let labels = simulate(&Facility::variant(variant).unwrap(), &opts, &mut buf).unwrap();
        (String::from_utf8(buf).unwrap(), labels)
    }

    #[test]
    fn writes_over_the_wire_drive_the_plant_until_written_back() {
        let opts = SimOptions {
            start: 0,
            hours: 2.0,
            seed: 1,
            attacks: Vec::new(),
            intensity: Intensity::Obvious,
        };
        let mut sim = Simulator::new(Facility::default(), &opts).unwrap();
        let mut last = std::collections::HashMap::new();
        let mut run = |sim: &mut Simulator, secs: usize| {
            for _ in 0..secs {
                sim.step(&mut |_, ev| {
                    if let SimEvent::Reading {
                        device,
                        metric,
                        value,
                        ..
                    } = ev
                    {
                        last.insert(format!("{device}/{metric}"), value);
                    }
                    Ok(())
                })
                .unwrap();
            }
            last.clone()
        };
        let before = run(&mut sim, 600);
        assert!(sim.apply_write("chiller-1", "setpoint_c", 13.0));
        assert!(sim.apply_write("ups-2", "bypass_command", 1.0));
        assert!(
            !sim.apply_write("ups-2", "setpoint_c", 13.0),
            "not a chiller"
        );
        assert!(!sim.apply_write("chiller-1", "fan_speed_pct", 1.0));
        let after = run(&mut sim, 1800);
        assert_eq!(after["chiller-1/setpoint_c"], 13.0);
        assert!(after["chiller-1/supply_temp_c"] > before["chiller-1/supply_temp_c"] + 4.0);
        assert_eq!(after["ups-2/bypass_active"], 1.0);
        assert!(sim.apply_write("chiller-1", "setpoint_c", 7.0));
        assert!(sim.apply_write("ups-2", "bypass_command", 0.0));
        let back = run(&mut sim, 3000);
        assert!((back["chiller-1/supply_temp_c"] - 7.0).abs() < 0.5);
        assert_eq!(back["ups-2/bypass_active"], 0.0);
    }

    #[test]
    fn deterministic_by_seed() {
        assert_eq!(
            run("default", 0.05, "none", 3).0,
            run("default", 0.05, "none", 3).0
        );
        assert_ne!(
            run("default", 0.05, "none", 3).0,
            run("default", 0.05, "none", 4).0
        );
    }

    #[test]
    fn every_variant_writes_parseable_lines_and_ordered_labels() {
        for v in VARIANTS {
            let (text, labels) = run(v, 10.0, "all", 1);
            let mut reg = crate::model::points::Registry::new(100_000);
            for l in text.lines().step_by(97) {
                crate::source::jsonl::parse_line(l.as_bytes(), &mut reg).unwrap();
            }
            assert_eq!(labels.len(), Scenario::ALL.len(), "{v}");
            assert!(labels.windows(2).all(|w| w[0].end < w[1].start), "{v}");
            assert!(text.contains("\"type\":\"command\""), "{v}");
        }
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
            intensity: Intensity::Obvious,
        };
        assert!(matches!(
            simulate(&Facility::default(), &opts, &mut Vec::new()),
            Err(SimError::TooShort { .. })
        ));
        assert_eq!(
            labels_path(std::path::Path::new("d/x.jsonl.zst")),
            std::path::Path::new("d/x.labels.json")
        );
    }
}
