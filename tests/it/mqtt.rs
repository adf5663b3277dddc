//! MQTT end to end through the embedded broker: the simulator publishes, the subscriber
//! decodes, as JSON and as Sparkplug B; a publisher that dies is denial of view.

use crate::support::SharedBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use wattchdog::model::Reading;
use wattchdog::sim::publish::{publish, PublishOptions};
use wattchdog::sim::{Facility, Intensity, SimOptions, Simulator};
use wattchdog::source::mqtt::{subscribe, MqttStats};
use wattchdog::time::Clock;
use wattchdog::Config;

/// Publishes the simulated facility through the embedded broker for `secs` wall seconds
/// at 20×, subscribes with `map`, and returns what arrived and what was published. The
/// publisher is aborted, not stopped, so the broker sends its last will.
async fn round_trip(sparkplug: bool, map: &str, secs: u64) -> (Vec<Reading>, String, MqttStats) {
    let broker = wattchdog::app::broker::start(0, None, 1 << 30).unwrap();
    let start = chrono::Utc::now().timestamp() * 1000;
    let clock = Clock {
        epoch: start,
        speed: 20.0,
    };
    let text = format!(
        "[clock]\nspeed = 20\nepoch = {start}\n[[mqtt.brokers]]\nurl = \"mqtt://{broker}\"\nmap = \"{map}\"\nclient_id = \"it-{map}\"\nbackoff_min = \"50ms\"\n"
    );
    let cfg = Config::from_toml_str(&text, "t").unwrap();
    let plan = cfg
        .mqtt
        .resolve(std::path::Path::new("."), "t")
        .unwrap()
        .remove(0);
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let stats = Arc::new(MqttStats::default());
    let sub = tokio::spawn(subscribe(plan, clock, stats.clone(), tx, stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let opts = SimOptions {
        start,
        hours: 1.0,
        seed: 4,
        attacks: Vec::new(),
        intensity: Intensity::Obvious,
    };
    let sim = Simulator::new(Facility::default(), &opts).unwrap();
    let capture = SharedBuf::default();
    let popts = PublishOptions::from_url(&format!("mqtt://{broker}"), sparkplug).unwrap();
    let publisher = tokio::spawn(publish(
        sim,
        "ams1".into(),
        popts,
        clock,
        Box::new(capture.clone()),
        std::future::pending(),
    ));
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        got.extend(batch);
    }
    publisher.abort();
    let after = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(batch)) = tokio::time::timeout_at(after, rx.recv()).await {
        got.extend(batch);
    }
    stop.send(true).unwrap();
    sub.await.unwrap();
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let stats = Arc::try_unwrap(stats).unwrap();
    (got, text, stats)
}

fn check_against_capture(got: &[Reading], capture: &str) {
    let truth: std::collections::HashMap<(i64, String, String), f64> =
        crate::support::capture_readings(capture)
            .into_iter()
            .map(|(ts, d, m, v)| ((ts, d, m), v))
            .collect();
    let data: Vec<&Reading> = got.iter().filter(|r| &*r.metric != "online").collect();
    assert!(data.len() > 1000, "{} readings", data.len());
    for r in data {
        // serde_json's default float parsing may be one ulp off the printed value.
        let want = truth.get(&(r.ts, r.device.to_string(), r.metric.to_string()));
        assert!(
            want.is_some_and(|w| (w - r.value).abs() <= 1e-12 * w.abs().max(1.0)),
            "{r:?} vs {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_readings_arrive_exactly_as_the_plant_reported_them() {
    let (got, capture, stats) = round_trip(false, "wattchdog-sim", 4).await;
    check_against_capture(&got, &capture);
    assert_eq!(stats.malformed.into_inner(), 0);
    assert_eq!(stats.unmapped.into_inner(), 0);
    let kinds: std::collections::BTreeSet<&str> = got.iter().map(|r| r.kind.as_ref()).collect();
    assert!(
        kinds.contains("chiller") && kinds.contains("grid_meter"),
        "{kinds:?}"
    );
    assert!(
        got.iter()
            .any(|r| &*r.device == "sim-gw" && &*r.metric == "online" && r.value == 0.0),
        "the last will says the gateway went offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_births_aliases_and_the_death_certificate() {
    let (got, capture, stats) = round_trip(true, "wattchdog-sim-sparkplug", 4).await;
    check_against_capture(&got, &capture);
    assert_eq!(stats.malformed.into_inner(), 0);
    assert_eq!(stats.seq_gaps.into_inner(), 0);
    let chiller = got.iter().find(|r| &*r.device == "chiller-1").unwrap();
    assert_eq!(
        (chiller.kind.as_ref(), chiller.site.as_ref()),
        ("chiller", "ams1")
    );
    let offline: Vec<&str> = got
        .iter()
        .filter(|r| &*r.metric == "online" && r.value == 0.0)
        .map(|r| r.device.as_ref())
        .collect();
    assert!(
        offline.contains(&"sim-gw") && offline.contains(&"ups-1"),
        "NDEATH takes every device offline: {offline:?}"
    );
}
