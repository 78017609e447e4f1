//! The host settings that `airlock serve` and `bootstrap` share: one
//! `clap::Args` struct flattened into both, every flag also an environment
//! variable, so the two entry points cannot drift apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::HostConfig;

/// Settings of a host, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Keep models in S3 (s3://BUCKET/PREFIX, the layout Lambda uses)
    /// instead of the data directory, so that several hosts share them.
    #[arg(long, env = "AIRLOCK_STORE")]
    pub store: Option<String>,
    /// With a shared store: look for model changes made by others at most
    /// this often, in seconds (0: on every request, on Lambda).
    #[arg(long, env = "AIRLOCK_REFRESH_SECS", default_value_t = 5)]
    pub refresh_secs: u64,
    /// Memory cap per request, in MiB.
    #[arg(long, env = "AIRLOCK_MEMORY_MIB", default_value_t = 256)]
    pub memory_mib: usize,
    /// Deadline per request, in milliseconds.
    #[arg(long, env = "AIRLOCK_DEADLINE_MS", default_value_t = 2000)]
    pub deadline_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "AIRLOCK_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Largest model upload (direct or presigned), in bytes.
    #[arg(long, env = "AIRLOCK_MAX_UPLOAD_BYTES", default_value_t = 64 << 20)]
    pub max_upload_bytes: usize,
    /// Request bodies and parsed tensors of all requests together, in MiB;
    /// past it requests get 503 with Retry-After. Default: a quarter of the
    /// machine's (or Lambda function's) memory.
    #[arg(long, env = "AIRLOCK_REQUEST_MEMORY_MIB")]
    pub request_memory_mib: Option<usize>,
    /// Linear memory of all live guests together, in MiB; a guest that
    /// would pass it fails its own request (503). Default: half the
    /// machine's (or Lambda function's) memory.
    #[arg(long, env = "AIRLOCK_GUEST_MEMORY_MIB")]
    pub guest_memory_mib: Option<usize>,
    /// Public key file (hex, from `airlock keygen`) whose upload signatures
    /// are accepted (repeatable).
    #[arg(
        long = "trusted-key",
        env = "AIRLOCK_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<PathBuf>,
    /// Refuse uploads that are not signed by a trusted key.
    #[arg(long, env = "AIRLOCK_REQUIRE_SIGNATURES", requires = "trusted_keys")]
    pub require_signatures: bool,
    /// Wall-clock budget of one compilation (uploads, and models whose
    /// artifact is missing), in seconds.
    #[arg(long, env = "AIRLOCK_COMPILE_TIMEOUT_SECS", default_value_t = 120)]
    pub compile_timeout_secs: u64,
    /// Memory budget (heap and stacks) of the process compiling one
    /// module, in MiB.
    #[arg(long, env = "AIRLOCK_COMPILE_MEMORY_MIB", default_value_t = 2048)]
    pub compile_memory_mib: u64,
    /// Bearer token of the repository API (at least 16 visible ASCII
    /// characters). `airlock serve` reads (or generates) one under its data
    /// directory when unset; `bootstrap` then serves the repository API to
    /// IAM-authorised API Gateway routes only.
    #[arg(long, env = "AIRLOCK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl HostArgs {
    /// The host configuration these settings describe, with data under
    /// `data_dir`. Uploads compile in a bounded child process of the
    /// current binary; the artifact key comes from the environment only
    /// (`AIRLOCK_ARTIFACT_KEY`: a key on the command line shows in `ps`).
    pub fn to_config(&self, data_dir: &Path) -> anyhow::Result<HostConfig> {
        let mut config = HostConfig::new(data_dir);
        config.store_url = self.store.clone();
        config.limits.memory_bytes = self.memory_mib << 20;
        config.limits.deadline = Duration::from_millis(self.deadline_ms);
        config.max_body_bytes = self.max_body_bytes;
        config.max_upload_bytes = self.max_upload_bytes;
        if let Some(mib) = self.request_memory_mib {
            config.request_memory_bytes = mib << 20;
        }
        if let Some(mib) = self.guest_memory_mib {
            config.engine.guest_memory_bytes = mib << 20;
        }
        config.trusted_keys = crate::signing::TrustedKeys::from_files(&self.trusted_keys)?;
        config.require_signatures = self.require_signatures;
        config.admin_token = self.admin_token.clone();
        config.artifact_key = crate::artifacts::ArtifactKey::from_env()?;
        config.compiler = crate::compile::Compiler::current_exe(crate::compile::CompileBudget {
            time: Duration::from_secs(self.compile_timeout_secs),
            memory_bytes: self.compile_memory_mib << 20,
            ..Default::default()
        })?;
        anyhow::ensure!(
            config.limits.memory_bytes <= config.engine.max_memory_bytes,
            "the memory cap per request ({} MiB) is over the engine's slot size of {} MiB",
            self.memory_mib,
            config.engine.max_memory_bytes >> 20
        );
        Ok(config)
    }

    /// How often to look at a shared store for changes.
    pub fn refresh_every(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// A binary's command line: the shared settings, flattened.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        host: HostArgs,
    }

    fn parse(args: &[&str]) -> Result<HostArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("airlock").chain(args.iter().copied()))
            .map(|cli| cli.host)
    }

    #[test]
    fn flags_become_the_host_configuration() {
        let args = parse(&[
            "--memory-mib",
            "64",
            "--deadline-ms",
            "150",
            "--max-body-bytes",
            "1024",
            "--request-memory-mib",
            "8",
            "--guest-memory-mib",
            "32",
            "--admin-token",
            "0123456789abcdef",
        ])
        .unwrap();
        let config = args.to_config(Path::new("/nonexistent")).unwrap();
        assert_eq!(config.limits.memory_bytes, 64 << 20);
        assert_eq!(config.limits.deadline, Duration::from_millis(150));
        assert_eq!(config.max_body_bytes, 1024);
        assert_eq!(config.request_memory_bytes, 8 << 20);
        assert_eq!(config.engine.guest_memory_bytes, 32 << 20);
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let error = parse(&["--require-signatures"]).expect_err("needs a key");
        assert!(error.to_string().contains("--trusted-key"), "{error}");
        let over_slot = parse(&["--memory-mib", "4096"]).unwrap();
        let error = over_slot.to_config(Path::new("/nonexistent")).unwrap_err();
        assert!(error.to_string().contains("slot size"), "{error}");
    }
}
