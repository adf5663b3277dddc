//! Load test of the live path with the SOC surface: 5,000 points at 1 Hz published to
//! the embedded MQTT broker, `wattchdog run` (the release binary, its own process) with
//! the store, the HTTP server, 10 SSE clients and a webhook receiver. From 10 s on, every 2 s, one
//! point jumps outside its physical limits; the latency is from the moment that reading
//! is published to the alert arriving on each SSE client and at the webhook receiver
//! (the first snapshot: an early alert, raised on the reading's arrival). The config is
//! the default but for the sinks (so a 5 s reorder wait). Prints the run's CPU and peak
//! memory.
//!
//! `cargo build --release && cargo bench --bench soc_load` (about 90 s)

use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wattchdog::time::format_ts;

const DEVICES: usize = 500;
const METRICS: usize = 10;
const SECONDS: u64 = 60;
const TOKEN: &str = "load-test-token-0123456789";

/// Wall ms when each spike was published, by device.
type Spikes = Arc<Mutex<HashMap<String, i64>>>;

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

/// Reads SSE from the run and records the latency of each first alert of a spiked device.
async fn sse_client(port: u16, spikes: Spikes, out: Arc<Mutex<Vec<i64>>>) {
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
    let mut alert = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("event: alert") {
            alert = true;
        } else if alert && line.starts_with("data:") {
            alert = false;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[5..]) else {
                continue;
            };
            let device = v["device"].as_str().unwrap_or("").to_owned();
            let at = spikes.lock().unwrap().get(&device).copied();
            if let Some(at) = at {
                if v["detector"] == "limits" && seen.insert(device) {
                    out.lock().unwrap().push(now_ms() - at);
                }
            }
        }
    }
}

/// A webhook receiver answering 204; records the latency of each first delivery.
async fn receiver(listener: TcpListener, spikes: Spikes, out: Arc<Mutex<Vec<i64>>>) {
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
                    let device = v["device"].as_str().unwrap_or("").to_owned();
                    let at = spikes.lock().unwrap().get(&device).copied();
                    if let Some(at) = at {
                        if v["detector"] == "limits" && seen.lock().unwrap().insert(device) {
                            out.lock().unwrap().push(now_ms() - at);
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

fn main() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wattchdog");
    if !bin.exists() {
        eprintln!("build the release binary first: cargo build --release");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = wattchdog::app::broker::start(0, None, 1 << 30).expect("broker");
        let hook = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_port = hook.local_addr().unwrap().port();
        let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("load.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = \"load.db\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\ntoken = \"{TOKEN}\"\n\
                 [[webhooks]]\nname = \"load\"\nurl = \"http://127.0.0.1:{hook_port}/\"\nsecret = \"load-secret-0123456789\"\n\
                 [[mqtt.brokers]]\nurl = \"mqtt://{broker}\"\nmap = \"wattchdog-sim\"\nclient_id = \"load-run\"\n"
            ),
        )
        .unwrap();
        let mut run = std::process::Command::new(&bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .args(["--alerts", "/dev/null"])
            .spawn()
            .expect("run starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", http_port)).await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let spikes: Spikes = Arc::default();
        let sse_lat = Arc::new(Mutex::new(Vec::new()));
        let hook_lat = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(receiver(hook, spikes.clone(), hook_lat.clone()));
        for _ in 0..10 {
            tokio::spawn(sse_client(http_port, spikes.clone(), sse_lat.clone()));
        }
        let mut opts = MqttOptions::new("load-pub", broker.ip().to_string(), broker.port());
        opts.set_inflight(1000).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 10_000);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let (cpu0, _) = usage(run.id());
        let t0 = Instant::now();
        for s in 0..SECONDS {
            let ts = now_ms();
            for d in 0..DEVICES {
                let device = format!("ups-{d}");
                // From 10 s on, every 2 s, one device reports a load no UPS can carry.
                let spike = s >= 10 && s % 2 == 0 && d == (s as usize * 7) % DEVICES;
                let values: Vec<String> = (0..METRICS)
                    .map(|m| {
                        let v = if spike && m == 0 { 900.0 } else { 40.0 + ((d + m + s as usize) % 7) as f64 * 0.1 };
                        let name = if m == 0 { "load_pct".to_owned() } else { format!("m{m}") };
                        format!("\"{name}\":{v}")
                    })
                    .collect();
                if spike {
                    spikes.lock().unwrap().insert(device.clone(), now_ms());
                }
                let body = format!("{{\"ts\":\"{}\",\"values\":{{{}}}}}", format_ts(ts), values.join(","));
                client
                    .publish(format!("wattchdog/load/ups/{device}"), QoS::AtLeastOnce, false, body)
                    .await
                    .unwrap();
            }
            tokio::time::sleep_until((t0 + Duration::from_secs(s + 1)).into()).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu1, rss) = usage(run.id());
        let wall = t0.elapsed().as_secs_f64();
        let _ = run.kill();
        let _ = run.wait();
        let mut sse = sse_lat.lock().unwrap().clone();
        let mut hooks = hook_lat.lock().unwrap().clone();
        println!(
            "{} points at 1 Hz for {SECONDS} s, 10 SSE clients, 1 webhook receiver: run used {:.1} % of a core, peak RSS {:.1} MB",
            DEVICES * METRICS,
            (cpu1 - cpu0) / wall * 100.0,
            rss as f64 / 1024.0
        );
        println!(
            "reading published → alert on SSE: p50 {} ms, p99 {} ms, max {} ms ({} observations over 10 clients); → webhook received: p50 {} ms, p99 {} ms, max {} ms ({} alerts)",
            percentile(&mut sse, 0.5),
            percentile(&mut sse, 0.99),
            percentile(&mut sse, 1.0),
            sse.len(),
            percentile(&mut hooks, 0.5),
            percentile(&mut hooks, 0.99),
            percentile(&mut hooks, 1.0),
            hooks.len()
        );
    });
}
