//! The bundled captures, scored against their labels by the real binary.

use crate::support::{repo, run, run_ok};
use serde_json::Value;

#[test]
fn bundled_captures_every_scenario_detected_no_false_incident() {
    let captures = [
        "replay-data/facility-cooling.jsonl.zst",
        "replay-data/edge-power.jsonl.zst",
    ];
    let paths: Vec<String> = captures
        .iter()
        .map(|c| repo(c).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["eval", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let score: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        score["labelled"], 11,
        "the two captures cover the eleven scenarios"
    );
    assert_eq!(score["scenarios"].as_object().unwrap().len(), 11);
    for (name, s) in score["scenarios"].as_object().unwrap() {
        assert_eq!(s["detected"], s["labelled"], "{name} missed");
        assert!(
            s["median_delay_s"].as_f64().unwrap() <= 600.0,
            "{name} slow: {}",
            s["median_delay_s"]
        );
    }
    assert_eq!(
        score["false_incidents"], 0,
        "{}",
        score["false_incident_starts"]
    );
    // One incident per attack, started where the attacker acted, none told as two.
    assert_eq!(score["own_incident"], 11, "{score}");
    assert_eq!(score["cause_on_labelled_device"], 11, "{score}");
    assert_eq!(score["merged_incidents"], 0, "{score}");
    assert!(
        score["median_cause_alerts"].as_f64().unwrap() <= 2.0,
        "{score}"
    );
}

/// The protocol alerts of a replay of the cooling capture with these exceptions.
fn protocol_alerts_with(exceptions: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exceptions.toml");
    std::fs::write(&file, exceptions).unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let capture = repo("replay-data/facility-cooling.jsonl.zst");
    run_ok(&[
        "replay",
        capture.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
        "--exceptions",
        file.to_str().unwrap(),
        "--no-progress",
    ]);
    std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|a| a["detector"] == "protocol")
        .collect()
}

#[test]
fn an_exception_hides_exactly_the_taught_write() {
    let taught = |client: &str, device: &str, address: u32| {
        format!(
            "[[exception]]\nid = \"ex-1\"\nsite = \"ams1\"\ndevice = \"{device}\"\nby = \"alice\"\nat = \"2026-07-07T00:00:00Z\"\nnote = \"BMS\"\n\n\
             [exception.write]\nclient = \"{client}\"\nfunction = 6\naddresses = [{address}]\n"
        )
    };
    let devices = |alerts: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = alerts
            .iter()
            .map(|a| a["device"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    // Without exceptions the capture has the attacker's setpoint write to a chiller.
    let all = devices(&protocol_alerts_with(""));
    assert_eq!(all, ["chiller-2"]);
    // Taught: that client writing that register of that chiller.
    assert!(protocol_alerts_with(&taught("10.66.0.99", "chiller-2", 1201)).is_empty());
    // Another client, register or device taught: the write still alerts.
    for other in [
        taught("10.20.0.5", "chiller-2", 1201),
        taught("10.66.0.99", "chiller-2", 1202),
        taught("10.66.0.99", "chiller-1", 1201),
    ] {
        assert_eq!(devices(&protocol_alerts_with(&other)), all, "{other}");
    }
    // A malformed file is refused, naming it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[exception]]\nid = \"x\"\n").unwrap();
    let capture = repo("replay-data/facility-cooling.jsonl.zst");
    let out = run(&[
        "replay",
        capture.to_str().unwrap(),
        "--exceptions",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

#[test]
fn replay_of_a_bundled_capture_reports_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let alerts = dir.path().join("alerts.jsonl");
    let capture = repo("replay-data/facility-cooling.jsonl.zst");
    run_ok(&[
        "replay",
        capture.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        (r["bad_lines"].as_u64(), r["late"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(r["readings"].as_u64().unwrap() > 1_000_000);
    // Every line of the alert stream is an alert in the design's schema.
    let text = std::fs::read_to_string(&alerts).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let a: Value = serde_json::from_str(line).unwrap();
        for key in [
            "id",
            "ts",
            "detected_at",
            "site",
            "device",
            "metrics",
            "detector",
            "score",
            "threshold",
            "severity",
            "technique",
            "summary",
            "evidence",
            "incident_id",
        ] {
            assert!(a.get(key).is_some(), "alert without {key}: {line}");
        }
        assert!(a["technique"]["id"].as_str().unwrap().starts_with('T'));
    }
}

/// A BMS that rewrites the chillers' setpoints to the same value every 5 h (a facility
/// key): its first rewrite after the learning hour is reported once, its later identical
/// rewrites are routine (counted in the summary, never a new incident), and a setpoint
/// tamper and a Modbus reconnaissance are still found at once.
#[test]
fn a_rarely_writing_bms_is_reported_once_and_attacks_are_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let facility = dir.path().join("rare-bms.toml");
    std::fs::write(&facility, "bms_rewrite = \"5h\"\n").unwrap();
    let cap = dir.path().join("c.jsonl");
    run_ok(&[
        "simulate",
        "--facility",
        facility.to_str().unwrap(),
        "--hours",
        "8",
        "--seed",
        "4",
        "--attacks",
        "chiller-setpoint-tamper,modbus-recon",
        "-o",
        cap.to_str().unwrap(),
    ]);
    let alerts = dir.path().join("alerts.jsonl");
    let (cap, alerts) = (cap.to_str().unwrap(), alerts.to_str().unwrap());
    let out = run_ok(&["replay", "--no-progress", cap, "--alerts", alerts]);
    let summary = String::from_utf8_lossy(&out.stderr);
    let routine: u32 = summary
        .split(" routine rewrites of reported writes were not raised again")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(routine >= 2, "both chillers rewritten again: {summary}");
    let out = run_ok(&["eval", "--json", cap, "--alerts", alerts]);
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in ["chiller-setpoint-tamper", "modbus-recon"] {
        let delay = e["scenarios"][s]["median_delay_s"].as_f64().unwrap();
        assert!(delay <= 60.0, "{s} found after {delay} s: {e:#}");
    }
    let bms: Vec<&Value> = e["false_incident_starts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.as_str().unwrap().ends_with("protocol"))
        .collect();
    assert_eq!(bms.len(), 1, "the BMS's rewrites: one incident: {e:#}");
}
