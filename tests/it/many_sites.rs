//! Many sites as an operator meets them, against tansu (a real Kafka-protocol broker)
//! on loopback ports: `docs/many-sites.md` run as written, and two edges forwarding
//! served facilities to two central instances, one killed in the middle of an attack.

use crate::kafka::{alert_ids, assigned, audit, start_instance, terminate, wait_until};
use crate::support::{free_port, machine_lock, peer_available, repo, wattchdog, Peer};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `sh` blocks of a Markdown document, in order, as one script.
fn sh_blocks(doc: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in doc.lines() {
        if inside {
            if line.trim_start().starts_with("```") {
                inside = false;
                script.push('\n');
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line.trim() == "```sh" {
            inside = true;
        }
    }
    script
}

/// A process group: everything a script started in the background is killed with it.
struct Group(Peer);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0 .0.id())])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// tansu there (or the test skipped; under `CI=true` failed).
fn tansu_available() -> bool {
    peer_available(
        "tansu (cargo install tansu --features dynostore)",
        Command::new("tansu").arg("--version"),
    )
}

/// `PATH` with the binary under test first.
fn path_with_wattchdog() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_wattchdog")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn tansu_the_many_sites_guide_works_as_written() {
    let _quiet = machine_lock();
    if !tansu_available() {
        return;
    }
    let doc = std::fs::read_to_string(repo("docs/many-sites.md")).unwrap();
    let script = sh_blocks(&doc);
    assert!(
        script.contains("kafka init") && script.contains("forward = true"),
        "the guide's commands were found:\n{script}"
    );
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("WATTCHDOG_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .unwrap();
    let d = dir.path();
    let (broker, http) = (free_port(), free_port());
    let mut child = Command::new("bash");
    child
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(d)
        .env("PATH", path_with_wattchdog())
        .env("BROKER", format!("127.0.0.1:{broker}"))
        .env("HTTP", format!("127.0.0.1:{http}"))
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(d.join("guide.out")).unwrap())
        .stderr(std::fs::File::create(d.join("guide.err")).unwrap())
        .process_group(0);
    let mut group = Group(Peer(child.spawn().unwrap()));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = group.0 .0.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(900) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = d.join("many-sites");
    let explain = || {
        let mut text = format!(
            "== stdout\n{}\n== stderr\n{}\n",
            tail(&d.join("guide.out"), 40),
            tail(&d.join("guide.err"), 40)
        );
        for log in [
            "central.log",
            "central-2.log",
            "ams1.log",
            "fra2.log",
            "tansu.log",
        ] {
            text.push_str(&format!("== {log}\n{}\n", tail(&out.join(log), 15)));
        }
        text
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the guide's commands failed ({status:?}) after {:?}\n{}",
        t0.elapsed(),
        explain()
    );
    eprintln!("the guide ran in {:?}", t0.elapsed());
    drop(group);

    // What the reader was promised: the forced bypass of each site's UPS, raised by
    // the central instance; the status table; the metrics; a second instance that
    // went live and left cleanly.
    let alerts = json_lines(&out.join("central-alerts.jsonl"));
    for site in ["ams1", "fra2"] {
        assert!(
            alerts
                .iter()
                .any(|a| a["site"] == site && a["device"] == "ups-1" && a["detector"] == "ups"),
            "{site}'s UPS bypass raised centrally\n{}",
            explain()
        );
    }
    let stdout = std::fs::read_to_string(d.join("guide.out")).unwrap();
    for expected in [
        "telemetry topic wattchdog.telemetry.v1: created, 6 partitions",
        "alerts topic wattchdog.alerts.v1: created, 6 partitions",
        "group wattchdog: Stable",
        "total lag:",
        "wattchdog_kafka_readings_total{partition=",
        "wattchdog_kafka_partition_held{partition=",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
    let second = std::fs::read_to_string(out.join("central-2.log")).unwrap();
    assert!(
        second.contains("partition live") && second.contains("run (central):"),
        "the second instance went live and stopped cleanly:\n{}",
        tail(&out.join("central-2.log"), 20)
    );
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Two sites (simulated facilities served over Modbus, 60× real time), each with an
/// edge forwarding to tansu; two central instances in one group; the one owning a
/// site is killed (SIGKILL) while that site's UPS is forced to bypass. The survivor
/// takes the partition over: the attack is raised; every record is judged live, and
/// none judged twice below the commit the killed one left; the alerts of both,
/// deduplicated by id, are those one uninterrupted instance raises on the same topic;
/// that instance's counters equal the edges' (records, readings, per site).
#[test]
fn tansu_edges_to_central_with_an_instance_killed_mid_attack() {
    let _quiet = machine_lock();
    if !tansu_available() {
        return;
    }
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("WATTCHDOG_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .unwrap();
    let d = dir.path();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let url = format!("tcp://{brokers}");
    let _tansu = Peer(
        Command::new("tansu")
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(d.join("tansu.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    crate::support::wait_for_port(port, Duration::from_secs(30));
    // Two partitions: librdkafka's default partitioner puts ams1 and fra2 on one each,
    // so each instance owns a site.
    let central = |name: &str, group: &str| -> PathBuf {
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nbrokers = {brokers:?}\nconsume = true\ngroup = {group:?}\nwarmup = \"24h\"\nsession_timeout = \"20s\"\nsilence = \"off\"\naudit = {:?}\n",
                d.join(format!("{name}.audit")).to_str().unwrap()
            ),
        )
        .unwrap();
        cfg
    };
    let a_cfg = central("a", "central");
    let init = wattchdog()
        .args([
            "kafka",
            "init",
            "-c",
            a_cfg.to_str().unwrap(),
            "--partitions",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // Run again asking for more partitions: the topic is left as it is, and the
    // command says it has too few (exit 1), so a script notices.
    let again = wattchdog()
        .args(["kafka", "init", "-c", a_cfg.to_str().unwrap()])
        .args(["--partitions", "4", "--json"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let topics: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let t = &topics["topics"][0];
    assert_eq!(
        (&t["action"], &t["partitions"]),
        (&"exists".into(), &2.into()),
        "{topics}"
    );
    assert!(t["problem"].as_str().unwrap().contains("fewer than the 4"));
    let start = |name: &str, cfg: &Path| start_instance(d, name, cfg);
    let assigned = |name: &str| assigned(d, name);
    // b leads the group (tansu 0.6's coordinator does not survive its leader's death):
    // it joins first; a is the one killed.
    let b = start("b", &central("b", "central"));
    wait_until(d, "b joins", Duration::from_secs(60), || {
        !assigned("b").is_empty()
    });
    let mut a = start("a", &a_cfg);
    wait_until(d, "the group settles", Duration::from_secs(90), || {
        let (pa, pb) = (assigned("a"), assigned("b"));
        pa.len() == 1 && pb.len() == 1 && pa.is_disjoint(&pb)
    });

    // The sites, their attack at the same moment (same seed), and their edges.
    let mut sims = Vec::new();
    let mut edges = BTreeMap::new();
    for site in ["ams1", "fra2"] {
        let cfg = d.join(format!("{site}.toml"));
        sims.push(Peer(
            wattchdog()
                .args(["simulate", "--site", site, "--serve-modbus", "127.0.0.1:0"])
                .args(["--speed", "60", "--hours", "4", "--seed", "3"])
                .args(["--attacks", "ups-forced-bypass", "-o"])
                .arg(d.join(format!("{site}-served.jsonl")))
                .arg("--write-config")
                .arg(&cfg)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
        crate::support::wait_for_file(&cfg, Duration::from_secs(20));
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[kafka]\nbrokers = {brokers:?}\nforward = true\ndetect = false\n"
        ));
        std::fs::write(&cfg, text).unwrap();
        edges.insert(site, start(site, &cfg));
    }
    // When the attack begins, by the wall clock: the served clock runs 60× from its
    // epoch (in the config the simulator wrote).
    let ams1 = std::fs::read_to_string(d.join("ams1.toml")).unwrap();
    let epoch: toml::Value = toml::from_str(&ams1).unwrap();
    let epoch = wattchdog::time::TimeFormat::Auto
        .parse(epoch["clock"]["epoch"].as_str().unwrap())
        .unwrap();
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("ams1-served.labels.json")).unwrap()).unwrap();
    let parse = |v: &serde_json::Value| {
        wattchdog::time::TimeFormat::Auto
            .parse(v.as_str().unwrap())
            .unwrap()
    };
    let (attack_start, attack_end) = (parse(&labels[0]["start"]), parse(&labels[0]["end"]));
    let wall_of = |sim: i64| epoch + (sim - epoch) / 60;
    let now = || chrono::Utc::now().timestamp_millis();
    let sleep_until = |wall: i64| {
        let left = wall - now();
        if left > 0 {
            std::thread::sleep(Duration::from_millis(left as u64));
        }
    };
    // A third of the way into the attack (15 min of simulated time, 15 s here).
    sleep_until(wall_of(attack_start + (attack_end - attack_start) / 3));
    let held_by_a = assigned("a");
    let held_by_b = assigned("b");
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = Instant::now();
    // a's last commits stand now: what b must not judge live again below.
    let status = wattchdog()
        .args(["kafka", "status", "--json", "-c", a_cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let committed: BTreeMap<i32, i64> = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap() as i32,
                p["committed"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let b_live_before = audit(&d.join("b.audit"));
    wait_until(
        d,
        "b judges a's partition live",
        Duration::from_secs(120),
        || {
            held_by_a.iter().all(|p| {
                audit(&d.join("b.audit"))
                    .difference(&b_live_before)
                    .any(|(q, _)| q == p)
            })
        },
    );
    eprintln!(
        "b live on a's partition {:?} after the kill",
        killed.elapsed()
    );

    // The attack over (and ten simulated minutes more), the edges stop and flush.
    sleep_until(wall_of(attack_end + 10 * 60_000));
    let mut forwarded = BTreeMap::new();
    for (site, edge) in std::mem::take(&mut edges) {
        terminate(edge);
        let r = report(&d.join(format!("{site}.report")));
        forwarded.insert(site, r["forwarded"].clone());
        assert_eq!(
            (
                r["forwarded"]["dropped"].as_u64(),
                r["forwarded"]["failed"].as_u64()
            ),
            (Some(0), Some(0)),
            "{site}: {}",
            r["forwarded"]
        );
    }
    drop(sims);
    let records: u64 = forwarded
        .values()
        .map(|f| f["delivered"].as_u64().unwrap())
        .sum();
    let readings: u64 = forwarded
        .values()
        .map(|f| f["readings"].as_u64().unwrap())
        .sum();

    // One uninterrupted instance, in a group of its own, on the same topic.
    let reference = start("ref", &central("ref", "reference"));
    wait_until(
        d,
        "the reference reads every record",
        Duration::from_secs(180),
        || audit(&d.join("ref.audit")).len() as u64 >= records,
    );
    terminate(reference);
    let all = audit(&d.join("ref.audit"));
    wait_until(
        d,
        "every record is judged live",
        Duration::from_secs(120),
        || {
            let mut union = audit(&d.join("a.audit"));
            union.extend(audit(&d.join("b.audit")));
            all.is_subset(&union)
        },
    );
    terminate(b);

    // Nothing b judged live on a's partitions lies below a's last commit.
    for &(p, o) in audit(&d.join("b.audit")).difference(&b_live_before) {
        if held_by_a.contains(&p) {
            assert!(
                o >= committed[&p],
                "partition {p} offset {o} judged again below a's commit {}",
                committed[&p]
            );
        }
    }
    // The reference's counters are the edges'.
    let r = report(&d.join("ref.report"));
    let c = &r["consumed"];
    assert_eq!(
        (c["records"].as_u64(), c["readings"].as_u64()),
        (Some(records), Some(readings)),
        "central counts what the edges forwarded: {forwarded:?}"
    );
    for (site, f) in &forwarded {
        let counted: u64 = c["partitions"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|p| p["sites"][site].as_u64())
            .sum();
        assert_eq!(Some(counted), f["readings"].as_u64(), "{site}");
    }
    // b, on the partition it held throughout, counted what that site's edge delivered.
    let rb = report(&d.join("b.report"));
    for p in &held_by_b {
        let sites = rb["consumed"]["partitions"][p.to_string()]["sites"]
            .as_object()
            .unwrap();
        assert!(!sites.is_empty(), "partition {p} carries a site");
        for (site, n) in sites {
            assert_eq!(n, &forwarded[site.as_str()]["readings"], "{site} on b");
        }
    }
    // b's report times its takeover: at work, then live.
    for p in &held_by_a {
        let t = rb["consumed"]["partitions"][p.to_string()]["takeovers"]
            .as_array()
            .and_then(|t| t.last().cloned())
            .unwrap();
        let (work, live) = (t["at_work_ms"].as_u64(), t["live_ms"].as_u64());
        eprintln!("b took partition {p}: at work after {work:?} ms, live after {live:?} ms (from its assignment)");
        assert!(work.is_some() && live >= work, "{t}");
    }
    // The attack is found, and the alerts are one uninterrupted instance's.
    let expected = alert_ids(&d.join("ref.alerts"));
    let reference_alerts = json_lines(&d.join("ref.alerts"));
    for site in ["ams1", "fra2"] {
        assert!(
            reference_alerts
                .iter()
                .any(|a| a["site"] == site && a["device"] == "ups-1" && a["detector"] == "ups"),
            "{site}'s UPS bypass found"
        );
    }
    let mut got = alert_ids(&d.join("a.alerts"));
    got.extend(alert_ids(&d.join("b.alerts")));
    assert_eq!(
        got, expected,
        "the alerts of a and b are the reference's, each once"
    );
}
