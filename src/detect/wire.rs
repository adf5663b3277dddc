//! **protocol**: what happens on the wire that the facility's normal operation does not
//! explain. Commands come from every source (JSONL `command` lines, packet captures);
//! exchanges ([`Traffic`]) only from packet captures.
//!
//! Always:
//! - Unusual function codes (diagnostics 8, report server id 17, device identification
//!   43, and anything outside the read/write set) are reconnaissance.
//! - A write to a register or coil that the device's profile does not list as writable
//!   (a measured value, an undefined address) is a finding whoever sends it.
//! - A client addressing more than `scan_devices` distinct devices (server × unit id)
//!   within `scan_window`, not counting those it addressed while learning, is a scan;
//!   more than `exception_burst` exception responses within the window to requests the
//!   client did not make while learning is probing (a failing device that refuses the
//!   BMS's routine polls is the staleness detector's business).
//! - A response no request asked for is a spoofed report (or a man in the middle); a
//!   frame that breaks the protocol is an exploitation attempt.
//!
//! From the first packet, before anything is learned (a responder's ten-minute capture
//! lies wholly inside the learning stretch), roles come from behaviour: a client that
//! asks for the same read again is a **polling master**. While learning, and whenever
//! exchanges are visible (packet captures):
//! - a write from a client that only writes (no read seen), or that has read for longer
//!   than the window without ever asking for the same read twice, is a finding; other
//!   writes are learned. A client gets the window to show it polls: a master whose
//!   first poll was seconds before its write is trusted, and so is an intruder that
//!   reads once and writes within the window (the least confident judgement, at the
//!   start of a capture);
//! - probing: more than `exception_burst` refusals within the window of requests the
//!   client made for the first time, at least half its requests then, from a client
//!   that does not poll (a master whose device fails repeats its refused reads);
//! - a sweep: more than 3 × `sweep_ranges` first-time (function, address) requests to
//!   one device within the window (a master's first poll cycle asks for each of its
//!   ranges once; three times the learned rule's limit leaves room for a large one).
//!
//! A writer reported once is tracked, not re-raised: the same client writing the same
//! values to the same register again is routine (counted, no finding); other values
//! are a finding again.
//!
//! After learning (the first `learn` of event time; `"0s"` turns these rules off):
//! - writers: the `allowlist` plus every client that wrote while learning (the BMS
//!   rewriting its setpoints); a write from anyone else is a finding.
//! - talkers: a client never seen while learning is reported once.
//! - sweeps: more than `sweep_ranges` distinct (function, address) requests to one
//!   device within the window that its client never made while learning.
//! - rate: a client sending more than `rate_factor` × its busiest learned minute
//!   (and at least 60 requests) within a minute.
//!
//! Blind spots: an attacker who writes from the BMS's own address, or who was already
//! active while the detector learned.

use super::Detector;
use crate::correlate::exceptions::{Exception, MAX_ADDRESSES};
use crate::detect::baseline::{Baseline, Talker};
use crate::model::attack;
use crate::model::event::{Outcome, Traffic};
use crate::model::points::{DeviceId, Registry};
use crate::model::{Command, Finding, Severity, Technique, Ts, WireProtocol, Words};
use crate::protocol::frame::is_write;
use crate::protocol::profiles;
use crate::protocol::registers::{DeviceMaps, RegisterMap, Table};
use crate::time::{format_duration, serde_duration};
use crate::tomlfile::{rule, Broken};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

const NAME: &str = "protocol";
/// Bucket of the request-rate rule.
const MINUTE: i64 = 60_000;
/// Fewest requests in a minute the rate rule reports (a client polling once a minute
/// that reads five times is not a flood).
const MIN_FLOOD: u64 = 60;
/// Ranges one client's requests are remembered by (a sweep of a whole register space
/// must not grow memory without bound; past this, ranges count as asked before).
const MAX_RANGES: usize = 65_536;
/// Requests one client's window keeps (a flood is the rate rule's business).
const MAX_WINDOW: usize = 100_000;
/// Reported writes whose values are remembered (for routine rewrites).
const MAX_REPORTED_WRITES: usize = 100_000;
/// A sweep before anything is learned: this many times `sweep_ranges`.
const UNLEARNED_SWEEP_FACTOR: usize = 3;

/// Parameters of the protocol detector (global, not per kind).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolParams {
    /// Whether the detector runs.
    pub enabled: bool,
    /// Clients allowed to write, whatever was learned.
    pub allowlist: Vec<String>,
    /// Writers, talkers, request ranges and rates seen during this first stretch of
    /// event time are normal (e.g. `"1h"`; `"0s"` trusts only the allowlist).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub learn: i64,
    /// Distinct devices one client may address within `scan_window` before it is a scan.
    pub scan_devices: usize,
    /// Window of the scan, exception and sweep rules.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub scan_window: i64,
    /// Exception responses to one client within `scan_window` before it is probing.
    pub exception_burst: usize,
    /// New (function, address) requests to one device within `scan_window` before it is
    /// a register sweep.
    pub sweep_ranges: usize,
    /// A minute with this many times the client's busiest learned minute is a flood.
    pub rate_factor: f64,
}

impl ProtocolParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.scan_devices >= 1, "scan_devices", "must be at least 1")?;
        rule(self.scan_window >= 1, "scan_window", "must be at least 1ms")?;
        rule(self.learn >= 0, "learn", "must not be negative")?;
        Ok(())
    }
}

impl Default for ProtocolParams {
    fn default() -> Self {
        Self {
            enabled: true,
            allowlist: Vec::new(),
            learn: 3_600_000,
            scan_devices: 8,
            scan_window: 60_000,
            exception_burst: 5,
            sweep_ranges: 10,
            rate_factor: 4.0,
        }
    }
}

/// A learned minute's count as a rate per minute: a minute the learning stretch
/// (`(first event, learn)`) only partly covered counts over the part it covered (at
/// least a second), so a few seconds of routine polling do not pass for a quiet minute.
fn per_minute(count: u64, minute: i64, (first, learn): (Ts, i64)) -> u64 {
    let from = (minute * MINUTE).max(first);
    let to = (minute * MINUTE + MINUTE).min(first.saturating_add(learn));
    let covered = (to - from).clamp(1_000, MINUTE);
    (count as f64 * MINUTE as f64 / covered as f64).ceil() as u64
}

fn is_ordinary(function: u8) -> bool {
    matches!(function, 1..=4) || is_write(function)
}

/// What one client did, for the rules that count.
#[derive(Default)]
struct Client {
    /// Devices addressed while learning.
    known_devices: FxHashSet<DeviceId>,
    /// Other devices addressed, with when.
    recent: VecDeque<(Ts, DeviceId)>,
    /// Exception responses, when.
    exceptions: VecDeque<Ts>,
    /// (device, function, address) requested while learning.
    known: FxHashSet<(DeviceId, u8, u16)>,
    /// New (device, function, address) requests, with when.
    novel: VecDeque<(Ts, DeviceId, u8, u16)>,
    /// Busiest learned minute.
    learned_rate: u64,
    /// Current minute and its count.
    minute: i64,
    count: u64,
    /// Seen while learning.
    learned: bool,
    /// Already reported as a new talker.
    reported_new: bool,
    /// (device, function, address) requested so far, with how often.
    asked: FxHashMap<(DeviceId, u8, u16), u32>,
    /// Asked for some read again: a polling master.
    polls: bool,
    /// When it first asked for a read, if it ever did.
    first_read: Option<Ts>,
    /// Requests within the window: (when, device, the first time this range was asked,
    /// refused with an exception).
    window: VecDeque<(Ts, DeviceId, bool, bool)>,
    /// Of those, first-time requests refused, and first-time requests per device.
    probes: usize,
    firsts: FxHashMap<DeviceId, usize>,
}

impl Client {
    /// Notes one request; whether it asked for its range for the first time.
    fn ask(&mut self, ts: Ts, device: DeviceId, function: u8, address: u16) -> bool {
        if matches!(function, 1..=4) {
            self.first_read.get_or_insert(ts);
        }
        let key = (device, function, address);
        let full = self.asked.len() >= MAX_RANGES;
        let n = match self.asked.get_mut(&key) {
            Some(n) => {
                *n = n.saturating_add(1);
                *n
            }
            None if full => return false,
            None => {
                self.asked.insert(key, 1);
                1
            }
        };
        if n >= 2 && matches!(function, 1..=4) {
            self.polls = true;
        }
        n == 1
    }

    /// Keeps one request in the window, and drops what fell out of it.
    fn remember(&mut self, request: (Ts, DeviceId, bool, bool), window: i64) {
        self.tally(request, true);
        self.window.push_back(request);
        let now = request.0;
        while self.window.len() > MAX_WINDOW
            || self
                .window
                .front()
                .is_some_and(|&(ts, ..)| now - ts > window)
        {
            let old = self.window.pop_front().expect("not empty");
            self.tally(old, false);
        }
    }

    /// Counts a first-time request into (or out of) the window's tallies.
    fn tally(&mut self, (_, device, first, refused): (Ts, DeviceId, bool, bool), add: bool) {
        if !first {
            return;
        }
        let step = |n: &mut usize| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if refused {
            step(&mut self.probes);
        }
        if let Some(n) = self.firsts.get_mut(&device) {
            step(n);
            if *n == 0 {
                self.firsts.remove(&device);
            }
        } else if add {
            self.firsts.insert(device, 1);
        }
    }
}

/// Addresses a device's profile allows to be written, per table.
#[derive(Default)]
struct Writable {
    profile: String,
    ranges: Vec<(Table, u32, u32)>,
}

impl Writable {
    fn of(map: &RegisterMap) -> Self {
        Self {
            profile: map.profile.clone(),
            ranges: map
                .registers
                .iter()
                .filter(|r| r.writable)
                .map(|r| {
                    let a = u32::from(r.address);
                    (r.table, a, a + u32::from(r.word_count()))
                })
                .collect(),
        }
    }

    /// Whether every address `[address, address + n)` of `table` is writable.
    fn allows(&self, table: Table, address: u32, n: u32) -> bool {
        (address..address + n.max(1)).all(|a| {
            self.ranges
                .iter()
                .any(|&(t, lo, hi)| t == table && lo <= a && a < hi)
        })
    }
}

/// The protocol detector.
pub struct Protocol {
    params: ProtocolParams,
    wire: Arc<DeviceMaps>,
    first: Option<Ts>,
    writers: FxHashSet<String>,
    clients: FxHashMap<Arc<str>, Client>,
    /// Per client, the device its reconnaissance findings are filed under, so a scan of
    /// a hundred unit ids is one alert that grows, not a hundred.
    recon_anchor: FxHashMap<Arc<str>, DeviceId>,
    writable: FxHashMap<DeviceId, Option<Arc<Writable>>>,
    /// Exchanges have been seen (a packet capture): roles can be judged from behaviour.
    wire_seen: bool,
    /// Reported writes' values, per (client, device, function, address).
    reported_writes: FxHashMap<(String, DeviceId, u8, u32), Vec<u16>>,
    /// Rewrites of reported writes' values (routine, not re-raised).
    routine_rewrites: u64,
    /// Latest event time seen.
    last: Ts,
    /// BACnet object maps of configured devices.
    bacnet_maps: Arc<crate::protocol::bacnet_map::BacnetMaps>,
    /// Writes learned, per (client, device, function): the registers.
    learned_writes: FxHashMap<(String, DeviceId, u8), BTreeSet<u32>>,
    /// Everything seen is normal (`wattchdog learn` on a clean capture).
    trusting: bool,
    /// A baseline adopted instead of learning.
    adopted: Option<Adopted>,
}

/// What a baseline file says, applied to each device when it first appears.
struct Adopted {
    from: String,
    writers: usize,
    talkers: usize,
    /// Talkers by (site, device name), until their device appears.
    pending: FxHashMap<(String, String), Vec<Talker>>,
    resolved: FxHashSet<DeviceId>,
}

impl Protocol {
    /// Builds it; `wire` names the profiles of configured Modbus devices (others get their
    /// kind's built-in profile for the writable-set rule).
    pub fn new(params: ProtocolParams, wire: Arc<DeviceMaps>) -> Self {
        let writers = params.allowlist.iter().cloned().collect();
        Self {
            params,
            wire,
            first: None,
            writers,
            clients: FxHashMap::default(),
            recon_anchor: FxHashMap::default(),
            writable: FxHashMap::default(),
            wire_seen: false,
            reported_writes: FxHashMap::default(),
            routine_rewrites: 0,
            last: Ts::MIN,
            bacnet_maps: Arc::default(),
            learned_writes: FxHashMap::default(),
            trusting: false,
            adopted: None,
        }
    }

    /// With the object maps of configured BACnet devices (for judging their writes).
    pub fn with_bacnet(mut self, maps: Arc<crate::protocol::bacnet_map::BacnetMaps>) -> Self {
        self.bacnet_maps = maps;
        self
    }

    /// A detector that takes everything it sees for normal and learns it all (for
    /// `wattchdog learn` on a clean capture): every write is learned, whoever sends it.
    pub fn learner(params: ProtocolParams, wire: Arc<DeviceMaps>) -> Self {
        let params = ProtocolParams {
            learn: i64::MAX,
            ..params
        };
        Self {
            trusting: true,
            ..Self::new(params, wire)
        }
    }

    /// What it learned, as a baseline file.
    pub fn baseline(&self, reg: &Registry, learned_from: String) -> Baseline {
        let mut exception: Vec<Exception> = self
            .learned_writes
            .iter()
            .map(|((client, device, function), addresses)| {
                let d = reg.device(*device);
                let addresses = addresses.iter().copied().take(MAX_ADDRESSES).collect();
                let at = crate::time::format_ts(self.last);
                let taught = ("wattchdog learn", "learned", at.as_str());
                Exception::of_write(&d.site, &d.name, client, *function, addresses, taught, "")
            })
            .collect();
        exception.sort_by(|a, b| (&a.site, &a.device, &a.id).cmp(&(&b.site, &b.device, &b.id)));
        let mut talker = Vec::new();
        for (client, c) in self.clients.iter().filter(|(_, c)| c.learned) {
            let mut by_device: BTreeMap<DeviceId, Vec<[u16; 2]>> = BTreeMap::new();
            for &(device, function, address) in &c.known {
                by_device
                    .entry(device)
                    .or_default()
                    .push([u16::from(function), address]);
            }
            for (device, mut ranges) in by_device {
                ranges.sort_unstable();
                ranges.truncate(crate::detect::baseline::MAX_RANGES);
                let d = reg.device(device);
                talker.push(Talker {
                    site: d.site.clone(),
                    device: d.name.clone(),
                    client: client.to_string(),
                    polls: c.polls,
                    busiest_minute: c.learned_rate,
                    ranges,
                });
            }
        }
        talker
            .sort_by(|a, b| (&a.site, &a.device, &a.client).cmp(&(&b.site, &b.device, &b.client)));
        Baseline {
            learned_from,
            exception,
            talker,
        }
    }

    /// Applies an adopted baseline's talkers to `device` the first time it appears.
    fn adopt_device(&mut self, device: DeviceId, reg: &Registry) {
        let Some(a) = self.adopted.as_mut() else {
            return;
        };
        if !a.resolved.insert(device) {
            return;
        }
        let d = reg.device(device);
        let Some(talkers) = a.pending.remove(&(d.site.clone(), d.name.clone())) else {
            return;
        };
        for t in talkers {
            let c = self.client(&t.client);
            c.learned = true;
            c.polls |= t.polls;
            c.learned_rate = c.learned_rate.max(t.busiest_minute);
            c.known_devices.insert(device);
            for [function, address] in t.ranges {
                if let Ok(function) = u8::try_from(function) {
                    c.known.insert((device, function, address));
                }
            }
        }
    }

    /// Whether a write from a client that was not trusted to write repeats the values it
    /// wrote to that register when it was reported (routine: counted, not re-raised).
    /// Remembers the values otherwise.
    fn rewrite(&mut self, cmd: &Command, device: DeviceId, written: &[u16]) -> bool {
        let key = (cmd.client.clone(), device, cmd.function, cmd.address);
        if self.reported_writes.get(&key).map(Vec::as_slice) == Some(written) {
            self.routine_rewrites += 1;
            return true;
        }
        if self.reported_writes.len() < MAX_REPORTED_WRITES
            || self.reported_writes.contains_key(&key)
        {
            self.reported_writes.insert(key, written.to_vec());
        }
        false
    }

    /// Whether `ts` is still in the learning stretch (which starts with the first event;
    /// none when a baseline was adopted).
    fn learning(&mut self, ts: Ts) -> bool {
        let first = *self.first.get_or_insert(ts);
        self.last = self.last.max(ts);
        self.adopted.is_none() && ts.saturating_sub(first) < self.params.learn
    }

    fn writable(&mut self, device: DeviceId, reg: &Registry) -> Option<Arc<Writable>> {
        let wire = &self.wire;
        self.writable
            .entry(device)
            .or_insert_with(|| {
                let d = reg.device(device);
                let map = wire
                    .get(&(d.site.clone(), d.name.clone()))
                    .cloned()
                    .or_else(|| {
                        let name = profiles::for_kind(&d.kind_name)?;
                        profiles::builtin(name)?.ok().map(Arc::new)
                    })?;
                Some(Arc::new(Writable::of(&map)))
            })
            .clone()
    }

    /// Why a write's client is not trusted to write, or `None` when it is (learning it
    /// as a writer while learning). While learning, a write is learned unless the wire
    /// shows that its client is no polling master: it only writes, or it has read for
    /// longer than the window without asking for anything twice.
    fn untrusted_writer(&mut self, cmd: &Command, learning: bool) -> Option<&'static str> {
        let window = self.params.scan_window;
        let (reads_since, polls) = self
            .clients
            .get(cmd.client.as_str())
            .map_or((None, false), |c| (c.first_read, c.polls));
        if self.writers.contains(&cmd.client) {
            None
        } else if !learning {
            Some("but is not a known writer")
        } else if self.trusting {
            self.writers.insert(cmd.client.clone());
            None
        } else if self.wire_seen && reads_since.is_none() {
            Some("but reads nothing: a host that only writes is no polling master")
        } else if self.wire_seen && !polls && reads_since.is_some_and(|t| cmd.ts - t > window) {
            Some("but polls no device: a host that reads without polling is no master")
        } else {
            self.writers.insert(cmd.client.clone());
            None
        }
    }

    /// A BACnet request other than a read: a write judged like a Modbus write (its
    /// writer, and the device's BACnet object map: only a commandable object's present
    /// value is routine — writing `out-of-service` decouples a value from its sensor),
    /// and the services that silence or restart a device, or change its objects.
    fn bacnet_command(
        &mut self,
        cmd: &Command,
        device: DeviceId,
        reg: &Registry,
        out: &mut Vec<Finding>,
    ) {
        use crate::protocol::bacnet::{confirmed, property, ObjectId};
        let learning = self.learning(cmd.ts);
        let d = reg.device(device);
        let dev_name = d.name.clone();
        let object = ObjectId::from_u32(cmd.address);
        let evidence = json!({"client": cmd.client, "protocol": "bacnet", "service": cmd.function,
            "object": object.to_string(), "property": cmd.property, "value": cmd.value});
        let push = |out: &mut Vec<Finding>, technique, text: String| {
            out.push(finding(
                cmd.ts,
                device,
                2.0,
                Severity::High,
                technique,
                text,
                evidence.clone(),
            ));
        };
        match cmd.function {
            confirmed::WRITE_PROPERTY | confirmed::WRITE_PROPERTY_MULTIPLE => {
                let prop = match cmd.property {
                    Some(property::PRESENT_VALUE) => "present-value".to_owned(),
                    Some(property::OUT_OF_SERVICE) => "out-of-service".to_owned(),
                    Some(p) => format!("property {p}"),
                    None => "a property".to_owned(),
                };
                let value = cmd.value.map_or("?".to_owned(), |v| v.to_string());
                let wrote = format!(
                    "{} wrote {prop} of {object} on {dev_name} over BACnet (value {value})",
                    cmd.client
                );
                if let Some(why) = self.untrusted_writer(cmd, learning) {
                    // The same value to the same property again is routine.
                    let (p, v) = (
                        cmd.property.unwrap_or(u32::MAX),
                        cmd.value.unwrap_or(f64::NAN).to_bits(),
                    );
                    let written = [
                        p >> 16,
                        p,
                        (v >> 48) as u32,
                        (v >> 32) as u32,
                        (v >> 16) as u32,
                        v as u32,
                    ]
                    .map(|w| w as u16);
                    if !self.rewrite(cmd, device, &written) {
                        push(out, attack::MODIFY_PARAMETER, format!("{wrote} {why}"));
                    }
                }
                let map = self
                    .bacnet_maps
                    .get(&(d.site.clone(), d.name.clone()))
                    .cloned()
                    .or_else(|| {
                        let name = crate::protocol::bacnet_map::for_kind(&d.kind_name)?;
                        crate::protocol::bacnet_map::named(name).ok().map(Arc::new)
                    });
                if let Some(map) = map {
                    let routine = cmd.property == Some(property::PRESENT_VALUE)
                        && map.by_object(object).is_some_and(|(_, o)| o.writable);
                    if !routine {
                        push(
                            out,
                            attack::MODIFY_PARAMETER,
                            format!(
                                "{wrote}, which profile {} does not list as writable",
                                map.profile
                            ),
                        );
                    }
                }
            }
            confirmed::READ_PROPERTY
            | confirmed::READ_PROPERTY_MULTIPLE
            | confirmed::SUBSCRIBE_COV
            | confirmed::COV_NOTIFICATION => {}
            service => {
                let (technique, what) = match service {
                    17 => (
                        attack::BLOCK_REPORTING_MESSAGE,
                        "DeviceCommunicationControl: the device may stop answering and reporting",
                    ),
                    20 => (
                        attack::DEVICE_RESTART_SHUTDOWN,
                        "ReinitializeDevice: a restart",
                    ),
                    10 | 11 => (attack::UNAUTHORIZED_COMMAND, "an object created or deleted"),
                    7 => (
                        attack::UNAUTHORIZED_COMMAND,
                        "AtomicWriteFile: a file (program or configuration) written",
                    ),
                    _ => (attack::REMOTE_SYSTEM_DISCOVERY, "an unusual BACnet service"),
                };
                push(
                    out,
                    technique,
                    format!(
                        "{} sent {what} (service {service}) to {dev_name}",
                        cmd.client
                    ),
                );
            }
        }
        self.scan(&cmd.client, cmd.ts, device, out, &|| evidence.clone());
    }

    fn anchor(&mut self, client: &str, device: DeviceId) -> DeviceId {
        if let Some(&d) = self.recon_anchor.get(client) {
            return d;
        }
        self.recon_anchor.insert(Arc::from(client), device);
        device
    }

    /// The distinct-devices rule, for commands and exchanges alike: devices the client
    /// addressed while learning (a BMS polls them all) do not count.
    fn scan(
        &mut self,
        client: &str,
        ts: Ts,
        device: DeviceId,
        out: &mut Vec<Finding>,
        evidence: &dyn Fn() -> serde_json::Value,
    ) {
        let window = self.params.scan_window;
        let learning = self.learning(ts);
        let c = self.client(client);
        if learning {
            c.known_devices.insert(device);
        }
        if c.known_devices.contains(&device) {
            return;
        }
        c.recent.push_back((ts, device));
        while c.recent.front().is_some_and(|&(t, _)| ts - t > window) {
            c.recent.pop_front();
        }
        let distinct: FxHashSet<DeviceId> = c.recent.iter().map(|&(_, d)| d).collect();
        if distinct.len() > self.params.scan_devices {
            let on = self.anchor(client, device);
            out.push(finding(
                ts,
                on,
                distinct.len() as f64 / self.params.scan_devices as f64,
                Severity::High,
                attack::REMOTE_SYSTEM_DISCOVERY,
                format!(
                    "{client} addressed {} devices within {}: a scan",
                    distinct.len(),
                    format_duration(window)
                ),
                evidence(),
            ));
        }
    }

    fn client(&mut self, client: &str) -> &mut Client {
        if !self.clients.contains_key(client) {
            self.clients.insert(Arc::from(client), Client::default());
        }
        self.clients.get_mut(client).expect("inserted above")
    }
}

#[allow(clippy::too_many_arguments)]
fn finding(
    ts: Ts,
    device: DeviceId,
    score: f64,
    severity: Severity,
    technique: Technique,
    reason: String,
    evidence: serde_json::Value,
) -> Finding {
    Finding {
        ts,
        device,
        metrics: Vec::new(),
        detector: NAME,
        score,
        threshold: 1.0,
        severity,
        technique,
        words: Words::made(reason, evidence),
    }
}

impl Detector for Protocol {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&mut self, frame: &crate::feature::Frame<'_>, _out: &mut Vec<Finding>) {
        // The learning stretch starts with the capture, not with its first command: a
        // capture whose first write is an intruder's must not learn it.
        self.learning(frame.ts);
    }

    fn adopt(&mut self, b: &Baseline) {
        let mut pending: FxHashMap<(String, String), Vec<Talker>> = FxHashMap::default();
        for t in &b.talker {
            pending
                .entry((t.site.clone(), t.device.clone()))
                .or_default()
                .push(t.clone());
        }
        let writers: FxHashSet<&str> = b
            .exception
            .iter()
            .filter_map(|x| x.write.as_ref().map(|w| w.client.as_str()))
            .collect();
        self.writers.extend(writers.iter().map(|w| (*w).to_owned()));
        self.adopted = Some(Adopted {
            from: b.learned_from.clone(),
            writers: writers.len(),
            talkers: b.talker.len(),
            pending,
            resolved: FxHashSet::default(),
        });
    }

    fn notes(&self) -> Vec<String> {
        let Some(first) = self.first else {
            return Vec::new();
        };
        let learn = format_duration(self.params.learn);
        let shorter = self.adopted.is_none() && self.last - first < self.params.learn;
        let learned = if let Some(a) = &self.adopted {
            format!(
                "judged against a baseline ({} writers, {} talkers on devices) learned from {}",
                a.writers, a.talkers, a.from
            )
        } else if self.params.learn == 0 {
            "nothing is learned (`learn = \"0s\"`): only the allowlist writes".to_owned()
        } else if shorter {
            format!("the capture is shorter than `learn` ({learn}): no learned rule applied")
        } else {
            format!("writers, talkers, ranges and rates were learned from its first {learn}")
        };
        let roles = if self.adopted.is_some() {
            String::new()
        } else if self.wire_seen {
            let mut masters: Vec<&str> = self
                .clients
                .iter()
                .filter(|(_, c)| c.polls)
                .map(|(k, _)| &**k)
                .collect();
            masters.sort_unstable();
            let shown = masters
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            let more = masters.len().saturating_sub(10);
            format!(
                "; {}roles were judged from behaviour on the wire (polling masters: {}{})",
                if shorter { "" } else { "before that, " },
                if shown.is_empty() { "none" } else { &shown },
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        } else {
            "; no exchanges were seen (commands only), so writes while learning were learned, not judged".to_owned()
        };
        let routine = match self.routine_rewrites {
            0 => String::new(),
            n => format!("; {n} routine rewrites of reported writes were not raised again"),
        };
        vec![format!("protocol: {learned}{roles}{routine}")]
    }

    fn command(&mut self, cmd: &Command, device: DeviceId, reg: &Registry, out: &mut Vec<Finding>) {
        self.adopt_device(device, reg);
        if cmd.protocol == WireProtocol::Bacnet {
            return self.bacnet_command(cmd, device, reg, out);
        }
        let learning = self.learning(cmd.ts);
        let dev_name = reg.device(device).name.clone();
        let evidence = json!({"client": cmd.client, "function": cmd.function, "address": cmd.address, "values": cmd.values});
        let coil = matches!(cmd.function, 5 | 15);
        let write_technique = if coil {
            attack::UNAUTHORIZED_COMMAND
        } else {
            attack::MODIFY_PARAMETER
        };
        let what = if coil { "coil" } else { "register" };
        // Both write rules file the same finding on the device written; only why differs.
        let write_finding = |why: String| {
            finding(
                cmd.ts,
                device,
                2.0,
                Severity::High,
                write_technique,
                format!(
                    "{} wrote {what} {} of {dev_name} (function {}, value {:?}) {why}",
                    cmd.client, cmd.address, cmd.function, cmd.values
                ),
                evidence.clone(),
            )
        };
        if is_write(cmd.function) {
            let why = self.untrusted_writer(cmd, learning);
            if let Some(why) = why {
                if !self.rewrite(cmd, device, &cmd.values) {
                    out.push(write_finding(why.into()));
                }
            } else if learning && self.learned_writes.len() < MAX_REPORTED_WRITES {
                self.learned_writes
                    .entry((cmd.client.clone(), device, cmd.function))
                    .or_default()
                    .insert(cmd.address);
            }
            let table = if coil { Table::Coil } else { Table::Holding };
            let n = match cmd.function {
                22 => 1,
                _ => cmd.values.len() as u32,
            };
            if cmd.function != 21 {
                if let Some(w) = self.writable(device, reg) {
                    if !w.allows(table, cmd.address, n) {
                        out.push(write_finding(format!(
                            "which profile {} does not list as writable",
                            w.profile
                        )));
                    }
                }
            }
        }
        if !is_ordinary(cmd.function) {
            let what = match cmd.function {
                8 => "a diagnostics request",
                17 => "a report-server-id request",
                43 => "a device identification request",
                _ => "an unusual function code",
            };
            let on = self.anchor(&cmd.client, device);
            out.push(finding(
                cmd.ts,
                on,
                2.0,
                Severity::High,
                attack::REMOTE_SYSTEM_DISCOVERY,
                format!(
                    "{} sent {what} (function {}) to {dev_name}: reconnaissance",
                    cmd.client, cmd.function
                ),
                evidence.clone(),
            ));
        }
        self.scan(&cmd.client, cmd.ts, device, out, &|| evidence.clone());
    }

    fn traffic(&mut self, t: &Traffic, reg: &Registry, out: &mut Vec<Finding>) {
        self.adopt_device(t.device, reg);
        let learning = self.learning(t.ts);
        let learn_rules = self.params.learn > 0;
        // Built only for findings: most exchanges are routine.
        let dev_name = &reg.device(t.device).name;
        let evidence = || json!({"client": &*t.client, "function": t.function, "address": t.address, "count": t.count, "outcome": format!("{:?}", t.outcome)});
        let window = self.params.scan_window;
        let (sweep_limit, burst_limit, factor) = (
            self.params.sweep_ranges,
            self.params.exception_burst,
            self.params.rate_factor,
        );
        let learned_span = (self.first.unwrap_or(t.ts), self.params.learn);
        match t.outcome {
            Outcome::Unsolicited => out.push(finding(
                t.ts,
                t.device,
                2.0,
                Severity::High,
                attack::SPOOF_REPORTING,
                format!(
                    "{dev_name} sent {} a response to no outstanding request: spoofed or injected (man in the middle)",
                    t.client
                ),
                evidence(),
            )),
            Outcome::Malformed(why) => out.push(finding(
                t.ts,
                t.device,
                1.5,
                Severity::Medium,
                attack::EXPLOITATION_OF_REMOTE_SERVICES,
                format!(
                    "malformed Modbus frame between {} and {dev_name} ({why}): a fuzzer, an exploit attempt or a broken device",
                    t.client
                ),
                evidence(),
            )),
            _ => {}
        }
        if matches!(t.outcome, Outcome::Unsolicited | Outcome::Malformed(_)) {
            return;
        }
        self.wire_seen = true;
        let c = self.client(&t.client);
        let mut found: Vec<(f64, Severity, Technique, String, bool)> = Vec::new();
        if learning || !learn_rules {
            // Nothing learned to compare with: judge the client by what it does now (and
            // only then: once learned, the learned rules judge and this costs nothing).
            let first = c.ask(t.ts, t.device, t.function, t.address);
            let refused = matches!(t.outcome, Outcome::Exception(_));
            c.remember((t.ts, t.device, first, refused), window);
            let probes = c.probes;
            let novel = c.firsts.get(&t.device).copied().unwrap_or(0);
            if first && refused && !c.polls && probes > burst_limit && 2 * probes >= c.window.len()
            {
                found.push((
                    probes as f64 / burst_limit as f64,
                    Severity::High,
                    attack::REMOTE_SYSTEM_DISCOVERY,
                    format!(
                        "{} drew {probes} exception responses within {} to requests it had never made, {} of its {} requests: probing for units and registers",
                        t.client,
                        format_duration(window),
                        probes,
                        c.window.len()
                    ),
                    true,
                ));
            }
            let sweep = UNLEARNED_SWEEP_FACTOR * sweep_limit;
            if first && novel > sweep {
                found.push((
                    novel as f64 / sweep as f64,
                    Severity::High,
                    attack::REMOTE_SYSTEM_DISCOVERY,
                    format!(
                        "{} asked {dev_name} for {novel} different (function, address) ranges within {}, each for the first time: a register sweep",
                        t.client,
                        format_duration(window)
                    ),
                    true,
                ));
            }
        }
        // Request rate, per minute of event time.
        let minute = t.ts.div_euclid(MINUTE);
        if minute != c.minute {
            c.minute = minute;
            c.count = 0;
        }
        c.count += 1;
        if learning {
            c.learned = true;
            c.learned_rate = c
                .learned_rate
                .max(per_minute(c.count, minute, learned_span));
            c.known.insert((t.device, t.function, t.address));
        } else if learn_rules {
            if !c.learned && !c.reported_new {
                c.reported_new = true;
                found.push((
                    1.5,
                    Severity::Medium,
                    attack::REMOTE_SYSTEM_DISCOVERY,
                    format!(
                        "{} talks Modbus to {dev_name} (function {}) but was never seen while learning: a new talker",
                        t.client, t.function
                    ),
                    true,
                ));
            }
            let limit = (c.learned_rate as f64 * factor).max(MIN_FLOOD as f64);
            if c.count as f64 > limit && c.count == limit as u64 + 1 {
                found.push((
                    c.count as f64 / limit,
                    Severity::Medium,
                    attack::DENIAL_OF_SERVICE,
                    format!(
                        "{} sent over {} requests within a minute, {}× its busiest minute while learning ({})",
                        t.client, limit as u64, factor, c.learned_rate
                    ),
                    true,
                ));
            }
            if !c.known.contains(&(t.device, t.function, t.address)) {
                c.novel.push_back((t.ts, t.device, t.function, t.address));
                while c.novel.front().is_some_and(|&(ts, ..)| t.ts - ts > window) {
                    c.novel.pop_front();
                }
                let distinct: FxHashSet<(u8, u16)> = c
                    .novel
                    .iter()
                    .filter(|n| n.1 == t.device)
                    .map(|n| (n.2, n.3))
                    .collect();
                if distinct.len() > sweep_limit {
                    found.push((
                        distinct.len() as f64 / sweep_limit as f64,
                        Severity::High,
                        attack::REMOTE_SYSTEM_DISCOVERY,
                        format!(
                            "{} made {} requests to {dev_name} at addresses it never used while learning, within {}: a register sweep",
                            t.client,
                            distinct.len(),
                            format_duration(window)
                        ),
                        false,
                    ));
                }
            }
        }
        // Exceptions to the requests a client always makes are a failing device (the
        // staleness detector's business), not probing.
        let routine = learn_rules && c.known.contains(&(t.device, t.function, t.address));
        if matches!(t.outcome, Outcome::Exception(_)) && !routine {
            c.exceptions.push_back(t.ts);
            while c.exceptions.front().is_some_and(|&ts| t.ts - ts > window) {
                c.exceptions.pop_front();
            }
            if c.exceptions.len() > burst_limit {
                found.push((
                    c.exceptions.len() as f64 / burst_limit as f64,
                    Severity::High,
                    attack::REMOTE_SYSTEM_DISCOVERY,
                    format!(
                        "{} drew {} exception responses within {}: probing for units and registers",
                        t.client,
                        c.exceptions.len(),
                        format_duration(window)
                    ),
                    true,
                ));
            }
        }
        for (score, severity, technique, reason, recon) in found {
            let on = if recon {
                self.anchor(&t.client, t.device)
            } else {
                t.device
            };
            out.push(finding(
                t.ts,
                on,
                score,
                severity,
                technique,
                reason,
                evidence(),
            ));
        }
        self.scan(&t.client, t.ts, t.device, out, &evidence);
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
            protocol: WireProtocol::Modbus,
            property: None,
            value: None,
        }
    }

    fn run(cmds: &[Command]) -> Vec<Finding> {
        let mut reg = Registry::new(100);
        let mut d = Protocol::new(ProtocolParams::default(), Arc::default());
        let mut out = Vec::new();
        for c in cmds {
            let dev = reg.intern_device(&c.site, &c.device, "").unwrap();
            d.command(c, dev, &reg, &mut out);
        }
        out
    }

    #[test]
    fn bacnet_writes_are_judged_by_writer_and_object_map() {
        let bacnet =
            |ts: Ts, client: &str, function: u8, object: &str, property: u32, value: f64| {
                let object: crate::protocol::bacnet::ObjectId = object.parse().unwrap();
                Command {
                    address: object.to_u32(),
                    values: Vec::new(),
                    protocol: WireProtocol::Bacnet,
                    property: Some(property),
                    value: Some(value),
                    ..cmd(ts, client, "chiller-1", function)
                }
            };
        let mut reg = Registry::new(100);
        let dev = reg.intern_device("s", "chiller-1", "chiller").unwrap();
        let mut d = Protocol::new(ProtocolParams::default(), Arc::default());
        let mut judge = |c: Command| {
            let mut out = Vec::new();
            d.command(&c, dev, &reg, &mut out);
            out
        };
        // The BMS commands the setpoint while the detector learns: routine.
        assert!(judge(bacnet(0, "bms", 15, "analog-value:1", 85, 7.0)).is_empty());
        assert!(judge(bacnet(4_000_000, "bms", 15, "analog-value:1", 85, 7.5)).is_empty());
        // A stranger's setpoint, then the same value again (routine), then another.
        let out = judge(bacnet(
            4_000_001,
            "10.66.0.99",
            15,
            "analog-value:1",
            85,
            13.0,
        ));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].reason().contains("not a known writer"),
            "{}",
            out[0].reason()
        );
        assert!(judge(bacnet(
            4_000_002,
            "10.66.0.99",
            15,
            "analog-value:1",
            85,
            13.0
        ))
        .is_empty());
        assert_eq!(
            judge(bacnet(
                4_000_003,
                "10.66.0.99",
                15,
                "analog-value:1",
                85,
                14.0
            ))
            .len(),
            1
        );
        // Even the BMS may not put a sensor out of service or write a measured value.
        let out = judge(bacnet(4_000_004, "bms", 15, "analog-input:1", 81, 1.0));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].reason().contains("out-of-service of analog-input:1"),
            "{}",
            out[0].reason()
        );
        assert!(out[0]
            .reason()
            .contains("chiller-bacnet does not list as writable"));
        // Silencing and restarting a device.
        let out = judge(bacnet(4_000_005, "bms", 17, "device:1005", 0, 0.0));
        assert_eq!(out[0].technique.id, "T0804");
        let out = judge(bacnet(4_000_006, "bms", 20, "device:1005", 0, 0.0));
        assert_eq!(out[0].technique.id, "T0816");
        // Reads and subscriptions are nothing.
        assert!(judge(bacnet(4_000_007, "bms", 14, "analog-input:1", 85, 0.0)).is_empty());
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
        cmds.push(cmd(1000, "y", "unit-0", 3));
        cmds.extend((0..12).map(|i| cmd(4_000_000 + i, "y", &format!("unit-{i}"), 3)));
        let out = run(&cmds);
        assert!(
            out.iter().any(
                |f| f.reason().contains("addressed 9 devices") && f.reason().contains("a scan")
            ),
            "the device it read while learning does not count: {out:?}"
        );
        assert_eq!(out[0].technique.id, "T0846");
        assert!(out.iter().any(|f| f.reason().contains("a scan")));
        assert_eq!(
            run(&[cmd(0, "y", "ups-1", 3)]).len(),
            0,
            "one ordinary read is nothing"
        );
    }

    /// Runs exchanges `(ts, client, device, function, address, outcome)` after one
    /// learned exchange of the BMS at time 0.
    fn wire(params: ProtocolParams, ex: &[(Ts, &str, &str, u8, u16, Outcome)]) -> Vec<Finding> {
        let mut reg = Registry::new(1000);
        let mut d = Protocol::new(params, Arc::default());
        let mut out = Vec::new();
        for &(ts, client, device, function, address, outcome) in ex {
            let dev = reg.intern_device("s", device, "chiller").unwrap();
            let t = Traffic {
                ts,
                device: dev,
                client: Arc::from(client),
                function,
                address,
                count: 1,
                outcome,
            };
            d.traffic(&t, &reg, &mut out);
        }
        out
    }

    const LATER: Ts = 4_000_000;

    #[test]
    fn new_talkers_are_reported_once_and_learned_ones_never() {
        let ok = Outcome::Answered;
        let out = wire(
            ProtocolParams::default(),
            &[
                (0, "bms", "chiller-1", 3, 1000, ok),
                (LATER, "bms", "chiller-1", 3, 1000, ok),
                (LATER + 1, "10.9.9.9", "chiller-1", 3, 1000, ok),
                (LATER + 2, "10.9.9.9", "chiller-1", 3, 1000, ok),
            ],
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].reason().contains("new talker"));
    }

    #[test]
    fn exception_bursts_sweeps_and_floods() {
        let mut ex = vec![(0, "bms", "chiller-1", 3, 1000, Outcome::Answered)];
        // A sweep: 12 addresses never read while learning, each refused.
        ex.extend((0..12u16).map(|i| {
            (
                LATER + Ts::from(i),
                "bms",
                "chiller-1",
                3,
                2000 + i,
                Outcome::Exception(2),
            )
        }));
        let out = wire(ProtocolParams::default(), &ex);
        assert!(out
            .iter()
            .any(|f| f.reason().contains("exception responses")));
        assert!(out.iter().any(|f| f.reason().contains("register sweep")));
        assert!(!out.iter().any(|f| f.reason().contains("new talker")));
        // A flood: 61 reads within a minute from a client that read once a minute.
        let mut ex = vec![(0, "bms", "chiller-1", 3, 1000, Outcome::Answered)];
        ex.extend((0..61).map(|i| {
            (
                LATER + i * 100,
                "bms",
                "chiller-1",
                3,
                1000,
                Outcome::Answered,
            )
        }));
        let out = wire(ProtocolParams::default(), &ex);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].technique.id, "T0814");
    }

    #[test]
    fn a_learning_stretch_shorter_than_a_minute_learns_a_rate_not_a_count() {
        // Learning for 3 s while the BMS polls ten times a second, then polling on at
        // the same pace for the rest of the minute: routine, not a flood.
        let params = ProtocolParams {
            learn: 3_000,
            ..ProtocolParams::default()
        };
        let poll = |from: Ts, to: Ts, every: Ts| {
            (from / every..to / every)
                .map(move |i| (i * every, "bms", "chiller-1", 3, 1000, Outcome::Answered))
        };
        let out = wire(params.clone(), &poll(0, 60_000, 100).collect::<Vec<_>>());
        assert!(out.is_empty(), "{out:?}");
        // Four and a half times that pace in a later minute is a flood.
        let mut ex: Vec<_> = poll(0, 60_000, 100).collect();
        ex.extend(poll(120_000, 180_000, 22));
        let out = wire(params, &ex);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].technique.id, "T0814");
        assert_eq!(per_minute(30, 0, (0, 3_000)), 600);
        assert_eq!(
            per_minute(30, 0, (0, 3_600_000)),
            30,
            "a whole minute learned"
        );
        assert_eq!(per_minute(2, 0, (59_990, 3_000)), 120, "at least a second");
        assert_eq!(per_minute(30, 0, (0, i64::MAX)), 30, "learning for ever");
    }

    #[test]
    fn unsolicited_and_malformed_frames_are_findings_even_while_learning() {
        let out = wire(
            ProtocolParams::default(),
            &[
                (0, "bms", "ups-1", 3, 0, Outcome::Unsolicited),
                (
                    1,
                    "bms",
                    "ups-1",
                    0,
                    0,
                    Outcome::Malformed("bad_mbap_length"),
                ),
            ],
        );
        assert_eq!(out[0].technique.id, "T0856");
        assert_eq!(out[1].technique.id, "T0866");
    }

    #[test]
    fn writes_outside_the_profile_are_findings_whoever_writes() {
        let mut reg = Registry::new(100);
        let dev = reg.intern_device("s", "chiller-1", "chiller").unwrap();
        let mut d = Protocol::new(ProtocolParams::default(), Arc::default());
        let mut out = Vec::new();
        // chiller-generic: 1201 is the writable setpoint, 1000 the measured supply.
        let mut c = cmd(0, "bms", "chiller-1", 6);
        d.command(&c, dev, &reg, &mut out);
        assert!(out.is_empty(), "{out:?}");
        c.address = 1000;
        d.command(&c, dev, &reg, &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].reason().contains("does not list as writable"),
            "{}",
            out[0].reason()
        );
    }

    /// One chiller on one detector, fed exchanges and writes in time order.
    struct Rig {
        reg: Registry,
        d: Protocol,
        out: Vec<Finding>,
        dev: DeviceId,
    }

    impl Rig {
        fn new() -> Self {
            let mut reg = Registry::new(100);
            let dev = reg.intern_device("s", "chiller-1", "chiller").unwrap();
            let d = Protocol::new(ProtocolParams::default(), Arc::default());
            Self {
                reg,
                d,
                out: Vec::new(),
                dev,
            }
        }

        fn read(&mut self, ts: Ts, client: &str, address: u16, outcome: Outcome) {
            let t = Traffic {
                ts,
                device: self.dev,
                client: Arc::from(client),
                function: 3,
                address,
                count: 1,
                outcome,
            };
            self.d.traffic(&t, &self.reg, &mut self.out);
        }

        fn write(&mut self, ts: Ts, client: &str, value: u16) {
            let c = Command {
                values: vec![value],
                ..cmd(ts, client, "chiller-1", 6)
            };
            self.d.command(&c, self.dev, &self.reg, &mut self.out);
        }

        fn about(&self, client: &str) -> Vec<&Finding> {
            self.out
                .iter()
                .filter(|f| f.evidence()["client"] == client)
                .collect()
        }
    }

    #[test]
    fn before_anything_is_learned_a_host_that_does_not_poll_is_no_writer() {
        let mut r = Rig::new();
        // The master polls and writes; an HMI reads once and writes within the window.
        for s in 0..3 {
            r.read(s * 1000, "bms", 1000, Outcome::Answered);
        }
        r.write(2_500, "bms", 700);
        r.read(3_000, "hmi", 1000, Outcome::Answered);
        r.write(4_000, "hmi", 710);
        assert!(r.out.is_empty(), "{:?}", r.out);
        // A host that only writes is found; its same write again is routine, another
        // value is not.
        r.write(5_000, "10.66.0.99", 900);
        r.write(6_000, "10.66.0.99", 900);
        r.write(7_000, "10.66.0.99", 950);
        let rogue = r.about("10.66.0.99");
        assert_eq!(rogue.len(), 2, "{rogue:?}");
        assert!(
            rogue[0].reason().contains("reads nothing"),
            "{}",
            rogue[0].reason()
        );
        assert_eq!(rogue[0].technique.id, "T0836");
        assert_eq!(r.d.routine_rewrites, 1);
        // A host that read once, long ago, and never polled.
        r.read(8_000, "lurker", 1000, Outcome::Answered);
        r.write(70_000, "lurker", 700);
        let lurker = r.about("lurker");
        assert_eq!(lurker.len(), 1, "{lurker:?}");
        assert!(
            lurker[0].reason().contains("polls no device"),
            "{}",
            lurker[0].reason()
        );
        // Learned meanwhile: the master and the HMI write on after the learning hour.
        r.write(LATER, "bms", 720);
        r.write(LATER, "hmi", 720);
        assert!(r.about("bms").is_empty() && r.about("hmi").is_empty());
    }

    #[test]
    fn before_anything_is_learned_probing_and_sweeps_are_found_and_a_failing_device_is_not() {
        let mut r = Rig::new();
        // The master polls four ranges of a device that refuses them all, for a minute.
        for s in 0..60 {
            for a in 0..4 {
                r.read(
                    s * 1000 + a,
                    "bms",
                    1000 + 10 * a as u16,
                    Outcome::Exception(11),
                );
            }
        }
        assert!(
            r.out.is_empty(),
            "a failing device is not probing: {:?}",
            r.out
        );
        // A prober: twelve addresses it never asked for, each refused.
        for a in 0..12 {
            r.read(61_000 + a, "prober", 5000 + a as u16, Outcome::Exception(2));
        }
        let p = r.about("prober");
        assert!(
            !p.is_empty() && p.iter().all(|f| f.reason().contains("probing")),
            "{p:?}"
        );
        assert_eq!(p[0].technique.id, "T0846");
        // A sweeper: forty registers read once each, all answered.
        for a in 0..40 {
            r.read(62_000 + a, "sweeper", 100 + a as u16, Outcome::Answered);
        }
        let w = r.about("sweeper");
        assert!(
            !w.is_empty() && w.iter().all(|f| f.reason().contains("register sweep")),
            "{w:?}"
        );
        assert!(r.about("bms").is_empty());
    }

    #[test]
    fn learning_starts_with_the_capture_not_with_its_first_write() {
        // Two hours of readings, then the capture's first write: an intruder's, judged.
        let mut h = crate::detect::testkit::Harness::new();
        let mut d = Protocol::new(ProtocolParams::default(), Arc::default());
        h.run(&mut d, "chiller", "supply_temp_c", &[10.0; 7200]);
        let dev = h.reg.intern_device("site", "dev-1", "chiller").unwrap();
        let mut out = Vec::new();
        d.command(
            &cmd(7_200_000, "10.66.0.99", "dev-1", 6),
            dev,
            &h.reg,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].reason().contains("not a known writer"),
            "{}",
            out[0].reason()
        );
    }

    #[test]
    fn a_baseline_learned_elsewhere_judges_from_the_first_packet() {
        // Last week: the master polls chiller-1 and writes its setpoint.
        let mut learner = Protocol::learner(ProtocolParams::default(), Arc::default());
        let mut last_week = Rig::new();
        std::mem::swap(&mut last_week.d, &mut learner);
        for s in 0..10 {
            last_week.read(s * 1000, "bms", 1000, Outcome::Answered);
        }
        last_week.write(10_500, "bms", 700);
        assert!(last_week.out.is_empty());
        let text = last_week
            .d
            .baseline(&last_week.reg, "last week".into())
            .to_toml();
        let baseline = Baseline::from_toml(&text, "b.toml").unwrap();
        assert_eq!(
            (baseline.exception.len(), baseline.talker.len()),
            (1, 1),
            "{text}"
        );

        // Today, judged against it from the first packet (no learning hour): the
        // master is quiet; a new talker, a new writer and a new range are not.
        let mut today = Rig::new();
        today.d.adopt(&baseline);
        today.read(0, "bms", 1000, Outcome::Answered);
        today.write(500, "bms", 710);
        assert!(today.out.is_empty(), "{:?}", today.out);
        today.read(1_000, "10.9.9.9", 1000, Outcome::Answered);
        today.write(2_000, "10.66.0.99", 900);
        let reasons: Vec<_> = today.out.iter().map(|f| f.reason()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("new talker")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("not a known writer")),
            "{reasons:?}"
        );
        assert!(
            today.d.notes()[0].contains("judged against a baseline"),
            "{:?}",
            today.d.notes()
        );
    }
}
