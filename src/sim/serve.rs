//! The simulated facility served over Modbus TCP (`simulate --serve-modbus`): one unit
//! id per device behind one gateway address, each device's registers laid out by its
//! built-in profile and encoded with the same codec the poller decodes with.
//!
//! The plant runs on a [`Clock`] (real time, or faster for tests and demos). Every
//! request first brings the plant up to the clock's now, so a client reads the plant as
//! it stands at that instant however late the serving task was scheduled (a busy host
//! must not serve frozen registers: that reads as a flatline). Clients may write the
//! profiles' writable points; the plant reacts (a chiller follows a new setpoint, a UPS
//! goes to bypass) and every write, like every other non-read request (diagnostics,
//! device identification), is reported as a `command` line in the capture the server
//! writes, next to the readings: the ground truth to compare detections with.

use super::bacnet_device::{Device as BacnetDevice, DeviceCounts as BacnetCounts};
use super::snmp_agent::{Agent, AgentCounts};
use super::{CaptureWriter, SimError, SimEvent, Simulator};
use crate::model::Ts;
use crate::protocol::image::{DeviceImage, Refusal};
use crate::protocol::profiles;
use crate::protocol::registers::Table;
use crate::protocol::{bacnet_map, mib};
use crate::time::{format_ts, Clock};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, UdpSocket};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tracing::{debug, info, warn};

/// One served device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDevice {
    /// Device name.
    pub name: String,
    /// Device kind.
    pub kind: &'static str,
    /// Modbus unit id.
    pub unit: u8,
    /// Built-in profile.
    pub profile: &'static str,
}

/// Requests received, by function code (what a read-only client must never exceed).
#[derive(Debug)]
pub struct FunctionCounts([AtomicU64; 256]);

impl Default for FunctionCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl FunctionCounts {
    fn add(&self, function: u8) {
        self.0[usize::from(function)].fetch_add(1, Ordering::Relaxed);
    }

    /// `(function, count)` for every function code received.
    pub fn seen(&self) -> Vec<(u8, u64)> {
        (0..=255u8)
            .filter_map(|f| {
                let n = self.0[usize::from(f)].load(Ordering::Relaxed);
                (n > 0).then_some((f, n))
            })
            .collect()
    }
}

/// A request that is not a read, as the device saw it.
#[derive(Debug)]
pub struct WireEvent {
    device: String,
    client: String,
    function: u8,
    address: u16,
    values: Vec<u16>,
    changed: Vec<(String, f64)>,
}

/// What stands behind the register images: brought up to date before every request,
/// told of every request that is not a read.
pub trait Plant: Send + 'static {
    /// Updates `images` (unit id − 1 indexes them) to the plant's present.
    fn advance(&mut self, images: &mut [DeviceImage]);
    /// A write (applied to the image already, `changed` naming the points it set) or
    /// another request that is not a read; [`Plant::advance`] has run just before.
    fn command(&mut self, images: &mut [DeviceImage], ev: WireEvent);
}

/// Fixed images: what was set is what is read; other requests are only counted.
impl Plant for () {
    fn advance(&mut self, _: &mut [DeviceImage]) {}
    fn command(&mut self, _: &mut [DeviceImage], _: WireEvent) {}
}

/// The images and the plant behind them, under one lock.
struct Served<P> {
    images: Vec<DeviceImage>,
    plant: P,
    /// Stopped: nothing more is served, the plant is left as it is.
    closed: bool,
}

/// What the connection handlers share with the serving task.
struct Gateway<P> {
    served: Mutex<Served<P>>,
    names: Vec<String>,
    counts: Arc<FunctionCounts>,
}

impl<P> Gateway<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Served<P>> {
        self.served.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The simulator as a [`Plant`]: it steps to the clock's now, writes what it simulates
/// and every command to the capture.
struct SimPlant {
    sim: Simulator,
    clock: Clock,
    capture: CaptureWriter,
    index: rustc_hash::FxHashMap<String, usize>,
    /// Each device's latest value of each metric (what the SNMP agents serve).
    values: Vec<rustc_hash::FxHashMap<String, f64>>,
    unmapped: u64,
    /// Event time until the next simulated second is due.
    ahead: Ts,
    /// The first write to the capture that failed; serving stops with it.
    failed: Option<std::io::Error>,
}

impl Plant for SimPlant {
    fn advance(&mut self, images: &mut [DeviceImage]) {
        if self.failed.is_some() {
            return;
        }
        let Self {
            sim,
            capture,
            index,
            values,
            unmapped,
            ..
        } = self;
        let stepped = sim.catch_up(self.clock.now(), &mut |ts, ev| {
            if let SimEvent::Reading {
                device,
                metric,
                value,
                ..
            } = ev
            {
                if let Some(&i) = index.get(device) {
                    *unmapped += u64::from(!images[i].set(metric, value));
                    if let Some(v) = values[i].get_mut(metric) {
                        *v = value;
                    } else {
                        values[i].insert(metric.to_owned(), value);
                    }
                }
            }
            capture.event(ts, &ev)
        });
        match stepped {
            Ok(ahead) => self.ahead = ahead,
            Err(e) => self.failed = Some(e),
        }
    }

    fn command(&mut self, _: &mut [DeviceImage], ev: WireEvent) {
        for (metric, value) in &ev.changed {
            self.sim.apply_write(&ev.device, metric, *value);
        }
        let at = self.sim.now().min(self.clock.now());
        let written = self.capture.command(
            at,
            &ev.device,
            &ev.client,
            ev.function,
            u32::from(ev.address),
            &ev.values,
        );
        if let Err(e) = written {
            self.failed.get_or_insert(e);
        }
    }
}

/// The devices and unit ids a simulator will serve.
pub fn served_devices(sim: &Simulator) -> Result<Vec<ServedDevice>, SimError> {
    sim.devices()
        .into_iter()
        .enumerate()
        .map(|(i, (name, kind))| {
            let profile = profiles::for_kind(kind).ok_or_else(|| {
                SimError::Io(std::io::Error::other(format!("no profile for {kind}")))
            })?;
            let unit = u8::try_from(i + 1)
                .ok()
                .filter(|u| *u <= 247)
                .ok_or_else(|| {
                    SimError::Io(std::io::Error::other(
                        "more than 247 devices do not fit one Modbus gateway",
                    ))
                })?;
            Ok(ServedDevice {
                name,
                kind,
                unit,
                profile,
            })
        })
        .collect()
}

/// A `wattchdog.toml` that polls the served devices at `addr` every `interval` of event
/// time, on the same clock.
pub fn run_config(
    site: &str,
    addr: SocketAddr,
    devices: &[ServedDevice],
    clock: Clock,
    interval: &str,
) -> String {
    run_config_with(site, addr, devices, &Others::default(), clock, interval)
}

/// Devices served over SNMP and BACnet/IP instead of Modbus, for [`run_config_with`].
#[derive(Debug, Clone, Default)]
pub struct Others {
    /// Over SNMP.
    pub snmp: SnmpServed,
    /// Over BACnet/IP.
    pub bacnet: BacnetServed,
}

/// Devices served over SNMP, for [`run_config_with_snmp`].
#[derive(Debug, Clone, Default)]
pub struct SnmpServed {
    /// Name, object map and agent address of each.
    pub devices: Vec<(String, &'static str, SocketAddr)>,
    /// Where the agents send notifications (the collector's `trap_listen`).
    pub trap_to: Option<SocketAddr>,
}

/// [`run_config`] with some devices read over SNMP or BACnet/IP instead of Modbus.
pub fn run_config_with(
    site: &str,
    addr: SocketAddr,
    devices: &[ServedDevice],
    others: &Others,
    clock: Clock,
    interval: &str,
) -> String {
    let mut s = format!(
        "# Polls `wattchdog simulate --serve-modbus {addr}`.\n\
         [clock]\nspeed = {}\nepoch = \"{}\"\n\n[modbus]\nsite = \"{site}\"\ninterval = \"{interval}\"\n\
         # The simulated devices read undefined registers inside a block as zeros.\nmax_gap = 16\n{}",
        clock.speed,
        format_ts(clock.epoch),
        accelerated_tolerances(clock.speed)
    );
    for d in devices.iter().filter(|d| !others.serve(&d.name)) {
        s += &format!(
            "\n[[modbus.devices]]\nname = \"{}\"\naddress = \"{addr}\"\nunit = {}\nprofile = \"{}\"\n",
            d.name, d.unit, d.profile
        );
    }
    s += &snmp_section(site, interval, &others.snmp);
    s += &bacnet_section(site, interval, &others.bacnet);
    s
}

impl Others {
    /// Whether `device` is served over one of them (and not read over Modbus).
    pub fn serve(&self, device: &str) -> bool {
        self.snmp.devices.iter().any(|(n, _, _)| n == device)
            || self.bacnet.devices.iter().any(|d| d.name == device)
    }
}

/// On an accelerated clock, a wall-clock hiccup of the collectors (a busy machine, a
/// scheduler pause) is `speed` times longer in event time. What tolerates such hiccups
/// grows with it, never below its default: the silence the staleness detector accepts
/// (one wall second), the reorder tolerance (one wall second: at 300× the default 5 s
/// is 17 ms of wall time, and a starved collector's readings were lost as late) and how
/// far ahead of the site's present a reading may be (two wall seconds). The learned
/// reorder wait keeps the same allowance (a margin of one wall second), so it is the
/// tolerance here: a simulation shown or tested fast must not lose readings to a
/// hiccup that a real-time run would not have.
pub fn accelerated_tolerances(speed: f64) -> String {
    let mut s = String::new();
    let wall_second = speed.ceil();
    if wall_second > 5.0 {
        s += &format!(
            "\n[pipeline]\nreorder_tolerance = \"{wall_second}s\"\nreorder_margin = \"1s\"\nmax_ahead = \"{}s\"\n",
            (2.0 * wall_second).max(60.0)
        );
    }
    if wall_second > 15.0 {
        s += &format!("\n[detectors.staleness]\nmin_silence = \"{wall_second}s\"\n");
    }
    s
}

#[allow(clippy::too_many_arguments)]
/// Serves `sim` on `listener` until the simulation ends or `shutdown` resolves, writing
/// readings and commands as canonical JSONL to `out`.
pub async fn serve(
    sim: Simulator,
    site: String,
    listener: TcpListener,
    clock: Clock,
    out: Box<dyn Write + Send>,
    counts: Arc<FunctionCounts>,
    snmp: Option<SnmpServe>,
    bacnet: Option<BacnetServe>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let devices = served_devices(&sim)?;
    let mut images = Vec::with_capacity(devices.len());
    for d in &devices {
        let map = profiles::builtin(d.profile)
            .and_then(Result::ok)
            .ok_or_else(|| SimError::Io(std::io::Error::other("bad built-in profile")))?;
        images.push(DeviceImage::new(map));
    }
    // served_devices keeps the simulator's order: unit id − 1 is the device index.
    let index = sim.device_index();
    let named = devices.iter().map(|d| d.name.clone()).zip(images).collect();
    let plant = SimPlant {
        sim,
        clock,
        capture: CaptureWriter::new(out, &site),
        values: vec![Default::default(); index.len()],
        index,
        unmapped: 0,
        ahead: 0,
        failed: None,
    };
    let gateway = GatewayHandle::start(listener, named, plant, counts);
    let started = clock.now();
    let uptime = move || ((clock.now() - started).max(0) / 10) as u32;
    let agents = snmp.map(|s| SnmpAgents::start(s, gateway.gateway.clone(), uptime));
    let controllers = bacnet.map(|b| BacnetDevices::start(b, gateway.gateway.clone()));
    tokio::pin!(shutdown);
    let outcome = loop {
        // Without clients the plant still runs, so the capture holds every second.
        let (ahead, done) = {
            let mut served = gateway.gateway.lock();
            let Served { images, plant, .. } = &mut *served;
            plant.advance(images);
            if let Some(a) = &agents {
                a.notify(&plant.values, uptime());
            }
            if let Some(b) = &controllers {
                b.notify(&plant.values);
            }
            if let Some(e) = plant.failed.take() {
                break Err(e);
            }
            if let Err(e) = plant.capture.flush() {
                break Err(e);
            }
            (plant.ahead, plant.sim.done())
        };
        if done {
            info!("simulation finished");
            break Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(pace(clock, ahead)) => {}
            () = &mut shutdown => break Ok(()),
        }
    };
    let unmapped = {
        let mut served = gateway.gateway.lock();
        served.closed = true;
        served.plant.capture.flush()?;
        served.plant.unmapped
    };
    gateway.stop();
    if let Some(a) = agents {
        a.stop();
    }
    if let Some(b) = controllers {
        b.stop();
    }
    if unmapped > 0 {
        warn!(unmapped, "readings that did not fit their register");
    }
    outcome.map_err(SimError::from)
}

/// Devices also served over SNMP (`simulate --serve-snmp`).
pub struct SnmpServe {
    /// Device index (the simulator's order), its agent and its bound socket.
    pub agents: Vec<(usize, Agent, UdpSocket)>,
    /// Where notifications go.
    pub trap_to: Option<SocketAddr>,
    /// Requests received by every agent.
    pub counts: Arc<AgentCounts>,
}

/// Binds one UDP socket per device of `kinds` (consecutive ports from `base`'s, or any
/// free ones for port 0) with its agent, answering community `public`.
pub async fn bind_snmp_agents(
    base: SocketAddr,
    kinds: &[&str],
    devices: &[ServedDevice],
    trap_to: Option<SocketAddr>,
) -> Result<(SnmpServe, SnmpServed), SimError> {
    let io = |m: String| SimError::Io(std::io::Error::other(m));
    for k in kinds {
        if mib::for_kind(k).is_none() {
            return Err(io(format!(
                "no SNMP profile for {k:?} (ups, pdu and env have one)"
            )));
        }
    }
    let mut agents = Vec::new();
    let mut served = SnmpServed {
        devices: Vec::new(),
        trap_to,
    };
    for (i, d) in devices.iter().enumerate() {
        let Some(profile) = mib::for_kind(d.kind).filter(|_| kinds.contains(&d.kind)) else {
            continue;
        };
        let socket = bind_nth(base, served.devices.len()).await?;
        let bound = socket.local_addr()?;
        let map = mib::named(profile).map_err(|e| io(e.to_string()))?;
        agents.push((i, Agent::new(&d.name, map, "public"), socket));
        served.devices.push((d.name.clone(), profile, bound));
    }
    if agents.is_empty() {
        return Err(io(format!("the facility has no device of kinds {kinds:?}")));
    }
    let serve = SnmpServe {
        agents,
        trap_to,
        counts: Default::default(),
    };
    Ok((serve, served))
}

/// A UDP socket for the `n`th served device: `base`'s port + `n`, or any free port when
/// `base`'s is 0.
async fn bind_nth(base: SocketAddr, n: usize) -> Result<UdpSocket, SimError> {
    let mut addr = base;
    if base.port() != 0 {
        let port = u16::try_from(usize::from(base.port()) + n)
            .map_err(|_| SimError::Io(std::io::Error::other("ports run past 65535")))?;
        addr.set_port(port);
    }
    Ok(UdpSocket::bind(addr).await?)
}

/// The `[snmp]` section that reads `served` every `interval`.
pub fn snmp_section(site: &str, interval: &str, served: &SnmpServed) -> String {
    if served.devices.is_empty() {
        return String::new();
    }
    let mut s = format!("\n[snmp]\nsite = \"{site}\"\ninterval = \"{interval}\"\n");
    if let Some(t) = served.trap_to {
        s += &format!("trap_listen = \"{t}\"\n");
    }
    for (name, profile, at) in &served.devices {
        s += &format!(
            "\n[[snmp.devices]]\nname = \"{name}\"\naddress = \"{at}\"\nprofile = \"{profile}\"\n"
        );
    }
    s
}

/// The running agents: one task per socket answering requests from the plant's present.
struct SnmpAgents {
    agents: Vec<(usize, Arc<Mutex<Agent>>, Arc<UdpSocket>)>,
    trap_to: Option<SocketAddr>,
    counts: Arc<AgentCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SnmpAgents {
    fn start(
        s: SnmpServe,
        gateway: Arc<Gateway<SimPlant>>,
        uptime: impl Fn() -> u32 + Copy + Send + 'static,
    ) -> Self {
        let mut agents = Vec::new();
        let mut tasks = Vec::new();
        for (i, agent, socket) in s.agents {
            let (agent, socket) = (Arc::new(Mutex::new(agent)), Arc::new(socket));
            agents.push((i, agent.clone(), socket.clone()));
            let (gateway, counts) = (gateway.clone(), s.counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65_535];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let reply = {
                        let mut served = gateway.lock();
                        if served.closed {
                            break;
                        }
                        let Served { images, plant, .. } = &mut *served;
                        plant.advance(images);
                        let values = &plant.values[i];
                        let agent = agent.lock().unwrap_or_else(PoisonError::into_inner);
                        let tree = agent.tree(&|m| values.get(m).copied(), uptime());
                        agent.answer(&buf[..n], &tree, &counts)
                    };
                    if let Some(r) = reply {
                        if let Err(e) = socket.send_to(&r, from).await {
                            debug!(error = %e, "snmp answer not sent");
                        }
                    }
                }
            }));
        }
        Self {
            agents,
            trap_to: s.trap_to,
            counts: s.counts,
            tasks,
        }
    }

    /// Sends the notifications flags that changed call for (UDP: never waits).
    fn notify(&self, values: &[rustc_hash::FxHashMap<String, f64>], uptime: u32) {
        let Some(to) = self.trap_to else { return };
        for (i, agent, socket) in &self.agents {
            let mut agent = agent.lock().unwrap_or_else(PoisonError::into_inner);
            let v = &values[*i];
            for trap in agent.notifications(&|m| v.get(m).copied(), uptime) {
                match socket.try_send_to(&trap, to) {
                    Ok(_) => {
                        self.counts.notifications.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => warn!(device = %agent.name, error = %e, "snmp notification not sent"),
                }
            }
        }
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Devices also served over BACnet/IP (`simulate --serve-bacnet`).
pub struct BacnetServe {
    /// Device index (the simulator's order), its server and its bound socket.
    pub devices: Vec<(usize, BacnetDevice, UdpSocket)>,
    /// Requests received by every device.
    pub counts: Arc<BacnetCounts>,
}

/// One device served over BACnet/IP, for the `[bacnet]` section.
#[derive(Debug, Clone)]
pub struct BacnetDeviceServed {
    /// Device name.
    pub name: String,
    /// Built-in object map.
    pub profile: &'static str,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its device object instance.
    pub instance: u32,
}

/// Devices served over BACnet/IP.
#[derive(Debug, Clone, Default)]
pub struct BacnetServed {
    /// Each device.
    pub devices: Vec<BacnetDeviceServed>,
}

/// Binds one UDP socket per device of `kinds` (consecutive ports from `base`'s, or any
/// free ones for port 0). Device instances are the Modbus unit ids plus 1000.
pub async fn bind_bacnet_devices(
    base: SocketAddr,
    kinds: &[&str],
    devices: &[ServedDevice],
) -> Result<(BacnetServe, BacnetServed), SimError> {
    let io = |m: String| SimError::Io(std::io::Error::other(m));
    for k in kinds {
        if bacnet_map::for_kind(k).is_none() {
            return Err(io(format!(
                "no BACnet profile for {k:?} (chiller and crah have one)"
            )));
        }
    }
    let mut out = Vec::new();
    let mut served = BacnetServed::default();
    for (i, d) in devices.iter().enumerate() {
        let Some(profile) = bacnet_map::for_kind(d.kind).filter(|_| kinds.contains(&d.kind)) else {
            continue;
        };
        let socket = bind_nth(base, served.devices.len()).await?;
        let bound = socket.local_addr()?;
        let map = bacnet_map::named(profile).map_err(|e| io(e.to_string()))?;
        let instance = 1000 + u32::from(d.unit);
        out.push((i, BacnetDevice::new(&d.name, instance, map), socket));
        served.devices.push(BacnetDeviceServed {
            name: d.name.clone(),
            profile,
            address: bound,
            instance,
        });
    }
    if out.is_empty() {
        return Err(io(format!("the facility has no device of kinds {kinds:?}")));
    }
    let serve = BacnetServe {
        devices: out,
        counts: Default::default(),
    };
    Ok((serve, served))
}

/// The `[bacnet]` section that reads `served` every `interval`.
pub fn bacnet_section(site: &str, interval: &str, served: &BacnetServed) -> String {
    if served.devices.is_empty() {
        return String::new();
    }
    let mut s = format!("\n[bacnet]\nsite = \"{site}\"\ninterval = \"{interval}\"\n");
    for d in &served.devices {
        s += &format!(
            "\n[[bacnet.devices]]\nname = \"{}\"\naddress = \"{}\"\ninstance = {}\nprofile = \"{}\"\n",
            d.name, d.address, d.instance, d.profile
        );
    }
    s
}

/// The running BACnet devices: one task per socket answering from the plant's present.
struct BacnetDevices {
    devices: Vec<(usize, Arc<Mutex<BacnetDevice>>, Arc<UdpSocket>)>,
    counts: Arc<BacnetCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: tokio::time::Instant,
}

impl BacnetDevices {
    fn start(b: BacnetServe, gateway: Arc<Gateway<SimPlant>>) -> Self {
        let started = tokio::time::Instant::now();
        let mut devices = Vec::new();
        let mut tasks = Vec::new();
        for (i, device, socket) in b.devices {
            let (device, socket) = (Arc::new(Mutex::new(device)), Arc::new(socket));
            devices.push((i, device.clone(), socket.clone()));
            let (gateway, counts) = (gateway.clone(), b.counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let now = started.elapsed().as_millis() as i64;
                    let reply = {
                        let mut served = gateway.lock();
                        if served.closed {
                            break;
                        }
                        let Served { images, plant, .. } = &mut *served;
                        plant.advance(images);
                        let mut device = device.lock().unwrap_or_else(PoisonError::into_inner);
                        let values = &plant.values[i];
                        let answer =
                            device.answer(&buf[..n], from, &|m| values.get(m).copied(), now, &counts);
                        if let Some(w) = answer.written {
                            info!(device = %device.name, client = %from, object = %w.object, metric = %w.metric, value = w.value, "bacnet write taken");
                            plant.sim.apply_write(&device.name, &w.metric, w.value);
                            let at = plant.sim.now().min(plant.clock.now());
                            let client = from.ip().to_string();
                            let written = plant.capture.bacnet_write(
                                at,
                                (&device.name, &client),
                                w.object.to_u32(),
                                w.property,
                                w.raw,
                            );
                            if let Err(e) = written {
                                plant.failed.get_or_insert(e);
                            }
                        }
                        answer.reply
                    };
                    if let Some(r) = reply {
                        if let Err(e) = socket.send_to(&r, from).await {
                            debug!(error = %e, "bacnet answer not sent");
                        }
                    }
                }
            }));
        }
        Self {
            devices,
            counts: b.counts,
            tasks,
            started,
        }
    }

    /// Sends the COV notifications due (UDP: never waits).
    fn notify(&self, values: &[rustc_hash::FxHashMap<String, f64>]) {
        let now = self.started.elapsed().as_millis() as i64;
        for (i, device, socket) in &self.devices {
            let mut device = device.lock().unwrap_or_else(PoisonError::into_inner);
            let v = &values[*i];
            for (to, n) in device.notifications(&|m| v.get(m).copied(), now) {
                match socket.try_send_to(&n, to) {
                    Ok(_) => {
                        self.counts.notifications.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        debug!(device = %device.name, error = %e, "cov notification not sent")
                    }
                }
            }
        }
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Wall time to sleep until the next simulated second is due (bounded, so shutdown and
/// client writes are noticed promptly).
pub(crate) fn pace(clock: Clock, ahead: Ts) -> std::time::Duration {
    clock.wall_duration(ahead).clamp(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(200),
    )
}

/// A running Modbus TCP gateway: one unit id per device image, from 1.
pub struct GatewayHandle<P> {
    gateway: Arc<Gateway<P>>,
    task: tokio::task::JoinHandle<()>,
}

impl<P: Plant> GatewayHandle<P> {
    /// Serves `devices` (name and image; unit ids 1, 2, … in order) on `listener`, with
    /// `plant` behind them, counting requests by function code in `counts`.
    pub fn start(
        listener: TcpListener,
        devices: Vec<(String, DeviceImage)>,
        plant: P,
        counts: Arc<FunctionCounts>,
    ) -> Self {
        let (names, images) = devices.into_iter().unzip();
        let gateway = Arc::new(Gateway {
            served: Mutex::new(Served {
                images,
                plant,
                closed: false,
            }),
            names,
            counts,
        });
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = {
            let gateway = gateway.clone();
            move |stream, peer: SocketAddr| {
                let service = Service {
                    gateway: gateway.clone(),
                    peer: peer.ip().to_string(),
                };
                async move { Ok(Some((service, stream))) }
            }
        };
        let task = tokio::spawn(async move {
            if let Err(e) = server
                .serve(
                    &on_connected,
                    |e| debug!(error = %e, "modbus connection ended"),
                )
                .await
            {
                warn!(error = %e, "modbus server stopped");
            }
        });
        Self { gateway, task }
    }

    /// Stops accepting; connections still open are refused from now on.
    pub fn stop(self) {
        self.gateway.lock().closed = true;
        self.task.abort();
    }
}

/// One client connection.
struct Service<P> {
    gateway: Arc<Gateway<P>>,
    peer: String,
}

impl<P: Plant> Service<P> {
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Response, ExceptionCode> {
        let unit = usize::from(req.slave);
        let request = req.request;
        let function = function_code(&request);
        self.gateway.counts.add(function);
        let g = &self.gateway;
        let Some(i) = unit.checked_sub(1).filter(|i| *i < g.names.len()) else {
            return Err(ExceptionCode::GatewayTargetDevice);
        };
        let mut served = g.lock();
        if served.closed {
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        let Served { images, plant, .. } = &mut *served;
        plant.advance(images);
        let image = &mut images[i];
        let refused = |r: Refusal| match r {
            Refusal::IllegalDataAddress => ExceptionCode::IllegalDataAddress,
            Refusal::IllegalDataValue => ExceptionCode::IllegalDataValue,
        };
        let bits = |w: Vec<u16>| w.into_iter().map(|b| b != 0).collect::<Vec<bool>>();
        let (address, values, result) = match request {
            Request::ReadCoils(a, n) => {
                return image
                    .read(Table::Coil, a, n)
                    .map(|w| Response::ReadCoils(bits(w)))
                    .map_err(refused)
            }
            Request::ReadDiscreteInputs(a, n) => {
                return image
                    .read(Table::Discrete, a, n)
                    .map(|w| Response::ReadDiscreteInputs(bits(w)))
                    .map_err(refused)
            }
            Request::ReadHoldingRegisters(a, n) => {
                return image
                    .read(Table::Holding, a, n)
                    .map(Response::ReadHoldingRegisters)
                    .map_err(refused)
            }
            Request::ReadInputRegisters(a, n) => {
                return image
                    .read(Table::Input, a, n)
                    .map(Response::ReadInputRegisters)
                    .map_err(refused)
            }
            Request::WriteSingleRegister(a, w) => (
                a,
                vec![w],
                image
                    .write(Table::Holding, a, &[w])
                    .map(|c| (c, Response::WriteSingleRegister(a, w))),
            ),
            Request::WriteMultipleRegisters(a, ws) => {
                let n = ws.len() as u16;
                (
                    a,
                    ws.to_vec(),
                    image
                        .write(Table::Holding, a, &ws)
                        .map(|c| (c, Response::WriteMultipleRegisters(a, n))),
                )
            }
            Request::WriteSingleCoil(a, on) => (
                a,
                vec![if on { 0xFF00 } else { 0 }],
                image
                    .write(Table::Coil, a, &[u16::from(on)])
                    .map(|c| (c, Response::WriteSingleCoil(a, on))),
            ),
            Request::WriteMultipleCoils(a, cs) => {
                let words: Vec<u16> = cs.iter().map(|&c| u16::from(c)).collect();
                let n = words.len() as u16;
                (
                    a,
                    words.clone(),
                    image
                        .write(Table::Coil, a, &words)
                        .map(|c| (c, Response::WriteMultipleCoils(a, n))),
                )
            }
            // Diagnostics, identification and the rest: not served, but seen.
            _ => (0, Vec::new(), Err(Refusal::IllegalDataAddress)),
        };
        let (changed, response) = match result {
            Ok((c, r)) => (c, Ok(r)),
            Err(r) if is_write(function) => (Vec::new(), Err(refused(r))),
            Err(_) => (Vec::new(), Err(ExceptionCode::IllegalFunction)),
        };
        plant.command(
            images,
            WireEvent {
                device: g.names[i].clone(),
                client: self.peer.clone(),
                function,
                address,
                values,
                changed,
            },
        );
        response
    }
}

fn is_write(function: u8) -> bool {
    matches!(function, 5 | 6 | 15 | 16)
}

fn function_code(r: &Request<'_>) -> u8 {
    match r {
        Request::ReadCoils(..) => 1,
        Request::ReadDiscreteInputs(..) => 2,
        Request::ReadHoldingRegisters(..) => 3,
        Request::ReadInputRegisters(..) => 4,
        Request::WriteSingleCoil(..) => 5,
        Request::WriteSingleRegister(..) => 6,
        Request::WriteMultipleCoils(..) => 15,
        Request::WriteMultipleRegisters(..) => 16,
        Request::ReportServerId => 17,
        Request::MaskWriteRegister(..) => 22,
        Request::ReadWriteMultipleRegisters(..) => 23,
        Request::ReadDeviceIdentification(..) => 43,
        Request::Custom(f, _) => *f,
    }
}

impl<P: Plant> tokio_modbus::server::Service for Service<P> {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.answer(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Facility, Intensity, SimOptions};
    use std::borrow::Cow;

    /// Records what is not a read.
    impl Plant for Vec<WireEvent> {
        fn advance(&mut self, _: &mut [DeviceImage]) {}
        fn command(&mut self, _: &mut [DeviceImage], ev: WireEvent) {
            self.push(ev);
        }
    }

    fn simulator(start: Ts) -> Simulator {
        let opts = SimOptions {
            start,
            hours: 1.0,
            seed: 1,
            attacks: Vec::new(),
            intensity: Intensity::Obvious,
        };
        Simulator::new(Facility::default(), &opts).unwrap()
    }

    fn service<P: Plant>(devices: &[ServedDevice], plant: P) -> Service<P> {
        let images = devices
            .iter()
            .map(|d| DeviceImage::new(profiles::builtin(d.profile).unwrap().unwrap()))
            .collect();
        let g = Arc::new(Gateway {
            served: Mutex::new(Served {
                images,
                plant,
                closed: false,
            }),
            names: devices.iter().map(|d| d.name.clone()).collect(),
            counts: Arc::default(),
        });
        Service {
            gateway: g,
            peer: "10.66.0.99".into(),
        }
    }

    fn gateway() -> (Service<Vec<WireEvent>>, Vec<ServedDevice>) {
        let devices = served_devices(&simulator(0)).unwrap();
        (service(&devices, Vec::new()), devices)
    }

    fn req(unit: u8, request: Request<'static>) -> SlaveRequest<'static> {
        SlaveRequest {
            slave: unit,
            request,
        }
    }

    #[test]
    fn units_map_to_devices_and_unknown_units_are_gateway_failures() {
        let (svc, devices) = gateway();
        let chiller = devices.iter().find(|d| d.kind == "chiller").unwrap();
        assert!(matches!(
            svc.answer(req(chiller.unit, Request::ReadHoldingRegisters(1000, 6))),
            Ok(Response::ReadHoldingRegisters(w)) if w.len() == 6
        ));
        assert_eq!(
            svc.answer(req(200, Request::ReadHoldingRegisters(1000, 1))),
            Err(ExceptionCode::GatewayTargetDevice)
        );
        assert_eq!(
            svc.answer(req(chiller.unit, Request::ReadInputRegisters(1000, 1))),
            Err(ExceptionCode::IllegalDataAddress)
        );
        svc.gateway.lock().closed = true;
        assert_eq!(
            svc.answer(req(chiller.unit, Request::ReadHoldingRegisters(1000, 6))),
            Err(ExceptionCode::ServerDeviceFailure),
            "a stopped gateway serves nothing"
        );
    }

    #[test]
    fn writes_and_reconnaissance_are_reported_with_the_client() {
        let (svc, devices) = gateway();
        let ups = devices.iter().find(|d| d.kind == "ups").unwrap();
        assert!(svc
            .answer(req(ups.unit, Request::WriteSingleCoil(2001, true)))
            .is_ok());
        let seen = |svc: &Service<Vec<WireEvent>>| svc.gateway.lock().plant.pop().unwrap();
        let ev = seen(&svc);
        assert_eq!(
            (
                ev.device.as_str(),
                ev.client.as_str(),
                ev.function,
                ev.values
            ),
            (ups.name.as_str(), "10.66.0.99", 5, vec![0xFF00])
        );
        assert_eq!(ev.changed, vec![("bypass_command".to_owned(), 1.0)]);
        assert_eq!(
            svc.answer(req(ups.unit, Request::WriteSingleRegister(0x0424, 1))),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(seen(&svc).changed.is_empty());
        assert_eq!(
            svc.answer(req(
                ups.unit,
                Request::Custom(8, Cow::Borrowed(&[0, 0, 0, 0]))
            )),
            Err(ExceptionCode::IllegalFunction)
        );
        assert_eq!(seen(&svc).function, 8);
        let seen: Vec<u8> = svc.gateway.counts.seen().iter().map(|(f, _)| *f).collect();
        assert_eq!(seen, vec![5, 6, 8]);
    }

    /// The serving loop may be late (a busy host): a read still sees the plant at the
    /// clock's now, never registers frozen since the loop last ran.
    #[test]
    fn a_read_brings_the_plant_up_to_the_clock_first() {
        let clock = Clock::wall();
        let start = clock.now() - 10 * 60_000;
        let sim = simulator(start);
        let devices = served_devices(&sim).unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let plant = SimPlant {
            index: sim.device_index(),
            values: vec![Default::default(); devices.len()],
            sim,
            clock,
            capture: CaptureWriter::new(Box::new(SharedBuf(captured.clone())), "s"),
            unmapped: 0,
            ahead: 0,
            failed: None,
        };
        let svc = service(&devices, plant);
        let chiller = devices.iter().find(|d| d.kind == "chiller").unwrap();
        let before = clock.now();
        let words = match svc.answer(req(chiller.unit, Request::ReadHoldingRegisters(1000, 6))) {
            Ok(Response::ReadHoldingRegisters(w)) => w,
            other => panic!("{other:?}"),
        };
        assert!(words.iter().any(|w| *w != 0), "the image holds readings");
        let mut served = svc.gateway.lock();
        assert!(served.plant.sim.now() > before, "simulated up to the read");
        served.plant.capture.flush().unwrap();
        let lines = captured
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        assert!(
            lines > 600,
            "ten minutes of readings in the capture: {lines}"
        );
    }

    #[derive(Clone)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
