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
    /// Upload a model component as a new version.
    Push {
        /// The component (.wasm) to upload.
        file: PathBuf,
        /// The model name to upload it under.
        #[arg(long)]
        name: String,
        /// Make the new version the active one.
        #[arg(long)]
        activate: bool,
        /// Policy manifest (TOML or JSON) to upload with it; required for a
        /// WASI preview 1 command module, whose `[metadata]` it declares.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Detached signature file (from `airlock sign`, given the same
        /// `--policy`: it covers the component and the manifest);
        /// `<FILE>.sig` is used when it exists and this is not given.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// How to send it: `auto` goes through a presigned upload to the
        /// server's S3 store for components too large for one request
        /// (Lambda), and directly otherwise.
        #[arg(long, env = "AIRLOCK_UPLOAD_VIA", default_value = "auto")]
        upload_via: airlock::client::UploadVia,
        #[command(flatten)]
        remote: Remote,
    },
    /// Generate an ed25519 key pair for signing models.
    Keygen {
        /// Where to write `<NAME>.key` (secret, mode 0600) and `<NAME>.pub`.
        #[arg(long, default_value = "airlock-signing")]
        out: PathBuf,
    },
    /// Sign a model component and the manifest it is pushed with: writes
    /// `<FILE>.sig`. The signature covers both, so push the same manifest
    /// (`--policy`) that was signed, or none if none was.
    Sign {
        /// The component to sign.
        file: PathBuf,
        /// The secret key file from `airlock keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The policy manifest (TOML or JSON) the component will be pushed
        /// with (`airlock push --policy`).
        #[arg(long, alias = "manifest")]
        policy: Option<PathBuf>,
    },
    /// List stored models and their versions.
    Models {
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a version the active one.
    Activate {
        /// Model name.
        name: String,
        /// Version to activate.
        version: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-activate the previously active version.
    Rollback {
        /// Model name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// How `airlock` authenticates to the repository API.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthMode {
    /// SigV4 for an API Gateway default endpoint
    /// (`*.execute-api.<region>.amazonaws.com`), the token otherwise.
    Auto,
    /// The admin token (`Authorization: Bearer`).
    Token,
    /// AWS SigV4, for API Gateway's `AWS_IAM` routes (what `infra` deploys),
    /// with credentials from the standard AWS chain (AWS_PROFILE,
    /// AWS_ACCESS_KEY_ID, SSO, …). Needed for a custom domain.
    Sigv4,
}

/// Where the repository API is and how to authenticate.
#[derive(Args)]
struct Remote {
    /// Server URL.
    #[arg(long, env = "AIRLOCK_SERVER", default_value = "https://127.0.0.1:8443")]
    server: String,
    /// Extra CA certificate to trust (PEM), e.g. airlock-data/tls/ca.pem;
    /// that file is used when it exists and this is not given.
    #[arg(long, env = "AIRLOCK_CACERT")]
    cacert: Option<PathBuf>,
    /// The admin token; read from airlock-data/admin-token when unset.
    #[arg(long, env = "AIRLOCK_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How to authenticate: the admin token, or AWS SigV4 for a deployment
    /// behind API Gateway.
    #[arg(long, env = "AIRLOCK_AUTH", value_enum, default_value = "auto")]
    auth: AuthMode,
    /// The region to sign for when the server is not an
    /// `execute-api.<region>` host name; default: AWS_REGION or the profile's.
    #[arg(long)]
    aws_region: Option<String>,
}

impl Remote {
    fn client(self) -> anyhow::Result<airlock::client::Client> {
        let local = PathBuf::from("airlock-data");
        let cacert = self
            .cacert
            .or_else(|| Some(local.join("tls/ca.pem")).filter(|p| p.exists()));
        // An execute-api endpoint's repository routes are AWS_IAM-authorised
        // (infra deploys them so): a token could never get through there.
        // A custom domain could be anything, so it needs `--auth sigv4`.
        let sigv4 = match self.auth {
            AuthMode::Sigv4 => true,
            AuthMode::Token => false,
            AuthMode::Auto => airlock::sigv4::execute_api_region(&self.server).is_some(),
        };
        let auth = if sigv4 {
            airlock::client::Auth::SigV4(airlock::sigv4::Signer::from_environment(
                &self.server,
                self.aws_region.as_deref(),
            )?)
        } else {
            airlock::client::Auth::Token(match self.token {
                Some(token) => token,
                None => std::fs::read_to_string(local.join("admin-token"))
                    .map(|t| t.trim().to_owned())
                    .context("no admin token: set AIRLOCK_ADMIN_TOKEN or pass --token")?,
            })
        };
        airlock::client::Client::new(&self.server, cacert.as_deref(), auth)
    }
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
    /// Do not load the example models (digits, digits-onnx, langid).
    #[arg(long, env = "AIRLOCK_NO_EXAMPLES")]
    no_examples: bool,
    #[command(flatten)]
    host: airlock::settings::HostArgs,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    airlock::validate_model_name(name)?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> std::process::ExitCode {
    // Uploaded wasm is compiled by this same binary in a bounded child process.
    airlock::compile::run_worker_if_requested();
    airlock::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Push {
            file,
            name,
            activate,
            policy,
            signature,
            upload_via,
            remote,
        } => push(
            &file, &name, activate, policy, signature, upload_via, remote,
        ),
        Command::Keygen { out } => keygen(&out),
        Command::Sign { file, key, policy } => sign(&file, &key, policy.as_deref()),
        Command::Models { remote } => models(remote),
        Command::Activate {
            name,
            version,
            remote,
        } => remote
            .client()
            .and_then(|c| c.activate(&name, &version))
            .map(|body| println!("{name}: version {} is active", body["active"])),
        Command::Rollback { name, remote } => remote
            .client()
            .and_then(|c| c.rollback(&name))
            .map(|body| println!("{name}: rolled back to version {}", body["active"])),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn push(
    file: &std::path::Path,
    name: &str,
    activate: bool,
    policy: Option<PathBuf>,
    signature: Option<PathBuf>,
    upload_via: airlock::client::UploadVia,
    remote: Remote,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let manifest = policy
        .map(|path| {
            std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))
        })
        .transpose()?;
    let signature = match signature {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?,
        ),
        None => std::fs::read_to_string(sig_path(file)).ok(),
    };
    let client = remote.client()?;
    let bar = indicatif::ProgressBar::new(wasm.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", file.display()));
    let progress = bar.clone();
    let result = client.push(
        name,
        wasm,
        manifest.as_deref(),
        activate,
        signature.as_deref(),
        upload_via,
        move |sent, _| progress.set_position(sent),
    );
    bar.finish_and_clear();
    let body = result?;
    let version = body["version"].as_str().unwrap_or("?");
    let state = if body["active"] == true {
        "active"
    } else {
        "not active"
    };
    if body["created"] == true {
        println!(
            "{name}: uploaded {} version {version} ({state}), sha256 {}",
            body["kind"].as_str().unwrap_or("model"),
            body["sha256"].as_str().unwrap_or("?")
        );
    } else {
        println!("{name}: these bytes are already version {version} ({state})");
    }
    Ok(())
}

fn sig_path(file: &std::path::Path) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".sig");
    PathBuf::from(path)
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let (secret, public) = airlock::signing::generate()?;
    let key = out.with_extension("key");
    let public_path = out.with_extension("pub");
    anyhow::ensure!(
        !key.exists(),
        "{} exists; not overwriting a key",
        key.display()
    );
    airlock::write_private_file(&key, secret.as_bytes())?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("failed to write {}", public_path.display()))?;
    println!("secret key: {} (keep it private)", key.display());
    println!(
        "public key: {} (give it to servers: airlock serve --trusted-key {})",
        public_path.display(),
        public_path.display()
    );
    Ok(())
}

fn sign(
    file: &std::path::Path,
    key: &std::path::Path,
    policy: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let secret = std::fs::read_to_string(key)
        .with_context(|| format!("failed to read {}", key.display()))?;
    // Parsed exactly as the server will parse it: the signature covers the
    // manifest as stored (see airlock::signing).
    let manifest = policy
        .map(|path| {
            let text = std::fs::read(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            airlock::manifest::Manifest::parse(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{} is not a valid manifest", path.display()))
        })
        .transpose()?;
    let signature = airlock::signing::sign(&secret, &wasm, manifest.as_ref())?;
    let out = sig_path(file);
    std::fs::write(&out, format!("{signature}\n"))
        .with_context(|| format!("failed to write {}", out.display()))?;
    println!("signature: {}", out.display());
    Ok(())
}

fn models(remote: Remote) -> anyhow::Result<()> {
    let rows = remote.client()?.models()?;
    println!(
        "{:<24} {:<6} {:>8} {:>7} {:<12} SHA256",
        "NAME", "KIND", "VERSION", "ACTIVE", "STATE"
    );
    for row in rows.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<6} {:>8} {:>7} {:<12} {}",
            row["name"].as_str().unwrap_or("?"),
            row["kind"].as_str().unwrap_or("model"),
            row["version"].as_str().unwrap_or("?"),
            if row["active"] == true { "*" } else { "" },
            row["state"].as_str().unwrap_or("?"),
            row["sha256"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.host.to_config(&args.data_dir)?;
    let token_path = args.data_dir.join("admin-token");
    let token_created = match args.host.admin_token.clone() {
        Some(token) => {
            config.admin_token = Some(token);
            None
        }
        None => {
            let (token, created) = airlock::ensure_admin_token(&token_path)?;
            config.admin_token = Some(token);
            Some(created)
        }
    };
    let host = airlock::Host::new(config)?;

    let examples: Vec<(String, PathBuf)> = if args.no_examples {
        Vec::new()
    } else {
        airlock::example_models()
            .iter()
            .map(|(name, path)| ((*name).to_owned(), PathBuf::from(path)))
            .collect()
    };
    let models = args.models;
    {
        let host = host.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            // The store first: models come back exactly as they were left.
            if host.config().store_url.is_some() {
                host.refresh()?;
            } else {
                host.restore()?;
            }
            let stored = host.list()?;
            for (name, path) in examples {
                // An example already in the store keeps its state (it may
                // have been rolled back or unloaded on purpose).
                if stored.iter().all(|m| m.index.name != name) {
                    host.load_file(&name, &path)?;
                }
            }
            // Models named on the command line are served as given (the
            // version holding these bytes is re-activated if it exists).
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
    if let Some(created) = token_created {
        let path = std::fs::canonicalize(&token_path).unwrap_or(token_path);
        println!(
            "{} admin token: {} (for `airlock push`: export AIRLOCK_ADMIN_TOKEN=$(cat {}))",
            if created { "generated" } else { "using" },
            path.display(),
            path.display()
        );
    }
    for (name, _) in host.registry().entries() {
        println!("serving model {name}: POST https://{addr}/v2/models/{name}/infer");
    }

    if args.host.store.is_some() {
        // Other servers (or Lambda instances) write to the same store.
        let host = host.clone();
        let every = args.host.refresh_every().max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let host = host.clone();
                let _ = tokio::task::spawn_blocking(move || host.refresh_if_due(every)).await;
            }
        });
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
