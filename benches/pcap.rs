//! Packet-capture replay: an hour of the simulated facility's Modbus/TCP traffic
//! (`simulate -o x.pcap`, made in memory) read into events — the wire alone (pcap blocks,
//! Ethernet/IP/TCP, reassembly, MBAP/PDU, pairing, register decoding) — and the MBAP/PDU
//! parser alone, and the hour replayed through the whole pipeline. Throughput is in Modbus ADUs (a request or a response).
//!
//! `cargo bench --bench pcap`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use wattchdog::app::replay::replay_sources;
use wattchdog::model::points::Registry;
use wattchdog::protocol::frame;
use wattchdog::sim::{self, Facility, SimOptions};
use wattchdog::source::pcap::{PcapSource, WireMap};
use wattchdog::source::CaptureSource;
use wattchdog::Config;

/// An hour of traffic, and the config that names its devices.
fn capture() -> (Vec<u8>, Config) {
    let f = Facility::default();
    let opts = SimOptions {
        start: 1_783_382_400_000,
        hours: 1.0,
        seed: 1,
        attacks: Vec::new(),
        intensity: sim::Intensity::Obvious,
    };
    let mut bytes = Vec::new();
    sim::pcap::simulate_pcap(&f, &opts, &mut bytes).expect("simulates");
    let devices = sim::pcap::devices(&f, &opts).expect("devices");
    let cfg = Config::from_toml_str(&sim::pcap::replay_config(&devices, &f.site), "bench")
        .expect("valid config");
    (bytes, cfg)
}

fn read_all(bytes: &[u8], wire: &Arc<WireMap>) -> (u64, u64) {
    let mut src = PcapSource::new(
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        "bench.pcap".into(),
        wire.clone(),
    )
    .expect("a pcap");
    let mut reg = Registry::new(100_000);
    let mut events = 0;
    while src.next_event(&mut reg).is_some() {
        events += 1;
    }
    (events, src.stats().wire.as_ref().map_or(0, |w| w.adus))
}

fn wire(c: &mut Criterion) {
    let (bytes, cfg) = capture();
    let (_, adus) = read_all(&bytes, &cfg.wire);
    let mut g = c.benchmark_group("pcap");
    g.sample_size(10);
    g.throughput(Throughput::Elements(adus));
    g.bench_function("one_hour_of_facility_traffic_to_events", |b| {
        b.iter(|| read_all(&bytes, &cfg.wire))
    });
    // The same hour through the whole pipeline: every detector, the correlator.
    g.bench_function("one_hour_of_facility_traffic_replayed", |b| {
        b.iter(|| {
            let src = PcapSource::new(
                Box::new(std::io::Cursor::new(bytes.clone())),
                "bench.pcap".into(),
                cfg.wire.clone(),
            )
            .expect("a pcap");
            replay_sources(
                &cfg,
                vec![Box::new(src)],
                None,
                &mut |_| {},
                &mut wattchdog::sink::discard(),
            )
            .expect("replays")
            .alerts
            .len()
        })
    });
    g.finish();
}

fn parser(c: &mut Criterion) {
    // A read request and its 10-register response, as ADUs back to back.
    let mut adus = Vec::new();
    for t in 0..1000u16 {
        adus.extend(t.to_be_bytes());
        adus.extend([0, 0, 0, 6, 1, 3, 0x03, 0xE8, 0, 10]);
        adus.extend(t.to_be_bytes());
        adus.extend([0, 0, 0, 23, 1, 3, 20]);
        adus.extend([0x12; 20]);
    }
    let mut g = c.benchmark_group("pcap");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("mbap_pdu_parse_and_pair_2000_adus", |b| {
        b.iter(|| {
            let (mut at, mut ok, mut req) = (0, 0u32, None);
            while let Ok(Some(h)) = frame::mbap(&adus[at..]) {
                let pdu = &adus[at + frame::MBAP_LEN..at + h.adu_len()];
                at += h.adu_len();
                match req.take() {
                    None => req = frame::parse_request(pdu).ok(),
                    Some(r) => {
                        if let Ok(resp) = frame::parse_response(pdu) {
                            ok += u32::from(frame::check_pair(&r, &resp).is_ok());
                        }
                    }
                }
            }
            ok
        })
    });
    g.finish();
}

criterion_group!(benches, wire, parser);
criterion_main!(benches);
