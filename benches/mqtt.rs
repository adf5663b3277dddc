//! MQTT ingestion: payload decoding (criterion), then end to end through a loopback
//! broker — the embedded one, and Mosquitto when installed — from publish to the
//! pipeline: readings/s at full speed, process CPU per 10,000 readings/s, and latency
//! percentiles at a steady 10,000 readings/s.
//!
//! `cargo bench --bench mqtt`

use criterion::{criterion_group, Criterion, Throughput};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use wattchdog::model::event::Event;
use wattchdog::protocol::profiles::named_topic_map;
use wattchdog::protocol::sparkplug;
use wattchdog::source::mqtt::{subscribe, MessageDecoder, MqttStats};
use wattchdog::time::{format_ts, Clock};
use wattchdog::Config;

const METRICS: [&str; 10] = [
    "input_voltage_v",
    "input_frequency_hz",
    "input_power_kw",
    "output_voltage_v",
    "output_power_kw",
    "load_pct",
    "battery_voltage_v",
    "battery_charge_pct",
    "battery_temp_c",
    "on_battery",
];

fn json_message(device: usize, ts: i64, k: usize) -> (String, Vec<u8>) {
    let values: Vec<String> = METRICS
        .iter()
        .enumerate()
        .map(|(i, m)| format!("\"{m}\":{}", 100.0 + i as f64 + (k % 7) as f64 * 0.1))
        .collect();
    (
        format!("wattchdog/bench/ups/ups-{device}"),
        format!(
            "{{\"ts\":\"{}\",\"values\":{{{}}}}}",
            format_ts(ts),
            values.join(",")
        )
        .into_bytes(),
    )
}

fn decode(c: &mut Criterion) {
    let stats = MqttStats::default();
    let map = Arc::new(named_topic_map("wattchdog-sim").unwrap());
    let mut json = MessageDecoder::new(map, "bench");
    let (topic, payload) = json_message(1, 1_783_382_400_000, 3);
    let mut g = c.benchmark_group("mqtt");
    g.throughput(Throughput::Elements(METRICS.len() as u64));
    g.bench_function("decode_json_10_metrics", |b| {
        b.iter(|| json.decode(&topic, &payload, 0, &stats).unwrap())
    });
    let map = Arc::new(named_topic_map("wattchdog-sim-sparkplug").unwrap());
    let mut sp = MessageDecoder::new(map, "bench");
    let values: Vec<(&str, f64)> = METRICS.iter().map(|m| (*m, 1.0)).collect();
    let (t, p) = sparkplug::birth("bench", "gw", None, "gateway", &[], 0, 0, Some(0));
    sp.decode(&t, &p, 0, &stats).unwrap();
    let (t, p) = sparkplug::birth("bench", "gw", Some("ups-1"), "ups", &values, 0, 1, None);
    sp.decode(&t, &p, 0, &stats).unwrap();
    let aliased: Vec<(u64, f64)> = (1..=10).map(|a| (a, a as f64 * 1.5)).collect();
    let mut seq = 1u8;
    g.bench_function("decode_sparkplug_ddata_10_metrics", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let (t, p) = sparkplug::data("bench", "gw", "ups-1", &aliased, 0, seq);
            sp.decode(&t, &p, 0, &stats).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, decode);

/// User + system CPU seconds of this process so far (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Publishes `messages` messages of ten readings (at `rate` messages/s, or as fast as
/// possible) and pushes what arrives through a pipeline; returns readings/s, CPU seconds
/// per 10,000 readings/s, and latency percentiles (ms) from publish to pipeline.
async fn end_to_end(port: u16, messages: usize, rate: Option<f64>) -> (f64, f64, [i64; 3]) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cfg = Config::from_toml_str(
        &format!("[[mqtt.brokers]]\nurl = \"mqtt://127.0.0.1:{port}\"\nmap = \"wattchdog-sim\"\nclient_id = \"bench-sub-{}-{run}\"\n", std::process::id()),
        "bench",
    )
    .unwrap();
    let plan = cfg
        .mqtt
        .resolve(std::path::Path::new("."), "bench")
        .unwrap()
        .remove(0);
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let sub = tokio::spawn(subscribe(
        plan,
        Clock::wall(),
        Arc::new(MqttStats::default()),
        tx,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut opts = MqttOptions::new(
        format!("bench-pub-{}-{run}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publisher = tokio::spawn(async move {
        let started = Instant::now();
        for k in 0..messages {
            if let Some(r) = rate {
                let due = started + Duration::from_secs_f64(k as f64 / r);
                tokio::time::sleep_until(due.into()).await;
            }
            let ts = chrono::Utc::now().timestamp_millis();
            let (topic, payload) = json_message(k % 50, ts, k);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut pipeline = Config::default().build_pipeline();
    let mut out = Vec::new();
    let mut latencies = Vec::with_capacity(messages);
    let want = messages * METRICS.len();
    let (mut got, cpu0) = (0, cpu_seconds());
    let t0 = Instant::now();
    while got < want {
        let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
            break;
        };
        let now = chrono::Utc::now().timestamp_millis();
        latencies.push(now - batch[0].ts);
        for r in batch {
            let point = pipeline
                .registry
                .intern(&r.site, &r.device, &r.kind, &r.metric)
                .unwrap();
            pipeline.push(
                Event::Sample {
                    ts: r.ts,
                    point,
                    value: r.value,
                    quality: r.quality,
                },
                &mut out,
            );
            got += 1;
        }
        out.clear();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    publisher.await.unwrap();
    stop.send(true).unwrap();
    sub.await.unwrap();
    assert_eq!(got, want, "every reading arrived");
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let rate = got as f64 / secs;
    (
        rate,
        cpu / secs / (rate / 10_000.0),
        [pct(0.5), pct(0.99), pct(1.0)],
    )
}

fn report(broker: &str, in_process: &str, port: u16, rt: &tokio::runtime::Runtime) {
    let (rate, cpu, _) = rt.block_on(end_to_end(port, 20_000, None));
    println!("{broker}: {rate:.0} readings/s at full speed; {:.1} % of a core per 10,000 readings/s ({in_process})", cpu * 100.0);
    let (_, _, lat) = rt.block_on(end_to_end(port, 10_000, Some(1_000.0)));
    println!("{broker}: at 10,000 readings/s, publish → pipeline latency p50 {} ms, p99 {} ms, max {} ms", lat[0], lat[1], lat[2]);
}

fn main() {
    benches();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = wattchdog::app::broker::start(0, None, 1 << 30)
        .expect("embedded broker")
        .port();
    report(
        "embedded rumqttd",
        "this process: broker, publisher, subscriber and pipeline",
        port,
        &rt,
    );
    if std::process::Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        report(
            "mosquitto",
            "this process: publisher, subscriber and pipeline; the broker apart",
            port,
            &rt,
        );
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("mosquitto: not installed, skipped");
    }
    Criterion::default().configure_from_args().final_summary();
}
