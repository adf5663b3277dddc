//! Event time, not arrival: the same capture gives the same alerts however it is fed.

use crate::support::{alerts_without_wall_clock, run, simulate};
use wattchdog::correlate::Output;
use wattchdog::model::event::Event;
use wattchdog::source::jsonl;
use wattchdog::Config;

#[test]
fn paced_and_unpaced_replays_give_identical_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.jsonl");
    simulate(&cap, 3.5, 21, "chiller-setpoint-tamper");
    let mut results = Vec::new();
    for speed in [None, Some("100000")] {
        let alerts = dir
            .path()
            .join(format!("a-{}.jsonl", speed.unwrap_or("max")));
        let mut args = vec![
            "replay",
            cap.to_str().unwrap(),
            "--alerts",
            alerts.to_str().unwrap(),
        ];
        if let Some(s) = speed {
            args.extend(["--speed", s]);
        }
        let out = run(&args);
        assert!(out.status.success());
        results.push(alerts_without_wall_clock(
            &std::fs::read_to_string(&alerts).unwrap(),
        ));
    }
    assert!(!results[0].is_empty(), "the attack raised alerts");
    assert_eq!(results[0], results[1]);
}

/// Feeds the events in order, with watermark heartbeats (as a live source's clock would
/// send) interleaved at arbitrary points, and returns the alert stream.
fn feed(lines: &[&str], heartbeat_every: Option<usize>) -> Vec<String> {
    let cfg = Config::default();
    let mut p = cfg.build_pipeline();
    let mut out = Vec::new();
    let mut newest = i64::MIN;
    for (i, l) in lines.iter().enumerate() {
        let e: Event = jsonl::parse_line(l.as_bytes(), &mut p.registry).unwrap();
        newest = newest.max(e.ts());
        p.push(e, &mut out);
        if heartbeat_every.is_some_and(|k| i % k == 0) {
            // A heartbeat never runs ahead of the data it has seen.
            p.advance_to(newest, &mut out);
        }
    }
    p.finish(&mut out);
    out.iter()
        .filter_map(|o| match o {
            Output::Alert(a) => {
                let mut v = serde_json::to_value(a).unwrap();
                v.as_object_mut().unwrap().remove("detected_at");
                Some(v.to_string())
            }
            Output::Incident(_) => None,
        })
        .collect()
}

#[test]
fn heartbeats_and_batching_do_not_change_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.jsonl");
    simulate(&cap, 3.5, 22, "telemetry-blackout");
    let text = std::fs::read_to_string(&cap).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let base = feed(&lines, None);
    assert!(
        base.iter().any(|a| a.contains("staleness")),
        "the blackout was seen"
    );
    for k in [1, 7, 997] {
        assert_eq!(feed(&lines, Some(k)), base, "heartbeat every {k} events");
    }
}
