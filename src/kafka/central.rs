//! Central: the telemetry topic read in a consumer group (cooperative-sticky), one
//! pipeline per site of each owned partition (a site's readings all land in one
//! partition, so all its detector state is in one place). Event time belongs to the
//! site: sites sharing a partition each have their own present and watermark, so one
//! site streaming while the others are quiet, behind or catching up is judged as it
//! arrives, never held for theirs.
//!
//! - **Assignment**: the new owner reads the partition's committed offset and, committed
//!   with it, the offset where the last `warmup` of event time before it begins (each
//!   owner keeps that window's start as it goes, so no broker time index is needed;
//!   a broker that drops commit metadata falls back to its time index, by the wall
//!   clock); it replays from there to the committed offset with alerting muted, then
//!   goes live. A partition never committed is read from its start.
//! - **Offsets** are committed (with the event time of the record) only once the pipeline
//!   has released every reading of the record and the alerts derived from it are stored:
//!   a crash loses nothing, it replays. Alert ids are deterministic (site, device,
//!   detector, metrics, start), so an alert raised again around a takeover is the same
//!   alert to the store, the webhook outbox and the alerts topic.
//! - **Revocation** commits what is settled and drops the partition's state (open alerts
//!   are raised whole by the next owner); a graceful stop (SIGTERM) first flushes
//!   every pipeline, stores its alerts and commits, so the next owner starts where this
//!   one ended.

use super::codec;
use super::config::KafkaConfig;
use super::counts::Milestone;
use super::counts::OTHER_SITES;
pub use super::counts::{CentralCounts, PartitionCounts, Takeover};
use super::logs::{Logs, Quiet};
use super::offsets::{Arrival, Offsets};
use crate::correlate::Output;
use crate::model::event::Event;
use crate::model::Ts;
use crate::pipeline::{Pipeline, PipelineStats};
use crate::sink::{Fanout, Sink, SinkError, Stamp};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Why consuming stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CentralError {
    /// The client could not be made or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The shared state was poisoned by a panic.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Storing or writing an output failed.
    #[error("writing output: {0}")]
    Sink(#[from] SinkError),
}

/// Sites a partition keeps a pipeline each for (as many as it counts by name); the
/// records of further sites (keys, which whoever writes the topic chooses) share one
/// more. An empty pipeline is about 31 kB.
const MAX_PIPELINES: usize = super::counts::MAX_SITES;

/// A partition behind the broker's end with nothing read for this long, and nothing
/// queued in the client, is read again (`Offsets::stalled`). Twice the statistics
/// interval, so the end and the queue it is judged by were seen during the quiet.
const STALL_AFTER: Duration = Duration::from_secs(10);

/// One owned partition.
struct Owned {
    /// One per site (a record's key), in the order first read.
    sites: Vec<Site>,
    /// Each site's index in `sites`.
    slots: BTreeMap<String, u32>,
    /// Points and devices the pipelines registered between them.
    registered: usize,
    /// What was read, what may be committed, where a warm-up starts.
    offsets: Offsets,
    /// When (wall clock) the broker last said the partition was read to its end.
    end_seen: Option<std::time::Instant>,
    /// When (wall clock) a record of it last came, or it was last read again.
    heard: std::time::Instant,
    /// The partition's end and the records of it queued in the client, at librdkafka's
    /// last statistics while it was fetching.
    client: Option<(i64, i64)>,
    /// When it was assigned (takeovers are timed from here).
    assigned_at: std::time::Instant,
}

/// A record's events, and its bad lines (line, why, detail).
type Decoded = (Vec<Event>, Vec<(usize, crate::source::BadReason, String)>);

/// One site of an owned partition.
struct Site {
    name: String,
    pipeline: Pipeline,
    /// The newest event time read here (warm-up included; `Ts::MIN`: none yet).
    newest: Ts,
    /// When (wall clock) the broker last handed over one of its records.
    heard: std::time::Instant,
    /// Since when (wall clock) the others' event time has been ahead of this site's,
    /// with nothing read of it since.
    behind: Option<std::time::Instant>,
    /// Judged silent since its last record read (logged once per silence).
    silent: bool,
}

impl Owned {
    fn new(live_from: i64) -> Self {
        Self {
            sites: Vec::new(),
            slots: BTreeMap::new(),
            registered: 0,
            offsets: Offsets::new(live_from),
            end_seen: None,
            heard: std::time::Instant::now(),
            client: None,
            assigned_at: std::time::Instant::now(),
        }
    }

    /// The index of `site`'s pipeline, opened with `new_pipeline` on its first record.
    fn slot(&mut self, partition: i32, site: &str, new_pipeline: &dyn Fn() -> Pipeline) -> u32 {
        if let Some(&i) = self.slots.get(site) {
            return i;
        }
        let name = if self.sites.len() < MAX_PIPELINES {
            site
        } else {
            if let Some(&i) = self.slots.get(OTHER_SITES) {
                return i;
            }
            tracing::warn!(partition, site, limit = MAX_PIPELINES, "more sites on the partition than pipelines kept: this one and any further share one");
            OTHER_SITES
        };
        let i = self.sites.len() as u32;
        self.sites.push(Site {
            name: name.to_owned(),
            pipeline: new_pipeline(),
            newest: Ts::MIN,
            heard: std::time::Instant::now(),
            behind: None,
            silent: false,
        });
        self.slots.insert(name.to_owned(), i);
        i
    }

    /// Decodes a record of the site at `slot` into its pipeline's names; the partition's
    /// pipelines register at most `max_points` points and devices between them (more
    /// are bad lines, as past one pipeline's bound).
    fn decode(&mut self, slot: u32, record: &[u8], max_points: usize) -> Decoded {
        let registry = &mut self.sites[slot as usize].pipeline.registry;
        let before = registry.size();
        registry.allow(max_points.saturating_sub(self.registered));
        let decoded = codec::decode(record, registry);
        self.registered += registry.size() - before;
        decoded
    }

    /// The pipelines' counters, summed.
    fn stats(&self, into: &mut PipelineStats) {
        for site in &self.sites {
            into.add(site.pipeline.stats());
        }
    }
}

/// What a central instance judges with, besides the broker.
pub struct Central {
    /// Broker, topics and group.
    pub kafka: KafkaConfig,
    /// The pipelines' reorder tolerance (a silent site is moved on by it).
    pub reorder_tolerance: Ts,
    /// Whether live sites' pipelines raise early alerts (`pipeline.early_alerts`).
    pub early_alerts: bool,
    /// Points and devices a partition's pipelines may register between them (forged
    /// site keys must not multiply the one pipeline's bound).
    pub max_points: usize,
    /// A fresh pipeline, for each site first heard of on an owned partition.
    pub new_pipeline: Box<dyn Fn() -> Pipeline + Send + Sync>,
}

/// State the rebalance callback and the loop share (both run in the loop's task).
struct Shared {
    cfg: Central,
    partitions: BTreeMap<i32, Owned>,
    counts: CentralCounts,
    /// The newest event time read live on any partition: the clock silent sites are
    /// judged by.
    front: Ts,
    /// The counters of the pipelines of partitions no longer held.
    stats: PipelineStats,
}

struct Context {
    shared: Arc<Mutex<Shared>>,
    topic: String,
    logs: Logs,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }

    /// Each held partition's lag: the end of the partition the client last heard of,
    /// less the position of this instance.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        let Shared {
            partitions, counts, ..
        } = &mut *s;
        for (p, owned) in partitions.iter_mut() {
            let (Some(stat), Some(at)) = (topic.partitions.get(p), owned.offsets.position()) else {
                continue;
            };
            if stat.hi_offset >= 0 {
                counts.lag(*p, stat.hi_offset - at);
            }
            // What a consumer may be served: up to the last stable offset where the
            // broker reports one (records of open transactions wait), else the end.
            let servable = if stat.ls_offset >= 0 {
                stat.ls_offset
            } else {
                stat.hi_offset
            };
            owned.client = (stat.fetch_state == "active" && servable >= 0)
                .then_some((servable, stat.fetchq_cnt));
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.starting_points(consumer, tpl);
                tracing::debug!(?tpl, "assigning");
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Hand over where this owner stands: commit what is settled (its alerts
                // are stored), so the next owner judges live only the rest. What is
                // still open in the pipeline is dropped, not flushed: a flush would
                // close an alert early; the next owner, warmed up on the same readings,
                // raises it whole under the same id.
                let mut revoked = Vec::new();
                if let Ok(mut s) = self.shared.lock() {
                    for e in tpl.elements() {
                        if let Some(owned) = s.partitions.remove(&e.partition()) {
                            owned.stats(&mut s.stats);
                            revoked.push((e.partition(), owned));
                        }
                        s.counts.revoke(e.partition());
                        tracing::info!(partition = e.partition(), "partition revoked");
                    }
                }
                let last = committable(revoked.iter_mut().map(|(p, o)| (&*p, o)), &self.topic);
                if last.count() > 0 {
                    if let Err(e) = consumer.commit(&last, CommitMode::Sync) {
                        if let Ok(mut s) = self.shared.lock() {
                            s.counts.commit_errors += 1;
                        }
                        tracing::warn!(error = %e, "committing revoked partitions failed; the next owner replays from the previous commit");
                    }
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the assignment failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => self.acknowledged(offsets),
            Err(e) => {
                if let Ok(mut s) = self.shared.lock() {
                    s.counts.commit_errors += 1;
                }
                tracing::debug!(error = %e, "offset commit failed; sent again at the next tick");
            }
        }
    }
}

impl Context {
    /// Records what the coordinator acknowledged.
    fn acknowledged(&self, offsets: &TopicPartitionList) {
        if let Ok(mut s) = self.shared.lock() {
            for e in offsets.elements() {
                if let (Offset::Offset(o), Some(owned)) =
                    (e.offset(), s.partitions.get_mut(&e.partition()))
                {
                    owned.offsets.acknowledged(o);
                }
            }
        }
    }

    /// Sets each newly assigned partition's starting offset: `warmup` of event time
    /// before its committed offset (or its start), and opens its pipeline.
    fn starting_points(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let wait = Duration::from_secs(10);
        let committed = consumer.committed_offsets(tpl.clone(), wait);
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        let mut plan = BTreeMap::new();
        for e in tpl.elements() {
            let p = e.partition();
            let (offset, meta) = committed
                .as_ref()
                .ok()
                .and_then(|c| c.find_partition(&self.topic, p))
                .map(|c| (c.offset(), c.metadata().to_owned()))
                .unwrap_or((Offset::Invalid, String::new()));
            // The metadata is "<event time> <offset where the warm-up window before it
            // starts>", written by the previous owner: exact in event time, and needs no
            // time index on the broker.
            let warm_from = meta
                .split_once(' ')
                .and_then(|(_, w)| w.parse::<i64>().ok());
            plan.insert(p, (offset, warm_from, meta));
        }
        // A broker that does not keep commit metadata (tansu 0.6): the warm-up window
        // from the broker's time index, by the wall clock (exact when telemetry is
        // forwarded as it is read).
        let unknown: Vec<i32> = plan
            .iter()
            .filter(|(_, (o, w, _))| matches!(o, Offset::Offset(_)) && w.is_none())
            .map(|(&p, _)| p)
            .collect();
        let since = chrono::Utc::now().timestamp_millis() - s.cfg.kafka.warmup;
        for (p, o) in by_time(consumer, &self.topic, &unknown, since) {
            if let Some(entry) = plan.get_mut(&p) {
                entry.1 = Some(o);
            }
        }
        let wall = chrono::Utc::now().timestamp_millis();
        for (p, (offset, warm_from, meta)) in plan {
            let (live_from, start) = match (offset, warm_from) {
                (Offset::Offset(c), Some(w)) => (c, Offset::Offset(w.clamp(0, c))),
                (Offset::Offset(c), None) => {
                    // Neither the commit nor the broker says where the warm-up starts.
                    tracing::warn!(partition = p, offset = c, "no warm-up start known: the partition goes live cold at its committed offset");
                    (c, Offset::Offset(c))
                }
                _ => (0, Offset::Beginning),
            };
            let cold = matches!((offset, warm_from), (Offset::Offset(_), None));
            if let Err(e) = tpl.set_partition_offset(&self.topic, p, start) {
                tracing::error!(partition = p, error = %e, "cannot set the starting offset");
            }
            tracing::info!(partition = p, live_from, start = ?start, committed_meta = %meta, "partition assigned");
            s.partitions.insert(p, Owned::new(live_from));
            s.counts.assign(p, wall, live_from, cold);
        }
    }
}

/// The first offset of each partition at or after event time `since` by the broker's
/// time index (`ListOffsets`); a partition with nothing that new starts at its end.
/// Partitions the broker cannot answer for are left out (they start cold, logged).
fn by_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    since: Ts,
) -> BTreeMap<i32, i64> {
    if partitions.is_empty() {
        return BTreeMap::new();
    }
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(since));
    }
    let found = match consumer.offsets_for_times(tpl, Duration::from_secs(10)) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "no time index: new partitions start cold");
            return BTreeMap::new();
        }
    };
    let ends = |p: i32| {
        consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map(|(_, high)| high)
    };
    found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            Offset::End => ends(e.partition()).ok().map(|h| (e.partition(), h)),
            other => {
                tracing::warn!(partition = e.partition(), offset = ?other, "no time index for the partition: it starts cold");
                None
            }
        })
        .collect()
}

/// Consumes until `shutdown`, handing every live output to `sink` (which stores it
/// first) and, if asked, the counts so far to `observe` every half second (for
/// `/metrics`; without an observer no snapshot is taken).
/// Returns the counts and the pipelines' counters summed over every partition held
/// (warm-up included).
pub async fn consume(
    cfg: Central,
    sink: &mut dyn Sink,
    mut observe: Option<&mut Observer<'_>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(CentralCounts, PipelineStats), CentralError> {
    let k: KafkaConfig = cfg.kafka.clone();
    let k = &k;
    let tolerance = cfg.reorder_tolerance;
    let k_early = cfg.early_alerts;
    let shared = Arc::new(Mutex::new(Shared {
        cfg,
        partitions: BTreeMap::new(),
        counts: CentralCounts::default(),
        front: Ts::MIN,
        stats: PipelineStats::default(),
    }));
    let session = k.session_timeout.to_string();
    // Ten heartbeats per session: one lost or late heartbeat never costs the partitions.
    let heartbeat_every = (k.session_timeout / 10).max(100).to_string();
    let consumer: StreamConsumer<Context> = k
        .client_config(&[
            ("group.id", &k.group),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", &session),
            ("heartbeat.interval.ms", &heartbeat_every),
            // A broker that holds a fetch for its whole wait when records arrive
            // meanwhile (librdkafka's mock cluster, tansu) adds all of it to every
            // alert: 100 ms here measured 101 ms produce → alert, 10 ms 25–31 ms. Apache
            // Kafka answers as soon as records arrive; there it only sets how often an
            // idle partition is asked again.
            ("fetch.wait.max.ms", "10"),
            // Each partition's end, for its lag (`stats` below).
            ("statistics.interval.ms", "5000"),
            // Reaching a partition's end is what tells a silent site from a slow one.
            ("enable.partition.eof", "true"),
        ])
        .create_with_context(Context {
            shared: Arc::clone(&shared),
            topic: k.telemetry_topic.clone(),
            logs: Logs::default(),
        })?;
    consumer.subscribe(&[&k.telemetry_topic])?;
    let alerts = if k.alerts_topic.is_empty() {
        None
    } else {
        // Alerts are few and each is wanted now: no linger to batch them (librdkafka
        // waits 5 ms by default).
        let p: ThreadedProducer<Quiet> = k
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "0"),
            ])
            .create_with_context(Quiet::default())?;
        Some(p)
    };
    // Test mode; every line is flushed whole as it is written.
    let mut audit = match &k.audit {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    let mut commit_tick = tokio::time::interval(Duration::from_millis(500));
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    // A partition with nothing to read for this long is a silent site, not a slow one.
    let silence = k
        .silence_ms(tolerance)
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    tokio::pin!(shutdown);
    let mut out = Vec::new();
    let mut stamp = Stamp::wall();
    loop {
        tokio::select! {
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some(owned) = shared.lock().map_err(|_| std::io::Error::other("state poisoned"))?.partitions.get_mut(&p) {
                            owned.end_seen = Some(std::time::Instant::now());
                        }
                        continue;
                    }
                    Err(e) => {
                        // Brokers down, say: librdkafka reconnects by itself; wait a
                        // little rather than spin and flood the log.
                        if let Some(held_back) = consumer.context().logs.admit_now(&e.to_string()) {
                            tracing::warn!(error = %e, held_back, "consuming");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let (p, o) = (m.partition(), m.offset());
                let mut s = shared.lock().map_err(|_| std::io::Error::other("state poisoned"))?;
                let Shared { cfg, partitions, counts, front, .. } = &mut *s;
                let Some(owned) = partitions.get_mut(&p) else {
                    continue;
                };
                owned.heard = std::time::Instant::now();
                let site_name = site_of(m.key());
                let slot = owned.slot(p, site_name, &cfg.new_pipeline);
                // Whatever the broker hands over of a site, even a record read before or
                // one past a gap, shows it has more to read: it is not silent.
                let site = &mut owned.sites[slot as usize];
                site.heard = std::time::Instant::now();
                site.behind = None;
                // Offsets skipped: not on a plain telemetry topic, but tansu 0.6 does
                // under load, and answers a fetch from the first missing offset with the
                // batch after the gap. Read again from further back; a gap still there
                // is real (retention, compaction).
                match owned.offsets.arrive(o) {
                    Arrival::Next => {}
                    Arrival::Seen => continue,
                    Arrival::Reread { expected, from, tries } => {
                        counts.gaps_reread += 1;
                        tracing::warn!(partition = p, expected, got = o, tries, "offsets skipped: reading them again");
                        drop(s);
                        if let Err(e) = consumer.seek(&k.telemetry_topic, p, Offset::Offset(from), Duration::from_secs(5)) {
                            tracing::warn!(partition = p, error = %e, "seeking back failed; the gap stays");
                        }
                        continue;
                    }
                    Arrival::Gap { from, to } => {
                        counts.gaps += 1;
                        tracing::warn!(partition = p, from, to, "a gap in offsets stays: taken as real (retention, compaction)");
                    }
                }
                let (events, bad) = owned.decode(slot, m.payload().unwrap_or_default(), cfg.max_points);
                let site = &mut owned.sites[slot as usize];
                if std::mem::take(&mut site.silent) {
                    tracing::info!(partition = p, site = %site.name, offset = o, "site heard again after a silence");
                }
                for (line, reason, detail) in &bad {
                    tracing::warn!(partition = p, offset = o, line, reason = reason.as_str(), detail, "bad telemetry line");
                }
                counts.bad_lines += bad.len() as u64;
                let newest = events.iter().map(|e| e.ts()).max().unwrap_or(Ts::MIN);
                let readings = events.iter().filter(|e| matches!(e, Event::Sample { .. })).count() as u64;
                for e in events {
                    site.pipeline.push(e, &mut out);
                }
                // Its pipeline holds warm-up records too: they date the site.
                site.newest = site.newest.max(newest);
                let live = owned.offsets.read(o, newest, k.warmup, slot);
                let since = owned.assigned_at.elapsed();
                match counts.record(p, site_name, readings, live, since) {
                    Milestone::None => {}
                    Milestone::AtWork => tracing::info!(partition = p, offset = o, after_ms = since.as_millis() as u64, "partition at work: warming up"),
                    Milestone::Live | Milestone::AtWorkLive => tracing::info!(
                        partition = p,
                        offset = o,
                        after_ms = since.as_millis() as u64,
                        warmup_records = counts.partitions.get(&p).and_then(|c| c.takeovers.back()).map_or(0, |t| t.warmup_records),
                        "partition live"
                    ),
                }
                if !live {
                    out.clear();
                    if let Some(a) = audit.as_mut() {
                        writeln!(a, "{p} {o} muted")?;
                        a.flush()?;
                    }
                    continue;
                }
                if k_early {
                    // From its first live record: early alerts of a muted warm-up
                    // would be withdrawn or confirmed where no one saw them raised.
                    site.pipeline.raise_on_arrival();
                }
                *front = (*front).max(newest);
                if let Some(a) = audit.as_mut() {
                    // Test mode: a line per record, whole, before anything derived
                    // from the record is committed.
                    writeln!(a, "{p} {o}")?;
                    a.flush()?;
                }
                settle(owned);
                drop(s);
                deliver(&mut out, &mut stamp, sink, alerts.as_ref(), &k.alerts_topic)?;
            }
            _ = heartbeat.tick(), if silence.is_some() => {
                let silence = silence.unwrap_or(Duration::MAX);
                let mut s = shared.lock().map_err(|_| std::io::Error::other("state poisoned"))?;
                let Shared { partitions, counts, front, .. } = &mut *s;
                // Never ahead of the wall clock: one site's clock running fast must not
                // make the others' readings late.
                let wall = chrono::Utc::now().timestamp_millis();
                let now = (*front).min(wall);
                for (&p, owned) in partitions.iter_mut() {
                    let live = owned.offsets.live();
                    for site in &mut owned.sites {
                        let released = site.pipeline.released();
                        if now > released.saturating_add(tolerance) {
                            site.behind.get_or_insert_with(std::time::Instant::now);
                        } else {
                            site.behind = None;
                        }
                        let standing = Standing {
                            live,
                            // Read to the partition's end since the site's last record.
                            at_end: owned.end_seen.is_some_and(|e| e >= site.heard),
                            heard: site.heard.elapsed(),
                            behind: site.behind.map(|t| t.elapsed()),
                            newest: site.newest,
                            released,
                        };
                        let Some(to) = standing.silent_until(*front, wall, silence) else {
                            continue;
                        };
                        if !std::mem::replace(&mut site.silent, true) {
                            tracing::info!(
                                partition = p,
                                site = %site.name,
                                newest = %crate::time::format_ts(site.newest),
                                judged_to = %crate::time::format_ts(to),
                                "site silent: judged on the others' event time"
                            );
                        }
                        site.pipeline.advance_to(to, &mut out);
                        counts.heartbeats += 1;
                    }
                }
                drop(s);
                deliver(&mut out, &mut stamp, sink, alerts.as_ref(), &k.alerts_topic)?;
            }
            _ = commit_tick.tick() => {
                commit(&consumer, &shared, &k.telemetry_topic, CommitMode::Async);
                for (p, from) in stalled(&shared, std::time::Instant::now())? {
                    if let Err(e) = consumer.seek(&k.telemetry_topic, p, Offset::Offset(from), Duration::from_secs(5)) {
                        tracing::warn!(partition = p, error = %e, "seeking back failed; tried again later");
                    }
                }
                if let Some(observe) = observe.as_mut() {
                    let (counts, stats) = snapshot(&shared);
                    observe(&counts, &stats);
                }
            }
            () = &mut shutdown => break,
        }
    }
    // A graceful stop: flush every pipeline, store what it concludes, commit all.
    {
        let mut s = shared
            .lock()
            .map_err(|_| std::io::Error::other("state poisoned"))?;
        for owned in s.partitions.values_mut() {
            for site in &mut owned.sites {
                site.pipeline.finish(&mut out);
            }
            owned.offsets.settle_all();
        }
    }
    deliver(&mut out, &mut stamp, sink, alerts.as_ref(), &k.alerts_topic)?;
    commit(&consumer, &shared, &k.telemetry_topic, CommitMode::Sync);
    if let Some(p) = &alerts {
        let _ = rdkafka::producer::Producer::flush(p, Duration::from_secs(10));
    }
    consumer.unsubscribe();
    // Leaving the group revokes what is still held, in the rebalance callback, which
    // runs as the consumer closes: counted before the counts are read.
    drop(consumer);
    let (counts, stats) = snapshot(&shared);
    if let Some(observe) = observe {
        observe(&counts, &stats);
    }
    Ok((counts, stats))
}

/// Partitions the broker has stopped serving (`Offsets::stalled`), and where each is read
/// again from, at `now`: counted, logged, and not looked at again for `STALL_AFTER`.
fn stalled(
    shared: &Mutex<Shared>,
    now: std::time::Instant,
) -> Result<Vec<(i32, i64)>, CentralError> {
    let mut s = shared
        .lock()
        .map_err(|_| std::io::Error::other("state poisoned"))?;
    let Shared {
        partitions, counts, ..
    } = &mut *s;
    let mut again = Vec::new();
    for (&p, owned) in partitions.iter_mut() {
        if now.saturating_duration_since(owned.heard) < STALL_AFTER {
            continue;
        }
        let Some((end, queued)) = owned.client else {
            continue;
        };
        let Some(from) = owned.offsets.stalled(end, queued) else {
            continue;
        };
        owned.heard = now;
        counts.stalls_reread += 1;
        tracing::warn!(
            partition = p,
            position = owned.offsets.position(),
            end,
            from,
            "nothing served below the partition's end: reading it again"
        );
        again.push((p, from));
    }
    Ok(again)
}

/// The counts and the pipelines' counters summed over every partition held.
fn snapshot(shared: &Mutex<Shared>) -> (CentralCounts, PipelineStats) {
    shared
        .lock()
        .map(|s| {
            let mut stats = s.stats.clone();
            for owned in s.partitions.values() {
                owned.stats(&mut stats);
            }
            (s.counts.clone(), stats)
        })
        .unwrap_or_default()
}

/// The site a record is counted under: its key, as the edge writes it. A key that is
/// not a short printable name (another producer, or forged) is counted apart.
fn site_of(key: Option<&[u8]>) -> &str {
    match key.map(std::str::from_utf8) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= 128 && !k.chars().any(char::is_control) => k,
        Some(_) => "(unreadable key)",
        None => "(no key)",
    }
}

/// Called with the counts so far (for `/metrics`).
pub type Observer<'a> = dyn FnMut(&CentralCounts, &PipelineStats) + 'a;

/// Where a site stands when the heartbeat looks at it.
#[derive(Debug, Clone, Copy)]
struct Standing {
    /// Past its warm-up: judged live.
    live: bool,
    /// Its partition read to its end (the broker said so) since its last record.
    at_end: bool,
    /// Wall-clock time since the broker last handed over one of its records.
    heard: Duration,
    /// Wall-clock time the others' event time has been ahead of it by more than the
    /// reorder tolerance (none: it is not).
    behind: Option<Duration>,
    /// The newest event time read here (`Ts::MIN`: none yet).
    newest: Ts,
    /// Its pipeline's watermark.
    released: Ts,
}

impl Standing {
    /// The event time to move a silent site's pipeline on to, or `None` when it is not
    /// silent: live, read to its end, quiet and left behind for `silence` (so a
    /// burst that reached another partition first is not mistaken for silence). The
    /// others' event time `front` is the clock, but never ahead of the wall clock, and
    /// never further past the partition's own newest reading than the wall-clock time
    /// it has been quiet: when the others race through a backlog, a site that has been
    /// quiet for ten seconds is judged on ten seconds of silence, not on the minutes of
    /// event time the others covered meanwhile.
    fn silent_until(&self, front: Ts, wall: Ts, silence: Duration) -> Option<Ts> {
        // A site that never dated a record has no time to judge a silence from.
        let silent = self.live
            && self.newest != Ts::MIN
            && self.at_end
            && self.heard >= silence
            && self.behind.is_some_and(|b| b >= silence);
        if !silent {
            return None;
        }
        let quiet_ms = i64::try_from(self.heard.as_millis()).unwrap_or(i64::MAX);
        let to = front.min(wall).min(self.newest.saturating_add(quiet_ms));
        (to > self.released).then_some(to)
    }
}

/// Moves a partition's commit point past every record its site's pipeline has fully
/// released.
fn settle(owned: &mut Owned) {
    let sites = &owned.sites;
    owned.offsets.settle(|i| {
        sites
            .get(i as usize)
            .map_or(Ts::MAX, |s| s.pipeline.released())
    });
}

/// The settled offsets of `partitions` not yet acknowledged, each with "<event time>
/// <warm-up window start offset>" as metadata.
fn committable<'a>(
    partitions: impl Iterator<Item = (&'a i32, &'a mut Owned)>,
    topic: &str,
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (&p, owned) in partitions {
        settle(owned);
        if let Some((o, meta)) = owned.offsets.committable() {
            if tpl
                .add_partition_offset(topic, p, Offset::Offset(o))
                .is_ok()
            {
                if let Some(mut e) = tpl.find_partition(topic, p) {
                    e.set_metadata(meta);
                }
            }
        }
    }
    tpl
}

/// Commits each owned partition's settled offset.
fn commit(
    consumer: &StreamConsumer<Context>,
    shared: &Mutex<Shared>,
    topic: &str,
    mode: CommitMode,
) {
    let Ok(mut s) = shared.lock() else {
        return;
    };
    let tpl = committable(s.partitions.iter_mut(), topic);
    if tpl.count() == 0 {
        return;
    }
    drop(s);
    match consumer.commit(&tpl, mode) {
        // A synchronous commit does not call back.
        Ok(()) if matches!(mode, CommitMode::Sync) => consumer.context().acknowledged(&tpl),
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; the next owner replays those records")
        }
    }
}

/// Hands every output to `sink` (which stores it first), then produces each alert to
/// the alerts topic, if any.
fn deliver(
    out: &mut Vec<Output>,
    stamp: &mut Stamp,
    sink: &mut dyn Sink,
    alerts: Option<&ThreadedProducer<Quiet>>,
    topic: &str,
) -> Result<(), SinkError> {
    let mut topic = AlertsTopic {
        producer: alerts,
        topic,
    };
    Fanout {
        durable: Some(sink),
        rest: &mut topic,
    }
    .deliver(stamp, out)
}

/// The alerts topic as a sink: each alert produced keyed by its id (a SIEM deduplicates
/// by key). A record the producer refuses is logged, not an error: the store has it.
struct AlertsTopic<'a> {
    producer: Option<&'a ThreadedProducer<Quiet>>,
    topic: &'a str,
}

impl Sink for AlertsTopic<'_> {
    fn put(&mut self, o: &Output) -> Result<(), SinkError> {
        let (Some(p), Output::Alert(a)) = (self.producer, o) else {
            return Ok(());
        };
        let Ok(body) = serde_json::to_vec(a) else {
            return Ok(());
        };
        if let Err((e, _)) = p.send(BaseRecord::to(self.topic).key(&a.id).payload(&body)) {
            tracing::warn!(error = %e, id = %a.id, "alert not produced");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_partition_quiet_below_its_end_with_nothing_queued_is_read_again() {
        let quiet = || {
            let mut o = Owned::new(0);
            for off in 0..=11_399 {
                o.offsets.arrive(off);
            }
            o
        };
        let now = std::time::Instant::now() + STALL_AFTER + Duration::from_secs(1);
        let mut stuck = quiet();
        stuck.client = Some((11_520, 0));
        let mut at_end = quiet();
        at_end.client = Some((11_400, 0));
        let mut queued = quiet();
        queued.client = Some((11_520, 300));
        let mut heard = quiet();
        heard.client = Some((11_520, 0));
        heard.heard = now;
        let mut no_stats = quiet();
        no_stats.client = None;
        let shared = Mutex::new(Shared {
            cfg: Central {
                kafka: KafkaConfig::default(),
                reorder_tolerance: 5_000,
                early_alerts: false,
                max_points: 1_000,
                new_pipeline: Box::new(|| crate::Config::default().build_pipeline()),
            },
            partitions: [
                (0, stuck),
                (1, at_end),
                (2, queued),
                (3, heard),
                (4, no_stats),
            ]
            .into_iter()
            .collect(),
            counts: CentralCounts::default(),
            front: Ts::MIN,
            stats: PipelineStats::default(),
        });
        assert_eq!(stalled(&shared, now).unwrap(), [(0, 1_400)]);
        assert_eq!(shared.lock().unwrap().counts.stalls_reread, 1);
        // Not asked again before another quiet of STALL_AFTER after the re-read.
        assert!(stalled(&shared, now + Duration::from_secs(1))
            .unwrap()
            .is_empty());
        // Then again, and the partition heard at `now` has been quiet as long by then.
        assert_eq!(
            stalled(&shared, now + STALL_AFTER).unwrap(),
            [(0, 1_400), (3, 1_400)]
        );
    }

    #[test]
    fn a_partition_s_sites_each_get_a_pipeline_within_one_bound() {
        let cfg = crate::Config::default();
        let new = || cfg.build_pipeline();
        let mut owned = Owned::new(0);
        let line = |site: &str, device: &str| {
            format!("{{\"ts\":\"2026-07-07T00:00:00Z\",\"site\":\"{site}\",\"device\":\"{device}\",\"kind\":\"ups\",\"metric\":\"load_pct\",\"value\":1}}\n")
        };
        let (a, b) = (owned.slot(0, "a", &new), owned.slot(0, "b", &new));
        assert_ne!(a, b);
        assert_eq!(owned.slot(0, "a", &new), a, "a site keeps its pipeline");
        // Six points and devices between them: a's two devices (4), then b's first (2);
        // b's second is refused although b's own pipeline registered little.
        let two = line("a", "ups-1") + &line("a", "ups-2");
        assert_eq!(owned.decode(a, two.as_bytes(), 6).0.len(), 2);
        assert_eq!(owned.decode(b, line("b", "ups-1").as_bytes(), 6).0.len(), 1);
        let (events, bad) = owned.decode(b, line("b", "ups-2").as_bytes(), 6);
        assert_eq!((events.len(), bad.len()), (0, 1));
        assert_eq!(owned.registered, 6);
        // Past the limit of pipelines, further sites share one.
        for i in 2..MAX_PIPELINES {
            owned.slot(0, &format!("s{i}"), &new);
        }
        let x = owned.slot(0, "x", &new);
        assert_eq!(owned.slot(0, "y", &new), x);
        assert_eq!(owned.sites[x as usize].name, OTHER_SITES);
        assert_eq!(owned.sites.len(), MAX_PIPELINES + 1);
    }

    const S: Duration = Duration::from_secs(10);

    /// A partition whose newest reading is at 1,000 s, released to 995 s, quiet and
    /// behind for `quiet`.
    fn quiet(quiet: Duration) -> Standing {
        Standing {
            live: true,
            at_end: true,
            heard: quiet,
            behind: Some(quiet),
            newest: 1_000_000,
            released: 995_000,
        }
    }

    #[test]
    fn a_site_is_silent_only_when_live_at_its_end_quiet_and_left_behind() {
        let front = 1_012_000;
        let wall = i64::MAX;
        assert_eq!(quiet(S).silent_until(front, wall, S), Some(1_010_000));
        assert_eq!(
            quiet(S / 2).silent_until(front, wall, S),
            None,
            "not quiet long enough"
        );
        let not = |f: fn(&mut Standing)| {
            let mut q = quiet(S);
            f(&mut q);
            q.silent_until(front, wall, S)
        };
        assert_eq!(not(|q| q.live = false), None, "warming up");
        assert_eq!(not(|q| q.at_end = false), None, "more to read");
        assert_eq!(not(|q| q.behind = None), None, "not left behind");
        assert_eq!(
            not(|q| q.behind = Some(S / 2)),
            None,
            "left behind only lately"
        );
        assert_eq!(
            not(|q| q.released = 1_010_000),
            None,
            "already judged that far"
        );
        assert_eq!(
            not(|q| (q.newest, q.released) = (Ts::MIN, Ts::MIN)),
            None,
            "nothing dated yet (its records were all malformed): no present to move"
        );
    }

    #[test]
    fn silence_is_judged_no_further_than_the_wall_clock_time_it_has_lasted() {
        // The others raced four minutes ahead through a backlog in ten seconds: this
        // site is judged on ten seconds of silence, not four minutes.
        assert_eq!(
            quiet(S).silent_until(1_240_000, i64::MAX, S),
            Some(1_010_000)
        );
        // Quiet for a minute, the others a little ahead: their event time is the clock.
        assert_eq!(
            quiet(Duration::from_secs(60)).silent_until(1_030_000, i64::MAX, S),
            Some(1_030_000)
        );
        // Never ahead of the wall clock.
        assert_eq!(
            quiet(Duration::from_secs(60)).silent_until(1_030_000, 1_020_000, S),
            Some(1_020_000)
        );
    }
}
