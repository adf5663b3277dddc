//! The Modbus TCP poller (scheduled, backed off and counted by [`super::poll`]).
//!
//! - Each device reads the plan of its profile: the fewest requests that cover its
//!   registers.
//! - Every request is wrapped in a timeout (tokio-modbus has none). After a timeout or a
//!   transport error the connection is dropped and re-opened (see `poll`).
//! - A Modbus exception is an answer: the request's points are reported with
//!   `quality = "bad"` (carrying their last good value) and counted. A "not available"
//!   sentinel is a bad-quality point too. A timeout is silence: nothing is reported, so
//!   the staleness detector raises denial of view when it lasts.
//! - Readings are stamped when their response arrives.
//! - Read-only by construction: the link type below exposes the four read functions and
//!   nothing else, and this module never imports tokio-modbus's `Writer`.

use super::poll::{bump, poll_device, Answers, Failure, Link, Schedule};
pub use super::poll::{DeviceCounts, DeviceStats, PollSettings};
use crate::model::{Name, Quality, Reading, Ts};
use crate::protocol::plan::{plan, PlanLimits, ReadRequest};
use crate::protocol::profiles;
use crate::protocol::registers::{CodecError, RegisterMap, Table};
use crate::time::{serde_duration, Clock};
use crate::tomlfile::{check, TomlError};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_modbus::client::Reader;
use tokio_modbus::Slave;
use tracing::{debug, info, warn};

/// `[modbus]` in `wattchdog.toml`: defaults for every device, and the devices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModbusConfig {
    /// Site of the devices. Default `"site"`.
    pub site: String,
    /// Poll interval (event time). Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub interval: i64,
    /// Per-request timeout (wall time). Default `"1s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub timeout: i64,
    /// Unused registers a request may read to join two entries. Default 0.
    pub max_gap: u16,
    /// Registers per request (1..=125). Default 125.
    pub max_registers: u16,
    /// Coils or discrete inputs per request (1..=2000). Default 2000.
    pub max_bits: u16,
    /// Devices polling at the same moment. Default 64.
    pub concurrency: usize,
    /// First reconnect delay; doubles up to `backoff_max`. Default `"500ms"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub backoff_min: i64,
    /// Longest reconnect delay. Default `"30s"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub backoff_max: i64,
    /// The devices.
    pub devices: Vec<DeviceConfig>,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        Self {
            site: "site".into(),
            interval: 1000,
            timeout: 1000,
            max_gap: 0,
            max_registers: 125,
            max_bits: 2000,
            concurrency: 64,
            backoff_min: 500,
            backoff_max: 30_000,
            devices: Vec::new(),
        }
    }
}

/// One `[[modbus.devices]]` entry; unset fields take `[modbus]`'s value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name, unique within the site.
    pub name: String,
    /// `host:port` of the device or its gateway.
    pub address: String,
    /// Unit id (1..=247 behind gateways; 255 or 0 for some direct devices).
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Built-in profile name, or a register-map file (`.toml`, relative to the config).
    pub profile: String,
    /// Site, if not `[modbus]`'s.
    pub site: Option<String>,
    /// Poll interval.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub interval: Option<i64>,
    /// Request timeout.
    #[serde(default, deserialize_with = "serde_duration::deserialize_opt")]
    pub timeout: Option<i64>,
    /// See `[modbus] max_gap`.
    pub max_gap: Option<u16>,
    /// See `[modbus] max_registers`.
    pub max_registers: Option<u16>,
}

fn default_unit() -> u8 {
    1
}

impl ModbusConfig {
    /// Checks the settings and resolves every device's profile (files relative to
    /// `base`) into a ready-to-run poller description.
    pub fn resolve(&self, base: &Path, origin: &str) -> Result<Vec<DevicePlan>, TomlError> {
        let schedule = Schedule {
            interval: self.interval,
            timeout: self.timeout,
            concurrency: self.concurrency,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        };
        schedule.check(origin, "modbus")?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(self.devices.len());
        for (i, d) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("modbus.devices[{i}] ({}).{k}", d.name);
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
                d.address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)),
                "must be host:port",
            )?;
            let max_registers = d.max_registers.unwrap_or(self.max_registers);
            check(
                origin,
                &key("max_registers"),
                (1..=125).contains(&max_registers),
                "must be 1..=125",
            )?;
            check(
                origin,
                "modbus.max_bits",
                (1..=2000).contains(&self.max_bits),
                "must be 1..=2000",
            )?;
            let map = if profiles::is_file(&d.profile) {
                crate::tomlfile::load(&base.join(&d.profile), RegisterMap::from_toml_str)
            } else {
                profiles::named(&d.profile)
            };
            let map = map.map_err(|e| TomlError::Invalid {
                path: origin.to_owned(),
                key: key("profile"),
                rule: e.to_string(),
            })?;
            let limits = PlanLimits {
                max_registers,
                max_bits: self.max_bits,
                max_gap: d.max_gap.unwrap_or(self.max_gap),
            };
            let requests = plan(&map, &limits);
            check(
                origin,
                &key("profile"),
                !requests.is_empty(),
                "has no polled registers",
            )?;
            out.push(DevicePlan {
                site: site.into(),
                name: d.name.as_str().into(),
                address: d.address.clone(),
                unit: d.unit,
                interval,
                timeout,
                requests,
                map: Arc::new(map),
            });
        }
        Ok(out)
    }
}

/// A device ready to poll.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// Site.
    pub site: Name,
    /// Device name.
    pub name: Name,
    /// `host:port`.
    pub address: String,
    /// Unit id.
    pub unit: u8,
    /// Poll interval (event-time ms).
    pub interval: i64,
    /// Request timeout (wall ms).
    pub timeout: i64,
    /// Reads per cycle.
    pub requests: Vec<ReadRequest>,
    /// Its register map.
    pub map: Arc<RegisterMap>,
}

/// The only handle this module holds on a device: reads, nothing else.
struct ReadOnlyLink(tokio_modbus::client::Context);

impl ReadOnlyLink {
    async fn connect(address: &str, unit: u8) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self(tokio_modbus::client::tcp::attach_slave(
            stream,
            Slave(unit),
        )))
    }

    /// Registers, or bits as 0/1 words.
    async fn read(&mut self, r: &ReadRequest) -> tokio_modbus::Result<Vec<u16>> {
        let words = |bits: Vec<bool>| bits.into_iter().map(u16::from).collect();
        Ok(match r.table {
            Table::Coil => self.0.read_coils(r.start, r.count).await?.map(words),
            Table::Discrete => self
                .0
                .read_discrete_inputs(r.start, r.count)
                .await?
                .map(words),
            Table::Holding => self.0.read_holding_registers(r.start, r.count).await?,
            Table::Input => self.0.read_input_registers(r.start, r.count).await?,
        })
    }
}

/// One device's connection and decoding state: connect, then run cycles.
pub struct DevicePoller {
    dev: DevicePlan,
    kind: Name,
    timeout: Duration,
    clock: Clock,
    link: Option<ReadOnlyLink>,
    /// Why the last cycle dropped the link.
    dropped: Option<Failure>,
    last_good: Vec<f64>,
    stats: Arc<DeviceStats>,
}

impl DevicePoller {
    /// A poller that is not connected yet.
    pub fn new(dev: DevicePlan, clock: Clock, stats: Arc<DeviceStats>) -> Self {
        Self {
            kind: dev.map.kind.clone(),
            timeout: Duration::from_millis(dev.timeout.max(1) as u64),
            last_good: vec![0.0; dev.map.registers.len()],
            dev,
            clock,
            link: None,
            dropped: None,
            stats,
        }
    }
}

impl Link for DevicePoller {
    fn name(&self) -> &str {
        &self.dev.name
    }

    fn protocol(&self) -> &'static str {
        "modbus"
    }

    fn take_failure(&mut self) -> Option<Failure> {
        self.dropped.take()
    }

    fn connected(&self) -> bool {
        self.link.is_some()
    }

    /// Opens the connection (within the request timeout).
    async fn connect(&mut self) -> Result<(), Failure> {
        let dev = &self.dev;
        match tokio::time::timeout(self.timeout, ReadOnlyLink::connect(&dev.address, dev.unit))
            .await
        {
            Ok(Ok(l)) => {
                bump(&self.stats.connects, 1);
                debug!(device = %dev.name, address = %dev.address, "connected");
                self.link = Some(l);
                Ok(())
            }
            failed => {
                bump(&self.stats.transport_errors, 1);
                Err(Failure::Connect(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".to_owned(),
                }))
            }
        }
    }

    /// Sends every request of the plan once, in order, and flushes each response's
    /// readings, stamped when it arrived, before the next request. A timeout or
    /// transport error ends the cycle and drops the connection (see the module notes).
    async fn cycle(&mut self, out: &mut Answers) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let (dev, stats) = (&self.dev, &self.stats);
        for req in &dev.requests {
            bump(&stats.requests, 1);
            let answer = tokio::time::timeout(self.timeout, link.read(req)).await;
            let ts = self.clock.now();
            match answer {
                Ok(Ok(Ok(words))) => {
                    bump(&stats.responses, 1);
                    decode(
                        dev,
                        &self.kind,
                        req,
                        &words,
                        ts,
                        &mut self.last_good,
                        stats,
                        out.batch(),
                    );
                }
                Ok(Ok(Err(exception))) => {
                    bump(&stats.exceptions, 1);
                    debug!(device = %dev.name, function = req.function(), start = req.start, %exception, "exception");
                    bad(
                        dev,
                        &self.kind,
                        req,
                        ts,
                        &self.last_good,
                        stats,
                        out.batch(),
                    );
                }
                Ok(Err(e)) => {
                    bump(&stats.transport_errors, 1);
                    debug!(device = %dev.name, error = %e, "transport error; reconnecting");
                    self.link = None;
                    self.dropped = Some(Failure::Transport(e.to_string()));
                    break;
                }
                Err(_) => {
                    bump(&stats.timeouts, 1);
                    debug!(device = %dev.name, timeout_ms = dev.timeout, "timeout; reconnecting");
                    self.link = None;
                    self.dropped = Some(Failure::Timeout(dev.timeout));
                    break;
                }
            }
            out.flush().await;
        }
    }
}

fn reading(
    dev: &DevicePlan,
    kind: &Name,
    metric: &Name,
    ts: Ts,
    value: f64,
    q: Quality,
) -> Reading {
    Reading {
        ts,
        site: dev.site.clone(),
        device: dev.name.clone(),
        kind: kind.clone(),
        metric: metric.clone(),
        value,
        quality: q,
    }
}

#[allow(clippy::too_many_arguments)]
fn decode(
    dev: &DevicePlan,
    kind: &Name,
    req: &ReadRequest,
    words: &[u16],
    ts: Ts,
    last_good: &mut [f64],
    stats: &DeviceStats,
    out: &mut Vec<Reading>,
) {
    let decoded = req.decode(&dev.map, words);
    out.extend(
        decoded
            .into_iter()
            .zip(&req.entries)
            .map(|((metric, value), &i)| match value {
                Ok(v) if v.is_finite() => {
                    bump(&stats.good, 1);
                    last_good[i] = v;
                    reading(dev, kind, metric, ts, v, Quality::Good)
                }
                other => {
                    if let Err(e @ (CodecError::Short { .. } | CodecError::OutOfRange { .. })) =
                        &other
                    {
                        warn!(device = %dev.name, error = %e, "undecodable response");
                    }
                    bump(&stats.bad, 1);
                    reading(dev, kind, metric, ts, last_good[i], Quality::Bad)
                }
            }),
    );
}

fn bad(
    dev: &DevicePlan,
    kind: &Name,
    req: &ReadRequest,
    ts: Ts,
    last_good: &[f64],
    stats: &DeviceStats,
    out: &mut Vec<Reading>,
) {
    bump(&stats.bad, req.entries.len() as u64);
    out.extend(req.entries.iter().map(|&i| {
        let metric = &dev.map.registers[i].metric;
        reading(dev, kind, metric, ts, last_good[i], Quality::Bad)
    }));
}

/// The running pollers of a config.
pub struct Collector {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Vec<(String, Arc<DeviceStats>)>,
}

impl Collector {
    /// Starts one task per device, sending readings into `tx`.
    pub fn start(
        devices: Vec<DevicePlan>,
        concurrency: usize,
        settings: PollSettings,
        tx: mpsc::Sender<Vec<Reading>>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::new();
        let mut stats = Vec::new();
        info!(devices = devices.len(), "modbus collector starting");
        for dev in devices {
            let s = Arc::new(DeviceStats::default());
            stats.push((dev.name.to_string(), s.clone()));
            let interval = dev.interval;
            let poller = DevicePoller::new(dev, settings.clock, s.clone());
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

    /// Every device's counters.
    pub fn counts(&self) -> Vec<DeviceCounts> {
        self.stats.iter().map(|(n, s)| s.snapshot(n)).collect()
    }

    /// Stops every poller and waits for them.
    pub async fn stop(self) -> Vec<DeviceCounts> {
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

    /// A polled chiller: its readings, the switch that stops it, its counters, its task.
    type Polled = (
        mpsc::Receiver<Vec<Reading>>,
        watch::Sender<bool>,
        Arc<DeviceStats>,
        tokio::task::JoinHandle<()>,
    );

    /// Polls a `chiller-generic` at `address` with `requests`, every `interval` ms with a
    /// `timeout` ms per request and a 50–400 ms backoff, on the wall clock.
    fn spawn_poller(
        address: String,
        requests: Vec<ReadRequest>,
        interval: i64,
        timeout: i64,
    ) -> Polled {
        let dev = DevicePlan {
            site: "lab".into(),
            name: "chiller-1".into(),
            address,
            unit: 1,
            interval,
            timeout,
            requests,
            map: Arc::new(profiles::named("chiller-generic").unwrap()),
        };
        let settings = PollSettings {
            clock: Clock::wall(),
            backoff_min: 50,
            backoff_max: 400,
        };
        let (tx, rx) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(DeviceStats::default());
        let task = tokio::spawn(poll_device(
            DevicePoller::new(dev, settings.clock, stats.clone()),
            interval,
            settings,
            Arc::new(Semaphore::new(1)),
            stats.clone(),
            tx,
            stop_rx,
        ));
        (rx, stop, stats, task)
    }

    /// A device that accepts every connection and closes it at once: each attempt's
    /// instant.
    async fn slammer() -> (String, Arc<std::sync::Mutex<Vec<std::time::Instant>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                log.lock().unwrap().push(std::time::Instant::now());
                drop(conn);
            }
        });
        (addr, seen)
    }

    /// A device that answers the first request of each connection (every register
    /// zero) and never the others.
    async fn answers_once() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut first = true;
                    let mut head = [0u8; 12];
                    while conn.read_exact(&mut head).await.is_ok() {
                        if !std::mem::take(&mut first) {
                            continue;
                        }
                        // MBAP (transaction, protocol, length, unit), function, start, count.
                        let count = u16::from_be_bytes([head[10], head[11]]);
                        let bytes = (count * 2) as u8;
                        let len = 3 + u16::from(bytes);
                        let mut reply = vec![head[0], head[1], 0, 0];
                        reply.extend(len.to_be_bytes());
                        reply.extend([head[6], head[7], bytes]);
                        reply.resize(reply.len() + usize::from(bytes), 0);
                        if conn.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_response_is_sent_on_before_a_later_request_of_its_cycle_times_out() {
        // A learned reorder wait of ~100 ms would take readings held back by a 30 s
        // timeout for late; they must reach the pipeline when their answer does.
        let map = profiles::named("chiller-generic").unwrap();
        let requests = plan(&map, &PlanLimits::default());
        assert!(
            requests.len() >= 2,
            "the cycle has a request after the first"
        );
        let first = requests[0].entries.len();
        let (mut rx, stop, stats, task) =
            spawn_poller(answers_once().await, requests, 60_000, 30_000);
        // Far sooner than the timeout: on the old path this waited the full 30 s.
        let batch = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the first answer's readings came before the cycle ended")
            .unwrap();
        assert_eq!(batch.len(), first);
        assert!(batch.iter().all(|r| r.quality == Quality::Good));
        assert_eq!(
            stats.timeouts.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the second request is still waiting"
        );
        stop.send(true).unwrap();
        task.abort();
    }

    #[tokio::test]
    async fn a_device_that_accepts_and_misbehaves_is_redialled_with_growing_backoff() {
        let (address, seen) = slammer().await;
        let map = profiles::named("chiller-generic").unwrap();
        let requests = plan(&map, &PlanLimits::default());
        let (_rx, stop, stats, task) = spawn_poller(address, requests, 100, 1000);
        while seen.lock().unwrap().len() < 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        // Every connection was accepted, so each attempt "connected"; the gaps must still
        // grow to backoff_max (± 25 % jitter), not stay at the 100 ms poll interval.
        // Waits on a busy machine only lengthen them.
        let at = seen.lock().unwrap().clone();
        let late_gaps: Vec<_> = at.windows(2).skip(4).map(|w| w[1] - w[0]).collect();
        assert!(
            late_gaps.iter().all(|g| *g >= Duration::from_millis(250)),
            "{late_gaps:?}"
        );
        assert!(stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 8);
    }
}
