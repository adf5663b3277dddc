//! The BACnet/IP collector: devices found with Who-Is/I-Am, read with
//! ReadPropertyMultiple, and subscribed to for changes between polls (SubscribeCOV,
//! renewed), scheduled, backed off and counted like Modbus by [`super::poll`].
//!
//! - Each device gets its own UDP socket, connected to the device's address (datagrams
//!   from anyone else are dropped by the kernel). A listener task per device takes
//!   every datagram: answers go to the waiting request by invoke id (a late answer to
//!   a request that timed out is discarded, never taken for the next one's), COV
//!   notifications become readings at once (a confirmed one is acknowledged), anything
//!   undecodable is counted as a transport error.
//! - Connecting is discovery: a Who-Is for the device's instance (or any, when the
//!   config leaves it out) sent to its address; the I-Am names the device object and
//!   the largest answer it accepts. No I-Am within the timeout (after `retries`
//!   re-sends) is a failed connection, backed off like a refused Modbus connection.
//! - Each cycle reads every polled object's present value, status flags and
//!   reliability, `max_objects` objects per ReadPropertyMultiple (a device that
//!   rejects ReadPropertyMultiple is read with ReadProperty instead). A value is good
//!   when it is a number and the object reports neither `fault` nor `out-of-service`
//!   nor a reliability other than no-fault-detected; otherwise the reading carries the
//!   last good value with `quality = "bad"`. An error for an object is an answer (bad,
//!   counted as an exception); silence is nothing (the staleness detector's).
//! - With `cov` on, every polled object is subscribed (unconfirmed notifications,
//!   `cov_lifetime`), renewed at half the lifetime, and resubscribed after a
//!   reconnection. A device that refuses a subscription is still polled.
//! - Read-only by construction: the only services this module sends are Who-Is,
//!   ReadProperty(Multiple), SubscribeCOV and the acknowledgement of a confirmed COV
//!   notification (a test checks the source).

use super::poll::{
    bump, poll_device, with_port, Answers, DeviceStats, Failure, Link, PollSettings, Schedule,
};
use crate::model::{Quality, Reading};
use crate::protocol::bacnet::{
    self, confirmed, property, unconfirmed, Apdu, CovNotification, IAm, ObjectId, PropertyRef,
    ReadProperty, ReadPropertyMultiple, ReadPropertyMultipleAck, StatusFlags, SubscribeCov, Value,
    WhoIs,
};
use crate::protocol::bacnet_map::{self, BacnetMap};
use crate::time::{serde_duration, Clock};
use crate::tomlfile::{check, TomlError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info};

/// `[bacnet]` in `wattchdog.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BacnetConfig {
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
    /// Objects per ReadPropertyMultiple. Default 16.
    pub max_objects: usize,
    /// Subscribe to changes of value (SubscribeCOV) between polls. Default true.
    pub cov: bool,
    /// How long a subscription lasts before it is renewed (wall time, whole seconds;
    /// renewed at half of it). Default `"5m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub cov_lifetime: i64,
    /// The devices.
    pub devices: Vec<BacnetDeviceConfig>,
}

impl Default for BacnetConfig {
    fn default() -> Self {
        Self {
            site: "site".into(),
            interval: 5_000,
            timeout: 1_000,
            retries: 1,
            concurrency: 64,
            backoff_min: 1_000,
            backoff_max: 300_000,
            max_objects: 16,
            cov: true,
            cov_lifetime: 300_000,
            devices: Vec::new(),
        }
    }
}

/// One `[[bacnet.devices]]` entry; unset fields take `[bacnet]`'s value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacnetDeviceConfig {
    /// Device name, unique within the site.
    pub name: String,
    /// `host:port` (or `host`, port 47808) of the device.
    pub address: String,
    /// Built-in object map name, or a map file (`.toml`, relative to the config).
    pub profile: String,
    /// The device object's instance; found by Who-Is when left out.
    pub instance: Option<u32>,
    /// Site, if not `[bacnet]`'s.
    pub site: Option<String>,
    /// Poll interval.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub interval: Option<i64>,
    /// Request timeout.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub timeout: Option<i64>,
}

/// One device, resolved and checked.
#[derive(Debug, Clone)]
pub struct BacnetPlan {
    /// Site.
    pub site: crate::model::Name,
    /// Device name.
    pub name: crate::model::Name,
    /// `host:port`.
    pub address: String,
    /// Device instance, when configured.
    pub instance: Option<u32>,
    /// Poll interval (event-time ms).
    pub interval: i64,
    /// Request timeout (wall ms).
    pub timeout: i64,
    /// Extra sends after a timeout.
    pub retries: u32,
    /// Objects per ReadPropertyMultiple.
    pub max_objects: usize,
    /// Subscription lifetime in seconds; `None`: no subscriptions.
    pub cov_lifetime: Option<u32>,
    /// The object map.
    pub map: Arc<BacnetMap>,
}

impl BacnetConfig {
    /// Whether the section names any device.
    pub fn used(&self) -> bool {
        !self.devices.is_empty()
    }

    /// Checks the settings and resolves every device's map (files relative to `base`).
    pub fn resolve(&self, base: &Path, origin: &str) -> Result<Vec<BacnetPlan>, TomlError> {
        let schedule = Schedule {
            interval: self.interval,
            timeout: self.timeout,
            concurrency: self.concurrency,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        };
        schedule.check(origin, "bacnet")?;
        check(
            origin,
            "bacnet.retries",
            self.retries <= 10,
            "must be at most 10",
        )?;
        check(
            origin,
            "bacnet.max_objects",
            (1..=64).contains(&self.max_objects),
            "must be 1..=64",
        )?;
        check(
            origin,
            "bacnet.cov_lifetime",
            (10_000..=86_400_000).contains(&self.cov_lifetime),
            "must be 10s..=1d",
        )?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(self.devices.len());
        for (i, d) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("bacnet.devices[{i}] ({}).{k}", d.name);
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
            if let Some(n) = d.instance {
                check(
                    origin,
                    &key("instance"),
                    n < ObjectId::MAX_INSTANCE,
                    "must be below 4194303",
                )?;
            }
            let map = if crate::protocol::profiles::is_file(&d.profile) {
                crate::tomlfile::load(&base.join(&d.profile), BacnetMap::from_toml_str)
            } else {
                bacnet_map::named(&d.profile)
            }
            .map_err(|e| TomlError::Invalid {
                path: origin.to_owned(),
                key: key("profile"),
                rule: e.to_string(),
            })?;
            out.push(BacnetPlan {
                site: site.into(),
                name: d.name.as_str().into(),
                address: with_port(&d.address, bacnet::PORT),
                instance: d.instance,
                interval,
                timeout,
                retries: self.retries,
                max_objects: self.max_objects,
                cov_lifetime: self
                    .cov
                    .then_some(u32::try_from(self.cov_lifetime / 1000).unwrap_or(u32::MAX)),
                map: Arc::new(map),
            });
        }
        Ok(out)
    }
}

/// An answer to a confirmed request, owned.
#[derive(Debug)]
enum Reply {
    Ack(Vec<u8>),
    Simple,
    Error(u32, u32),
    Reject(u8),
    Abort(u8),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Ack(b) => write!(f, "an answer of {} octets", b.len()),
            Reply::Simple => f.write_str("an acknowledgement"),
            Reply::Error(class, code) => write!(f, "error class {class} code {code}"),
            Reply::Reject(r) => write!(f, "reject reason {r}"),
            Reply::Abort(r) => write!(f, "abort reason {r}"),
        }
    }
}

/// What the listener hands the poller.
#[derive(Debug)]
enum Incoming {
    IAm(IAm),
    Reply(u8, Reply),
}

/// How a device's objects become readings; shared by the poller and its listener.
struct Points {
    plan: BacnetPlan,
    kind: crate::model::Name,
    clock: Clock,
    stats: Arc<DeviceStats>,
    last_good: Mutex<Vec<f64>>,
    /// Our process identifier in the device's subscriptions.
    process: u32,
}

/// What one object's properties said.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// The present value, when it is a number.
    pub(crate) value: Option<f64>,
    /// Neither fault, nor out of service, nor unreliable.
    pub(crate) trusted: bool,
}

impl Observed {
    /// From an object's (property, values) pairs; a property missing or in error
    /// (reliability is optional) says nothing.
    pub(crate) fn of<'a>(props: impl Iterator<Item = (u32, &'a [Value])>) -> Self {
        let mut o = Observed {
            value: None,
            trusted: true,
        };
        for (p, values) in props {
            match (p, values.first()) {
                (property::PRESENT_VALUE, Some(v)) => o.value = v.number(),
                (property::STATUS_FLAGS, Some(Value::Bits(b))) => {
                    let f = StatusFlags::of(b);
                    o.trusted &= !(f.fault || f.out_of_service);
                }
                (property::RELIABILITY, Some(Value::Enumerated(r))) => o.trusted &= *r == 0,
                _ => {}
            }
        }
        o
    }
}

impl Points {
    fn reading(&self, i: usize, seen: &Observed, ts: i64) -> Reading {
        let o = &self.plan.map.objects[i];
        let value = seen
            .value
            .filter(|_| seen.trusted)
            .map(|v| v * o.scale + o.offset)
            .filter(|v| v.is_finite());
        let mut last = self
            .last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (value, quality) = match value {
            Some(v) => {
                bump(&self.stats.good, 1);
                last[i] = v;
                (v, Quality::Good)
            }
            None => {
                bump(&self.stats.bad, 1);
                (last[i], Quality::Bad)
            }
        };
        Reading {
            ts,
            site: self.plan.site.clone(),
            device: self.plan.name.clone(),
            kind: self.kind.clone(),
            metric: o.metric.clone(),
            value,
            quality,
        }
    }

    /// A COV notification's readings, if it is about one of our subscriptions.
    fn notified(&self, n: &CovNotification, device: Option<ObjectId>) -> Option<Reading> {
        if n.process != self.process || device.is_some_and(|d| d != n.device) {
            return None;
        }
        let (i, o) = self.plan.map.by_object(n.object)?;
        if !o.poll {
            return None;
        }
        let seen = Observed::of(
            n.values
                .iter()
                .map(|pv| (pv.property.property, pv.values.as_slice())),
        );
        Some(self.reading(i, &seen, self.clock.now()))
    }
}

/// Every datagram from the device: answers to the poller, notifications to the
/// pipeline.
async fn listen(
    socket: Arc<UdpSocket>,
    points: Arc<Points>,
    device: Arc<Mutex<Option<ObjectId>>>,
    answers: mpsc::Sender<Incoming>,
    tx: mpsc::Sender<Vec<Reading>>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // ICMP port unreachable surfaces here on a connected socket: the next
                // request times out and the poll loop backs off.
                debug!(device = %points.plan.name, error = %e, "bacnet receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let apdu = match bacnet::decode(&buf[..n]) {
            Ok(d) => d.apdu,
            Err(e) => {
                bump(&points.stats.transport_errors, 1);
                debug!(device = %points.plan.name, error = %e, "not BACnet; dropped");
                continue;
            }
        };
        if let Some(body) = apdu.as_ref().and_then(Apdu::cov_notification) {
            if let Some(Apdu::Confirmed { invoke_id, .. }) = apdu {
                let ack = bacnet::encode(
                    &Apdu::SimpleAck {
                        invoke_id,
                        service: confirmed::COV_NOTIFICATION,
                    },
                    false,
                );
                let _ = socket.send(&ack).await;
            }
            let known = *device.lock().unwrap_or_else(PoisonError::into_inner);
            match CovNotification::decode(body) {
                Ok(n) => {
                    if let Some(r) = points.notified(&n, known) {
                        bump(&points.stats.notifications, 1);
                        if tx.send(vec![r]).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => bump(&points.stats.transport_errors, 1),
            }
            continue;
        }
        let incoming = match apdu {
            None => continue,
            Some(Apdu::Unconfirmed {
                service: unconfirmed::I_AM,
                body,
            }) => match IAm::decode(body) {
                Ok(i) => Incoming::IAm(i),
                Err(_) => {
                    bump(&points.stats.transport_errors, 1);
                    continue;
                }
            },
            Some(Apdu::ComplexAck {
                invoke_id,
                segmented: false,
                body,
                ..
            }) => Incoming::Reply(invoke_id, Reply::Ack(body.to_vec())),
            Some(Apdu::ComplexAck { invoke_id, .. }) => {
                // Segmented answers are not reassembled; the request is sized to avoid
                // them, so this is a device that ignores the size it announced.
                let abort = bacnet::encode(
                    &Apdu::Abort {
                        invoke_id,
                        reason: bacnet::error::ABORT_SEGMENTATION_NOT_SUPPORTED,
                    },
                    false,
                );
                let _ = socket.send(&abort).await;
                Incoming::Reply(
                    invoke_id,
                    Reply::Abort(bacnet::error::ABORT_SEGMENTATION_NOT_SUPPORTED),
                )
            }
            Some(Apdu::SimpleAck { invoke_id, .. }) => Incoming::Reply(invoke_id, Reply::Simple),
            Some(Apdu::Error {
                invoke_id,
                class,
                code,
                ..
            }) => Incoming::Reply(invoke_id, Reply::Error(class, code)),
            Some(Apdu::Reject { invoke_id, reason }) => {
                Incoming::Reply(invoke_id, Reply::Reject(reason))
            }
            Some(Apdu::Abort { invoke_id, reason }) => {
                Incoming::Reply(invoke_id, Reply::Abort(reason))
            }
            // Requests to us (a Who-Is broadcast, a device reading us): not answered.
            Some(_) => continue,
        };
        // A poller that stopped waiting has dropped its receiver; a full queue means
        // a flood of answers nobody asked for: drop, the request times out.
        if answers.try_send(incoming).is_err() && answers.is_closed() {
            return;
        }
    }
}

/// An open socket to one device and its listener.
struct Conversation {
    socket: Arc<UdpSocket>,
    answers: mpsc::Receiver<Incoming>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Process identifiers of subscriptions: distinct per poller within this process.
static NEXT_PROCESS: AtomicU32 = AtomicU32::new(1);

/// One device's conversation and decoding state.
pub struct BacnetPoller {
    points: Arc<Points>,
    timeout: Duration,
    link: Option<Conversation>,
    dropped: Option<Failure>,
    /// The device object, from its I-Am.
    device: Arc<Mutex<Option<ObjectId>>>,
    /// Largest request and answer the device accepts.
    max_apdu: usize,
    /// Whether the device answers ReadPropertyMultiple.
    rpm: bool,
    next_invoke: u8,
    /// When the subscriptions were last made (wall).
    subscribed: Option<tokio::time::Instant>,
    tx: mpsc::Sender<Vec<Reading>>,
}

/// The polled objects, in map order.
fn polled(map: &BacnetMap) -> impl Iterator<Item = (usize, ObjectId)> + '_ {
    map.objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.poll)
        .map(|(i, o)| (i, o.object))
}

/// The properties read of each object.
const READ: [u32; 3] = [
    property::PRESENT_VALUE,
    property::STATUS_FLAGS,
    property::RELIABILITY,
];

impl BacnetPoller {
    /// A poller with no socket yet; COV readings go to `tx`.
    pub fn new(
        plan: BacnetPlan,
        clock: Clock,
        stats: Arc<DeviceStats>,
        tx: mpsc::Sender<Vec<Reading>>,
    ) -> Self {
        let timeout = Duration::from_millis(plan.timeout.max(1) as u64);
        let points = Points {
            kind: plan.map.kind.clone(),
            last_good: Mutex::new(vec![0.0; plan.map.objects.len()]),
            process: NEXT_PROCESS.fetch_add(1, Ordering::Relaxed),
            plan,
            clock,
            stats,
        };
        Self {
            points: Arc::new(points),
            timeout,
            link: None,
            dropped: None,
            device: Arc::new(Mutex::new(None)),
            max_apdu: bacnet::MAX_APDU,
            rpm: true,
            next_invoke: 0,
            subscribed: None,
            tx,
        }
    }

    fn plan(&self) -> &BacnetPlan {
        &self.points.plan
    }

    /// Opens the socket, starts the listener and finds the device with Who-Is.
    async fn open(&mut self) -> Result<(), Failure> {
        let peer = tokio::net::lookup_host(&self.plan().address)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Failure::Connect(format!("cannot resolve {}", self.plan().address)))?;
        let local: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(peer)
        } else {
            "[::]:0".parse().unwrap_or(peer)
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        socket
            .connect(peer)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let socket = Arc::new(socket);
        let (atx, answers) = mpsc::channel(64);
        let listener = tokio::spawn(listen(
            socket.clone(),
            self.points.clone(),
            self.device.clone(),
            atx,
            self.tx.clone(),
        ));
        let mut link = Conversation {
            socket,
            answers,
            listener,
        };
        let who = WhoIs {
            range: self.plan().instance.map(|i| (i, i)),
        };
        let request = bacnet::encode(
            &Apdu::Unconfirmed {
                service: unconfirmed::WHO_IS,
                body: &who.encode(),
            },
            false,
        );
        for _ in 0..=self.plan().retries {
            bump(&self.points.stats.requests, 1);
            if let Err(e) = link.socket.send(&request).await {
                bump(&self.points.stats.transport_errors, 1);
                return Err(Failure::Connect(e.to_string()));
            }
            let deadline = tokio::time::Instant::now() + self.timeout;
            while let Ok(Some(incoming)) =
                tokio::time::timeout_at(deadline, link.answers.recv()).await
            {
                let Incoming::IAm(iam) = incoming else {
                    continue;
                };
                if !who.includes(iam.device.instance) {
                    continue;
                }
                bump(&self.points.stats.responses, 1);
                bump(&self.points.stats.connects, 1);
                *self.device.lock().unwrap_or_else(PoisonError::into_inner) = Some(iam.device);
                self.max_apdu = (iam.max_apdu as usize).clamp(50, bacnet::MAX_APDU);
                self.link = Some(link);
                self.subscribed = None;
                debug!(device = %self.plan().name, id = %iam.device, max_apdu = self.max_apdu, "bacnet device found");
                return Ok(());
            }
            bump(&self.points.stats.timeouts, 1);
        }
        Err(Failure::Connect(format!(
            "no I-Am from {} within {}ms",
            peer,
            self.plan().timeout
        )))
    }

    /// Sends a confirmed request, again after a timeout (with a new invoke id, so a
    /// late answer to the first is discarded), up to `retries` times.
    async fn exchange(&mut self, service: u8, body: &[u8]) -> Result<Reply, Failure> {
        for _ in 0..=self.plan().retries {
            let Some(link) = self.link.as_mut() else {
                break;
            };
            self.next_invoke = self.next_invoke.wrapping_add(1);
            let invoke_id = self.next_invoke;
            let request = bacnet::encode(
                &Apdu::Confirmed {
                    invoke_id,
                    service,
                    segmented: false,
                    // What this side accepts (the listener reads 2 KiB datagrams).
                    max_apdu: bacnet::MAX_APDU,
                    body,
                },
                false,
            );
            bump(&self.points.stats.requests, 1);
            if let Err(e) = link.socket.send(&request).await {
                bump(&self.points.stats.transport_errors, 1);
                return Err(Failure::Transport(e.to_string()));
            }
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match tokio::time::timeout_at(deadline, link.answers.recv()).await {
                    Ok(Some(Incoming::Reply(id, reply))) if id == invoke_id => {
                        bump(&self.points.stats.responses, 1);
                        return Ok(reply);
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(Failure::Transport("listener stopped".into())),
                    Err(_) => break,
                }
            }
            bump(&self.points.stats.timeouts, 1);
        }
        Err(Failure::Timeout(self.plan().timeout))
    }

    /// Subscribes every polled object (renewal is the same request).
    async fn subscribe(&mut self, lifetime: u32) -> Result<(), Failure> {
        let device = self
            .device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if !device {
            return Ok(());
        }
        let objects: Vec<ObjectId> = polled(&self.plan().map).map(|(_, o)| o).collect();
        let mut refused = 0;
        for object in objects {
            let body = SubscribeCov {
                process: self.points.process,
                object,
                confirmed: Some(false),
                lifetime: Some(lifetime),
            }
            .encode();
            match self.exchange(confirmed::SUBSCRIBE_COV, &body).await? {
                Reply::Simple => {}
                r => {
                    refused += 1;
                    bump(&self.points.stats.exceptions, 1);
                    debug!(device = %self.plan().name, %object, reply = %r, "subscription refused");
                }
            }
        }
        if refused > 0 {
            debug!(device = %self.plan().name, refused, "subscriptions refused; polling only");
        }
        self.subscribed = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Reads `objects` with one ReadPropertyMultiple: what each said, or `None` when
    /// the device answered with an error for the whole request.
    async fn read_many(&mut self, objects: &[ObjectId]) -> Result<Option<Vec<Observed>>, Failure> {
        let request = ReadPropertyMultiple(
            objects
                .iter()
                .map(|o| (*o, READ.iter().map(|p| PropertyRef::of(*p)).collect()))
                .collect(),
        );
        match self
            .exchange(confirmed::READ_PROPERTY_MULTIPLE, &request.encode())
            .await?
        {
            Reply::Ack(body) => {
                let Ok(ack) = ReadPropertyMultipleAck::decode(&body) else {
                    bump(&self.points.stats.transport_errors, 1);
                    return Err(Failure::Transport(
                        "undecodable ReadPropertyMultiple-ACK".into(),
                    ));
                };
                let mut out: Vec<Observed> = objects.iter().map(|_| Observed::default()).collect();
                for (object, results) in &ack.0 {
                    let Some(k) = objects.iter().position(|o| o == object) else {
                        continue;
                    };
                    let ok = results
                        .iter()
                        .filter_map(|(p, r)| r.as_ref().ok().map(|v| (p.property, v.as_slice())));
                    out[k] = Observed::of(ok);
                    if results
                        .iter()
                        .any(|(p, r)| p.property == property::PRESENT_VALUE && r.is_err())
                    {
                        bump(&self.points.stats.exceptions, 1);
                    }
                }
                Ok(Some(out))
            }
            Reply::Reject(_) | Reply::Error(bacnet::error::CLASS_SERVICES, _) => {
                debug!(device = %self.plan().name, "ReadPropertyMultiple refused; ReadProperty from now on");
                self.rpm = false;
                Ok(None)
            }
            r => {
                bump(&self.points.stats.exceptions, 1);
                debug!(device = %self.plan().name, reply = %r, "ReadPropertyMultiple failed");
                Ok(None)
            }
        }
    }

    /// Reads one object with ReadProperty (present value, then status flags).
    async fn read_one(&mut self, object: ObjectId) -> Result<Observed, Failure> {
        let mut props = Vec::new();
        for p in [property::PRESENT_VALUE, property::STATUS_FLAGS] {
            let body = ReadProperty {
                object,
                property: PropertyRef::of(p),
            }
            .encode();
            match self.exchange(confirmed::READ_PROPERTY, &body).await? {
                Reply::Ack(b) => match ReadProperty::decode_ack(&b) {
                    Ok((rp, values)) if rp.object == object => props.push((p, values)),
                    _ => bump(&self.points.stats.transport_errors, 1),
                },
                r => {
                    bump(&self.points.stats.exceptions, 1);
                    debug!(device = %self.plan().name, %object, reply = %r, "ReadProperty failed");
                }
            }
        }
        Ok(Observed::of(props.iter().map(|(p, v)| (*p, v.as_slice()))))
    }

    async fn read_all(&mut self, out: &mut Answers) -> Result<(), Failure> {
        let objects: Vec<(usize, ObjectId)> = polled(&self.plan().map).collect();
        // About 25 octets of request and 30 of answer per object: stay well inside the
        // device's limit so that no answer needs segmentation.
        let fit = (self.max_apdu / 40).max(1);
        let per = self.plan().max_objects.min(fit);
        for chunk in objects.chunks(per) {
            let ids: Vec<ObjectId> = chunk.iter().map(|(_, o)| *o).collect();
            let seen = if self.rpm {
                self.read_many(&ids).await?
            } else {
                None
            };
            let seen = match seen {
                Some(s) => s,
                None if !self.rpm => {
                    let mut s = Vec::new();
                    for o in &ids {
                        s.push(self.read_one(*o).await?);
                    }
                    s
                }
                None => chunk.iter().map(|_| Observed::default()).collect(),
            };
            let ts = self.points.clock.now();
            for ((i, _), o) in chunk.iter().zip(&seen) {
                out.batch().push(self.points.reading(*i, o, ts));
            }
            out.flush().await;
        }
        Ok(())
    }
}

impl Link for BacnetPoller {
    fn name(&self) -> &str {
        &self.points.plan.name
    }

    fn protocol(&self) -> &'static str {
        "bacnet"
    }

    fn connected(&self) -> bool {
        self.link.is_some()
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        self.open().await
    }

    /// Renews the subscriptions when due, then reads every polled object.
    async fn cycle(&mut self, out: &mut Answers) {
        if let Some(lifetime) = self.plan().cov_lifetime {
            let due = self
                .subscribed
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(u64::from(lifetime / 2)));
            if due {
                if let Err(f) = self.subscribe(lifetime).await {
                    self.dropped = Some(f);
                }
            }
        }
        if self.dropped.is_none() {
            if let Err(f) = self.read_all(out).await {
                self.dropped = Some(f);
            }
        }
        if self.dropped.is_some() {
            self.link = None;
        }
    }

    fn take_failure(&mut self) -> Option<Failure> {
        self.dropped.take()
    }
}

/// The running BACnet pollers of a config.
pub struct BacnetCollector {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Vec<(String, Arc<DeviceStats>)>,
}

impl BacnetCollector {
    /// Starts one task per device.
    pub fn start(
        cfg: &BacnetConfig,
        devices: Vec<BacnetPlan>,
        settings: PollSettings,
        tx: mpsc::Sender<Vec<Reading>>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let mut tasks = Vec::new();
        let mut stats = Vec::new();
        info!(devices = devices.len(), "bacnet collector starting");
        for dev in devices {
            let s = Arc::new(DeviceStats::default());
            stats.push((dev.name.to_string(), s.clone()));
            let interval = dev.interval;
            let poller = BacnetPoller::new(dev, settings.clock, s.clone(), tx.clone());
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
        Self { stop, tasks, stats }
    }

    /// Stops every task and waits for them: the devices' counters.
    pub async fn stop(self) -> Vec<super::poll::DeviceCounts> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats.iter().map(|(n, s)| s.snapshot(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_out_of_service_make_a_value_bad() {
        let pv = [Value::Real(7.5)];
        let clear = [StatusFlags::default().value()];
        let fault = [StatusFlags {
            fault: true,
            ..Default::default()
        }
        .value()];
        let oos = [StatusFlags {
            out_of_service: true,
            ..Default::default()
        }
        .value()];
        let unreliable = [Value::Enumerated(7)];
        let good = Observed::of([(85, &pv[..]), (111, &clear[..])].into_iter());
        assert_eq!((good.value, good.trusted), (Some(7.5), true));
        for bad in [
            vec![(85, &pv[..]), (111, &fault[..])],
            vec![(85, &pv[..]), (111, &oos[..])],
            vec![(85, &pv[..]), (103, &unreliable[..])],
        ] {
            assert!(!Observed::of(bad.into_iter()).trusted);
        }
        let text = [Value::Text("7.5".into())];
        assert_eq!(Observed::of([(85, &text[..])].into_iter()).value, None);
    }

    #[test]
    fn settings_are_checked() {
        let base = Path::new(".");
        let dev_of = |profile: &str, extra: &str| {
            format!("[[devices]]\nname = \"ch-1\"\naddress = \"127.0.0.1\"\nprofile = \"{profile}\"\n{extra}")
        };
        let dev = |extra: &str| dev_of("chiller-bacnet", extra);
        let ok: BacnetConfig = toml::from_str(&dev("instance = 5")).unwrap();
        let plans = ok.resolve(base, "t").unwrap();
        assert_eq!(plans[0].address, "127.0.0.1:47808");
        assert_eq!(plans[0].cov_lifetime, Some(300));
        for (text, key) in [
            (dev("instance = 4194303"), "instance"),
            (dev_of("nope", ""), "profile"),
            (format!("max_objects = 0\n{}", dev("")), "max_objects"),
            (
                format!("cov_lifetime = \"1s\"\n{}", dev("")),
                "cov_lifetime",
            ),
        ] {
            match toml::from_str::<BacnetConfig>(&text) {
                Ok(c) => {
                    let e = c.resolve(base, "t").unwrap_err();
                    assert!(e.to_string().contains(key), "{e}");
                }
                Err(e) => assert!(e.to_string().contains(key), "{e}"),
            }
        }
    }

    #[test]
    fn the_collector_never_writes() {
        let src = include_str!("bacnet.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap_or(src.len())];
        for w in ["WRITE_PROPERTY", "encode_write_property", "write_property"] {
            assert!(!code.contains(w), "the collector mentions {w}");
        }
    }
}
