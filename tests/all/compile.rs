//! Compiling uploads in a bounded worker process: a module that needs more
//! time or memory than the budget is refused with a 4xx, and leaves nothing
//! behind.

use std::time::Duration;

use airlock::compile::{CompileBudget, CompileError, Compiler};
use airlock::{Host, LoadError, RepoError};

use crate::support::{test_config, walk};

/// A host with a fresh artifact cache (so that everything compiles) and
/// the given compile budget.
fn host(dir: &std::path::Path, budget: CompileBudget) -> Host {
    let mut config = test_config(dir);
    config.artifacts_dir = Some(dir.join("artifacts"));
    config.compiler = Compiler::worker(env!("CARGO_BIN_EXE_airlock-test-worker"), budget);
    Host::new(config).unwrap()
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Nothing stored: no blob, no index, no artifact.
fn nothing_left(dir: &std::path::Path) {
    for sub in ["blobs", "models", "artifacts"] {
        let files: Vec<_> = walk(&dir.join(sub));
        assert!(files.is_empty(), "{sub}: {files:?}");
    }
}

#[test]
fn a_compile_over_its_time_budget_is_killed_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let budget = CompileBudget {
        time: Duration::from_millis(300),
        ..CompileBudget::default()
    };
    let host = host(dir.path(), budget);
    // The tract guest takes seconds to compile.
    let error = host
        .upload("slow", &read(airlock_artifacts::DIGITS_ONNX), true)
        .unwrap_err();
    assert!(
        matches!(
            error,
            RepoError::Invalid(LoadError::Compile(CompileError::Time(_)))
        ),
        "{error}"
    );
    assert!(error.to_string().contains("time budget"), "{error}");
    nothing_left(dir.path());
    assert!(host.list().unwrap().is_empty());
}

#[test]
fn a_compile_over_its_memory_budget_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let budget = CompileBudget {
        memory_bytes: MEMORY_BUDGET,
        ..CompileBudget::default()
    };
    let host = host(dir.path(), budget);
    let error = host
        .upload("big", &read(airlock_artifacts::DIGITS_ONNX), true)
        .unwrap_err();
    assert!(
        matches!(
            error,
            RepoError::Invalid(LoadError::Compile(CompileError::Memory(_)))
        ),
        "{error}"
    );
    assert!(error.to_string().contains("memory budget"), "{error}");
    nothing_left(dir.path());
    // The same budget is plenty for the digits model.
    host.upload("digits", &read(airlock_artifacts::DIGITS), true)
        .unwrap();
}

/// Enough for the worker to compile the digits model (peak RSS 18 MB), far
/// from enough for the 16 MB tract guest (about 480 MB), which then fails
/// within a second.
const MEMORY_BUDGET: u64 = 48 << 20;

#[tokio::test]
async fn over_http_a_blown_budget_is_a_400_with_the_reason() {
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let budget = CompileBudget {
        time: Duration::from_millis(300),
        ..CompileBudget::default()
    };
    let host = host(dir.path(), budget);
    let request = axum::http::Request::post("/v2/repository/models/slow/versions")
        .header(
            "authorization",
            format!("Bearer {}", crate::support::ADMIN_TOKEN),
        )
        .header("content-type", "application/wasm")
        .body(axum::body::Body::from(read(airlock_artifacts::DIGITS_ONNX)))
        .unwrap();
    let response = host.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("time budget"),
        "{body}"
    );
    nothing_left(dir.path());
}
