//! The bundled capture, replayed by the real binary, against its labels.

use crate::support::{repo, run, secs};
use serde_json::Value;

#[test]
fn bundled_capture_alerts_match_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let capture = repo("replay-data/facility-6h.jsonl.zst");
    let out = run(&[
        "replay",
        capture.to_str().unwrap(),
        "--alerts",
        dir.path().join("alerts.jsonl").to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let labels: Value = serde_json::from_slice(
        &std::fs::read(repo("replay-data/facility-6h.labels.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["bad_lines"], 0);
    assert_eq!(r["late"], 0);
    let alerts = r["alerts"].as_array().unwrap();
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 5);
    for l in labels {
        let (start, end) = (
            secs(l["start"].as_str().unwrap()),
            secs(l["end"].as_str().unwrap()),
        );
        let devices = l["devices"].as_array().unwrap();
        let first = alerts
            .iter()
            .filter(|a| devices.contains(&a["device"]))
            .map(|a| secs(a["ts"].as_str().unwrap()))
            .filter(|&t| t >= start && t <= end + 300.0)
            .fold(f64::INFINITY, f64::min);
        assert!(first.is_finite(), "{} not detected", l["scenario"]);
        assert!(
            first - start <= 600.0,
            "{} detected only after {} s",
            l["scenario"],
            first - start
        );
    }
    // Every incident starts inside a labelled window (or its 15-minute aftermath).
    for i in r["incidents"].as_array().unwrap() {
        let t = secs(i["start"].as_str().unwrap());
        let explained = labels.iter().any(|l| {
            t >= secs(l["start"].as_str().unwrap()) - 60.0
                && t <= secs(l["end"].as_str().unwrap()) + 900.0
        });
        assert!(explained, "false incident: {}", i["summary"]);
    }
}
