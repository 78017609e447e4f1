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

pub mod artifacts;
pub mod bindings;
pub mod budget;
pub mod client;
pub mod command;
pub mod compile;
pub mod decisions;
pub mod digest;
pub mod engine;
pub mod fsutil;
pub mod guard;
pub mod http;
pub mod lambda;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod oip;
pub mod pipeline;
pub mod preinit;
pub mod registry;
pub mod repository;
pub mod s3store;
pub mod sandbox;
pub mod server;
pub mod settings;
pub mod signing;
pub mod sigv4;
pub mod staging;
pub mod store;
mod sync;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use crate::engine::Runtime;
pub use crate::guard::{ChainStop, Chains, GuardError, LoadedGuard};
pub use crate::model::{LoadError, LoadReport, LoadedModel};
pub use crate::registry::Registry;
pub use crate::repository::{RepoError, Upload, UploadReport};
pub use crate::sandbox::{EngineConfig, Limits};
pub use crate::sync::RefreshReport;

/// Settings of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The model store (blobs, indexes) and, for `serve`, the TLS files.
    pub data_dir: PathBuf,
    /// Keep models in S3 (`s3://BUCKET/PREFIX`) instead of `data_dir`.
    pub store_url: Option<String>,
    /// Where compiled artifacts live; `<data_dir>/artifacts` when unset.
    pub artifacts_dir: Option<PathBuf>,
    /// Engine-wide bounds.
    pub engine: EngineConfig,
    /// Default per-request limits for models.
    pub limits: Limits,
    /// Bounds on inference requests.
    pub request_limits: oip::RequestLimits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Request data all inference requests may hold together, in bytes:
    /// bodies as they are read and the tensors parsed from them (see
    /// [`budget`]). Defaults to a quarter of the machine's (or Lambda
    /// function's) memory; guests get half ([`EngineConfig::guest_memory_bytes`]).
    pub request_memory_bytes: usize,
    /// Largest model upload, in bytes.
    pub max_upload_bytes: usize,
    /// Bearer token of the repository (admin) API; the API refuses every
    /// request when unset.
    pub admin_token: Option<String>,
    /// Public keys whose upload signatures are accepted.
    pub trusted_keys: signing::TrustedKeys,
    /// Refuse uploads without a signature from a trusted key.
    pub require_signatures: bool,
    /// How uploaded wasm is compiled: in a bounded worker process for a
    /// server (see [`compile`]); in process by default.
    pub compiler: compile::Compiler,
    /// Key of the MAC on compiled artifacts shared through the store (S3;
    /// see [`artifacts::ArtifactCache`]). Without one, shared artifacts are
    /// neither fetched nor uploaded. Both binaries read it from
    /// `AIRLOCK_ARTIFACT_KEY`.
    pub artifact_key: Option<artifacts::ArtifactKey>,
}

impl HostConfig {
    /// Defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            store_url: None,
            artifacts_dir: None,
            engine: EngineConfig::default(),
            limits: Limits::default(),
            request_limits: oip::RequestLimits::default(),
            max_body_bytes: 16 << 20,
            request_memory_bytes: budget::machine_memory_bytes() / 4,
            max_upload_bytes: 64 << 20,
            admin_token: None,
            trusted_keys: signing::TrustedKeys::default(),
            require_signatures: false,
            compiler: compile::Compiler::InProcess,
            artifact_key: None,
        }
    }
}

impl HostConfig {
    /// Refuses settings a host must not start with, whichever binary or
    /// test builds them: an admin token that is empty (or set but blank, as
    /// `AIRLOCK_ADMIN_TOKEN=` gives) would otherwise be matched by an empty
    /// `Bearer` credential.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.admin_token {
            http::auth::check_token(token).context("refusing to start")?;
        }
        Ok(())
    }
}

/// The store `config` names: S3 for `s3://…`, else the data directory.
fn open_store(config: &HostConfig) -> anyhow::Result<Arc<dyn store::Store>> {
    Ok(match config.store_url.as_deref() {
        None => Arc::new(store::FsStore::new(&config.data_dir)),
        Some(url) if url.starts_with("s3://") => Arc::new(
            s3store::S3Store::connect(url)
                .with_context(|| format!("failed to open the model store {url}"))?,
        ),
        Some(other) => anyhow::bail!(
            "unsupported model store {other:?}: use s3://BUCKET/PREFIX, or leave it unset for the data directory"
        ),
    })
}

/// What [`Host::open`] did, and how long each part took.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The models it loaded (and any it could not).
    pub refresh: RefreshReport,
    /// Engine set-up, from the start of `open`.
    pub engine: Duration,
    /// Opening the store and reading every index, from the start of `open`
    /// (concurrently with the engine).
    pub store: Duration,
    /// Loading the models, once both were done.
    pub models: Duration,
}

/// A runtime, its artifact cache and the models it serves.
#[derive(Clone)]
pub struct Host {
    runtime: Runtime,
    cache: artifacts::ArtifactCache,
    registry: Arc<Registry>,
    guards: Arc<Registry<LoadedGuard>>,
    decisions: Arc<decisions::DecisionLog>,
    store: Arc<dyn store::Store>,
    /// What inference requests' bodies and tensors draw on.
    request_budget: budget::MemoryBudget,
    config: HostConfig,
    /// Serialises repository writes (uploads, activations, …).
    write_lock: Arc<std::sync::Mutex<()>>,
    /// What the last look at the store saw (see [`Host::refresh`]).
    seen: Arc<std::sync::Mutex<sync::Seen>>,
}

impl Host {
    /// Builds the engine (one per process is plenty) and an empty registry.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let store = open_store(&config)?;
        Self::with_store(config, store)
    }

    /// [`Host::new`] over this store (`config.store_url` is not looked at).
    pub fn with_store(config: HostConfig, store: Arc<dyn store::Store>) -> anyhow::Result<Self> {
        config.check()?;
        let runtime = Runtime::with_compiler(&config.engine, config.compiler.clone())
            .context("failed to create the wasm engine")?;
        Ok(Self::assemble(config, store, runtime))
    }

    /// [`Host::new`] then [`Host::refresh`], as a process start needs them,
    /// with the engine set up on one thread while the store is opened,
    /// listed and read on another: the engine is CPU and the store is round
    /// trips (to S3 on Lambda), so the start waits for the longer of the
    /// two rather than their sum.
    pub fn open(config: HostConfig) -> anyhow::Result<(Self, Opened)> {
        config.check()?;
        let started = Instant::now();
        let (runtime, opened_store) = std::thread::scope(|scope| {
            let engine = scope.spawn(|| {
                Runtime::with_compiler(&config.engine, config.compiler.clone())
                    .context("failed to create the wasm engine")
                    .map(|runtime| (runtime, started.elapsed()))
            });
            let opened_store = open_store(&config).and_then(|store| {
                let contents = sync::StoreContents::read(&*store).with_context(|| {
                    format!("failed to read the model store {}", store.location())
                })?;
                Ok((store, contents, started.elapsed()))
            });
            let runtime = engine
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (runtime, opened_store)
        });
        let (runtime, engine) = runtime?;
        let (store, contents, store_read) = opened_store?;
        let host = Self::assemble(config, store, runtime);
        let loading = Instant::now();
        let refresh = host.refresh_from(contents);
        let opened = Opened {
            refresh,
            engine,
            store: store_read,
            models: loading.elapsed(),
        };
        Ok((host, opened))
    }

    fn assemble(config: HostConfig, store: Arc<dyn store::Store>, runtime: Runtime) -> Self {
        let artifacts = config
            .artifacts_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("artifacts"));
        let cache = artifacts::ArtifactCache::new(&artifacts, &runtime)
            .with_shared(Arc::clone(&store), config.artifact_key.clone());
        Self {
            runtime,
            cache,
            registry: Arc::new(Registry::new()),
            guards: Arc::new(Registry::new()),
            decisions: Arc::default(),
            store,
            request_budget: budget::MemoryBudget::new(config.request_memory_bytes),
            config,
            write_lock: Arc::default(),
            seen: Arc::default(),
        }
    }

    /// The model store.
    pub fn store(&self) -> &Arc<dyn store::Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The memory budget of inference requests (see [`budget`]).
    pub fn request_budget(&self) -> &budget::MemoryBudget {
        &self.request_budget
    }

    /// The served models.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The loaded guards (world `policy`), which models' policies name.
    pub fn guards(&self) -> &Arc<Registry<LoadedGuard>> {
        &self.guards
    }

    /// Every guard decision (see [`decisions`]).
    pub fn decisions(&self) -> &Arc<decisions::DecisionLog> {
        &self.decisions
    }

    /// The wasm runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Reads a component file and uploads it as the active version of `name`
    /// (or re-activates the version that already holds these bytes).
    pub fn load_file(&self, name: &str, path: &Path) -> anyhow::Result<UploadReport> {
        let wasm =
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        self.upload(name, &wasm, true)
            .with_context(|| format!("failed to load model {name:?} from {}", path.display()))
    }

    /// The HTTP router over this host's models.
    pub fn router(&self) -> axum::Router {
        http::router(http::AppState {
            host: Arc::new(self.clone()),
            registry: Arc::clone(&self.registry),
            max_body_bytes: self.config.max_body_bytes,
        })
    }
}

/// The example models every `airlock serve` loads unless told otherwise:
/// `(name, path of the built component)`.
pub fn example_models() -> [(&'static str, &'static str); 3] {
    [
        ("digits", airlock_artifacts::DIGITS),
        ("digits-onnx", airlock_artifacts::DIGITS_ONNX),
        ("langid", airlock_artifacts::LANGID),
    ]
}

/// Reads the admin token from `path`, creating a random one (mode 0600)
/// when the file does not exist. Returns the token and whether it was created.
pub fn ensure_admin_token(path: &Path) -> anyhow::Result<(String, bool)> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
        return Ok((token, false));
    }
    let bytes =
        fsutil::random_bytes::<32>().context("failed to read random bytes for the admin token")?;
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    fsutil::write_private(path, token.as_bytes())?;
    Ok((token, true))
}

/// Writes `bytes` to `path` atomically, readable by the owner only (keys,
/// tokens).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(fsutil::write_private(path, bytes)?)
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
