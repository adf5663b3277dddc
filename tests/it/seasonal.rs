//! A night at the afternoon's level, inside the range the point spans every day, is
//! found by the point's daily cycle alone: the real binary on a generated capture.
//!
//! Seventeen days of a load read every 5 minutes: a daily swing of ±40 about 100
//! (lowest at midnight) with Gaussian noise of σ 2. On day 16, from 01:00 to 03:00, it
//! holds about 100, the day's mean, as noisy as ever: never beyond the daily range, never a lone surge, and
//! 12σ from what the cycle predicts for the hour.

use crate::support::opened_by;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::f64::consts::TAU;
use std::fmt::Write;

const DAY: usize = 288;
const START: usize = 15 * DAY + 12;
const END: usize = START + 24;

/// The capture, `timestamp,value`, from 2026-06-01 00:00:00 UTC.
fn capture() -> String {
    let mut rng = StdRng::seed_from_u64(7);
    let noise = Normal::new(0.0, 2.0).unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").unwrap();
    let mut out = String::from("timestamp,value\n");
    for i in 0..17 * DAY {
        let cycle = if (START..END).contains(&i) {
            100.0
        } else {
            100.0 - 40.0 * (TAU * (i % DAY) as f64 / DAY as f64).cos()
        };
        let v = cycle + noise.sample(&mut rng);
        let ts = t0 + chrono::Duration::minutes(5 * i as i64);
        writeln!(out, "{},{v:.2}", ts.format("%Y-%m-%d %H:%M:%S")).unwrap();
    }
    out
}

fn at(i: usize) -> String {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z").unwrap();
    (t0 + chrono::Duration::minutes(5 * i as i64))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[test]
fn a_night_at_the_days_level_is_found_by_its_daily_cycle_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("load-5min.csv");
    std::fs::write(&path, capture()).unwrap();
    let opened = |config: Option<&str>| opened_by(path.to_str().unwrap(), config);
    let (from, to) = (at(START), at(END));
    let all = opened(None);
    let seasonal: Vec<&String> = all
        .iter()
        .filter(|(_, d)| d == "seasonal")
        .map(|(ts, _)| ts)
        .collect();
    assert!(!seasonal.is_empty(), "{all:?}");
    assert!(
        seasonal.iter().all(|ts| **ts >= from && **ts < to),
        "{seasonal:?} outside {from}..{to}"
    );
    assert!(*seasonal[0] < at(START + 6), "{seasonal:?}");
    // Without it, nothing opens while the night holds at the day's level.
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[detectors.seasonal]\nenabled = false\n").unwrap();
    let without = opened(Some(off.to_str().unwrap()));
    assert!(
        without.iter().all(|(ts, _)| *ts < from || *ts >= to),
        "{without:?}"
    );
}
