//! The SNMP poller (v2c and v3 with `snmp2`) and trap receiver, scheduled, backed off
//! and counted like Modbus by [`super::poll`].
//!
//! - Each device reads its object map (`protocols/snmp/`): scalars and table cells with
//!   GET (at most `max_oids` per request), then every table column walked together with
//!   GETBULK (one repeater per column, so a UPS's input and output lines are read at
//!   one instant) and their rows reduced (a three-phase UPS reports output power per
//!   line: the map sums them).
//! - SNMP runs over UDP: a request that gets no answer within `timeout` is sent again,
//!   `retries` times, each time from a fresh socket so that a late answer to the first
//!   can never be taken for the second's (snmp2 rejects a mismatched request id but
//!   does not skip it). When the retries are spent the cycle ends, nothing is reported
//!   (silence: the staleness detector's) and the poll schedule backs off.
//! - An error status in a response (`genErr`, `tooBig`, …) or `noSuchObject`,
//!   `noSuchInstance`, `endOfMibView` for an object is an answer: the objects are
//!   reported with `quality = "bad"`, carrying their last good value, and counted.
//! - Read-only by construction: [`ReadOnlySession`] exposes GET and GETBULK and is the
//!   only handle this module holds; snmp2's `set` is never called (a test checks the
//!   source).
//! - Traps and informs (v1, v2c, v3) arrive on one UDP socket: a notification from a
//!   configured device's address with its community (v3: authenticated, and decrypted,
//!   with its user's keys) becomes readings through the map's `[[traps]]` rules (a v1 or
//!   v2c inform is acknowledged; a v3 inform is taken but not acknowledged yet). Notifications from unknown
//!   addresses, with the wrong community, undecodable or over `max_trap_rate` per device
//!   are counted, and the first ones logged; none stops the receiver.

use super::poll::{
    bump, poll_device, with_port, Answers, DeviceStats, Failure, Link, PollSettings, Schedule,
};
use crate::model::{Quality, Reading};
use crate::protocol::ber;
use crate::protocol::mib::{self, ObjectMap, Oid};
use crate::time::{serde_duration, Clock};
use crate::tomlfile::{check, TomlError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

/// `[snmp]` in `wattchdog.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnmpConfig {
    /// Site of the devices. Default `"site"`.
    pub site: String,
    /// Poll interval (event time). Default `"5s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub interval: i64,
    /// Per-request timeout (wall time). Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub timeout: i64,
    /// Times a request is sent again after a timeout. Default 1.
    pub retries: u32,
    /// Devices polling at the same moment. Default 64.
    pub concurrency: usize,
    /// First re-poll delay after failures; doubles up to `backoff_max`. Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub backoff_min: i64,
    /// Longest re-poll delay. Default `"5m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub backoff_max: i64,
    /// Objects per GET. Default 32.
    pub max_oids: usize,
    /// Rows per GETBULK. Default 16.
    pub max_repetitions: u32,
    /// Rows a walked column may have (more are not read, and counted). Default 256.
    pub max_rows: usize,
    /// v2c community, unless a device has its own. Default `"public"`.
    pub community: String,
    /// The devices.
    pub devices: Vec<SnmpDeviceConfig>,
    /// Where to receive traps and informs (`host:port`; 162 is the standard port).
    pub trap_listen: Option<String>,
    /// Notifications per device per second accepted; more are counted and dropped
    /// (a flood of forged traps must not flood the pipeline). Default 20.
    pub max_trap_rate: u32,
}

impl Default for SnmpConfig {
    fn default() -> Self {
        Self {
            site: "site".into(),
            interval: 5_000,
            timeout: 1_000,
            retries: 1,
            concurrency: 64,
            backoff_min: 1_000,
            backoff_max: 300_000,
            max_oids: 32,
            max_repetitions: 16,
            max_rows: 256,
            community: "public".into(),
            devices: Vec::new(),
            trap_listen: None,
            max_trap_rate: 20,
        }
    }
}

/// SNMP version of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Version {
    /// SNMPv2c (community).
    #[default]
    #[serde(rename = "2c")]
    V2c,
    /// SNMPv3 (user-based security).
    #[serde(rename = "3")]
    V3,
}

/// One `[[snmp.devices]]` entry; unset fields take `[snmp]`'s value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpDeviceConfig {
    /// Device name, unique within the site.
    pub name: String,
    /// `host:port` (or `host`, port 161) of the agent.
    pub address: String,
    /// Built-in object map name, or a map file (`.toml`, relative to the config).
    pub profile: String,
    /// Site, if not `[snmp]`'s.
    pub site: Option<String>,
    /// Poll interval.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub interval: Option<i64>,
    /// Request timeout.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub timeout: Option<i64>,
    /// `"2c"` (default) or `"3"`.
    #[serde(default)]
    pub version: Version,
    /// v2c community (polls and traps).
    pub community: Option<String>,
    /// A file whose first line is the community (relative to the config), instead.
    pub community_file: Option<String>,
    /// v3 user name.
    pub user: Option<String>,
    /// v3 authentication: `md5`, `sha` (SHA-1), `sha224`, `sha256` (default), `sha384`,
    /// `sha512`.
    pub auth: Option<String>,
    /// v3 authentication pass phrase (at least 8 characters); none: noAuthNoPriv.
    pub auth_password: Option<String>,
    /// A file whose first line is the authentication pass phrase, instead.
    pub auth_password_file: Option<String>,
    /// v3 privacy: `aes` (AES-128, default), `aes192`, `aes256`, `des`.
    pub privacy: Option<String>,
    /// v3 privacy pass phrase; none: authNoPriv.
    pub privacy_password: Option<String>,
    /// A file whose first line is the privacy pass phrase, instead.
    pub privacy_password_file: Option<String>,
}

/// How a device is reached.
#[derive(Clone, PartialEq)]
pub enum Credentials {
    /// v2c community.
    V2c(String),
    /// v3 user and keys.
    V3 {
        /// User name.
        user: String,
        /// Authentication protocol and pass phrase.
        auth: Option<(snmp2::v3::AuthProtocol, String)>,
        /// Privacy cipher and pass phrase.
        privacy: Option<(snmp2::v3::Cipher, String)>,
    },
}

impl std::fmt::Debug for Credentials {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V2c(_) => f.write_str("V2c(..)"),
            Self::V3 {
                user,
                auth,
                privacy,
            } => write!(
                f,
                "V3 {{ user: {user:?}, auth: {}, privacy: {} }}",
                auth.is_some(),
                privacy.is_some()
            ),
        }
    }
}

impl Credentials {
    /// The v3 user's security state (keys, engine), for a session or a receiver.
    fn security(&self) -> Option<snmp2::v3::Security> {
        let Credentials::V3 {
            user,
            auth,
            privacy,
        } = self
        else {
            return None;
        };
        let (proto, pass) = auth
            .clone()
            .unwrap_or((snmp2::v3::AuthProtocol::Sha256, String::new()));
        let level = match (auth, privacy) {
            (None, _) => snmp2::v3::Auth::NoAuthNoPriv,
            (Some(_), None) => snmp2::v3::Auth::AuthNoPriv,
            (Some(_), Some((cipher, p))) => snmp2::v3::Auth::AuthPriv {
                cipher: *cipher,
                privacy_password: p.as_bytes().to_vec(),
            },
        };
        Some(
            snmp2::v3::Security::new(user.as_bytes(), pass.as_bytes())
                .with_auth_protocol(proto)
                .with_auth(level),
        )
    }
}

/// A device ready to poll.
#[derive(Debug, Clone)]
pub struct SnmpPlan {
    /// Site.
    pub site: crate::model::Name,
    /// Device name.
    pub name: crate::model::Name,
    /// `host:port`.
    pub address: String,
    /// Poll interval (event-time ms).
    pub interval: i64,
    /// Request timeout (wall ms).
    pub timeout: i64,
    /// Extra sends after a timeout.
    pub retries: u32,
    /// Rows per GETBULK.
    pub max_repetitions: u32,
    /// Rows a column may have.
    pub max_rows: usize,
    /// How to authenticate.
    pub credentials: Credentials,
    /// GET requests: the distinct instances, `max_oids` at a time.
    pub gets: Vec<Vec<Oid>>,
    /// The object map.
    pub map: Arc<ObjectMap>,
}

fn auth_protocol(s: &str) -> Option<snmp2::v3::AuthProtocol> {
    use snmp2::v3::AuthProtocol as A;
    Some(match s.to_ascii_lowercase().as_str() {
        "md5" => A::Md5,
        "sha" | "sha1" => A::Sha1,
        "sha224" => A::Sha224,
        "sha256" => A::Sha256,
        "sha384" => A::Sha384,
        "sha512" => A::Sha512,
        _ => return None,
    })
}

fn cipher(s: &str) -> Option<snmp2::v3::Cipher> {
    use snmp2::v3::Cipher as C;
    Some(match s.to_ascii_lowercase().as_str() {
        "aes" | "aes128" => C::Aes128,
        "aes192" => C::Aes192,
        "aes256" => C::Aes256,
        "des" => C::Des,
        _ => return None,
    })
}

impl SnmpConfig {
    /// Checks the settings and resolves every device's map (files relative to `base`).
    pub fn resolve(&self, base: &Path, origin: &str) -> Result<Vec<SnmpPlan>, TomlError> {
        let schedule = Schedule {
            interval: self.interval,
            timeout: self.timeout,
            concurrency: self.concurrency,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        };
        schedule.check(origin, "snmp")?;
        check(
            origin,
            "snmp.retries",
            self.retries <= 10,
            "must be at most 10",
        )?;
        check(
            origin,
            "snmp.max_oids",
            (1..=128).contains(&self.max_oids),
            "must be 1..=128",
        )?;
        check(
            origin,
            "snmp.max_repetitions",
            (1..=256).contains(&self.max_repetitions),
            "must be 1..=256",
        )?;
        check(
            origin,
            "snmp.max_rows",
            (1..=65_536).contains(&self.max_rows),
            "must be 1..=65536",
        )?;
        check(
            origin,
            "snmp.max_trap_rate",
            self.max_trap_rate >= 1,
            "must be at least 1",
        )?;
        if let Some(l) = &self.trap_listen {
            check(
                origin,
                "snmp.trap_listen",
                l.parse::<SocketAddr>().is_ok(),
                "must be ip:port",
            )?;
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(self.devices.len());
        for (i, d) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("snmp.devices[{i}] ({}).{k}", d.name);
            let site = d.site.clone().unwrap_or_else(|| self.site.clone());
            let (interval, timeout) = schedule.device(
                origin,
                &key,
                &mut seen,
                (&site, &d.name),
                (d.interval, d.timeout),
            )?;
            check(
                origin,
                &key("address"),
                !d.address.is_empty(),
                "must be host[:port]",
            )?;
            let mut with_secrets = d.clone();
            for (name, value, file) in [
                ("community", &mut with_secrets.community, &d.community_file),
                (
                    "auth_password",
                    &mut with_secrets.auth_password,
                    &d.auth_password_file,
                ),
                (
                    "privacy_password",
                    &mut with_secrets.privacy_password,
                    &d.privacy_password_file,
                ),
            ] {
                secret(value, file, base, origin, &key, name)?;
            }
            let credentials = credentials(&with_secrets, &self.community, origin, &key)?;
            let map = if crate::protocol::profiles::is_file(&d.profile) {
                crate::tomlfile::load(&base.join(&d.profile), ObjectMap::from_toml_str)
            } else {
                mib::named(&d.profile)
            }
            .map_err(|e| TomlError::Invalid {
                path: origin.to_owned(),
                key: key("profile"),
                rule: e.to_string(),
            })?;
            let mut instances: Vec<Oid> = map.scalars().map(|(_, o)| o.clone()).collect();
            instances.sort();
            instances.dedup();
            out.push(SnmpPlan {
                site: site.into(),
                name: d.name.as_str().into(),
                address: with_port(&d.address, 161),
                interval,
                timeout,
                retries: self.retries,
                max_repetitions: self.max_repetitions,
                max_rows: self.max_rows,
                credentials,
                gets: instances
                    .chunks(self.max_oids)
                    .map(<[Oid]>::to_vec)
                    .collect(),
                map: Arc::new(map),
            });
        }
        Ok(out)
    }
}

/// Fills `value` from `file` (its first line, trimmed; relative to `base`) when the
/// file is given instead: secrets may live outside the config, readable only by the
/// service.
fn secret(
    value: &mut Option<String>,
    file: &Option<String>,
    base: &Path,
    origin: &str,
    key: &dyn Fn(&str) -> String,
    name: &str,
) -> Result<(), TomlError> {
    let Some(f) = file else { return Ok(()) };
    check(
        origin,
        &key(&format!("{name}_file")),
        value.is_none(),
        &format!("give {name} or {name}_file, not both"),
    )?;
    let text = crate::tomlfile::read(&base.join(f))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    check(
        origin,
        &key(&format!("{name}_file")),
        !line.is_empty(),
        "names an empty file",
    )?;
    *value = Some(line);
    Ok(())
}

fn credentials(
    d: &SnmpDeviceConfig,
    community: &str,
    origin: &str,
    key: &dyn Fn(&str) -> String,
) -> Result<Credentials, TomlError> {
    let v3_only = [
        ("user", d.user.is_some()),
        ("auth", d.auth.is_some()),
        ("auth_password", d.auth_password.is_some()),
        ("privacy", d.privacy.is_some()),
        ("privacy_password", d.privacy_password.is_some()),
    ];
    if d.version == Version::V2c {
        for (k, given) in v3_only {
            check(origin, &key(k), !given, "is for version = \"3\"")?;
        }
        return Ok(Credentials::V2c(
            d.community.clone().unwrap_or_else(|| community.to_owned()),
        ));
    }
    check(
        origin,
        &key("community"),
        d.community.is_none(),
        "is for version = \"2c\"",
    )?;
    let user = d.user.clone().unwrap_or_default();
    check(
        origin,
        &key("user"),
        !user.is_empty(),
        "is required with version = \"3\"",
    )?;
    let long_enough = |p: &Option<String>| p.as_ref().is_none_or(|p| p.len() >= 8);
    check(
        origin,
        &key("auth_password"),
        long_enough(&d.auth_password),
        "must be at least 8 characters (RFC 3414)",
    )?;
    check(
        origin,
        &key("privacy_password"),
        long_enough(&d.privacy_password),
        "must be at least 8 characters (RFC 3414)",
    )?;
    check(
        origin,
        &key("privacy_password"),
        d.privacy_password.is_none() || d.auth_password.is_some(),
        "needs auth_password (privacy without authentication does not exist in SNMPv3)",
    )?;
    let auth = match &d.auth_password {
        Some(p) => {
            let name = d.auth.as_deref().unwrap_or("sha256");
            let proto = auth_protocol(name);
            check(
                origin,
                &key("auth"),
                proto.is_some(),
                "must be md5, sha, sha224, sha256, sha384 or sha512",
            )?;
            proto.map(|a| (a, p.clone()))
        }
        None => None,
    };
    let privacy = match &d.privacy_password {
        Some(p) => {
            let c = cipher(d.privacy.as_deref().unwrap_or("aes"));
            check(
                origin,
                &key("privacy"),
                c.is_some(),
                "must be aes, aes192, aes256 or des",
            )?;
            c.map(|c| (c, p.clone()))
        }
        None => None,
    };
    Ok(Credentials::V3 {
        user,
        auth,
        privacy,
    })
}

/// A value as read, before the map's scale.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// A number (INTEGER, Gauge32, Counter, TimeTicks, or a decimal string).
    Number(f64),
    /// An OBJECT IDENTIFIER (trap payloads).
    Oid(Oid),
    /// `noSuchObject`, `noSuchInstance` or `endOfMibView`.
    Missing,
    /// Anything else (an unparsable string, an address, …).
    Other,
}

/// Our OID from snmp2's (`None` for arcs beyond 32 bits or too many).
pub fn oid_of(o: &snmp2::Oid<'_>) -> Option<Oid> {
    let arcs: Option<Vec<u32>> = o.iter()?.map(|a| u32::try_from(a).ok()).collect();
    arcs.filter(|a| a.len() <= mib::MAX_ARCS).map(Oid)
}

/// snmp2's OID from ours.
fn snmp_oid(o: &Oid) -> Option<snmp2::Oid<'static>> {
    snmp2::Oid::from(&o.arcs()).ok()
}

/// What a varbind's value says.
pub fn raw_of(v: &snmp2::Value<'_>) -> Raw {
    use snmp2::Value as V;
    match v {
        V::Integer(n) => Raw::Number(*n as f64),
        V::Counter32(n) | V::Unsigned32(n) | V::Timeticks(n) => Raw::Number(f64::from(*n)),
        V::Counter64(n) => Raw::Number(*n as f64),
        V::OctetString(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .map_or(Raw::Other, Raw::Number),
        V::ObjectIdentifier(o) => oid_of(o).map_or(Raw::Other, Raw::Oid),
        V::NoSuchObject | V::NoSuchInstance | V::EndOfMibView => Raw::Missing,
        _ => Raw::Other,
    }
}

/// An object's value from what was read: `None` when it is not a good value.
pub fn decode(o: &mib::Object, raw: f64) -> Option<f64> {
    let integral = raw.fract() == 0.0 && raw.abs() < 9.0e15;
    if integral && o.not_available.contains(&(raw as i64)) {
        return None;
    }
    if !o.equals.is_empty() {
        return Some(f64::from(u8::from(
            integral && o.equals.contains(&(raw as i64)),
        )));
    }
    Some(raw * o.scale + o.offset).filter(|v| v.is_finite())
}

/// A response, owned.
#[derive(Debug, Default)]
struct Answer {
    error_status: u32,
    varbinds: Vec<(Option<Oid>, Raw)>,
}

fn answer_of(p: &snmp2::Pdu<'_>) -> Answer {
    Answer {
        error_status: p.error_status,
        varbinds: p
            .varbinds
            .clone()
            .map(|(o, v)| (oid_of(&o), raw_of(&v)))
            .collect(),
    }
}

/// The only handle this module holds on an agent: GET and GETBULK, nothing else.
struct ReadOnlySession(Box<snmp2::AsyncSession>);

impl ReadOnlySession {
    async fn open(address: &str, credentials: &Credentials) -> Result<Self, String> {
        let start = rand::random::<u16>().into();
        let session = match credentials {
            Credentials::V2c(c) => snmp2::AsyncSession::new_v2c(address, c.as_bytes(), start)
                .await
                .map_err(|e| e.to_string())?,
            Credentials::V3 { .. } => {
                let security = credentials.security().ok_or("not v3")?;
                let mut s = snmp2::AsyncSession::new_v3(address, start, security)
                    .await
                    .map_err(|e| e.to_string())?;
                // Engine discovery (the agent's engine id, boots and time).
                s.init().await.map_err(|e| format!("{e:?}"))?;
                s
            }
        };
        Ok(Self(Box::new(session)))
    }

    async fn get(&mut self, oids: &[snmp2::Oid<'static>]) -> Result<Answer, String> {
        let refs: Vec<&snmp2::Oid<'_>> = oids.iter().collect();
        self.0
            .get_many(&refs)
            .await
            .map(|p| answer_of(&p))
            .map_err(|e| format!("{e:?}"))
    }

    async fn bulk(&mut self, from: &[snmp2::Oid<'static>], rows: u32) -> Result<Answer, String> {
        let refs: Vec<&snmp2::Oid<'_>> = from.iter().collect();
        self.0
            .getbulk(&refs, 0, rows)
            .await
            .map(|p| answer_of(&p))
            .map_err(|e| format!("{e:?}"))
    }
}

enum Ask<'a> {
    Get(&'a [snmp2::Oid<'static>]),
    Bulk(&'a [snmp2::Oid<'static>]),
}

/// One device's session and decoding state.
pub struct SnmpPoller {
    dev: SnmpPlan,
    kind: crate::model::Name,
    timeout: Duration,
    clock: Clock,
    session: Option<ReadOnlySession>,
    dropped: Option<Failure>,
    gets: Vec<Vec<snmp2::Oid<'static>>>,
    columns: Vec<(usize, Oid, mib::Aggregate)>,
    last_good: Vec<f64>,
    stats: Arc<DeviceStats>,
}

impl SnmpPoller {
    /// A poller with no session yet.
    pub fn new(dev: SnmpPlan, clock: Clock, stats: Arc<DeviceStats>) -> Self {
        let gets = dev
            .gets
            .iter()
            .map(|g| g.iter().filter_map(snmp_oid).collect())
            .collect();
        let columns = dev
            .map
            .columns()
            .map(|(i, c, a)| (i, c.clone(), a))
            .collect();
        Self {
            kind: dev.map.kind.clone(),
            timeout: Duration::from_millis(dev.timeout.max(1) as u64),
            last_good: vec![0.0; dev.map.objects.len()],
            gets,
            columns,
            dev,
            clock,
            session: None,
            dropped: None,
            stats,
        }
    }

    /// Sends `ask`, again from a fresh session after a timeout or a garbled answer, up to
    /// `retries` times.
    async fn exchange(&mut self, ask: Ask<'_>) -> Result<Answer, Failure> {
        let mut failure = Failure::Timeout(self.dev.timeout);
        for _ in 0..=self.dev.retries {
            if self.session.is_none() {
                self.open().await?;
            }
            let Some(s) = self.session.as_mut() else {
                continue;
            };
            bump(&self.stats.requests, 1);
            let sent = match ask {
                Ask::Get(oids) => tokio::time::timeout(self.timeout, s.get(oids)).await,
                Ask::Bulk(from) => {
                    let rows = self.dev.max_repetitions;
                    tokio::time::timeout(self.timeout, s.bulk(from, rows)).await
                }
            };
            match sent {
                Ok(Ok(a)) => {
                    bump(&self.stats.responses, 1);
                    return Ok(a);
                }
                Ok(Err(e)) => {
                    bump(&self.stats.transport_errors, 1);
                    debug!(device = %self.dev.name, error = %e, "bad answer; new session");
                    failure = Failure::Transport(e);
                }
                Err(_) => {
                    bump(&self.stats.timeouts, 1);
                    failure = Failure::Timeout(self.dev.timeout);
                }
            }
            self.session = None;
        }
        Err(failure)
    }

    async fn open(&mut self) -> Result<(), Failure> {
        let opened = tokio::time::timeout(
            self.timeout,
            ReadOnlySession::open(&self.dev.address, &self.dev.credentials),
        )
        .await;
        match opened {
            Ok(Ok(s)) => {
                bump(&self.stats.connects, 1);
                self.session = Some(s);
                Ok(())
            }
            Ok(Err(e)) => {
                bump(&self.stats.transport_errors, 1);
                Err(Failure::Connect(e))
            }
            Err(_) => {
                bump(&self.stats.timeouts, 1);
                Err(Failure::Connect("no answer to engine discovery".into()))
            }
        }
    }

    fn reading(&mut self, i: usize, raw: Option<f64>, ts: i64, out: &mut Vec<Reading>) {
        let o = &self.dev.map.objects[i];
        let (value, quality) = match raw.and_then(|r| decode(o, r)) {
            Some(v) => {
                bump(&self.stats.good, 1);
                self.last_good[i] = v;
                (v, Quality::Good)
            }
            None => {
                bump(&self.stats.bad, 1);
                (self.last_good[i], Quality::Bad)
            }
        };
        out.push(Reading {
            ts,
            site: self.dev.site.clone(),
            device: self.dev.name.clone(),
            kind: self.kind.clone(),
            metric: o.metric.clone(),
            value,
            quality,
        });
    }

    /// Walks every column together, one GETBULK with a repeater per unfinished column
    /// at a time (so that a UPS's input and output lines are read at one instant):
    /// each column's rows, `None` for a column the agent answered with an error.
    async fn walk(&mut self) -> Result<Vec<Option<Vec<f64>>>, Failure> {
        let mut walks: Vec<Walk> = self
            .columns
            .iter()
            .map(|(_, c, _)| Walk::new(c.clone()))
            .collect();
        loop {
            let open: Vec<usize> = (0..walks.len()).filter(|&i| walks[i].open()).collect();
            if open.is_empty() {
                break;
            }
            let Some(from) = open
                .iter()
                .map(|&i| snmp_oid(&walks[i].at))
                .collect::<Option<Vec<_>>>()
            else {
                break;
            };
            // An error status marks the open walks bad, each counted below.
            let a = self.exchange(Ask::Bulk(&from)).await?;
            advance(&mut walks, &open, a, self.dev.max_rows);
        }
        let mut out = Vec::with_capacity(walks.len());
        for w in walks {
            match w.state {
                WalkState::Bad => bump(&self.stats.exceptions, 1),
                WalkState::Full => {
                    warn!(device = %self.dev.name, column = %w.column, max_rows = self.dev.max_rows, "column longer than max_rows; rest not read");
                }
                WalkState::Open | WalkState::Done => {}
            }
            out.push((w.state != WalkState::Bad).then_some(w.rows));
        }
        Ok(out)
    }
}

/// Where one column's walk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    Open,
    /// Past the column's last row.
    Done,
    /// Stopped at `max_rows`.
    Full,
    /// An error status or a value that is not a number.
    Bad,
}

#[derive(Debug, Clone)]
struct Walk {
    column: Oid,
    /// The last row read (the column itself before the first).
    at: Oid,
    rows: Vec<f64>,
    state: WalkState,
}

impl Walk {
    fn new(column: Oid) -> Self {
        Self {
            at: column.clone(),
            column,
            rows: Vec::new(),
            state: WalkState::Open,
        }
    }

    fn open(&self) -> bool {
        self.state == WalkState::Open
    }
}

/// Takes a GETBULK answer whose repeaters were the cursors of `open` walks, in order
/// (RFC 3416: the answer interleaves them row by row). A walk ends past its column, at
/// `max_rows`, or when the answer does not move it forward (an agent that answers
/// nothing new must not keep us asking).
fn advance(walks: &mut [Walk], open: &[usize], a: Answer, max_rows: usize) {
    let mut moved = vec![false; walks.len()];
    if a.error_status != 0 {
        for &i in open {
            walks[i].state = WalkState::Bad;
        }
        return;
    }
    for (k, (name, raw)) in a.varbinds.into_iter().enumerate() {
        let i = open[k % open.len()];
        let w = &mut walks[i];
        if !w.open() {
            continue;
        }
        let Some(name) = name.filter(|n| n.starts_with(&w.column) && *n > w.at) else {
            w.state = WalkState::Done;
            continue;
        };
        match raw {
            Raw::Number(x) => {
                w.rows.push(x);
                w.at = name;
                moved[i] = true;
                if w.rows.len() >= max_rows {
                    w.state = WalkState::Full;
                }
            }
            Raw::Missing => w.state = WalkState::Done,
            _ => w.state = WalkState::Bad,
        }
    }
    for &i in open {
        if walks[i].open() && !moved[i] {
            walks[i].state = WalkState::Done;
        }
    }
}

impl Link for SnmpPoller {
    fn name(&self) -> &str {
        &self.dev.name
    }

    fn protocol(&self) -> &'static str {
        "snmp"
    }

    fn connected(&self) -> bool {
        self.session.is_some()
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        self.open().await
    }

    /// Every GET, then every column walk; each object stamped when its answer arrived.
    async fn cycle(&mut self, out: &mut Answers) {
        let gets = std::mem::take(&mut self.gets);
        let map = self.dev.map.clone();
        for (chunk, oids) in self.dev.gets.clone().iter().zip(&gets) {
            let answer = match self.exchange(Ask::Get(oids)).await {
                Ok(a) => a,
                Err(f) => {
                    self.dropped = Some(f);
                    break;
                }
            };
            let ts = self.clock.now();
            if answer.error_status != 0 {
                bump(&self.stats.exceptions, 1);
                debug!(device = %self.dev.name, status = answer.error_status, "error status");
            }
            let by_oid: BTreeMap<&Oid, f64> = chunk
                .iter()
                .zip(&answer.varbinds)
                .filter(|_| answer.error_status == 0)
                .filter_map(|(want, (got, raw))| match raw {
                    Raw::Number(x) if got.as_ref() == Some(want) => Some((want, *x)),
                    _ => None,
                })
                .collect();
            for (i, oid) in map.scalars().filter(|(_, o)| chunk.contains(o)) {
                self.reading(i, by_oid.get(oid).copied(), ts, out.batch());
            }
            out.flush().await;
        }
        self.gets = gets;
        if self.dropped.is_none() && !self.columns.is_empty() {
            match self.walk().await {
                Ok(columns) => {
                    let ts = self.clock.now();
                    let aggs: Vec<_> = self.columns.iter().map(|c| (c.0, c.2)).collect();
                    for ((i, aggregate), rows) in aggs.into_iter().zip(columns) {
                        let v = rows.and_then(|r| aggregate.apply(&r));
                        self.reading(i, v, ts, out.batch());
                    }
                }
                Err(f) => self.dropped = Some(f),
            }
        }
    }

    fn take_failure(&mut self) -> Option<Failure> {
        self.dropped.take()
    }
}

/// Counters of the trap receiver.
#[derive(Debug, Default)]
pub struct TrapStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Readings produced.
    pub readings: AtomicU64,
    /// Informs acknowledged.
    pub acknowledged: AtomicU64,
    /// From an address no configured device has.
    pub unknown_source: AtomicU64,
    /// With a community other than the device's.
    pub bad_community: AtomicU64,
    /// Not a notification (undecodable, another PDU), or a v3 one that does not
    /// authenticate with its device's user.
    pub undecodable: AtomicU64,
    /// Understood, but no rule of the device's map matched.
    pub unmatched: AtomicU64,
    /// Over `max_trap_rate`.
    pub rate_limited: AtomicU64,
}

/// A snapshot of [`TrapStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct TrapCounts {
    pub listen: String,
    pub received: u64,
    pub readings: u64,
    pub acknowledged: u64,
    pub unknown_source: u64,
    pub bad_community: u64,
    pub undecodable: u64,
    pub unmatched: u64,
    pub rate_limited: u64,
}

impl TrapStats {
    /// The counters now.
    pub fn snapshot(&self, listen: &str) -> TrapCounts {
        let g = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        TrapCounts {
            listen: listen.to_owned(),
            received: g(&self.received),
            readings: g(&self.readings),
            acknowledged: g(&self.acknowledged),
            unknown_source: g(&self.unknown_source),
            bad_community: g(&self.bad_community),
            undecodable: g(&self.undecodable),
            unmatched: g(&self.unmatched),
            rate_limited: g(&self.rate_limited),
        }
    }
}

/// A device notifications may come from.
#[derive(Debug, Clone)]
pub struct TrapSender {
    /// Its plan (name, site, community, map).
    pub plan: SnmpPlan,
    /// The agent's address, resolved.
    pub addr: SocketAddr,
    /// Accepted this second, and which second.
    window: (i64, u32),
    /// A v3 device's security state: its engine id is learned from its first
    /// authenticated notification and held to from then on.
    security: Option<snmp2::v3::Security>,
}

impl TrapSender {
    /// A sender at `addr`.
    pub fn new(plan: SnmpPlan, addr: SocketAddr) -> Self {
        let security = plan.credentials.security();
        Self {
            plan,
            addr,
            window: (0, 0),
            security,
        }
    }
}

/// Which device sent from `from`: the one at exactly that address, else the only one
/// at that IP (agents send notifications from any port).
fn sender_index(senders: &[TrapSender], from: SocketAddr) -> Option<usize> {
    if let Some(i) = senders.iter().position(|s| s.addr == from) {
        return Some(i);
    }
    let mut at_ip = senders
        .iter()
        .enumerate()
        .filter(|(_, s)| s.addr.ip() == from.ip());
    match (at_ip.next(), at_ip.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// A notification, decoded: its trap OID and the varbinds whose values are OIDs.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The community it came with.
    pub community: Vec<u8>,
    /// `snmpTrapOID.0` (v1: enterprise.0.specific, or the generic trap's OID).
    pub trap: Oid,
    /// Varbinds whose values are OIDs (what rules match on).
    pub oids: Vec<(Oid, Oid)>,
    /// An inform's request id, to acknowledge.
    pub inform: Option<i32>,
}

/// The varbinds' (name, value) pairs, bounded: a notification of more is cut there.
const MAX_TRAP_VARBINDS: usize = 64;

/// Decodes a v1 or v2c notification; `None` for anything else.
pub fn notification(bytes: &[u8]) -> Option<Notification> {
    notification_of(&snmp2::Pdu::from_bytes(bytes).ok()?)
}

/// Decodes a v3 notification from the user `security` holds (authenticated and
/// decrypted with its keys); `None` for anything else, a wrong key included.
pub fn notification_v3(bytes: &[u8], security: &mut snmp2::v3::Security) -> Option<Notification> {
    // snmp2 zeroes the authentication parameters in the buffer it is given to check
    // the digest: hand it a copy.
    // A message that does not authenticate leaves the state as it was: a forgery must
    // not pin a wrong engine id before the device's first real trap.
    let copy = bytes.to_vec();
    let mut trial = security.clone();
    let pdu = snmp2::Pdu::from_bytes_with_security(&copy, Some(&mut trial)).ok()?;
    let mut n = notification_of(&pdu)?;
    *security = trial;
    // An inform's acknowledgement would need a v3 response: not sent (yet).
    n.inform = None;
    n.community.clear();
    Some(n)
}

fn notification_of(pdu: &snmp2::Pdu<'_>) -> Option<Notification> {
    let pairs: Vec<(Option<Oid>, Raw)> = pdu
        .varbinds
        .clone()
        .take(MAX_TRAP_VARBINDS)
        .map(|(o, v)| (oid_of(&o), raw_of(&v)))
        .collect();
    let oids: Vec<(Oid, Oid)> = pairs
        .iter()
        .filter_map(|(n, v)| match (n, v) {
            (Some(n), Raw::Oid(v)) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect();
    let trap_oid = Oid(ber::SNMP_TRAP_OID.to_vec());
    let (trap, inform) = match pdu.message_type {
        snmp2::MessageType::Trap | snmp2::MessageType::InformRequest => {
            let t = oids.iter().find(|(n, _)| *n == trap_oid)?.1.clone();
            let inform =
                (pdu.message_type == snmp2::MessageType::InformRequest).then_some(pdu.req_id);
            (t, inform)
        }
        snmp2::MessageType::TrapV1 => {
            let info = pdu.v1_trap_info.as_ref()?;
            // RFC 3584 §3.1: generic traps map to snmpTraps.(generic + 1), enterprise
            // specific ones to enterprise.0.specific.
            let t = if info.generic_trap == 6 {
                let mut e = oid_of(&info.enterprise)?;
                e.0.push(0);
                e.0.push(u32::try_from(info.specific_trap).ok()?);
                e
            } else {
                let g = u32::try_from(info.generic_trap).ok().filter(|g| *g < 6)?;
                Oid(vec![1, 3, 6, 1, 6, 3, 1, 1, 5, g + 1])
            };
            (t, None)
        }
        _ => return None,
    };
    Some(Notification {
        community: pdu.community.to_vec(),
        trap,
        oids,
        inform,
    })
}

/// Receives notifications on `socket` until `stop` turns true, sending the readings
/// they carry.
pub async fn receive_traps(
    socket: UdpSocket,
    mut senders: Vec<TrapSender>,
    max_rate: u32,
    clock: Clock,
    stats: Arc<TrapStats>,
    tx: mpsc::Sender<Vec<Reading>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_535];
    let mut logged = 0u32;
    let mut note = |what: &str, from: SocketAddr| {
        // The first few of each run are logged; counters hold the rest.
        if logged < 20 {
            logged += 1;
            warn!(%from, what, "snmp notification dropped");
        }
    };
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "trap socket error");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if *stop.borrow() {
            break;
        }
        bump(&stats.received, 1);
        let Some(i) = sender_index(&senders, from) else {
            bump(&stats.unknown_source, 1);
            note("unknown source", from);
            continue;
        };
        let s = &mut senders[i];
        // Counted before decoding: a v3 decode may derive keys, which costs.
        let second = clock.now().div_euclid(1000);
        if s.window.0 != second {
            s.window = (second, 0);
        }
        if s.window.1 >= max_rate {
            bump(&stats.rate_limited, 1);
            continue;
        }
        s.window.1 += 1;
        let decoded = match s.security.as_mut() {
            None => notification(&buf[..n]),
            Some(sec) => notification_v3(&buf[..n], sec),
        };
        let Some(note_) = decoded else {
            bump(&stats.undecodable, 1);
            note("undecodable or not authenticated", from);
            continue;
        };
        let community_ok = match &s.plan.credentials {
            Credentials::V2c(c) => c.as_bytes() == note_.community.as_slice(),
            // Authenticated by its user's key.
            Credentials::V3 { .. } => true,
        };
        if !community_ok {
            bump(&stats.bad_community, 1);
            note("wrong community", from);
            continue;
        }
        if let Some(id) = note_.inform {
            let ack = ber::message_v2c(&note_.community, ber::tag::RESPONSE, id, 0, 0, &[]);
            if socket.send_to(&ack, from).await.is_ok() {
                bump(&stats.acknowledged, 1);
            }
        }
        let ts = clock.now();
        let plan = &s.plan;
        let readings: Vec<Reading> = plan
            .map
            .trap_readings(&note_.trap, &note_.oids)
            .map(|(metric, value)| Reading {
                ts,
                site: plan.site.clone(),
                device: plan.name.clone(),
                kind: plan.map.kind.clone(),
                metric: metric.clone(),
                value,
                quality: Quality::Good,
            })
            .collect();
        if readings.is_empty() {
            bump(&stats.unmatched, 1);
            debug!(device = %plan.name, trap = %note_.trap, "notification no rule matches");
            continue;
        }
        bump(&stats.readings, readings.len() as u64);
        if tx.send(readings).await.is_err() {
            break;
        }
    }
}

/// The running SNMP pollers and trap receiver of a config.
pub struct SnmpCollector {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Vec<(String, Arc<DeviceStats>)>,
    traps: Option<(String, Arc<TrapStats>)>,
}

impl SnmpCollector {
    /// Binds the trap socket (if configured) and starts one task per device.
    pub async fn start(
        cfg: &SnmpConfig,
        devices: Vec<SnmpPlan>,
        settings: PollSettings,
        tx: mpsc::Sender<Vec<Reading>>,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut traps = None;
        if let Some(listen) = &cfg.trap_listen {
            let socket = UdpSocket::bind(listen).await?;
            let bound = socket.local_addr()?.to_string();
            let mut senders = Vec::new();
            for plan in &devices {
                match tokio::net::lookup_host(&plan.address)
                    .await
                    .map(|mut a| a.next())
                {
                    Ok(Some(addr)) => senders.push(TrapSender::new(plan.clone(), addr)),
                    _ => {
                        warn!(device = %plan.name, address = %plan.address, "cannot resolve; its traps will be counted as unknown")
                    }
                }
            }
            info!(listen = %bound, devices = senders.len(), "snmp trap receiver listening");
            let s = Arc::new(TrapStats::default());
            tasks.push(tokio::spawn(receive_traps(
                socket,
                senders,
                cfg.max_trap_rate,
                settings.clock,
                s.clone(),
                tx.clone(),
                stop_rx.clone(),
            )));
            traps = Some((bound, s));
        }
        let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let mut stats = Vec::new();
        info!(devices = devices.len(), "snmp collector starting");
        for dev in devices {
            let s = Arc::new(DeviceStats::default());
            stats.push((dev.name.to_string(), s.clone()));
            let interval = dev.interval;
            let poller = SnmpPoller::new(dev, settings.clock, s.clone());
            tasks.push(tokio::spawn(poll_device(
                poller,
                interval,
                settings,
                limit.clone(),
                s,
                tx.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Self {
            stop,
            tasks,
            stats,
            traps,
        })
    }

    /// Stops every task and waits for them: the devices' counters and the receiver's.
    pub async fn stop(self) -> (Vec<super::poll::DeviceCounts>, Option<TrapCounts>) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.stats.iter().map(|(n, s)| s.snapshot(n)).collect(),
            self.traps.map(|(l, s)| s.snapshot(&l)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> mib::Object {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn enumerations_sentinels_and_scale() {
        let src = object("metric = \"on_battery\"\noid = \"1.3.6.1.2.1.33.1.4.1.0\"\nequals = [5]");
        assert_eq!(decode(&src, 5.0), Some(1.0));
        assert_eq!(decode(&src, 3.0), Some(0.0));
        let v = object(
            "metric = \"battery_voltage_v\"\noid = \"1.3.1.0\"\nscale = 0.1\nnot_available = [-1]",
        );
        assert_eq!(decode(&v, 2712.0), Some(271.2));
        assert_eq!(decode(&v, -1.0), None);
    }

    fn oid(s: &str) -> Oid {
        s.parse().unwrap()
    }

    #[test]
    fn interleaved_bulk_answers_walk_each_column_to_its_end() {
        let (a, b) = (oid("1.3.6.1.9.1.2"), oid("1.3.6.1.9.1.5"));
        let mut walks = vec![Walk::new(a.clone()), Walk::new(b.clone())];
        let n = |x: f64| Raw::Number(x);
        // Row by row: a.1, b.1, a.2, b.2, then a leaves its column (b.1 comes next in
        // the tree) while b still has a row.
        let answer = Answer {
            error_status: 0,
            varbinds: vec![
                (Some(a.child(1)), n(10.0)),
                (Some(b.child(1)), n(1.0)),
                (Some(a.child(2)), n(20.0)),
                (Some(b.child(2)), n(2.0)),
                (Some(b.child(1)), n(1.0)),
                (Some(b.child(3)), n(3.0)),
            ],
        };
        advance(&mut walks, &[0, 1], answer, 100);
        assert_eq!(walks[0].state, WalkState::Done);
        assert_eq!(walks[0].rows, [10.0, 20.0]);
        assert!(walks[1].open());
        assert_eq!(walks[1].rows, [1.0, 2.0, 3.0]);
        // The next answer has only b's repeater: it ends at endOfMibView.
        let answer = Answer {
            error_status: 0,
            varbinds: vec![(Some(b.child(3)), Raw::Missing)],
        };
        advance(&mut walks, &[1], answer, 100);
        assert_eq!(walks[1].state, WalkState::Done);
        // An agent that repeats itself, an empty answer, a long column, a bad value.
        let mut w = vec![Walk::new(a.clone())];
        w[0].at = a.child(5);
        let stuck = Answer {
            error_status: 0,
            varbinds: vec![(Some(a.child(5)), n(1.0))],
        };
        advance(&mut w, &[0], stuck, 100);
        assert_eq!(w[0].state, WalkState::Done);
        let mut w = vec![Walk::new(a.clone())];
        advance(&mut w, &[0], Answer::default(), 100);
        assert_eq!(w[0].state, WalkState::Done);
        let mut w = vec![Walk::new(a.clone())];
        let long = Answer {
            error_status: 0,
            varbinds: (1..=5).map(|r| (Some(a.child(r)), n(1.0))).collect(),
        };
        advance(&mut w, &[0], long, 3);
        assert_eq!((w[0].state, w[0].rows.len()), (WalkState::Full, 3));
        let mut w = vec![Walk::new(a.clone())];
        let text = Answer {
            error_status: 0,
            varbinds: vec![(Some(a.child(1)), Raw::Other)],
        };
        advance(&mut w, &[0], text, 3);
        assert_eq!(w[0].state, WalkState::Bad);
    }

    #[test]
    fn a_device_is_found_by_its_address_or_its_only_ip() {
        let plan = |name: &str| SnmpPlan {
            site: "s".into(),
            name: name.into(),
            address: String::new(),
            interval: 1000,
            timeout: 1000,
            retries: 0,
            max_repetitions: 8,
            max_rows: 8,
            credentials: Credentials::V2c("public".into()),
            gets: vec![],
            map: Arc::new(mib::named("ups-mib").unwrap()),
        };
        let at = |name: &str, a: &str| TrapSender::new(plan(name), a.parse().unwrap());
        let s = [
            at("ups-1", "10.0.0.1:161"),
            at("ups-2", "10.0.0.2:161"),
            at("ups-3", "10.0.0.2:1161"),
        ];
        assert_eq!(sender_index(&s, "10.0.0.1:40000".parse().unwrap()), Some(0));
        assert_eq!(sender_index(&s, "10.0.0.2:1161".parse().unwrap()), Some(2));
        // Two devices behind 10.0.0.2: a trap from another port is nobody's.
        assert_eq!(sender_index(&s, "10.0.0.2:5000".parse().unwrap()), None);
        assert_eq!(sender_index(&s, "10.0.0.9:161".parse().unwrap()), None);
    }

    #[test]
    fn v3_settings_are_checked_and_secrets_never_printed() {
        let cfg: SnmpConfig = toml::from_str(
            r#"
[[devices]]
name = "ups-1"
address = "10.0.0.1"
profile = "ups-mib"
version = "3"
user = "wattchdog"
auth_password = "short"
"#,
        )
        .unwrap();
        let e = cfg
            .resolve(Path::new("."), "w.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth_password"), "{e}");
        let mut ok = cfg.clone();
        ok.devices[0].auth_password = Some("a-long-secret".into());
        ok.devices[0].privacy_password = Some("another-secret".into());
        let plans = ok.resolve(Path::new("."), "w.toml").unwrap();
        assert_eq!(plans[0].address, "10.0.0.1:161");
        let shown = format!("{:?}", plans[0]);
        assert!(!shown.contains("secret"), "{shown}");
        // Secrets from files beside the config.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth"), "from-a-file-1\n").unwrap();
        let mut files = ok.clone();
        files.devices[0].auth_password = None;
        files.devices[0].auth_password_file = Some("auth".into());
        let plans = files.resolve(dir.path(), "w.toml").unwrap();
        match &plans[0].credentials {
            Credentials::V3 { auth, .. } => assert_eq!(auth.as_ref().unwrap().1, "from-a-file-1"),
            other => panic!("{other:?}"),
        }
        files.devices[0].auth_password = Some("a-long-secret".into());
        let e = files.resolve(dir.path(), "w.toml").unwrap_err().to_string();
        assert!(e.contains("auth_password_file"), "{e}");
        let mut v2 = cfg;
        v2.devices[0].version = Version::V2c;
        let e = v2
            .resolve(Path::new("."), "w.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is for version = \\\"3\\\"") || e.contains("version"),
            "{e}"
        );
    }

    /// Real net-snmp notifications (the fuzz target's seeds).
    const SEEDS: [&[u8]; 3] = [
        include_bytes!("../../fuzz/seeds/snmp_notification/v2c-alarm-added-on-bypass"),
        include_bytes!("../../fuzz/seeds/snmp_notification/v1-on-battery"),
        include_bytes!("../../fuzz/seeds/snmp_notification/v2c-inform-alarm-removed"),
    ];

    #[test]
    fn net_snmp_notifications_decode_to_what_they_say() {
        let map = mib::named("ups-mib").unwrap();
        let said: Vec<Vec<(String, f64)>> = SEEDS
            .iter()
            .map(|b| {
                let n = notification(b).unwrap();
                map.trap_readings(&n.trap, &n.oids)
                    .map(|(m, v)| (m.to_string(), v))
                    .collect()
            })
            .collect();
        assert_eq!(
            said,
            [
                vec![("bypass_active".to_owned(), 1.0)],
                vec![("on_battery".to_owned(), 1.0)],
                vec![("bypass_active".to_owned(), 0.0)]
            ]
        );
        assert!(notification(SEEDS[2]).unwrap().inform.is_some());
    }

    proptest::proptest! {
        /// The fuzz target `snmp_notification` under `cargo test`: any datagram, and real
        /// ones with bytes changed or cut, decode or are refused without panic.
        #[test]
        fn any_datagram_is_decoded_or_refused(
            seed in 0usize..3,
            flips in proptest::collection::vec((0usize..128, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..128,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = notification(&noise);
            let mut b = SEEDS[seed].to_vec();
            for (at, x) in flips {
                let n = b.len();
                b[at % n] = x;
            }
            b.truncate(cut.max(1));
            if let Some(n) = notification(&b) {
                let map = mib::named("ups-mib").unwrap();
                for (_, v) in map.trap_readings(&n.trap, &n.oids) {
                    proptest::prop_assert!(v.is_finite());
                }
            }
        }
    }

    #[test]
    fn the_collector_never_sets() {
        // Read-only by construction: no SET is built anywhere in the collector.
        let src = include_str!("snmp.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap()];
        assert!(
            !code.contains(".set("),
            "the SNMP collector must not send SET"
        );
        assert!(
            !code.contains("tag::SET"),
            "the SNMP collector must not send SET"
        );
    }
}
