//! Takeover time: after one of two central instances is killed (SIGKILL) or stopped
//! (SIGTERM), after a third joins, and after a killed one is started again, how long
//! until the instance taking partitions over is **live** on every one of them (its
//! first record judged live, after the muted warm-up replay), and, printed beside it,
//! **at work** (its first record read, warm-up included). Real `wattchdog run`
//! processes with audit files, eight sites on eight partitions, a minute of readings
//! each before the change and ten seconds after.
//!
//! On librdkafka's in-process mock cluster (a fresh one per iteration, 6 s sessions:
//! the lowest Apache Kafka accepts, 10 s by default), or, with
//! `WATTCHDOG_BENCH_BROKERS=host:port`, on a real broker (a fresh topic and group per
//! iteration, 20 s sessions, as tansu 0.6 needs). The instance that dies never leads the
//! group (it joins second): tansu 0.6's coordinator does not recover from its leader's
//! death.
//!
//! `cargo bench --features kafka --bench takeover`

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SITES: usize = 8;

/// Partitions in an audit file (`partition offset [muted]` per line): all, or only
/// those with a record judged live.
fn partitions(path: &Path, live_only: bool) -> BTreeSet<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_alphanumeric()))
        .filter(|l| !live_only || !l.ends_with("muted"))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

/// The partitions an instance holds now, by its log.
fn held(log: &Path) -> BTreeSet<i32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut held = BTreeSet::new();
    for l in text.lines() {
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

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Kill,
    Stop,
    Join,
    Restart,
}

/// Where the records go: a fresh mock cluster, or a fresh topic on a real broker.
struct Target {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
    topic: String,
    group: String,
    session: &'static str,
}

impl Target {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let topic = format!("takeover-{}-{n}", std::process::id());
        let group = format!("takeover-{}-{n}", std::process::id());
        match std::env::var("WATTCHDOG_BENCH_BROKERS") {
            Ok(brokers) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .expect("admin client");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                for r in rt
                    .block_on(admin.create_topics(
                        &[NewTopic::new(
                            &topic,
                            SITES as i32,
                            TopicReplication::Fixed(1),
                        )],
                        &AdminOptions::new(),
                    ))
                    .expect("topic")
                {
                    r.expect("topic created");
                }
                Self {
                    _mock: None,
                    brokers,
                    topic,
                    group,
                    session: "20s",
                }
            }
            Err(_) => {
                let mock = MockCluster::new(1).expect("mock cluster");
                mock.create_topic(&topic, SITES as i32, 1).expect("topic");
                Self {
                    brokers: mock.bootstrap_servers(),
                    _mock: Some(mock),
                    topic,
                    group,
                    session: "6s",
                }
            }
        }
    }
}

/// One change: returns the time from it to the instance taking over live on every
/// partition it took; prints the time to at work beside it.
fn takeover(dir: &Path, change: Change) -> Duration {
    let t = Target::new();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &t.brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    let send = |from: i64, to: i64| {
        for s in from..to {
            for site in 0..SITES {
                let ts = wattchdog::time::format_ts(1_783_382_400_000 + s * 1_000);
                let line = format!(
                    "{{\"ts\":\"{ts}\",\"site\":\"site-{site}\",\"device\":\"chiller-1\",\"kind\":\"chiller\",\"metric\":\"supply_temp_c\",\"value\":7.0}}\n"
                );
                producer
                    .send(
                        BaseRecord::to(&t.topic)
                            .key(&format!("site-{site}"))
                            .payload(&line),
                    )
                    .expect("queued");
            }
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");
    };
    let audit = |name: &str| dir.join(format!("{name}.audit"));
    let start = |name: &str| -> Child {
        let _ = std::fs::remove_file(audit(name));
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nconsume = true\nbrokers = {:?}\ntelemetry_topic = {:?}\ngroup = {:?}\nsession_timeout = {:?}\nsilence = \"off\"\naudit = {:?}\n",
                t.brokers, t.topic, t.group, t.session,
                audit(name).to_str().unwrap_or_default()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        Command::new(env!("CARGO_BIN_EXE_wattchdog"))
            .args([
                "run",
                "--log",
                "info",
                "-c",
                cfg.to_str().unwrap_or_default(),
            ])
            .stderr(log)
            .spawn()
            .expect("wattchdog runs")
    };
    let held = |name: &str| held(&dir.join(format!("{name}.log")));
    let minute = Duration::from_secs(60);
    // b joins first and leads; a second; the readings come once the group has settled.
    let mut b = start("b");
    wait("b joins", minute, || held("b").len() == SITES);
    let mut a = start("a");
    wait("the group settles", minute, || {
        let (pa, pb) = (held("a"), held("b"));
        !pa.is_empty() && pa.is_disjoint(&pb) && pa.len() + pb.len() == SITES
    });
    let owned_by_a = held("a");
    send(0, 60);
    wait("both instances at work", minute, || {
        partitions(&audit("a"), false) == owned_by_a
            && partitions(&audit("b"), false).len() == SITES - owned_by_a.len()
    });
    // Let a's commits catch up, so the taker warms up on a's past, muted.
    std::thread::sleep(Duration::from_secs(2));
    let changed = Instant::now();
    let mut others = Vec::new();
    let (taker, expect) = match change {
        Change::Kill | Change::Restart => {
            a.kill().expect("SIGKILL");
            let _ = a.wait();
            ("b", Some(owned_by_a.clone()))
        }
        Change::Stop => {
            Command::new("kill")
                .args(["-TERM", &a.id().to_string()])
                .status()
                .expect("kill -TERM");
            let _ = a.wait();
            ("b", Some(owned_by_a.clone()))
        }
        Change::Join => {
            others.push(a);
            others.push(start("c"));
            ("c", None)
        }
    };
    let before_live = partitions(&audit(taker), true);
    let before = partitions(&audit(taker), false);
    // Records keep coming, as they would from the sites, until the taker is live.
    let mut s = 60;
    let mut step = |s: &mut i64| {
        send(*s, *s + 1);
        *s += 1;
    };
    let gained = |live_only: bool| -> BTreeSet<i32> {
        let now = partitions(&audit(taker), live_only);
        let had = if live_only { &before_live } else { &before };
        now.difference(had).copied().collect()
    };
    let (at_work, live) = measure(&mut s, &mut step, &gained, expect.as_ref());
    let (mut at_work, mut live) = (at_work - changed, live - changed);
    if let Change::Restart = change {
        // b holds everything; a comes back and takes some partitions back.
        let restarted = Instant::now();
        let before_live_a = BTreeSet::new();
        let before_a = BTreeSet::new();
        others.push(start("a"));
        let gained_a = |live_only: bool| -> BTreeSet<i32> {
            let now = partitions(&audit("a"), live_only);
            let had = if live_only { &before_live_a } else { &before_a };
            now.difference(had).copied().collect()
        };
        let (w, l) = measure(&mut s, &mut step, &gained_a, None);
        (at_work, live) = (w - restarted, l - restarted);
    }
    eprintln!("{change:?}: at work after {at_work:?}, live after {live:?}");
    let _ = b.kill();
    let _ = b.wait();
    for mut o in others {
        let _ = o.kill();
        let _ = o.wait();
    }
    live
}

/// Sends a second of records at a time until `gained` shows the taker at work on the
/// partitions (`expect`, or some), then live on all it is at work on; returns when each
/// happened.
fn measure(
    s: &mut i64,
    step: &mut dyn FnMut(&mut i64),
    gained: &dyn Fn(bool) -> BTreeSet<i32>,
    expect: Option<&BTreeSet<i32>>,
) -> (Instant, Instant) {
    let t0 = Instant::now();
    let limit = Duration::from_secs(120);
    let at_work = loop {
        let g = gained(false);
        if expect.map_or(!g.is_empty(), |e| e.is_subset(&g)) {
            break Instant::now();
        }
        assert!(
            t0.elapsed() < limit,
            "the taker at work: not within {limit:?}"
        );
        step(s);
        std::thread::sleep(Duration::from_millis(20));
    };
    let live = loop {
        let (work, live) = (gained(false), gained(true));
        if !work.is_empty() && work.is_subset(&live) {
            break Instant::now();
        }
        assert!(t0.elapsed() < limit, "the taker live: not within {limit:?}");
        step(s);
        std::thread::sleep(Duration::from_millis(20));
    };
    (at_work, live)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("kafka_takeover_to_live");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    for (name, change) in [
        ("after_sigkill", Change::Kill),
        ("after_sigterm", Change::Stop),
        ("join", Change::Join),
        ("restart", Change::Restart),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| takeover(dir.path(), change)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
