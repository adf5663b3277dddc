//! A facility's first hour and a half, from cold and with no attack, raises no alarm,
//! though its baselines are young: the real binary from simulation to alerts.

use crate::support::{command_ok, opened_fields, wattchdog};

/// Detectors of the alerts a replay of `capture` opened, with their devices.
fn alerts(capture: &str, config: Option<&str>) -> Vec<(String, String)> {
    opened_fields(capture, config, ["detector", "device"])
}

/// The edge facility's UPS follows its load, which wanders over tens of minutes: 19
/// minutes in, its baselines have seen only part of that spread (σ of input power
/// 4.0 kW then, 6.5 kW over the run), and a forest judging after one baseline
/// half-life (600 samples, the old default) calls the UPS unlike normal operation.
/// After three half-lives (the default) nothing fires.
#[test]
fn a_cold_start_raises_no_alarm_while_a_slow_load_shows_its_spread() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("edge.jsonl");
    // Run 371 of `scripts/startup-alarms.sh`.
    command_ok(
        wattchdog()
            .args(["simulate", "--variant", "edge-small", "--seed", "1371"])
            .args(["--hours", "1.5", "--attacks", "none"])
            .args(["--start", "2026-07-03T05:17:00Z", "-o"])
            .arg(&capture),
    );
    let capture = capture.to_str().unwrap();
    assert_eq!(alerts(capture, None), vec![], "the defaults");

    let one_halflife = dir.path().join("one-halflife.toml");
    std::fs::write(&one_halflife, "[detectors.iforest]\nwarmup_samples = 600\n").unwrap();
    let early = alerts(capture, Some(one_halflife.to_str().unwrap()));
    assert_eq!(
        early,
        vec![("iforest".to_string(), "ups-1".to_string())],
        "judged after one half-life"
    );
}
