//! The BACnet/IP collector: decoding a ReadPropertyMultiple-ACK (per property), and one
//! poll cycle of 50 chillers (one ReadPropertyMultiple of six objects' present value,
//! status flags and reliability each) against 50 simulated devices in the same process.
//! COV subscriptions are off: the cycle measured is the poll.
//!
//! `cargo bench --bench bacnet`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use wattchdog::protocol::bacnet::{
    self, ObjectId, PropertyRef, ReadPropertyMultipleAck, StatusFlags, Value,
};
use wattchdog::protocol::bacnet_map;
use wattchdog::sim::bacnet_device::{Device, DeviceCounts};
use wattchdog::source::bacnet::BacnetPoller;
use wattchdog::source::poll::{Answers, DeviceStats, Link};
use wattchdog::time::Clock;
use wattchdog::Config;

const DEVICES: usize = 50;

/// What a chiller's present looks like to its device.
fn present(metric: &str) -> Option<f64> {
    Some(match metric {
        "supply_temp_c" => 7.1,
        "return_temp_c" => 12.4,
        "flow_lps" => 118.0,
        "power_kw" => 402.5,
        "running" => 1.0,
        "setpoint_c" => 7.0,
        _ => return None,
    })
}

fn decode(c: &mut Criterion) {
    // An answer for 32 analog inputs: 96 properties.
    let ack = ReadPropertyMultipleAck(
        (1..=32u32)
            .map(|i| {
                (
                    ObjectId {
                        kind: 0,
                        instance: i,
                    },
                    vec![
                        (PropertyRef::of(85), Ok(vec![Value::Real(7.0 + i as f32)])),
                        (
                            PropertyRef::of(111),
                            Ok(vec![StatusFlags::default().value()]),
                        ),
                        (PropertyRef::of(103), Ok(vec![Value::Enumerated(0)])),
                    ],
                )
            })
            .collect(),
    );
    let body = ack.encode();
    let datagram = bacnet::encode(
        &bacnet::Apdu::ComplexAck {
            invoke_id: 1,
            service: bacnet::confirmed::READ_PROPERTY_MULTIPLE,
            segmented: false,
            body: &body,
        },
        false,
    );
    let mut g = c.benchmark_group("bacnet");
    g.throughput(Throughput::Elements(96));
    g.bench_function("decode_rpm_ack_96_properties", |b| {
        b.iter(|| {
            let d = bacnet::decode(std::hint::black_box(&datagram)).expect("decodes");
            let Some(bacnet::Apdu::ComplexAck { body, .. }) = d.apdu else {
                unreachable!()
            };
            let ack = ReadPropertyMultipleAck::decode(body).expect("decodes");
            ack.0.iter().map(|(_, r)| r.len()).sum::<usize>()
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
    let (tx, _rx) = mpsc::channel(1024);
    let mut pollers = rt.block_on(async {
        let mut toml = String::from("[bacnet]\nsite = \"bench\"\ntimeout = \"2s\"\ncov = false\n");
        for i in 0..DEVICES {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = socket.local_addr().expect("addr");
            let instance = 1000 + i;
            toml += &format!(
                "[[bacnet.devices]]\nname = \"chiller-{i}\"\naddress = \"{addr}\"\ninstance = {instance}\nprofile = \"chiller-bacnet\"\n"
            );
            let map = bacnet_map::named("chiller-bacnet").expect("map");
            let device = Mutex::new(Device::new(&format!("chiller-{i}"), instance as u32, map));
            tokio::spawn(async move {
                let counts = DeviceCounts::default();
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let answer = device
                        .lock()
                        .expect("device")
                        .answer(&buf[..n], from, &present, 0, &counts);
                    if let Some(r) = answer.reply {
                        let _ = socket.send_to(&r, from).await;
                    }
                }
            });
        }
        let cfg = Config::from_toml_str(&toml, "bench").expect("config");
        let plans = cfg.bacnet.resolve(std::path::Path::new("."), "bench").expect("plans");
        let mut pollers = Vec::new();
        for p in plans {
            let stats = Arc::new(DeviceStats::default());
            let mut poller = BacnetPoller::new(p, Clock::wall(), stats, tx.clone());
            poller.connect().await.expect("found by Who-Is");
            pollers.push(poller);
        }
        pollers
    });
    let cycle = |pollers: &mut Vec<BacnetPoller>| {
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
                assert_eq!(n, 6, "every object read");
                pollers.push(p);
            }
        })
    };
    let mut g = c.benchmark_group("bacnet");
    g.throughput(Throughput::Elements((DEVICES * 6) as u64));
    g.bench_function("poll_cycle_50_chillers", |b| b.iter(|| cycle(&mut pollers)));
    g.finish();
}

criterion_group!(benches, decode, poll_cycle);
criterion_main!(benches);
