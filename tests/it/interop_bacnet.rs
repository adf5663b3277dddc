//! Interop with bacpypes3, an independent BACnet/IP stack: the collector discovers,
//! reads and subscribes to a bacpypes3 device laid out from a shipped object map, and a
//! bacpypes3 client discovers and reads the simulator's served chiller. Under `CI=true`
//! a missing bacpypes3 fails these tests.

use crate::support::{
    capture_readings, command_ok, free_udp_port, peer_available, repo, wait_for_file, wattchdog,
    Peer,
};
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
            got.insert(r.metric.to_string(), (r.value, r.quality));
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
        let new = |r: &&Reading| &*r.metric == "supply_temp_c" && (r.value - 9.5).abs() < 1e-4;
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

#[test]
fn a_bacpypes3_client_discovers_reads_and_writes_the_served_chiller() {
    if !bacpypes3_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("served.jsonl");
    let (mut server, cfg) = serve_bacnet_facility(dir.path(), &capture);
    let (address, instance) = served(&cfg, "chiller-1");
    let objects = "analog-input:1,analog-input:2,binary-input:1,analog-value:1";
    let out = command_ok(
        Command::new("python3")
            .arg(repo("tests/interop/bacnet_client.py"))
            .args(["--device", &address, "--instance", &instance.to_string()])
            .args(["--objects", objects])
            .args([
                "--write",
                "analog-input:1=3",
                "--write",
                "analog-value:1=8.5",
            ]),
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The capture is flushed every simulated second: wait for the write and the plant's
    // answer to it to be in it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&capture)
        .unwrap()
        .contains("\"setpoint_c\",\"value\":8.5")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached the plant"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.0.kill().unwrap();
    let _ = server.0.wait();
    assert_eq!(got["iam"], instance);
    assert_eq!(got["name"], "chiller-1");
    let list: Vec<&str> = got["object_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for o in objects.split(',') {
        assert!(
            list.contains(&o.replace(':', ",").as_str()),
            "{o} in {list:?}"
        );
    }
    // What bacpypes3 read lies among the values the plant had while it read.
    let readings = capture_readings(&std::fs::read_to_string(&capture).unwrap());
    let range = |metric: &str| {
        let v: Vec<f64> = readings
            .iter()
            .filter(|(_, d, m, _)| d == "chiller-1" && m == metric)
            .map(|r| r.3)
            .collect();
        assert!(!v.is_empty(), "{metric} in the capture");
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo - 1e-3, hi + 1e-3)
    };
    for (object, metric) in [
        ("analog-input,1", "supply_temp_c"),
        ("analog-input,2", "return_temp_c"),
    ] {
        let (lo, hi) = range(metric);
        for how in ["read", "rpm"] {
            let v = got[how][object].as_f64().unwrap();
            assert!(
                (lo..=hi).contains(&v),
                "{how} {object} = {v}, plant {lo}..{hi}"
            );
        }
    }
    assert_eq!(got["read"]["binary-input,1"], "active");
    assert_eq!(got["rpm"]["analog-value,1"], got["read"]["analog-value,1"]);
    // A measured value is refused; the commandable setpoint is taken, drives the plant
    // and is recorded as a BACnet command in the capture.
    let refused = got["writes"]["analog-input,1"].as_str().unwrap();
    assert!(refused.contains("write-access-denied"), "{refused}");
    assert_eq!(got["writes"]["analog-value,1"], "ok");
    let text = std::fs::read_to_string(&capture).unwrap();
    let command = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["type"] == "command")
        .expect("the write in the capture");
    assert_eq!(command["protocol"], "bacnet");
    assert_eq!(command["device"], "chiller-1");
    assert_eq!(command["property"], 85);
    assert_eq!(command["value"], 8.5);
    let setpoint = readings
        .iter()
        .rfind(|(_, d, m, _)| d == "chiller-1" && m == "setpoint_c")
        .unwrap();
    assert_eq!(setpoint.3, 8.5, "the plant follows the written setpoint");
}

/// The served facility (chillers over BACnet/IP) and its `--write-config` file; the
/// server keeps running until dropped.
fn serve_bacnet_facility(dir: &std::path::Path, capture: &std::path::Path) -> (Peer, toml::Value) {
    let run_toml = dir.join("run.toml");
    let server = Peer(
        wattchdog()
            .args(["simulate", "--serve-modbus", "127.0.0.1:0"])
            .args(["--serve-bacnet", "127.0.0.1:0", "--bacnet-kinds", "chiller"])
            .args([
                "--speed",
                "10",
                "--hours",
                "0.5",
                "--seed",
                "3",
                "--attacks",
                "none",
            ])
            .arg("-o")
            .arg(capture)
            .arg("--write-config")
            .arg(&run_toml)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&run_toml, Duration::from_secs(20));
    let cfg = toml::from_str(&std::fs::read_to_string(&run_toml).unwrap()).unwrap();
    (server, cfg)
}

/// A device of the `[bacnet]` section: (address, instance).
fn served(cfg: &toml::Value, name: &str) -> (String, i64) {
    let d = cfg["bacnet"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{name} served over BACnet"));
    (
        d["address"].as_str().unwrap().to_owned(),
        d["instance"].as_integer().unwrap(),
    )
}

#[test]
fn a_tcpdump_capture_of_bacnet_writes_replays_into_commands_and_detections() {
    if !bacpypes3_available() || !crate::pcap::tcpdump_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, cfg) = serve_bacnet_facility(dir.path(), &dir.path().join("served.jsonl"));
    let (address, instance) = served(&cfg, "chiller-1");
    let port = address.rsplit_once(':').unwrap().1.to_owned();
    let pcap = dir.path().join("bacnet.pcap");
    let dump = Peer(
        Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "0", "-w"])
            .arg(&pcap)
            .args(["udp", "port", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&pcap, Duration::from_secs(10));
    // tcpdump creates the file before it captures: probe (a Who-Is no device answers)
    // until a packet is in the file.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let who_is = [
        0x81, 0x0b, 0x00, 0x0c, 0x01, 0x00, 0x10, 0x08, 0x09, 0x00, 0x19, 0x00,
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).unwrap().len() <= 24 {
        assert!(
            std::time::Instant::now() < deadline,
            "tcpdump captures nothing"
        );
        probe.send_to(&who_is, &address).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // A workstation that is not the BMS: a setpoint, a sensor put out of service (the
    // device refuses: the request is on the wire all the same), and the device silenced.
    let out = command_ok(
        Command::new("python3")
            .arg(repo("tests/interop/bacnet_client.py"))
            .args(["--device", &address, "--instance", &instance.to_string()])
            .args(["--objects", "analog-input:1", "--source", "127.0.0.2"])
            .args(["--write", "analog-value:1=13"])
            .args(["--write", "analog-input:1/out-of-service=1", "--dcc"]),
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["writes"]["analog-value,1"], "ok", "{got}");
    // The last request is on the wire once its answer is: tcpdump writes each packet
    // as it sees it (-U); a probe after it marks the end.
    let size = std::fs::metadata(&pcap).unwrap().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).unwrap().len() == size {
        assert!(
            std::time::Instant::now() < deadline,
            "tcpdump stopped capturing"
        );
        probe.send_to(&who_is, &address).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(dump);
    drop(server);
    let run_toml = dir.path().join("run.toml");
    let out = command_ok(
        wattchdog()
            .args(["replay", "--json", "-c"])
            .arg(&run_toml)
            .arg(&pcap),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bad_lines"], 0, "{r}");
    let wire = &r["files"][0]["wire"];
    assert!(wire["bacnet_datagrams"].as_u64().unwrap() >= 10, "{wire}");
    assert_eq!(wire["bacnet_commands"], 3, "{wire}");
    // The workstation read the supply temperature twice (ReadProperty, then
    // ReadPropertyMultiple): the chiller's answers are two readings through its map (the
    // pipeline may drop the second as a duplicate when both fall in one millisecond).
    assert_eq!(r["files"][0]["readings"], 2, "{r}");
    let alerts = r["alerts"].as_array().unwrap();
    // The setpoint falls in the learning stretch (a short capture has no history); the
    // out-of-service write and the silencing are findings whoever sends them, one alert
    // on the device (the write first, the silencing grows it).
    let on_chiller: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["device"] == "chiller-1" && a["detector"] == "protocol")
        .collect();
    assert_eq!(on_chiller.len(), 1, "{alerts:#?}");
    let a = on_chiller[0];
    assert_eq!(a["technique"]["id"], "T0836", "{a:#}");
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.contains("out-of-service") && summary.contains("127.0.0.2"),
        "{summary}"
    );
    assert_eq!(a["findings"], 2, "the write and the silencing: {a:#}");
}
