//! Upload → serving latency: from the bytes of a new version arriving at
//! the repository to that version answering requests (validation,
//! compilation or a cached artifact, `metadata()`, the blob and index
//! writes with their fsyncs, the registry swap), for the example models.
//!
//! "compiled": a fresh store and artifact cache, so the upload is compiled
//! in the bounded worker process, as `airlock serve` does. "cached": a fresh
//! store over an artifact cache that already holds the compiled module.
//!
//! Run: `cargo bench --workspace --bench upload` (AIRLOCK_BENCH_RUNS=N sets the
//! runs per cell, default 5; the ONNX model compiles in 1 run). Prints a
//! markdown table of medians.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock::compile::{CompileBudget, Compiler};
use airlock::manifest::Manifest;
use airlock::{Host, HostConfig, Upload};

fn host(data: &Path, artifacts: &Path) -> Host {
    let mut config = HostConfig::new(data);
    config.artifacts_dir = Some(artifacts.to_owned());
    config.compiler = Compiler::current_exe(CompileBudget::default()).expect("current exe");
    Host::new(config).expect("engine")
}

fn upload_once(
    data: &Path,
    artifacts: &Path,
    wasm: &[u8],
    manifest: Option<&Manifest>,
) -> Duration {
    let host = host(data, artifacts);
    let started = Instant::now();
    let report = host
        .upload_with(
            "m",
            Upload {
                wasm,
                manifest,
                activate: true,
                signature: None,
            },
        )
        .expect("upload");
    let elapsed = started.elapsed();
    assert!(report.active && host.registry().active("m").is_some());
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    airlock::compile::run_worker_if_requested();
    // `cargo bench` passes `--bench`; nothing else is taken.
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let p1_manifest = Manifest::parse(
        &std::fs::read(airlock_artifacts::DIGITS_WASIP1_MANIFEST).expect("manifest"),
    )
    .expect("valid manifest");
    let models: [(&str, &str, Option<&Manifest>, usize); 3] = [
        ("digits", airlock_artifacts::DIGITS, None, runs),
        (
            "digits-wasip1",
            airlock_artifacts::DIGITS_WASIP1,
            Some(&p1_manifest),
            runs,
        ),
        ("digits-onnx", airlock_artifacts::DIGITS_ONNX, None, 1),
    ];
    let root = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    for (name, path, manifest, compile_runs) in models {
        let wasm = std::fs::read(path).expect("guest built");
        let compiled = median(
            (0..compile_runs)
                .map(|i| {
                    let dir = root.path().join(format!("{name}-compiled-{i}"));
                    upload_once(&dir.join("data"), &dir.join("artifacts"), &wasm, manifest)
                })
                .collect(),
        );
        let warm = root.path().join(format!("{name}-artifacts"));
        upload_once(
            &root.path().join(format!("{name}-warmup")),
            &warm,
            &wasm,
            manifest,
        );
        let cached = median(
            (0..runs)
                .map(|i| {
                    let data = root.path().join(format!("{name}-cached-{i}"));
                    upload_once(&data, &warm, &wasm, manifest)
                })
                .collect(),
        );
        // Where the cached path's time goes, measured separately.
        let started = Instant::now();
        let digest = airlock::digest::sha256_hex(&wasm);
        let hash = started.elapsed();
        let host = host(&root.path().join(format!("{name}-probe")), &warm);
        let policy = host.default_policy();
        let (_, load) = airlock::LoadedModel::load(
            host.runtime(),
            &airlock::artifacts::ArtifactCache::new(&warm, host.runtime()),
            name,
            "1",
            &wasm,
            manifest,
            policy,
        )
        .expect("load");
        assert_eq!(
            load.cache,
            airlock::artifacts::CacheOutcome::Hit,
            "{digest}"
        );
        parts.push((name, hash, load.compile, load.total - load.compile));
        rows.push((name, wasm.len(), compiled, cached));
    }
    println!("\n| model | size | upload → serving, compiled | upload → serving, cached artifact |");
    println!("|---|---:|---:|---:|");
    for (name, size, compiled, cached) in rows {
        println!(
            "| {name} | {:.2} MB | {:.1} ms | {:.2} ms |",
            size as f64 / 1e6,
            compiled.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3
        );
    }
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!(
        "\nCached path, in parts (one run each; the rest of the total is the blob and index writes with their fsyncs):\n"
    );
    println!("| model | sha256 | artifact check + map | link + metadata() |");
    println!("|---|---:|---:|---:|");
    for (name, hash, artifact, link) in parts {
        println!(
            "| {name} | {} | {} | {} |",
            ms(hash),
            ms(artifact),
            ms(link)
        );
    }
}
