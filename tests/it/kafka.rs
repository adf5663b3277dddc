//! Many sites over Kafka, on librdkafka's in-process mock cluster: eight simulated sites
//! on an eight-partition telemetry topic, two `wattchdog run` instances in one consumer
//! group, one killed with SIGKILL (or stopped with SIGTERM) while an attack is under way. The survivor must take
//! every partition over, process every record (the instances' audit files), and the
//! alerts of both, deduplicated by id, must be exactly those one uninterrupted instance
//! raises on the same readings: none lost, none raised twice under another id.

use crate::support::{machine_lock, run_ok, serve_facility, simulate, wattchdog, Peer};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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

/// The chiller readings of one simulated facility, per second, copied to `SITES` sites:
/// `(event time as written, site, JSONL lines)`.
fn seconds(capture: &Path) -> Vec<(String, String, String)> {
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
        for s in 0..SITES {
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

fn audit(path: &Path) -> BTreeSet<(i32, i64)> {
    audit_of(path, false)
}

fn alert_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] != "incident")
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("al-"))
        .collect()
}

/// Stops an instance with SIGTERM; it must exit cleanly.
fn terminate(p: &mut Peer) {
    let term = std::process::Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(p.0.wait().unwrap().success());
}

/// Waits for `ok`; on a timeout prints the instances' logs (`dir`) and fails.
fn wait_until(dir: &Path, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() > limit {
            for n in ["a", "b"] {
                eprintln!(
                    "{n}: {} records audited",
                    audit(&dir.join(format!("{n}.audit"))).len()
                );
                let text =
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "== {n}.log, last lines\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_instance_s_sites_are_taken_over_with_nothing_lost_and_no_alert_twice() {
    failover(false);
}

#[test]
fn an_instance_that_stops_hands_its_sites_over_with_nothing_lost_and_no_alert_twice() {
    failover(true);
}

/// Two instances; `a` stops mid-attack, killed (SIGKILL) or asked to (`graceful`: SIGTERM,
/// it flushes, stores and commits before leaving the group).
fn failover(graceful: bool) {
    let _quiet = machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("facility.jsonl");
    let labels = simulate(&capture, 3.2, 4, "chiller-setpoint-tamper");
    let attack = wattchdog::time::format_ts(labels[0].start + 3 * 60_000);
    let records = seconds(&capture);
    let split = records.iter().position(|(ts, ..)| *ts >= attack).unwrap();

    // What one uninterrupted instance raises on the same readings.
    let all = dir.path().join("all.jsonl");
    std::fs::write(
        &all,
        records.iter().map(|(.., c)| c.as_str()).collect::<String>(),
    )
    .unwrap();
    let expected_alerts = dir.path().join("expected.jsonl");
    run_ok(&[
        "replay",
        "--alerts",
        expected_alerts.to_str().unwrap(),
        all.to_str().unwrap(),
    ]);
    let expected = alert_ids(&expected_alerts);
    assert!(!expected.is_empty(), "the attack is found at all");

    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, SITES as i32, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let delivered = Arc::new(Mutex::new(BTreeSet::new()));
    let producer: ThreadedProducer<Delivered> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
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

    let instance = |name: &str| {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nconsume = true\nbrokers = {brokers:?}\ngroup = \"central\"\nwarmup = \"24h\"\naudit = {:?}\n",
                dir.path().join(format!("{name}.audit")).to_str().unwrap()
            ),
        )
        .unwrap();
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
                .arg(dir.path().join(format!("{name}.alerts")))
                .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let (audit_a, audit_b) = (dir.path().join("a.audit"), dir.path().join("b.audit"));
    let mut a = instance("a");
    let mut b = instance("b");
    produce(&records[..split]);
    let before = delivered.lock().unwrap().len();
    eprintln!("{before} records produced before the kill");
    wait_until(
        dir.path(),
        "both instances process the first part",
        Duration::from_secs(180),
        || audit(&audit_a).len() + audit(&audit_b).len() >= before,
    );
    let owned_by_a: BTreeSet<i32> = audit(&audit_a).iter().map(|&(p, _)| p).collect();
    assert!(!owned_by_a.is_empty(), "both instances own partitions");
    // Wait for a's commits to come near the end of what it processed, so the survivor
    // must warm up on a's past (muted) and go live from a's committed offsets.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "central")
        .create()
        .unwrap();
    let committed = || -> BTreeMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        for &p in &owned_by_a {
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
    let last: BTreeMap<i32, i64> =
        audit(&audit_a)
            .iter()
            .fold(BTreeMap::new(), |mut m, &(p, o)| {
                let e = m.entry(p).or_insert(o);
                *e = (*e).max(o);
                m
            });
    wait_until(
        dir.path(),
        "a commits what it processed",
        Duration::from_secs(30),
        || committed().iter().all(|(p, &c)| c >= last[p] - 60),
    );

    // The attack is under way; a stops.
    if graceful {
        terminate(&mut a);
    } else {
        a.0.kill().unwrap();
        a.0.wait().unwrap();
    }
    let killed = Instant::now();
    let dead_commits = committed();
    produce(&records[split..]);
    let produced = delivered.lock().unwrap().clone();
    assert_eq!(produced.len(), records.len());
    let seen_since = audit(&audit_b);
    wait_until(
        dir.path(),
        "the survivor takes a's partitions over",
        Duration::from_secs(30),
        || {
            // Warming up on a's past counts: the survivor is at work on the partition.
            let now = audit_of(&audit_b, true);
            owned_by_a.iter().all(|p| now.iter().any(|(q, _)| q == p))
        },
    );
    let takeover = killed.elapsed();
    // The survivor's live records of a's partitions start at a's committed offsets:
    // what a had judged and committed is replayed muted, not judged again.
    for (p, o) in audit(&audit_b).difference(&seen_since) {
        if let Some(&c) = dead_commits.get(p) {
            assert!(
                *o >= c,
                "partition {p}: offset {o} judged again below a's commit {c}"
            );
        }
    }
    assert!(
        takeover <= Duration::from_secs(15),
        "a record of every partition of the dead instance {takeover:?} after its death"
    );
    wait_until(
        dir.path(),
        "every record is processed",
        Duration::from_secs(180),
        || {
            let mut union = audit(&audit_a);
            union.extend(audit(&audit_b));
            produced.is_subset(&union)
        },
    );

    // A graceful stop flushes and stores what is still buffered.
    terminate(&mut b);

    let mut got = alert_ids(&dir.path().join("a.alerts"));
    got.extend(alert_ids(&dir.path().join("b.alerts")));
    assert_eq!(
        got, expected,
        "the same alerts, each once, as one instance raises"
    );
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
        let mut reg = wattchdog::feature::Registry::new(10_000);
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
