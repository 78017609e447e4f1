//! `cargo run -p infra -- deploy|status|destroy`: Airlock on AWS.

use std::path::PathBuf;

use airlock_infra::{
    Arch, Aws, Connect, DEFAULT_LOG_RETENTION_DAYS, DEFAULT_MEMORY_MB, DEFAULT_REFRESH_SECS,
    DEFAULT_STACK, DEFAULT_THROTTLE_BURST, DEFAULT_THROTTLE_RATE, DEFAULT_TIMEOUT_SECS,
    DEFAULT_ZIP, DeployOptions, DestroyOptions, DomainPlan, DomainSpec,
};
use clap::{Parser, Subcommand};

/// Deploy Airlock to AWS: an HTTPS API (API Gateway v2) in front of a Lambda
/// function that serves models from an S3 bucket.
///
/// Credentials come from the standard chain (environment, profiles, SSO,
/// instance roles); AWS_ENDPOINT_URL points every client at an emulator.
#[derive(Debug, Parser)]
#[command(name = "infra", version)]
struct Cli {
    /// AWS region (default: the standard chain, e.g. AWS_REGION).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Named AWS profile (default: the standard chain, e.g. AWS_PROFILE).
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Stack name; every resource name derives from it.
    #[arg(long, global = true, env = "AIRLOCK_STACK", default_value = DEFAULT_STACK)]
    stack: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the stack (safe to run again: what is as wanted is left alone).
    Deploy(DeployArgs),
    /// Show what exists, the endpoint, and the active model versions.
    Status,
    /// Write the function's zip (bootstrap.zip) from the host's release-built
    /// `bootstrap`, checked to run on provided.al2023. No AWS call.
    Package {
        /// The binary to package; default: build it with
        /// `cargo build --release --workspace --bin bootstrap` (the workspace, so
        /// that it shares the workspace's release build, the one the benchmarks
        /// use) and use that.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where to write the zip (where `deploy` looks by default).
        #[arg(long, default_value = DEFAULT_ZIP)]
        out: PathBuf,
        /// The function's architecture the binary must be built for.
        #[arg(long, default_value_t = Arch::X86_64)]
        arch: Arch,
    },
    /// Delete the stack (the model bucket only with --delete-bucket).
    Destroy {
        /// Also delete the model bucket and every model in it.
        #[arg(long)]
        delete_bucket: bool,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The function's zip, from `infra package` (or `cargo lambda build --release --output-format zip`).
    #[arg(long, env = "AIRLOCK_LAMBDA_ZIP", default_value = DEFAULT_ZIP)]
    zip: PathBuf,
    /// Function memory in MB (also buys CPU).
    #[arg(long, env = "AIRLOCK_LAMBDA_MEMORY", default_value_t = DEFAULT_MEMORY_MB)]
    memory: i32,
    /// Function timeout in seconds (API Gateway itself waits at most 30).
    #[arg(long, env = "AIRLOCK_LAMBDA_TIMEOUT", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: i32,
    /// Function architecture: x86_64 or arm64 (must match the bootstrap binary).
    #[arg(long, env = "AIRLOCK_LAMBDA_ARCH", default_value_t = Arch::X86_64)]
    arch: Arch,
    /// How often warm instances look for new model versions, seconds.
    #[arg(long, env = "AIRLOCK_REFRESH_SECS", default_value_t = DEFAULT_REFRESH_SECS)]
    refresh_secs: u32,
    /// Stage throttling: steady requests per second.
    #[arg(long, env = "AIRLOCK_THROTTLE_RATE", default_value_t = DEFAULT_THROTTLE_RATE)]
    throttle_rate: f64,
    /// Stage throttling: burst size.
    #[arg(long, env = "AIRLOCK_THROTTLE_BURST", default_value_t = DEFAULT_THROTTLE_BURST)]
    throttle_burst: i32,
    /// Retention of the function and access logs, days.
    #[arg(long, env = "AIRLOCK_LOG_RETENTION_DAYS", default_value_t = DEFAULT_LOG_RETENTION_DAYS)]
    log_retention_days: i32,
    /// Serve the API on this custom domain (TLS 1.2+), and turn the
    /// execute-api endpoint off.
    #[arg(long, env = "AIRLOCK_DOMAIN", requires = "certificate_arn")]
    domain: Option<String>,
    /// ACM certificate for --domain, in the deploy region.
    #[arg(long, env = "AIRLOCK_CERTIFICATE_ARN", requires = "domain")]
    certificate_arn: Option<String>,
    /// Delete the stack's custom domain and serve on execute-api again.
    #[arg(long, conflicts_with = "domain")]
    remove_domain: bool,
    /// Print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The chain: which step, which resource, what AWS said.
            eprintln!("Error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Package { binary, out, arch } = &cli.command {
        return package(binary.clone(), out, *arch);
    }
    let aws = Aws::connect(&Connect {
        region: cli.region,
        profile: cli.profile,
    })
    .await?;
    match cli.command {
        Command::Deploy(args) => {
            let domain = match (args.domain, args.certificate_arn, args.remove_domain) {
                (Some(name), Some(certificate_arn), _) => DomainPlan::Set(DomainSpec {
                    name,
                    certificate_arn,
                }),
                (_, _, true) => DomainPlan::Remove,
                _ => DomainPlan::Keep,
            };
            let options = DeployOptions {
                stack: cli.stack,
                zip: args.zip,
                memory_mb: args.memory,
                timeout_secs: args.timeout,
                arch: args.arch,
                refresh_secs: args.refresh_secs,
                throttle_rate: args.throttle_rate,
                throttle_burst: args.throttle_burst,
                log_retention_days: args.log_retention_days,
                domain,
                dry_run: args.dry_run,
                fail_after: None,
            };
            let deployment = airlock_infra::deploy(&aws, &options).await?;
            println!();
            print!("{}", deployment.instructions());
        }
        Command::Package { .. } => unreachable!("handled before connecting"),
        Command::Status => {
            let status = airlock_infra::status(&aws, &cli.stack).await?;
            print!("{status}");
        }
        Command::Destroy {
            delete_bucket,
            dry_run,
        } => {
            let options = DestroyOptions {
                stack: cli.stack,
                delete_bucket,
                dry_run,
            };
            let report = airlock_infra::destroy(&aws, &options).await?;
            if !report.changed() {
                println!("Nothing to delete.");
            }
        }
    }
    Ok(())
}

fn package(binary: Option<PathBuf>, out: &std::path::Path, arch: Arch) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let binary = match binary {
        Some(binary) => binary,
        None => {
            anyhow::ensure!(
                arch == Arch::X86_64 || cfg!(target_arch = "aarch64"),
                "building for {arch} needs a cross toolchain: build `bootstrap` for it \
                 (e.g. `cargo lambda build --release --arm64`) and pass --binary"
            );
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--release", "--workspace", "--bin", "bootstrap"])
                .status()
                .context("failed to run cargo")?;
            anyhow::ensure!(status.success(), "cargo build failed");
            PathBuf::from("target/release/bootstrap")
        }
    };
    let packaged = airlock_infra::package(&binary, out, arch)?;
    let (major, minor) = packaged.max_glibc.unwrap_or((0, 0));
    println!(
        "{}: bootstrap {} MiB, zip {} MiB, {arch}, needs glibc {major}.{minor} (provided.al2023 has {}.{})",
        packaged.zip.display(),
        packaged.binary_bytes >> 20,
        packaged.zip_bytes >> 20,
        airlock_infra::AL2023_GLIBC.0,
        airlock_infra::AL2023_GLIBC.1,
    );
    Ok(())
}
