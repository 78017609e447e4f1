//! What a pre-initialised snapshot saves per request: a fresh store and
//! instance of the ONNX guest plus one `infer` at batch 1, from the
//! snapshot the host serves and from the component as uploaded (which
//! parses its ONNX graph on the first `infer` of every instance).
//!
//! Run: `cargo bench --workspace --bench preinit`. After criterion's own output
//! it prints a table measured in one run: both costs, their ratio, and where
//! the snapshot's time goes (instantiation, the first `infer` of a fresh
//! instance, and a second `infer` on the same instance).
//! `AIRLOCK_BENCH_DIGITS_ONNX=<path>` measures another build of the guest.

use std::time::{Duration, Instant};

use airlock::artifacts::ArtifactCache;
use airlock::bindings::{InferRequest, ModelPre, Tensor, TensorData};
use airlock::digest::sha256_hex;
use airlock::fsutil::write_atomic;
use airlock::sandbox::SandboxState;
use airlock::{EngineConfig, Limits, Runtime};
use criterion::{BenchmarkId, Criterion, criterion_group};
use wasmtime::component::Component;

fn request() -> InferRequest {
    InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![1, 64],
            // Deterministic pixel values in the dataset's range 0..=16.
            data: TensorData::Fp32((0..64).map(|i| ((i * 7 + 3) % 17) as f32).collect()),
        }],
        outputs: Vec::new(),
    }
}

/// The ONNX guest twice, linked: (snapshot, as uploaded). Compiled once
/// into a directory under the system's temp dir and mapped afterwards.
fn models(runtime: &Runtime) -> (ModelPre<SandboxState>, ModelPre<SandboxState>) {
    let root = std::env::temp_dir().join("airlock-bench-preinit");
    // `AIRLOCK_BENCH_DIGITS_ONNX` names another build of the guest to measure.
    let path = std::env::var_os("AIRLOCK_BENCH_DIGITS_ONNX")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| airlock_artifacts::DIGITS_ONNX.into());
    let wasm = std::fs::read(path).expect("the ONNX guest");
    let digest = sha256_hex(&wasm);
    let cache = ArtifactCache::new(&root.join("artifacts"), runtime);
    let (snapshot, _) = cache
        .load_or_compile::<Component>(runtime, &digest, &wasm, &Limits::default())
        .expect("snapshot");

    let path = root
        .join("unsnapshotted")
        .join(runtime.compat_hash())
        .join(format!("{digest}.cwasm"));
    if !path.exists() {
        let bytes = runtime
            .engine()
            .precompile_component(&wasm)
            .expect("compile");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_atomic(&path, &bytes).unwrap();
    }
    // SAFETY: written by this engine's own compiler just above or by an
    // earlier run, only ever replaced by rename.
    let unsnapshotted =
        unsafe { Component::deserialize_file(runtime.engine(), &path) }.expect("deserialize");
    let link = |component: &Component| {
        ModelPre::new(runtime.linker().instantiate_pre(component).unwrap()).unwrap()
    };
    (link(&snapshot), link(&unsnapshotted))
}

/// What the host does per request (see `LoadedModel::infer`).
fn fresh_infer(runtime: &Runtime, pre: &ModelPre<SandboxState>, request: &InferRequest) {
    let mut store = runtime.new_store(Limits::default());
    let model = pre.instantiate(&mut store).unwrap();
    let response = model
        .airlock_inference_inference()
        .call_infer(&mut store, request)
        .unwrap()
        .unwrap();
    std::hint::black_box(response);
}

fn runtime() -> Runtime {
    let config = EngineConfig {
        max_instances: 16,
        ..EngineConfig::default()
    };
    Runtime::new(&config).expect("engine")
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let (snapshot, unsnapshotted) = models(&runtime);
    let request = request();
    let mut group = c.benchmark_group("digits-onnx fresh instance + infer");
    for (name, pre) in [("snapshot", &snapshot), ("as uploaded", &unsnapshotted)] {
        group.bench_with_input(BenchmarkId::new(name, 1), &request, |b, request| {
            b.iter(|| fresh_infer(&runtime, pre, request))
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

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The summary, measured in one run, side by side.
fn summary() {
    let runtime = runtime();
    let (snapshot, unsnapshotted) = models(&runtime);
    let request = request();
    for _ in 0..200 {
        fresh_infer(&runtime, &snapshot, &request);
        fresh_infer(&runtime, &unsnapshotted, &request);
    }
    let with = median(51, 200, || fresh_infer(&runtime, &snapshot, &request));
    let without = median(51, 20, || fresh_infer(&runtime, &unsnapshotted, &request));

    // Where the snapshot's time goes.
    let instantiate = median(51, 200, || {
        let mut store = runtime.new_store(Limits::default());
        std::hint::black_box(snapshot.instantiate(&mut store).unwrap());
    });
    let mut store = runtime.new_store(Limits::default());
    let model = snapshot.instantiate(&mut store).unwrap();
    let inference = model.airlock_inference_inference();
    inference.call_infer(&mut store, &request).unwrap().unwrap();
    let warm = median(51, 200, || {
        std::hint::black_box(inference.call_infer(&mut store, &request).unwrap().unwrap());
    });

    println!();
    println!("| digits-onnx, batch 1 | median |");
    println!("|---|---|");
    println!(
        "| fresh instance + infer, as uploaded | {:.1} µs |",
        micros(without)
    );
    println!(
        "| fresh instance + infer, snapshot | {:.1} µs |",
        micros(with)
    );
    println!(
        "| ratio | {:.1}x |",
        without.as_secs_f64() / with.as_secs_f64()
    );
    println!(
        "| snapshot: store + instantiate + drop | {:.1} µs |",
        micros(instantiate)
    );
    println!(
        "| snapshot: first infer of a fresh instance (difference) | {:.1} µs |",
        micros(with.saturating_sub(instantiate))
    );
    println!(
        "| snapshot: later infer on the same instance | {:.1} µs |",
        micros(warm)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
