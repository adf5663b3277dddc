//! Findings → alerts → incidents that tell the story.
//!
//! - One open alert per (device, detector, metrics): repeated findings update it (peak
//!   score, latest time, count); its severity is the highest any finding earned, raised
//!   one level when a score reaches 3× its threshold.
//! - An alert closes when no finding refreshed it for `clear_after` (and at least three of
//!   its device's sampling intervals) of event time.
//! - **One incident per cause.** Findings are *direct* evidence (a command on the wire, a
//!   broken physical relation, a device state change, a sensor frozen, replayed or
//!   silent) or *statistical* drift, which a plant reacting to anything also shows. A new
//!   alert joins an open incident of its site as a **consequence** when the incident's
//!   cause can reach its device ([`CorrelatorParams::reaches`]) while the cause unfolds: its leading
//!   alerts (direct evidence on the cause's device that started with it) are open or
//!   ended less than `propagation` ago (direct evidence: only within `propagation` of
//!   the cause's start). A drift after that on a metric the incident
//!   disturbed, within `incident_window` of its latest activity, is **recovery**.
//!   Anything else opens a new incident with the alert as its **cause**, even while
//!   another incident is still settling. A direct alert that explains an incident whose
//!   cause was a drift, within `propagation` of the drift's start, takes over as the
//!   cause (the drift becomes a consequence).
//!   Commands on the wire from one client belong to one incident whatever they touch.
//! - An incident's severity is its alerts' highest, raised one level when two devices or
//!   three detectors agree. It closes when its alerts are closed and `incident_window`
//!   has passed since its latest activity.
//! - Ids are derived from content (site, device, detector, metrics, start), so a capture
//!   always gives the same ids and a webhook receiver can use them as idempotency keys.

pub mod exceptions;

use crate::feature::FeatureStore;
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::vocabulary::{self, MetricClass};
use crate::model::{Alert, AlertStatus, DeviceKind, Finding, Incident, Role, Severity, Ts};
use crate::time::serde_duration;
use crate::tomlfile::{rule, Broken};
use exceptions::Exceptions;
use rustc_hash::FxHashMap;
use serde::Deserialize;

/// How findings become alerts and incidents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelatorParams {
    /// An alert closes after this long without a finding (at least 3 of the device's
    /// intervals). Default `"2m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub clear_after: i64,
    /// A drift joins an incident as recovery if it starts within this long of the
    /// incident's latest activity; an incident closes this long after it. Default `"15m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub incident_window: i64,
    /// How long after its direct evidence ends a cause still explains new anomalies on
    /// the devices it reaches, and how long after it starts its direct effects on other
    /// devices may show (heat and power take time to travel). Default `"10m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub propagation: i64,
    /// Open incidents kept per site; past it the oldest closes. Default 64.
    pub max_open_incidents: usize,
    /// A site's own device kinds placed in the power or cooling chain (`pump =
    /// "cooling"`), so incidents know what they can reach. Default: none.
    pub chains: std::collections::BTreeMap<String, Chain>,
}

impl Default for CorrelatorParams {
    fn default() -> Self {
        Self {
            clear_after: 120_000,
            incident_window: 900_000,
            propagation: 600_000,
            max_open_incidents: 64,
            chains: Default::default(),
        }
    }
}

impl CorrelatorParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.clear_after >= 1, "clear_after", "must be at least 1ms")?;
        rule(
            self.incident_window >= 0,
            "incident_window",
            "must not be negative",
        )?;
        rule(self.propagation >= 0, "propagation", "must not be negative")?;
        rule(
            (1..=10_000).contains(&self.max_open_incidents),
            "max_open_incidents",
            "must be 1 to 10000",
        )?;
        rule(
            !self.chains.keys().any(|k| {
                matches!(
                    k.as_str(),
                    "grid_meter" | "ups" | "pdu" | "chiller" | "crah" | "env"
                )
            }),
            "chains",
            "names a site's own kinds; the built-in ones have their chain",
        )
    }
}

/// What the correlator emits: a new or changed alert or incident (a full snapshot).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An alert opened, escalated, closed or given another role.
    Alert(Alert),
    /// An incident opened, changed or closed.
    Incident(Incident),
}

/// Device, detector, metrics, and the client a command finding names: one actor's
/// doing is one alert, and another client on the same device is another.
pub(crate) type AlertKey = (DeviceId, &'static str, Vec<String>, Option<String>);

/// Whether a detector's findings are direct evidence of tampering rather than
/// statistical drift (which the plant's own reaction to anything also produces).
pub fn direct(detector: &str) -> bool {
    !matches!(
        detector,
        "ewma_z" | "extreme" | "seasonal" | "cusum" | "iforest" | "residual" | "timescale"
    )
}

/// The chain a device kind belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// Grid meter → UPS → PDU → IT load, and a site's own power kinds.
    Power,
    /// Chiller → CRAH → room, and a site's own cooling kinds.
    Cooling,
}

impl CorrelatorParams {
    fn chain(&self, kind: &str) -> Option<Chain> {
        match kind {
            "grid_meter" | "ups" | "pdu" => Some(Chain::Power),
            "chiller" | "crah" | "env" => Some(Chain::Cooling),
            _ => self.chains.get(kind).copied(),
        }
    }

    /// Whether an anomaly on a device of kind `from` can show on one of kind `to` at the
    /// same site. Power flows grid meter → UPS → PDU → IT load, and every draw shows on
    /// the grid meter; the load's heat and the UPS losses are what the cooling chain
    /// (chiller → CRAH → room) removes, and the chillers run on the same supply. So a
    /// power anomaly can reach any device, a cooling anomaly the cooling chain and the
    /// grid meter (the chillers' draw) but not the UPS units or PDUs. A site's own kinds
    /// join a chain through `[correlator.chains]`; kinds in neither are taken as coupled
    /// with everything.
    pub fn reaches(&self, from: &str, to: &str) -> bool {
        match (self.chain(from), self.chain(to)) {
            (Some(Chain::Cooling), Some(Chain::Power)) => to == "grid_meter",
            _ => true,
        }
    }
}

/// The client a command finding names, if any.
fn client(a: &Alert) -> Option<&str> {
    (a.detector == "protocol")
        .then(|| a.evidence.get("client").and_then(serde_json::Value::as_str))
        .flatten()
}

struct OpenIncident {
    incident: Incident,
    open_alerts: usize,
    max_alert: Severity,
    /// The cause's latest snapshot (kept to give it another role after it closed).
    cause: Alert,
    /// Its leading alerts still open (see [`OpenIncident::leads`]).
    leading_open: usize,
    /// Event time of the latest finding of a leading alert (`None`: all drift so far).
    leading_last: Option<Ts>,
    /// `device/metric` of every metric its alerts named: what it disturbed.
    disturbed: rustc_hash::FxHashSet<String>,
}

impl OpenIncident {
    /// Whether an alert carries the cause itself, not an effect of it: direct evidence on
    /// the cause's device that started with the cause (a write, then the relation it
    /// broke; a breaker opening, then its state). While one is open, or until
    /// `propagation` after its last finding, the cause is unfolding.
    fn leads(&self, a: &Alert, p: &CorrelatorParams) -> bool {
        direct(a.detector)
            && a.device == self.cause.device
            && a.ts >= self.cause.ts
            && a.ts - self.cause.ts <= p.propagation
    }

    /// Whether a drift is the plant settling back from this incident: a metric (or, for
    /// a device-wide alert, a device) the incident already disturbed.
    fn settling(&self, a: &Alert) -> bool {
        if a.metrics.is_empty() {
            return self.incident.devices.contains(&a.device);
        }
        a.metrics.iter().any(|m| {
            self.disturbed
                .contains(&disturbed_key(&a.device, &a.kind, m))
        })
    }

    /// Notes what an alert shows the incident moved: the one metric a single-metric
    /// alert names. A relation or a device's whole telemetry (physics, the forest)
    /// names metrics that need not have moved (a forest's attribution names a flow that
    /// only looked odd beside replayed temperatures), and a later drift of one of those
    /// is not the plant settling back.
    fn disturb(&mut self, a: &Alert) {
        if let [m] = a.metrics.as_slice() {
            self.disturbed.insert(disturbed_key(&a.device, &a.kind, m));
        }
    }

    /// Whether the cause still explains new anomalies at `ts`.
    fn unfolding(&self, ts: Ts, p: &CorrelatorParams) -> bool {
        match self.leading_last {
            Some(t) => self.leading_open > 0 || ts - t <= p.propagation,
            // An incident of drifts alone unfolds as long as drifts keep coming.
            None => ts - self.incident.end <= p.incident_window,
        }
    }
}

/// What an incident records of a metric it disturbed. A device's temperatures are one
/// thermal state, coupled by the heat it moves (a chiller's supply and return water
/// through the load it carries, a CRAH's supply and return air through its coil and the
/// room): one disturbed, the others settle back with it. Any other metric stands alone
/// (a flow or a fan speed is driven, and its drift is news).
fn disturbed_key(device: &str, kind: &str, metric: &str) -> String {
    let thermal = vocabulary::lookup(DeviceKind::parse(kind), metric)
        .is_some_and(|s| s.unit == "°C" && s.class == MetricClass::Analog);
    if thermal {
        format!("{device}/°C")
    } else {
        format!("{device}/{metric}")
    }
}

/// The correlator.
pub struct Correlator {
    cfg: CorrelatorParams,
    open: FxHashMap<AlertKey, Alert>,
    /// Open alerts per point they name.
    suspects: FxHashMap<PointId, u32>,
    /// Per open alert that judges values, the metrics it holds suspect and when a
    /// finding last named each: a whole-device alert lets one go once its findings have
    /// stopped naming it for as long as would close an alert, so a long anomaly does not
    /// freeze every baseline it touched once.
    named: FxHashMap<AlertKey, Vec<(String, Ts)>>,
    /// Open incidents per site, oldest first.
    incidents: FxHashMap<String, Vec<OpenIncident>>,
    /// What analysts taught as expected.
    exceptions: Exceptions,
    /// Findings an exception covered.
    excepted: u64,
}

/// A stable 64-bit FNV-1a hash, for content-derived ids.
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// A finding's severity as an alert: raised a step when it scores 3× its threshold.
fn severity_of(f: &Finding) -> Severity {
    if f.score >= 3.0 * f.threshold {
        f.severity.raised()
    } else {
        f.severity
    }
}

/// Whether a detector scores a device's whole vector at once (the forest, the
/// multivariate residual): the metrics its findings name say which features stood out
/// most, and that shifts from one run of frames to the next while the device is the same
/// anomaly, so its findings are one alert per device, naming every metric they named.
fn whole_device(detector: &str) -> bool {
    matches!(detector, "iforest" | "residual")
}

/// The alert a finding belongs to: one actor's doing on one device by one detector.
pub(crate) fn key_of(f: &Finding) -> AlertKey {
    // Only a command names its actor: only its evidence is read.
    let actor = (f.detector == "protocol")
        .then(|| {
            f.evidence()
                .get("client")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .flatten();
    let metrics = if whole_device(f.detector) {
        Vec::new()
    } else {
        f.metrics.clone()
    };
    (f.device, f.detector, metrics, actor)
}

/// A new alert for `key` from its first finding (its id derived from both, so the same
/// capture always gives the same ids), not yet placed in an incident.
fn new_alert(key: &AlertKey, f: Finding, reg: &Registry) -> Alert {
    let severity = severity_of(&f);
    let (summary, evidence) = f.words.into_parts();
    let dev = reg.device(key.0);
    let metrics_joined = key.2.join(",");
    let ts = f.ts.to_le_bytes();
    let mut parts = vec![
        dev.site.as_bytes(),
        dev.name.as_bytes(),
        key.1.as_bytes(),
        metrics_joined.as_bytes(),
    ];
    parts.extend(key.3.as_deref().map(str::as_bytes));
    parts.push(&ts);
    Alert {
        id: format!("al-{:016x}", fnv(&parts)),
        ts: f.ts,
        // The sinks stamp the wall time (`sink::Stamp`).
        detected_at: String::new(),
        site: dev.site.clone(),
        device: dev.name.clone(),
        kind: dev.kind_name.clone(),
        metrics: f.metrics,
        detector: key.1,
        score: f.score,
        threshold: f.threshold,
        severity,
        technique: f.technique,
        summary,
        evidence,
        incident_id: String::new(),
        role: Role::Cause,
        status: AlertStatus::Open,
        last_seen: f.ts,
        findings: 1,
        early: false,
    }
}

/// Where a new alert goes.
enum Place {
    /// Into the incident at this index, in this role (a cause takes the incident over).
    Join(usize, Role),
    /// A new incident.
    Open,
}

impl Correlator {
    /// A correlator with nothing open.
    pub fn new(cfg: CorrelatorParams) -> Self {
        Self {
            cfg,
            open: FxHashMap::default(),
            suspects: FxHashMap::default(),
            named: FxHashMap::default(),
            incidents: FxHashMap::default(),
            exceptions: Exceptions::default(),
            excepted: 0,
        }
    }

    /// Applies these exceptions from now on (a shared set: changes to it apply live).
    pub fn set_exceptions(&mut self, e: Exceptions) {
        self.exceptions = e;
    }

    /// Findings an exception covered so far.
    pub fn excepted(&self) -> u64 {
        self.excepted
    }

    /// The id of the open alert a finding of `key` would fold into.
    pub(crate) fn open_id(&self, key: &AlertKey) -> Option<&str> {
        self.open.get(key).map(|a| a.id.as_str())
    }

    /// The alert a finding (of alert `key`, [`key_of`]) would open now, raised before its
    /// turn (on arrival, see [`crate::pipeline`]): `None` when an exception covers it or
    /// its alert is already open. Changes nothing: the finding is folded in when its turn
    /// comes.
    pub(crate) fn early(&self, key: &AlertKey, f: Finding, reg: &Registry) -> Option<Alert> {
        let dev = reg.device(f.device);
        if self.exceptions.covers(&dev.site, &dev.name, &f) || self.open.contains_key(key) {
            return None;
        }
        let mut alert = new_alert(key, f, reg);
        alert.early = true;
        Some(alert)
    }

    /// Folds one finding in; emits the alert (and incident) if it is new or escalated.
    pub fn observe(&mut self, f: Finding, reg: &Registry, out: &mut Vec<Output>) {
        let dev = reg.device(f.device);
        if self.exceptions.covers(&dev.site, &dev.name, &f) {
            self.excepted += 1;
            return;
        }
        let severity = severity_of(&f);
        let key = key_of(&f);
        if judges_values(key.1) {
            hold(
                &mut self.named,
                &mut self.suspects,
                reg,
                &key,
                &f.metrics,
                f.ts,
            );
        }
        if let Some(a) = self.open.get_mut(&key) {
            a.last_seen = a.last_seen.max(f.ts);
            a.findings += 1;
            // A whole-device alert names what each run of its findings named (a device's
            // metrics bound the list).
            for m in f.metrics {
                if !a.metrics.contains(&m) {
                    a.metrics.push(m);
                }
            }
            if f.score > a.score {
                a.score = f.score;
                (a.summary, a.evidence) = f.words.into_parts();
            }
            let escalated = severity > a.severity;
            if escalated {
                a.severity = severity;
                out.push(Output::Alert(a.clone()));
            }
            // The open alert and its incident are different fields: no copy of either
            // on this path, which every repeated finding takes.
            if let Some(inc) = find_incident(&mut self.incidents, &a.site, &a.incident_id) {
                inc.incident.end = inc.incident.end.max(a.last_seen);
                if inc.leads(a, &self.cfg) {
                    inc.leading_last = inc.leading_last.max(Some(a.last_seen));
                }
                if inc.cause.id == a.id {
                    inc.cause = a.clone();
                }
                if escalated {
                    let headline = headline(&inc.cause, &inc.incident);
                    if refresh_severity(inc, a.severity) || headline != inc.incident.headline {
                        inc.incident.headline = headline;
                        out.push(Output::Incident(inc.incident.clone()));
                    }
                }
            }
            return;
        }
        let mut alert = new_alert(&key, f, reg);
        self.place(&mut alert, out);
        out.push(Output::Alert(alert.clone()));
        self.open.insert(key, alert);
    }

    /// Whether an open alert names `point` (its baseline does not learn meanwhile).
    pub fn suspect(&self, point: PointId) -> bool {
        // Called for every reading: most of the time nothing is suspect, and an empty
        // map answers without hashing.
        !self.suspects.is_empty() && self.suspects.contains_key(&point)
    }

    /// Which open incident of its site explains a new alert, and how.
    fn explain(&self, a: &Alert) -> Place {
        let Some(incs) = self.incidents.get(&a.site) else {
            return Place::Open;
        };
        let p = &self.cfg;
        let is_direct = direct(a.detector);
        // One client's commands are one actor's doing, whatever device they touch.
        if let Some(c) = client(a) {
            if let Some(i) = incs
                .iter()
                .rposition(|i| client(&i.cause) == Some(c) && i.unfolding(a.ts, p))
            {
                return Place::Join(i, Role::Consequence);
            }
        }
        // Newest first: the latest cause is the likeliest explanation.
        for (i, inc) in incs.iter().enumerate().rev() {
            if !p.reaches(&inc.cause.kind, &a.kind) || !inc.unfolding(a.ts, p) {
                continue;
            }
            if client(a).is_some() && client(&inc.cause).is_some() {
                // Another client's command is another actor's doing, not an effect.
                continue;
            }
            if is_direct && a.ts - inc.cause.ts > p.propagation {
                // A cause's direct effects show promptly (a breaker opening stops the
                // chillers now), and a drift's cause does not show long after the drift
                // began: direct evidence long after an incident started is a cause of its
                // own, however long the first takes to settle.
                continue;
            }
            if is_direct && inc.leading_last.is_none() && p.reaches(&a.kind, &inc.cause.kind) {
                // Direct evidence behind a drift it can explain: the real cause.
                return Place::Join(i, Role::Cause);
            }
            return Place::Join(i, Role::Consequence);
        }
        if !is_direct {
            if let Some(i) = incs
                .iter()
                .rposition(|inc| inc.settling(a) && a.ts - inc.incident.end <= p.incident_window)
            {
                return Place::Join(i, Role::Recovery);
            }
        }
        Place::Open
    }

    /// Gives a new alert its incident and role, emitting what changed.
    fn place(&mut self, a: &mut Alert, out: &mut Vec<Output>) {
        match self.explain(a) {
            Place::Join(i, role) => {
                let incs = self.incidents.get_mut(&a.site).expect("explained by one");
                let inc = &mut incs[i];
                a.incident_id = inc.incident.id.clone();
                a.role = role;
                if role == Role::Cause {
                    // The drift that opened it becomes what it is: a consequence.
                    let old = std::mem::replace(&mut inc.cause, a.clone());
                    let demoted = self
                        .open
                        .values_mut()
                        .find(|o| o.id == old.id)
                        .map(|o| {
                            o.role = Role::Consequence;
                            o.clone()
                        })
                        .unwrap_or(Alert {
                            role: Role::Consequence,
                            ..old
                        });
                    inc.incident.cause = a.id.clone();
                    push_unique(&mut inc.incident.affected, demoted.device.clone());
                    out.push(Output::Alert(demoted));
                }
                inc.open_alerts += 1;
                if role == Role::Cause {
                    // Leading alerts are counted from the new cause.
                    let (id, p) = (inc.incident.id.clone(), &self.cfg);
                    let leading: Vec<Ts> = self
                        .open
                        .values()
                        .filter(|o| o.incident_id == id && inc.leads(o, p))
                        .map(|o| o.last_seen)
                        .collect();
                    inc.leading_open = leading.len();
                    inc.leading_last = leading.into_iter().max();
                }
                if inc.leads(a, &self.cfg) {
                    inc.leading_open += 1;
                    inc.leading_last = inc.leading_last.max(Some(a.ts));
                }
                inc.disturb(a);
                let i = &mut inc.incident;
                i.end = i.end.max(a.ts);
                i.alerts.push(a.id.clone());
                push_unique(&mut i.devices, a.device.clone());
                push_unique(&mut i.detectors, a.detector);
                push_unique(&mut i.techniques, a.technique.id);
                if role != Role::Cause && a.device != inc.cause.device {
                    push_unique(&mut i.affected, a.device.clone());
                }
                i.affected.retain(|d| *d != inc.cause.device);
                refresh_severity(inc, a.severity);
                let i = &mut inc.incident;
                i.summary = incident_summary(i);
                i.headline = headline(&inc.cause, i);
                out.push(Output::Incident(i.clone()));
            }
            Place::Open => {
                let id = format!(
                    "in-{:016x}",
                    fnv(&[a.site.as_bytes(), a.id.as_bytes(), &a.ts.to_le_bytes()])
                );
                a.incident_id = id.clone();
                a.role = Role::Cause;
                let mut i = Incident {
                    id,
                    site: a.site.clone(),
                    start: a.ts,
                    end: a.ts,
                    severity: a.severity,
                    alerts: vec![a.id.clone()],
                    devices: vec![a.device.clone()],
                    detectors: vec![a.detector],
                    techniques: vec![a.technique.id],
                    summary: String::new(),
                    cause: a.id.clone(),
                    headline: String::new(),
                    affected: Vec::new(),
                    status: AlertStatus::Open,
                };
                i.summary = incident_summary(&i);
                i.headline = headline(a, &i);
                out.push(Output::Incident(i.clone()));
                let is_direct = direct(a.detector);
                let incs = self.incidents.entry(a.site.clone()).or_default();
                let mut inc = OpenIncident {
                    incident: i,
                    open_alerts: 1,
                    max_alert: a.severity,
                    cause: a.clone(),
                    leading_open: usize::from(is_direct),
                    leading_last: is_direct.then_some(a.ts),
                    disturbed: Default::default(),
                };
                inc.disturb(a);
                incs.push(inc);
                if incs.len() > self.cfg.max_open_incidents {
                    let mut oldest = incs.remove(0).incident;
                    oldest.status = AlertStatus::Closed;
                    out.push(Output::Incident(oldest));
                }
            }
        }
    }

    /// Closes alerts that went quiet and incidents whose alerts are all closed and whose
    /// window has passed, as of event time `now`.
    pub fn tick(&mut self, now: Ts, reg: &Registry, store: &FeatureStore, out: &mut Vec<Output>) {
        let clear = self.cfg.clear_after;
        let mut closed = Vec::new();
        let mut cleared = Vec::new();
        let named = &mut self.named;
        self.open.retain(|key, a| {
            let interval = reg
                .device(key.0)
                .points
                .iter()
                .filter_map(|&p| store.points().get(p as usize))
                .map(|s| s.interval_ms)
                .filter(|&i| i > 0.0)
                .fold(0.0f64, f64::max);
            let quiet = (clear as f64).max(3.0 * interval);
            let open = ((now - a.last_seen) as f64) < quiet;
            if let Some(held) = named.get_mut(key) {
                held.retain(|(m, ts)| {
                    let kept = open && ((now - ts) as f64) < quiet;
                    if !kept {
                        cleared.extend(named_points(reg, key.0, std::slice::from_ref(m)));
                    }
                    kept
                });
                if held.is_empty() {
                    named.remove(key);
                }
            }
            if open {
                return true;
            }
            a.status = AlertStatus::Closed;
            closed.push(a.clone());
            false
        });
        for p in cleared {
            if let Some(n) = self.suspects.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.suspects.remove(&p);
                }
            }
        }
        closed.sort_by(|a, b| (a.last_seen, &a.id).cmp(&(b.last_seen, &b.id)));
        for a in closed {
            if let Some(inc) = find_incident(&mut self.incidents, &a.site, &a.incident_id) {
                inc.open_alerts = inc.open_alerts.saturating_sub(1);
                if inc.leads(&a, &self.cfg) {
                    inc.leading_open = inc.leading_open.saturating_sub(1);
                }
                if inc.cause.id == a.id {
                    inc.cause = a.clone();
                }
            }
            out.push(Output::Alert(a));
        }
        let window = self.cfg.incident_window;
        let mut sites: Vec<&String> = self.incidents.keys().collect();
        sites.sort();
        let mut done = Vec::new();
        for site in sites {
            for inc in &self.incidents[site] {
                if inc.open_alerts == 0 && now - inc.incident.end > window {
                    done.push((site.clone(), inc.incident.id.clone()));
                }
            }
        }
        for (site, id) in done {
            let Some(incs) = self.incidents.get_mut(&site) else {
                continue;
            };
            if let Some(at) = incs.iter().position(|i| i.incident.id == id) {
                let mut i = incs.remove(at).incident;
                i.status = AlertStatus::Closed;
                out.push(Output::Incident(i));
            }
            if incs.is_empty() {
                self.incidents.remove(&site);
            }
        }
    }

    /// Alerts still open, oldest first (for end-of-capture reports).
    pub fn open_alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.open.values().collect();
        v.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        v
    }
}

/// Whether a detector's alert says the values of the points it names are not to be
/// trusted (so their baselines must not learn them): not a clock that jumped, a write
/// on the wire or a silence, which say nothing of the values themselves — and which a
/// forged line could otherwise use to freeze a baseline still settling.
fn judges_values(detector: &str) -> bool {
    !matches!(detector, "event_time" | "protocol" | "staleness")
}

/// Holds the points of `metrics` suspect for alert `key`, named by a finding at `ts`.
fn hold(
    named: &mut FxHashMap<AlertKey, Vec<(String, Ts)>>,
    suspects: &mut FxHashMap<PointId, u32>,
    reg: &Registry,
    key: &AlertKey,
    metrics: &[String],
    ts: Ts,
) {
    if !named.contains_key(key) {
        named.insert(key.clone(), Vec::new());
    }
    let held = named.get_mut(key).expect("just inserted");
    for m in metrics {
        match held.iter_mut().find(|(h, _)| h == m) {
            Some((_, last)) => *last = (*last).max(ts),
            None => {
                for p in named_points(reg, key.0, std::slice::from_ref(m)) {
                    *suspects.entry(p).or_default() += 1;
                }
                held.push((m.clone(), ts));
            }
        }
    }
}

/// The points of `device` that `metrics` name.
fn named_points<'a>(
    reg: &'a Registry,
    device: DeviceId,
    metrics: &'a [String],
) -> impl Iterator<Item = PointId> + 'a {
    reg.device(device)
        .points
        .iter()
        .copied()
        .filter(move |&p| metrics.contains(&reg.point(p).metric))
}

/// The open incident `id` of `site`.
fn find_incident<'a>(
    incidents: &'a mut FxHashMap<String, Vec<OpenIncident>>,
    site: &str,
    id: &str,
) -> Option<&'a mut OpenIncident> {
    incidents
        .get_mut(site)?
        .iter_mut()
        .find(|i| i.incident.id == id)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Sets an incident's severity from its highest alert severity, one level higher when
/// two devices or three detectors agree; returns whether it changed.
fn refresh_severity(inc: &mut OpenIncident, alert_severity: Severity) -> bool {
    inc.max_alert = inc.max_alert.max(alert_severity);
    let i = &mut inc.incident;
    let corroborated = i.devices.len() >= 2 || i.detectors.len() >= 3;
    let before = i.severity;
    i.severity = if corroborated {
        inc.max_alert.raised()
    } else {
        inc.max_alert
    };
    i.severity != before
}

fn incident_summary(i: &Incident) -> String {
    let alerts = i.alerts.len();
    format!(
        "{alerts} alert{} on {} at {} ({})",
        if alerts == 1 { "" } else { "s" },
        i.devices.join(", "),
        i.site,
        i.detectors.join(", ")
    )
}

/// The incident in one line: where it started and what was seen there (the cause's own
/// sentence names the client when a command was seen), the technique, how far it reached.
fn headline(cause: &Alert, i: &Incident) -> String {
    let reach = match i.affected.len() {
        0 => String::new(),
        n => format!(
            "; {n} more device{} affected ({})",
            if n == 1 { "" } else { "s" },
            i.affected.join(", ")
        ),
    };
    format!(
        "{} at {}: {} [{} {}]{reach}",
        cause.device, i.site, cause.summary, cause.technique.id, cause.technique.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{attack, Words};

    fn finding(
        reg: &mut Registry,
        device: &str,
        detector: &'static str,
        ts: Ts,
        score: f64,
    ) -> Finding {
        let p = reg
            .intern("s1", device, "chiller", "supply_temp_c")
            .unwrap();
        Finding {
            ts,
            device: reg.point(p).device,
            metrics: vec!["supply_temp_c".into()],
            detector,
            score,
            threshold: 6.0,
            severity: Severity::Low,
            technique: attack::MANIPULATION_OF_CONTROL,
            words: Words::made(format!("score {score}"), serde_json::json!({})),
        }
    }

    #[test]
    fn deferred_words_are_made_only_for_the_findings_an_alert_keeps() {
        // Findings of one alert whose scores rise, fall and rise: the alert keeps the
        // words of its first and of each stronger one; the others are never read.
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        let made = Arc::new(AtomicUsize::new(0));
        let scores = [7.0, 8.0, 7.5, 7.0, 9.0, 8.0, 8.5, 9.0];
        for (t, &score) in scores.iter().enumerate() {
            let made = Arc::clone(&made);
            let f = Finding {
                words: Words::later(move || {
                    made.fetch_add(1, Ordering::Relaxed);
                    (
                        format!("score {score}"),
                        serde_json::json!({ "score": score }),
                    )
                }),
                ..finding(&mut reg, "chiller-1", "ewma_z", t as Ts * 1000, score)
            };
            c.observe(f, &reg, &mut out);
        }
        assert_eq!(made.load(Ordering::Relaxed), 3, "7, 8 and 9 are kept");
        let open = c.open.values().next().expect("one open alert");
        assert_eq!(open.summary, "score 9");
        assert_eq!(open.evidence, serde_json::json!({ "score": 9.0 }));
    }

    fn alerts(out: &[Output]) -> Vec<&Alert> {
        out.iter()
            .filter_map(|o| {
                if let Output::Alert(a) = o {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn repeated_findings_update_one_alert_which_closes_when_quiet() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        for t in 0..10 {
            let f = finding(&mut reg, "chiller-1", "ewma_z", t * 1000, 7.0 + t as f64);
            c.observe(f, &reg, &mut out);
        }
        // Opened once, escalated once when the score passed 3× the threshold.
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{a:?}");
        c.observe(
            finding(&mut reg, "chiller-1", "ewma_z", 11_000, 19.0),
            &reg,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].severity, Severity::Medium);
        assert_eq!(a[0].id, a[1].id);
        out.clear();
        c.tick(100_000, &reg, &store, &mut out);
        assert!(alerts(&out).is_empty(), "not quiet long enough");
        c.tick(132_000, &reg, &store, &mut out);
        let a = alerts(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].status, a[0].findings, a[0].last_seen),
            (AlertStatus::Closed, 11, 11_000)
        );
    }

    #[test]
    fn a_forest_whose_attribution_shifts_is_one_alert_naming_every_metric_it_named() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        let crah = |reg: &mut Registry, metrics: &[&str], ts: Ts| {
            for m in metrics {
                reg.intern("s1", "crah-1", "crah", m).unwrap();
            }
            Finding {
                metrics: metrics.iter().map(|m| m.to_string()).collect(),
                ..on(reg, CRAH, "iforest", ts)
            }
        };
        let point = |reg: &Registry, m: &str| {
            reg.device(reg.point(0).device)
                .points
                .iter()
                .copied()
                .find(|&p| reg.point(p).metric == m)
                .unwrap()
        };
        // The room warming: first the supply air stands out, then both, then the return
        // air alone, and a heartbeat later the supply air again.
        c.observe(crah(&mut reg, &["supply_air_temp_c"], 0), &reg, &mut out);
        let runs: [&[&str]; 3] = [
            &["supply_air_temp_c", "return_air_temp_c"],
            &["return_air_temp_c"],
            &["supply_air_temp_c"],
        ];
        for (i, run) in runs.into_iter().enumerate() {
            c.observe(crah(&mut reg, run, (i as Ts + 1) * MIN), &reg, &mut out);
        }
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "one alert, one incident: {a:?}");
        assert_eq!(incidents(&out).len(), 1);
        // Both metrics are suspect (their baselines frozen) while findings name them.
        let (supply, ret) = (
            point(&reg, "supply_air_temp_c"),
            point(&reg, "return_air_temp_c"),
        );
        assert!(c.suspect(supply) && c.suspect(ret));
        // Then only the return air stands out for three minutes: the supply air's
        // baseline learns again, though the alert stays open.
        for t in 4..=6 {
            c.observe(
                crah(&mut reg, &["return_air_temp_c"], t * MIN),
                &reg,
                &mut out,
            );
        }
        c.tick(6 * MIN, &reg, &store, &mut out);
        assert_eq!(alerts(&out).len(), 1, "still open");
        assert!(!c.suspect(supply) && c.suspect(ret));
        // Quiet: it closes, and nothing is suspect.
        c.tick(10 * MIN, &reg, &store, &mut out);
        let closed = *alerts(&out).last().unwrap();
        assert_eq!(closed.status, AlertStatus::Closed);
        assert_eq!(closed.metrics, ["supply_air_temp_c", "return_air_temp_c"]);
        assert!(!c.suspect(supply) && !c.suspect(ret));
        // A detector of one metric still keeps an alert per metric.
        c.observe(on(&mut reg, CRAH, "ewma_z", 11 * MIN), &reg, &mut out);
        let other = ("crah-1", "crah", "return_air_temp_c");
        c.observe(on(&mut reg, other, "ewma_z", 11 * MIN), &reg, &mut out);
        let opened = alerts(&out)
            .iter()
            .filter(|a| a.detector == "ewma_z")
            .count();
        assert_eq!(opened, 2);
    }

    #[test]
    fn a_devices_temperatures_settle_together_and_what_a_forest_named_does_not() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        // A write stops the chiller; the room's CRAH warms (its supply air drifts) and
        // stands out as a whole, the forest naming its fan speed among what stood out.
        c.observe(on(&mut reg, CHILLER, "protocol", 0), &reg, &mut out);
        c.observe(on(&mut reg, CRAH, "ewma_z", MIN), &reg, &mut out);
        let fan = ("crah-1", "crah", "fan_speed_pct");
        let mut forest = on(&mut reg, CRAH, "iforest", MIN);
        forest.metrics.push("fan_speed_pct".into());
        c.observe(forest, &reg, &mut out);
        c.tick(11 * MIN, &reg, &store, &mut out);
        // Past the cause's reach, within the incident's window: the return air drifting
        // back is the plant settling; the fan speed drifting is news.
        let ret = ("crah-1", "crah", "return_air_temp_c");
        c.observe(on(&mut reg, ret, "timescale", 12 * MIN), &reg, &mut out);
        c.observe(on(&mut reg, fan, "timescale", 13 * MIN), &reg, &mut out);
        let l = last(&out);
        let cause = l.values().find(|a| a.detector == "protocol").unwrap();
        let by = |m: &str| {
            l.values()
                .find(|a| a.detector == "timescale" && a.metrics == [m])
                .unwrap()
        };
        let settling = by("return_air_temp_c");
        assert_eq!(settling.role, Role::Recovery);
        assert_eq!(settling.incident_id, cause.incident_id);
        assert_eq!(by("fan_speed_pct").role, Role::Cause);
    }

    /// A finding of `detector` on `device` (of `kind`) about `metric`.
    fn on(
        reg: &mut Registry,
        (device, kind, metric): (&str, &str, &str),
        detector: &'static str,
        ts: Ts,
    ) -> Finding {
        let p = reg.intern("s1", device, kind, metric).unwrap();
        Finding {
            metrics: vec![metric.into()],
            device: reg.point(p).device,
            ..finding(reg, device, detector, ts, 7.0)
        }
    }

    fn incidents(out: &[Output]) -> Vec<&Incident> {
        out.iter()
            .filter_map(|o| match o {
                Output::Incident(i) => Some(i),
                Output::Alert(_) => None,
            })
            .collect()
    }

    /// The last snapshot of each alert, by id.
    fn last(out: &[Output]) -> FxHashMap<String, Alert> {
        alerts(out)
            .into_iter()
            .map(|a| (a.id.clone(), a.clone()))
            .collect()
    }

    const CHILLER: (&str, &str, &str) = ("chiller-1", "chiller", "supply_temp_c");
    const CRAH: (&str, &str, &str) = ("crah-1", "crah", "supply_air_temp_c");
    const UPS: (&str, &str, &str) = ("ups-1", "ups", "input_power_kw");
    const MIN: Ts = 60_000;

    #[test]
    fn effects_join_their_cause_and_corroboration_raises_the_incident() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        c.observe(on(&mut reg, CHILLER, "protocol", 0), &reg, &mut out);
        c.observe(on(&mut reg, CRAH, "cusum", MIN), &reg, &mut out);
        let a = alerts(&out);
        assert_eq!(a[0].incident_id, a[1].incident_id);
        assert_eq!((a[0].role, a[1].role), (Role::Cause, Role::Consequence));
        let i = *incidents(&out).last().unwrap();
        assert_eq!(i.cause, a[0].id);
        assert_eq!(i.affected, ["crah-1"]);
        assert_eq!(
            i.severity,
            Severity::Medium,
            "two devices agree: low → medium"
        );
        assert!(
            i.headline
                .starts_with("chiller-1 at s1: score 7 [T0831 Manipulation of Control]")
                && i.headline.ends_with("1 more device affected (crah-1)"),
            "{}",
            i.headline
        );
    }

    #[test]
    fn direct_evidence_behind_a_drift_takes_over_as_the_cause() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        c.observe(on(&mut reg, CRAH, "ewma_z", 0), &reg, &mut out);
        c.observe(on(&mut reg, CHILLER, "physics", 3 * MIN), &reg, &mut out);
        let l = last(&out);
        let drift = l.values().find(|a| a.detector == "ewma_z").unwrap();
        let physics = l.values().find(|a| a.detector == "physics").unwrap();
        assert_eq!(drift.incident_id, physics.incident_id);
        assert_eq!((physics.role, drift.role), (Role::Cause, Role::Consequence));
        let i = *incidents(&out).last().unwrap();
        assert_eq!(
            (i.cause.as_str(), i.affected.as_slice()),
            (physics.id.as_str(), &["crah-1".to_owned()][..])
        );
    }

    #[test]
    fn direct_evidence_long_after_a_drift_began_is_a_cause_of_its_own() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        // A room drifting for half an hour, its alerts refreshed all along: the incident
        // of drifts unfolds. A broken relation 30 minutes in did not start it.
        for m in 0..30 {
            c.observe(on(&mut reg, CRAH, "ewma_z", m * MIN), &reg, &mut out);
        }
        c.observe(on(&mut reg, CHILLER, "physics", 30 * MIN), &reg, &mut out);
        let l = last(&out);
        let drift = l.values().find(|a| a.detector == "ewma_z").unwrap();
        let physics = l.values().find(|a| a.detector == "physics").unwrap();
        assert_ne!(drift.incident_id, physics.incident_id);
        assert_eq!((physics.role, drift.role), (Role::Cause, Role::Cause));
    }

    #[test]
    fn a_metric_a_relation_named_but_that_never_moved_does_not_settle() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        // A broken relation names the chiller's power, flow and temperatures; only its
        // supply temperature drifts.
        let relation = Finding {
            metrics: vec!["power_kw".into(), "flow_lps".into(), "supply_temp_c".into()],
            ..on(&mut reg, CHILLER, "physics", 0)
        };
        c.observe(relation, &reg, &mut out);
        c.observe(on(&mut reg, CHILLER, "cusum", MIN), &reg, &mut out);
        c.tick(12 * MIN, &reg, &store, &mut out);
        // Later, the supply temperature settling back is recovery; the flow drifting is
        // news.
        c.observe(on(&mut reg, CHILLER, "ewma_z", 13 * MIN), &reg, &mut out);
        let flow = ("chiller-1", "chiller", "flow_lps");
        c.observe(on(&mut reg, flow, "cusum", 14 * MIN), &reg, &mut out);
        let l = last(&out);
        let physics = l.values().find(|a| a.detector == "physics").unwrap();
        let settling = l.values().find(|a| a.detector == "ewma_z").unwrap();
        assert_eq!(settling.role, Role::Recovery);
        assert_eq!(settling.incident_id, physics.incident_id);
        let drift = l.values().find(|a| a.metrics == ["flow_lps"]).unwrap();
        assert_eq!(drift.role, Role::Cause, "{drift:?}");
        assert_ne!(drift.incident_id, physics.incident_id);
    }

    #[test]
    fn a_second_cause_opens_its_own_incident_while_the_first_settles() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        // Attack 1: a write on the chiller, its room drifting.
        c.observe(on(&mut reg, CHILLER, "protocol", 0), &reg, &mut out);
        c.observe(on(&mut reg, CRAH, "cusum", MIN), &reg, &mut out);
        c.tick(12 * MIN, &reg, &store, &mut out);
        // The same room metric drifting back: recovery, not news.
        c.observe(on(&mut reg, CRAH, "ewma_z", 13 * MIN), &reg, &mut out);
        // Attack 2, 14 minutes in, within the first incident's window: its own incident,
        // and so is a drift on a metric the first never disturbed.
        c.observe(on(&mut reg, CHILLER, "replay", 14 * MIN), &reg, &mut out);
        c.tick(26 * MIN, &reg, &store, &mut out);
        c.observe(
            on(
                &mut reg,
                ("chiller-1", "chiller", "flow_lps"),
                "cusum",
                40 * MIN,
            ),
            &reg,
            &mut out,
        );
        let l = last(&out);
        let by = |d: &str| l.values().find(|a| a.detector == d).unwrap();
        assert_eq!(by("ewma_z").role, Role::Recovery);
        assert_eq!(by("ewma_z").incident_id, by("protocol").incident_id);
        assert_eq!(by("replay").role, Role::Cause);
        assert_ne!(by("replay").incident_id, by("protocol").incident_id);
        let flow = l.values().find(|a| a.metrics == ["flow_lps"]).unwrap();
        assert_eq!(
            flow.role,
            Role::Cause,
            "the replay is over and disturbed no flow"
        );
        assert_ne!(flow.incident_id, by("replay").incident_id);
    }

    #[test]
    fn direct_evidence_long_after_a_cause_is_a_cause_of_its_own() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        // A write, and the relation it broke, still broken 30 minutes on.
        c.observe(on(&mut reg, CHILLER, "protocol", 0), &reg, &mut out);
        for m in 0..=30 {
            c.observe(
                on(&mut reg, CHILLER, "physics", m * MIN + 1000),
                &reg,
                &mut out,
            );
        }
        // Drift meanwhile is its doing; a frozen sensor on the other chiller is not.
        c.observe(on(&mut reg, CRAH, "cusum", 20 * MIN), &reg, &mut out);
        let other = ("chiller-2", "chiller", "supply_temp_c");
        c.observe(on(&mut reg, other, "flatline", 25 * MIN), &reg, &mut out);
        let l = last(&out);
        let by = |d: &str| l.values().find(|a| a.detector == d).unwrap();
        assert_eq!(by("cusum").incident_id, by("protocol").incident_id);
        assert_eq!(by("flatline").role, Role::Cause);
        assert_ne!(by("flatline").incident_id, by("protocol").incident_id);
    }

    #[test]
    fn a_taught_write_raises_nothing_and_a_different_one_still_does() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let write = |reg: &mut Registry, client: &str, ts| Finding {
            words: Words::made(
                String::new(),
                serde_json::json!({"client": client, "function": 6, "address": 1201}),
            ),
            ..on(reg, CHILLER, "protocol", ts)
        };
        let taught = exceptions::Exception {
            id: "ex-1".into(),
            site: "s1".into(),
            device: "chiller-1".into(),
            write: Some(exceptions::Write {
                client: "10.20.0.5".into(),
                function: 6,
                addresses: vec![1201],
            }),
            level: None,
            by: "alice".into(),
            at: "t".into(),
            note: String::new(),
            alert: String::new(),
        };
        let shared = Exceptions::default();
        c.set_exceptions(shared.clone());
        // Taught after the correlator took the set: applies from the next finding.
        assert!(shared.add(taught));
        let mut out = Vec::new();
        c.observe(write(&mut reg, "10.20.0.5", 0), &reg, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(c.excepted(), 1);
        c.observe(write(&mut reg, "10.66.0.99", MIN), &reg, &mut out);
        assert_eq!(alerts(&out).len(), 1, "another client still alerts");
    }

    #[test]
    fn a_cooling_anomaly_does_not_explain_a_ups() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        c.observe(on(&mut reg, CHILLER, "protocol", 0), &reg, &mut out);
        c.observe(on(&mut reg, UPS, "cusum", MIN), &reg, &mut out);
        let a = alerts(&out);
        assert_ne!(a[0].incident_id, a[1].incident_id);
        assert_eq!(a[1].role, Role::Cause);
        // The other way round, power reaches cooling.
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        c.observe(on(&mut reg, UPS, "ups", 0), &reg, &mut out);
        c.observe(on(&mut reg, CHILLER, "cusum", MIN), &reg, &mut out);
        let a = alerts(&out);
        assert_eq!(a[0].incident_id, a[1].incident_id);
    }

    #[test]
    fn a_sites_own_kinds_join_a_chain() {
        let p = CorrelatorParams {
            chains: [("pump".to_owned(), Chain::Cooling)].into(),
            ..CorrelatorParams::default()
        };
        assert!(p.reaches("pump", "crah") && p.reaches("ups", "pump"));
        assert!(!p.reaches("pump", "ups"), "cooling does not reach a UPS");
        assert!(p.reaches("pump", "grid_meter"));
        assert!(p.reaches("generator", "ups") && p.reaches("chiller", "generator"));
        let toml: CorrelatorParams = toml::from_str("[chains]\npump = \"cooling\"").unwrap();
        assert_eq!(toml.chains, p.chains);
        assert!(toml::from_str::<CorrelatorParams>("[chains]\npump = \"water\"").is_err());
    }

    #[test]
    fn one_clients_commands_are_one_incident() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        let scan = |reg: &mut Registry, who: (&str, &str, &str), client: &str, ts| Finding {
            words: Words::made(String::new(), serde_json::json!({ "client": client })),
            ..on(reg, who, "protocol", ts)
        };
        // A scanner on a chiller, then on a UPS (which cooling cannot reach), then
        // someone else on the UPS.
        c.observe(scan(&mut reg, CHILLER, "10.6.6.6", 0), &reg, &mut out);
        c.observe(scan(&mut reg, UPS, "10.6.6.6", MIN), &reg, &mut out);
        c.observe(
            scan(
                &mut reg,
                ("ups-2", "ups", "input_power_kw"),
                "10.7.7.7",
                2 * MIN,
            ),
            &reg,
            &mut out,
        );
        // And a third client on the chiller itself, while the first's incident unfolds.
        c.observe(scan(&mut reg, CHILLER, "10.8.8.8", 3 * MIN), &reg, &mut out);
        let a = alerts(&out);
        assert_eq!(a[0].incident_id, a[1].incident_id);
        assert_ne!(a[1].incident_id, a[2].incident_id);
        let third = a
            .iter()
            .find(|x| x.evidence["client"] == "10.8.8.8")
            .unwrap();
        assert_ne!(third.incident_id, a[0].incident_id, "another actor: {a:#?}");
        assert_eq!(third.role, Role::Cause);
    }

    #[test]
    fn ids_are_deterministic() {
        let run = || {
            let mut reg = Registry::new(10);
            let mut c = Correlator::new(CorrelatorParams::default());
            let mut out = Vec::new();
            c.observe(
                finding(&mut reg, "chiller-1", "ewma_z", 5, 7.0),
                &reg,
                &mut out,
            );
            alerts(&out)[0].id.clone()
        };
        assert_eq!(run(), run());
    }
}
