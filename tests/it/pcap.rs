//! Packet captures made from real traffic: pymodbus clients (the BMS polling, a rogue
//! workstation writing a setpoint, a scanner walking unit ids) talk to the simulated
//! devices on loopback while tcpdump captures; the capture is then replayed and must give
//! the values the plant served and the detections the traffic deserves. Under `CI=true`
//! a missing tcpdump or pymodbus fails the test.

use crate::support::{
    capture_readings, command_ok, peer_available, pymodbus_available, repo, serve_facility,
    wait_for_file, wattchdog, Peer,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wattchdog::model::event::Event;
use wattchdog::model::points::Registry;
use wattchdog::source::{open_capture, ByteCounter, OpenOptions};
use wattchdog::Config;

pub(crate) fn tcpdump_available() -> bool {
    peer_available(
        "tcpdump (apt-get install tcpdump), run as root",
        Command::new("sh").args([
            "-c",
            "command -v tcpdump && tcpdump -D | grep -q '\\blo\\b'",
        ]),
    )
}

fn traffic(port: u16, source: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo("tests/interop/modbus_traffic.py"))
        .args(["--port", &port.to_string(), "--source", source])
        .args(args);
    c
}

/// The read plan of every configured device, as the pymodbus poller takes it.
fn write_plan(cfg: &Config, dir: &Path) -> std::path::PathBuf {
    let plans = cfg.modbus.resolve(dir, "run.toml").unwrap();
    let plan: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            let reads: Vec<[u16; 3]> = p
                .requests
                .iter()
                .map(|r| [u16::from(r.function()), r.start, r.count])
                .collect();
            serde_json::json!({"unit": p.unit, "reads": reads})
        })
        .collect();
    let path = dir.join("plan.json");
    std::fs::write(&path, serde_json::to_string(&plan).unwrap()).unwrap();
    path
}

/// The served facility's config, the port its devices listen on, and chiller-2's unit.
fn on_the_wire(run_toml: &Path) -> (Config, u16, u8) {
    let cfg = Config::load(run_toml).unwrap();
    let port: u16 = cfg.modbus.devices[0]
        .address
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let chiller = cfg
        .modbus
        .devices
        .iter()
        .find(|d| d.name == "chiller-2")
        .unwrap()
        .unit;
    (cfg, port, chiller)
}

/// tcpdump writing the loopback traffic of `port` to `pcap`, once it is capturing.
fn tcpdump(pcap: &Path, port: u16) -> Peer {
    let dump = Peer(
        Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-U", "-s", "0", "-w"])
            .arg(pcap)
            .args(["tcp", "port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(pcap, Duration::from_secs(10));
    dump
}

#[test]
fn a_tcpdump_capture_of_real_clients_replays_into_readings_commands_and_detections() {
    if !pymodbus_available() || !tcpdump_available() {
        return;
    }
    // Real clients on a wall-clock schedule against a learning window of seconds.
    let _quiet = crate::support::machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let (_server, served, run_toml) = serve_facility(dir.path());
    let (cfg, port, chiller) = on_the_wire(&run_toml);
    let plan = write_plan(&cfg, dir.path());
    let pcap = dir.path().join("wire.pcap");
    let dump = tcpdump(&pcap, port);
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let at = |s: f64| {
        if let Some(wait) = Duration::from_secs_f64(s).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    };
    // The BMS polls every device twice a second for 8 s, and sets a setpoint after its
    // first poll, while the detector learns; a rogue workstation writes the same setpoint
    // later; a scanner walks unit ids 1–40 (the gateway serves fewer).
    let unit = chiller.to_string();
    let bms = traffic(
        port,
        "127.0.0.1",
        &[
            "poll",
            plan.to_str().unwrap(),
            "8",
            "0.5",
            &unit,
            "1201",
            "1200",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    at(5.0);
    command_ok(&mut traffic(
        port,
        "127.0.0.2",
        &["write", &unit, "1201", "1300"],
    ));
    at(6.0);
    command_ok(&mut traffic(port, "127.0.0.3", &["scan", "1", "40"]));
    let polled = bms.wait_with_output().unwrap();
    assert!(polled.status.success());
    std::thread::sleep(Duration::from_millis(500));
    drop(dump);

    // What the capture decodes to, read through the library.
    let how = OpenOptions::from_config(&cfg, None);
    let mut source = open_capture(&pcap, &how, &ByteCounter::default()).unwrap();
    let mut reg = Registry::new(10_000);
    let (mut samples, mut commands) = (Vec::new(), Vec::new());
    while let Some(ev) = source.next_event(&mut reg) {
        match ev {
            Event::Sample { point, value, .. } => {
                let p = reg.point(point);
                let d = reg.device(p.device);
                samples.push((d.name.clone(), p.metric.clone(), value));
            }
            Event::Command(c) => commands.push(*c),
            Event::Traffic(_) => {}
        }
    }
    let stats = source.stats();
    assert_eq!(stats.bad_total(), 0, "{:?}", stats.first_bad);
    let wire = stats.wire.clone().unwrap();
    assert!(wire.requests > 100 && wire.exceptions >= 20, "{wire:?}");
    let truth = capture_readings(&std::fs::read_to_string(&served).unwrap());
    let supply: Vec<f64> = samples
        .iter()
        .filter(|(d, m, _)| d == "chiller-2" && m == "supply_temp_c")
        .map(|s| s.2)
        .collect();
    assert!(supply.len() >= 10, "{} supply readings", supply.len());
    for v in &supply {
        assert!(
            truth.iter().any(|(_, d, m, t)| d == "chiller-2"
                && m == "supply_temp_c"
                && (t - v).abs() < 0.006),
            "decoded supply {v} °C, which the plant never served"
        );
    }
    let writes: Vec<_> = commands
        .iter()
        .map(|c| {
            (
                c.client.as_str(),
                c.device.as_str(),
                c.function,
                c.address,
                c.values.clone(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("127.0.0.1", "chiller-2", 6, 1201, vec![1200]),
            ("127.0.0.2", "chiller-2", 6, 1201, vec![1300])
        ]
    );

    // The replay: the rogue write and the scan are found; the BMS is not blamed.
    let test_toml = dir.path().join("test.toml");
    let mut text = std::fs::read_to_string(&run_toml).unwrap();
    text.push_str("\n[detectors.protocol]\nlearn = \"3s\"\n");
    std::fs::write(&test_toml, text).unwrap();
    let out = command_ok(
        wattchdog()
            .args(["replay", "--json", "-c"])
            .arg(&test_toml)
            .arg(&pcap),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let protocol: Vec<&serde_json::Value> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["detector"] == "protocol")
        .collect();
    let by = |client: &str, technique: &str| {
        protocol
            .iter()
            .any(|a| a["evidence"]["client"] == client && a["technique"]["id"] == technique)
    };
    assert!(
        by("127.0.0.2", "T0836"),
        "rogue write not found: {protocol:#?}"
    );
    assert!(by("127.0.0.3", "T0846"), "scan not found: {protocol:#?}");
    assert!(
        protocol
            .iter()
            .all(|a| a["evidence"]["client"] != "127.0.0.1"),
        "the BMS was blamed: {protocol:#?}"
    );
    assert!(report["readings"].as_u64().unwrap() > 100);
}

/// A responder's short captures, replayed with the default hour of learning (which
/// covers each whole) and no device map, only the port to read as Modbus: roles come
/// from behaviour. A host that only writes, and a host sweeping registers, each raise
/// one incident naming it; the master polling and writing, and a second master doing
/// the same, raise none.
#[test]
fn short_captures_are_judged_by_behaviour_before_anything_is_learned() {
    if !pymodbus_available() || !tcpdump_available() {
        return;
    }
    let _quiet = crate::support::machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let (_server, _served, run_toml) = serve_facility(dir.path());
    let (cfg, port, chiller) = on_the_wire(&run_toml);
    let unit = chiller.to_string();
    let plan = write_plan(&cfg, dir.path());
    let plan = plan.to_str().unwrap();
    let ports = dir.path().join("ports.toml");
    std::fs::write(&ports, format!("[pcap]\nports = [{port}]\n")).unwrap();
    // Eight seconds of the master polling twice a second and writing a setpoint after
    // its first poll, and `others` (from, source, what) meanwhile; returns the incidents
    // of its replay: id → the clients their alerts name.
    let story = |name: &str, others: &[(f64, &str, &[&str])]| {
        let pcap = dir.path().join(format!("{name}.pcap"));
        let dump = tcpdump(&pcap, port);
        std::thread::sleep(Duration::from_millis(700));
        let started = Instant::now();
        let at = |s: f64| {
            if let Some(wait) = Duration::from_secs_f64(s).checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        };
        let master = traffic(
            port,
            "127.0.0.1",
            &["poll", plan, "8", "0.5", &unit, "1201", "1200"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let others: Vec<_> = others
            .iter()
            .map(|&(from, source, args)| {
                at(from);
                traffic(port, source, args)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for o in others {
            assert!(o.wait_with_output().unwrap().status.success());
        }
        assert!(master.wait_with_output().unwrap().status.success());
        std::thread::sleep(Duration::from_millis(500));
        drop(dump);
        let alerts = dir.path().join(format!("{name}.alerts.jsonl"));
        let out = command_ok(
            wattchdog()
                .args(["replay", "--no-progress", "-c"])
                .arg(&ports)
                .arg(&pcap)
                .arg("--alerts")
                .arg(&alerts),
        );
        // The summary says how it judged.
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains("the capture is shorter than `learn` (1h00m)")
                && summary.contains("polling masters: 127.0.0.1"),
            "{summary}"
        );
        incidents_naming(&alerts)
    };
    let one_naming =
        |incidents: &std::collections::BTreeMap<_, std::collections::BTreeSet<String>>,
         client: &str| {
            assert_eq!(incidents.len(), 1, "{incidents:?}");
            let named = incidents.values().next().unwrap();
            assert!(
                named.len() == 1 && named.contains(client),
                "one incident naming {client}: {incidents:?}"
            );
        };
    // A host that only writes: once, at 4 s.
    let rogue = story(
        "rogue",
        &[(4.0, "127.0.0.2", &["write", &unit, "1201", "1300"])],
    );
    one_naming(&rogue, "127.0.0.2");
    // A register-mapping tool walking 200 holding registers of the chiller.
    let sweep = story(
        "sweep",
        &[(3.0, "127.0.0.3", &["sweep", &unit, "0", "199"])],
    );
    one_naming(&sweep, "127.0.0.3");
    // A second master: it polls from 3 s for 4 s and writes a setpoint after its first
    // poll.
    let masters = story(
        "masters",
        &[(
            3.0,
            "127.0.0.4",
            &["poll", plan, "4", "0.5", &unit, "1201", "1250"],
        )],
    );
    assert!(masters.is_empty(), "legitimate masters blamed: {masters:?}");

    // A baseline learned from the masters' capture judges the rogue's from its first
    // packet, with the rules that need learning.
    let baseline = dir.path().join("baseline.toml");
    command_ok(
        wattchdog()
            .args(["learn", "-c"])
            .arg(&ports)
            .arg(dir.path().join("masters.pcap"))
            .arg("-o")
            .arg(&baseline),
    );
    let alerts = dir.path().join("judged.alerts.jsonl");
    let out = command_ok(
        wattchdog()
            .args(["replay", "--no-progress", "-c"])
            .arg(&ports)
            .arg(dir.path().join("rogue.pcap"))
            .arg("--baseline")
            .arg(&baseline)
            .arg("--alerts")
            .arg(&alerts),
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("judged against a baseline"), "{summary}");
    let judged = incidents_naming(&alerts);
    one_naming(&judged, "127.0.0.2");
    let text = std::fs::read_to_string(&alerts).unwrap();
    assert!(text.contains("but is not a known writer"), "{text}");
}

/// The incidents of an alert file: id → the clients their alerts name.
fn incidents_naming(
    alerts: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut incidents: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> =
        Default::default();
    for line in std::fs::read_to_string(alerts).unwrap().lines() {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let client = a["evidence"]["client"].as_str().unwrap_or("-").to_owned();
        incidents
            .entry(a["incident_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(client);
    }
    incidents
}

/// The checked-in capture (`scripts/capture-modbus.sh`): tcpdump of pymodbus clients on
/// loopback. Same story as above, on bytes that no longer change.
#[test]
fn the_checked_in_loopback_capture_replays_to_the_same_story() {
    let cfg = repo("tests/fixtures/pcap/loopback.toml");
    let out = command_ok(
        wattchdog()
            .args(["replay", "--json", "-c"])
            .arg(&cfg)
            .arg(repo("tests/fixtures/pcap/loopback.pcap")),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bad_lines"], 0);
    let wire = &r["files"][0]["wire"];
    assert_eq!(
        (wire["requests"].as_u64(), wire["unanswered"].as_u64()),
        (Some(118), Some(0))
    );
    assert_eq!(
        (r["readings"].as_u64(), r["commands"].as_u64()),
        (Some(348), Some(2))
    );
    let alerts = r["alerts"].as_array().unwrap();
    let found: Vec<(&str, &str, &str)> = alerts
        .iter()
        .map(|a| {
            (
                a["device"].as_str().unwrap(),
                a["technique"]["id"].as_str().unwrap(),
                a["evidence"]["client"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("chiller-2", "T0836", "127.0.0.2"),
            ("pdu-1", "T0846", "127.0.0.3")
        ],
        "{alerts:#?}"
    );
    assert!(alerts[1]["summary"].as_str().unwrap().contains("127.0.0.3"));
}

/// `simulate -o x.pcap` makes labelled Modbus/TCP captures; `eval` scores them like any
/// other capture.
#[test]
fn simulated_packet_captures_are_labelled_and_scored() {
    let _quiet = crate::support::machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wire.pcap");
    let cfg = dir.path().join("wire.toml");
    command_ok(
        wattchdog()
            .args(["simulate", "--hours", "4", "--seed", "4", "-o"])
            .arg(&pcap)
            .args(["--attacks", "modbus-recon,ups-forced-bypass"])
            .arg("--write-config")
            .arg(&cfg),
    );
    assert!(dir.path().join("wire.labels.json").exists());
    let out = command_ok(
        wattchdog()
            .arg("eval")
            .arg(&pcap)
            .arg("-c")
            .arg(&cfg)
            .arg("--json"),
    );
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(score["recall"], 1.0, "{score:#}");
    assert_eq!(score["false_incidents"], 0, "{score:#}");
}
