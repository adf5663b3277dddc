//! The Modbus collector against real Modbus TCP on loopback: the simulated devices, a
//! misbehaving server, and (in `interop_modbus`) pymodbus.

use crate::support::{capture_readings, run_ok, wait_for_file, wattchdog, Peer, SharedBuf};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wattchdog::model::{Alert, Quality};
use wattchdog::sim::serve::{run_config, serve, served_devices, FunctionCounts};
use wattchdog::sim::{Facility, Intensity, SimOptions, Simulator};
use wattchdog::source::modbus::{Collector, PollSettings};
use wattchdog::time::Clock;
use wattchdog::Config;

fn now_s() -> i64 {
    chrono::Utc::now().timestamp() * 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_reads_the_served_simulation_exactly_and_only_reads() {
    let start = now_s();
    let opts = SimOptions {
        start,
        hours: 1.0,
        seed: 3,
        attacks: Vec::new(),
        intensity: Intensity::Obvious,
    };
    let sim = Simulator::new(Facility::default(), &opts).unwrap();
    let devices = served_devices(&sim).unwrap();
    let clock = Clock {
        epoch: start,
        speed: 20.0,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = SharedBuf::default();
    let counts = Arc::new(FunctionCounts::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        sim,
        "ams1".into(),
        listener,
        clock,
        Box::new(capture.clone()),
        counts.clone(),
        None,
        None,
        async {
            let _ = stopped.await;
        },
    ));

    let cfg = Config::from_toml_str(&run_config("ams1", addr, &devices, clock, "1s"), "t").unwrap();
    let plans = cfg.modbus.resolve(Path::new("."), "t").unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let settings = PollSettings {
        clock,
        backoff_min: 50,
        backoff_max: 500,
    };
    let collector = Collector::start(plans, 4, settings, tx);
    let mut readings = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        readings.extend(batch);
    }
    let polled = collector.stop().await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let seen = counts.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|(f, _)| (1..=4).contains(f)),
        "the collector sent something other than a read: {seen:?}"
    );
    for d in &polled {
        assert!(d.responses >= 20, "{d:?}");
        assert_eq!((d.exceptions, d.timeouts, d.bad), (0, 0, 0), "{d:?}");
    }
    // Every polled value is what the plant reported for one of the last seconds.
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let truth = capture_readings(&text);
    let mut index = std::collections::HashMap::new();
    for (ts, dev, metric, v) in &truth {
        index.insert((*ts, dev.clone(), metric.clone()), *v);
    }
    let metrics: std::collections::BTreeSet<(String, String)> = truth
        .iter()
        .map(|(_, d, m, _)| (d.clone(), m.clone()))
        .collect();
    let mut polled_metrics = std::collections::BTreeSet::new();
    for r in &readings {
        assert_eq!(r.quality, Quality::Good);
        polled_metrics.insert((r.device.to_string(), r.metric.to_string()));
        let second = r.ts.div_euclid(1000) * 1000;
        let matched = (0..=3).any(|k| {
            index
                .get(&(
                    second - k * 1000,
                    r.device.to_string(),
                    r.metric.to_string(),
                ))
                .is_some_and(|v| (v - r.value).abs() <= 1e-6 * v.abs().max(1.0))
        });
        assert!(matched, "{r:?} matches no recent value of the plant");
    }
    assert_eq!(
        polled_metrics, metrics,
        "every simulated metric is served and polled"
    );
}

/// What the misbehaving server does with the next request.
const NORMAL: u8 = 0;
const EXCEPTION: u8 = 1;
const SILENT: u8 = 2;
const DROP: u8 = 3;

/// A hand-written Modbus TCP server (independent of tokio-modbus) serving two input
/// registers, whose behaviour the test switches while the poller runs. It records the
/// function code of every request.
async fn misbehaving_server(listener: TcpListener, mode: Arc<AtomicU8>, seen: Arc<Mutex<Vec<u8>>>) {
    let mut n: u16 = 0;
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        if mode.load(Ordering::SeqCst) == DROP {
            continue; // closed at once
        }
        n = n.wrapping_add(7);
        let (mode, seen) = (mode.clone(), seen.clone());
        tokio::spawn(async move {
            let mut k = n;
            loop {
                let mut hdr = [0u8; 7];
                if s.read_exact(&mut hdr).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
                if !(2..=254).contains(&len) {
                    return;
                }
                let mut pdu = vec![0u8; len - 1];
                if s.read_exact(&mut pdu).await.is_err() {
                    return;
                }
                seen.lock().unwrap().push(pdu[0]);
                let reply: Vec<u8> = match mode.load(Ordering::SeqCst) {
                    NORMAL if pdu[0] == 4 && pdu.len() == 5 => {
                        let count = u16::from_be_bytes([pdu[3], pdu[4]]);
                        let mut r = vec![4, (count * 2) as u8];
                        for i in 0..count {
                            k = k.wrapping_mul(31).wrapping_add(17);
                            let w: u16 = 2400 + i * 2000 + k % 50;
                            r.extend_from_slice(&w.to_be_bytes());
                        }
                        r
                    }
                    NORMAL => vec![pdu[0] | 0x80, 1],
                    EXCEPTION => vec![pdu[0] | 0x80, 4],
                    SILENT => continue,
                    _ => return,
                };
                let mut frame = Vec::with_capacity(7 + reply.len());
                frame.extend_from_slice(&hdr[..4]);
                frame.extend_from_slice(&(reply.len() as u16 + 1).to_be_bytes());
                frame.push(hdr[6]);
                frame.extend_from_slice(&reply);
                if s.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_become_bad_quality_counters_and_denial_of_view_never_a_crash() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(misbehaving_server(listener, mode.clone(), seen.clone()));
    let start = now_s();
    let text = format!(
        "[clock]\nspeed = 20\nepoch = {start}\n\
         [modbus]\nsite = \"lab\"\ntimeout = \"100ms\"\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\
         [[modbus.devices]]\nname = \"flaky\"\naddress = \"{addr}\"\nunit = 9\nprofile = \"env-sensor-generic\"\n"
    );
    let cfg = Config::from_toml_str(&text, "t").unwrap();
    let clock = cfg.clock.clock();
    // Normal, then exceptions, then silence, then dropped connections, then normal.
    let phases = [
        (NORMAL, 4000),
        (EXCEPTION, 1500),
        (SILENT, 2500),
        (DROP, 1000),
        (NORMAL, 1500),
    ];
    let switched = Arc::new(Mutex::new(Vec::new()));
    let script = {
        let (mode, switched) = (mode.clone(), switched.clone());
        async move {
            for (m, ms) in phases {
                mode.store(m, Ordering::SeqCst);
                switched.lock().unwrap().push((m, clock.now()));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    };
    let mut alerts: Vec<Alert> = Vec::new();
    let report = wattchdog::app::run::live(
        &cfg,
        Path::new("."),
        "t",
        &mut |o: &wattchdog::correlate::Output| {
            if let wattchdog::correlate::Output::Alert(a) = o {
                alerts.push((*a).clone());
            }
            Ok(())
        },
        script,
    )
    .await
    .unwrap();

    let d = &report.devices[0];
    assert!(d.exceptions > 0, "{d:?}");
    assert!(
        d.bad >= 2 * d.exceptions,
        "both points of a refused read are bad: {d:?}"
    );
    assert!(d.timeouts > 0, "{d:?}");
    assert!(d.transport_errors > 0, "{d:?}");
    assert!(d.connects >= 3, "reconnected after each fault: {d:?}");
    assert!(d.good > 100, "{d:?}");
    let silent_from = switched.lock().unwrap()[2].1;
    let drop_until = switched.lock().unwrap()[4].1;
    let denial: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.device == "flaky" && a.detector == "staleness")
        .collect();
    assert!(
        denial
            .iter()
            .any(|a| a.ts >= silent_from && a.ts <= drop_until),
        "silence raised denial of view: {alerts:#?}"
    );
    // 30 s of exceptions (event time): the device answers, but its values are gone. That
    // is denial of view on its points, never the device "sending nothing".
    let exceptions_from = switched.lock().unwrap()[1].1;
    let before_silence: Vec<&&Alert> = denial.iter().filter(|a| a.ts < silent_from).collect();
    assert!(
        before_silence
            .iter()
            .all(|a| !a.metrics.is_empty() && a.summary.contains("only as bad readings")),
        "exceptions are answers, not silence: {alerts:#?}"
    );
    assert!(
        before_silence.iter().any(|a| a.ts >= exceptions_from),
        "bad readings only, for longer than a silence: denial of view: {alerts:#?}"
    );
    let fcs = seen.lock().unwrap().clone();
    assert!(fcs.iter().all(|&f| f == 4), "only reads: {fcs:?}");
}

/// The end-to-end comparison simulates the warm-up and one attack slot (3.2 h) at 300×:
/// 38 s of wall time.
const SPEED: f64 = 300.0;
const HOURS: f64 = 3.2;

#[test]
fn run_against_served_devices_alerts_like_a_replay_of_the_same_scenario() {
    let report =
        served_run_alerts_like_a_replay("chiller-setpoint-tamper", &[], ("chiller-2", "physics"));
    let (report, live, replay) = report;
    assert!(report["snmp"].is_null(), "Modbus only");
    // Polled over Modbus, the run reads the plant's values as the capture holds them.
    let common = live.intersection(&replay).count();
    let union = live.union(&replay).count();
    assert!(
        common * 10 >= union * 8,
        "live {live:?} and replay {replay:?} should mostly agree"
    );
}

/// (device, detector) pairs of the alerts first raised in an attack window.
pub(crate) type Pairs = std::collections::BTreeSet<(String, String)>;

/// Serves one attack slot of the simulator (with `sim_args` added), runs `wattchdog run`
/// against it on the written config, replays the capture it wrote, and checks that both
/// raise `attacked` (device, detector) in the attack window and nothing before it: the
/// live run's report, and the live and replayed pairs.
pub(crate) fn served_run_alerts_like_a_replay(
    attack: &str,
    sim_args: &[&str],
    attacked: (&str, &str),
) -> (serde_json::Value, Pairs, Pairs) {
    let _quiet = crate::support::machine_lock();
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("served.jsonl");
    let run_toml = dir.path().join("run.toml");
    let _server = Peer(
        wattchdog()
            .args(["simulate", "--serve-modbus", "127.0.0.1:0", "--speed"])
            .arg(SPEED.to_string())
            .args(["--hours", &HOURS.to_string(), "--seed", "5"])
            .args(["--attacks", attack])
            .args(sim_args)
            .arg("-o")
            .arg(&capture)
            .arg("--write-config")
            .arg(&run_toml)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    wait_for_file(&run_toml, Duration::from_secs(20));
    // Stop polling a little before the simulation ends (its end is a silence of its own).
    let wall = HOURS * 3600.0 / SPEED - 1.5 - started.elapsed().as_secs_f64();
    let live = dir.path().join("live.jsonl");
    run_ok(&[
        "run",
        "-c",
        run_toml.to_str().unwrap(),
        "--duration",
        &format!("{}ms", (wall * 1000.0) as i64),
        "--alerts",
        live.to_str().unwrap(),
        "--report",
        dir.path().join("live.report.json").to_str().unwrap(),
    ]);
    // What the live run could not use (a starved collector's readings arrive late).
    let live_report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("live.report.json")).unwrap(),
    )
    .unwrap();
    let lost = format!(
        "live run: {} late, {} ahead, {} readings",
        live_report["pipeline"]["late"],
        live_report["pipeline"]["ahead"],
        live_report["pipeline"]["readings"]
    );
    eprintln!("{lost}");
    let replayed = dir.path().join("replayed.jsonl");
    run_ok(&[
        "replay",
        capture.to_str().unwrap(),
        "--alerts",
        replayed.to_str().unwrap(),
    ]);
    let labels: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("served.labels.json")).unwrap(),
    )
    .unwrap();
    let ts = |v: &serde_json::Value| {
        wattchdog::time::TimeFormat::Auto
            .parse(v.as_str().unwrap())
            .unwrap()
    };
    let (from, to) = (ts(&labels[0]["start"]), ts(&labels[0]["end"]) + 300_000);
    // (device, detector) of alerts first raised in the attack window; the protocol
    // detector sees the attacker's write only on the wire (pcap), not by polling.
    let pairs = |path: &Path| -> (std::collections::BTreeSet<(String, String)>, Vec<String>) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut inside = std::collections::BTreeSet::new();
        let mut before = Vec::new();
        for l in text.lines() {
            let a: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = ts(&a["ts"]);
            let det = a["detector"].as_str().unwrap().to_owned();
            if det == "protocol" {
                continue;
            }
            if t < from {
                before.push(format!("{} {} {}", a["ts"], det, a["summary"]));
            } else if t <= to {
                inside.insert((a["device"].as_str().unwrap().to_owned(), det));
            }
        }
        (inside, before)
    };
    let (live_pairs, live_before) = pairs(&live);
    let (replay_pairs, replay_before) = pairs(&replayed);
    assert!(
        live_before.is_empty() && replay_before.is_empty(),
        "no alarms before the attack: live {live_before:#?}, replay {replay_before:#?}"
    );
    let attacked = (attacked.0.to_owned(), attacked.1.to_owned());
    assert!(live_pairs.contains(&attacked), "live: {live_pairs:?}");
    assert!(replay_pairs.contains(&attacked), "replay: {replay_pairs:?}");
    (live_report, live_pairs, replay_pairs)
}
