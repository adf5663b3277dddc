//! `wattchdog calibrate` end to end: thresholds set from one clean period of a facility
//! hold the false-alarm budget on another period it never saw, follow the budget asked
//! for, and come out the same byte for byte.

use crate::support::{run_ok, simulate_variant};
use serde_json::Value;
use std::path::Path;

fn calibrate(clean: &Path, out: &Path, budget: &str) -> Value {
    run_ok(&[
        "calibrate",
        clean.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--false-alarms",
        budget,
        "--json",
    ]);
    serde_json::from_slice(&std::fs::read(out.join("calibration.json")).unwrap()).unwrap()
}

/// Incidents of a replay of `capture` with `config`.
fn incidents(config: &Path, capture: &Path) -> usize {
    let out = run_ok(&[
        "replay",
        "--json",
        "--no-progress",
        "-c",
        config.to_str().unwrap(),
        capture.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    r["incidents"].as_array().unwrap().len()
}

#[test]
fn thresholds_from_one_clean_period_hold_the_budget_on_another() {
    let dir = tempfile::tempdir().unwrap();
    // The second variant is only checked against the tight budget (time).
    for (variant, seed, full) in [("default", 21, true), ("hyperscale-60hz", 23, false)] {
        let (clean, held_out) = (
            dir.path().join(format!("{variant}-a.jsonl")),
            dir.path().join(format!("{variant}-b.jsonl")),
        );
        simulate_variant(&clean, variant, 6.0, seed, "none");
        simulate_variant(&held_out, variant, 6.0, seed + 1, "none");

        // One false alarm a week: nothing in 6 hours the calibration did not see.
        let tight = dir.path().join(format!("{variant}-tight"));
        let report = calibrate(&clean, &tight, "1/week");
        let set: Vec<&Value> = report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["kinds"].as_array().unwrap())
            .filter(|k| k["decision"] == "set")
            .collect();
        assert!(set.len() >= 8, "{variant}: thresholds set {}", set.len());
        // The time scales get their own margin per kind (their 1- and 15-minute blocks
        // are judged within 6 hours; the 4-hour ones are still warming up).
        let timescale = report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "timescale.margin")
            .expect("timescale.margin calibrated");
        assert!(
            timescale["kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["decision"] == "set"),
            "{variant}: {timescale}"
        );
        for k in &set {
            // The history bounds the extrapolation from below.
            assert!(k["threshold"].as_f64() > k["largest_seen"].as_f64(), "{k}");
        }
        assert_eq!(report["clean_incidents"], 0, "{variant}");
        // Metrics whose range settled get a band; on 6 hours of a daily cycle not all do.
        let count = |v: &Value| {
            v.as_object()
                .unwrap()
                .values()
                .filter_map(Value::as_u64)
                .sum::<u64>()
        };
        let (bands, unsettled) = (
            count(&report["envelopes"]),
            count(&report["envelopes_unsettled"]),
        );
        assert!(
            bands >= 10 && unsettled >= 1,
            "{variant}: {bands} bands, {unsettled} unsettled"
        );
        let config = tight.join("wattchdog.toml");
        assert_eq!(
            incidents(&config, &held_out),
            0,
            "{variant}: held-out period"
        );

        if !full {
            continue;
        }
        // Same inputs, same files.
        let again = dir.path().join(format!("{variant}-again"));
        calibrate(&clean, &again, "1/week");
        assert_eq!(
            std::fs::read(&config).unwrap(),
            std::fs::read(again.join("wattchdog.toml")).unwrap()
        );

        // A budget of three an hour is spent, roughly, on the period it never saw: the
        // thresholds follow the budget rather than sitting at the largest value seen.
        let loose = dir.path().join(format!("{variant}-loose"));
        calibrate(&clean, &loose, "3/hour");
        let n = incidents(&loose.join("wattchdog.toml"), &held_out);
        eprintln!("{variant}: {n} incidents in 6 held-out hours at 3/hour");
        assert!(
            (3..=54).contains(&n),
            "{variant}: {n} incidents for a budget of 18"
        );
    }
}

#[test]
fn too_short_a_history_is_refused_with_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("hour.jsonl");
    simulate_variant(&clean, "edge-small", 1.0, 3, "none");
    let out = crate::support::run(&[
        "calibrate",
        clean.to_str().unwrap(),
        "-o",
        dir.path().join("site").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no threshold could be fitted") && err.contains("--block"),
        "{err}"
    );
    assert!(!dir.path().join("site/wattchdog.toml").exists());
    let out = crate::support::run(&["calibrate", "-o", "x", "--false-alarms", "1/fortnight", "y"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fortnight"));
}
