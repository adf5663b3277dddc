//! The SOC sinks of `run` and `demo`: the durable store, the HTTP API and dashboard, the
//! live stream, Prometheus metrics and webhooks, fed by the live loop.
//!
//! Order matters for durability: an alert is committed to the store (with its webhook
//! deliveries) before it is streamed, written to JSONL or counted anywhere else.

use crate::config::SocConfig;
use crate::correlate::exceptions::Exceptions;
use crate::correlate::Output;
use crate::http::board::Board;
use crate::http::HttpConfig;
use crate::http::{self, AppState};
use crate::model::Reading;
use crate::sink::store::{Shared, Store};
use crate::sink::syslog::{self, SyslogSink};
use crate::sink::webhook::{self, Receiver};
use crate::sink::{Sink, SinkError};
use crate::tomlfile::{check, TomlError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::http::bounded::Bounded;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

/// Why the SOC sinks could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SocError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] TomlError),
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::sink::store::StoreError),
    /// The listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A sink that cannot work as configured (a TLS authority file that is missing or
    /// holds no certificate).
    #[error("syslog sink {name}: {reason}")]
    Sink {
        /// The sink.
        name: String,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    site: String,
    device: String,
    kind: String,
}

/// A device as `site/device`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// A webhook receiver or syslog sink, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabel {
    receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabel {
    severity: String,
}

/// The running sinks.
pub struct Soc {
    state: Arc<AppState>,
    store: Shared,
    receivers: Vec<Receiver>,
    syslog: Vec<SyslogSink>,
    readings: Counter,
    late: Counter,
    ahead: Counter,
    late_by_device: Family<SourceLabel, Counter>,
    ahead_by_device: Family<SourceLabel, Counter>,
    reorder_wait: Gauge<f64, AtomicU64>,
    alerts: Family<SeverityLabel, Counter>,
    scores: Family<DeviceLabels, Gauge<f64, AtomicU64>>,
    online: Family<DeviceLabels, Gauge>,
    /// When `tick`'s periodic jobs last ran (it is called through a shared reference
    /// from the consumer as well as the collectors).
    last: Mutex<Periodic>,
    /// When the outbox gauges were last refreshed.
    pending: Family<ReceiverLabel, Gauge>,
    dead: Family<ReceiverLabel, Gauge>,
    retention: i64,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the HTTP server listens, if it runs.
    pub addr: Option<SocketAddr>,
    /// Wakes each delivery worker (webhooks, syslog sinks) when it has work queued.
    queued: Vec<Arc<tokio::sync::Notify>>,
}

/// The SOC surface is the durable sink of `run` and `demo`: the store commits an output
/// (with its webhook deliveries) before the stream, the board or anything after it sees it.
/// When the periodic jobs of [`Soc::tick`] last ran.
struct Periodic {
    devices: Instant,
    prune: Instant,
    outbox: Instant,
}

impl Sink for &Soc {
    fn put(&mut self, o: &Output) -> Result<(), SinkError> {
        self.output(o)
    }
}

impl Soc {
    /// Opens the store and starts the HTTP server and the webhook worker.
    pub async fn start(cfg: &SocConfig, base: &Path, origin: &str) -> Result<Self, SocError> {
        cfg.validate(origin)?;
        // Syslog sinks' TLS set up before anything starts: a bad authority file stops it.
        let mut syslog_sinks = Vec::new();
        for sink in &cfg.syslog {
            let mut sink = sink.clone();
            sink.ca = sink.ca.take().map(|ca| base.join(ca));
            let tls = syslog::tls_connector(&sink).map_err(|reason| SocError::Sink {
                name: sink.name.clone(),
                reason,
            })?;
            syslog_sinks.push((sink, tls));
        }
        let path = cfg
            .store
            .path
            .as_ref()
            .map(|p| base.join(p))
            .ok_or_else(|| TomlError::Invalid {
                path: origin.into(),
                key: "store.path".into(),
                rule: "is required".into(),
            })?;
        let opened = Store::open(&path)?;
        let exceptions = Exceptions::new(opened.active_exceptions()?);
        let store = Arc::new(Mutex::new(opened));
        info!(path = %path.display(), exceptions = exceptions.list().len(), "store open");
        let token = match &cfg.http {
            Some(HttpConfig { token: Some(t), .. }) => t.clone(),
            Some(HttpConfig {
                token_file: Some(f),
                ..
            }) => {
                let f = base.join(f);
                let text = crate::tomlfile::read(&f)?;
                let t = text.lines().next().unwrap_or("").trim().to_owned();
                check(
                    origin,
                    "http.token_file",
                    t.len() >= 16,
                    "must hold a token of at least 16 characters",
                )?;
                t
            }
            _ => String::new(),
        };
        let mut registry = prometheus_client::registry::Registry::with_prefix("wattchdog");
        let readings = Counter::default();
        let alerts = Family::<SeverityLabel, Counter>::default();
        let scores = Family::<DeviceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("readings", "Readings processed", readings.clone());
        let late = Counter::default();
        let ahead = Counter::default();
        let late_by_device = Family::<SourceLabel, Counter>::default();
        let ahead_by_device = Family::<SourceLabel, Counter>::default();
        registry.register(
            "late_events_by_device",
            "Late events by the device (site/device) they came from",
            late_by_device.clone(),
        );
        registry.register(
            "ahead_events_by_device",
            "Events held apart as ahead, by the device (site/device) they came from",
            ahead_by_device.clone(),
        );
        let reorder_wait = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "reorder_wait_seconds",
            "How long events wait for those that may still overtake them, once learned from how late readings arrive (live)",
            reorder_wait.clone(),
        );
        registry.register(
            "late_events",
            "Events older than the watermark when they arrived: counted, not used",
            late.clone(),
        );
        registry.register(
            "ahead_events",
            "Events dated further than max_ahead past the site's present: held apart",
            ahead.clone(),
        );
        registry.register(
            "alerts",
            "Alert snapshots stored, by severity",
            alerts.clone(),
        );
        registry.register(
            "anomaly_score",
            "Highest score/threshold of a device's open alerts (above 1: above threshold)",
            scores.clone(),
        );
        let online = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "device_online",
            "Whether a device answers its collector (1) or is silent or unreachable (0)",
            online.clone(),
        );
        let pending = Family::<ReceiverLabel, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Alert snapshots waiting for a webhook receiver or syslog sink (a receiver falling behind or down)",
            pending.clone(),
        );
        let dead = Family::<ReceiverLabel, Gauge>::default();
        registry.register(
            "outbox_dead",
            "Deliveries given up on per receiver (past max_age or max_queue): dead letters",
            dead.clone(),
        );
        let (events, _) = broadcast::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(AppState {
            store: store.clone(),
            token,
            events,
            board: Mutex::new(Board::default()),
            metrics: Mutex::new(registry),
            streams: Arc::new(tokio::sync::Semaphore::new(
                cfg.http.as_ref().map_or(1, |h| h.max_streams),
            )),
            exceptions,
            closing: stop_rx.clone(),
        });
        let mut tasks = Vec::new();
        let mut addr = None;
        if let Some(h) = &cfg.http {
            let listener = tokio::net::TcpListener::bind(&h.listen)
                .await
                .map_err(|source| SocError::Listen {
                    addr: h.listen.clone(),
                    source,
                })?;
            addr = listener.local_addr().ok();
            let app = http::router(state.clone());
            let mut stop_http = stop_rx.clone();
            let shutdown = async move {
                let _ = stop_http.changed().await;
            };
            let idle = Duration::from_millis(h.idle_timeout.unsigned_abs());
            let bounded = Bounded::new(
                listener,
                h.max_connections,
                h.max_connections_per_address,
                idle,
            );
            match (&h.cert_file, &h.key_file) {
                (Some(c), Some(k)) => {
                    let tls =
                        http::tls::TlsListener::new(bounded, &base.join(c), &base.join(k), idle)
                            .map_err(|rule| TomlError::Invalid {
                                path: origin.into(),
                                key: "http.cert_file".into(),
                                rule,
                            })?;
                    tasks.push(tokio::spawn(async move {
                        if let Err(e) = axum::serve(tls, app).with_graceful_shutdown(shutdown).await
                        {
                            warn!(error = %e, "https server stopped");
                        }
                    }));
                }
                _ => tasks.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(bounded, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        warn!(error = %e, "http server stopped");
                    }
                })),
            }
            info!(addr = ?addr, "http listening");
        }
        let mut queued = Vec::new();
        if !cfg.webhooks.is_empty() {
            let wake = Arc::new(tokio::sync::Notify::new());
            queued.push(wake.clone());
            tasks.push(tokio::spawn(webhook::deliver(
                cfg.webhooks.clone(),
                store.clone(),
                wake,
                stop_rx.clone(),
            )));
        }
        for (sink, tls) in syslog_sinks {
            let wake = Arc::new(tokio::sync::Notify::new());
            queued.push(wake.clone());
            tasks.push(tokio::spawn(syslog::deliver(
                sink,
                tls,
                store.clone(),
                wake,
                stop_rx.clone(),
            )));
        }
        Ok(Self {
            state,
            store,
            receivers: cfg.webhooks.clone(),
            syslog: cfg.syslog.clone(),
            readings,
            late,
            ahead,
            late_by_device,
            ahead_by_device,
            reorder_wait,
            alerts,
            scores,
            online,
            last: Mutex::new(Periodic {
                devices: Instant::now(),
                prune: Instant::now(),
                outbox: Instant::now() - Duration::from_secs(3600),
            }),
            pending,
            dead,
            retention: cfg.store.retention,
            stop,
            tasks,
            addr,
            queued,
        })
    }

    /// A reading reached the pipeline.
    pub fn reading(&self, r: &Reading) {
        self.readings.inc();
        self.state
            .board
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reading(r);
    }

    /// Readings processed so far, counted elsewhere (a central instance's partitions).
    pub fn readings_to(&self, total: u64) {
        self.readings
            .inc_by(total.saturating_sub(self.readings.get()));
    }

    /// Registers more metrics on `/metrics` (a central instance's Kafka counts).
    pub fn register<T>(
        &self,
        f: impl FnOnce(&mut prometheus_client::registry::Registry) -> T,
    ) -> T {
        f(&mut self
            .state
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The pipeline's counters so far (they only grow).
    pub fn pipeline(&self, stats: &crate::pipeline::PipelineStats) {
        if let Some(ms) = stats.reorder_wait_ms {
            self.reorder_wait.set(ms as f64 / 1000.0);
        }
        // Called per batch: the per-device counts change only when the totals do.
        if self.late.get() == stats.late && self.ahead.get() == stats.ahead {
            return;
        }
        for (counter, now) in [(&self.late, stats.late), (&self.ahead, stats.ahead)] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        for (source, t) in &stats.by_device {
            let label = SourceLabel {
                source: source.clone(),
            };
            for (family, now) in [
                (&self.late_by_device, t.late),
                (&self.ahead_by_device, t.ahead),
            ] {
                let counter = family.get_or_create(&label);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
    }

    /// The exceptions analysts taught (from the store, then live from the API): the
    /// pipeline applies this shared set.
    pub fn exceptions(&self) -> Exceptions {
        self.state.exceptions.clone()
    }

    /// Stores an output, then streams it. An error means it was not stored.
    pub fn output(&self, o: &Output) -> Result<(), SinkError> {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        match o {
            Output::Alert(a) => {
                let mut wanted = Vec::new();
                for r in &self.receivers {
                    if r.wants(a) || (r.follows() && store.was_queued(&a.id, &r.name)?) {
                        wanted.push(r.name.as_str());
                    }
                }
                for r in &self.syslog {
                    if r.wants(a) || (r.follows() && store.was_queued(&a.id, &r.name)?) {
                        wanted.push(r.name.as_str());
                    }
                }
                store.put_alert(a, &wanted)?;
                drop(store);
                if !wanted.is_empty() {
                    // A permit each: a worker busy sending looks again at once.
                    self.queued.iter().for_each(|q| q.notify_one());
                }
                self.alerts
                    .get_or_create(&SeverityLabel {
                        severity: format!("{:?}", a.severity).to_lowercase(),
                    })
                    .inc();
                self.state
                    .board
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .alert(a);
                if let Ok(text) = serde_json::to_string(a) {
                    self.state.publish("alert", text);
                }
            }
            Output::Incident(i) => {
                store.put_incident(i)?;
                drop(store);
                if let Ok(text) = serde_json::to_string(i) {
                    self.state.publish("incident", text);
                }
            }
        }
        Ok(())
    }

    /// Periodic work: device updates on the stream (at most once a second), score
    /// gauges, retention.
    pub fn tick(&self, now: crate::model::Ts) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.devices.elapsed() >= Duration::from_secs(1) {
            last.devices = Instant::now();
            let mut board = self
                .state
                .board
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = board.take_dirty();
            // A device's score and online state change only with it (they mark it).
            for d in &changed {
                let labels = DeviceLabels {
                    site: d.site.clone(),
                    device: d.device.clone(),
                    kind: d.kind.clone(),
                };
                self.online.get_or_create(&labels).set(i64::from(d.online));
                self.scores.get_or_create(&labels).set(d.score);
            }
            let text = if changed.is_empty() {
                None
            } else {
                serde_json::to_string(&changed).ok()
            };
            drop(board);
            if let Some(text) = text {
                self.state.publish("devices", text);
            }
        }
        if last.outbox.elapsed() >= Duration::from_secs(10) {
            last.outbox = Instant::now();
            let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            match store.outbox_counts() {
                Ok(counts) => {
                    // A receiver with nothing unsent is not in the counts: it reads 0.
                    let names = self.receivers.iter().map(|r| &r.name);
                    for name in names.chain(self.syslog.iter().map(|s| &s.name)) {
                        let (pending, dead) = counts
                            .iter()
                            .find(|(r, _, _)| r == name)
                            .map_or((0, 0), |&(_, p, d)| (p, d));
                        let label = ReceiverLabel {
                            receiver: name.clone(),
                        };
                        self.pending.get_or_create(&label).set(pending as i64);
                        self.dead.get_or_create(&label).set(dead as i64);
                    }
                }
                Err(e) => warn!(error = %e, "cannot count the outbox"),
            }
        }
        if last.prune.elapsed() >= Duration::from_secs(3600) {
            last.prune = Instant::now();
            let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            match store.prune(now - self.retention) {
                Ok(n) if n > 0 => info!(rows = n, "retention: pruned"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention failed"),
            }
        }
    }

    /// Stops the server and the webhook worker.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
