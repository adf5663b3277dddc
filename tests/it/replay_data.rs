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
