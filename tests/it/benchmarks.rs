//! The public-benchmark scorers: each against hand-computed cases, and a short run of
//! each benchmark (one SKAB run, the two NAB temperature series) through the real binary with the data
//! read from `$WATTCHDOG_DATASETS` (default `../shared/datasets`, where CI has it). Under
//! `CI=true` missing data fails.

use crate::support::{command_ok, repo};
use std::path::PathBuf;
use std::process::Command;

fn datasets() -> Option<PathBuf> {
    let d = std::env::var_os("WATTCHDOG_DATASETS")
        .map_or_else(|| repo("../shared/datasets"), PathBuf::from);
    if d.join("skab/data").is_dir() && d.join("nab/data").is_dir() {
        return Some(d);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} (SKAB, NAB) is missing under CI=true",
        d.display()
    );
    eprintln!("skipping: {} does not hold SKAB and NAB", d.display());
    None
}

fn script(name: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo(&format!("scripts/{name}")));
    c
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap()
}

#[test]
fn the_benchmark_scorers_match_hand_computed_cases_and_run_on_the_data() {
    let _quiet = crate::support::machine_lock();
    command_ok(script("skab-eval.py").arg("--self-test"));
    command_ok(script("nab-eval.py").arg("--self-test"));
    let Some(data) = datasets() else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_wattchdog");
    let out = command_ok(
        script("skab-eval.py")
            .arg(data.join("skab/data"))
            .args(["--files", "1", "--binary", bin]),
    );
    let s = last_json(&out);
    assert_eq!(s["files"], 1);
    let rows: u64 = ["tp", "fp", "fn", "tn"]
        .iter()
        .map(|k| s[*k].as_u64().unwrap())
        .sum();
    assert!(
        rows > 500,
        "the test part of valve1/0.csv is scored row by row: {s}"
    );
    assert!(
        s["tp"].as_u64().unwrap() > 0,
        "the residual detector finds the closed valve: {s}"
    );
    // The changepoint score: the run's labelled changepoints of its test part are
    // windows, and a score of at most 100 (perfect) per profile comes back.
    assert!(s["changepoints"].as_u64().unwrap() >= 1, "{s}");
    for profile in ["standard", "low_fp", "low_fn"] {
        let v = s["nab"][profile].as_f64().unwrap();
        assert!(v.is_finite() && v <= 100.0, "{profile}: {s}");
    }
    let out = command_ok(script("nab-eval.py").arg(data.join("nab")).args([
        "--binary",
        bin,
        "--files",
        "_temperature_system_failure",
    ]));
    let n = last_json(&out);
    for f in ["machine", "ambient"] {
        let key = format!("realKnownCause/{f}_temperature_system_failure.csv");
        assert!(n[&key]["standard"].as_f64().is_some(), "{n}");
    }
    // The two series normalised on their own: every row read, a score below perfect.
    assert_eq!(n["corpus"]["files"], 2, "{n}");
    let standard = n["corpus"]["standard"].as_f64().unwrap();
    assert!(standard.is_finite() && standard <= 100.0, "{n}");
}
