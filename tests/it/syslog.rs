//! The syslog sink against a real receiver: rsyslog on loopback, listening on TCP and on
//! TLS, writes every message it receives to a file; an independent parser
//! (`tests/interop/syslog_check.py`) reads each line as RFC 5424 with CEF or JSON, and the
//! test checks that every alert snapshot arrived exactly once on every sink, across a
//! stop and a restart of rsyslog in the middle.

use crate::support::{free_port, make_certs, peer_available, repo, wait_for_port, Peer};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wattchdog::correlate::Output;
use wattchdog::model::{attack, Alert, AlertStatus, Role, Severity};

/// The sinks under test, by the HOSTNAME each stamps on its messages.
const SINKS: [(&str, &str, &str); 4] = [
    ("tcp-cef", "tcp", "cef"),
    ("tcp-json", "tcp", "json"),
    ("tls-cef", "tls", "cef"),
    ("tls-ocsf", "tls", "ocsf"),
];

fn rsyslog_available() -> bool {
    // The TLS listener needs rsyslog's OpenSSL driver (package rsyslog-openssl).
    peer_available(
        "rsyslog with its OpenSSL driver (apt-get install rsyslog rsyslog-openssl)",
        Command::new("sh").args([
            "-c",
            "command -v rsyslogd && ls /usr/lib/*/rsyslog/lmnsd_ossl.so",
        ]),
    )
}

/// rsyslog in the foreground: TCP on `tcp`, TLS on `tls`, everything to `received.log`.
fn start_rsyslog(dir: &Path, tcp: u16, tls: u16) -> Peer {
    let d = dir.display();
    let conf = format!(
        r#"global(workDirectory="{d}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/server.pem"
       defaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="out")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="out"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="out") {{
  action(type="omfile" file="{d}/received.log" template="raw")
}}
"#
    );
    std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(dir.join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(tcp, Duration::from_secs(20));
    wait_for_port(tls, Duration::from_secs(20));
    Peer(child)
}

/// Stops rsyslog as a service manager would (SIGTERM) and waits until it is gone.
fn stop_rsyslog(mut p: Peer) {
    let status = Command::new("kill")
        .arg(p.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    p.0.wait().unwrap();
}

/// What the independent parser made of the received file.
fn received(dir: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(repo("tests/interop/syslog_check.py"))
        .arg(dir.join("received.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Snapshot ids received per sink, with how often.
fn snapshots(v: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut per: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (host, msgs) in v["messages"].as_object().unwrap() {
        for m in msgs.as_array().unwrap() {
            let snap = m["sd"]["wattchdog@32473"]["snapshot"].as_str().unwrap();
            *per.entry(host.clone())
                .or_default()
                .entry(snap.to_owned())
                .or_default() += 1;
        }
    }
    per
}

fn wait_for(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Alert `n`'s snapshot: open or closed, with text that needs escaping everywhere.
fn alert(n: usize, status: AlertStatus) -> Alert {
    Alert {
        id: format!("al-{n:04}"),
        ts: 1_780_000_000_000 + n as i64 * 1000,
        detected_at: "2026-12-03T10:00:00.000Z".into(),
        site: "ams1".into(),
        device: format!("chiller-{}", n % 3 + 1),
        kind: "chiller".into(),
        metrics: vec!["setpoint_c".into()],
        detector: "protocol",
        score: 2.5,
        threshold: 1.0,
        severity: [Severity::Medium, Severity::High, Severity::Critical][n % 3],
        technique: attack::MANIPULATION_OF_CONTROL,
        summary: format!("10.66.0.99 wrote | setpoint=7 \\ of \"chiller\" [{n}]\nsecond line"),
        evidence: serde_json::json!({"client": "10.66.0.99", "function": 6, "values": [700]}),
        incident_id: format!("in-{:04}", n / 2),
        role: if n % 2 == 0 {
            Role::Cause
        } else {
            Role::Consequence
        },
        status,
        last_seen: 1_780_000_000_000 + n as i64 * 1000 + 500,
        findings: if status == AlertStatus::Open { 1 } else { 4 },
        early: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_every_alert_once_over_tcp_and_tls_across_a_restart() {
    if !rsyslog_available() || !peer_available("python3", Command::new("python3").arg("--version"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let (tcp, tls) = (free_port(), free_port());
    let rsyslog = start_rsyslog(d, tcp, tls);

    let mut cfg = "[store]\npath = \"s.db\"\n".to_owned();
    for (host, transport, payload) in SINKS {
        let port = if transport == "tcp" { tcp } else { tls };
        cfg += &format!(
            "[[sinks.syslog]]\nname = \"{host}\"\naddress = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\n\
             payload = \"{payload}\"\nhostname = \"{host}\"\nca = \"ca.pem\"\n"
        );
    }
    let config = wattchdog::Config::from_toml_str(&cfg, "t").unwrap();
    let soc = wattchdog::app::soc::Soc::start(&config.soc, d, "t")
        .await
        .unwrap();
    let mut sent: Vec<Alert> = Vec::new();
    let put = |sent: &mut Vec<Alert>, a: Alert| {
        soc.output(&Output::Alert(a.clone())).unwrap();
        sent.push(a);
    };
    // The test's own thread waits; the runtime's workers deliver.
    let all_arrived = |sent: &[Alert]| {
        let want: Vec<String> = sent.iter().map(Alert::snapshot_id).collect();
        move || {
            let got = snapshots(&received(d));
            SINKS.iter().all(|(h, _, _)| {
                got.get(*h)
                    .is_some_and(|s| want.iter().all(|w| s.contains_key(w)))
            })
        }
    };

    // Ten alerts opened, four of them closed: all arrive.
    for n in 0..10 {
        put(&mut sent, alert(n, AlertStatus::Open));
    }
    for n in 0..4 {
        put(&mut sent, alert(n, AlertStatus::Closed));
    }
    wait_for(
        Duration::from_secs(60),
        "the first snapshots",
        all_arrived(&sent),
    );

    // rsyslog stops; what is raised meanwhile waits in the outbox and goes once it is back.
    stop_rsyslog(rsyslog);
    for n in 10..16 {
        put(&mut sent, alert(n, AlertStatus::Open));
    }
    for n in 4..7 {
        put(&mut sent, alert(n, AlertStatus::Closed));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // the sinks find it gone
    let _rsyslog = start_rsyslog(d, tcp, tls);
    wait_for(
        Duration::from_secs(90),
        "every snapshot after the restart",
        all_arrived(&sent),
    );
    soc.stop().await;

    let v = received(d);
    assert_eq!(v["errors"], serde_json::json!([]), "every line parses");
    let got = snapshots(&v);
    for (host, _, payload) in SINKS {
        let per = &got[host];
        assert_eq!(per.len(), sent.len(), "{host}: one message per snapshot");
        assert!(per.values().all(|&n| n == 1), "{host}: duplicates {per:?}");
        for m in v["messages"][host].as_array().unwrap() {
            assert_eq!(m["payload"], payload, "{host}");
            let sd = &m["sd"]["wattchdog@32473"];
            let a = sent
                .iter()
                .find(|a| a.snapshot_id() == sd["snapshot"].as_str().unwrap())
                .unwrap();
            assert_eq!(
                (
                    sd["alert"].as_str(),
                    sd["incident"].as_str(),
                    sd["role"].as_str()
                ),
                (
                    Some(a.id.as_str()),
                    Some(a.incident_id.as_str()),
                    Some(a.role.as_str())
                )
            );
            // local4 × 8 + the alert's syslog severity.
            let sev = match a.severity {
                Severity::Critical => 2,
                Severity::High => 3,
                _ => 4,
            };
            assert_eq!(m["pri"], 160 + sev, "{host}");
            let f = &m["fields"];
            match payload {
                "cef" => {
                    assert_eq!(
                        f["name"],
                        a.summary.replace('\n', " "),
                        "header text, line break as space"
                    );
                    assert_eq!(f["ext"]["msg"], a.summary, "escaped text comes back whole");
                    assert_eq!(f["ext"]["externalId"], a.id);
                    assert_eq!(f["ext"]["src"], "10.66.0.99");
                    assert_eq!(f["ext"]["cs2"], a.incident_id);
                    assert_eq!(f["signature"], "protocol:T0831");
                }
                "json" => {
                    assert_eq!(f["id"], a.id);
                    assert_eq!(f["summary"], a.summary);
                    assert_eq!(f["evidence"]["values"], serde_json::json!([700]));
                }
                _ => {
                    assert_eq!(f["finding_info"]["uid"], a.id);
                    assert_eq!(f["message"], a.summary);
                    let closing = a.status == AlertStatus::Closed;
                    assert_eq!(f["activity_id"], if closing { 3 } else { 1 });
                }
            }
        }
    }
}

/// A TLS sink whose authority file is missing or holds no certificate stops the start,
/// rather than a sink that silently never sends.
#[tokio::test]
async fn a_tls_sink_without_a_usable_authority_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    for (ca, why) in [
        ("missing.pem", "missing.pem"),
        ("empty.pem", "no certificate"),
    ] {
        let text = format!(
            "[store]\npath = \"s.db\"\n[[sinks.syslog]]\nname = \"siem\"\naddress = \"127.0.0.1:6514\"\n\
             transport = \"tls\"\nca = \"{ca}\"\n"
        );
        let cfg = wattchdog::Config::from_toml_str(&text, "t").unwrap();
        let err = wattchdog::app::soc::Soc::start(&cfg.soc, dir.path(), "t")
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("syslog sink siem") && err.contains(why),
            "{err}"
        );
    }
}
