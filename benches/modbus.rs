//! The Modbus collector: decoding throughput, and one poll cycle of 50 devices × 120
//! registers against a local Modbus TCP gateway (the simulated devices' server).
//!
//! `cargo bench --bench modbus`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use wattchdog::protocol::image::DeviceImage;
use wattchdog::protocol::plan::{plan, PlanLimits};
use wattchdog::protocol::registers::RegisterMap;
use wattchdog::sim::serve::{FunctionCounts, GatewayHandle};
use wattchdog::source::modbus::{DevicePlan, DevicePoller, DeviceStats};
use wattchdog::source::poll::{Answers, Link};
use wattchdog::time::Clock;

const DEVICES: usize = 50;

/// 120 contiguous holding registers: 30 u16, 30 i16, 15 word-swapped f32, 15 i32.
fn map() -> RegisterMap {
    let mut t = String::from("profile = \"bench\"\nkind = \"other\"\nsource = \"bench\"\n");
    let mut addr = 0;
    for (ty, n, extra) in [
        ("u16", 30, "scale = 0.1\n"),
        ("i16", 30, "scale = 0.01\n"),
        ("f32", 15, "word_order = \"little\"\n"),
        ("i32", 15, ""),
    ] {
        for k in 0..n {
            t += &format!(
                "[[registers]]\nmetric = \"{ty}_{k}\"\ntable = \"holding\"\naddress = {addr}\ntype = \"{ty}\"\n{extra}"
            );
            addr += if ty.ends_with("16") { 1 } else { 2 };
        }
    }
    assert_eq!(addr, 120);
    RegisterMap::from_toml_str(&t, "bench").expect("valid bench map")
}

fn image(map: &RegisterMap) -> DeviceImage {
    let mut img = DeviceImage::new(map.clone());
    for (i, r) in map.registers.iter().enumerate() {
        img.set(&r.metric, i as f64 * 1.5 - 20.0);
    }
    img
}

fn decode(c: &mut Criterion) {
    let m = map();
    let img = image(&m);
    let reqs = plan(&m, &PlanLimits::default());
    assert_eq!(reqs.len(), 1, "120 contiguous registers are one request");
    let words = img
        .read(reqs[0].table, reqs[0].start, reqs[0].count)
        .expect("readable");
    let mut g = c.benchmark_group("modbus");
    g.throughput(Throughput::Elements(120));
    g.bench_function("decode_120_registers", |b| {
        b.iter(|| reqs[0].decode(&m, std::hint::black_box(&words)))
    });
    g.finish();
}

fn poll_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let m = map();
    let counts = Arc::new(FunctionCounts::default());
    let (gateway, mut pollers) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let devices = (0..DEVICES)
            .map(|i| (format!("dev-{i}"), image(&m)))
            .collect();
        let gateway = GatewayHandle::start(listener, devices, (), counts.clone());
        let mut pollers = Vec::new();
        for i in 0..DEVICES {
            let dev = DevicePlan {
                site: "bench".into(),
                name: format!("dev-{i}").into(),
                address: addr.to_string(),
                unit: (i + 1) as u8,
                interval: 1000,
                timeout: 2000,
                requests: plan(&m, &PlanLimits::default()),
                map: Arc::new(m.clone()),
            };
            let mut p = DevicePoller::new(dev, Clock::wall(), Arc::new(DeviceStats::default()));
            p.connect().await.expect("connects");
            pollers.push(p);
        }
        (gateway, pollers)
    });
    let cycle = |pollers: &mut Vec<DevicePoller>| {
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
                assert_eq!(n, 90, "every entry read");
                pollers.push(p);
            }
        })
    };
    // What the server received in one cycle: the coalescing optimum is one read per device.
    cycle(&mut pollers);
    let requests: u64 = counts.seen().iter().map(|(_, n)| n).sum();
    eprintln!("requests per cycle: {requests} (optimum: {DEVICES}, one per device)");
    assert_eq!(requests, DEVICES as u64);
    let mut g = c.benchmark_group("modbus");
    g.throughput(Throughput::Elements((DEVICES * 120) as u64));
    g.bench_function("poll_cycle_50x120", |b| b.iter(|| cycle(&mut pollers)));
    g.finish();
    rt.block_on(async { gateway.stop() });
}

criterion_group!(benches, decode, poll_cycle);
criterion_main!(benches);
