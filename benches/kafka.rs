//! Central consumption: readings per second one instance consumes from a broker and
//! scores (decode + the whole pipeline per partition + commits), on librdkafka's
//! in-process mock cluster. Eight simulated sites, half an hour each, on eight
//! partitions, lz4-compressed records of one site-second. Each sample is a fresh
//! consumer group reading the topic from its start; the clock runs from the first record
//! processed to the last (the group join, about 3 s on the mock cluster, is left out).
//!
//! Produce to alert: how long after a record is produced the alert it decides is
//! emitted (stored), through the broker, the consumer and the pipeline: a UPS of a warm
//! site goes to bypass with healthy mains (decided on the first sample); the record and
//! the six seconds after it (the pipeline's 5 s reorder tolerance is event time, not
//! latency) are produced with the edge forwarder's settings, one iteration per site.
//!
//! `cargo bench --features kafka --bench kafka`; against a running broker (tansu, say):
//! `WATTCHDOG_BENCH_BROKERS=127.0.0.1:9092 cargo bench --features kafka --bench kafka`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use wattchdog::config::Config;
use wattchdog::sim::{self, Facility, Intensity, SimOptions};

/// A broker to run against: librdkafka's mock cluster in this process, or, with
/// `WATTCHDOG_BENCH_BROKERS=host:port`, a running broker (a fresh topic per use).
struct Broker {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
    topic: String,
}

impl Broker {
    fn new(partitions: i32) -> Self {
        match std::env::var("WATTCHDOG_BENCH_BROKERS") {
            Ok(brokers) => {
                let topic = format!("wattchdog.bench.{}", unique());
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .expect("admin client");
                let created = tokio::runtime::Runtime::new()
                    .expect("runtime")
                    .block_on(admin.create_topics(
                        &[NewTopic::new(
                            &topic,
                            partitions,
                            TopicReplication::Fixed(1),
                        )],
                        &AdminOptions::new(),
                    ))
                    .expect("create topics");
                for r in created {
                    r.expect("topic created");
                }
                Broker {
                    _mock: None,
                    brokers,
                    topic,
                }
            }
            Err(_) => {
                let mock = MockCluster::new(1).expect("mock cluster");
                let topic = "wattchdog.telemetry.v1".to_owned();
                mock.create_topic(&topic, partitions, 1).expect("topic");
                Broker {
                    brokers: mock.bootstrap_servers(),
                    _mock: Some(mock),
                    topic,
                }
            }
        }
    }
}

/// A topic name suffix no earlier run used.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
const SITES: usize = 8;

/// One record per site and second: (site, JSONL chunk); and the number of readings.
fn records() -> (Vec<(String, String)>, u64) {
    let opts = SimOptions {
        start: 1_783_382_400_000,
        hours: 0.5,
        seed: 7,
        attacks: Vec::new(),
        intensity: Intensity::Obvious,
    };
    let mut buf = Vec::new();
    sim::simulate(&Facility::default(), &opts, &mut buf).expect("simulates");
    let text = String::from_utf8(buf).expect("utf-8");
    let mut by_ts: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let ts = v["ts"].as_str().unwrap_or_default().to_owned();
        by_ts.entry(ts).or_default().push(v);
    }
    let mut out = Vec::new();
    let mut readings = 0;
    for lines in by_ts.values() {
        for s in 0..SITES {
            let site = format!("site-{s}");
            let mut chunk = String::new();
            for l in lines {
                let mut l = l.clone();
                l["site"] = site.clone().into();
                chunk.push_str(&l.to_string());
                chunk.push('\n');
                readings += 1;
            }
            out.push((site, chunk));
        }
    }
    (out, readings)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches('\n').count())
        .unwrap_or(0)
}

fn consume(c: &mut Criterion) {
    let (records, readings) = records();
    let broker = Broker::new(SITES as i32);
    let (brokers, topic) = (broker.brokers.clone(), broker.topic.clone());
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "100")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for (site, chunk) in &records {
        producer
            .send(BaseRecord::to(&topic).key(site).payload(chunk))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(60)).expect("delivered");
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("kafka");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(readings));
    let mut round = 0;
    g.bench_function("consume_and_score_8_sites_30_min", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let audit = dir.path().join(format!("audit-{round}"));
                let cfg = Config::from_toml_str(
                    &format!(
                        "[kafka]\nconsume = true\nbrokers = {brokers:?}\ntelemetry_topic = {topic:?}\ngroup = \"bench-{round}\"\naudit = {:?}\n",
                        audit.to_str().unwrap_or_default()
                    ),
                    "bench",
                )
                .expect("config");
                let n = records.len();
                let (first, last) = rt.block_on(async {
                    let mut first = None;
                    let audit2 = audit.clone();
                    let watch = async move {
                        loop {
                            let k = lines(&audit2);
                            if k > 0 && first.is_none() {
                                first = Some(Instant::now());
                            }
                            if k >= n {
                                break (first, Instant::now());
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let stop = async move {
                        let _ = rx.await;
                    };
                    let mut discard = |_: &wattchdog::correlate::Output| Ok(());
                                        let run = wattchdog::kafka::central::consume(cfg.central(), &mut discard, None, stop);
                    tokio::pin!(run);
                    let times = tokio::select! {
                        t = watch => t,
                        r = &mut run => panic!("consuming stopped early: {r:?}"),
                    };
                    let _ = tx.send(());
                    let _ = run.await;
                    times
                });
                total += last - first.unwrap_or(last);
            }
            total
        })
    });
    g.finish();
}

/// Warm sites for the latency bench (one per iteration).
const WARM_SITES: usize = 400;

/// One second of a site's UPS: healthy mains, in bypass or not.
fn ups_second(site: usize, ts: i64, bypass: bool) -> String {
    let ts = wattchdog::time::format_ts(ts);
    [
        ("input_voltage_v", 230.0),
        ("bypass_active", if bypass { 1.0 } else { 0.0 }),
        ("on_battery", 0.0),
        ("battery_charge_pct", 100.0),
    ]
    .iter()
    .map(|(metric, value)| {
        format!(
            "{{\"ts\":\"{ts}\",\"site\":\"lat-{site}\",\"device\":\"ups-1\",\"kind\":\"ups\",\"metric\":\"{metric}\",\"value\":{value}}}\n"
        )
    })
    .collect()
}

fn produce_to_alert(c: &mut Criterion) {
    let broker = Broker::new(1);
    let (brokers, topic) = (broker.brokers.clone(), broker.topic.clone());
    // The edge forwarder's settings.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let send = |site: usize, ts: i64, bypass: bool| {
        let chunk = ups_second(site, ts, bypass);
        let key = format!("lat-{site}");
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(&chunk))
            .expect("queued");
    };
    // Every site warm: 90 s of healthy readings (the detector learns its mains on 60).
    let t0: i64 = 1_783_382_400_000;
    for s in 0..90 {
        for site in 0..WARM_SITES {
            send(site, t0 + s * 1_000, false);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("delivered");
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit");
    let cfg_text = format!(
        "[kafka]\nconsume = true\nbrokers = {brokers:?}\ntelemetry_topic = {topic:?}\ngroup = \"latency\"\naudit = {:?}\n",
        audit.to_str().unwrap_or_default()
    );
    // The central instance, on its own thread; alerts of the `ups` detector come back
    // with the moment they were stored.
    let (alerts_tx, alerts) = std::sync::mpsc::channel::<(String, Instant)>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let central = std::thread::spawn(move || {
        let cfg = Config::from_toml_str(&cfg_text, "bench").expect("config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut emit = |o: &wattchdog::correlate::Output| {
            if let wattchdog::correlate::Output::Alert(a) = o {
                if a.detector == "ups" {
                    let _ = alerts_tx.send((a.site.clone(), Instant::now()));
                }
            }
            Ok(())
        };
        let stop = async move {
            let _ = stop_rx.await;
        };
        rt.block_on(wattchdog::kafka::central::consume(
            cfg.central(),
            &mut emit,
            None,
            stop,
        ))
        .expect("consumes");
    });
    let warm = 90 * WARM_SITES;
    let t = Instant::now();
    while lines(&audit) < warm {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "warm-up not consumed: {} of {warm} records",
            lines(&audit)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut g = c.benchmark_group("kafka");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    let mut next = 0usize;
    let mut each = Vec::new();
    g.bench_function("produce_to_alert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let site = next;
                next += 1;
                assert!(site < WARM_SITES, "more iterations than warm sites");
                // Later than every reading before it: a site quiet for longer than the
                // silence is judged on the others' event time, so its next reading must
                // not be older than theirs (it would be late).
                let ts = t0 + 90_000 + site as i64 * 7_000;
                let start = Instant::now();
                send(site, ts, true);
                for s in 1..=6 {
                    send(site, ts + s * 1_000, false);
                }
                let want = format!("lat-{site}");
                let at = loop {
                    let (s, at) = alerts
                        .recv_timeout(Duration::from_secs(30))
                        .expect("the bypass is an alert");
                    if s == want {
                        break at;
                    }
                };
                total += at - start;
                each.push(at - start);
            }
            total
        })
    });
    g.finish();
    each.sort();
    let at = |q: f64| each[((each.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "produce → alert over {} alerts (warm-up included): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        each.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    let _ = stop_tx.send(());
    central.join().expect("central stops");
}

criterion_group!(benches, consume, produce_to_alert);
criterion_main!(benches);
