//! Interop with bacpypes3, an independent BACnet/IP stack: the collector discovers,
//! reads and subscribes to a bacpypes3 device laid out from a shipped object map, and a
//! bacpypes3 client discovers and reads the simulator's served chiller. Under `CI=true`
//! a missing bacpypes3 fails these tests.

use crate::support::{free_udp_port, peer_available, repo, Peer};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use wattchdog::model::{Quality, Reading};
use wattchdog::source::bacnet::BacnetCollector;
use wattchdog::source::poll::PollSettings;
use wattchdog::time::Clock;
use wattchdog::Config;

fn bacpypes3_available() -> bool {
    peer_available(
        "bacpypes3 (pip install bacpypes3)",
        Command::new("python3").args(["-c", "import bacpypes3"]),
    )
}

/// Waits for `line` on a peer's standard output.
fn expect_line(out: &mut impl BufRead, line: &str) {
    let mut got = String::new();
    loop {
        got.clear();
        assert!(
            out.read_line(&mut got).unwrap() > 0,
            "the peer exited before saying {line:?}"
        );
        if got.trim() == line {
            return;
        }
    }
}

async fn next_batch(rx: &mut mpsc::Receiver<Vec<Reading>>, within: Duration) -> Vec<Reading> {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("no readings in time")
        .expect("collector stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_reads_and_subscribes_to_a_bacpypes3_device() {
    if !bacpypes3_available() {
        return;
    }
    let port = free_udp_port();
    let profile = repo("protocols/bacnet/chiller-bacnet.toml");
    let dir = tempfile::tempdir().unwrap();
    let values: BTreeMap<&str, f64> = [
        ("supply_temp_c", 7.25),
        ("return_temp_c", 12.5),
        ("flow_lps", 110.0),
        ("power_kw", 410.5),
        ("running", 1.0),
        ("setpoint_c", 7.0),
    ]
    .into();
    let values_path = dir.path().join("values.json");
    std::fs::write(&values_path, serde_json::to_string(&values).unwrap()).unwrap();
    let mut peer = Peer(
        Command::new("python3")
            .arg(repo("tests/interop/bacnet_device.py"))
            .args(["--port", &port.to_string(), "--instance", "1201"])
            .arg("--profile")
            .arg(&profile)
            .arg("--values")
            .arg(&values_path)
            .args(["--fault", "return_temp_c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(peer.0.stdout.take().unwrap());
    expect_line(&mut out, "ready");
    // One poll an hour: after the first cycle, only COV notifications bring readings.
    let text = format!(
        "[bacnet]\nsite = \"lab\"\ninterval = \"1h\"\ntimeout = \"2s\"\n\
         [[bacnet.devices]]\nname = \"chiller-1\"\naddress = \"127.0.0.1:{port}\"\nprofile = \"chiller-bacnet\"\n"
    );
    let cfg = Config::from_toml_str(&text, "t").unwrap();
    let plans = cfg.bacnet.resolve(std::path::Path::new("."), "t").unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let settings = PollSettings {
        clock: Clock::wall(),
        backoff_min: 50,
        backoff_max: 500,
    };
    let collector = BacnetCollector::start(&cfg.bacnet, plans, settings, tx);
    // A subscription's first notification, then the poll (order not promised).
    let mut got: BTreeMap<String, (f64, Quality)> = BTreeMap::new();
    while got.len() < values.len() {
        for r in next_batch(&mut rx, Duration::from_secs(20)).await {
            got.insert(r.metric, (r.value, r.quality));
        }
    }
    for (metric, want) in &values {
        let (v, q) = got[*metric];
        if *metric == "return_temp_c" {
            // bacpypes3 reports the object in fault: the value is not trusted.
            assert_eq!(q, Quality::Bad, "{metric}");
        } else {
            assert_eq!(q, Quality::Good, "{metric}");
            assert!(
                (v - want).abs() < 1e-4,
                "{metric}: read {v}, bacpypes3 served {want}"
            );
        }
    }
    // The poll cycle subscribed before it read: a change now arrives by COV.
    let mut stdin = peer.0.stdin.take().unwrap();
    writeln!(stdin, "supply_temp_c=9.5").unwrap();
    expect_line(&mut out, "changed");
    // (Earlier notifications of the old value may still be queued.)
    let cov = loop {
        let batch = next_batch(&mut rx, Duration::from_secs(10)).await;
        let new = |r: &&Reading| r.metric == "supply_temp_c" && (r.value - 9.5).abs() < 1e-4;
        if let Some(r) = batch.iter().find(new) {
            break r.clone();
        }
    };
    assert_eq!(cov.quality, Quality::Good);
    let counts = collector.stop().await;
    let c = &counts[0];
    assert_eq!(
        (c.connects, c.exceptions, c.transport_errors),
        (1, 0, 0),
        "{c:?}"
    );
    assert!(c.notifications >= 1, "{c:?}");
}
