//! A load-altering attack at the edge: a subtle square swing of the IT load (3 % of it,
//! a 45 s period) on the small edge facility, whose spectrum stays within the load's
//! own wander for over two minutes, is found by its switching edges within a minute,
//! in an incident of its own, by the real binary from simulation to score.

use crate::support::run_ok;
use serde_json::Value;

#[test]
fn a_subtle_load_oscillation_is_found_within_a_minute_at_its_edges() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("edge.jsonl");
    let capture = capture.to_str().unwrap();
    run_ok(&[
        "simulate",
        "--variant",
        "edge-small",
        "--seed",
        "5",
        "--hours",
        "3.2",
        "--attacks",
        "load-oscillation",
        "--intensity",
        "subtle",
        "-o",
        capture,
    ]);
    let score: Value =
        serde_json::from_slice(&run_ok(&["eval", "--json", capture]).stdout).unwrap();
    let s = &score["scenarios"]["load-oscillation"];
    assert_eq!(s["detected"], 1, "{score:#}");
    let delay = s["median_delay_s"].as_f64().unwrap();
    // Two full edges come 22.5 s and 45 s after the onset (itself a half edge).
    assert!(delay <= 60.0, "found after {delay} s: {score:#}");
    assert_eq!(s["first_detectors"]["oscillation"], 1, "{score:#}");
    assert_eq!(s["own_incident"], 1, "{score:#}");
    assert_eq!(score["false_incidents"], 0, "{score:#}");
}
