//! Alerts to a SIEM over syslog: RFC 5424 messages over UDP, TCP (octet counting, RFC
//! 6587) or TLS (RFC 5425), carrying ArcSight CEF, the alert JSON, or an OCSF Detection
//! Finding.
//!
//! - Each `[[sinks.syslog]]` filters like a webhook receiver (sites, kinds, minimum
//!   severity, roles, techniques) and shares the store's outbox: a snapshot is queued in
//!   the transaction that stores it, so a SIEM that is down, or a crash, loses nothing
//!   that was due. The worker sends what is due, oldest first, over one connection.
//! - Syslog has no acknowledgement. Over TCP and TLS a message counts as delivered once
//!   the kernel took it; before each batch the worker checks that the peer has not
//!   closed the connection (a receiver that stops cleanly does), so what is queued while
//!   the SIEM restarts goes after it is back. A receiver that dies with data in flight
//!   can lose it: put a local relay with a disk queue in front of a SIEM that must not.
//! - Connection failures back off (1 s doubling to 5 min); deliveries older than
//!   `max_age`, or beyond the newest `max_queue`, become dead letters.
//! - The structured data names the alert, its snapshot (`Idempotency-Key` of webhooks),
//!   its incident and role, so a SIEM can deduplicate and group.

use crate::model::{Role, Severity};
use crate::sink::store::{self, OutboxItem, Shared};
use crate::time::{format_ts, serde_duration, TimeFormat, Ts};
use crate::tomlfile::{check, TomlError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One datagram per message (RFC 5426): no delivery guarantee at all.
    Udp,
    /// Octet-counted frames (RFC 6587).
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

/// What the message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// ArcSight Common Event Format.
    Cef,
    /// The alert JSON of docs/design.md.
    Json,
    /// An OCSF 1.3 Detection Finding (class 2004).
    Ocsf,
}

/// One `[[sinks.syslog]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSink {
    /// Name (in the outbox, dead letters and logs); unique among sinks and webhooks.
    pub name: String,
    /// `host:port` of the receiver.
    pub address: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: Transport,
    /// `cef` (default), `json` or `ocsf`.
    #[serde(default = "default_payload")]
    pub payload: Payload,
    /// TLS: the PEM file of the certificate authorities to trust (required).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS: the name the receiver's certificate must carry (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Syslog facility name (`kern` … `local7`). Default `"local4"`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// The HOSTNAME field (default: this machine's name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The SD-ID of the structured data: `name@<private enterprise number>`. The default
    /// uses 32473, the number reserved for documentation (RFC 5612); an organisation
    /// with its own puts it here.
    #[serde(default = "default_sd_id")]
    pub sd_id: String,
    /// Only these sites (empty: all).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Only these device kinds (empty: all).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only at least this severity.
    #[serde(default = "default_severity")]
    pub min_severity: Severity,
    /// Only alerts in these roles (default: every role, as a SIEM correlates itself).
    #[serde(default = "all_roles")]
    pub roles: Vec<Role>,
    /// Only these ATT&CK technique ids (empty: all).
    #[serde(default)]
    pub techniques: Vec<String>,
    /// Longest message sent, in bytes (receivers cut or drop longer ones: rsyslog's
    /// default is 8 KiB). A longer alert loses its evidence, then its summary's tail.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// Give up on a delivery this long after it was queued. Default `"24h"`.
    #[serde(
        default = "default_max_age",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub max_age: i64,
    /// Deliveries kept waiting at most; older ones beyond it become dead letters.
    /// Default 100000.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Connect and write timeout. Default `"10s"`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub timeout: i64,
}

fn default_payload() -> Payload {
    Payload::Cef
}
fn default_facility() -> String {
    "local4".into()
}
fn default_sd_id() -> String {
    "wattchdog@32473".into()
}
fn default_severity() -> Severity {
    Severity::Info
}
fn all_roles() -> Vec<Role> {
    Role::ALL.to_vec()
}
fn default_max_message() -> usize {
    8192
}
fn default_max_age() -> i64 {
    86_400_000
}
fn default_max_queue() -> usize {
    100_000
}
fn default_timeout() -> i64 {
    10_000
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl SyslogSink {
    /// Whether this sink wants the alert (the same filter as webhooks).
    pub fn wants(&self, a: &crate::model::Alert) -> bool {
        super::passes(
            a,
            &self.sites,
            &self.kinds,
            self.min_severity,
            &self.roles,
            &self.techniques,
        )
    }

    /// Whether the sink filters on roles (so an alert it was sent must be followed).
    pub fn follows(&self) -> bool {
        Role::ALL.iter().any(|r| !self.roles.contains(r))
    }

    fn facility_code(&self) -> u8 {
        FACILITIES
            .iter()
            .position(|f| *f == self.facility)
            .unwrap_or(20) as u8
    }

    fn host(&self) -> &str {
        self.address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }
}

/// Checks the sinks (names unique with the webhook receivers' `taken`).
pub fn validate(sinks: &[SyslogSink], taken: &[&str], origin: &str) -> Result<(), TomlError> {
    let mut names: std::collections::BTreeSet<&str> = taken.iter().copied().collect();
    for (i, s) in sinks.iter().enumerate() {
        let key = |k: &str| format!("sinks.syslog[{i}].{k}");
        check(
            origin,
            &key("name"),
            !s.name.is_empty() && names.insert(&s.name),
            "must be unique among syslog sinks and webhooks, and not empty",
        )?;
        check(
            origin,
            &key("address"),
            s.address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)),
            "must be host:port",
        )?;
        check(
            origin,
            &key("ca"),
            s.transport != Transport::Tls || s.ca.is_some(),
            "is required for tls: the PEM file of the authorities that sign the receiver's certificate",
        )?;
        check(
            origin,
            &key("facility"),
            FACILITIES.contains(&s.facility.as_str()),
            "must be one of kern, user, … local7",
        )?;
        check(
            origin,
            &key("hostname"),
            s.hostname.as_deref().is_none_or(|h| {
                (1..=255).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_graphic())
            }),
            "must be 1 to 255 printable ASCII characters",
        )?;
        check(
            origin,
            &key("sd_id"),
            s.sd_id.split_once('@').is_some_and(|(n, pen)| {
                !n.is_empty()
                    && s.sd_id.len() <= 32
                    && n.bytes().all(sd_name_char)
                    && !pen.is_empty()
                    && pen.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            }),
            "must be name@number (at most 32 characters; no space, =, ] or \")",
        )?;
        check(
            origin,
            &key("roles"),
            !s.roles.is_empty(),
            "must name at least one of cause, consequence, recovery",
        )?;
        check(
            origin,
            &key("max_message"),
            (480..=65_000).contains(&s.max_message),
            "must be 480 to 65000 bytes",
        )?;
        check(
            origin,
            &key("max_age"),
            s.max_age >= 1000,
            "must be at least 1s",
        )?;
        check(
            origin,
            &key("max_queue"),
            s.max_queue >= 1,
            "must be at least 1",
        )?;
        check(
            origin,
            &key("timeout"),
            s.timeout >= 1,
            "must be at least 1ms",
        )?;
    }
    Ok(())
}

fn sd_name_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"' | b'@')
}

/// The fields of a stored alert snapshot that a message needs.
#[derive(Debug, Deserialize)]
struct Snapshot {
    id: String,
    #[serde(with = "crate::time::serde_ts")]
    ts: Ts,
    #[serde(default)]
    detected_at: String,
    site: String,
    device: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metrics: Vec<String>,
    detector: String,
    score: f64,
    threshold: f64,
    severity: Severity,
    technique: TechniqueView,
    summary: String,
    #[serde(default)]
    evidence: Value,
    incident_id: String,
    role: Role,
    status: String,
    #[serde(with = "crate::time::serde_ts")]
    last_seen: Ts,
    findings: u64,
}

#[derive(Debug, Deserialize)]
struct TechniqueView {
    id: String,
    name: String,
}

/// Makes a sink's messages: what is fixed for them (PRI's facility, HOSTNAME, PROCID,
/// SD-ID, the size limit, the payload) and [`Renderer::render`].
pub struct Renderer(Header);

impl Renderer {
    /// The renderer of a sink's messages.
    pub fn new(s: &SyslogSink) -> Self {
        Self(Header::of(s))
    }

    /// The RFC 5424 message for a stored alert snapshot (`body`: the alert JSON) sent at
    /// `sent_at`; an error for a body that is not an alert or cannot fit.
    pub fn render(&self, body: &str, sent_at: Ts) -> Result<String, String> {
        message(&self.0, body, sent_at)
    }
}

/// What is fixed for a sink's messages.
struct Header {
    pri_facility: u8,
    hostname: String,
    procid: String,
    sd_id: String,
    max: usize,
    payload: Payload,
}

impl Header {
    fn of(s: &SyslogSink) -> Self {
        Self {
            pri_facility: s.facility_code(),
            hostname: s.hostname.clone().unwrap_or_else(this_host),
            procid: std::process::id().to_string(),
            sd_id: s.sd_id.clone(),
            max: s.max_message,
            payload: s.payload,
        }
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| (1..=255).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// Syslog severity (RFC 5424 §6.2.1) of an alert severity.
fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// CEF severity, 0–10.
fn cef_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 10,
        Severity::High => 8,
        Severity::Medium => 5,
        Severity::Low => 3,
        Severity::Info => 1,
    }
}

/// OCSF `severity_id`.
fn ocsf_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 5,
        Severity::High => 4,
        Severity::Medium => 3,
        Severity::Low => 2,
        Severity::Info => 1,
    }
}

/// A CEF header field: `\` and `|` escaped, line breaks as spaces (not allowed there).
fn cef_header(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '|' => o.push_str("\\|"),
            '\r' | '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A CEF extension value: `\`, `=` escaped, line breaks as `\n` / `\r`.
fn cef_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '=' => o.push_str("\\="),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn ms(ts_text: &str, fallback: Ts) -> Ts {
    TimeFormat::Auto.parse(ts_text).unwrap_or(fallback)
}

impl Snapshot {
    /// `<alert id>:<status>:<findings>:<severity>:<role>`, as webhooks' `Idempotency-Key`.
    fn snapshot_id(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.id,
            self.status,
            self.findings,
            format!("{:?}", self.severity).to_lowercase(),
            self.role.as_str()
        )
    }

    fn client(&self) -> Option<&str> {
        self.evidence.get("client").and_then(Value::as_str)
    }

    fn cef(&self) -> String {
        let mut ext: Vec<(&str, String)> = vec![
            ("rt", ms(&self.detected_at, self.ts).to_string()),
            ("start", self.ts.to_string()),
            ("end", self.last_seen.to_string()),
            ("externalId", self.id.clone()),
            ("dhost", self.device.clone()),
            ("cat", self.technique.name.clone()),
            ("act", self.status.clone()),
            ("cs1Label", "site".into()),
            ("cs1", self.site.clone()),
            ("cs2Label", "incident".into()),
            ("cs2", self.incident_id.clone()),
            ("cs3Label", "role".into()),
            ("cs3", self.role.as_str().into()),
            ("cs4Label", "technique".into()),
            ("cs4", self.technique.id.clone()),
            ("cs5Label", "deviceKind".into()),
            ("cs5", self.kind.clone()),
            ("cs6Label", "metrics".into()),
            ("cs6", self.metrics.join(",")),
            ("cn1Label", "score".into()),
            ("cn1", format!("{}", self.score)),
            ("cn2Label", "threshold".into()),
            ("cn2", format!("{}", self.threshold)),
            ("cnt", self.findings.to_string()),
        ];
        if let Some(c) = self.client() {
            ext.push(("src", c.to_owned()));
        }
        ext.push(("msg", self.summary.clone()));
        let ext: Vec<String> = ext
            .into_iter()
            .map(|(k, v)| format!("{k}={}", cef_value(&v)))
            .collect();
        format!(
            "CEF:0|wattchdog|wattchdog|{}|{}|{}|{}|{}",
            cef_header(env!("CARGO_PKG_VERSION")),
            cef_header(&format!("{}:{}", self.detector, self.technique.id)),
            cef_header(&self.summary),
            cef_severity(self.severity),
            ext.join(" ")
        )
    }

    fn ocsf(&self) -> Value {
        let activity = match (self.status.as_str(), self.findings) {
            ("closed", _) => (3, "Close"),
            (_, 1) => (1, "Create"),
            _ => (2, "Update"),
        };
        let mut resource =
            json!({"name": self.device, "type": self.kind, "group": {"name": self.site}});
        if !self.metrics.is_empty() {
            resource["data"] = json!({"metrics": self.metrics});
        }
        let mut finding = json!({
            "class_uid": 2004,
            "class_name": "Detection Finding",
            "category_uid": 2,
            "category_name": "Findings",
            "activity_id": activity.0,
            "activity_name": activity.1,
            "type_uid": 200_400 + activity.0,
            "severity_id": ocsf_severity(self.severity),
            "severity": format!("{:?}", self.severity),
            "status_id": if self.status == "closed" { 4 } else { 1 },
            "status": if self.status == "closed" { "Resolved" } else { "New" },
            "time": ms(&self.detected_at, self.ts),
            "message": self.summary,
            "metadata": {
                "version": "1.3.0",
                "uid": self.snapshot_id(),
                "correlation_uid": self.incident_id,
                "product": {"name": "wattchdog", "vendor_name": "wattchdog", "version": env!("CARGO_PKG_VERSION")},
            },
            "finding_info": {
                "uid": self.id,
                "title": self.summary,
                "types": [self.detector],
                "analytic": {"name": self.detector, "type_id": 0, "type": "Unknown"},
                "attacks": [{"technique": {"uid": self.technique.id, "name": self.technique.name}}],
                "first_seen_time": self.ts,
                "last_seen_time": self.last_seen,
                "related_events_count": self.findings,
            },
            "resources": [resource],
            "risk_score": self.score,
            "unmapped": {"role": self.role.as_str(), "threshold": self.threshold, "evidence": self.evidence},
        });
        if let Some(c) = self.client() {
            finding["src_endpoint"] = json!({"ip": c});
        }
        finding
    }
}

/// The RFC 5424 message for a stored snapshot (`body`: the alert JSON), within `h.max`
/// bytes: an alert too long loses its evidence, then its summary's tail.
fn message(h: &Header, body: &str, sent_at: Ts) -> Result<String, String> {
    let bad = |e: serde_json::Error| format!("stored body: {e}");
    let mut s: Snapshot = serde_json::from_str(body).map_err(bad)?;
    // The JSON payload is the stored body itself, until it has to be cut.
    let mut cut: Option<Value> = None;
    let summary = s.summary.clone();
    let mut kept = summary.len();
    loop {
        let pri = h.pri_facility * 8 + syslog_severity(s.severity);
        let sd = format!(
            "[{} alert=\"{}\" snapshot=\"{}\" incident=\"{}\" role=\"{}\" site=\"{}\" device=\"{}\"]",
            h.sd_id,
            sd_value(&s.id),
            sd_value(&s.snapshot_id()),
            sd_value(&s.incident_id),
            s.role.as_str(),
            sd_value(&s.site),
            sd_value(&s.device),
        );
        let msg = match (h.payload, &cut) {
            (Payload::Cef, _) => s.cef(),
            (Payload::Json, None) => body.to_owned(),
            (Payload::Json, Some(v)) => v.to_string(),
            (Payload::Ocsf, _) => s.ocsf().to_string(),
        };
        let line = format!(
            "<{pri}>1 {} {} wattchdog {} alert {sd} {msg}",
            format_ts(sent_at),
            h.hostname,
            h.procid
        );
        if line.len() <= h.max {
            return Ok(line);
        }
        let v = match &mut cut {
            Some(v) => v,
            None => cut.insert(serde_json::from_str(body).map_err(bad)?),
        };
        let truncated = json!({"truncated": true});
        if s.evidence != truncated {
            s.evidence = truncated.clone();
            v["evidence"] = truncated;
            continue;
        }
        if kept == 0 {
            return Err(format!(
                "an alert message of {} bytes does not fit in {}",
                line.len(),
                h.max
            ));
        }
        // Shorter by at least the excess each time (CEF carries the summary twice).
        kept = kept.saturating_sub(line.len() - h.max).min(kept - 1);
        while !summary.is_char_boundary(kept) {
            kept -= 1;
        }
        s.summary = format!("{}…", &summary[..kept]);
        v["summary"] = Value::String(s.summary.clone());
    }
}

/// The octet-counted frame of a message (RFC 6587 §3.4.1, RFC 5425 §4.3).
fn frame(msg: &str) -> Vec<u8> {
    let mut f = format!("{} ", msg.len()).into_bytes();
    f.extend_from_slice(msg.as_bytes());
    f
}

/// A connection to the receiver.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    async fn open(
        s: &SyslogSink,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> Result<Self, String> {
        let timeout = Duration::from_millis(s.timeout as u64);
        let within = |what: &'static str| move |_| format!("{what} timed out");
        match s.transport {
            Transport::Udp => {
                let sock = UdpSocket::bind(if s.host().contains(':') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })
                .await
                .map_err(|e| e.to_string())?;
                sock.connect(&s.address).await.map_err(|e| e.to_string())?;
                Ok(Self::Udp(sock))
            }
            Transport::Tcp | Transport::Tls => {
                let tcp = tokio::time::timeout(timeout, TcpStream::connect(&s.address))
                    .await
                    .map_err(within("connect"))?
                    .map_err(|e| e.to_string())?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                let Some(tls) = tls.filter(|_| s.transport == Transport::Tls) else {
                    return Ok(Self::Tcp(tcp));
                };
                let name = s.server_name.clone().unwrap_or_else(|| s.host().to_owned());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| format!("server name: {e}"))?;
                let stream = tokio::time::timeout(timeout, tls.connect(name, tcp))
                    .await
                    .map_err(within("TLS handshake"))?
                    .map_err(|e| format!("TLS: {e}"))?;
                Ok(Self::Tls(Box::new(stream)))
            }
        }
    }

    /// Whether the peer has closed the connection (read end at EOF, or an error). Data
    /// from the peer (TLS session tickets) is read and dropped; syslog sends none back.
    async fn closed(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        let probe = Duration::from_millis(1);
        match self {
            Self::Udp(_) => false,
            Self::Tcp(t) => loop {
                match t.try_read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            },
            Self::Tls(t) => {
                let mut peek = [0u8; 1];
                match t.get_ref().0.try_read_peek(&mut peek) {
                    Some(true) => loop {
                        // Records waiting: let TLS read them (a close_notify ends it).
                        match tokio::time::timeout(probe, t.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => return true,
                            Ok(Ok(_)) => continue,
                            Err(_) => return false,
                        }
                    },
                    Some(false) => true,
                    None => false,
                }
            }
        }
    }

    async fn send(&mut self, msg: &str, timeout: Duration) -> Result<(), String> {
        let io = async {
            match self {
                Self::Udp(u) => u.send(msg.as_bytes()).await.map(|_| ()),
                Self::Tcp(t) => t.write_all(&frame(msg)).await,
                Self::Tls(t) => t.write_all(&frame(msg)).await,
            }
        };
        tokio::time::timeout(timeout, io)
            .await
            .map_err(|_| "write timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Self::Udp(_) | Self::Tcp(_) => Ok(()),
            Self::Tls(t) => t.flush().await.map_err(|e| e.to_string()),
        }
    }
}

/// Peeking without blocking on a tokio stream: `Some(true)` data waits, `Some(false)`
/// the peer closed (or the socket failed), `None` nothing to read.
trait TryPeek {
    fn try_read_peek(&self, buf: &mut [u8]) -> Option<bool>;
}

impl TryPeek for TcpStream {
    fn try_read_peek(&self, buf: &mut [u8]) -> Option<bool> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut rb = tokio::io::ReadBuf::new(buf);
        match self.poll_peek(&mut cx, &mut rb) {
            std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_)) => Some(false),
            std::task::Poll::Ready(Ok(_)) => Some(true),
            std::task::Poll::Pending => None,
        }
    }
}

/// The TLS client of a `tls` sink (its `ca` read and parsed), `None` for the others: made
/// when the SOC starts, so a missing or bad file stops the start instead of a sink.
pub fn tls_connector(s: &SyslogSink) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    if s.transport != Transport::Tls {
        return Ok(None);
    }
    let path = s.ca.as_ref().ok_or("no ca")?;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(cfg))))
}

/// Delay before reconnect attempt `failures + 1`: 1 s doubling to 5 min, ± 25 % jitter.
fn backoff(failures: u32) -> Duration {
    use rand::Rng;
    let base = 1000.0 * 2f64.powi(failures.min(20) as i32);
    Duration::from_millis((base.min(300_000.0) * rand::rng().random_range(0.75..1.25)) as u64)
}

/// Sends one sink's due deliveries until `stop` turns true (`tls`: its
/// [`tls_connector`]); `queued` wakes it when a snapshot is queued, so a delivery does
/// not wait for the next look at the outbox (unless the receiver is being backed off).
pub async fn deliver(
    sink: SyslogSink,
    tls: Option<tokio_rustls::TlsConnector>,
    store: Shared,
    queued: std::sync::Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let header = Header::of(&sink);
    let timeout = Duration::from_millis(sink.timeout as u64);
    info!(sink = %sink.name, address = %sink.address, transport = ?sink.transport, "syslog delivery starting");
    let mut conn: Option<Conn> = None;
    let mut failures = 0u32;
    let mut last_expire = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        if last_expire.elapsed() >= Duration::from_secs(10) {
            last_expire = tokio::time::Instant::now();
            let (name, before, keep) = (sink.name.clone(), now - sink.max_age, sink.max_queue);
            match store::blocking(&store, move |s| {
                s.expire(&name, before, keep, "too old or beyond max_queue")
            })
            .await
            {
                Ok(0) => {}
                Ok(n) => {
                    warn!(sink = %sink.name, dead = n, "syslog deliveries given up: dead letters")
                }
                Err(e) => warn!(error = %e, "cannot update the outbox"),
            }
        }
        let name = sink.name.clone();
        let due = store::blocking(&store, move |s| s.due(&name, now, 256))
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the outbox");
                Vec::new()
            });
        let mut pause = Duration::from_millis(250);
        if !due.is_empty() {
            match send_batch(&sink, &header, tls.as_ref(), &mut conn, &due, timeout).await {
                (sent, None) => {
                    failures = 0;
                    if sent.len() == 256 {
                        pause = Duration::ZERO;
                    }
                    record(&store, sent).await;
                }
                (sent, Some(e)) => {
                    record(&store, sent).await;
                    conn = None;
                    pause = backoff(failures);
                    failures += 1;
                    debug!(sink = %sink.name, error = %e, retry_in = ?pause, "syslog receiver unreachable; will retry");
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(sink = %sink.name, error = %e, failures, "syslog receiver unreachable");
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = queued.notified(), if failures == 0 => {}
            _ = stop.changed() => break,
        }
    }
}

async fn record(store: &Shared, sent: Vec<i64>) {
    if sent.is_empty() {
        return;
    }
    if let Err(e) = store::blocking(store, move |s| s.delivered_all(&sent)).await {
        warn!(error = %e, "cannot update the outbox");
    }
}

/// Sends `due` in order over the connection (opened if needed); returns the queue
/// positions sent and the error that stopped it, if any. An item whose body cannot
/// be made a message is dead-lettered here, not retried.
async fn send_batch(
    sink: &SyslogSink,
    header: &Header,
    tls: Option<&tokio_rustls::TlsConnector>,
    conn: &mut Option<Conn>,
    due: &[OutboxItem],
    timeout: Duration,
) -> (Vec<i64>, Option<String>) {
    let mut sent = Vec::with_capacity(due.len());
    if let Some(c) = conn.as_mut() {
        if c.closed().await {
            debug!(sink = %sink.name, "syslog receiver closed the connection; reconnecting");
            *conn = None;
        }
    }
    if conn.is_none() {
        match Conn::open(sink, tls).await {
            Ok(c) => *conn = Some(c),
            Err(e) => return (sent, Some(e)),
        }
    }
    let c = conn.as_mut().expect("opened above");
    let now = chrono::Utc::now().timestamp_millis();
    for item in due {
        let msg = match message(header, &item.body, now) {
            Ok(m) => m,
            Err(e) => {
                warn!(sink = %sink.name, alert = %item.alert_id, error = %e, "syslog message cannot be made; counted as sent");
                sent.push(item.seq);
                continue;
            }
        };
        if let Err(e) = c.send(&msg, timeout).await {
            return (sent, Some(e));
        }
        sent.push(item.seq);
    }
    if let Err(e) = c.flush().await {
        return (Vec::new(), Some(e));
    }
    (sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alert, AlertStatus};

    fn sink(extra: &str) -> SyslogSink {
        toml::from_str(&format!(
            "name = \"siem\"\naddress = \"127.0.0.1:6514\"\ntransport = \"tcp\"\n{extra}"
        ))
        .unwrap()
    }

    fn body(summary: &str) -> String {
        let mut a = Alert::sample("al-1", 1_700_000_000_000, Severity::High, AlertStatus::Open);
        a.summary = summary.into();
        a.detected_at = "2026-12-03T10:00:00.000Z".into();
        a.evidence = json!({"client": "10.0.0.9", "register": 1201});
        serde_json::to_string(&a).unwrap()
    }

    #[test]
    fn a_cef_message_is_rfc5424_with_escaped_fields() {
        let s = sink("hostname = \"soc-1\"\nfacility = \"local4\"");
        let h = Header::of(&s);
        let m = message(&h, &body("a=b | c\\d\nnext"), 1_700_000_001_000).unwrap();
        // local4 (20) × 8 + err (3) = 163.
        assert!(
            m.starts_with("<163>1 2023-11-14T22:13:21.000Z soc-1 wattchdog "),
            "{m}"
        );
        assert!(
            m.contains(
                " alert [wattchdog@32473 alert=\"al-1\" snapshot=\"al-1:open:1:high:cause\""
            ),
            "{m}"
        );
        let cef = &m[m.find("CEF:0|").unwrap()..];
        assert!(
            cef.contains("|ewma_z:T0831|a=b \\| c\\\\d next|8|"),
            "the header escapes | and \\ and has no line break: {cef}"
        );
        assert!(cef.contains(" msg=a\\=b | c\\\\d\\nnext"), "{cef}");
        assert!(
            cef.contains(" src=10.0.0.9 "),
            "the client of a command: {cef}"
        );
        assert!(cef.contains("start=1700000000000 "), "{cef}");
    }

    #[test]
    fn a_long_alert_loses_its_evidence_then_its_summary_tail_and_fits() {
        let mut s = sink("max_message = 800\npayload = \"json\"");
        let h = Header::of(&s);
        let long = "é".repeat(400);
        let m = message(&h, &body(&long), 0).unwrap();
        assert!(m.len() <= 800, "{}", m.len());
        let json: Value = serde_json::from_str(&m[m.find("] ").unwrap() + 2..]).unwrap();
        assert_eq!(json["evidence"], json!({"truncated": true}));
        assert!(json["summary"].as_str().unwrap().ends_with('…'));
        (s.payload, s.max_message) = (Payload::Cef, 900);
        let m = message(&Header::of(&s), &body(&long), 0).unwrap();
        assert!(
            m.len() <= 900 && m.contains("CEF:0|") && m.contains("…"),
            "{}",
            m.len()
        );
        // What cannot fit without its summary is refused, not cut mid-field.
        s.max_message = 480;
        assert!(message(&Header::of(&s), &body(&long), 0).is_err());
    }

    #[test]
    fn an_ocsf_finding_has_its_class_and_ids() {
        let s = sink("payload = \"ocsf\"");
        let m = message(&Header::of(&s), &body("x"), 0).unwrap();
        let v: Value = serde_json::from_str(&m[m.find("] ").unwrap() + 2..]).unwrap();
        assert_eq!(
            (v["class_uid"].as_u64(), v["type_uid"].as_u64()),
            (Some(2004), Some(200_401))
        );
        assert_eq!(v["finding_info"]["uid"], "al-1");
        assert_eq!(v["severity_id"], 4);
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.9");
    }

    #[test]
    fn frames_are_octet_counted_in_bytes() {
        assert_eq!(frame("é1"), b"3 \xc3\xa91");
    }

    #[test]
    fn config_is_checked() {
        let ok = sink("");
        assert!(validate(std::slice::from_ref(&ok), &[], "t").is_ok());
        assert!(validate(std::slice::from_ref(&ok), &["siem"], "t")
            .unwrap_err()
            .to_string()
            .contains("unique"));
        for (extra, key) in [
            ("facility = \"local9\"", "facility"),
            ("sd_id = \"no-number\"", "sd_id"),
            ("roles = []", "roles"),
            ("max_message = 100", "max_message"),
        ] {
            let err = validate(&[sink(extra)], &[], "t").unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let tls: SyslogSink =
            toml::from_str("name = \"s\"\naddress = \"siem:6514\"\ntransport = \"tls\"").unwrap();
        assert!(validate(&[tls], &[], "t")
            .unwrap_err()
            .to_string()
            .contains("ca"));
        let bad: SyslogSink =
            toml::from_str("name = \"s\"\naddress = \"siem\"\ntransport = \"udp\"").unwrap();
        assert!(validate(&[bad], &[], "t")
            .unwrap_err()
            .to_string()
            .contains("host:port"));
    }

    #[tokio::test]
    async fn udp_sends_one_datagram_per_message_and_tcp_sees_a_closed_peer() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut s = sink("");
        (s.transport, s.address) = (Transport::Udp, rx.local_addr().unwrap().to_string());
        let mut conn = Conn::open(&s, None).await.unwrap();
        assert!(!conn.closed().await, "UDP has no peer to close");
        let msg = message(&Header::of(&s), &body("x"), 0).unwrap();
        conn.send(&msg, Duration::from_secs(1)).await.unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], msg.as_bytes(), "no octet count over UDP");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (s.transport, s.address) = (Transport::Tcp, listener.local_addr().unwrap().to_string());
        let mut conn = Conn::open(&s, None).await.unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        assert!(!conn.closed().await, "open while the receiver holds it");
        drop(peer);
        // The FIN is in flight on loopback: wait until the socket can see it.
        let Conn::Tcp(t) = &conn else { unreachable!() };
        t.readable().await.unwrap();
        assert!(
            conn.closed().await,
            "a receiver that hung up is noticed before sending"
        );
    }

    proptest::proptest! {
        #[test]
        fn escaped_values_round_trip(s in "\\PC*") {
            // Undoing the CEF value escapes gives the text back (line breaks included).
            let e = cef_value(&s);
            let mut back = String::new();
            let mut it = e.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    match it.next() {
                        Some('n') => back.push('\n'),
                        Some('r') => back.push('\r'),
                        Some(x) => back.push(x),
                        None => proptest::prop_assert!(false, "dangling escape"),
                    }
                } else {
                    proptest::prop_assert!(c != '=', "unescaped = in {e}");
                    back.push(c);
                }
            }
            proptest::prop_assert_eq!(back, s.clone());
            let sd = sd_value(&s);
            proptest::prop_assert!(!sd.replace("\\\\", "").replace("\\\"", "").replace("\\]", "").contains(['"', ']']));
        }
    }
}
