//! The isolation forest: fit, batch scoring and single-row scoring on one thread, on the
//! same data and parameters as `benches/iforest_sklearn.py` (100 trees, ψ = 256, 16
//! features; 10,000 training rows, 100,000 rows scored).
//!
//! `taskset -c 1 cargo bench --bench iforest` and `taskset -c 1 python3 benches/iforest_sklearn.py`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use linfa::dataset::DatasetBase;
use linfa::traits::{Fit, Predict};
use linfa::ParamGuard;
use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use wattchdog::detect::iforest::forest::IsolationForestParams;

fn data(rows: usize, seed: u64) -> Array2<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = Normal::new(0.0, 1.0).unwrap();
    Array2::from_shape_fn((rows, 16), |_| n.sample(&mut rng))
}

fn bench(c: &mut Criterion) {
    let train = data(10_000, 1);
    let test = data(100_000, 2);
    let params = IsolationForestParams::default().seed(3).check().unwrap();
    let mut g = c.benchmark_group("iforest");
    g.sample_size(20);
    g.bench_function("fit_100_trees_psi_256", |b| {
        b.iter_batched(
            || DatasetBase::from(train.clone()),
            |ds| params.fit(&ds).unwrap(),
            BatchSize::LargeInput,
        )
    });
    let model = params.fit(&DatasetBase::from(train.clone())).unwrap();
    g.throughput(Throughput::Elements(test.nrows() as u64));
    g.bench_function("score_batch_100k_rows", |b| {
        b.iter(|| {
            let s: Array1<f64> = model.predict(&test);
            s
        })
    });
    g.bench_function("score_batch_100k_rows_all_cores", |b| {
        b.iter(|| model.predict_par(&test))
    });
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("score_one_row", |b| {
        b.iter(|| {
            i = (i + 1) % test.nrows();
            model.score_row(test.row(i))
        })
    });
    let ext = IsolationForestParams::default()
        .seed(3)
        .extrapolate(true)
        .check()
        .unwrap()
        .fit(&DatasetBase::from(train.clone()))
        .unwrap();
    g.bench_function("score_one_row_extrapolated", |b| {
        b.iter(|| {
            i = (i + 1) % test.nrows();
            ext.score_row(test.row(i))
        })
    });
    g.throughput(Throughput::Elements(test.nrows() as u64));
    g.bench_function("score_batch_100k_rows_extrapolated", |b| {
        b.iter(|| {
            let s: Array1<f64> = ext.predict(&test);
            s
        })
    });
    g.finish();
    // Streaming latency: one row per call, as the detector scores frames.
    for (name, m) in [("plain", &model), ("extrapolated", &ext)] {
        let mut ns: Vec<u128> = (0..100_000)
            .map(|r| {
                let t = std::time::Instant::now();
                std::hint::black_box(m.score_row(test.row(r)));
                t.elapsed().as_nanos()
            })
            .collect();
        ns.sort_unstable();
        println!(
            "single-row latency ({name}, 100,000 calls): p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs",
            ns[50_000] as f64 / 1e3,
            ns[99_000] as f64 / 1e3,
            ns[99_999] as f64 / 1e3
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
