//! Interop with net-snmp, an independent SNMP implementation: our collector reads a
//! recorded UPS walk that net-snmp's `snmpd` serves, over v2c and v3 (authPriv,
//! SHA-256/AES); net-snmp's `snmptrap` and `snmpinform` reach our receiver (v1 and
//! v2c); net-snmp's `snmpget`/`snmpbulkwalk`/`snmpset` read our simulated UPS and are
//! refused a write. Under `CI=true` a missing net-snmp fails these tests.

use crate::support::{capture_readings, free_udp_port, peer_available, repo, wait_for_file, Peer};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use wattchdog::model::{Quality, Reading};
use wattchdog::source::poll::PollSettings;
use wattchdog::source::snmp::SnmpCollector;
use wattchdog::time::Clock;
use wattchdog::Config;

const SNMPD: &str = "/usr/sbin/snmpd";

fn net_snmp_available() -> bool {
    peer_available(
        "net-snmp (apt-get install snmp snmpd)",
        Command::new("sh").args([
            "-c",
            "test -x /usr/sbin/snmpd && command -v snmpget && command -v snmptrap",
        ]),
    )
}

/// A net-snmp tool with numeric OIDs and no MIB files (none are installed by default).
fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.env("MIBS", "").arg("-On");
    c
}

fn ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const USER: &str = "wattchdog";
const AUTH: &str = "auth-pass-8c1e";
const PRIV: &str = "priv-pass-55d0";

/// `snmpd` on a loopback port serving `walk` (snmpwalk -On lines) read-only to
/// community `public` and to the v3 user (authPriv, SHA-256/AES-128).
fn snmpd(dir: &Path, walk: &Path) -> (Peer, String) {
    let port = free_udp_port();
    let mut conf = format!(
        "agentAddress udp:127.0.0.1:{port}\nrocommunity public 127.0.0.1\n\
         createUser {USER} SHA-256 \"{AUTH}\" AES \"{PRIV}\"\nrouser {USER} priv\n"
    );
    for line in std::fs::read_to_string(walk).unwrap().lines() {
        let (oid, rest) = line.split_once(" = ").unwrap();
        let (ty, value) = rest.split_once(": ").unwrap();
        let ty = match ty {
            "INTEGER" => "integer",
            "STRING" => "octet_str",
            other => panic!("fixture type {other}"),
        };
        conf += &format!("override {oid} {ty} {value}\n");
    }
    let path = dir.join("snmpd.conf");
    std::fs::write(&path, conf).unwrap();
    let peer = Peer(
        Command::new(SNMPD)
            .args(["-f", "-Lo", "-C", "-c"])
            .arg(&path)
            .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
            .env("MIBS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let address = format!("127.0.0.1:{port}");
    // Up when it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tool("snmpget")
        .args(["-v2c", "-c", "public", "-t", "0.3", "-r", "0"])
        .arg(format!("udp:{address}"))
        .arg(".1.3.6.1.2.1.33.1.2.4.0")
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "snmpd did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    (peer, address)
}

/// The SNMP collector of `toml`, started (its trap socket bound), and its readings.
async fn start(toml: &str) -> (SnmpCollector, mpsc::Receiver<Vec<Reading>>) {
    let cfg = Config::from_toml_str(toml, "t").unwrap();
    let plans = cfg.snmp.resolve(Path::new("."), "t").unwrap();
    let (tx, rx) = mpsc::channel::<Vec<Reading>>(64);
    let settings = PollSettings {
        clock: Clock::wall(),
        backoff_min: 50,
        backoff_max: 500,
    };
    let c = SnmpCollector::start(&cfg.snmp, plans, settings, tx)
        .await
        .unwrap();
    (c, rx)
}

/// A config receiving notifications from one UPS (`device` adds to its entry) on a
/// free port, and that port for net-snmp. Nothing answers polls at the UPS's address
/// (the poll interval is long); its notifications come from 127.0.0.1, the only device
/// at that IP.
fn trap_receiver(device: &str) -> (String, String) {
    let port = free_udp_port();
    let agent = free_udp_port();
    let toml = format!(
        "[snmp]\nsite = \"lab\"\ninterval = \"1h\"\ntrap_listen = \"127.0.0.1:{port}\"\n\
         [[snmp.devices]]\nname = \"ups-1\"\naddress = \"127.0.0.1:{agent}\"\nprofile = \"ups-mib\"\n{device}"
    );
    (toml, format!("udp:127.0.0.1:{port}"))
}

/// Runs the collector of `toml` until every `(device, metric)` of `want` was read
/// good, or 15 s: the last good value of each.
async fn collect(
    toml: &str,
    want: usize,
) -> (
    BTreeMap<(String, String), f64>,
    Vec<wattchdog::source::poll::DeviceCounts>,
    Option<wattchdog::source::snmp::TrapCounts>,
) {
    let (c, mut rx) = start(toml).await;
    let mut got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => {
                for r in batch.into_iter().filter(|r| r.quality == Quality::Good) {
                    got.insert((r.device.to_string(), r.metric.to_string()), r.value);
                }
            }
            _ => break,
        }
    }
    let (devices, traps) = c.stop().await;
    (got, devices, traps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_reads_a_recorded_ups_walk_from_snmpd_over_v2c_and_v3() {
    if !net_snmp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let walk = repo("tests/fixtures/snmp/ups-3phase.walk");
    let (_snmpd, address) = snmpd(dir.path(), &walk);
    let toml = format!(
        "[snmp]\nsite = \"lab\"\ninterval = \"300ms\"\n\
         [[snmp.devices]]\nname = \"ups-v2c\"\naddress = \"{address}\"\nprofile = \"ups-mib\"\n\
         [[snmp.devices]]\nname = \"ups-v3\"\naddress = \"{address}\"\nprofile = \"ups-mib\"\n\
         version = \"3\"\nuser = \"{USER}\"\nauth = \"sha256\"\nauth_password = \"{AUTH}\"\n\
         privacy = \"aes\"\nprivacy_password = \"{PRIV}\"\n\
         [[snmp.devices]]\nname = \"ups-wrong-key\"\naddress = \"{address}\"\nprofile = \"ups-mib\"\n\
         version = \"3\"\nuser = \"{USER}\"\nauth = \"sha256\"\nauth_password = \"not-the-key\"\n\
         privacy = \"aes\"\nprivacy_password = \"{PRIV}\"\n"
    );
    let expected: BTreeMap<String, f64> = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/snmp/ups-3phase.expected.json")).unwrap(),
    )
    .unwrap();
    let (got, counts, _) = collect(&toml, 2 * expected.len()).await;
    for device in ["ups-v2c", "ups-v3"] {
        for (metric, want) in &expected {
            let v = got
                .get(&(device.to_owned(), metric.clone()))
                .unwrap_or_else(|| panic!("{device} {metric} never read: {counts:?}"));
            assert!(
                (v - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{device} {metric}: read {v}, snmpd served {want}"
            );
        }
    }
    // A wrong authentication key reads nothing, and says so in its counters.
    assert!(!got.keys().any(|(d, _)| d == "ups-wrong-key"), "{got:?}");
    let wrong = counts.iter().find(|c| c.device == "ups-wrong-key").unwrap();
    assert!(
        wrong.good == 0 && wrong.transport_errors + wrong.timeouts > 0,
        "{wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_snmp_traps_and_informs_become_readings_and_forgeries_are_counted() {
    if !net_snmp_available() {
        return;
    }
    let (toml, to) = trap_receiver("community = \"facility-ro\"\n");
    let alarm_descr = ".1.3.6.1.2.1.33.1.6.2.1.2.1";
    let on_bypass = ".1.3.6.1.2.1.33.1.6.3.9";
    // The receiver is bound before anything is sent.
    let (c, mut rx) = start(&toml).await;
    let sender = {
        let to = to.clone();
        tokio::task::spawn_blocking(move || {
            // A forged trap with the wrong community first: counted, no reading.
            ok(tool("snmptrap").args(["-v2c", "-c", "public", &to, "", ".1.3.6.1.2.1.33.2.1"]));
            // upsTrapAlarmEntryAdded(upsAlarmOnBypass), v2c.
            ok(tool("snmptrap").args([
                "-v2c",
                "-c",
                "facility-ro",
                &to,
                "",
                ".1.3.6.1.2.1.33.2.3",
                alarm_descr,
                "o",
                on_bypass,
            ]));
            // upsTrapOnBattery from a v1 agent (enterprise upsTraps, specific 1).
            ok(tool("snmptrap").args([
                "-v1",
                "-c",
                "facility-ro",
                &to,
                ".1.3.6.1.2.1.33.2",
                "127.0.0.1",
                "6",
                "1",
                "",
            ]));
            // upsTrapAlarmEntryRemoved(upsAlarmOnBypass) as an inform: snmpinform
            // exits 0 only when we acknowledge it.
            ok(tool("snmpinform").args([
                "-v2c",
                "-c",
                "facility-ro",
                "-t",
                "2",
                "-r",
                "2",
                &to,
                "",
                ".1.3.6.1.2.1.33.2.4",
                alarm_descr,
                "o",
                on_bypass,
            ]));
        })
    };
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => {
                seen.extend(batch.into_iter().map(|r| (r.metric.to_string(), r.value)))
            }
            _ => break,
        }
    }
    sender.await.unwrap();
    let (_, traps) = c.stop().await;
    let traps = traps.unwrap();
    assert_eq!(
        seen,
        [
            ("bypass_active".to_owned(), 1.0),
            ("on_battery".to_owned(), 1.0),
            ("bypass_active".to_owned(), 0.0)
        ],
        "{traps:?}"
    );
    assert_eq!(traps.bad_community, 1, "{traps:?}");
    assert_eq!(traps.acknowledged, 1, "{traps:?}");
    assert_eq!(traps.readings, 3, "{traps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_snmp_v3_traps_are_authenticated_with_the_devices_user() {
    if !net_snmp_available() {
        return;
    }
    let (toml, to) = trap_receiver(&format!(
        "version = \"3\"\nuser = \"{USER}\"\nauth = \"sha256\"\nauth_password = \"{AUTH}\"\n\
         privacy = \"aes\"\nprivacy_password = \"{PRIV}\"\n"
    ));
    let (c, mut rx) = start(&toml).await;
    let sender = tokio::task::spawn_blocking(move || {
        // The UPS card's engine (the sender of a trap is authoritative).
        let v3 = |engine: &str, auth: &str| {
            let mut t = tool("snmptrap");
            t.args(["-v3", "-e", engine, "-u", USER, "-l", "authPriv"])
                .args(["-a", "SHA-256", "-A", auth, "-x", "AES", "-X", PRIV]);
            t
        };
        // A forgery first, from another engine and signed with another key: refused,
        // and it must not pin its engine id for the real ones.
        ok(v3("0x80001f8880deadbeef01", "another-key-123").args([&to, "", ".1.3.6.1.2.1.33.2.1"]));
        // upsTrapAlarmEntryAdded(upsAlarmOnBypass), authPriv.
        ok(v3("0x80001f8880c0ffee0102", AUTH).args([
            &to,
            "",
            ".1.3.6.1.2.1.33.2.3",
            ".1.3.6.1.2.1.33.1.6.2.1.2.1",
            "o",
            ".1.3.6.1.2.1.33.1.6.3.9",
        ]));
    });
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a reading within 20 s")
        .expect("the collector runs");
    sender.await.unwrap();
    let (_, traps) = c.stop().await;
    let traps = traps.unwrap();
    let seen: Vec<_> = got
        .into_iter()
        .map(|r| (r.metric.to_string(), r.value))
        .collect();
    assert_eq!(seen, [("bypass_active".to_owned(), 1.0)], "{traps:?}");
    assert_eq!((traps.undecodable, traps.readings), (1, 1), "{traps:?}");
}

#[test]
fn net_snmp_reads_the_simulated_ups_and_is_refused_a_write() {
    if !net_snmp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("served.jsonl");
    let run_toml = dir.path().join("run.toml");
    let _server = Peer(
        crate::support::wattchdog()
            .args(["simulate", "--serve-modbus", "127.0.0.1:0"])
            .args(["--serve-snmp", "127.0.0.1:0", "--attacks", "none"])
            .arg("-o")
            .arg(&capture)
            .arg("--write-config")
            .arg(&run_toml)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&run_toml, Duration::from_secs(20));
    let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&run_toml).unwrap()).unwrap();
    let ups = cfg["snmp"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["profile"].as_str() == Some("ups-mib"))
        .unwrap();
    let name = ups["name"].as_str().unwrap().to_owned();
    let to = format!("udp:{}", ups["address"].as_str().unwrap());
    // Served over SNMP, so not polled over Modbus too.
    let modbus = cfg["modbus"]["devices"].as_array().unwrap();
    assert!(modbus.iter().all(|d| d["name"].as_str() != Some(&name)));
    let out = ok(tool("snmpget").args([
        "-v2c",
        "-c",
        "public",
        "-Oqv",
        &to,
        ".1.3.6.1.2.1.33.1.2.5.0",
    ]));
    let tenths: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let volts = tenths / 10.0;
    // The capture is flushed a moment after the plant steps: wait for the value read.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let truth = capture_readings(&std::fs::read_to_string(&capture).unwrap());
        let reported = truth.iter().any(|(_, d, m, v)| {
            *d == name && m == "battery_voltage_v" && (v - volts).abs() <= 0.051
        });
        if reported {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snmpget read {volts} V, which the plant never reported for {name}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The output table walks to three lines, each a third of the output power.
    let walk =
        ok(tool("snmpbulkwalk").args(["-v2c", "-c", "public", &to, ".1.3.6.1.2.1.33.1.4.4.1.4"]));
    assert_eq!(String::from_utf8_lossy(&walk.stdout).lines().count(), 3);
    // Read-only: a SET is refused with notWritable.
    let set = tool("snmpset")
        .args([
            "-v2c",
            "-c",
            "public",
            &to,
            ".1.3.6.1.2.1.33.1.4.1.0",
            "i",
            "4",
        ])
        .output()
        .unwrap();
    assert!(!set.status.success());
    assert!(
        String::from_utf8_lossy(&set.stderr).contains("notWritable"),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
}
