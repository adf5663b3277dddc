//! Interop with pymodbus, an independent Modbus implementation: the poller decodes what
//! pymodbus serves, and a pymodbus client reads and writes the simulated devices. Under
//! `CI=true` a missing pymodbus fails these tests.

use crate::support::{
    capture_readings, command_ok, free_port, pymodbus_available, repo, serve_facility,
    wait_for_port, Peer,
};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use wattchdog::model::Quality;
use wattchdog::source::modbus::{Collector, PollSettings};
use wattchdog::time::Clock;
use wattchdog::Config;

fn python(script: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo(&format!("tests/interop/{script}")));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_decodes_every_type_and_order_pymodbus_serves() {
    if !pymodbus_available() {
        return;
    }
    let port = free_port();
    let profile = repo("tests/fixtures/modbus/every-type.toml");
    let values_path = repo("tests/fixtures/modbus/every-type.values.json");
    let _server = Peer(
        python("modbus_server.py")
            .args(["--port", &port.to_string(), "--unit", "7", "--profile"])
            .arg(&profile)
            .arg("--values")
            .arg(&values_path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, Duration::from_secs(20));
    let text = format!(
        "[modbus]\nsite = \"lab\"\ninterval = \"200ms\"\n\
         [[modbus.devices]]\nname = \"dut\"\naddress = \"127.0.0.1:{port}\"\nunit = 7\nprofile = {:?}\n",
        profile.display().to_string()
    );
    let cfg = Config::from_toml_str(&text, "t").unwrap();
    let plans = cfg.modbus.resolve(std::path::Path::new("."), "t").unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let settings = PollSettings {
        clock: Clock::wall(),
        backoff_min: 50,
        backoff_max: 500,
    };
    let collector = Collector::start(plans, 1, settings, tx);
    let expected: std::collections::BTreeMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(&values_path).unwrap()).unwrap();
    let mut got = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < expected.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => {
                for r in batch {
                    assert_eq!(r.quality, Quality::Good, "{r:?}");
                    got.insert(r.metric.to_string(), r.value);
                }
            }
            _ => break,
        }
    }
    let counts = collector.stop().await;
    assert_eq!(counts[0].exceptions, 0, "{counts:?}");
    for (metric, want) in &expected {
        let v = got
            .get(metric)
            .unwrap_or_else(|| panic!("{metric} never read"));
        let tol = if metric.starts_with("f32") {
            1e-6
        } else {
            1e-9
        };
        assert!(
            (v - want).abs() <= tol * want.abs().max(1.0),
            "{metric}: read {v}, pymodbus served {want}"
        );
    }
}

#[test]
fn a_pymodbus_client_reads_and_writes_the_simulated_devices() {
    if !pymodbus_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, capture, run_toml) = serve_facility(dir.path());
    let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&run_toml).unwrap()).unwrap();
    let devices = cfg["modbus"]["devices"].as_array().unwrap();
    let chiller = devices
        .iter()
        .find(|d| d["name"].as_str() == Some("chiller-2"))
        .unwrap();
    let unit = chiller["unit"].as_integer().unwrap().to_string();
    let port = chiller["address"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    let client = |args: &[&str]| -> serde_json::Value {
        let out = command_ok(
            python("modbus_client.py")
                .args(["--port", &port, "--unit", &unit])
                .args(args),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Supply and return water as signed hundredths of °C (chiller-generic 1000-1001).
    let words = client(&["read", "holding", "1000", "2"]);
    let w: Vec<u16> = serde_json::from_value(words["words"].clone()).unwrap();
    let supply = f64::from(w[0] as i16) / 100.0;
    let truth = capture_readings(&std::fs::read_to_string(&capture).unwrap());
    assert!(
        truth.iter().any(|(_, d, m, v)| d == "chiller-2"
            && m == "supply_temp_c"
            && (v - supply).abs() < 0.006),
        "pymodbus read supply {supply} °C, which the plant never reported"
    );
    // A measured value is not writable; the setpoint is, and the plant follows it.
    assert!(client(&["write-register", "1000", "0"])
        .get("error")
        .is_some());
    assert_eq!(client(&["write-register", "1201", "1300"])["ok"], true);
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(&capture).unwrap();
    let command = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "command" && v["function"] == 6 && v["address"] == 1201)
        .expect("the write is reported as a command");
    assert_eq!(command["device"], "chiller-2");
    assert_eq!(command["client"], "127.0.0.1");
    assert_eq!(command["values"], serde_json::json!([1300]));
    assert!(capture_readings(&text)
        .iter()
        .any(|(_, d, m, v)| d == "chiller-2" && m == "setpoint_c" && *v == 13.0));
    let refused = text
        .lines()
        .filter(|l| l.contains("\"command\"") && l.contains("\"address\":1000"))
        .count();
    assert_eq!(refused, 1, "a refused write is still reported");
}
