//! Bad input is counted with file:line and reason, never panics, never stops a replay.

use crate::support::{repo, run, simulate, wattchdog};
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
    // 3 s out of order (within the 5 s tolerance) and 30 s late.
    let lines = [
        line(0, 1.0),
        line(4, 2.0),
        line(1, 3.0),
        line(40, 4.0),
        line(10, 5.0),
        line(41, 6.0),
    ];
    std::fs::write(&p, lines.join("\n")).unwrap();
    let (out, r) = report(&[p.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(r["readings"], 5);
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
