//! Bad input is counted with file:line and reason, never panics, never stops a replay.

use crate::support::{alerts_without_wall_clock, repo, run, simulate, wattchdog};
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;

fn report(args: &[&str]) -> (std::process::Output, Value) {
    let mut all = vec!["replay", "--json", "--no-progress"];
    all.extend_from_slice(args);
    let out = run(&all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

#[test]
fn every_bad_line_is_counted_by_reason_and_good_lines_survive() {
    let (out, r) = report(&[repo("tests/fixtures/bad-lines.jsonl").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        r["readings"], 4,
        "lines 1, 11 (unknown kind), 12 (unknown metric), 15"
    );
    assert_eq!(r["commands"], 1);
    let bad = &r["bad_by_reason"];
    assert_eq!(bad["invalid_json"], 5, "{bad}");
    assert_eq!(bad["wrong_type"], 1);
    assert_eq!(bad["bad_timestamp"], 2);
    assert_eq!(bad["invalid_utf8"], 1);
    assert_eq!(bad["missing_field"], 1);
    assert_eq!(r["bad_lines"], 10);
    let first = &r["files"][0]["first_bad"][0];
    assert_eq!(first["line"], 2);
    assert!(first["file"].as_str().unwrap().ends_with("bad-lines.jsonl"));
    // The log names file and line too.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("line=2") && log.contains("invalid_json"),
        "{log}"
    );
}

#[test]
fn a_ten_megabyte_line_is_bounded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    let ok = r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"ups-1","kind":"ups","metric":"load_pct","value":40}"#;
    writeln!(f, "{ok}").unwrap();
    writeln!(f, "{{\"ts\":\"{}\"}}", "x".repeat(10 << 20)).unwrap();
    writeln!(f, "{}", ok.replace("10:00:00", "10:00:01")).unwrap();
    drop(f);
    let (out, r) = report(&[p.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(r["readings"], 2);
    assert_eq!(r["bad_by_reason"]["line_too_long"], 1);
}

#[test]
fn an_empty_file_is_an_empty_replay() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.jsonl");
    std::fs::write(&p, "").unwrap();
    let (out, r) = report(&[p.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        (r["readings"].as_u64(), r["bad_lines"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn truncated_compressed_captures_keep_what_was_read_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("c.jsonl");
    simulate(&plain, 0.2, 3, "none");
    let data = std::fs::read(&plain).unwrap();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    for (name, bytes) in [("cut.jsonl.gz", gz), ("cut.jsonl.zst", zst)] {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let (out, r) = report(&[p.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: exit 1 for an input error"
        );
        assert!(
            r["readings"].as_u64().unwrap() > 1000,
            "{name}: readings before the cut are kept"
        );
        let err = r["errors"][0].as_str().unwrap();
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn stdin_is_read_with_a_dash() {
    let mut child = wattchdog()
        .args(["replay", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"ups-1","kind":"ups","metric":"load_pct","value":40}"#;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["readings"], 1);
}

#[test]
fn missing_files_and_bad_configs_fail_clearly() {
    let out = run(&["replay", "/nonexistent/capture.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/capture.jsonl"));
    let out = run(&[
        "replay",
        "-c",
        repo("tests/fixtures/misspelt.toml").to_str().unwrap(),
        "x.jsonl",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("treshold") && err.contains("line 5"), "{err}");
}

#[test]
fn out_of_order_readings_are_reordered_and_late_ones_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ooo.jsonl");
    let line = |s: u32, v: f64| {
        format!(
            r#"{{"ts":"2026-07-07T10:{:02}:{:02}Z","site":"a","device":"ups-1","kind":"ups","metric":"load_pct","value":{v}}}"#,
            s / 60,
            s % 60
        )
    };
    // A minute in order (the site's time is known from then on), then 3 s out of order
    // (within the 5 s tolerance) and 30 s late.
    let mut lines: Vec<String> = (0..70).map(|s| line(s, 0.0)).collect();
    lines.extend([
        line(70, 1.0),
        line(74, 2.0),
        line(71, 3.0),
        line(110, 4.0),
        line(80, 5.0),
        line(111, 6.0),
    ]);
    std::fs::write(&p, lines.join("\n")).unwrap();
    let (out, r) = report(&[p.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(r["readings"], 75);
    assert_eq!(r["late"], 1);
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let capture = repo("replay-data/facility-cooling.jsonl.zst");
    let mut child = wattchdog()
        .args(["replay", capture.to_str().unwrap(), "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line of alerts, then hang up, as `| head -1` does.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(first.starts_with("{\"id\":"), "{first}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Broken pipe"));
}

/// Replays `lines` and returns the report and the alerts (without wall-clock fields).
fn replay_lines(dir: &std::path::Path, name: &str, lines: &[String]) -> (Value, Vec<Value>) {
    let cap = dir.join(format!("{name}.jsonl"));
    let alerts = dir.join(format!("{name}.alerts"));
    std::fs::write(&cap, lines.join("\n")).unwrap();
    let (out, r) = report(&[cap.to_str().unwrap(), "--alerts", alerts.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&alerts).unwrap();
    (r, alerts_without_wall_clock(&text))
}

/// The lines of a capture simulated in `dir`.
fn simulated_lines(dir: &std::path::Path, hours: f64, seed: u64, attacks: &str) -> Vec<String> {
    let cap = dir.join("c.jsonl");
    simulate(&cap, hours, seed, attacks);
    std::fs::read_to_string(&cap)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An alert without its incident (the incidents alerts fall in may differ).
fn without_incident(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("incident_id");
    v
}

fn by_detector(alerts: &[Value], detector: &str) -> Vec<Value> {
    alerts
        .iter()
        .filter(|a| a["detector"] == detector)
        .cloned()
        .collect()
}

/// One line dated 9999 once made every later reading late: 0 alerts, exit 0. Now the
/// site's time is what most of its points say; the line is held apart, everything else
/// is judged as before, and the point that jumped ahead and came back is a finding.
#[test]
fn a_reading_dated_far_ahead_neither_blinds_nor_alarms_falsely() {
    let dir = tempfile::tempdir().unwrap();
    let lines = simulated_lines(dir.path(), 3.5, 21, "chiller-setpoint-tamper");
    let (clean_report, clean) = replay_lines(dir.path(), "clean", &lines);
    assert!(!clean.is_empty(), "the attack is found");
    assert_eq!(clean_report["ahead"], 0);

    let forged = |ts: &str, device: &str, kind: &str, metric: &str| {
        format!(
            r#"{{"ts":"{ts}","site":"ams1","device":"{device}","kind":"{kind}","metric":"{metric}","value":1}}"#
        )
    };
    let mut hostile = vec![forged("9999-12-31T23:59:59Z", "pdu-1", "pdu", "it_load_kw")];
    hostile.extend(lines.iter().cloned());
    // Mid-capture, a reading an hour ahead of the others, on another point.
    hostile.insert(
        lines.len() / 2,
        forged("2026-07-07T03:45:00Z", "ups-1", "ups", "load_pct"),
    );
    let (r, alerts) = replay_lines(dir.path(), "hostile", &hostile);
    assert_eq!(r["ahead"], 2, "both forged lines were held apart");
    for device in ["ams1/pdu-1", "ams1/ups-1"] {
        assert_eq!(
            r["by_device"][device]["ahead"], 1,
            "the report names the device whose clock lied: {}",
            r["by_device"]
        );
    }
    assert_eq!(r["late"], 0, "nothing else was pushed out");
    assert_eq!(r["readings"], clean_report["readings"]);
    assert_eq!(
        r["last_ts"], clean_report["last_ts"],
        "the span is the site's"
    );
    let jumps = by_detector(&alerts, "event_time");
    let jumped: std::collections::BTreeSet<(String, String)> = jumps
        .iter()
        .map(|a| {
            assert_eq!(a["technique"]["id"], "T0856", "spoofed reporting");
            (
                a["device"].as_str().unwrap().to_owned(),
                a["metrics"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want =
        [("pdu-1", "it_load_kw"), ("ups-1", "load_pct")].map(|(d, m)| (d.to_owned(), m.to_owned()));
    assert_eq!(jumped, want.into(), "each forged point is named, once");
    // Every other alert is raised as before (the incidents they fall in may differ).
    let others: Vec<Value> = alerts
        .iter()
        .filter(|a| a["detector"] != "event_time")
        .map(without_incident)
        .collect();
    let clean: Vec<Value> = clean.iter().map(without_incident).collect();
    assert_eq!(others, clean);
}

/// A capture with a real gap (two recordings two days apart) is crossed: the second
/// part is judged, not held apart as a lie.
#[test]
fn a_real_gap_in_a_capture_is_crossed() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.jsonl");
    simulate(&first, 1.0, 5, "none");
    let later = |l: &str| l.replacen("2026-07-07T", "2026-07-09T", 1);
    let mut lines: Vec<String> = std::fs::read_to_string(&first)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (one, _) = replay_lines(dir.path(), "one", &lines);
    lines.extend(lines.clone().iter().map(|l| later(l)));
    let (r, _) = replay_lines(dir.path(), "gap", &lines);
    assert_eq!(
        r["readings"].as_u64(),
        one["readings"].as_u64().map(|n| 2 * n),
        "every reading of both parts is used"
    );
    assert_eq!(r["late"], 0);
    assert!(
        r["ahead"].as_u64() > Some(0),
        "held until the others followed"
    );
    assert!(r["last_ts"]
        .as_str()
        .unwrap()
        .starts_with("2026-07-09T00:59"));
}

/// A first line dated decades early is late, not the start of a 56-year silence.
#[test]
fn a_first_line_dated_decades_early_is_late_not_a_silence() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.jsonl");
    simulate(&cap, 0.5, 5, "none");
    let mut lines = vec![
        r#"{"ts":"1970-01-01T00:00:00Z","site":"ams1","device":"pdu-1","kind":"pdu","metric":"it_load_kw","value":1}"#
            .to_owned(),
    ];
    lines.extend(
        std::fs::read_to_string(&cap)
            .unwrap()
            .lines()
            .map(str::to_owned),
    );
    let (r, alerts) = replay_lines(dir.path(), "early", &lines);
    assert_eq!(r["late"], 1);
    assert!(r["first_ts"].as_str().unwrap().starts_with("2026-07-07"));
    assert!(
        by_detector(&alerts, "staleness").is_empty(),
        "no silence since 1970: {alerts:?}"
    );
}

/// A line repeated (an at-least-once source redelivering) is dropped and counted; one at
/// the same instant that says something else (a forged value published ahead of the
/// genuine one) is counted apart, and the rest of the replay is judged as before.
#[test]
fn a_second_reading_at_a_reported_instant_is_counted_and_a_disagreeing_one_apart() {
    let dir = tempfile::tempdir().unwrap();
    let lines = simulated_lines(dir.path(), 0.5, 5, "none");
    let (clean_report, clean) = replay_lines(dir.path(), "clean", &lines);

    let of = |line: &str| {
        let v: Value = serde_json::from_str(line).unwrap();
        (v["device"] == "ups-1" && v["metric"] == "load_pct").then_some(v)
    };
    let targets: Vec<usize> = (0..lines.len())
        .filter(|&i| of(&lines[i]).is_some())
        .collect();
    let (before, genuine) = (targets[targets.len() / 2 - 1], targets[targets.len() / 2]);
    let held = of(&lines[before]).unwrap()["value"].clone();
    let mut forged = of(&lines[genuine]).unwrap();
    assert_ne!(held, forged["value"], "the load moves between readings");
    forged["value"] = held; // the last value again: nothing to see
    let mut hostile = lines.clone();
    hostile.insert(genuine, forged.to_string());
    let again = hostile.len() / 3;
    hostile.insert(again, hostile[again].clone());
    let (r, alerts) = replay_lines(dir.path(), "hostile", &hostile);

    assert_eq!(r["readings"], clean_report["readings"]);
    assert_eq!(
        (&r["duplicates"], &r["conflicting"]),
        (&2.into(), &1.into())
    );
    assert!(clean_report["conflicting"].is_null(), "zero is not shown");
    let got: Vec<Value> = alerts.iter().map(without_incident).collect();
    let clean: Vec<Value> = clean.iter().map(without_incident).collect();
    assert_eq!(got, clean, "nothing else changes");
}
