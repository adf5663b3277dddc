//! The MQTT subscriber (rumqttc, MQTT 3.1.1).
//!
//! - Lossless across reconnects and broker restarts: a fixed client id, a persistent
//!   session (clean session off) and QoS 1 subscriptions, so the broker keeps what is
//!   published while we are away and delivers it when we are back. QoS 1 is at least
//!   once; the pipeline drops a second sample of a point at the same instant.
//! - rumqttc reconnects on the next `poll()` without delay and does not restore
//!   subscriptions: this task waits with exponential backoff and jitter after an error
//!   and subscribes again on every ConnAck (with `try_subscribe`, never awaiting the
//!   request channel from the polling task). The delay starts over only after a
//!   connection stayed up for `backoff_max`: one that fails on every message it gets
//!   (a retained or queued message over `max_packet_bytes`) backs off like a broker
//!   that refuses us, instead of reconnecting twice a second forever.
//! - A packet refused on the way in (over `max_packet_bytes`, malformed) is counted as
//!   malformed, like a payload that does not decode. It cannot be acknowledged (its
//!   packet id is in what could not be read), so a persistent session redelivers it on
//!   every reconnect and nothing queued behind it ever arrives: after
//!   `DISCARD_AFTER` such failures with no message read between them, the next
//!   connection asks for a clean session, dropping what the broker queued for us (the
//!   poisoned message with it; counted in `sessions_discarded`, logged at warn), and
//!   the one after it is persistent again. A *retained* message over the limit comes
//!   with every subscription and cannot be skipped this way in MQTT 3.1.1: cap it at
//!   the broker (Mosquitto's `message_size_limit`).
//! - Readings go to the pipeline through a bounded channel: while it is full the event
//!   loop is not polled and the broker holds the messages.
//! - Malformed payloads and unmapped topics are counted, and the first ones are logged
//!   with their topic; they never stop the subscriber.
//! - TLS through rustls (ring) with a custom CA and an optional client certificate.

use crate::model::Reading;
use crate::protocol::sparkplug::SparkplugDecoder;
use crate::protocol::topics::{PayloadError, TopicMap};
use crate::time::{serde_duration, Clock};
use crate::tomlfile::{check, TomlError};
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, StateError, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// `[mqtt]`: the brokers to subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// One entry per broker.
    pub brokers: Vec<BrokerConfig>,
}

/// One `[[mqtt.brokers]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Built-in topic map name, or a `.toml` file relative to the config.
    pub map: String,
    /// Site of readings whose topic and map name none.
    #[serde(default = "default_site")]
    pub site: String,
    /// Client id: the key of the persistent session (unique per subscriber).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Username (and `password`).
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (mqtts).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mqtts with client authentication).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Keep-alive interval. Default `"30s"`.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub keep_alive: i64,
    /// Largest accepted message in bytes. Default 1 MiB.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// First reconnect delay; doubles up to `backoff_max`. Default `"500ms"`.
    #[serde(
        default = "default_backoff_min",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub backoff_min: i64,
    /// Longest reconnect delay. Default `"30s"`.
    #[serde(
        default = "default_backoff_max",
        deserialize_with = "serde_duration::deserialize"
    )]
    pub backoff_max: i64,
}

/// Reconnect delays: doubling from `min` to `max`, ± 25 % jitter, starting over only
/// after a connection that lasted `max` (a healthy one), never merely after a ConnAck.
#[derive(Debug)]
struct Backoff {
    min: i64,
    max: i64,
    next: i64,
}

impl Backoff {
    fn new(min: i64, max: i64) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The connection failed after being up for `up` (`None`: it never came up).
    fn failed(&mut self, up: Option<Duration>) -> Duration {
        if up.is_some_and(|u| u.as_millis() >= self.max as u128) {
            self.next = self.min;
        }
        let jitter = rand::rng().random_range(0.75..1.25);
        let delay = Duration::from_millis((self.next as f64 * jitter) as u64);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

fn default_site() -> String {
    "site".into()
}
fn default_client_id() -> String {
    "wattchdog".into()
}
fn default_keep_alive() -> i64 {
    30_000
}
fn default_max_packet() -> usize {
    1 << 20
}
fn default_backoff_min() -> i64 {
    500
}
fn default_backoff_max() -> i64 {
    30_000
}

/// A broker ready to subscribe to.
#[derive(Clone)]
pub struct BrokerPlan {
    /// The entry as configured.
    pub cfg: BrokerConfig,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS settings, for mqtts.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Its topic map.
    pub map: Arc<TopicMap>,
}

impl MqttConfig {
    /// Checks every broker entry and loads its topic map and TLS files (relative to
    /// `base`).
    pub fn resolve(&self, base: &Path, origin: &str) -> Result<Vec<BrokerPlan>, TomlError> {
        let mut out = Vec::new();
        for (i, b) in self.brokers.iter().enumerate() {
            let key = |k: &str| format!("mqtt.brokers[{i}].{k}");
            let invalid = |k: &str, rule: String| TomlError::Invalid {
                path: origin.to_owned(),
                key: key(k),
                rule,
            };
            let (tls, rest) = match b.url.split_once("://") {
                Some(("mqtt" | "tcp", rest)) => (false, rest),
                Some(("mqtts" | "ssl", rest)) => (true, rest),
                _ => {
                    return Err(invalid(
                        "url",
                        "must be mqtt://host:port or mqtts://host:port".into(),
                    ))
                }
            };
            // The URL is logged with every connection error: it must hold no secret.
            if let Some((userinfo, _)) = rest.split_once('@') {
                return Err(invalid(
                    "url",
                    if userinfo.contains(':') {
                        "holds a password: give username and password (they are never logged), not user:pass@ in the url".into()
                    } else {
                        "holds a user name: give username (and password), not user@ in the url"
                            .into()
                    },
                ));
            }
            let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)),
                None => (
                    rest.trim_end_matches('/'),
                    Some(if tls { 8883 } else { 1883 }),
                ),
            };
            let port = port.ok_or_else(|| invalid("url", "has a bad port".into()))?;
            check(
                origin,
                &key("url"),
                !host.is_empty() && !host.contains(['/', ' ', '?', '#']),
                "needs a host name or address, and nothing after the port",
            )?;
            check(
                origin,
                &key("client_id"),
                !b.client_id.is_empty(),
                "must not be empty",
            )?;
            check(
                origin,
                &key("backoff_min"),
                b.backoff_min >= 1 && b.backoff_min <= b.backoff_max,
                "must be at least 1ms and at most backoff_max",
            )?;
            check(
                origin,
                &key("keep_alive"),
                b.keep_alive >= 1000,
                "must be at least 1s",
            )?;
            check(
                origin,
                &key("cert_file"),
                b.cert_file.is_some() == b.key_file.is_some(),
                "and key_file go together",
            )?;
            let map = if crate::protocol::profiles::is_file(&b.map) {
                crate::tomlfile::load(&base.join(&b.map), TopicMap::from_toml_str)
            } else {
                crate::protocol::profiles::named_topic_map(&b.map)
            };
            let map = map.map_err(|e| invalid("map", e.to_string()))?;
            let tls = if tls {
                Some(Arc::new(
                    tls_config(b, base).map_err(|e| invalid("ca_file", e))?,
                ))
            } else {
                check(
                    origin,
                    &key("ca_file"),
                    b.ca_file.is_none() && b.cert_file.is_none(),
                    "needs an mqtts:// url",
                )?;
                None
            };
            out.push(BrokerPlan {
                cfg: b.clone(),
                host: host.to_owned(),
                port,
                tls,
                map: Arc::new(map),
            });
        }
        Ok(out)
    }
}

/// rustls client settings: the CA given (or none but it), the client certificate if any.
fn tls_config(b: &BrokerConfig, base: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let ca = b
        .ca_file
        .as_ref()
        .ok_or("is required for mqtts (the CA that signed the broker's certificate)")?;
    let ca = base.join(ca);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let builder = builder.with_root_certificates(roots);
    match (&b.cert_file, &b.key_file) {
        (Some(c), Some(k)) => {
            let (c, k) = (base.join(c), base.join(k));
            let certs = CertificateDer::pem_file_iter(&c)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", c.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(&k).map_err(|e| format!("{}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Counters of one broker subscription.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Connections acknowledged.
    pub connects: AtomicU64,
    /// Connection errors (each followed by a backoff).
    pub errors: AtomicU64,
    /// Messages received.
    pub messages: AtomicU64,
    /// Readings decoded.
    pub readings: AtomicU64,
    /// Messages on topics the map does not cover.
    pub unmapped: AtomicU64,
    /// Messages whose payload could not be decoded.
    pub malformed: AtomicU64,
    /// Sparkplug sequence gaps.
    pub seq_gaps: AtomicU64,
    /// Sparkplug rebirth requests sent.
    pub rebirths: AtomicU64,
    /// Persistent sessions given up to skip a message that could not be read.
    pub sessions_discarded: AtomicU64,
    /// Event time the connection was last lost or regained (0: never): what the broker
    /// kept for the session meanwhile comes after it, dated back to the loss, so the
    /// pipeline waits the whole reorder tolerance around it.
    pub disturbed_at: std::sync::atomic::AtomicI64,
}

/// A snapshot of [`MqttStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct MqttCounts {
    pub broker: String,
    pub connects: u64,
    pub errors: u64,
    pub messages: u64,
    pub readings: u64,
    pub unmapped: u64,
    pub malformed: u64,
    pub seq_gaps: u64,
    pub rebirths: u64,
    pub sessions_discarded: u64,
}

impl MqttStats {
    /// The counters now.
    pub fn snapshot(&self, broker: &str) -> MqttCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttCounts {
            broker: broker.to_owned(),
            connects: g(&self.connects),
            errors: g(&self.errors),
            messages: g(&self.messages),
            readings: g(&self.readings),
            unmapped: g(&self.unmapped),
            malformed: g(&self.malformed),
            seq_gaps: g(&self.seq_gaps),
            rebirths: g(&self.rebirths),
            sessions_discarded: g(&self.sessions_discarded),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Turns messages into readings: the topic map, and Sparkplug state if the map has it.
pub struct MessageDecoder {
    map: Arc<TopicMap>,
    sparkplug: Option<SparkplugDecoder>,
    site: String,
    names: crate::model::Names,
}

impl MessageDecoder {
    /// A decoder for `map`; `site` for readings nothing else names.
    pub fn new(map: Arc<TopicMap>, site: &str) -> Self {
        Self {
            sparkplug: map.sparkplug.clone().map(SparkplugDecoder::new),
            map,
            site: site.to_owned(),
            names: crate::model::Names::default(),
        }
    }

    /// Readings of one message, and a Sparkplug rebirth request to publish if one is due.
    #[allow(clippy::type_complexity)]
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: crate::model::Ts,
        stats: &MqttStats,
    ) -> Result<(Vec<Reading>, Option<(String, Vec<u8>)>), PayloadError> {
        if let (Some(sp), true) = (&mut self.sparkplug, topic.starts_with("spBv1.0/")) {
            let d = sp.handle(topic, payload, now)?;
            bump(&stats.seq_gaps, d.seq_gaps);
            return Ok((d.readings, d.rebirth));
        }
        Ok((
            self.map
                .decode(topic, payload, now, &self.site, &mut self.names)?,
            None,
        ))
    }
}

/// Messages of one kind of trouble logged individually before going quiet.
const LOG_FIRST: u64 = 10;

/// Unreadable packets in a row after which the persistent session is given up.
const DISCARD_AFTER: u32 = 3;

/// Subscribes to one broker until `stop` turns true.
pub async fn subscribe(
    plan: BrokerPlan,
    clock: Clock,
    stats: Arc<MqttStats>,
    tx: mpsc::Sender<Vec<Reading>>,
    mut stop: watch::Receiver<bool>,
) {
    let b = &plan.cfg;
    let mut opts = MqttOptions::new(b.client_id.clone(), plan.host.clone(), plan.port);
    opts.set_clean_session(false)
        .set_keep_alive(Duration::from_millis(b.keep_alive as u64))
        .set_max_packet_size(b.max_packet_bytes, 64 * 1024);
    if let (Some(u), p) = (&b.username, &b.password) {
        opts.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(tls) = &plan.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    let filters = plan.map.filters();
    let mut decoder = MessageDecoder::new(plan.map.clone(), &b.site);
    let mut backoff = Backoff::new(b.backoff_min, b.backoff_max);
    let mut connected_at: Option<std::time::Instant> = None;
    // Unreadable packets since the last message read.
    let mut unreadable = 0;
    let url = b.url.clone();
    info!(broker = %url, ?filters, "mqtt subscriber starting");
    loop {
        let event = tokio::select! {
            ev = events.poll() => ev,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // What the broker kept for the session comes now, dated back to when
                // the last connection was lost (or, for a session left by an earlier
                // run, before this one began).
                if stats.connects.fetch_add(1, Ordering::Relaxed) > 0 || ack.session_present {
                    stats.disturbed_at.store(clock.now(), Ordering::Relaxed);
                }
                // A clean session was asked for once; from now on persistent again.
                events.mqtt_options.set_clean_session(false);
                connected_at = Some(std::time::Instant::now());
                debug!(broker = %url, session_present = ack.session_present, "connected");
                for f in &filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        warn!(broker = %url, filter = %f, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                bump(&stats.messages, 1);
                unreadable = 0;
                match decoder.decode(&p.topic, &p.payload, clock.now(), &stats) {
                    Ok((readings, rebirth)) => {
                        if let Some((topic, payload)) = rebirth {
                            bump(&stats.rebirths, 1);
                            info!(broker = %url, %topic, "sparkplug: asking the edge node for a rebirth (sequence gap or unknown alias)");
                            let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload);
                        }
                        bump(&stats.readings, readings.len() as u64);
                        if !readings.is_empty() && tx.send(readings).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let counter = match e {
                            PayloadError::UnmappedTopic => &stats.unmapped,
                            _ => &stats.malformed,
                        };
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        if n < LOG_FIRST {
                            warn!(broker = %url, topic = %p.topic, bytes = p.payload.len(), error = %e, "message ignored");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.disturbed_at.store(clock.now(), Ordering::Relaxed);
                if matches!(
                    e,
                    ConnectionError::MqttState(StateError::Deserialization(_))
                ) {
                    bump(&stats.malformed, 1);
                    unreadable += 1;
                    if unreadable >= DISCARD_AFTER {
                        unreadable = 0;
                        bump(&stats.sessions_discarded, 1);
                        warn!(broker = %url, error = %e, "the same unreadable message keeps coming: reconnecting with a clean session, dropping what the broker queued for us");
                        events.mqtt_options.set_clean_session(true);
                    }
                }
                let n = stats.errors.fetch_add(1, Ordering::Relaxed);
                if n < LOG_FIRST {
                    warn!(broker = %url, error = %e, "mqtt connection error; reconnecting");
                } else {
                    debug!(broker = %url, error = %e, "mqtt connection error; reconnecting");
                }
                let up = connected_at.take().map(|t| t.elapsed());
                let delay = backoff.failed(up);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    let _ = client.try_disconnect();
    debug!(broker = %url, "mqtt subscriber stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    #[test]
    fn the_delay_grows_across_short_lived_connections_and_starts_over_after_a_healthy_one() {
        let mut b = Backoff::new(500, 30_000);
        let short = Some(Duration::from_millis(50));
        let delays: Vec<u64> = (0..8).map(|_| ms(b.failed(short))).collect();
        // Connected, then failed on the first message, again and again: still doubling.
        for (d, base) in delays
            .iter()
            .zip([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000])
        {
            assert!((base * 3 / 4..=base * 5 / 4).contains(d), "{delays:?}");
        }
        let after_healthy = ms(b.failed(Some(Duration::from_secs(31))));
        assert!((375..=625).contains(&after_healthy), "{after_healthy}");
        assert!(ms(b.failed(None)) >= 750, "refused outright: growing again");
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_repeating_them() {
        let load = |url: &str| {
            let cfg: MqttConfig = toml::from_str(&format!(
                "[[brokers]]\nurl = \"{url}\"\nmap = \"wattchdog-sim\"\n"
            ))
            .unwrap();
            cfg.resolve(Path::new("."), "t.toml")
        };
        let err = match load("mqtt://ops:hunter2@broker:1883") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted a password in the url"),
        };
        assert!(
            err.contains("password") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(load("mqtt://ops@broker").is_err());
        assert!(load("mqtt://broker:1883/x?y").is_err());
        assert_eq!(load("mqtt://broker").unwrap()[0].port, 1883);
    }
}
