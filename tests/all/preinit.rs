//! Pre-initialised snapshots (`wizer-initialize`): a snapshot answers
//! exactly like the component it was taken from, an init that fails is
//! refused at upload with its reason, and the cached snapshot is reused
//! after a restart without running the init again.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use airlock::artifacts::{ArtifactCache, CacheOutcome};
use airlock::bindings::{InferRequest, ModelPre, Tensor, TensorData};
use airlock::compile::{CompileBudget, CompileError, Compiler};
use airlock::digest::sha256_hex;
use airlock::{EngineConfig, Host, LoadError, RepoError, Runtime};
use wasmtime::component::Component;

use crate::support::{ADMIN_TOKEN, TEST_LIMITS, artifact_root, digits_test, test_config, walk};

/// A small engine for these tests, compiling in process.
fn config() -> EngineConfig {
    EngineConfig {
        max_memory_bytes: 256 << 20,
        max_instances: 16,
        ..EngineConfig::default()
    }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(&config()).unwrap())
}

/// The ONNX guest compiled as uploaded, without its snapshot: the
/// reference a snapshot must match. Kept under the tests' artifact root
/// (its own directory, apart from the host's cache) so that it is compiled
/// once per build, not once per run.
fn unsnapshotted_digits_onnx(runtime: &Runtime) -> Component {
    let wasm = std::fs::read(airlock_artifacts::DIGITS_ONNX).unwrap();
    let dir = artifact_root()
        .join("unsnapshotted")
        .join(runtime.compat_hash());
    let path = dir.join(format!("{}.cwasm", sha256_hex(&wasm)));
    if !path.exists() {
        // `Engine::precompile_component` is the bare compiler: no snapshot.
        let bytes = runtime.engine().precompile_component(&wasm).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        airlock::fsutil::write_atomic(&path, &bytes).unwrap();
    }
    // SAFETY: written just above (or by an earlier run of this test) from
    // this engine's own compiler, and only ever replaced by rename.
    unsafe { Component::deserialize_file(runtime.engine(), &path) }.unwrap()
}

/// Runs `rows` through a fresh instance of `pre` and returns the output's
/// bits, and the memory the instance started with.
fn infer_bits(
    runtime: &Runtime,
    pre: &ModelPre<airlock::sandbox::SandboxState>,
    rows: &[Vec<f32>],
) -> (Vec<u32>, usize) {
    let mut store = runtime.new_store(TEST_LIMITS);
    let model = pre.instantiate(&mut store).unwrap();
    let initial_memory = store.data().peak_memory();
    let request = InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![rows.len() as u64, 64],
            data: TensorData::Fp32(rows.concat()),
        }],
        outputs: Vec::new(),
    };
    let response = model
        .airlock_inference_inference()
        .call_infer(&mut store, &request)
        .unwrap()
        .unwrap();
    let TensorData::Fp32(probabilities) = &response.outputs[0].data else {
        panic!("not FP32: {:?}", response.outputs[0].data);
    };
    assert_eq!(probabilities.len(), rows.len() * 10);
    (
        probabilities.iter().map(|p| p.to_bits()).collect(),
        initial_memory,
    )
}

#[test]
fn a_snapshot_answers_bitwise_like_the_component_it_was_taken_from() {
    // The shared server has loaded (and so snapshotted and cached) the ONNX
    // guest: this test then maps that artifact instead of compiling again.
    crate::support::server();
    let runtime = runtime();
    let cache = ArtifactCache::new(&artifact_root(), runtime);
    let wasm = std::fs::read(airlock_artifacts::DIGITS_ONNX).unwrap();
    let (snapshot, _) = cache
        .load_or_compile::<Component>(runtime, &sha256_hex(&wasm), &wasm, &TEST_LIMITS)
        .unwrap();
    let unsnapshotted = unsnapshotted_digits_onnx(runtime);
    let pre = |component: &Component| {
        ModelPre::new(runtime.linker().instantiate_pre(component).unwrap()).unwrap()
    };
    let (snapshot, unsnapshotted) = (pre(&snapshot), pre(&unsnapshotted));

    let test = digits_test();
    let mut compared = 0;
    // The whole held-out split in batches of 64, then single rows (the
    // first request of a fresh instance, batch 1, is the common case).
    let batches = test.inputs.chunks(64).chain(test.inputs[..16].chunks(1));
    for rows in batches {
        let (expected, unprepared_memory) = infer_bits(runtime, &unsnapshotted, rows);
        let (actual, prepared_memory) = infer_bits(runtime, &snapshot, rows);
        assert_eq!(actual, expected, "the snapshot's answer differs");
        // The snapshot starts with the parsed model in its memory: this is
        // a snapshot, not the uploaded component compiled as is.
        assert!(
            prepared_memory > unprepared_memory,
            "snapshot starts with {prepared_memory} bytes, the component with {unprepared_memory}"
        );
        compared += rows.len();
    }
    assert_eq!(compared, test.inputs.len() + 16);
}

/// A component whose `wizer-initialize` runs `init_body` (core wasm, in a
/// module with one page of memory and a mutable global `$count`) and which
/// exports `count: func() -> u32`, the global's value.
fn fixture(init_body: &str, export_init: bool) -> Vec<u8> {
    let export = if export_init {
        r#"(func (export "wizer-initialize") (canon lift (core func $i "init")))"#
    } else {
        ""
    };
    wat::parse_str(format!(
        r#"(component
            (core module $m
                (memory 1)
                (global $count (mut i32) (i32.const 0))
                (func (export "init") {init_body})
                (func (export "count") (result i32) (global.get $count)))
            (core instance $i (instantiate $m))
            {export}
            (func (export "count") (result u32) (canon lift (core func $i "count"))))"#
    ))
    .unwrap()
}

const COUNT_ONCE: &str = "(global.set $count (i32.add (global.get $count) (i32.const 1)))";

/// Instantiates `component` and reads its `count`.
fn count(runtime: &Runtime, component: &Component) -> u32 {
    let mut store = runtime.new_store(TEST_LIMITS);
    let instance = runtime.linker().instantiate(&mut store, component).unwrap();
    let count = instance
        .get_typed_func::<(), (u32,)>(&mut store, "count")
        .unwrap();
    count.call(&mut store, ()).unwrap().0
}

#[test]
fn the_cached_snapshot_is_reused_after_a_restart_without_running_the_init() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = fixture(COUNT_ONCE, true);
    let digest = sha256_hex(&wasm);

    let runtime = runtime();
    let cache = ArtifactCache::new(dir.path(), runtime);
    let (component, outcome) = cache
        .load_or_compile::<Component>(runtime, &digest, &wasm, &TEST_LIMITS)
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Compiled);
    // The init ran once, before the snapshot; instances start after it.
    assert_eq!(count(runtime, &component), 1);
    assert_eq!(count(runtime, &component), 1, "instances share state");

    // A restarted host whose compiler cannot run at all: the artifact must
    // come from the cache, with neither a compile nor an init.
    let restarted = Runtime::with_compiler(
        &config(),
        Compiler::worker("/nonexistent/airlock-worker", CompileBudget::default()),
    )
    .unwrap();
    let cache = ArtifactCache::new(dir.path(), &restarted);
    let (component, outcome) = cache
        .load_or_compile::<Component>(&restarted, &digest, &wasm, &TEST_LIMITS)
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(count(&restarted, &component), 1);
}

#[test]
fn a_component_without_the_export_is_compiled_as_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = fixture(COUNT_ONCE, false);
    let runtime = runtime();
    let cache = ArtifactCache::new(dir.path(), runtime);
    let (component, _) = cache
        .load_or_compile::<Component>(runtime, &sha256_hex(&wasm), &wasm, &TEST_LIMITS)
        .unwrap();
    assert_eq!(
        count(runtime, &component),
        0,
        "init ran without being asked for"
    );
    assert!(airlock::preinit::exports_init(&fixture(COUNT_ONCE, true)));
    assert!(!airlock::preinit::exports_init(&wasm));
    assert!(!airlock::preinit::exports_init(b"not wasm"));
}

/// A host compiling in the bounded worker, with a fresh artifact cache.
fn host(dir: &Path, budget: CompileBudget) -> Host {
    let mut config = test_config(dir);
    config.artifacts_dir = Some(dir.join("artifacts"));
    config.compiler = Compiler::worker(env!("CARGO_BIN_EXE_airlock-test-worker"), budget);
    Host::new(config).unwrap()
}

/// Uploads `wasm`, expects it refused, and checks that nothing was kept.
fn refused(budget: CompileBudget, wasm: &[u8]) -> RepoError {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), budget);
    let error = host.upload("preinit", wasm, true).unwrap_err();
    for sub in ["blobs", "models", "artifacts"] {
        let files = walk(&dir.path().join(sub));
        assert!(files.is_empty(), "{sub}: {files:?}");
    }
    assert!(host.list().unwrap().is_empty());
    error
}

#[test]
fn an_init_that_traps_is_refused_with_its_reason() {
    let error = refused(CompileBudget::default(), &fixture("unreachable", true));
    let RepoError::Invalid(LoadError::Init(message)) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("wizer-initialize"), "{message}");
    assert!(message.contains("unreachable"), "{message}");
    assert!(error.to_string().contains("pre-initialised"), "{error}");
}

#[test]
fn an_init_over_the_models_memory_cap_is_refused() {
    // 2048 pages are 128 MiB, twice the test servers' memory cap.
    let grow = "(drop (memory.grow (i32.const 2048)))";
    let error = refused(CompileBudget::default(), &fixture(grow, true));
    let RepoError::Invalid(LoadError::Init(message)) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("memory cap"), "{message}");
    assert!(
        message.contains(&TEST_LIMITS.memory_bytes.to_string()),
        "{message}"
    );
}

#[test]
fn an_init_that_never_ends_is_stopped_by_the_compile_budget() {
    let budget = CompileBudget {
        time: Duration::from_secs(2),
        ..CompileBudget::default()
    };
    let error = refused(budget, &fixture("(loop $forever (br $forever))", true));
    assert!(
        matches!(
            error,
            RepoError::Invalid(LoadError::Compile(CompileError::Time(_)))
        ),
        "{error}"
    );
}

#[test]
fn an_init_gets_no_import_beyond_the_seed_and_the_environment() {
    // An init that asks for real randomness (any import but the two).
    let wasm = wat::parse_str(
        r#"(component
            (import "wasi:random/random@0.2.0" (instance $random
                (export "get-random-u64" (func (result u64)))))
            (core func $draw (canon lower (func $random "get-random-u64")))
            (core module $m
                (import "host" "draw" (func $draw (result i64)))
                (func (export "init") (drop (call $draw))))
            (core instance $host (export "draw" (func $draw)))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (func (export "wizer-initialize") (canon lift (core func $i "init"))))"#,
    )
    .unwrap();
    let error = refused(CompileBudget::default(), &wasm);
    let RepoError::Invalid(LoadError::Init(message)) = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("get-random-u64"), "{message}");
    assert!(message.contains("insecure-seed"), "{message}");
}

#[tokio::test]
async fn over_http_a_failed_init_is_a_400_with_the_reason() {
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), CompileBudget::default());
    let request = axum::http::Request::post("/v2/repository/models/trap/versions")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/wasm")
        .body(axum::body::Body::from(fixture("unreachable", true)))
        .unwrap();
    let response = host.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("pre-initialised"), "{body}");
    assert!(message.contains("unreachable"), "{body}");
}
