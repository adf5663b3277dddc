//! What every polled protocol shares: the per-device schedule, reconnect backoff,
//! rate-limited words about failing devices, and the counters.
//!
//! - Each device polls on its own task, on its own schedule (`interval` of event time).
//!   A semaphore bounds how many devices are mid-cycle at once; a slow device only
//!   holds its own permit.
//! - After a timeout or a transport error the link is dropped — a late reply would
//!   otherwise be taken for the next request's — and re-opened with exponential backoff
//!   and jitter. The backoff grows with every failure, a refused connection or a cycle
//!   that lost its link alike (a device that accepts and then misbehaves is not
//!   re-dialled every cycle), and resets only after a cycle that kept its link; the
//!   first failure after a good cycle retries at the next cycle. Failures are logged at
//!   warn with their reason when the reason changes and at most once a minute otherwise
//!   (with how many were not logged); the first good cycle after them at info.

use crate::model::Reading;
use crate::time::Clock;
use crate::tomlfile::{check, TomlError};
use rand::Rng;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

/// Counters of one device's poller.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Responses with data.
    pub responses: AtomicU64,
    /// Exception or error responses (Modbus exceptions, SNMP error status, BACnet
    /// errors, rejects and aborts).
    pub exceptions: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Transport failures (reset, refused, protocol errors).
    pub transport_errors: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// Readings reported good.
    pub good: AtomicU64,
    /// Readings reported bad (exception or "not available").
    pub bad: AtomicU64,
    /// Cycles started late because the previous one overran the interval.
    pub overruns: AtomicU64,
    /// Readings pushed by the device between polls (BACnet COV notifications).
    pub notifications: AtomicU64,
}

/// A snapshot of [`DeviceStats`], for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct DeviceCounts {
    pub device: String,
    pub requests: u64,
    pub responses: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub transport_errors: u64,
    pub connects: u64,
    pub good: u64,
    pub bad: u64,
    pub overruns: u64,
    pub notifications: u64,
}

impl DeviceStats {
    /// The counters now.
    pub fn snapshot(&self, device: &str) -> DeviceCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeviceCounts {
            device: device.to_owned(),
            requests: g(&self.requests),
            responses: g(&self.responses),
            exceptions: g(&self.exceptions),
            timeouts: g(&self.timeouts),
            transport_errors: g(&self.transport_errors),
            connects: g(&self.connects),
            good: g(&self.good),
            bad: g(&self.bad),
            overruns: g(&self.overruns),
            notifications: g(&self.notifications),
        }
    }
}

/// A polled protocol's section schedule, as written (`[modbus]`, `[snmp]`).
pub(crate) struct Schedule {
    pub interval: i64,
    pub timeout: i64,
    pub concurrency: usize,
    pub backoff_min: i64,
    pub backoff_max: i64,
}

impl Schedule {
    /// Checks the section's values, naming `section.key` in errors.
    pub(crate) fn check(&self, origin: &str, section: &str) -> Result<(), TomlError> {
        let key = |k: &str| format!("{section}.{k}");
        check(
            origin,
            &key("interval"),
            self.interval >= 1,
            "must be at least 1ms",
        )?;
        check(
            origin,
            &key("timeout"),
            self.timeout >= 1,
            "must be at least 1ms",
        )?;
        check(
            origin,
            &key("concurrency"),
            self.concurrency >= 1,
            "must be at least 1",
        )?;
        check(
            origin,
            &key("backoff_min"),
            self.backoff_min >= 1 && self.backoff_min <= self.backoff_max,
            "must be at least 1ms and at most backoff_max",
        )
    }

    /// Checks one device's name (unique within its site) and its own interval and
    /// timeout (`None`: the section's); returns them.
    pub(crate) fn device(
        &self,
        origin: &str,
        key: &dyn Fn(&str) -> String,
        seen: &mut std::collections::BTreeSet<(String, String)>,
        (site, name): (&str, &str),
        (interval, timeout): (Option<i64>, Option<i64>),
    ) -> Result<(i64, i64), TomlError> {
        check(origin, &key("name"), !name.is_empty(), "must not be empty")?;
        check(
            origin,
            &key("name"),
            seen.insert((site.to_owned(), name.to_owned())),
            "is used twice in one site",
        )?;
        let interval = interval.unwrap_or(self.interval);
        let timeout = timeout.unwrap_or(self.timeout);
        check(
            origin,
            &key("interval"),
            interval >= 1,
            "must be at least 1ms",
        )?;
        check(
            origin,
            &key("timeout"),
            timeout >= 1,
            "must be at least 1ms",
        )?;
        Ok((interval, timeout))
    }
}

/// `host` alone means `host:port`.
pub(crate) fn with_port(address: &str, port: u16) -> String {
    match address.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => address.to_owned(),
        _ => format!("{address}:{port}"),
    }
}

pub(crate) fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Settings shared by every device task.
#[derive(Debug, Clone, Copy)]
pub struct PollSettings {
    /// Event time.
    pub clock: Clock,
    /// First reconnect delay (wall ms).
    pub backoff_min: i64,
    /// Longest reconnect delay (wall ms).
    pub backoff_max: i64,
}

/// Why a device could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, timed out).
    Connect(String),
    /// The connection broke or returned bytes that are not Modbus.
    Transport(String),
    /// No answer within the request timeout.
    Timeout(i64),
}

impl Failure {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Transport(_) => "transport",
            Failure::Timeout(_) => "timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Transport(e) => write!(f, "transport error: {e}"),
            Failure::Timeout(ms) => write!(f, "no answer within {ms}ms"),
        }
    }
}

/// Where a poll cycle's readings go. Each request's readings are sent the moment its
/// answer is decoded ([`Answers::flush`]), not when the cycle ends: they are stamped
/// when their answer arrived, and a later request that times out would otherwise hold
/// them back by the timeout, late to a pipeline that learned a shorter reorder wait.
#[derive(Debug)]
pub struct Answers {
    tx: Option<mpsc::Sender<Vec<Reading>>>,
    batch: Vec<Reading>,
    sent: usize,
    closed: bool,
}

impl Answers {
    /// Sends each flushed batch on `tx`.
    pub fn sending(tx: mpsc::Sender<Vec<Reading>>) -> Self {
        Self {
            tx: Some(tx),
            batch: Vec::new(),
            sent: 0,
            closed: false,
        }
    }

    /// Keeps every reading (benches and tests that run a cycle by hand).
    pub fn kept() -> Self {
        Self {
            tx: None,
            batch: Vec::new(),
            sent: 0,
            closed: false,
        }
    }

    /// The readings of the answer being decoded.
    pub fn batch(&mut self) -> &mut Vec<Reading> {
        &mut self.batch
    }

    /// Sends what was decoded since the last flush.
    pub async fn flush(&mut self) {
        let Some(tx) = &self.tx else {
            return;
        };
        if self.batch.is_empty() || self.closed {
            return;
        }
        self.sent += self.batch.len();
        if tx.send(std::mem::take(&mut self.batch)).await.is_err() {
            self.closed = true;
        }
    }

    /// Readings flushed so far (sent, or kept).
    pub fn count(&self) -> usize {
        self.sent + self.batch.len()
    }
}

/// One device's link as the schedule sees it: open it, run a cycle, say why a cycle
/// dropped it.
pub trait Link: Send {
    /// The device's name, for logs.
    fn name(&self) -> &str;
    /// The protocol, for logs ("modbus", "snmp").
    fn protocol(&self) -> &'static str;
    /// Whether the link is open.
    fn connected(&self) -> bool;
    /// Opens the link.
    fn connect(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
    /// One poll cycle: each answer's readings, stamped when it arrived, flushed to `out`
    /// as soon as they are decoded.
    fn cycle(&mut self, out: &mut Answers) -> impl Future<Output = ()> + Send;
    /// Why the last cycle dropped the link, if it did.
    fn take_failure(&mut self) -> Option<Failure>;
}

/// Polls one device every `interval` (event-time ms) until `stop` turns true, sending
/// each answer's readings as it comes.
pub async fn poll_device<L: Link>(
    mut poller: L,
    interval: i64,
    settings: PollSettings,
    limit: Arc<Semaphore>,
    stats: Arc<DeviceStats>,
    tx: mpsc::Sender<Vec<Reading>>,
    mut stop: watch::Receiver<bool>,
) {
    let clock = settings.clock;
    let name = poller.name().to_owned();
    let protocol = poller.protocol();
    let mut backoff = settings.backoff_min;
    let mut trouble = Trouble::default();
    let mut next = clock.now();
    let mut answers = Answers::sending(tx);
    loop {
        // Wait for the next cycle (or for a reconnect delay), unless told to stop.
        let wait = clock.wall_duration(next - clock.now());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        let started = clock.now();
        next += interval;
        if next <= started {
            bump(&stats.overruns, 1);
            next = started + interval;
        }
        let failure = if poller.connected() {
            None
        } else {
            poller.connect().await.err()
        };
        let failure = match failure {
            Some(f) => Some(f),
            None => {
                {
                    let Ok(_permit) = limit.acquire().await else {
                        break;
                    };
                    poller.cycle(&mut answers).await;
                }
                answers.flush().await;
                if answers.closed {
                    return;
                }
                poller.take_failure()
            }
        };
        match failure {
            Some(f) => {
                trouble.failed(protocol, &name, f);
                // The first failure after a good cycle retries at the next cycle (one lost
                // answer on a busy link is no reason to go quiet); then exponential
                // backoff with ±25 % jitter, never sooner than the next cycle.
                if trouble.failures > 1 {
                    let jitter = rand::rng().random_range(0.75..1.25);
                    let delay = (backoff as f64 * jitter) as i64;
                    backoff = (backoff * 2).min(settings.backoff_max);
                    next = next.max(clock.now() + (delay as f64 * clock.speed) as i64);
                }
            }
            None => {
                trouble.recovered(protocol, &name);
                backoff = settings.backoff_min;
            }
        }
    }
    debug!(device = %name, "poller stopped");
}

/// Rate-limited words about a failing device.
#[derive(Debug, Default)]
struct Trouble {
    /// Failures since the last good cycle.
    failures: u64,
    /// Failures not logged since the last line.
    unlogged: u64,
    /// The kind last logged, and when.
    logged: Option<(&'static str, tokio::time::Instant)>,
}

impl Trouble {
    /// Between two lines about the same kind of failure.
    const QUIET: Duration = Duration::from_secs(60);

    fn failed(&mut self, protocol: &str, device: &str, f: Failure) {
        self.failures += 1;
        let now = tokio::time::Instant::now();
        let due = match self.logged {
            Some((kind, at)) => kind != f.kind() || now.duration_since(at) >= Self::QUIET,
            None => true,
        };
        if due {
            warn!(protocol, device, failures = self.failures, not_logged = self.unlogged, reason = %f, "device failing; backing off");
            self.logged = Some((f.kind(), now));
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
    }

    fn recovered(&mut self, protocol: &str, device: &str) {
        if self.failures > 0 {
            info!(
                protocol,
                device,
                failures = self.failures,
                "device answering again"
            );
        }
        *self = Self::default();
    }
}
