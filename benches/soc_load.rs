//! Load test of the live path with the SOC surface: `wattchdog run` (the release binary,
//! its own process) with the store, the HTTP server, 10 SSE clients and a webhook
//! receiver, collecting about 5,000 points a second, twice:
//! - **MQTT**: 500 UPSs × 10 metrics at 1 Hz published to the embedded broker. The
//!   latency is from the moment a spiked reading is published.
//! - **Modbus**: 456 UPSs (`ups-generic`, 11 polled points each) served by two
//!   in-process Modbus TCP gateways, polled every second. The poller stamps each reading
//!   when its response arrives, so the latency is from the alert's `ts`, the reading's
//!   own stamp (the wait for the next poll is the sampling interval, not the pipeline's).
//!
//! From 10 s on, every 2 s, one UPS's load jumps outside its physical limits; the
//! latency is to the alert arriving on each SSE client and at the webhook receiver (the
//! first snapshot: an early alert, raised on the reading's arrival), and to the SSE
//! snapshot that confirms it in its incident once the reading's turn came (after the
//! reorder wait: counted for spikes from 35 s on, once the run has learned its wait in
//! its first 30 s). The config is the default but for the sinks. Prints each run's CPU
//! and peak memory, and the reorder wait the run learned.
//!
//! `cargo build --release && cargo bench --bench soc_load [-- mqtt|modbus]` (about 150 s)

use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wattchdog::protocol::image::DeviceImage;
use wattchdog::sim::serve::{GatewayHandle, Plant, WireEvent};
use wattchdog::time::format_ts;

const DEVICES: usize = 500;
const METRICS: usize = 10;
/// Devices per Modbus gateway (unit ids 1..=247 per address).
const PER_GATEWAY: usize = 228;
const GATEWAYS: usize = 2;
const SECONDS: u64 = 60;
const TOKEN: &str = "load-test-token-0123456789";

/// Wall ms when each spike was published (or set on the served device), by device.
type Spikes = Arc<Mutex<HashMap<String, i64>>>;

/// What a latency is measured from.
#[derive(Clone, Copy)]
enum Since {
    /// When the bench published the reading (`Spikes`).
    Published,
    /// The reading's own stamp, the alert's `ts` (a poller stamps a response on arrival).
    Stamped,
}

/// Spikes from this many seconds into the run on count for the confirmation latency.
const CONFIRMED_FROM_S: u64 = 35;

/// The latency of an alert JSON now, when it is a limits alert of a spiked device.
fn latency(v: &serde_json::Value, spikes: &Spikes, since: Since) -> Option<(String, i64)> {
    latency_from(v, spikes, since).map(|(device, ms, _)| (device, ms))
}

/// [`latency`], and when the spike was published (wall ms).
fn latency_from(
    v: &serde_json::Value,
    spikes: &Spikes,
    since: Since,
) -> Option<(String, i64, i64)> {
    if v["detector"] != "limits" {
        return None;
    }
    let device = v["device"].as_str()?.to_owned();
    let published = spikes.lock().unwrap().get(&device).copied()?;
    let from = match since {
        Since::Published => published,
        Since::Stamped => chrono::DateTime::parse_from_rfc3339(v["ts"].as_str()?)
            .ok()?
            .timestamp_millis(),
    };
    Some((device, now_ms() - from, published))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn percentile(v: &mut [i64], p: f64) -> i64 {
    if v.is_empty() {
        return -1;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Reads SSE from the run and records the latency of each first alert of a spiked device,
/// and of the first snapshot confirming it (`early` false) for spikes from `confirmed_from`
/// (wall ms) on.
async fn sse_client(
    port: u16,
    spikes: Spikes,
    since: Since,
    out: Arc<Mutex<Vec<i64>>>,
    confirmed: Arc<Mutex<Vec<i64>>>,
    confirmed_from: i64,
) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let req =
        format!("GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = BufReader::new(s).lines();
    let mut seen = std::collections::HashSet::new();
    let mut seen_confirmed = std::collections::HashSet::new();
    let mut alert = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("event: alert") {
            alert = true;
        } else if alert && line.starts_with("data:") {
            alert = false;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[5..]) else {
                continue;
            };
            if let Some((device, ms, published)) = latency_from(&v, &spikes, since) {
                if v["early"] != true
                    && published >= confirmed_from
                    && seen_confirmed.insert(device.clone())
                {
                    confirmed.lock().unwrap().push(ms);
                }
                if seen.insert(device) {
                    out.lock().unwrap().push(ms);
                }
            }
        }
    }
}

/// A webhook receiver answering 204; records the latency of each first delivery.
async fn receiver(listener: TcpListener, spikes: Spikes, since: Since, out: Arc<Mutex<Vec<i64>>>) {
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (spikes, out, seen) = (spikes.clone(), out.clone(), seen.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() < len {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[..len]) {
                    if let Some((device, ms)) = latency(&v, &spikes, since) {
                        if seen.lock().unwrap().insert(device) {
                            out.lock().unwrap().push(ms);
                        }
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
                buf.clear();
            }
        });
    }
}

/// utime + stime ticks and peak RSS (kB) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm)
}

/// A UPS whose load spikes to 900 % at second `s`, if one does (from 10 s on, every
/// 2 s, a different one of `n`).
fn spiked(s: u64, n: usize) -> Option<usize> {
    (s >= 10 && s % 2 == 0).then_some((s as usize * 7) % n)
}

/// A started `wattchdog run` with its SOC surface and the clients measuring it.
struct Run {
    process: std::process::Child,
    spikes: Spikes,
    sse: Arc<Mutex<Vec<i64>>>,
    confirmed: Arc<Mutex<Vec<i64>>>,
    hooks: Arc<Mutex<Vec<i64>>>,
    cpu0: f64,
    t0: Instant,
    dir: tempfile::TempDir,
}

impl Run {
    /// Starts the binary with the store, HTTP, a webhook and `collect` (config), and
    /// connects 10 SSE clients and the webhook receiver.
    async fn start(bin: &std::path::Path, collect: &str, since: Since) -> Run {
        let hook = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_port = hook.local_addr().unwrap().port();
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("load.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = \"load.db\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\ntoken = \"{TOKEN}\"\n\
                 [[webhooks]]\nname = \"load\"\nurl = \"http://127.0.0.1:{hook_port}/\"\nsecret = \"load-secret-0123456789\"\n{collect}"
            ),
        )
        .unwrap();
        let process = std::process::Command::new(bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .args(["--alerts", "/dev/null", "--report", "load.report.json"])
            .current_dir(dir.path())
            .spawn()
            .expect("run starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", http_port)).await.is_err()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let spikes: Spikes = Arc::default();
        let sse = Arc::new(Mutex::new(Vec::new()));
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let hooks = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(receiver(hook, spikes.clone(), since, hooks.clone()));
        let confirmed_from = now_ms() + CONFIRMED_FROM_S as i64 * 1_000;
        for _ in 0..10 {
            tokio::spawn(sse_client(
                http_port,
                spikes.clone(),
                since,
                sse.clone(),
                confirmed.clone(),
                confirmed_from,
            ));
        }
        let (cpu0, _) = usage(process.id());
        Run {
            process,
            spikes,
            sse,
            confirmed,
            hooks,
            cpu0,
            t0: Instant::now(),
            dir,
        }
    }

    /// Waits 5 s for the last alerts, stops the run and prints what was measured.
    async fn report(mut self, what: &str, points: usize) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu1, rss) = usage(self.process.id());
        let wall = self.t0.elapsed().as_secs_f64();
        // SIGTERM: the run stops cleanly and writes its report.
        let _ = std::process::Command::new("kill")
            .arg(self.process.id().to_string())
            .status();
        let _ = self.process.wait();
        let report: serde_json::Value =
            std::fs::read_to_string(self.dir.path().join("load.report.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let mut sse = self.sse.lock().unwrap().clone();
        let mut confirmed = self.confirmed.lock().unwrap().clone();
        let mut hooks = self.hooks.lock().unwrap().clone();
        println!(
            "{what}: {points} points at 1 Hz for {SECONDS} s, 10 SSE clients, 1 webhook receiver: run used {:.1} % of a core, peak RSS {:.1} MB",
            (cpu1 - self.cpu0) / wall * 100.0,
            rss as f64 / 1024.0
        );
        println!(
            "{what}: reading → alert on SSE: p50 {} ms, p99 {} ms, max {} ms ({} observations over 10 clients); → webhook received: p50 {} ms, p99 {} ms, max {} ms ({} alerts)",
            percentile(&mut sse, 0.5),
            percentile(&mut sse, 0.99),
            percentile(&mut sse, 1.0),
            sse.len(),
            percentile(&mut hooks, 0.5),
            percentile(&mut hooks, 0.99),
            percentile(&mut hooks, 1.0),
            hooks.len()
        );
        println!(
            "{what}: reading → alert confirmed in its incident on SSE (spikes from {CONFIRMED_FROM_S} s): p50 {} ms, p99 {} ms, max {} ms ({} observations); reorder wait learned: {} ms; late readings: {}",
            percentile(&mut confirmed, 0.5),
            percentile(&mut confirmed, 0.99),
            percentile(&mut confirmed, 1.0),
            confirmed.len(),
            report["pipeline"]["reorder_wait_ms"],
            report["pipeline"]["late"],
        );
    }
}

/// 500 UPSs × 10 metrics published at 1 Hz to the embedded broker.
async fn over_mqtt(bin: &std::path::Path) {
    let broker = wattchdog::app::broker::start(0, None, 1 << 30).expect("broker");
    let run = Run::start(
        bin,
        &format!("[[mqtt.brokers]]\nurl = \"mqtt://{broker}\"\nmap = \"wattchdog-sim\"\nclient_id = \"load-run\"\n"),
        Since::Published,
    )
    .await;
    let mut opts = MqttOptions::new("load-pub", broker.ip().to_string(), broker.port());
    opts.set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for s in 0..SECONDS {
        let ts = now_ms();
        for d in 0..DEVICES {
            let device = format!("ups-{d}");
            // A load no UPS can carry.
            let spike = spiked(s, DEVICES) == Some(d);
            let values: Vec<String> = (0..METRICS)
                .map(|m| {
                    let v = if spike && m == 0 {
                        900.0
                    } else {
                        40.0 + ((d + m + s as usize) % 7) as f64 * 0.1
                    };
                    let name = if m == 0 {
                        "load_pct".to_owned()
                    } else {
                        format!("m{m}")
                    };
                    format!("\"{name}\":{v}")
                })
                .collect();
            if spike {
                run.spikes.lock().unwrap().insert(device.clone(), now_ms());
            }
            let body = format!(
                "{{\"ts\":\"{}\",\"values\":{{{}}}}}",
                format_ts(ts),
                values.join(",")
            );
            client
                .publish(
                    format!("wattchdog/load/ups/{device}"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .unwrap();
        }
        tokio::time::sleep_until((run.t0 + Duration::from_secs(s + 1)).into()).await;
    }
    run.report("MQTT", DEVICES * METRICS).await;
}

/// Healthy UPS readings that move a little each second (a value that never moves is a
/// stuck sensor to the flatline detector), and the spikes the bench asks for.
struct Ups {
    second: i64,
    /// Devices (by index) to serve a 900 % load, each until a wall time (ms).
    spikes: Arc<Mutex<Vec<(usize, i64)>>>,
}

impl Plant for Ups {
    fn advance(&mut self, images: &mut [DeviceImage]) {
        let second = now_ms() / 1000;
        if second == self.second {
            return;
        }
        self.second = second;
        let spikes = self.spikes.lock().unwrap().clone();
        for (i, img) in images.iter_mut().enumerate() {
            let spike = spikes.iter().any(|&(d, until)| d == i && until > now_ms());
            let w = ((i as i64 + second) % 7) as f64;
            for (metric, v) in [
                ("battery_voltage_v", 545.0 + w * 0.1),
                ("battery_temp_c", 24.0 + w * 0.03),
                ("battery_charge_pct", 100.0 - w * 0.1),
                ("input_voltage_v", 230.0 + w * 0.2),
                ("input_frequency_hz", 50.0 + w * 0.002),
                ("output_voltage_v", 230.0 + w * 0.1),
                ("load_pct", if spike { 900.0 } else { 40.0 + w * 0.1 }),
                ("input_power_kw", 42.0 + w * 0.1),
                ("output_power_kw", 40.0 + w * 0.1),
                ("on_battery", 0.0),
                ("bypass_active", 0.0),
            ] {
                img.set(metric, v);
            }
        }
    }

    fn command(&mut self, _: &mut [DeviceImage], _: WireEvent) {}
}

/// 456 UPSs served by two Modbus TCP gateways, polled every second.
async fn over_modbus(bin: &std::path::Path) {
    let map = wattchdog::protocol::profiles::named("ups-generic").expect("built-in profile");
    let points = map.registers.iter().filter(|r| r.poll).count();
    let mut collect = String::from("[modbus]\nsite = \"load\"\ninterval = \"1s\"\nmax_gap = 16\n");
    let mut gateways = Vec::new();
    let mut spikes = Vec::new();
    for g in 0..GATEWAYS {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let devices = (0..PER_GATEWAY)
            .map(|u| {
                let name = format!("ups-{g}-{u}");
                collect += &format!(
                    "[[modbus.devices]]\nname = \"{name}\"\naddress = \"{addr}\"\nunit = {}\nprofile = \"ups-generic\"\n",
                    u + 1
                );
                (name, DeviceImage::new(map.clone()))
            })
            .collect();
        let spiked = Arc::new(Mutex::new(Vec::new()));
        let plant = Ups {
            second: 0,
            spikes: spiked.clone(),
        };
        gateways.push(GatewayHandle::start(
            listener,
            devices,
            plant,
            Arc::default(),
        ));
        spikes.push(spiked);
    }
    let run = Run::start(bin, &collect, Since::Stamped).await;
    for s in 0..SECONDS {
        if let Some(d) = spiked(s, GATEWAYS * PER_GATEWAY) {
            let (g, u) = (d / PER_GATEWAY, d % PER_GATEWAY);
            // Served from the next wall second on, for one or two polls.
            spikes[g].lock().unwrap().push((u, now_ms() + 1_500));
            run.spikes
                .lock()
                .unwrap()
                .insert(format!("ups-{g}-{u}"), now_ms());
        }
        tokio::time::sleep_until((run.t0 + Duration::from_secs(s + 1)).into()).await;
    }
    run.report("Modbus", GATEWAYS * PER_GATEWAY * points).await;
    for g in gateways {
        g.stop();
    }
}

fn main() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wattchdog");
    if !bin.exists() {
        eprintln!("build the release binary first: cargo build --release");
        return;
    }
    let only = std::env::args()
        .skip(1)
        .find(|a| a == "mqtt" || a == "modbus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if only.as_deref() != Some("modbus") {
            over_mqtt(&bin).await;
        }
        if only.as_deref() != Some("mqtt") {
            over_modbus(&bin).await;
        }
    });
}
