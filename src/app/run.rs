//! `wattchdog run`: live collectors feeding the same pipeline a replay uses.
//!
//! Readings arrive from the collector tasks through a bounded channel (a slow pipeline
//! slows the pollers instead of growing a queue). A heartbeat moves the watermark on the
//! event-time clock even when nothing arrives, so a device that falls silent is judged
//! by the staleness detector while it is silent, not when it speaks again.

use crate::app::cli::RunArgs;
use crate::app::soc::Soc;
use crate::app::{runtime, stop_signal, Summary};
use crate::config::Config;
use crate::correlate::Output;
use crate::model::event::Event;
use crate::model::{Reading, Ts};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::sink::{AlertJsonl, Fanout, Sink, SinkError, Stamp};
use crate::source::bacnet::BacnetCollector;
use crate::source::modbus::{Collector, DeviceCounts, PollSettings};
use crate::source::mqtt::{self, MqttCounts, MqttStats};
use crate::source::snmp::SnmpCollector;
use crate::tomlfile::TomlError;
use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Why `run` could not start or stopped early.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// A bad source configuration.
    #[error(transparent)]
    Config(#[from] TomlError),
    /// A socket could not be bound.
    #[error("{0}")]
    Bind(String),
    /// Nothing to collect from.
    #[error(
        "{0}: no sources configured (add [[modbus.devices]], [[snmp.devices]] or [[mqtt.brokers]])"
    )]
    NoSources(String),
    /// A sink failed.
    #[error("writing output: {0}")]
    Sink(#[from] SinkError),
    /// The store, HTTP server or webhooks could not start.
    #[error(transparent)]
    Soc(#[from] crate::app::soc::SocError),
    /// `[kafka]` asks for Kafka in a build without it.
    #[error(
        "{0}: [kafka] needs a build with Kafka support (cargo build --release --features kafka)"
    )]
    NoKafka(String),
    /// The Kafka client failed.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Consuming from Kafka failed.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Central(#[from] crate::kafka::central::CentralError),
}

/// What a run did, for the summary at shutdown.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Pipeline counters.
    pub pipeline: PipelineStats,
    /// Per-device Modbus counters.
    pub devices: Vec<DeviceCounts>,
    /// Per-broker MQTT counters.
    pub mqtt: Vec<MqttCounts>,
    /// Per-device SNMP counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snmp: Vec<DeviceCounts>,
    /// SNMP trap receiver counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traps: Option<crate::source::snmp::TrapCounts>,
    /// Per-device BACnet/IP counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bacnet: Vec<DeviceCounts>,
    /// Readings dropped because the point table was full.
    pub dropped: u64,
    /// Event time of the last heartbeat.
    #[serde(with = "crate::time::serde_ts")]
    pub last_ts: Ts,
    /// How the detectors judged what they saw (what they could not judge, and why).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Edge: what was forwarded to Kafka.
    #[cfg(feature = "kafka")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<crate::kafka::edge::ForwardCounts>,
    /// Central: what was consumed from Kafka.
    #[cfg(feature = "kafka")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<crate::kafka::central::CentralCounts>,
}

/// Runs the configured collectors through the pipeline until `shutdown` resolves,
/// handing every alert and incident to the SOC sinks (when configured), then to `sink`. `base` is the config's directory
/// (for register-map files), `origin` its name (for errors).
pub async fn live(
    cfg: &Config,
    base: &Path,
    origin: &str,
    sink: &mut dyn Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let soc = start_soc(cfg, base, origin).await?;
    live_with(cfg, base, origin, soc, sink, shutdown).await
}

/// Opens the store and binds the HTTP server, if configured: a caller that announces
/// the dashboard does so after this, when the port is known to be its own.
pub async fn start_soc(cfg: &Config, base: &Path, origin: &str) -> Result<Option<Soc>, RunError> {
    if !cfg.soc.enabled() {
        return Ok(None);
    }
    let soc = Soc::start(&cfg.soc, base, origin).await?;
    if let Some(addr) = soc.addr {
        info!(%addr, "dashboard at http://{addr}/");
    }
    Ok(Some(soc))
}

/// [`live`] with the SOC surface already started by [`start_soc`].
pub async fn live_with(
    cfg: &Config,
    base: &Path,
    origin: &str,
    mut soc: Option<Soc>,
    sink: &mut dyn Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let result = if cfg.kafka.consume {
        central(cfg, origin, &soc, sink, shutdown).await
    } else {
        collect(cfg, base, origin, &mut soc, sink, shutdown).await
    };
    if let Some(s) = soc {
        s.stop().await;
    }
    result
}

async fn collect(
    cfg: &Config,
    base: &Path,
    origin: &str,
    soc: &mut Option<Soc>,
    sink: &mut dyn Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    if cfg.kafka.used() && !cfg!(feature = "kafka") {
        return Err(RunError::NoKafka(origin.to_owned()));
    }
    #[cfg(feature = "kafka")]
    let forwarder = if cfg.kafka.forward {
        Some(crate::kafka::edge::Forwarder::new(&cfg.kafka)?)
    } else {
        None
    };
    let detect = !cfg.kafka.forward || cfg.kafka.detect;
    let devices = cfg.modbus.resolve(base, origin)?;
    let brokers = cfg.mqtt.resolve(base, origin)?;
    let agents = cfg.snmp.resolve(base, origin)?;
    let controllers = cfg.bacnet.resolve(base, origin)?;
    if devices.is_empty() && brokers.is_empty() && agents.is_empty() && controllers.is_empty() {
        return Err(RunError::NoSources(origin.to_owned()));
    }
    let clock = cfg.clock.clock();
    let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(1024);
    let (stop_mqtt, stop_rx) = tokio::sync::watch::channel(false);
    let mut subscribers = Vec::new();
    for plan in brokers {
        let stats = std::sync::Arc::new(MqttStats::default());
        let name = plan.cfg.url.clone();
        let task = tokio::spawn(mqtt::subscribe(
            plan,
            clock,
            stats.clone(),
            tx.clone(),
            stop_rx.clone(),
        ));
        subscribers.push((name, stats, task));
    }
    let snmp = if agents.is_empty() && cfg.snmp.trap_listen.is_none() {
        None
    } else {
        let settings = PollSettings {
            clock,
            backoff_min: cfg.snmp.backoff_min,
            backoff_max: cfg.snmp.backoff_max,
        };
        let c = SnmpCollector::start(&cfg.snmp, agents, settings, tx.clone())
            .await
            .map_err(|e| RunError::Bind(format!("{origin}: snmp.trap_listen: {e}")))?;
        Some(c)
    };
    let bacnet = (!controllers.is_empty()).then(|| {
        let settings = PollSettings {
            clock,
            backoff_min: cfg.bacnet.backoff_min,
            backoff_max: cfg.bacnet.backoff_max,
        };
        BacnetCollector::start(&cfg.bacnet, controllers, settings, tx.clone())
    });
    let collector = Collector::start(
        devices,
        cfg.modbus.concurrency,
        PollSettings {
            clock,
            backoff_min: cfg.modbus.backoff_min,
            backoff_max: cfg.modbus.backoff_max,
        },
        tx,
    );
    let mut pipeline = cfg.build_pipeline();
    if cfg.pipeline.early_alerts {
        pipeline.raise_on_arrival();
    }
    if cfg.pipeline.learn_reorder_wait {
        // Wall-clock spans: at an accelerated clock a hiccup of the machine is `speed`
        // times longer in event time, so the margin and the learning stretch with it.
        let event = |ms: i64| (ms as f64 * clock.speed).round() as i64;
        pipeline.learn_reorder_wait(
            event(cfg.pipeline.reorder_margin),
            event(cfg.pipeline.reorder_learning),
        );
    }
    if let Some(s) = &soc {
        pipeline.set_exceptions(s.exceptions());
    }
    let mut outputs = Vec::new();
    let mut stamp = Stamp::wall();
    let mut dropped = 0u64;
    let beat = clock
        .wall_duration(cfg.pipeline.tick)
        .max(Duration::from_millis(5));
    let mut heartbeat = tokio::time::interval(beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut last_ts = clock.now();
    // When the earliest reading waiting is due: released then, not at the next heartbeat.
    let due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(due);
    let mut armed = false;
    info!(speed = clock.speed, "running");
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    #[cfg(feature = "kafka")]
                    if let Some(f) = &forwarder {
                        f.send(&batch);
                    }
                    if detect {
                        let now = clock.now();
                        pipeline.arriving_at(now);
                        dropped += take(batch, soc.as_ref(), &mut pipeline, &mut outputs);
                        advance(&mut pipeline, now, &rx, &subscribers, &mut outputs);
                    }
                }
                None => break,
            },
            () = &mut due, if armed => {
                advance(&mut pipeline, clock.now(), &rx, &subscribers, &mut outputs);
            }
            _ = heartbeat.tick() => {
                last_ts = clock.now();
                advance(&mut pipeline, last_ts, &rx, &subscribers, &mut outputs);
                if let Some(s) = soc.as_mut() {
                    s.tick(last_ts);
                }
            }
            () = &mut shutdown => break,
        }
        // Readings waiting in the channel come first: their batch moves the clock.
        armed = match pipeline.next_release().filter(|_| rx.is_empty()) {
            Some(at) => {
                let wall = clock.wall_duration(at.saturating_sub(clock.now()));
                due.as_mut().reset(tokio::time::Instant::now() + wall);
                true
            }
            None => false,
        };
        emit(&mut outputs, &mut stamp, soc.as_ref(), sink)?;
    }
    info!("stopping collectors");
    let devices = collector.stop().await;
    let (snmp_counts, trap_counts) = match snmp {
        Some(c) => c.stop().await,
        None => (Vec::new(), None),
    };
    let bacnet_counts = match bacnet {
        Some(c) => c.stop().await,
        None => Vec::new(),
    };
    let _ = stop_mqtt.send(true);
    let mut mqtt_counts = Vec::new();
    for (name, stats, task) in subscribers {
        let _ = task.await;
        mqtt_counts.push(stats.snapshot(&name));
    }
    while let Ok(batch) = rx.try_recv() {
        #[cfg(feature = "kafka")]
        if let Some(f) = &forwarder {
            f.send(&batch);
        }
        if detect {
            dropped += take(batch, soc.as_ref(), &mut pipeline, &mut outputs);
        }
    }
    #[cfg(feature = "kafka")]
    if let Some(f) = &forwarder {
        f.flush(Duration::from_secs(30));
    }
    pipeline.finish(&mut outputs);
    emit(&mut outputs, &mut stamp, soc.as_ref(), sink)?;
    if dropped > 0 {
        warn!(dropped, "readings dropped: too many points");
    }
    Ok(RunReport {
        pipeline: pipeline.stats().clone(),
        devices,
        mqtt: mqtt_counts,
        snmp: snmp_counts,
        traps: trap_counts,
        bacnet: bacnet_counts,
        dropped,
        last_ts,
        notes: pipeline.detector_notes(),
        #[cfg(feature = "kafka")]
        forwarded: forwarder.map(|f| f.stats.counts()),
        #[cfg(feature = "kafka")]
        consumed: None,
    })
}

/// Central mode: the pipeline fed from the telemetry topic in a consumer group.
#[cfg(feature = "kafka")]
async fn central(
    cfg: &Config,
    _origin: &str,
    soc: &Option<Soc>,
    sink: &mut dyn Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    info!(brokers = %cfg.kafka.brokers, topic = %cfg.kafka.telemetry_topic, group = %cfg.kafka.group, "consuming");
    let mut store = soc.as_ref();
    let mut fanout = Fanout {
        durable: store.as_mut().map(|s| s as &mut dyn Sink),
        rest: sink,
    };
    let metrics = soc
        .as_ref()
        .map(|s| s.register(crate::kafka::metrics::KafkaMetrics::register));
    let mut observe = |c: &crate::kafka::counts::CentralCounts, p: &PipelineStats| {
        if let (Some(s), Some(m)) = (soc.as_ref(), metrics.as_ref()) {
            m.update(c);
            s.readings_to(p.readings);
            s.pipeline(p);
            s.tick(chrono::Utc::now().timestamp_millis());
        }
    };
    let observer = soc
        .is_some()
        .then_some(&mut observe as &mut crate::kafka::central::Observer<'_>);
    let (counts, pipeline) =
        crate::kafka::central::consume(cfg.central(), &mut fanout, observer, shutdown).await?;
    Ok(RunReport {
        pipeline,
        devices: Vec::new(),
        mqtt: Vec::new(),
        snmp: Vec::new(),
        bacnet: Vec::new(),
        traps: None,
        dropped: 0,
        last_ts: 0,
        notes: Vec::new(),
        forwarded: None,
        consumed: Some(counts),
    })
}

#[cfg(not(feature = "kafka"))]
async fn central(
    _cfg: &Config,
    origin: &str,
    _soc: &Option<Soc>,
    _sink: &mut dyn Sink,
    _shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    Err(RunError::NoKafka(origin.to_owned()))
}

/// Moves the pipeline's trusted clock to `now`, unless readings wait in the channel: the
/// clock says "everything sent before `now` is in", which holds only once they are
/// taken (a pipeline behind its collectors would otherwise pass the readings queued for
/// it, and they would be late).
///
/// A subscriber's lost or regained connection is passed on first (see
/// [`Pipeline::disturbed`]).
fn advance(
    p: &mut Pipeline,
    now: Ts,
    rx: &mpsc::Receiver<Vec<Reading>>,
    mqtt: &[Subscriber],
    out: &mut Vec<Output>,
) {
    for (_, stats, _) in mqtt {
        let at = stats
            .disturbed_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if at != 0 {
            p.disturbed(at);
        }
    }
    if rx.is_empty() {
        p.advance_to(now, out);
    }
}

/// An MQTT subscriber task: its broker, counters and handle.
type Subscriber = (
    String,
    std::sync::Arc<MqttStats>,
    tokio::task::JoinHandle<()>,
);

/// Hands a batch of readings to the board and the pipeline; returns how many were
/// dropped (point table full). A reading the pipeline holds apart as dated ahead of the
/// site's present never reaches the board: a forged one would show as the device's
/// latest value and time until the next good one.
fn take(batch: Vec<Reading>, soc: Option<&Soc>, p: &mut Pipeline, out: &mut Vec<Output>) -> u64 {
    let mut dropped = 0;
    for r in batch {
        if let Some(s) = soc.filter(|_| p.admits(r.ts)) {
            s.reading(&r);
        }
        dropped += u64::from(!push(p, r, out));
    }
    if let Some(s) = soc {
        s.pipeline(p.stats());
    }
    dropped
}

/// Sends the outputs on: stored first, so nothing is reported that a crash could lose.
fn emit(
    outputs: &mut Vec<Output>,
    stamp: &mut Stamp,
    soc: Option<&Soc>,
    sink: &mut dyn Sink,
) -> Result<(), SinkError> {
    let mut store = soc;
    Fanout {
        durable: store.as_mut().map(|s| s as &mut dyn Sink),
        rest: sink,
    }
    .deliver(stamp, outputs)
}

/// Interns and pushes one reading; false when the point table is full.
fn push(p: &mut Pipeline, r: Reading, out: &mut Vec<Output>) -> bool {
    match p.registry.intern(&r.site, &r.device, &r.kind, &r.metric) {
        Ok(point) => {
            p.push(
                Event::Sample {
                    ts: r.ts,
                    point,
                    value: r.value,
                    quality: r.quality,
                },
                out,
            );
            true
        }
        Err(_) => false,
    }
}
/// What a run did (the human line goes to standard error).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// Alert snapshots written.
    pub alerts: u64,
    /// The counters.
    #[serde(flatten)]
    pub report: RunReport,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "kafka")]
        if let Some(c) = &self.report.consumed {
            return writeln!(
                f,
                "run (central): {} records, {} readings from {} judged live ({} records replayed to warm up) on {} partitions ({} assigned, {} revoked), {} alerts",
                c.records,
                c.readings,
                match c.sites() {
                    1 => "1 site".to_owned(),
                    n => format!("{n} sites"),
                },
                c.warmup_records,
                c.partitions.len(),
                c.assigned,
                c.revoked,
                self.alerts
            );
        }
        let devices = || {
            self.report
                .devices
                .iter()
                .chain(&self.report.snmp)
                .chain(&self.report.bacnet)
        };
        let requests: u64 = devices().map(|d| d.requests).sum();
        let failed: u64 = devices().map(|d| d.timeouts + d.transport_errors).sum();
        write!(
            f,
            "run: {} devices, {requests} requests ({failed} failed), {} readings judged here, {} alerts",
            devices().count(),
            self.report.pipeline.readings,
            self.alerts
        )?;
        if let Some(t) = &self.report.traps {
            let dropped = t.unknown_source + t.bad_community + t.undecodable + t.rate_limited;
            write!(
                f,
                "; {} SNMP notifications ({} readings, {dropped} dropped)",
                t.received, t.readings
            )?;
        }
        #[cfg(feature = "kafka")]
        if let Some(fw) = &self.report.forwarded {
            write!(
                f,
                "; forwarded {} records, {} readings ({} records dropped, {} failed)",
                fw.delivered, fw.readings, fw.dropped, fw.failed
            )?;
        }
        writeln!(f)
    }
}

impl Summary for RunSummary {
    fn human_to_stderr(&self) -> bool {
        true
    }
}

/// `wattchdog run`: alerts to `--alerts`, `[sinks] alerts` or standard output.
pub fn run(a: RunArgs) -> anyhow::Result<RunSummary> {
    let cfg = Config::load(&a.config)?;
    let base = a
        .config
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let origin = a.config.display().to_string();
    let duration = a
        .duration
        .as_deref()
        .map(crate::time::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--duration")?;
    let alerts_path = a.alerts.clone().or_else(|| cfg.sinks.alerts.clone());
    let out: Box<dyn Write> = match &alerts_path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(io::stdout().lock()),
    };
    let mut sink = AlertJsonl::line_buffered(out);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let stop = async {
            match duration {
                Some(ms) => {
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(ms.max(0) as u64)) => {}
                        () = stop_signal() => {}
                    }
                }
                None => stop_signal().await,
            }
        };
        live(
            &cfg,
            &base,
            &origin,
            &mut sink,
            stop,
        )
        .await
    })?;
    sink.flush()?;
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(RunSummary {
        alerts: sink.written(),
        report,
    })
}
