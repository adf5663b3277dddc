//! End-to-end replay throughput (parse + features + every detector + alert JSONL), and
//! the two parsing hot spots on their own. Captures come from the project's simulator.
//!
//! `cargo bench --bench replay`

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::io::Cursor;
use wattchdog::app::replay::replay_sources;
use wattchdog::model::points::Registry;
use wattchdog::sim::{self, SimOptions};
use wattchdog::sink::AlertJsonl;
use wattchdog::source::jsonl::{parse_line, JsonlSource};
use wattchdog::source::CaptureSource;
use wattchdog::time::TimeFormat;
use wattchdog::Config;

fn capture(hours: f64, attacks: &str) -> Vec<u8> {
    let opts = SimOptions {
        start: 1_783_382_400_000,
        hours,
        seed: 9,
        attacks: sim::parse_attacks(attacks).expect("valid attacks"),
        intensity: sim::Intensity::Obvious,
    };
    let mut buf = Vec::new();
    sim::simulate(&sim::Facility::default(), &opts, &mut buf).expect("simulates");
    buf
}

fn end_to_end(c: &mut Criterion) {
    let cfg = Config::default();
    let mut g = c.benchmark_group("replay_jsonl");
    g.sample_size(10);
    for (name, hours, attacks) in [("2h-clean", 2.0, "none"), ("10h-11-attacks", 10.0, "all")] {
        let data = capture(hours, attacks);
        let readings = data.iter().filter(|&&b| b == b'\n').count() as u64;
        g.throughput(Throughput::Elements(readings));
        g.bench_with_input(BenchmarkId::from_parameter(name), &data, |b, data| {
            b.iter_batched(
                || data.clone(),
                |data| {
                    let src: Box<dyn CaptureSource> = Box::new(JsonlSource::new(
                        Box::new(Cursor::new(data)),
                        "bench".into(),
                        1 << 20,
                    ));
                    let mut sink = AlertJsonl::new(std::io::sink());
                    replay_sources(&cfg, vec![src], None, &mut |_| {}, &mut sink).expect("replays")
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let line = br#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"chiller-2","kind":"chiller","metric":"supply_temp_c","value":7.1}"#;
    let mut reg = Registry::new(100);
    c.bench_function("parse_jsonl_line", |b| {
        b.iter(|| parse_line(std::hint::black_box(line), &mut reg))
    });
    c.bench_function("parse_rfc3339", |b| {
        b.iter(|| TimeFormat::Auto.parse(std::hint::black_box("2026-07-07T10:00:00.123Z")))
    });
}

criterion_group!(benches, end_to_end, parsing);
criterion_main!(benches);
