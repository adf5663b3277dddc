//! Commands other than the main replay path: check-config, wide CSV, several files.

use crate::support::{alerts_without_wall_clock, repo, run, run_ok, simulate};
use serde_json::Value;

#[test]
fn check_config_accepts_valid_and_names_key_and_line_of_invalid() {
    run_ok(&[
        "check-config",
        repo("tests/fixtures/valid.toml").to_str().unwrap(),
    ]);
    let out = run(&[
        "check-config",
        repo("tests/fixtures/misspelt.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("treshold") && err.contains("line 5"), "{err}");
    let out = run(&[
        "check-config",
        "--mapping",
        repo("tests/fixtures/wide.mapping.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success());
}

#[test]
fn wide_csv_with_a_mapping() {
    let out = run_ok(&[
        "replay",
        "--json",
        repo("tests/fixtures/wide.csv").to_str().unwrap(),
        "--mapping",
        repo("tests/fixtures/wide.mapping.toml").to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 8 rows × 3 value columns, minus one empty cell and one non-number.
    assert_eq!(r["readings"], 22);
    assert_eq!(r["bad_by_reason"]["wrong_type"], 1);
    assert_eq!(
        r["first_ts"], "2020-03-09T09:14:30.000Z",
        "local UTC+3 converted"
    );
    let w = &r["files"][0]["label_windows"][0];
    assert_eq!(
        (w["start"].as_str(), w["end"].as_str()),
        (
            Some("2020-03-09T09:14:33.000Z"),
            Some("2020-03-09T09:14:35.000Z")
        )
    );
}

#[test]
fn several_files_merge_by_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.jsonl");
    simulate(&whole, 3.5, 31, "telemetry-blackout");
    // Split by device: chillers in one file, everything else in the other.
    let text = std::fs::read_to_string(&whole).unwrap();
    let (a, b): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.contains("\"chiller-"));
    let (pa, pb) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl.gz"));
    std::fs::write(&pa, a.join("\n")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&pb).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut gz, b.join("\n").as_bytes()).unwrap();
    gz.finish().unwrap();
    let alerts = |files: &[&std::path::Path], name: &str| {
        let out_path = dir.path().join(name);
        let mut args = vec!["replay".to_string()];
        args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
        args.extend(["--alerts".into(), out_path.to_string_lossy().into_owned()]);
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success());
        alerts_without_wall_clock(&std::fs::read_to_string(out_path).unwrap())
    };
    let one = alerts(&[&whole], "one.jsonl");
    let two = alerts(&[&pb, &pa], "two.jsonl");
    assert!(!one.is_empty());
    assert_eq!(one, two);
}

#[test]
fn eval_without_labels_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("nolabels.jsonl");
    std::fs::write(&cap, "").unwrap();
    let out = run(&["eval", cap.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no labels") && err.contains("nolabels.labels.json"),
        "{err}"
    );
}

/// `dir/c.jsonl`, one UPS reading at 10:00, labelled by `labels` (a `.labels.json` text).
fn one_reading_capture(dir: &std::path::Path, labels: &str) -> std::path::PathBuf {
    let cap = dir.join("c.jsonl");
    std::fs::write(
        &cap,
        r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"ups-1","kind":"ups","metric":"load_pct","value":40}"#,
    )
    .unwrap();
    std::fs::write(dir.join("c.labels.json"), labels).unwrap();
    cap
}

#[test]
fn eval_warns_about_labels_naming_unknown_devices_and_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let cap = one_reading_capture(
        dir.path(),
        r#"[{"start":"2026-07-07T10:00:00Z","end":"2026-07-07T10:10:00Z","scenario":"x","devices":["ups-9"]},
            {"start":"2026-07-07T10:05:00Z","end":"2026-07-07T10:20:00Z","scenario":"y","devices":["ups-1"]}]"#,
    );
    let out = run(&["eval", "--json", cap.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ups-9") && err.contains("overlap"), "{err}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["labelled"].as_u64(), s["detected"].as_u64()),
        (Some(2), Some(0))
    );
}

#[test]
fn eval_sweeps_one_parameter_over_every_kind_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let cap = one_reading_capture(
        dir.path(),
        r#"[{"start":"2026-07-07T10:00:00Z","end":"2026-07-07T10:10:00Z","scenario":"x","devices":["ups-1"]}]"#,
    );
    // A kind's own setting does not hide the swept value.
    let cfg = dir.path().join("base.toml");
    std::fs::write(&cfg, "[kinds.ups.physics]\ncusum_threshold = 99\n").unwrap();
    let (c, f) = (cfg.to_str().unwrap(), cap.to_str().unwrap());
    let out = run_ok(&[
        "eval",
        "--json",
        "-c",
        c,
        "--sweep",
        "physics.cusum_threshold=10,20.5",
        f,
    ]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["key"], "physics.cusum_threshold");
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(
        (points[0]["value"].as_f64(), points[1]["value"].as_f64()),
        (Some(10.0), Some(20.5))
    );
    assert!(points
        .iter()
        .all(|p| p["labelled"] == 1 && p["score"]["labelled"] == 1));
    let text = run_ok(&[
        "eval",
        "-c",
        c,
        "--sweep",
        "physics.cusum_threshold=10,20.5",
        f,
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("physics.cusum_threshold") && text.contains("\n20.5 "),
        "{text}"
    );
    for (sweep, says) in [
        (
            "physics.cusum_threshold=-1",
            "physics.cusum_threshold must be greater than 0",
        ),
        ("physics.nonsense=1", "nonsense"),
        ("physics=1", "is not of the form detector.field"),
        ("physics.threshold=1,x y", "is not a TOML value"),
    ] {
        let out = run(&["eval", "-c", c, "--sweep", sweep, f]);
        assert_eq!(out.status.code(), Some(2), "{sweep}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{sweep}: {err}");
    }
}

#[test]
fn simulate_rejects_an_impossible_facility_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f.toml");
    std::fs::write(&f, "[chillers]\nflow_lps = -5\n").unwrap();
    let out = run(&[
        "simulate",
        "--facility",
        f.to_str().unwrap(),
        "-o",
        dir.path().join("x.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chillers.flow_lps"));
    std::fs::write(&f, "[pumps]\ncount = 2\n").unwrap();
    let out = run(&[
        "simulate",
        "--facility",
        f.to_str().unwrap(),
        "-o",
        dir.path().join("x.jsonl").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pumps"));
}

#[test]
fn simulate_writes_a_capture_and_labels_that_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("s.jsonl.gz");
    run_ok(&[
        "simulate",
        "--variant",
        "edge-small",
        "--hours",
        "3.2",
        "--seed",
        "4",
        "--attacks",
        "ups-forced-bypass",
        "-o",
        cap.to_str().unwrap(),
    ]);
    let out = run_ok(&["eval", "--json", cap.to_str().unwrap()]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["scenarios"]["ups-forced-bypass"]["detected"], 1);
}

#[test]
fn eval_scores_an_alert_file_as_it_scores_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("s.jsonl");
    crate::support::simulate(&cap, 3.2, 5, "sensor-replay");
    let alerts = dir.path().join("alerts.jsonl");
    let out = run(&[
        "replay",
        cap.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let from_file = run(&[
        "eval",
        "--json",
        cap.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    let from_replay = run(&["eval", "--json", cap.to_str().unwrap()]);
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let a: Value = serde_json::from_slice(&from_file.stdout).unwrap();
    let b: Value = serde_json::from_slice(&from_replay.stdout).unwrap();
    assert_eq!(a["scenarios"], b["scenarios"]);
    assert_eq!(a["scenarios"]["sensor-replay"]["detected"], 1);
    assert_eq!(
        (a["incidents"].as_u64(), a["false_incidents"].as_u64()),
        (b["incidents"].as_u64(), b["false_incidents"].as_u64())
    );
}

#[test]
fn every_shipped_register_map_validates() {
    let dir = repo("protocols/modbus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run(&["check-config", "--register-map", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(
        n >= 6,
        "a UPS, chiller, CRAH, PDU, sensor and grid profiles"
    );
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "profile = \"p\"\nkind = \"ups\"\nsource = \"s\"\n[[registers]]\nmetric = \"x\"\ntable = \"holding\"\naddress = 0\ntype = \"f32\"\nwords = 1\n").unwrap();
    let out = run(&[
        "check-config",
        "--register-map",
        bad.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("registers[0] (x).words"));
}

#[test]
fn every_shipped_bacnet_map_validates_and_a_config_resolves_them() {
    for entry in std::fs::read_dir(repo("protocols/bacnet")).unwrap() {
        let path = entry.unwrap().path();
        let out = run(&["check-config", "--bacnet-map", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // A site's own numbering, next to the config: a device object is no point.
    let mine = dir.path().join("mine.toml");
    std::fs::write(
        &mine,
        "profile = \"mine\"\nkind = \"chiller\"\nsource = \"s\"\n[[objects]]\nmetric = \"supply_temp_c\"\nobject = \"device:3\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        "[bacnet]\n[[bacnet.devices]]\nname = \"ch-1\"\naddress = \"10.0.0.5\"\nprofile = \"chiller-bacnet\"\n\
         [[bacnet.devices]]\nname = \"ch-2\"\naddress = \"10.0.0.6:47809\"\ninstance = 12\nprofile = \"mine.toml\"\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bacnet.devices[1] (ch-2).profile")
            && err.contains("analog, binary or multi-state"),
        "{err}"
    );
    std::fs::write(
        &mine,
        "profile = \"mine\"\nkind = \"chiller\"\nsource = \"s\"\n[[objects]]\nmetric = \"supply_temp_c\"\nobject = \"analog-value:30\"\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 BACnet/IP devices, 7 objects read per poll cycle and subscribed to (COV)")
            && said.contains("BACnet/IP on UDP ports 47808, 47809"),
        "{said}"
    );
}

#[test]
fn every_shipped_object_map_validates_and_a_config_resolves_them() {
    for entry in std::fs::read_dir(repo("protocols/snmp")).unwrap() {
        let path = entry.unwrap().path();
        let out = run(&["check-config", "--object-map", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // A map of one's own, next to the config: a flag without `equals` may not say
    // `otherwise`.
    std::fs::write(
        dir.path().join("mine.toml"),
        "profile = \"mine\"\nkind = \"ups\"\nsource = \"s\"\n[[objects]]\nmetric = \"load_pct\"\noid = \"1.3.6.1.4.1.9.1.0\"\notherwise = 3\n",
    )
    .unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        "[snmp]\ntrap_listen = \"127.0.0.1:1162\"\n[[snmp.devices]]\nname = \"ups-1\"\naddress = \"10.0.0.5\"\nprofile = \"ups-mib\"\n\
         [[snmp.devices]]\nname = \"ups-2\"\naddress = \"10.0.0.6\"\nprofile = \"mine.toml\"\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snmp.devices[1] (ups-2).profile") && err.contains("otherwise"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("mine.toml"),
        "profile = \"mine\"\nkind = \"ups\"\nsource = \"s\"\n[[objects]]\nmetric = \"load_pct\"\noid = \"1.3.6.1.4.1.9.1.0\"\n",
    )
    .unwrap();
    let out = run(&["check-config", cfg.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("2 SNMP devices, 2 GETs and 6 table columns walked per poll cycle")
            && said.contains("SNMP traps on 127.0.0.1:1162"),
        "{said}"
    );
}

#[test]
fn check_config_resolves_modbus_devices_and_run_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::copy(
        repo("protocols/modbus/chiller-generic.toml"),
        dir.path().join("mine.toml"),
    )
    .unwrap();
    std::fs::write(
        &cfg,
        "[modbus]\nsite = \"ams1\"\nmax_gap = 10\n\
         [[modbus.devices]]\nname = \"ups-1\"\naddress = \"10.0.0.5:502\"\nunit = 3\nprofile = \"ups-generic\"\n\
         [[modbus.devices]]\nname = \"chiller-1\"\naddress = \"chiller-1.bms:502\"\nprofile = \"mine.toml\"\n",
    )
    .unwrap();
    let out = run_ok(&["check-config", cfg.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("2 Modbus devices, 3 read requests per poll cycle"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (bad, key) in [
        ("profile = \"ups-generic\"", "profile = \"nope\""),
        ("address = \"10.0.0.5:502\"", "address = \"10.0.0.5\""),
        ("name = \"chiller-1\"", "name = \"ups-1\""),
    ] {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(bad, key);
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, text).unwrap();
        for cmd in [vec!["check-config"], vec!["run", "--duration", "1s", "-c"]] {
            let mut args = cmd.clone();
            args.push(broken.to_str().unwrap());
            let out = run(&args);
            assert!(!out.status.success(), "{args:?} accepted {key}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("modbus.devices["), "{key}: {err}");
        }
    }
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = run(&["run", "-c", empty.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sources configured"));
}

#[test]
fn check_config_resolves_mqtt_brokers_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("w.toml");
    let write = |text: &str| std::fs::write(&cfg, text).unwrap();
    write("[[mqtt.brokers]]\nurl = \"mqtt://broker.local\"\nmap = \"wattchdog-sim-sparkplug\"\n");
    let out = run_ok(&["check-config", cfg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("subscribing to spBv1.0/+/#"));
    for (text, key) in [
        (
            "url = \"http://x\"\nmap = \"wattchdog-sim\"\n",
            "mqtt.brokers[0].url",
        ),
        (
            "url = \"mqtt://x\"\nmap = \"nope\"\n",
            "mqtt.brokers[0].map",
        ),
        (
            "url = \"mqtts://x\"\nmap = \"wattchdog-sim\"\n",
            "mqtt.brokers[0].ca_file",
        ),
        (
            "url = \"mqtt://x\"\nmap = \"wattchdog-sim\"\ncert_file = \"c.pem\"\n",
            "mqtt.brokers[0].cert_file",
        ),
    ] {
        write(&format!("[[mqtt.brokers]]\n{text}"));
        let out = run(&["check-config", cfg.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(key),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
