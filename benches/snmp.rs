//! The SNMP collector: decoding a GETBULK answer (per varbind), and one poll cycle of 50
//! UPS units (UPS-MIB: one GET of the scalars, one GETBULK round over the six
//! three-line columns) against 50 simulated agents in the same process.
//!
//! `cargo bench --bench snmp`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use wattchdog::protocol::ber::{self, tag, Value};
use wattchdog::protocol::mib::{self, Oid};
use wattchdog::sim::snmp_agent::{Agent, AgentCounts};
use wattchdog::source::poll::{Answers, DeviceStats, Link};
use wattchdog::source::snmp::{oid_of, raw_of, SnmpPoller};
use wattchdog::time::Clock;
use wattchdog::Config;

const DEVICES: usize = 50;

/// What a UPS's present looks like to its agent.
fn present(metric: &str) -> Option<f64> {
    Some(match metric {
        "battery_charge_pct" => 97.0,
        "battery_voltage_v" => 544.7,
        "battery_temp_c" => 24.0,
        "input_frequency_hz" => 50.0,
        "input_voltage_v" => 230.0,
        "input_power_kw" => 184.5,
        "output_voltage_v" => 230.0,
        "output_power_kw" => 175.2,
        "load_pct" => 46.0,
        "on_battery" | "bypass_active" => 0.0,
        _ => return None,
    })
}

fn decode(c: &mut Criterion) {
    // A GETBULK answer of 96 Integer varbinds in the UPS output table.
    let col: Oid = "1.3.6.1.2.1.33.1.4.4.1".parse().expect("oid");
    let vbs: Vec<(Oid, Value)> = (0..96u32)
        .map(|i| {
            (
                col.child(i / 3 + 2).child(i % 3 + 1),
                Value::Integer(57_800 + i64::from(i)),
            )
        })
        .collect();
    let bytes = ber::message_v2c(b"public", tag::RESPONSE, 42, 0, 0, &vbs);
    let mut g = c.benchmark_group("snmp");
    g.throughput(Throughput::Elements(96));
    g.bench_function("decode_bulk_answer_96_varbinds", |b| {
        b.iter(|| {
            let pdu = snmp2::Pdu::from_bytes(std::hint::black_box(&bytes)).expect("decodes");
            pdu.varbinds
                .map(|(o, v)| (oid_of(&o), raw_of(&v)))
                .filter(|(o, _)| o.is_some())
                .count()
        })
    });
    g.finish();
}

fn poll_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut pollers = rt.block_on(async {
        let mut toml = String::from("[snmp]\nsite = \"bench\"\ntimeout = \"2s\"\n");
        for i in 0..DEVICES {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = socket.local_addr().expect("addr");
            toml += &format!(
                "[[snmp.devices]]\nname = \"ups-{i}\"\naddress = \"{addr}\"\nprofile = \"ups-mib\"\n"
            );
            let agent = Agent::new(&format!("ups-{i}"), mib::named("ups-mib").expect("map"), "public");
            let tree = agent.tree(&present, 0);
            tokio::spawn(async move {
                let counts = AgentCounts::default();
                let mut buf = vec![0u8; 65_535];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    if let Some(r) = agent.answer(&buf[..n], &tree, &counts) {
                        let _ = socket.send_to(&r, from).await;
                    }
                }
            });
        }
        let cfg = Config::from_toml_str(&toml, "bench").expect("config");
        let plans = cfg.snmp.resolve(std::path::Path::new("."), "bench").expect("plans");
        let mut pollers = Vec::new();
        for p in plans {
            let mut poller = SnmpPoller::new(p, Clock::wall(), Arc::new(DeviceStats::default()));
            poller.connect().await.expect("opens");
            pollers.push(poller);
        }
        pollers
    });
    let cycle = |pollers: &mut Vec<SnmpPoller>| {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for mut p in pollers.drain(..) {
                set.spawn(async move {
                    let mut kept = Answers::kept();
                    p.cycle(&mut kept).await;
                    let n = kept.count();
                    (p, n)
                });
            }
            while let Some(Ok((p, n))) = set.join_next().await {
                assert_eq!(n, 11, "every object read");
                pollers.push(p);
            }
        })
    };
    let mut g = c.benchmark_group("snmp");
    g.throughput(Throughput::Elements((DEVICES * 11) as u64));
    g.bench_function("poll_cycle_50_ups", |b| b.iter(|| cycle(&mut pollers)));
    g.finish();
}

criterion_group!(benches, decode, poll_cycle);
criterion_main!(benches);
