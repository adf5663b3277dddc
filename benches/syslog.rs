//! The syslog sink: what one message costs to make (CEF, JSON, OCSF), and alerts per
//! second from the store's outbox to a receiver on loopback TCP, all in (the store's
//! commit of each snapshot and its queue entry, the worker's batches, the octet-counted
//! frames read back by the receiver).
//!
//! `cargo bench --bench syslog`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use wattchdog::correlate::Output;
use wattchdog::model::{attack, Alert, AlertStatus, Role, Severity};
use wattchdog::sink::syslog::{Renderer, SyslogSink};

fn alert(n: usize) -> Alert {
    Alert {
        id: format!("al-{n:016x}"),
        ts: 1_780_000_000_000 + n as i64,
        detected_at: "2026-12-03T10:00:00.000Z".into(),
        site: "ams1".into(),
        device: "chiller-2".into(),
        kind: "chiller".into(),
        metrics: vec!["setpoint_c".into()],
        detector: "protocol",
        score: 3.0,
        threshold: 1.0,
        severity: Severity::High,
        technique: attack::MANIPULATION_OF_CONTROL,
        summary: "10.66.0.99 wrote register 1201 of chiller-2 (function 6, value [1550]) but is not a known writer".into(),
        evidence: serde_json::json!({"client": "10.66.0.99", "function": 6, "address": 1201, "values": [1550]}),
        incident_id: "in-0000000000000001".into(),
        role: Role::Cause,
        status: AlertStatus::Open,
        last_seen: 1_780_000_000_000 + n as i64,
        findings: 1,
        early: false,
    }
}

fn sink(address: &str, payload: &str) -> SyslogSink {
    toml::from_str(&format!(
        "name = \"siem\"\naddress = \"{address}\"\ntransport = \"tcp\"\npayload = \"{payload}\"\nhostname = \"bench\""
    ))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let body = serde_json::to_string(&alert(1)).unwrap();
    let mut g = c.benchmark_group("syslog");
    g.throughput(Throughput::Elements(1));
    for payload in ["cef", "json", "ocsf"] {
        let r = Renderer::new(&sink("127.0.0.1:514", payload));
        g.bench_function(format!("render_{payload}"), |b| {
            b.iter(|| r.render(&body, 1_780_000_000_000).unwrap())
        });
    }
    g.finish();

    // End to end: N alerts stored, delivered, read back.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("syslog_end_to_end");
    const N: usize = 5_000;
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("store_to_tcp_receiver_cef", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_once(N).await;
                }
                total
            })
        })
    });
    g.finish();
}

/// Stores `n` alerts with a syslog sink pointed at a local receiver; the time until the
/// receiver has read all `n` frames.
async fn run_once(n: usize) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut frames, mut pending) = (0usize, Vec::new());
        while frames < n {
            let k = conn.read(&mut buf).await.unwrap();
            assert!(k > 0, "the sink closed after {frames} frames");
            pending.extend_from_slice(&buf[..k]);
            // Octet counting: "<len> <msg>".
            while let Some(sp) = pending.iter().position(|&b| b == b' ') {
                let len: usize = std::str::from_utf8(&pending[..sp])
                    .unwrap()
                    .parse()
                    .unwrap();
                if pending.len() < sp + 1 + len {
                    break;
                }
                pending.drain(..sp + 1 + len);
                frames += 1;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\npath = \"s.db\"\n[[sinks.syslog]]\nname = \"siem\"\naddress = \"{addr}\"\ntransport = \"tcp\"\nhostname = \"bench\"\n"
    );
    let cfg = wattchdog::Config::from_toml_str(&text, "bench").unwrap();
    let soc = wattchdog::app::soc::Soc::start(&cfg.soc, dir.path(), "bench")
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..n {
        soc.output(&Output::Alert(alert(i))).unwrap();
    }
    receiver.await.unwrap();
    let took = start.elapsed();
    soc.stop().await;
    took
}

criterion_group!(benches, bench);
criterion_main!(benches);
