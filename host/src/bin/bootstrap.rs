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
    /// Local data directory: the store when AIRLOCK_STORE is unset, and
    /// the compiled artifacts (the only writable place on Lambda is /tmp).
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "/tmp/airlock")]
    data_dir: PathBuf,
    /// Sandbox slots. A Lambda instance serves one event at a time, so a
    /// few suffice, and a smaller pool is quicker to set up.
    #[arg(long, env = "AIRLOCK_MAX_INSTANCES", default_value_t = 16)]
    max_instances: u32,
    #[command(flatten)]
    host: airlock::settings::HostArgs,
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
    let mut host_config = config.host.to_config(&config.data_dir)?;
    host_config.artifacts_dir = Some(config.data_dir.join("artifacts"));
    host_config.engine.max_instances = config.max_instances;

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

    let every = config.host.refresh_every();
    let service = airlock::lambda::LambdaService::new(host, Some(every));
    lambda_http::run(service)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
