//! Central consumption: readings per second one instance consumes from a broker and
//! scores (decode + the whole pipeline per partition + commits), on librdkafka's
//! in-process mock cluster. Eight simulated sites, half an hour each, on eight
//! partitions, lz4-compressed records of one site-second. Each sample is a fresh
//! consumer group reading the topic from its start; the clock runs from the first record
//! processed to the last (the group join, about 3 s on the mock cluster, is left out).
//!
//! `cargo bench --features kafka --bench kafka`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use wattchdog::config::Config;
use wattchdog::sim::{self, Facility, Intensity, SimOptions};

const TOPIC: &str = "wattchdog.telemetry.v1";
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
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, SITES as i32, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "100")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for (site, chunk) in &records {
        producer
            .send(BaseRecord::to(TOPIC).key(site).payload(chunk))
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
                        "[kafka]\nconsume = true\nbrokers = {brokers:?}\ngroup = \"bench-{round}\"\naudit = {:?}\n",
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
                    let run = wattchdog::kafka::central::consume(&cfg, &mut discard, stop);
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

criterion_group!(benches, consume);
criterion_main!(benches);
