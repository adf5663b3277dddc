//! A lone reading far past its point's tail, on a point read every 5 minutes, is found
//! on the reading itself: the real binary on a checked-in capture.
//!
//! `tests/fixtures/surge-5min.csv`: six days of a request count read every 5 minutes,
//! a daily cycle (80 to 320) with noise and the site's ordinary bursts (80 to 200 more,
//! about one in 150 readings), and one surge of 900 more at 2026-06-03T01:26:40Z that
//! lasts one reading. `ewma_z` needs three readings in a row and never sees it; the
//! 4-hour range of `timescale` does, at the block's close 2.5 hours later.

use crate::support::{opened_by, repo};

const SURGE: &str = "2026-06-03T01:26:40.000Z";

/// (opened at, detector) of the alerts a replay opened.
fn opened(config: Option<&str>) -> Vec<(String, String)> {
    let capture = repo("tests/fixtures/surge-5min.csv");
    opened_by(capture.to_str().unwrap(), config)
}

#[test]
fn a_lone_surge_is_found_on_its_reading_and_the_ordinary_bursts_are_not() {
    let all = opened(None);
    let extreme: Vec<&String> = all
        .iter()
        .filter(|(_, d)| d == "extreme")
        .map(|(ts, _)| ts)
        .collect();
    assert_eq!(extreme, [SURGE], "{all:?}");
    // Without it, nothing opens at the surge: it is seen hours later or not at all.
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[detectors.extreme]\nenabled = false\n").unwrap();
    let without = opened(Some(off.to_str().unwrap()));
    assert!(
        without.iter().all(|(ts, _)| ts.as_str() != SURGE),
        "{without:?}"
    );
    assert!(
        without.iter().all(|(ts, _)| ts.as_str() > SURGE),
        "nothing before the surge either: {without:?}"
    );
}
