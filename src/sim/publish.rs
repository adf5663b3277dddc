//! The simulated facility published to an MQTT broker (`simulate --publish-mqtt URL`):
//! one QoS 1 message per device per simulated second, as JSON (topic map
//! `wattchdog-sim`) or as Sparkplug B (`wattchdog-sim-sparkplug`: group = site, one edge
//! node `sim-gw`, one Sparkplug device per facility device).
//!
//! Sparkplug: NBIRTH and every DBIRTH on each connection (and when a host asks for a
//! rebirth with NCMD `Node Control/Rebirth`), DDATA by alias with the node's sequence
//! number, NDEATH as the last will. JSON: a retained `online` status, `offline` as the
//! last will.

use super::serve::pace;
use super::{CaptureWriter, SimError, SimEvent, Simulator};
use crate::model::Ts;
use crate::protocol::sparkplug::{birth, data};
use crate::time::{format_ts, Clock};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// The Sparkplug edge node the simulator publishes as.
pub const EDGE_NODE: &str = "sim-gw";

/// One device's `(metric, value)` pairs.
type Values = Vec<(&'static str, f64)>;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Sparkplug B instead of JSON.
    pub sparkplug: bool,
    /// MQTT client id.
    pub client_id: String,
    /// User name and password, if the broker requires them.
    pub login: Option<(String, String)>,
}

impl PublishOptions {
    /// From `mqtt://host[:port]`.
    pub fn from_url(url: &str, sparkplug: bool) -> Result<Self, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{url:?}: the simulator publishes to mqtt://host:port"))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
            None => (rest, 1883),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            sparkplug,
            // Unique per process: two publishers with one id would keep disconnecting each other.
            client_id: format!("wattchdog-sim-{}", std::process::id()),
            login: None,
        })
    }
}

/// Publishes `sim` on `clock` until it ends or `shutdown` resolves, writing its capture
/// to `out`. Returns the number of messages published.
pub async fn publish(
    mut sim: Simulator,
    site: String,
    opts: PublishOptions,
    clock: Clock,
    out: Box<dyn Write + Send>,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, SimError> {
    let devices = sim.devices();
    let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
    mqtt.set_keep_alive(std::time::Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    if let Some((user, password)) = &opts.login {
        mqtt.set_credentials(user.clone(), password.clone());
    }
    let status_topic = format!("wattchdog/{site}/status/{EDGE_NODE}");
    let bd_seq: u64 = 0;
    if opts.sparkplug {
        let (topic, payload) = crate::protocol::sparkplug::death(&site, EDGE_NODE, bd_seq);
        mqtt.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, false));
    } else {
        mqtt.set_last_will(LastWill::new(
            &status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    let (client, mut events) = AsyncClient::new(mqtt, 4096);
    // The event loop runs on its own task; it flags (re)connections and rebirth requests.
    let need_birth = Arc::new(AtomicBool::new(false));
    let ncmd = format!("spBv1.0/{site}/NCMD/{EDGE_NODE}");
    let driver = {
        let (need_birth, client, ncmd) = (need_birth.clone(), client.clone(), ncmd.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        need_birth.store(true, Ordering::SeqCst);
                        let _ = client.try_subscribe(ncmd.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ncmd => {
                        info!("rebirth requested");
                        need_birth.store(true, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "publisher connection error");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        }))
    };

    tokio::pin!(shutdown);
    let mut capture = CaptureWriter::new(out, &site);
    let sent = AtomicU64::new(0);
    let mut seq: u8 = 0;
    // Latest values per device, in device order (births need them all).
    let mut latest: Vec<Values> = vec![Vec::new(); devices.len()];
    let index = sim.device_index();
    loop {
        let target = clock.now();
        // Each new second's values per device (a batch spans one second except when
        // catching up after a stall).
        let mut seconds: Vec<(Ts, Vec<Values>)> = Vec::new();
        let ahead = sim.catch_up(target, &mut |ts, ev| {
            if let SimEvent::Reading {
                device,
                metric,
                value,
                ..
            } = ev
            {
                if let Some(&i) = index.get(device) {
                    if seconds.last().is_none_or(|(t, _)| *t != ts) {
                        seconds.push((ts, vec![Vec::new(); devices.len()]));
                    }
                    if let Some((_, per_device)) = seconds.last_mut() {
                        per_device[i].push((metric, value));
                    }
                    match latest[i].iter_mut().find(|(m, _)| *m == metric) {
                        Some(slot) => slot.1 = value,
                        None => latest[i].push((metric, value)),
                    }
                }
            }
            capture.event(ts, &ev)
        })?;
        capture.flush()?;
        let have_values = latest.iter().any(|v| !v.is_empty());
        if have_values && need_birth.swap(false, Ordering::SeqCst) {
            if opts.sparkplug {
                // The latest values are those of the last simulated second.
                let at = sim.now() - 1000;
                seq = 0;
                let mut msgs = vec![birth(
                    &site,
                    EDGE_NODE,
                    None,
                    "gateway",
                    &[],
                    at,
                    seq,
                    Some(bd_seq),
                )];
                for (i, (name, kind)) in devices.iter().enumerate() {
                    seq = seq.wrapping_add(1);
                    msgs.push(birth(
                        &site,
                        EDGE_NODE,
                        Some(name),
                        kind,
                        &latest[i],
                        at,
                        seq,
                        None,
                    ));
                }
                for (topic, payload) in msgs {
                    send(&client, topic, payload, false, &sent).await;
                }
            } else {
                send(
                    &client,
                    status_topic.clone(),
                    b"online".to_vec(),
                    true,
                    &sent,
                )
                .await;
            }
        }
        for (ts, per_device) in &seconds {
            for (i, (name, kind)) in devices.iter().enumerate() {
                let values = &per_device[i];
                if values.is_empty() {
                    continue;
                }
                let (topic, payload) = if opts.sparkplug {
                    // Aliases are positions in the birth's list (1-based).
                    let aliased: Vec<(u64, f64)> = values
                        .iter()
                        .filter_map(|(m, v)| {
                            let a = latest[i].iter().position(|(n, _)| n == m)?;
                            Some((a as u64 + 1, *v))
                        })
                        .collect();
                    seq = seq.wrapping_add(1);
                    data(&site, EDGE_NODE, name, &aliased, *ts, seq)
                } else {
                    json(&site, name, kind, values, *ts)
                };
                send(&client, topic, payload, false, &sent).await;
            }
        }
        if sim.done() {
            info!("simulation finished");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(pace(clock, ahead)) => {}
            () = &mut shutdown => break,
        }
    }
    capture.flush()?;
    let _ = client.disconnect().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(driver);
    Ok(sent.load(Ordering::Relaxed))
}

/// The event-loop task dies with the publisher, however it ends (an aborted publisher
/// drops its connection, and the broker then sends the last will).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(
    client: &AsyncClient,
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    sent: &AtomicU64,
) {
    match client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
    {
        Ok(()) => {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => warn!(error = %e, "cannot queue a message"),
    }
}

fn json(site: &str, device: &str, kind: &str, values: &[(&str, f64)], ts: Ts) -> (String, Vec<u8>) {
    let values: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(m, v)| ((*m).to_owned(), serde_json::json!(v)))
        .collect();
    let body = serde_json::json!({"ts": format_ts(ts), "values": values});
    (
        format!("wattchdog/{site}/{kind}/{device}"),
        body.to_string().into_bytes(),
    )
}
