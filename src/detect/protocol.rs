//! **protocol**: control actions on the wire that the facility's normal operation does
//! not explain.
//!
//! - Writers: the configured `allowlist`, plus every client that wrote during the first
//!   `learn` of event time (the BMS rewriting its setpoints). After that, a write
//!   (functions 5, 6, 15, 16, 22, 23) from anyone else is a finding: a modified parameter
//!   for register writes, an unauthorised command for coil writes.
//! - Unusual function codes (diagnostics 8, report server id 17, device identification
//!   43, and anything outside the read/write set) are findings at once: that is how
//!   reconnaissance looks.
//! - A client addressing more than `scan_devices` distinct devices within `scan_window`
//!   is a scan.
//!
//! Blind spots: an attacker who writes from the BMS's own address, or who was already
//! writing while the detector learned; reads are not seen unless a source reports them.

use super::Detector;
use crate::attack;
use crate::feature::{DeviceId, Registry};
use crate::model::{Command, Finding, Severity, Ts};
use crate::time::{format_duration, serde_duration};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;

const NAME: &str = "protocol";

/// Parameters of the protocol detector (global, not per kind).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolParams {
    /// Whether the detector runs.
    pub enabled: bool,
    /// Clients allowed to write, whatever was learned.
    pub allowlist: Vec<String>,
    /// Writers seen during this first stretch of event time are trusted (e.g. `"1h"`;
    /// `"0s"` trusts only the allowlist).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub learn: i64,
    /// Distinct devices one client may address within `scan_window` before it is a scan.
    pub scan_devices: usize,
    /// Window of the scan rule.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub scan_window: i64,
}

impl Default for ProtocolParams {
    fn default() -> Self {
        Self {
            enabled: true,
            allowlist: Vec::new(),
            learn: 3_600_000,
            scan_devices: 8,
            scan_window: 60_000,
        }
    }
}

fn is_write(function: u8) -> bool {
    matches!(function, 5 | 6 | 15 | 16 | 22 | 23)
}

fn is_ordinary(function: u8) -> bool {
    matches!(function, 1..=4) || is_write(function)
}

/// The protocol detector.
pub struct Protocol {
    params: ProtocolParams,
    first: Option<Ts>,
    writers: FxHashSet<String>,
    recent: FxHashMap<String, VecDeque<(Ts, DeviceId)>>,
    /// Per client, the device its reconnaissance findings are filed under, so a scan of
    /// a hundred unit ids is one alert that grows, not a hundred.
    recon_anchor: FxHashMap<String, DeviceId>,
}

impl Protocol {
    /// Builds it.
    pub fn new(params: ProtocolParams) -> Self {
        let writers = params.allowlist.iter().cloned().collect();
        Self {
            params,
            first: None,
            writers,
            recent: FxHashMap::default(),
            recon_anchor: FxHashMap::default(),
        }
    }
}

impl Detector for Protocol {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, _frame: &crate::feature::Frame<'_>, _out: &mut Vec<Finding>) {}

    fn command(&mut self, cmd: &Command, device: DeviceId, reg: &Registry, out: &mut Vec<Finding>) {
        let first = *self.first.get_or_insert(cmd.ts);
        let learning = cmd.ts - first < self.params.learn;
        let dev_name = &reg.device(device).name;
        let evidence = json!({"client": cmd.client, "function": cmd.function, "address": cmd.address, "values": cmd.values});
        let recon_device = *self
            .recon_anchor
            .entry(cmd.client.clone())
            .or_insert(device);
        let mut finding = |score: f64, severity, technique, reason: String, on: DeviceId| {
            out.push(Finding {
                ts: cmd.ts,
                device: on,
                metrics: Vec::new(),
                detector: NAME,
                score,
                threshold: 1.0,
                severity,
                technique,
                reason,
                evidence: evidence.clone(),
            });
        };
        if is_write(cmd.function) {
            if learning {
                self.writers.insert(cmd.client.clone());
            } else if !self.writers.contains(&cmd.client) {
                let (technique, what) = if matches!(cmd.function, 5 | 15) {
                    (attack::UNAUTHORIZED_COMMAND, "a coil")
                } else {
                    (attack::MODIFY_PARAMETER, "register")
                };
                finding(
                    2.0,
                    Severity::High,
                    technique,
                    format!(
                        "{} wrote {what} {} of {dev_name} (function {}, value {:?}) but is not a known writer",
                        cmd.client, cmd.address, cmd.function, cmd.values
                    ),
                    device,
                );
            }
        }
        if !is_ordinary(cmd.function) {
            let what = match cmd.function {
                8 => "a diagnostics request",
                17 => "a report-server-id request",
                43 => "a device identification request",
                _ => "an unusual function code",
            };
            finding(
                2.0,
                Severity::High,
                attack::REMOTE_SYSTEM_DISCOVERY,
                format!(
                    "{} sent {what} (function {}) to {dev_name}: reconnaissance",
                    cmd.client, cmd.function
                ),
                recon_device,
            );
        }
        let window = self.params.scan_window;
        let recent = self.recent.entry(cmd.client.clone()).or_default();
        recent.push_back((cmd.ts, device));
        while recent.front().is_some_and(|&(t, _)| cmd.ts - t > window) {
            recent.pop_front();
        }
        let distinct: FxHashSet<DeviceId> = recent.iter().map(|&(_, d)| d).collect();
        if distinct.len() > self.params.scan_devices {
            finding(
                distinct.len() as f64 / self.params.scan_devices as f64,
                Severity::High,
                attack::REMOTE_SYSTEM_DISCOVERY,
                format!(
                    "{} addressed {} devices within {}: a scan",
                    cmd.client,
                    distinct.len(),
                    format_duration(window)
                ),
                recon_device,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(ts: Ts, client: &str, device: &str, function: u8) -> Command {
        Command {
            ts,
            site: "s".into(),
            device: device.into(),
            client: client.into(),
            function,
            address: 1201,
            values: vec![700],
        }
    }

    fn run(cmds: &[Command]) -> Vec<Finding> {
        let mut reg = Registry::new(100);
        let mut d = Protocol::new(ProtocolParams::default());
        let mut out = Vec::new();
        for c in cmds {
            let dev = reg.intern_device(&c.site, &c.device, "").unwrap();
            d.command(c, dev, &reg, &mut out);
        }
        out
    }

    #[test]
    fn learned_writers_are_quiet_and_strangers_are_not() {
        let out = run(&[
            cmd(0, "bms", "chiller-1", 6),
            cmd(4_000_000, "bms", "chiller-1", 6),
            cmd(4_000_001, "10.66.0.99", "chiller-1", 6),
            cmd(4_000_002, "10.66.0.99", "grid-1", 5),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].technique.id, "T0836");
        assert_eq!(out[1].technique.id, "T0855");
    }

    #[test]
    fn diagnostics_and_scans_are_reconnaissance() {
        let mut cmds = vec![cmd(0, "x", "ups-1", 43)];
        cmds.extend((0..12).map(|i| cmd(1000 + i, "y", &format!("unit-{i}"), 3)));
        let out = run(&cmds);
        assert_eq!(out[0].technique.id, "T0846");
        assert!(out.iter().any(|f| f.reason.contains("a scan")));
        assert_eq!(
            run(&[cmd(0, "y", "ups-1", 3)]).len(),
            0,
            "one ordinary read is nothing"
        );
    }
}
