//! The data model: readings, commands, device kinds, findings, alerts and
//! incidents. Timestamps are event time in milliseconds since the Unix epoch (UTC).

pub mod attack;
pub mod event;
pub mod points;
pub mod vocabulary;

use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::time::Ts;

/// How much a reading can be trusted, as reported by its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// A normal measurement.
    #[default]
    Good,
    /// The device or collector says the value is wrong (e.g. a Modbus exception).
    Bad,
    /// The value was not refreshed in time.
    Stale,
}

impl Quality {
    /// Parses the capture spelling (`good`, `bad`, `stale`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "good" => Some(Self::Good),
            "bad" => Some(Self::Bad),
            "stale" => Some(Self::Stale),
            _ => None,
        }
    }
}

/// The kind of device a reading comes from. Unknown kinds are carried as `Other` and get
/// the generic detectors only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeviceKind {
    /// Uninterruptible power supply.
    Ups,
    /// Chiller (chilled-water plant).
    Chiller,
    /// Computer-room air handler.
    Crah,
    /// Grid interconnect meter.
    GridMeter,
    /// Power distribution unit.
    Pdu,
    /// Environmental sensor (room temperature, humidity).
    Env,
    /// Any kind outside the vocabulary.
    Other,
}

impl DeviceKind {
    /// Every kind, in a fixed order (used to index per-kind tables).
    pub const ALL: [DeviceKind; 7] = [
        Self::Ups,
        Self::Chiller,
        Self::Crah,
        Self::GridMeter,
        Self::Pdu,
        Self::Env,
        Self::Other,
    ];

    /// Parses the capture spelling; anything unknown is `Other`.
    pub fn parse(s: &str) -> Self {
        match s {
            "ups" => Self::Ups,
            "chiller" => Self::Chiller,
            "crah" => Self::Crah,
            "grid_meter" => Self::GridMeter,
            "pdu" => Self::Pdu,
            "env" => Self::Env,
            _ => Self::Other,
        }
    }

    /// The capture spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ups => "ups",
            Self::Chiller => "chiller",
            Self::Crah => "crah",
            Self::GridMeter => "grid_meter",
            Self::Pdu => "pdu",
            Self::Env => "env",
            Self::Other => "other",
        }
    }

    /// Position in [`DeviceKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name a live source repeats in every reading (site, device, kind, metric): shared,
/// so a reading costs a reference count, not an allocation, per name.
pub type Name = std::sync::Arc<str>;

/// Distinct names a source remembers; past this many (a publisher inventing device
/// names), a new name is allocated for each use instead of remembered.
pub const MAX_NAMES: usize = 4_096;

/// The names a live source has seen, so a site, device, kind or metric named in every
/// message is allocated once and shared. Bounded by [`MAX_NAMES`].
#[derive(Debug, Default)]
pub struct Names(rustc_hash::FxHashSet<Name>);

impl Names {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Name {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Name = name.into();
        if self.0.len() < MAX_NAMES {
            self.0.insert(n.clone());
        }
        n
    }
}

/// One measured value, as in docs/design.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Event time.
    #[serde(with = "crate::time::serde_ts")]
    pub ts: Ts,
    /// Site (facility) name.
    pub site: Name,
    /// Device name, unique within the site.
    pub device: Name,
    /// Device kind as written in the capture (unknown kinds are kept verbatim).
    pub kind: Name,
    /// Metric name (see [`crate::model::vocabulary`]).
    pub metric: Name,
    /// The value; booleans are 0/1.
    pub value: f64,
    /// Quality flag.
    #[serde(default)]
    pub quality: Quality,
}

/// A control action seen on the wire or reported by a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Event time.
    #[serde(with = "crate::time::serde_ts")]
    pub ts: Ts,
    /// Site name.
    pub site: String,
    /// Target device.
    pub device: String,
    /// Who sent it (an IP address or client id).
    pub client: String,
    /// Modbus function code (or an equivalent code for other protocols).
    pub function: u8,
    /// First register or coil address.
    pub address: u32,
    /// Values written (register words, or 0/1 for coils).
    #[serde(default)]
    pub values: Vec<u16>,
    /// The protocol it was sent over (`modbus` when absent). Over BACnet, `function` is
    /// the confirmed service choice (15 WriteProperty, 16 WritePropertyMultiple, 17
    /// DeviceCommunicationControl, 20 ReinitializeDevice, …) and `address` the object
    /// identifier (type × 2²² + instance).
    #[serde(default, skip_serializing_if = "WireProtocol::is_modbus")]
    pub protocol: WireProtocol,
    /// BACnet: the property written (85 present-value, 81 out-of-service, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<u32>,
    /// BACnet: the value written, when it is a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// The protocol a [`Command`] was sent over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireProtocol {
    /// Modbus TCP.
    #[default]
    Modbus,
    /// BACnet/IP.
    Bacnet,
}

impl WireProtocol {
    /// Whether this is Modbus (the default, left out when written).
    pub fn is_modbus(&self) -> bool {
        *self == WireProtocol::Modbus
    }
}

/// Alert and incident severity, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, no action.
    Info,
    /// Look when convenient.
    Low,
    /// Look soon.
    Medium,
    /// Act now.
    High,
    /// Facility at risk.
    Critical,
}

impl Severity {
    /// One level up, saturating at critical.
    pub fn raised(self) -> Self {
        match self {
            Self::Info => Self::Low,
            Self::Low => Self::Medium,
            Self::Medium => Self::High,
            Self::High | Self::Critical => Self::Critical,
        }
    }
}

/// A MITRE ATT&CK for ICS technique.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Technique {
    /// Technique id, e.g. `T0836`.
    pub id: &'static str,
    /// Technique name, e.g. `Modify Parameter`.
    pub name: &'static str,
}

/// What one detector concluded from one frame: a score over a threshold, with a reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Event time of the observation that triggered it.
    pub ts: Ts,
    /// Device index in the pipeline's registry.
    pub device: u32,
    /// Metrics involved (empty for device-level findings).
    pub metrics: Vec<String>,
    /// Detector name.
    pub detector: &'static str,
    /// Score; the finding exists because `score >= threshold`.
    pub score: f64,
    /// Threshold the score was compared with.
    pub threshold: f64,
    /// Severity the detector suggests.
    pub severity: Severity,
    /// ATT&CK technique the detector suggests.
    pub technique: Technique,
    /// Its sentence and the numbers behind it.
    pub words: Words,
}

impl Finding {
    /// One plain-language sentence.
    pub fn reason(&self) -> std::borrow::Cow<'_, str> {
        match &self.words {
            Words::Made { reason, .. } => reason.as_str().into(),
            Words::Later(make) => make().0.into(),
        }
    }

    /// The numbers behind the reason.
    pub fn evidence(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        match &self.words {
            Words::Made { evidence, .. } => std::borrow::Cow::Borrowed(evidence),
            Words::Later(make) => std::borrow::Cow::Owned(make().1),
        }
    }
}

/// What a finding says: one plain-language sentence and the numbers behind it.
///
/// A finding that repeats an open alert's is mostly dropped unread (an alert keeps the
/// words of its strongest finding only), so a detector that reports a condition at every
/// reading while it holds defers them: they are made only if they are read.
#[derive(Clone)]
pub enum Words {
    /// Made already (the evidence shared: a detector repeating a finding at every reading
    /// repeats its evidence without copying it).
    Made {
        /// The sentence.
        reason: String,
        /// The numbers.
        evidence: std::sync::Arc<serde_json::Value>,
    },
    /// Made when read, from what the detector saw then (a pure function: reading twice
    /// gives the same words).
    Later(std::sync::Arc<dyn Fn() -> (String, serde_json::Value) + Send + Sync>),
}

impl Words {
    /// Words made now.
    pub fn made(reason: String, evidence: impl Into<std::sync::Arc<serde_json::Value>>) -> Self {
        Self::Made {
            reason,
            evidence: evidence.into(),
        }
    }

    /// Words made when read, by `make`.
    pub fn later(make: impl Fn() -> (String, serde_json::Value) + Send + Sync + 'static) -> Self {
        Self::Later(std::sync::Arc::new(make))
    }

    /// The sentence and the numbers, owned.
    pub fn into_parts(self) -> (String, serde_json::Value) {
        match self {
            Self::Made { reason, evidence } => (reason, std::sync::Arc::unwrap_or_clone(evidence)),
            Self::Later(make) => make(),
        }
    }
}

impl fmt::Debug for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (reason, evidence) = self.clone().into_parts();
        f.debug_struct("Words")
            .field("reason", &reason)
            .field("evidence", &evidence)
            .finish()
    }
}

/// Words are equal when they read the same, made now or later.
impl PartialEq for Words {
    fn eq(&self, other: &Self) -> bool {
        self.clone().into_parts() == other.clone().into_parts()
    }
}

/// Whether an alert is still active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition persists.
    Open,
    /// The condition cleared.
    Closed,
}

/// How an alert stands in its incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// What started the incident: the earliest anomaly that explains the others,
    /// direct evidence (a command on the wire, a broken physical relation, a state
    /// change) preferred over statistical drift.
    Cause,
    /// An effect of the cause on a device it can reach, while the cause is unfolding.
    Consequence,
    /// Drift while the plant settles after the cause's evidence stopped.
    Recovery,
}

impl Role {
    /// Every role, in the order an incident unfolds.
    pub const ALL: [Role; 3] = [Self::Cause, Self::Consequence, Self::Recovery];

    /// The name in the schema and in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cause => "cause",
            Self::Consequence => "consequence",
            Self::Recovery => "recovery",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What an analyst concluded when acknowledging an alert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// An attack or a fault worth the alert (the default).
    #[default]
    TruePositive,
    /// Harmless, but not something to stop seeing.
    Benign,
    /// Routine behaviour: taught as an exception so it never alerts again (commands only).
    Expected,
}

impl Disposition {
    /// The name in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::Benign => "benign",
            Self::Expected => "expected",
        }
    }
}

/// An alert, in the design's schema plus `status`, `kind`, `last_seen`, `findings` and `role`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Deterministic id: the same capture always gives the same ids.
    pub id: String,
    /// Event time of the first finding.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub ts: Ts,
    /// Wall-clock time the alert was raised (RFC 3339); the only non-deterministic field.
    pub detected_at: String,
    /// Site name.
    pub site: String,
    /// Device name.
    pub device: String,
    /// Device kind.
    pub kind: String,
    /// Metrics involved.
    pub metrics: Vec<String>,
    /// Detector name.
    pub detector: &'static str,
    /// Peak score so far.
    pub score: f64,
    /// Threshold of the detector.
    pub threshold: f64,
    /// Severity.
    pub severity: Severity,
    /// ATT&CK for ICS technique.
    pub technique: Technique,
    /// One plain sentence (of the peak finding).
    pub summary: String,
    /// Numbers behind the summary (of the peak finding).
    pub evidence: serde_json::Value,
    /// Incident this alert belongs to.
    pub incident_id: String,
    /// Its part in the incident; a later snapshot may change it (a direct piece of
    /// evidence that arrives after a drift it explains becomes the cause).
    pub role: Role,
    /// Open or closed.
    pub status: AlertStatus,
    /// Event time of the latest finding.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub last_seen: Ts,
    /// Number of findings folded into this alert.
    pub findings: u64,
    /// Raised live on the reading's arrival, before the reorder wait (a finding that
    /// needs no other reading: see `docs/design.md`): no incident or role yet. The
    /// next snapshot of the same id confirms it with both; a closed early snapshot
    /// withdraws it (the readings before it, once in, did not bear it out).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub early: bool,
}

#[cfg(test)]
impl Alert {
    /// An alert for tests: a medium drift on a UPS unless told otherwise.
    pub(crate) fn sample(id: &str, ts: Ts, severity: Severity, status: AlertStatus) -> Self {
        Self {
            id: id.into(),
            ts,
            detected_at: "2026-07-07T00:00:00.000Z".into(),
            site: "ams1".into(),
            device: "ups-1".into(),
            kind: "ups".into(),
            metrics: vec!["load_pct".into()],
            detector: "ewma_z",
            score: 9.0,
            threshold: 6.0,
            severity,
            technique: Technique {
                id: "T0831",
                name: "Manipulation of Control",
            },
            summary: "s".into(),
            evidence: serde_json::json!({}),
            incident_id: "in-1".into(),
            role: Role::Cause,
            status,
            last_seen: ts,
            findings: 1,
            early: false,
        }
    }
}

impl Alert {
    /// What names this snapshot of the alert (opened, escalated, closed): the same on
    /// every retry and on every instance that raises it, different for the next one.
    /// Webhooks send it as the idempotency key.
    pub fn snapshot_id(&self) -> String {
        // An early snapshot and its confirmation carry the same numbers: the status
        // word keeps their keys apart, so a receiver deduplicating drops neither.
        let status = match (self.status, self.early) {
            (AlertStatus::Open, false) => "open",
            (AlertStatus::Closed, false) => "closed",
            (AlertStatus::Open, true) => "early",
            (AlertStatus::Closed, true) => "withdrawn",
        };
        format!(
            "{}:{status}:{}:{}:{}",
            self.id,
            self.findings,
            format!("{:?}", self.severity).to_lowercase(),
            self.role.as_str()
        )
    }
}

/// Alerts close in time on one site, grouped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    /// Deterministic id.
    pub id: String,
    /// Site name.
    pub site: String,
    /// Event time of the first alert.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub start: Ts,
    /// Event time of the latest finding of any of its alerts.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub end: Ts,
    /// Highest alert severity, raised one level when several devices or detectors agree.
    pub severity: Severity,
    /// Ids of its alerts, in order of opening.
    pub alerts: Vec<String>,
    /// Devices involved, in order of first alert.
    pub devices: Vec<String>,
    /// Detectors involved.
    pub detectors: Vec<&'static str>,
    /// Techniques involved (ids).
    pub techniques: Vec<&'static str>,
    /// One plain sentence: how many alerts on which devices.
    pub summary: String,
    /// Id of the alert that started it (see [`Role::Cause`]).
    pub cause: String,
    /// What happened, in plain language: the cause's device, what it saw (and who
    /// acted, when a command was seen), the ATT&CK technique, how far it reached.
    pub headline: String,
    /// Devices its consequences showed on, other than the cause's, in order of first alert.
    pub affected: Vec<String>,
    /// Open or closed.
    pub status: AlertStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_read_the_same_made_now_or_later() {
        let now = Words::made("x = 2".into(), serde_json::json!({"x": 2}));
        let later = Words::later(|| ("x = 2".into(), serde_json::json!({"x": 2})));
        let other = Words::later(|| ("x = 3".into(), serde_json::json!({"x": 3})));
        assert_eq!(now, later);
        assert_ne!(now, other);
        assert_eq!(format!("{now:?}"), format!("{later:?}"));
        assert_eq!(later.clone().into_parts(), now.into_parts());
    }

    #[test]
    fn a_name_seen_again_is_shared_and_an_endless_stream_of_new_ones_is_not_kept() {
        let mut names = Names::default();
        let a = names.get("ups-1");
        let b = names.get("ups-1");
        assert!(
            std::sync::Arc::ptr_eq(&a, &b),
            "one allocation for a repeated name"
        );
        for i in 0..2 * MAX_NAMES {
            assert_eq!(&*names.get(&format!("forged-{i}")), format!("forged-{i}"));
        }
        assert_eq!(names.0.len(), MAX_NAMES, "bounded");
        let c = names.get("never-seen-before");
        let d = names.get("never-seen-before");
        assert!(
            !std::sync::Arc::ptr_eq(&c, &d) && c == d,
            "past the bound: a fresh copy each time"
        );
        assert!(
            std::sync::Arc::ptr_eq(&a, &names.get("ups-1")),
            "what was kept stays shared"
        );
    }
}
