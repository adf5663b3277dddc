//! `wattchdog train` end to end: reproducible models, labelled windows left out, models
//! used by replay, bad model files refused with their name.

use crate::support::{run, run_ok, simulate};
use serde_json::Value;

/// Trains with `args` into `out` and again beside it; the two files must be the same
/// bytes. Returns them.
fn train_twice(args: &[&str], out: &std::path::Path) -> Vec<u8> {
    let again = out.with_extension("again");
    for o in [out, &again] {
        let mut a = vec!["train", "-o", o.to_str().unwrap()];
        a.extend_from_slice(args);
        run_ok(&a);
    }
    let (ta, tb) = (std::fs::read(out).unwrap(), std::fs::read(&again).unwrap());
    assert!(ta == tb, "the same inputs and options give the same bytes");
    std::fs::remove_file(again).unwrap();
    ta
}

#[test]
fn training_is_reproducible_leaves_out_labels_and_the_model_is_used_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal.jsonl");
    let attacked = dir.path().join("attacked.jsonl");
    simulate(&normal, 1.5, 3, "none");
    let labels = simulate(&attacked, 3.2, 4, "chiller-setpoint-tamper");
    assert_eq!(labels.len(), 1);
    let models = dir.path().join("models");
    let a = models.join("chiller.iforest.json");
    let ta = train_twice(
        &[
            normal.to_str().unwrap(),
            attacked.to_str().unwrap(),
            "--kind",
            "chiller",
            "--trees",
            "20",
            "--every",
            "2",
        ],
        &a,
    );

    let m: Value = serde_json::from_slice(&ta).unwrap();
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["kind"], "chiller");
    let p = &m["provenance"];
    assert_eq!(p["inputs"][0]["file"], "normal.jsonl");
    assert_eq!(
        p["inputs"][0]["sha256"].as_str().unwrap(),
        wattchdog::app::train::sha256_file(&normal).unwrap()
    );
    assert!(
        p["labelled_rows_left_out"].as_u64().unwrap() > 0,
        "the attack window is not trained on"
    );
    // Two chillers, every second frame after a 600-sample warm-up, 1.5 h + 3.2 h.
    let rows = p["rows"].as_u64().unwrap();
    assert!(rows > 5_000 && rows < 16_200, "rows {rows}");

    let cfg = dir.path().join("wattchdog.toml");
    std::fs::write(
        &cfg,
        format!(
            "[detectors.iforest]\nmodels = {:?}\n",
            models.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = run_ok(&[
        "replay",
        "--json",
        "-c",
        cfg.to_str().unwrap(),
        normal.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "iforest"),
        "{}",
        r["detectors"]
    );

    // A damaged model is a config error that names the file.
    let mut bad = String::from_utf8(ta).unwrap();
    bad = bad.replacen("\"trees\":[[[", "\"trees\":[[[99,", 1);
    std::fs::write(&a, bad).unwrap();
    let out = run(&[
        "replay",
        "-c",
        cfg.to_str().unwrap(),
        normal.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chiller.iforest.json"), "{err}");
}

#[test]
fn the_built_in_models_run_by_default_and_a_kind_without_features_or_a_bad_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("c.jsonl");
    simulate(&capture, 0.2, 5, "none");
    let out = run_ok(&["replay", "--json", capture.to_str().unwrap()]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d == "iforest"));
    let out = run(&[
        "train",
        capture.to_str().unwrap(),
        "--kind",
        "toaster",
        "-o",
        dir.path().join("m.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("features only for"));
    let out = run(&[
        "train",
        capture.to_str().unwrap(),
        "--kind",
        "../toaster",
        "--detector",
        "residual",
        "-o",
        dir.path().join("m.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a kind is 1-64 letters"));
}

#[test]
fn a_trained_residual_model_judges_from_the_first_frames_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal.jsonl");
    let attacked = dir.path().join("attacked.jsonl");
    simulate(&normal, 1.5, 3, "none");
    let labels = simulate(&attacked, 3.2, 4, "chiller-setpoint-tamper");
    let models = dir.path().join("site-models");
    let a = models.join("chiller.residual.json");
    let ta = train_twice(
        &[
            "--detector",
            "residual",
            normal.to_str().unwrap(),
            attacked.to_str().unwrap(),
            "--kind",
            "chiller",
        ],
        &a,
    );
    let m: Value = serde_json::from_slice(&ta).unwrap();
    assert_eq!(
        (m["detector"].as_str(), m["kind"].as_str()),
        (Some("residual"), Some("chiller"))
    );
    let p = &m["provenance"];
    assert_eq!(
        p["devices"],
        serde_json::json!(["ams1/chiller-1", "ams1/chiller-2"])
    );
    assert!(p["labelled_rows_left_out"].as_u64().unwrap() > 0);
    assert!(m["model"]["columns"].as_array().unwrap().len() >= 2);

    // Judged by the trained model, chiller-2 is flagged within a minute of the
    // tampering: no warm-up to wait for.
    let cfg = dir.path().join("wattchdog.toml");
    std::fs::write(
        &cfg,
        "[kinds.chiller.residual]\nenabled = true\nmodels = \"site-models\"\n",
    )
    .unwrap();
    let out = run_ok(&[
        "replay",
        "--json",
        "-c",
        cfg.to_str().unwrap(),
        attacked.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let start = labels[0].start;
    let first = r["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["detector"] == "residual" && x["device"] == "chiller-2")
        .map(|x| {
            wattchdog::time::TimeFormat::Auto
                .parse(x["ts"].as_str().unwrap())
                .unwrap()
        })
        .find(|&ts| ts >= start)
        .expect("a residual alert on chiller-2 after the tampering began");
    assert!(
        first - start <= 60_000,
        "{} ms after the start",
        first - start
    );

    // A damaged model is a config error that names the file.
    let mut bad = m.clone();
    bad["model"]["thresholds"][1] = serde_json::json!(-1.0);
    std::fs::write(&a, bad.to_string()).unwrap();
    let out = run(&[
        "replay",
        "-c",
        cfg.to_str().unwrap(),
        normal.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chiller.residual.json") && err.contains("threshold is not positive"),
        "{err}"
    );
}
