//! `bootstrap`: Airlock on AWS Lambda (`provided.al2023`), behind an API
//! Gateway v2 HTTP API. The same router as `airlock serve`; models come
//! from the store named by `AIRLOCK_STORE` (S3 on Lambda).
//!
//! Everything is set up once, before the first event: the engine, and
//! meanwhile the store and its indexes, then every model (its compiled
//! artifact from /tmp, else from the store, else compiled). Configuration is environment only (Lambda passes no
//! arguments).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "bootstrap", version, about = "Airlock on AWS Lambda")]
struct Config {
    /// Model store: s3://BUCKET/PREFIX (set by `infra deploy`), or unset
    /// for a directory under /tmp (lost with the instance; for trying out).
    #[arg(long, env = "AIRLOCK_STORE")]
    store: Option<String>,
    /// Look for model changes in the store at most this often, in seconds
    /// (0: on every request).
    #[arg(long, env = "AIRLOCK_REFRESH_SECS", default_value_t = 5)]
    refresh_secs: u64,
    /// Local data directory: the store when AIRLOCK_STORE is unset, and
    /// the compiled artifacts (the only writable place on Lambda is /tmp).
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/tmp/airlock")]
    data_dir: PathBuf,
    /// Bearer token for the repository API, for callers that do not come
    /// through an IAM-authorised API Gateway route (e.g. an emulator).
    #[arg(long, env = "AIRLOCK_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Memory cap per request, in MiB.
    #[arg(long, env = "AIRLOCK_MEMORY_MIB", default_value_t = 256)]
    memory_mib: usize,
    /// Deadline per request, in milliseconds.
    #[arg(long, env = "AIRLOCK_DEADLINE_MS", default_value_t = 2000)]
    deadline_ms: u64,
    /// Largest model upload (direct or presigned), in bytes.
    #[arg(long, env = "AIRLOCK_MAX_UPLOAD_BYTES", default_value_t = 64 << 20)]
    max_upload_bytes: usize,
    /// Wall-clock budget of one compilation (uploads and models whose
    /// artifact is missing), in seconds.
    #[arg(long, env = "AIRLOCK_COMPILE_TIMEOUT_SECS", default_value_t = 120)]
    compile_timeout_secs: u64,
    /// Memory budget of one compilation, in MiB.
    #[arg(long, env = "AIRLOCK_COMPILE_MEMORY_MIB", default_value_t = 2048)]
    compile_memory_mib: u64,
    /// Sandbox slots. A Lambda instance serves one event at a time, so a
    /// few suffice, and a smaller pool is quicker to set up.
    #[arg(long, env = "AIRLOCK_MAX_INSTANCES", default_value_t = 16)]
    max_instances: u32,
    /// Request bodies and parsed tensors of all requests together, in MiB.
    /// Default: a quarter of the function's memory.
    #[arg(long, env = "AIRLOCK_REQUEST_MEMORY_MIB")]
    request_memory_mib: Option<usize>,
    /// Linear memory of all live guests together, in MiB. Default: half
    /// the function's memory.
    #[arg(long, env = "AIRLOCK_GUEST_MEMORY_MIB")]
    guest_memory_mib: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    // Uploads are compiled in a bounded child process: this same binary.
    airlock::compile::run_worker_if_requested();
    airlock::init_tracing();
    let config = Config::parse();
    match run(config, started) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "bootstrap failed");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: Config, started: Instant) -> anyhow::Result<()> {
    let mut host_config = airlock::HostConfig::new(&config.data_dir);
    host_config.store_url = config.store.clone();
    host_config.artifacts_dir = Some(config.data_dir.join("artifacts"));
    host_config.admin_token = config.admin_token;
    host_config.limits.memory_bytes = config.memory_mib << 20;
    host_config.limits.deadline = Duration::from_millis(config.deadline_ms);
    host_config.max_upload_bytes = config.max_upload_bytes;
    host_config.engine.max_instances = config.max_instances;
    if let Some(mib) = config.request_memory_mib {
        host_config.request_memory_bytes = mib << 20;
    }
    if let Some(mib) = config.guest_memory_mib {
        host_config.engine.guest_memory_bytes = mib << 20;
    }
    host_config.artifact_key = airlock::artifacts::ArtifactKey::from_env()?;
    host_config.compiler =
        airlock::compile::Compiler::current_exe(airlock::compile::CompileBudget {
            time: Duration::from_secs(config.compile_timeout_secs),
            memory_bytes: config.compile_memory_mib << 20,
            ..Default::default()
        })?;
    anyhow::ensure!(
        host_config.limits.memory_bytes <= host_config.engine.max_memory_bytes,
        "AIRLOCK_MEMORY_MIB is over the engine's slot size of {} MiB",
        host_config.engine.max_memory_bytes >> 20
    );

    let host = tokio::task::spawn_blocking(move || -> anyhow::Result<airlock::Host> {
        let (host, opened) = airlock::Host::open(host_config)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            store = %host.store().location(),
            models = ?opened.refresh.updated,
            failed = ?opened.refresh.failed,
            engine_ms = ms(opened.engine),
            store_ms = ms(opened.store),
            models_ms = ms(opened.models),
            "models loaded"
        );
        Ok(host)
    })
    .await??;
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "initialised"
    );

    let every = Duration::from_secs(config.refresh_secs);
    let service = airlock::lambda::LambdaService::new(host, Some(every));
    lambda_http::run(service)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
