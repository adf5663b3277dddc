//! Many sites over Kafka: eight simulated sites on an eight-partition telemetry topic,
//! `wattchdog run` instances in one consumer group, and a change of owner while an attack
//! is under way: an instance killed (SIGKILL), stopped (SIGTERM), joined by a third, or
//! killed and started again. Every run uses librdkafka's in-process mock cluster; the
//! same scenarios run against tansu, a real Kafka-protocol broker, on a loopback port.
//! The new owner must take the partitions over, judge live only past the committed
//! offsets, every record must be processed (the instances' audit files), and the
//! alerts of all instances, deduplicated by id, must be exactly those one uninterrupted
//! instance raises on the same readings: none lost, none raised twice under another id.

use crate::support::{
    free_port, machine_lock, peer_available, run_ok, serve_facility, simulate, wait_for_port,
    wattchdog, Peer,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "wattchdog.telemetry.v1";
const SITES: usize = 8;

/// Records the (partition, offset) of every delivered record.
struct Delivered(Arc<Mutex<BTreeSet<(i32, i64)>>>);

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let m = r.as_ref().expect("the mock cluster takes every record");
        use rdkafka::message::Message;
        self.0.lock().unwrap().insert((m.partition(), m.offset()));
    }
}

/// The chiller readings of one simulated facility, per second, copied to `sites` sites:
/// `(event time as written, site, JSONL lines)`.
fn seconds(capture: &Path, sites: usize) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(capture).unwrap();
    let mut by_ts: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("\"chiller-")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        by_ts
            .entry(v["ts"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    let mut out = Vec::new();
    for (ts, lines) in by_ts {
        for s in 0..sites {
            let site = format!("site-{s}");
            let mut chunk = String::new();
            for l in &lines {
                let mut l = l.clone();
                l["site"] = site.clone().into();
                chunk.push_str(&l.to_string());
                chunk.push('\n');
            }
            out.push((ts.clone(), site, chunk));
        }
    }
    out
}

/// The records an instance judged live (`muted`: replayed to warm up instead).
fn audit_of(path: &Path, muted: bool) -> BTreeSet<(i32, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line still being written (the instance flushes in blocks) is not read yet.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (p, o) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            (f.next().is_some() == muted).then_some((p, o))
        })
        .collect()
}

pub(crate) fn audit(path: &Path) -> BTreeSet<(i32, i64)> {
    audit_of(path, false)
}

/// The ids of the alerts in an alert file, as a replay raises them: an early snapshot
/// (live only) counts through its confirmation, a withdrawn one not at all.
pub(crate) fn alert_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] != "incident" && v["early"] != true)
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("al-"))
        .collect()
}

/// The partitions an instance holds now, by its log.
pub(crate) fn assigned(dir: &Path, name: &str) -> BTreeSet<i32> {
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let mut held = BTreeSet::new();
    for l in log.lines() {
        let p = l
            .split_once("partition=")
            .and_then(|(_, r)| r.split(' ').next()?.parse::<i32>().ok());
        match p {
            Some(p) if l.contains("partition assigned") => held.insert(p),
            Some(p) if l.contains("partition revoked") => held.remove(&p),
            _ => false,
        };
    }
    held
}

/// `wattchdog run -c cfg` as instance `name`: its log, alerts and report in `d`.
pub(crate) fn start_instance(d: &Path, name: &str, cfg: &Path) -> Peer {
    Peer(
        wattchdog()
            .args([
                "run",
                "--log",
                "info",
                "-c",
                cfg.to_str().unwrap(),
                "--alerts",
            ])
            .arg(d.join(format!("{name}.alerts")))
            .arg("--report")
            .arg(d.join(format!("{name}.report")))
            .stderr(std::fs::File::create(d.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Stops an instance with SIGTERM; it must exit cleanly.
pub(crate) fn terminate(mut p: Peer) {
    let term = std::process::Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(p.0.wait().unwrap().success());
}

/// Waits for `ok`; on a timeout prints the logs in `dir` (instances', broker's) and fails.
pub(crate) fn wait_until(dir: &Path, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() > limit {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "== {}, {} records audited, last lines\n{}",
                        path.display(),
                        audit(&path.with_extension("audit")).len(),
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    );
                }
            }
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The broker a scenario runs against: librdkafka's in-process mock cluster (always
/// there) or tansu, a real Kafka-protocol broker, on a loopback port.
enum Broker {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Real { _process: Peer, bootstrap: String },
}

impl Broker {
    fn mock(_dir: &Path, partitions: i32) -> Option<Self> {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, partitions, 1).unwrap();
        Some(Broker::Mock(mock))
    }

    /// tansu with its in-memory storage; `None` (test skipped) when it is not installed,
    /// except under `CI=true`, where that fails.
    fn tansu(dir: &Path, partitions: i32) -> Option<Self> {
        if !peer_available(
            "tansu (cargo install tansu --features dynostore)",
            Command::new("tansu").arg("--version"),
        ) {
            return None;
        }
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        // It logs to stdout.
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let process = Peer(
            Command::new("tansu")
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn,tansu_broker::coordinator=info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_for_port(port, Duration::from_secs(30));
        let bootstrap = format!("127.0.0.1:{port}");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let created = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(admin.create_topics(
                &[NewTopic::new(TOPIC, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .unwrap();
        for r in created {
            r.unwrap_or_else(|(t, e)| panic!("creating {t} on tansu: {e}"));
        }
        Some(Broker::Real {
            _process: process,
            bootstrap,
        })
    }

    /// Whether the group survives its leader's death. tansu 0.6's coordinator does not
    /// (after the leader is gone, every join of the survivors times out), so against it
    /// the instance that stops is never the leader (the first to join).
    /// The consumers' `session_timeout`. tansu 0.6 holds each follower's JoinGroup 3 s
    /// (`PAUSE_MS`) and dates its last contact from before that pause, so a cooperative
    /// rebalance's two rounds, on a busy machine, outlast a 6 s session: the member is
    /// evicted mid-join, which starts another rebalance, and so on (seen: 21 evictions,
    /// generations 44 to 76, nothing consumed for 70 s). 20 s leaves that pause room.
    fn session_timeout(&self) -> &'static str {
        match self {
            Broker::Mock(_) => "10s",
            Broker::Real { .. } => "20s",
        }
    }

    fn survives_leader_death(&self) -> bool {
        matches!(self, Broker::Mock(_))
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::Real { bootstrap, .. } => bootstrap.clone(),
        }
    }
}

/// What happens to the group while the attack is under way.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Event {
    /// `a` is killed (SIGKILL); `b` takes its partitions over after the session timeout.
    Kill,
    /// `a` is stopped (SIGTERM): it flushes, stores, commits and leaves; `b` takes over.
    Stop,
    /// A third instance, `c`, joins; some partitions move to it.
    Join,
    /// `a` is killed, `b` takes over, then `a` is started again and takes some back.
    Restart,
}

#[test]
fn a_killed_instance_s_sites_are_taken_over_with_nothing_lost_and_no_alert_twice() {
    scenario(Broker::mock, Event::Kill);
}

#[test]
fn an_instance_that_stops_hands_its_sites_over_with_nothing_lost_and_no_alert_twice() {
    scenario(Broker::mock, Event::Stop);
}

#[test]
fn tansu_a_killed_instance_s_sites_are_taken_over() {
    scenario(Broker::tansu, Event::Kill);
}

#[test]
fn tansu_an_instance_that_stops_hands_its_sites_over() {
    scenario(Broker::tansu, Event::Stop);
}

#[test]
fn tansu_a_joining_instance_takes_sites_over_warm() {
    scenario(Broker::tansu, Event::Join);
}

#[test]
fn tansu_a_restarted_instance_takes_sites_back() {
    scenario(Broker::tansu, Event::Restart);
}

/// A change of owner: who took which partitions, and where they stood then.
struct Handover {
    newcomer: &'static str,
    /// The partitions it was at work on before.
    held: BTreeSet<i32>,
    /// What the newcomer had judged live before.
    live_before: BTreeSet<(i32, i64)>,
    /// The group's committed offsets just before.
    committed: BTreeMap<i32, i64>,
    gained: BTreeSet<i32>,
}

/// Eight sites, instances `a` and `b` in one group; `event` happens three minutes into
/// a chiller attack, after `a`'s commits have caught up with what it processed.
fn scenario(broker: fn(&Path, i32) -> Option<Broker>, event: Event) {
    let _quiet = machine_lock();
    // WATTCHDOG_KEEP_TEST_DIRS=1 keeps the instances' logs, audits and alerts to read.
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("WATTCHDOG_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .unwrap();
    let d = dir.path();
    eprintln!("{event:?} in {}", d.display());
    let Some(broker) = broker(d, SITES as i32) else {
        return;
    };
    let capture = d.join("facility.jsonl");
    let labels = simulate(&capture, 3.2, 4, "chiller-setpoint-tamper");
    let attack = wattchdog::time::format_ts(labels[0].start + 3 * 60_000);
    let records = seconds(&capture, SITES);
    // Produced in three parts: before the event, between it and a second change of
    // owner (a restart's), after.
    let split = records.iter().position(|(ts, ..)| *ts >= attack).unwrap();
    let split2 = split + (records.len() - split) / 2;

    // What one uninterrupted instance raises on the same readings.
    let all = d.join("all.jsonl");
    std::fs::write(
        &all,
        records.iter().map(|(.., c)| c.as_str()).collect::<String>(),
    )
    .unwrap();
    let expected_alerts = d.join("expected.json");
    run_ok(&[
        "replay",
        "--alerts",
        expected_alerts.to_str().unwrap(),
        all.to_str().unwrap(),
    ]);
    let expected = alert_ids(&expected_alerts);
    assert!(!expected.is_empty(), "the attack is found at all");

    let brokers = broker.bootstrap();
    let session = broker.session_timeout();
    let delivered = Arc::new(Mutex::new(BTreeSet::new()));
    let producer: ThreadedProducer<Delivered> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        // As the edge forwarder: in order even where sequence numbers are not checked.
        .set("max.in.flight.requests.per.connection", "1")
        .set("queue.buffering.max.messages", "1000000")
        .set("linger.ms", "100")
        .set("compression.type", "lz4")
        .create_with_context(Delivered(Arc::clone(&delivered)))
        .unwrap();
    let produce = |part: &[(String, String, String)]| {
        for (_, site, chunk) in part {
            producer
                .send(
                    BaseRecord::to(TOPIC)
                        .key(site.as_str())
                        .payload(chunk.as_str()),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    };
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "central")
        .create()
        .unwrap();
    let committed = || -> BTreeMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..SITES as i32 {
            tpl.add_partition(TOPIC, p);
        }
        let c = group
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        c.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), o),
                _ => (e.partition(), 0),
            })
            .collect()
    };
    let instance = |name: &str| {
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nconsume = true\nbrokers = {brokers:?}\ngroup = \"central\"\nwarmup = \"24h\"\nsilence = \"off\"\nsession_timeout = {session:?}\naudit = {:?}\n",
                d.join(format!("{name}.audit")).to_str().unwrap()
            ),
        )
        .unwrap();
        start_instance(d, name, &cfg)
    };
    let live = |name: &str| audit(&d.join(format!("{name}.audit")));
    // Partitions an instance is at work on: warming up (muted) or live.
    let at_work = |name: &str| -> BTreeSet<i32> {
        let path = d.join(format!("{name}.audit"));
        let mut all = audit_of(&path, true);
        all.extend(audit_of(&path, false));
        all.into_iter().map(|(p, _)| p).collect()
    };
    // Where `newcomer` and the group stand before a change.
    let standing = |newcomer: &'static str| Handover {
        newcomer,
        held: at_work(newcomer),
        live_before: live(newcomer),
        committed: committed(),
        gained: BTreeSet::new(),
    };
    // Waits until the newcomer is at work on `expect` (or on some partition it did not
    // hold). How long that takes is the group coordinator's rebalance under whatever load
    // the machine has: measured by `benches/takeover.rs`, printed here, never asserted.
    let handover = |mut h: Handover, expect: Option<&BTreeSet<i32>>, since: Instant| {
        let gained =
            |now: BTreeSet<i32>| -> BTreeSet<i32> { now.difference(&h.held).copied().collect() };
        wait_until(
            d,
            &format!("{} takes partitions over", h.newcomer),
            Duration::from_secs(90),
            || {
                let g = gained(at_work(h.newcomer));
                expect.map_or(!g.is_empty(), |e| e.is_subset(&g))
            },
        );
        let took = since.elapsed();
        h.gained = gained(at_work(h.newcomer));
        // Live: a record judged (not replayed muted) on every partition gained.
        wait_until(
            d,
            &format!("{} judges its new partitions live", h.newcomer),
            Duration::from_secs(120),
            || {
                let new: BTreeSet<i32> = live(h.newcomer)
                    .difference(&h.live_before)
                    .map(|(p, _)| *p)
                    .collect();
                h.gained.is_subset(&new)
            },
        );
        eprintln!(
            "{event:?}: {} at work on new partitions {took:?} after the change, live {:?} after",
            h.newcomer,
            since.elapsed()
        );
        h
    };

    let mut running: BTreeMap<&str, Peer> = BTreeMap::new();
    if broker.survives_leader_death() {
        running.insert("a", instance("a"));
        running.insert("b", instance("b"));
    } else {
        // b leads the group: it joins first.
        running.insert("b", instance("b"));
        wait_until(d, "b joins", Duration::from_secs(30), || {
            std::fs::read_to_string(d.join("b.log")).is_ok_and(|l| l.contains("partition assigned"))
        });
        running.insert("a", instance("a"));
    }
    // Production starts once the group has settled, so each instance is at work only on
    // the partitions it keeps.
    wait_until(d, "the group settles", Duration::from_secs(60), || {
        let (a, b) = (assigned(d, "a"), assigned(d, "b"));
        !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.len() + b.len() == SITES
    });
    // `kafka status` sees the same group where the coordinator describes it (librdkafka's
    // mock cluster never does; tansu 0.6 was seen to only once offsets were committed,
    // as in the guide's test): two members; what each owns, where it says (tansu does
    // not), is what each holds.
    let status = wattchdog()
        .args(["kafka", "status", "--json", "-c"])
        .arg(d.join("a.toml"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let members = status["members"].as_array().unwrap();
    if status["state"] != "" {
        assert_eq!(members.len(), 2, "{status}");
    }
    let held = [assigned(d, "a"), assigned(d, "b")];
    for m in members {
        if let Some(owns) = m["partitions"].as_array() {
            let owns: BTreeSet<i32> = owns.iter().map(|p| p.as_i64().unwrap() as i32).collect();
            assert!(
                held.contains(&owns),
                "{owns:?} is what an instance holds: {held:?}"
            );
        }
    }
    produce(&records[..split]);
    let before = delivered.lock().unwrap().len();
    wait_until(
        d,
        "both instances process the first part",
        Duration::from_secs(180),
        || live("a").len() + live("b").len() >= before,
    );
    let owned_by_a = at_work("a");
    assert!(
        !owned_by_a.is_empty() && owned_by_a.len() < SITES,
        "both instances own partitions"
    );
    // Wait for a's commits to come near the end of what it processed, so a new owner
    // must warm up on a's past (muted) and go live from a's committed offsets.
    let last: BTreeMap<i32, i64> = live("a").iter().fold(BTreeMap::new(), |mut m, &(p, o)| {
        let e = m.entry(p).or_insert(o);
        *e = (*e).max(o);
        m
    });
    wait_until(
        d,
        "a commits what it processed",
        Duration::from_secs(30),
        || {
            let c = committed();
            last.iter().all(|(p, &l)| c[p] >= l - 60)
        },
    );

    let mut handovers = Vec::new();
    let first = standing(if event == Event::Join { "c" } else { "b" });
    let t0 = Instant::now();
    match event {
        Event::Kill | Event::Restart => {
            let mut a = running.remove("a").unwrap();
            a.0.kill().unwrap();
            a.0.wait().unwrap();
        }
        Event::Stop => terminate(running.remove("a").unwrap()),
        Event::Join => {
            running.insert("c", instance("c"));
        }
    }
    produce(&records[split..split2]);
    let expect = (event != Event::Join).then_some(&owned_by_a);
    handovers.push(handover(first, expect, t0));
    if event == Event::Restart {
        let second = standing("a2");
        let t1 = Instant::now();
        running.insert("a2", instance("a2"));
        // Records keep coming while it joins: what it takes over has a live part.
        produce(&records[split2..]);
        handovers.push(handover(second, None, t1));
    } else {
        produce(&records[split2..]);
    }
    let produced = delivered.lock().unwrap().clone();
    assert_eq!(produced.len(), records.len());
    let names = ["a", "b", "c", "a2"];
    wait_until(
        d,
        "every record is processed",
        Duration::from_secs(180),
        || {
            let union: BTreeSet<(i32, i64)> = names.iter().flat_map(|n| live(n)).collect();
            produced.is_subset(&union)
        },
    );
    // A graceful stop flushes and stores what is still buffered.
    for (_, p) in std::mem::take(&mut running) {
        terminate(p);
    }

    // A new owner's live records start at the committed offsets of the handover: what
    // the previous owner judged and committed is replayed muted, not judged again.
    for h in &handovers {
        assert!(!h.gained.is_empty());
        for (p, o) in live(h.newcomer).difference(&h.live_before) {
            if h.gained.contains(p) {
                let c = h.committed[p];
                assert!(
                    *o >= c,
                    "{}: partition {p} offset {o} judged again below the commit {c}",
                    h.newcomer
                );
            }
        }
    }
    // What the promise below rests on, as the instances that stopped gracefully report
    // it: no reading late (in order per partition, and silence is not judged here: the
    // producer, slowed by a busy machine, may reach one partition many seconds after
    // another, which the silence rule would rightly count as a silent site whose late
    // readings are not used), no gap in offsets, no partition taken over cold.
    for n in names {
        let Ok(r) = std::fs::read(d.join(format!("{n}.report"))) else {
            continue;
        };
        let r: serde_json::Value = serde_json::from_slice(&r).unwrap();
        let c = &r["consumed"];
        assert_eq!(r["pipeline"]["late"], 0, "{n}: readings late: {r}");
        assert_eq!(
            (&c["gaps"], &c["cold_starts"], &c["heartbeats"]),
            (&0.into(), &0.into(), &0.into()),
            "{n}: {c}"
        );
    }
    if event == Event::Stop {
        // A graceful leave commits everything it judged: nothing is judged twice.
        let twice: Vec<_> = live("a").intersection(&live("b")).copied().collect();
        assert!(twice.is_empty(), "judged by both: {twice:?}");
    }
    let got: BTreeSet<String> = names
        .iter()
        .flat_map(|n| alert_ids(&d.join(format!("{n}.alerts"))))
        .collect();
    if got != expected {
        explain_difference(d, &names, &expected_alerts, &got, &expected);
    }
    assert_eq!(
        got, expected,
        "the same alerts, each once, as one instance raises"
    );
}

/// Prints what differs between the instances' alerts and one instance's, and what the
/// instances logged about warm-up starts, gaps and silent partitions.
fn explain_difference(
    d: &Path,
    names: &[&str],
    expected_alerts: &Path,
    got: &BTreeSet<String>,
    expected: &BTreeSet<String>,
) {
    let describe = |path: &Path, id: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["id"] == id)?;
        Some(format!(
            "{id} ts={} last_seen={} site={} device={} detector={} metrics={} status={}",
            v["ts"],
            v["last_seen"],
            v["site"],
            v["device"],
            v["detector"],
            v["metrics"],
            v["status"]
        ))
    };
    for id in expected.difference(got) {
        eprintln!(
            "missing: {}",
            describe(expected_alerts, id).unwrap_or_default()
        );
    }
    for id in got.difference(expected) {
        for n in names {
            if let Some(text) = describe(&d.join(format!("{n}.alerts")), id) {
                eprintln!("extra, from {n}: {text}");
            }
        }
    }
    for n in names {
        let log = std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default();
        for l in log.lines().filter(|l| {
            [
                "assigned", "revoked", "skipped", "gap", "cold", "silent", "late", "commit",
            ]
            .iter()
            .any(|w| l.contains(w))
        }) {
            eprintln!("{n}: {l}");
        }
    }
}

#[test]
fn the_edge_forwards_what_its_collectors_read_keyed_by_site() {
    let _quiet = machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let (_server, _served, run_toml) = serve_facility(dir.path());
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let mut cfg = std::fs::read_to_string(&run_toml).unwrap();
    cfg.push_str(&format!(
        "\n[kafka]\nbrokers = {brokers:?}\nforward = true\ndetect = false\n"
    ));
    std::fs::write(&run_toml, cfg).unwrap();
    let report = dir.path().join("report.json");
    run_ok(&[
        "run",
        "-c",
        run_toml.to_str().unwrap(),
        "--duration",
        "4s",
        "--report",
        report.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let f = &r["forwarded"];
    let delivered = f["delivered"].as_u64().unwrap();
    assert!(delivered > 0, "{f}");
    assert_eq!(
        f["queued"], f["delivered"],
        "everything queued is delivered: {f}"
    );
    assert_eq!(
        (f["dropped"].as_u64(), f["failed"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["pipeline"]["readings"], 0, "detect = false: forward only");

    // What is on the topic: records keyed by the site, each a chunk of reading lines.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let (mut records, mut readings) = (0u64, 0usize);
    let t0 = Instant::now();
    while records < delivered && t0.elapsed() < Duration::from_secs(30) {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        use rdkafka::message::Message;
        let site = std::str::from_utf8(m.key().unwrap()).unwrap().to_owned();
        let mut reg = wattchdog::model::points::Registry::new(10_000);
        let (events, bad) = wattchdog::kafka::codec::decode(m.payload().unwrap(), &mut reg);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(!events.is_empty());
        assert!(
            reg.devices().iter().all(|d| d.site == site),
            "a record holds one site's readings"
        );
        records += 1;
        readings += events.len();
    }
    assert_eq!(records, delivered);
    assert!(
        readings as u64 > delivered,
        "records carry batches of readings"
    );
}

#[test]
fn a_silent_site_is_judged_on_the_other_sites_event_time() {
    let _quiet = machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let capture = d.join("facility.jsonl");
    simulate(&capture, 0.25, 5, "");
    let records = seconds(&capture, 2);
    // site-1 falls silent two thirds in; site-0 goes on. Each site on its own partition.
    let cut = records[records.len() * 2 / 3].0.clone();
    let (_mock, central) = one_instance_reads(
        d,
        2,
        records
            .iter()
            .filter(|(ts, site, _)| site == "site-0" || *ts < cut)
            .map(|(_, site, chunk)| (i32::from(site != "site-0"), site.as_str(), chunk.as_str())),
    );
    let alerts = d.join("central.alerts");
    // Nothing more arrives for either site: site-1's silence is judged while the
    // instance runs, on the event time site-0 reached.
    let silent = |v: &serde_json::Value| v["detector"] == "staleness" && v["site"] == "site-1";
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&alerts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until(
        d,
        "site-1's silence is an alert",
        Duration::from_secs(30),
        || read().iter().any(silent),
    );
    terminate(central);
    let all = read();
    let found: Vec<_> = all.iter().filter(|v| silent(v)).collect();
    let parse = |t: &str| wattchdog::time::TimeFormat::Auto.parse(t).unwrap();
    let cut = parse(&cut);
    for a in &found {
        let start = parse(a["ts"].as_str().unwrap());
        assert!(start >= cut, "silence found where there was none: {a}");
    }
    assert!(
        !all.iter()
            .any(|v| v["detector"] == "staleness" && v["site"] == "site-0"),
        "site-0 never fell silent"
    );
}

#[test]
fn sites_sharing_a_partition_keep_their_own_event_time() {
    let _quiet = machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let capture = d.join("facility.jsonl");
    simulate(&capture, 0.25, 6, "");
    let records = seconds(&capture, 4);
    // Four sites on one partition; after the first third only site-0 goes on (the other
    // three edges cut off): three quarters of the partition's points stay behind.
    let cut = records[records.len() / 3].0.clone();
    let sent: Vec<_> = records
        .iter()
        .filter(|(ts, site, _)| site == "site-0" || *ts < cut)
        .map(|(_, site, chunk)| (0, site.as_str(), chunk.as_str()))
        .collect();
    let lines: u64 = sent.iter().map(|(_, _, c)| c.lines().count() as u64).sum();
    let (_mock, central) = one_instance_reads(d, 1, sent);
    terminate(central);
    // site-0's readings went on past the others' by ten minutes of event time: none was
    // held apart as dated ahead of its site's present, none late, every one judged.
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("central.report")).unwrap()).unwrap();
    let p = &r["pipeline"];
    assert_eq!((&p["ahead"], &p["late"]), (&0.into(), &0.into()), "{p}");
    let used = p["readings"].as_u64().unwrap() + p["commands"].as_u64().unwrap();
    assert_eq!(used, lines, "{p}");
}

/// `records` (partition, key, payload) produced to a fresh mock cluster's telemetry topic
/// of `partitions`, then read by one central instance `central` in `d` (audit, alerts and
/// report there); returns once it processed every record, with the cluster, which must
/// outlive it.
fn one_instance_reads<'a>(
    d: &Path,
    partitions: i32,
    records: impl IntoIterator<Item = (i32, &'a str, &'a str)>,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Peer,
) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, partitions, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer: ThreadedProducer<Delivered> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "50")
        .create_with_context(Delivered(Arc::default()))
        .unwrap();
    let mut sent = 0;
    for (p, key, payload) in records {
        producer
            .send(BaseRecord::to(TOPIC).partition(p).key(key).payload(payload))
            .unwrap();
        sent += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let cfg = d.join("central.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nconsume = true\nbrokers = {brokers:?}\ngroup = \"central\"\naudit = {:?}\n",
            d.join("central.audit").to_str().unwrap()
        ),
    )
    .unwrap();
    let central = start_instance(d, "central", &cfg);
    wait_until(
        d,
        "every record is processed",
        Duration::from_secs(120),
        || audit(&d.join("central.audit")).len() >= sent,
    );
    (mock, central)
}
