//! Per-request cost of the sandbox: a fresh store and instance from the
//! `InstancePre`, `infer` through the component boundary, and teardown, for
//! the digits model at batch 1 and 64 — beside the same forward pass
//! compiled natively from the very same source file.
//!
//! Run: `cargo bench --workspace --bench sandbox`. After criterion's own
//! output it prints a table with the medians and the ratios: the sandbox's
//! per-request cost, and the wasm/native ratio of the model kernel alone
//! (one instance, `infer` called again and again), and the whole inference
//! pipeline (`Host::prepare_infer` and `InferCall::run`: admission, JSON
//! parsing and validation, guards, the model, output checks and the JSON
//! answer) beside the bare sandboxed call. `AIRLOCK_BENCH_DIGITS`
//! names another build of the digits component to measure instead.

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

/// The same request as the JSON body of an OIP v2 inference.
fn json_body(batch: usize) -> bytes::Bytes {
    let body = serde_json::json!({
        "inputs": [{
            "name": "input",
            "shape": [batch, 64],
            "datatype": "FP32",
            "data": input(batch),
        }]
    });
    serde_json::to_vec(&body).expect("json").into()
}

/// One request through the whole pipeline, as the HTTP layer runs it once
/// it has read the body (charged to the host's request budget).
fn pipeline(host: &Host, body: &bytes::Bytes) {
    let call = host
        .prepare_infer("digits", None, None)
        .expect("digits is served");
    let mut reservation = host.request_budget().reservation();
    reservation.try_grow(body.len()).expect("budget");
    let output = call
        .run(body.clone(), None, reservation)
        .expect("an answer");
    std::hint::black_box(output);
}

/// The digits component measured: this build's, or the one at
/// `$AIRLOCK_BENCH_DIGITS` (to compare with another build of the guest).
fn digits_wasm() -> std::path::PathBuf {
    std::env::var_os("AIRLOCK_BENCH_DIGITS")
        .map(Into::into)
        .unwrap_or_else(|| airlock_artifacts::DIGITS.into())
}

fn host() -> Host {
    let dir = std::env::temp_dir().join("airlock-bench-data");
    let host = Host::new(HostConfig::new(dir)).expect("engine");
    host.load_file("digits", &digits_wasm())
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
        let body = json_body(batch);
        group.bench_with_input(BenchmarkId::new("pipeline", batch), &body, |b, body| {
            b.iter(|| pipeline(&host, body))
        });
        let x = input(batch);
        let mut out = vec![0.0; batch * mlp::CLASSES];
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

/// One instance of the digits model, kept: each `infer` on it runs the
/// forward pass and the copies across the component boundary, without
/// instantiation or teardown (requests never reuse an instance; this is
/// for the kernel's wasm/native ratio only).
struct Kept {
    store: wasmtime::Store<airlock::sandbox::SandboxState>,
    model: airlock::bindings::Model,
}

impl Kept {
    fn new(host: &Host) -> Self {
        let wasm = std::fs::read(digits_wasm()).expect("digits.wasm");
        let cache = airlock::artifacts::ArtifactCache::new(
            &host.config().data_dir.join("artifacts"),
            host.runtime(),
        );
        let digest = airlock::digest::sha256_hex(&wasm);
        let limits = airlock::Limits::default();
        let (component, _) = cache
            .load_or_compile::<wasmtime::component::Component>(
                host.runtime(),
                &digest,
                &wasm,
                &limits,
            )
            .expect("digits compiles");
        let pre = host
            .runtime()
            .linker()
            .instantiate_pre(&component)
            .expect("digits links");
        let pre = airlock::bindings::ModelPre::new(pre).expect("digits is a model");
        let mut store = host.runtime().new_store(limits);
        // A request's deadline is for one request; this store serves the
        // whole measurement.
        store.set_epoch_deadline(1 << 40);
        let model = pre.instantiate(&mut store).expect("digits instantiates");
        Self { store, model }
    }

    fn infer(&mut self, request: &InferRequest) {
        let response = self
            .model
            .airlock_inference_inference()
            .call_infer(&mut self.store, request)
            .expect("no trap")
            .expect("an answer");
        std::hint::black_box(response);
    }
}

/// The summary tables, measured in one run, side by side.
fn summary() {
    let host = host();
    let model = host.registry().active("digits").unwrap();
    let mut kept = Kept::new(&host);
    let mut sandbox = String::from(
        "| batch | native forward | sandboxed (fresh instance + infer) | overhead | ratio |\n\
         |---|---|---|---|---|\n",
    );
    let mut kernel = String::from(
        "| batch | native forward | wasm: infer on a kept instance | wasm / native |\n\
         |---|---|---|---|\n",
    );
    let mut whole = String::from(
        "| batch | sandboxed (fresh instance + infer) | whole pipeline (prepare + run, JSON in and out) | pipeline overhead |\n\
         |---|---|---|---|\n",
    );
    for batch in [1usize, 64] {
        let req = request(batch);
        let body = json_body(batch);
        let x = input(batch);
        let mut out = vec![0.0; batch * mlp::CLASSES];
        // Warm up every path.
        for _ in 0..2000 {
            model.infer(&req).unwrap().unwrap();
            kept.infer(&req);
            pipeline(&host, &body);
            mlp::forward(&x, batch, &mut out);
        }
        let native = median(101, 2000, || {
            mlp::forward(std::hint::black_box(&x), batch, &mut out);
            std::hint::black_box(&out);
        });
        let sandboxed = median(101, 200, || {
            std::hint::black_box(model.infer(&req).unwrap().unwrap());
        });
        let in_wasm = median(101, 200, || kept.infer(&req));
        let piped = median(101, 200, || pipeline(&host, &body));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        sandbox += &format!(
            "| {batch} | {:.2} µs | {:.2} µs | {:.2} µs | {:.1}x |\n",
            us(native),
            us(sandboxed),
            us(sandboxed) - us(native),
            us(sandboxed) / us(native)
        );
        kernel += &format!(
            "| {batch} | {:.2} µs | {:.2} µs | {:.2}x |\n",
            us(native),
            us(in_wasm),
            us(in_wasm) / us(native)
        );
        whole += &format!(
            "| {batch} | {:.2} µs | {:.2} µs | {:.2} µs |\n",
            us(sandboxed),
            us(piped),
            us(piped) - us(sandboxed)
        );
    }
    println!("\n{sandbox}\n{kernel}\n{whole}");
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
