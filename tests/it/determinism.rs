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
/// send) interleaved at arbitrary points, and returns the alert stream. The clock is the
/// newest time seen, except in the line at `forged` (a publisher's word, not the clock).
fn feed(lines: &[&str], heartbeat_every: Option<usize>, forged: Option<usize>) -> Vec<String> {
    let cfg = Config::default();
    let mut p = cfg.build_pipeline();
    let mut out = Vec::new();
    let mut newest = i64::MIN;
    for (i, l) in lines.iter().enumerate() {
        let e: Event = jsonl::parse_line(l.as_bytes(), &mut p.registry).unwrap();
        if forged != Some(i) {
            newest = newest.max(e.ts());
        }
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
    let base = feed(&lines, None, None);
    assert!(
        base.iter().any(|a| a.contains("staleness")),
        "the blackout was seen"
    );
    for k in [1, 7, 997] {
        assert_eq!(
            feed(&lines, Some(k), None),
            base,
            "heartbeat every {k} events"
        );
    }
}

/// Live, a source's clock establishes the site's time at once; one publish dated 9999
/// (an MQTT payload's `ts` is the publisher's word) is held apart, and the point's next
/// reading in the present names it. Nothing else changes.
#[test]
fn a_live_feed_keeps_its_alerts_when_one_reading_is_dated_9999() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("c.jsonl");
    simulate(&cap, 3.5, 23, "chiller-setpoint-tamper");
    let text = std::fs::read_to_string(&cap).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let base = feed(&lines, Some(7), None);
    assert!(!base.is_empty(), "the attack was seen");
    let forged = r#"{"ts":"9999-12-31T23:59:59Z","site":"ams1","device":"pdu-1","kind":"pdu","metric":"it_load_kw","value":1}"#;
    let at = lines.len() / 3;
    lines.insert(at, forged);
    let hostile = feed(&lines, Some(7), Some(at));
    let (jumps, others): (Vec<String>, Vec<String>) = hostile
        .into_iter()
        .partition(|a| a.contains(r#""detector":"event_time""#));
    assert!(!jumps.is_empty() && jumps.iter().all(|a| a.contains("it_load_kw")));
    let strip = |a: &String| {
        let mut v: serde_json::Value = serde_json::from_str(a).unwrap();
        v.as_object_mut().unwrap().remove("incident_id");
        v
    };
    assert_eq!(
        others.iter().map(strip).collect::<Vec<_>>(),
        base.iter().map(strip).collect::<Vec<_>>()
    );
}
