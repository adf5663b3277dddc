//! Takeover time: how long after one of two central instances is killed (SIGKILL) or
//! stopped (SIGTERM) the other is at work on every partition the first owned (its first
//! record of each, warm-up included, in its audit file). Real `wattchdog run` processes,
//! librdkafka's in-process mock cluster, eight sites on eight partitions, a minute of
//! readings each; a fresh cluster per iteration. The session timeout (6 s here, the
//! lowest Apache Kafka accepts; 10 s by default) bounds the SIGKILL case from below; a
//! graceful stop leaves the group at once.
//!
//! `cargo bench --features kafka --bench takeover`

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TOPIC: &str = "wattchdog.telemetry.v1";
const SITES: usize = 8;

/// Partitions in an audit file (`partition offset [muted]` per line).
fn partitions(path: &Path) -> BTreeSet<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_alphanumeric()))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One takeover: returns the time from the stop to the survivor at work on all.
fn takeover(dir: &Path, graceful: bool) -> Duration {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, SITES as i32, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
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
                        BaseRecord::to(TOPIC)
                            .key(&format!("site-{site}"))
                            .payload(&line),
                    )
                    .expect("queued");
            }
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");
    };
    let start = |name: &str| -> Child {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nconsume = true\nbrokers = {brokers:?}\ngroup = \"takeover\"\nsession_timeout = \"6s\"\naudit = {:?}\n",
                dir.join(format!("{name}.audit")).to_str().unwrap_or_default()
            ),
        )
        .expect("config");
        Command::new(env!("CARGO_BIN_EXE_wattchdog"))
            .args(["run", "-c", cfg.to_str().unwrap_or_default()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wattchdog runs")
    };
    for f in ["a.audit", "b.audit"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let mut a = start("a");
    let mut b = start("b");
    send(0, 60);
    let (audit_a, audit_b) = (dir.join("a.audit"), dir.join("b.audit"));
    wait("both instances at work", || {
        let (pa, pb) = (partitions(&audit_a), partitions(&audit_b));
        !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == SITES
    });
    let owned_by_a = partitions(&audit_a);
    let stopped = Instant::now();
    if graceful {
        Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status()
            .expect("kill -TERM");
    } else {
        a.kill().expect("SIGKILL");
    }
    let _ = a.wait();
    // Records keep coming, as they would from the sites.
    send(60, 70);
    wait("the survivor takes over", || {
        owned_by_a.is_subset(&partitions(&audit_b))
    });
    let took = stopped.elapsed();
    let _ = b.kill();
    let _ = b.wait();
    took
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("kafka_takeover");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    for (name, graceful) in [("after_sigkill", false), ("after_sigterm", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| takeover(dir.path(), graceful)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
