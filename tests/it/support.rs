//! Shared helpers: run the binary, make captures with the project's simulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wattchdog::sim::{self, Label, SimOptions};

/// The binary under test.
pub fn wattchdog() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wattchdog"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    wattchdog().args(args).output().expect("binary runs")
}

/// Runs the binary and insists it succeeded (its stderr is the failure message).
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Path of a checked-in file relative to the crate root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Writes a simulated capture (plain JSONL) and its labels sidecar; returns the labels.
pub fn simulate(path: &Path, hours: f64, seed: u64, attacks: &str) -> Vec<Label> {
    let opts = SimOptions {
        start: 1_783_382_400_000,
        hours,
        seed,
        attacks: sim::parse_attacks(attacks).unwrap(),
        intensity: sim::Intensity::Obvious,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let labels = sim::simulate(&sim::Facility::default(), &opts, &mut f).unwrap();
    std::io::Write::flush(&mut f).unwrap();
    std::fs::write(
        sim::labels_path(path),
        serde_json::to_string(&labels).unwrap(),
    )
    .unwrap();
    labels
}

/// Alert JSONL lines with the one wall-clock field removed, for comparisons.
pub fn alerts_without_wall_clock(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect()
}
