//! A new user brings a site's history from elsewhere: an hourly SCADA export (wide CSV,
//! a time format without minutes, an attack-flag column, a custom kind per controller).
//! Every step either works or fails loudly: nothing is read as a quiet day.

use crate::support::{run, run_ok};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// An hourly export of one pumping controller: flow follows demand, pressure falls with
/// flow, a valve opens with demand, the tank level integrates the flow's excess, and a
/// standby pump draws nothing. `attack` rows (by index) have the pressure reading
/// decoupled from the flow and the flag set.
struct Export {
    rows: usize,
    attack: std::ops::Range<usize>,
    seed: u64,
    /// Decimals the valve position is written with.
    valve_decimals: usize,
    /// Row from which the standby pump runs.
    standby_from: Option<usize>,
}

impl Export {
    fn new(rows: usize, attack: std::ops::Range<usize>, seed: u64) -> Self {
        Self {
            rows,
            attack,
            seed,
            valve_decimals: 9,
            standby_from: None,
        }
    }

    fn write(&self, path: &Path) {
        let mut rng = self.seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
        let mut noise = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut text = String::from("DATETIME,F_PU1,P_J280,S_V2,L_T1,P_PU2,ATT_FLAG\n");
        let mut level = 3.0;
        let start = chrono::NaiveDate::from_ymd_opt(2014, 7, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        for i in 0..self.rows {
            let t = start + chrono::Duration::hours(i as i64);
            let demand = (i as f64 * std::f64::consts::TAU / 24.0).sin();
            let flow = 100.0 + 30.0 * demand + 2.0 * noise();
            let attacked = self.attack.contains(&i);
            let pressure = if attacked {
                95.0 + 0.5 * noise()
            } else {
                110.0 - 0.2 * flow + 0.5 * noise()
            };
            let valve = 0.4 + 0.02 * demand + 0.002 * noise();
            level += (flow - 100.0) * 0.001;
            let standby = if self.standby_from.is_some_and(|f| i >= f) {
                35.0 + noise()
            } else {
                0.0
            };
            let _ = writeln!(
                text,
                "{},{flow:.2},{pressure:.2},{valve:.*},{level:.3},{standby:.1},{}",
                t.format("%d/%m/%y %H"),
                self.valve_decimals,
                u8::from(attacked)
            );
        }
        std::fs::write(path, text).unwrap();
    }
}

fn export(path: &Path, rows: usize, attack: std::ops::Range<usize>, seed: u64) {
    Export::new(rows, attack, seed).write(path);
}

fn mapping(dir: &Path, time_format: &str) -> PathBuf {
    let p = dir.join(format!("map-{}.toml", time_format.len()));
    std::fs::write(
        &p,
        format!(
            "time_column = \"DATETIME\"\ntime_format = \"{time_format}\"\nsite = \"water\"\ndevice = \"plc-1\"\nkind = \"plc_a\"\nlabel_columns = [\"ATT_FLAG\"]\n"
        ),
    )
    .unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_hourly_time_format_is_read_and_one_that_matches_no_row_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("plant.csv");
    export(&csv, 48, 0..0, 1);
    let hourly = mapping(dir.path(), "%d/%m/%y %H");
    let out = run_ok(&["replay", "--json", s(&csv), "--mapping", s(&hourly)]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["readings"], 48 * 5);
    assert_eq!(r["first_ts"], "2014-07-01T00:00:00.000Z");
    assert_eq!(r["last_ts"], "2014-07-02T23:00:00.000Z");

    // A format with minutes and seconds matches none of the rows: exit 1, and why.
    let wrong = mapping(dir.path(), "%d/%m/%Y %H:%M:%S");
    let out = run(&["replay", "--json", s(&csv), "--mapping", s(&wrong)]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = r["errors"][0].as_str().unwrap();
    assert!(
        err.contains("none of its 48 data lines") && err.contains("bad_time"),
        "{err}"
    );
    for cmd in ["eval", "train"] {
        let mut args = vec![cmd, s(&csv), "--mapping", s(&wrong)];
        if cmd == "train" {
            args.extend(["--kind", "plc_a", "--detector", "residual", "-o"]);
            args.push(s(dir.path()));
        }
        let out = run(&args);
        assert!(!out.status.success(), "{cmd} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("none of its 48 data lines"), "{cmd}: {err}");
    }

    // check-config catches a pattern without a date before any data is read, and says
    // what a good one sets up, in JSON too.
    let no_date = mapping(dir.path(), "%H:%M");
    let out = run(&["check-config", "--mapping", s(&no_date)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not give a date"));
    let out = run_ok(&["check-config", "--mapping", "--json", s(&hourly)]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["mapping"]["time_format"], "%d/%m/%y %H");
    assert_eq!(j["mapping"]["label_columns"][0], "ATT_FLAG");
    let out = run_ok(&["check-config", "--mapping", s(&hourly)]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("kind plc_a") && human.contains("labels from ATT_FLAG"),
        "{human}"
    );
}

#[test]
fn a_custom_kind_is_trained_without_its_labelled_rows_and_judges_from_the_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.csv");
    let attacked = dir.path().join("attacked.csv");
    // The history has an attack of its own (flagged): it must stay out of the model.
    export(&history, 1500, 900..960, 2);
    export(&attacked, 400, 100..130, 3);
    let map = mapping(dir.path(), "%d/%m/%y %H");
    let models = dir.path().join("models");
    let model = models.join("plc_a.residual.json");

    // The forest has no features for a custom kind, and says what to do instead.
    let out = run(&[
        "train",
        s(&history),
        "--mapping",
        s(&map),
        "--kind",
        "plc_a",
        "-o",
        s(&model),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--detector residual"));

    let file = train_residual(&history, &map, &model);
    assert_eq!(file["kind"], "plc_a");
    // 60 flagged hours, and the half hour of margin after them holds no row.
    assert_eq!(file["provenance"]["labelled_rows_left_out"], 60);

    // Judged by the trained model, the controller's attack at hour 100 is found: a
    // device learning its own would still be warming up (600 frames).
    assert!(judged(dir.path(), &attacked, &map, false).0.is_empty());
    let (found, _) = judged(dir.path(), &attacked, &map, true);
    assert!(!found.is_empty(), "the trained model finds the decoupling");
    // Hour 100 is 2014-07-05T04:00; the alert comes within the 30 attacked hours.
    let onset = found[0]["ts"].as_str().unwrap().to_owned();
    assert!(
        ("2014-07-05T04:00:00".."2014-07-06T10:00:00").contains(&onset.as_str()),
        "{onset}"
    );

    // eval scores the export by its flag column, without a sidecar.
    let out = run_ok(&[
        "eval",
        "--json",
        s(&attacked),
        "--mapping",
        s(&map),
        "-c",
        s(&dir.path().join("site.toml")),
    ]);
    let score: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flagged = &score["scenarios"]["ATT_FLAG"];
    assert_eq!(
        (flagged["labelled"].as_u64(), flagged["detected"].as_u64()),
        (Some(1), Some(1)),
        "{score}"
    );
}

#[test]
fn a_missing_or_empty_models_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("site.toml");
    for (detector, models) in [("residual", "nowhere"), ("iforest", "empty")] {
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        std::fs::write(
            &config,
            format!("[detectors.{detector}]\nenabled = true\nmodels = \"{models}\"\n"),
        )
        .unwrap();
        let out = run(&["check-config", s(&config)]);
        assert_eq!(out.status.code(), Some(2), "{detector}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("detectors.{detector}.models")),
            "{err}"
        );
        assert!(err.contains(models), "{err}");
    }
}

/// Trains the residual model of kind `plc_a` on `history` into `model`; returns it.
fn train_residual(history: &Path, map: &Path, model: &Path) -> Value {
    run_ok(&[
        "train",
        s(history),
        "--mapping",
        s(map),
        "--kind",
        "plc_a",
        "--detector",
        "residual",
        "-o",
        s(model),
    ]);
    serde_json::from_slice(&std::fs::read(model).unwrap()).unwrap()
}

/// Replays `capture` with the residual detector on (judging by the models in `models/`
/// when `trained`, else learning); returns its residual alerts and the report's notes.
/// The config is left in `site.toml`.
fn judged(dir: &Path, capture: &Path, map: &Path, trained: bool) -> (Vec<Value>, Vec<String>) {
    let config = dir.join("site.toml");
    let models = if trained { "models = \"models\"\n" } else { "" };
    std::fs::write(
        &config,
        format!("[kinds.other.residual]\nenabled = true\n{models}"),
    )
    .unwrap();
    let out = run_ok(&[
        "replay",
        "--json",
        s(capture),
        "--mapping",
        s(map),
        "-c",
        s(&config),
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let alerts = r["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["detector"] == "residual")
        .cloned()
        .collect();
    let notes = r["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    (alerts, notes)
}

#[test]
fn readings_coarser_than_the_history_set_the_model_aside_and_a_pump_that_never_ran_is_news() {
    let dir = tempfile::tempdir().unwrap();
    let map = mapping(dir.path(), "%d/%m/%y %H");
    let history = dir.path().join("history.csv");
    export(&history, 1500, 0..0, 4);
    let file = train_residual(
        &history,
        &map,
        &dir.path().join("models/plc_a.residual.json"),
    );
    assert_eq!(
        file["model"]["constant"][0][0], "p_pu2",
        "{}",
        file["model"]
    );

    // The same plant, its valve now exported with two decimals: rounding alone would
    // break the correlations the model learned at nine.
    let coarse = dir.path().join("coarse.csv");
    Export {
        valve_decimals: 2,
        ..Export::new(400, 0..0, 5)
    }
    .write(&coarse);
    let (alerts, notes) = judged(dir.path(), &coarse, &map, true);
    assert!(alerts.is_empty(), "{alerts:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("plc-1: readings coarser") && n.contains("s_v2")),
        "{notes:?}"
    );

    // At the history's resolution, the standby pump starting is a state never trained on.
    let standby = dir.path().join("standby.csv");
    Export {
        standby_from: Some(200),
        ..Export::new(400, 0..0, 6)
    }
    .write(&standby);
    let (alerts, notes) = judged(dir.path(), &standby, &map, true);
    assert!(!notes.iter().any(|n| n.contains("coarser")), "{notes:?}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["metrics"][0], "p_pu2");
    // Hour 200 is 2014-07-09T08:00; three frames make it a finding.
    assert_eq!(alerts[0]["ts"], "2014-07-09T10:00:00.000Z");
}
