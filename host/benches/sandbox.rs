//! Per-request cost of the sandbox: a fresh store and instance from the
//! `InstancePre`, `infer` through the component boundary, and teardown, for
//! the digits model at batch 1 and 64 — beside the same forward pass
//! compiled natively from the very same source file.
//!
//! Run: `cargo bench --workspace --bench sandbox`. After criterion's own
//! output it prints a table with the medians and the ratio.

use std::time::{Duration, Instant};

use airlock::bindings::{InferRequest, Tensor, TensorData};
use airlock::{Host, HostConfig};
use criterion::{BenchmarkId, Criterion, criterion_group};

#[path = "../../guest-models/digits/src/mlp.rs"]
#[allow(dead_code)]
mod mlp;

fn input(batch: usize) -> Vec<f32> {
    // Deterministic pixel values in the dataset's range 0..=16.
    (0..batch * 64).map(|i| ((i * 7 + 3) % 17) as f32).collect()
}

fn request(batch: usize) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![batch as u64, 64],
            data: TensorData::Fp32(input(batch)),
        }],
        outputs: Vec::new(),
    }
}

fn host() -> Host {
    let dir = std::env::temp_dir().join("airlock-bench-data");
    let host = Host::new(HostConfig::new(dir)).expect("engine");
    host.load_file("digits", airlock_artifacts::DIGITS.as_ref())
        .expect("load digits");
    host
}

fn bench(c: &mut Criterion) {
    let host = host();
    let model = host.registry().active("digits").unwrap();
    let mut group = c.benchmark_group("digits");
    for batch in [1usize, 64] {
        let req = request(batch);
        group.bench_with_input(BenchmarkId::new("sandboxed", batch), &req, |b, req| {
            b.iter(|| model.infer(req).unwrap().unwrap())
        });
        let x = input(batch);
        let mut out = Vec::with_capacity(batch * 10);
        group.bench_with_input(BenchmarkId::new("native", batch), &x, |b, x| {
            b.iter(|| {
                mlp::forward(std::hint::black_box(x), batch, &mut out);
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

/// Median of `samples` timings of `f`, each averaged over `iters` calls.
fn median(samples: usize, iters: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The summary table, measured in one run, side by side.
fn summary() {
    let host = host();
    let model = host.registry().active("digits").unwrap();
    println!();
    println!("| batch | native forward | sandboxed (fresh instance + infer) | overhead | ratio |");
    println!("|---|---|---|---|---|");
    for batch in [1usize, 64] {
        let req = request(batch);
        let x = input(batch);
        let mut out = Vec::with_capacity(batch * 10);
        // Warm up both paths.
        for _ in 0..2000 {
            model.infer(&req).unwrap().unwrap();
            mlp::forward(&x, batch, &mut out);
        }
        let native = median(101, 2000, || {
            mlp::forward(std::hint::black_box(&x), batch, &mut out);
            std::hint::black_box(&out);
        });
        let sandboxed = median(101, 200, || {
            std::hint::black_box(model.infer(&req).unwrap().unwrap());
        });
        println!(
            "| {batch} | {:.2} µs | {:.2} µs | {:.2} µs | {:.1}x |",
            native.as_secs_f64() * 1e6,
            sandboxed.as_secs_f64() * 1e6,
            (sandboxed.as_secs_f64() - native.as_secs_f64()) * 1e6,
            sandboxed.as_secs_f64() / native.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
