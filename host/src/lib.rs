//! Airlock serves model inference from sandboxed WebAssembly components.
//!
//! A model is a component written against the WIT contract in `wit/`
//! (world `model`). The host compiles it once, caches the compiled
//! artifact, and runs every request in a fresh, capability-free instance
//! with a memory cap and a deadline. One axum [`Router`](axum::Router)
//! speaks the Open Inference Protocol v2; `airlock serve` puts it behind
//! rustls.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let host = airlock::Host::new(airlock::HostConfig::new("airlock-data"))?;
//! host.load_file("digits", airlock_artifacts::DIGITS.as_ref())?;
//! let router = host.router();
//! # let _ = router; Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod bindings;
pub mod engine;
pub mod model;
pub mod oip;
pub mod registry;
pub mod server;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

pub use crate::engine::{EngineConfig, Limits, Runtime};
pub use crate::model::{LoadError, LoadReport, LoadedModel};
pub use crate::registry::Registry;

/// Settings of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where compiled artifacts (and, for `serve`, the TLS files) live.
    pub data_dir: PathBuf,
    /// Engine-wide bounds.
    pub engine: EngineConfig,
    /// Default per-request limits for models.
    pub limits: Limits,
    /// Bounds on inference requests.
    pub request_limits: oip::RequestLimits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl HostConfig {
    /// Defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            engine: EngineConfig::default(),
            limits: Limits::default(),
            request_limits: oip::RequestLimits::default(),
            max_body_bytes: 16 << 20,
        }
    }
}

/// A runtime, its artifact cache and the models it serves.
#[derive(Clone)]
pub struct Host {
    runtime: Runtime,
    cache: engine::ArtifactCache,
    registry: Arc<Registry>,
    config: HostConfig,
}

impl Host {
    /// Builds the engine (one per process is plenty) and an empty registry.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let runtime = Runtime::new(&config.engine).context("failed to create the wasm engine")?;
        let cache = engine::ArtifactCache::new(&config.data_dir.join("artifacts"), &runtime);
        Ok(Self {
            runtime,
            cache,
            registry: Arc::new(Registry::new()),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The served models.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The wasm runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads `wasm` and serves it as `name` (its active version), with the
    /// default limits. Compiles, or reuses a verified cached artifact.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<LoadReport, LoadError> {
        self.load_with_limits(name, wasm, self.config.limits)
    }

    /// Like [`Host::load`], with explicit limits.
    pub fn load_with_limits(
        &self,
        name: &str,
        wasm: &[u8],
        limits: Limits,
    ) -> Result<LoadReport, LoadError> {
        validate_model_name(name).map_err(LoadError::InvalidMetadata)?;
        let (model, report) = LoadedModel::load(&self.runtime, &self.cache, name, wasm, limits)?;
        tracing::info!(
            model = name,
            version = model.version(),
            sha256 = model.digest(),
            cache = ?report.cache,
            compile_ms = report.compile.as_secs_f64() * 1e3,
            total_ms = report.total.as_secs_f64() * 1e3,
            "model loaded"
        );
        self.registry.insert_active(model);
        Ok(report)
    }

    /// Reads a component file and loads it as `name`.
    pub fn load_file(&self, name: &str, path: &Path) -> anyhow::Result<LoadReport> {
        let wasm =
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        self.load(name, &wasm)
            .with_context(|| format!("failed to load model {name:?} from {}", path.display()))
    }

    /// The HTTP router over this host's models.
    pub fn router(&self) -> axum::Router {
        api::router(api::AppState {
            registry: Arc::clone(&self.registry),
            request_limits: self.config.request_limits,
            max_body_bytes: self.config.max_body_bytes,
        })
    }
}

/// The example models every `airlock serve` loads unless told otherwise:
/// `(name, path of the built component)`.
pub fn example_models() -> [(&'static str, &'static str); 2] {
    [
        ("digits", airlock_artifacts::DIGITS),
        ("digits-onnx", airlock_artifacts::DIGITS_ONNX),
    ]
}

/// Model names: 1 to 64 characters of `a-z 0-9 . _ -`, starting with a
/// letter or digit. They appear in URLs and storage keys, so nothing else.
pub fn validate_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model name {name:?}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// Sets up logging once: `RUST_LOG` (or `AWS_LAMBDA_LOG_LEVEL`) filters,
/// JSON lines when `AWS_LAMBDA_LOG_FORMAT=JSON`, colours only on a terminal.
/// Request payloads and tensor data are never logged anywhere in Airlock.
pub fn init_tracing() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .ok()
                .map(|l| l.to_lowercase())
        })
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
