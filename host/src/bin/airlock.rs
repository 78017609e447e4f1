//! `airlock`: serve models over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Serve model inference from sandboxed WebAssembly components over TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Open Inference Protocol v2 over HTTPS.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (HTTPS only).
    #[arg(long, env = "AIRLOCK_ADDR", default_value = "127.0.0.1:8443")]
    addr: SocketAddr,
    /// Directory for compiled artifacts and the generated TLS certificate.
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = "airlock-data")]
    data_dir: PathBuf,
    /// PEM certificate chain to serve instead of the generated one.
    #[arg(long, env = "AIRLOCK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "AIRLOCK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra model to serve, as NAME=PATH to a component (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    models: Vec<(String, PathBuf)>,
    /// Do not load the example models (digits, digits-onnx).
    #[arg(long, env = "AIRLOCK_NO_EXAMPLES")]
    no_examples: bool,
    /// Memory cap per request, in MiB.
    #[arg(long, env = "AIRLOCK_MEMORY_MIB", default_value_t = 256)]
    memory_mib: usize,
    /// Deadline per request, in milliseconds.
    #[arg(long, env = "AIRLOCK_DEADLINE_MS", default_value_t = 2000)]
    deadline_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "AIRLOCK_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    max_body_bytes: usize,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    airlock::validate_model_name(name)?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> std::process::ExitCode {
    airlock::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = airlock::HostConfig::new(&args.data_dir);
    config.limits.memory_bytes = args.memory_mib << 20;
    config.limits.deadline = Duration::from_millis(args.deadline_ms);
    config.max_body_bytes = args.max_body_bytes;
    anyhow::ensure!(
        config.limits.memory_bytes <= config.engine.max_memory_bytes,
        "--memory-mib is over the engine's slot size of {} MiB",
        config.engine.max_memory_bytes >> 20
    );
    let host = airlock::Host::new(config)?;

    let mut models: Vec<(String, PathBuf)> = Vec::new();
    if !args.no_examples {
        models.extend(
            airlock::example_models()
                .iter()
                .map(|(name, path)| ((*name).to_owned(), PathBuf::from(path))),
        );
    }
    models.extend(args.models);
    {
        let host = host.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for (name, path) in models {
                host.load_file(&name, &path)?;
            }
            Ok(())
        })
        .await??;
    }

    let (identity, ca) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (airlock::tls::Identity::from_pem_files(cert, key)?, None),
        _ => {
            let local = airlock::tls::ensure_local_certificate(&args.data_dir.join("tls"))?;
            (
                airlock::tls::Identity::from_pem_files(&local.cert, &local.key)?,
                Some(local),
            )
        }
    };
    let tls = airlock::tls::server_config(identity)?;
    let listener = airlock::server::bind(args.addr).await?;
    let addr = listener
        .local_addr()
        .context("failed to read the bound address")?;

    println!("airlock listening on https://{addr}");
    if let Some(local) = &ca {
        let ca_path = std::fs::canonicalize(&local.ca).unwrap_or_else(|_| local.ca.clone());
        println!(
            "{} CA certificate: {} (curl --cacert {})",
            if local.created { "generated" } else { "using" },
            ca_path.display(),
            ca_path.display()
        );
    }
    for (name, _) in host.registry().entries() {
        println!("serving model {name}: POST https://{addr}/v2/models/{name}/infer");
    }

    airlock::server::serve_tls(
        listener,
        tls,
        host.router(),
        airlock::server::ServerLimits::default(),
        airlock::server::shutdown_signal(),
    )
    .await
}
