//! Airlock on AWS: `deploy`, `status` and `destroy` one stack.
//!
//! A stack is an IAM execution role, an S3 model bucket, a Lambda function
//! (`provided.al2023`, the host's `bootstrap`) with a `live` alias, an API
//! Gateway v2 HTTP API in front of the alias, two log groups, and
//! optionally a custom domain. Every name derives from the stack name and
//! every taggable resource carries `airlock:stack=<stack>`.
//!
//! `deploy` is an upsert: each resource is read, created when missing,
//! updated when it differs, and left alone otherwise; every update is
//! waited for. Running it twice changes nothing the second time.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use airlock_infra::{Aws, Connect, DeployOptions, deploy};
//!
//! let aws = Aws::connect(&Connect { region: Some("eu-west-1".into()), profile: None }).await?;
//! let deployment = deploy(&aws, &DeployOptions::default()).await?;
//! println!("{}", deployment.instructions());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use aws_sdk_lambda::types::Architecture;

mod api;
mod aws;
mod bucket;
mod domain;
pub mod elf;
mod function;
mod logs;
mod names;
mod package;
mod policy;
mod report;
mod role;

pub use api::{ACCESS_LOG_FORMAT, ADMIN_ROUTES, PUBLIC_ROUTES};
pub use aws::{Aws, Connect};
pub use bucket::{ModelStatus, lifecycle_rules, same_rule};
pub use domain::{ActiveDomain, DomainPlan, DomainSpec};
pub use function::{ARTIFACT_KEY_ENV, statement_source_arn};
pub use logs::RETENTION_DAYS;
pub use names::{ALIAS, MANAGED_BY, MANAGED_BY_TAG, Names, STACK_TAG, STAGE, STORE_PREFIX};
pub use package::{AL2023_GLIBC, CodePackage, DEFAULT_ZIP, Packaged, package};
pub use policy::{bucket_policy, role_policy, trust_policy};
pub use report::{Change, Report, Step};

use report::Run;

/// Default stack name.
pub const DEFAULT_STACK: &str = "airlock";
/// Default function memory, MB (Lambda gives CPU in proportion).
pub const DEFAULT_MEMORY_MB: i32 = 1024;
/// Default function timeout, seconds (API Gateway waits at most 30).
pub const DEFAULT_TIMEOUT_SECS: i32 = 30;
/// Default interval at which warm instances look for new model versions.
pub const DEFAULT_REFRESH_SECS: u32 = 5;
/// Default steady-state request rate limit of the stage.
pub const DEFAULT_THROTTLE_RATE: f64 = 50.0;
/// Default burst limit of the stage.
pub const DEFAULT_THROTTLE_BURST: i32 = 100;
/// Default log retention, days.
pub const DEFAULT_LOG_RETENTION_DAYS: i32 = 30;

/// The function's CPU architecture; it must match the `bootstrap` binary
/// (`cargo lambda build` builds x86_64 unless given `--arm64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Arch {
    /// x86_64.
    #[default]
    X86_64,
    /// arm64 (Graviton).
    Arm64,
}

impl Arch {
    fn lambda(self) -> Architecture {
        match self {
            Self::X86_64 => Architecture::X8664,
            Self::Arm64 => Architecture::Arm64,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(Self::X86_64),
            "arm64" | "aarch64" => Ok(Self::Arm64),
            other => Err(format!("unknown architecture {other:?} (x86_64 or arm64)")),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        })
    }
}

/// What `deploy` should make.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The stack name every resource name derives from.
    pub stack: String,
    /// The function's zip (`cargo lambda build --release --output-format zip`).
    pub zip: PathBuf,
    /// Function memory, MB (128–10240).
    pub memory_mb: i32,
    /// Function timeout, seconds (1–900; the API waits at most 30).
    pub timeout_secs: i32,
    /// Function architecture.
    pub arch: Arch,
    /// `AIRLOCK_REFRESH_SECS`: how often warm instances look for new model versions.
    pub refresh_secs: u32,
    /// Stage throttling: steady requests per second.
    pub throttle_rate: f64,
    /// Stage throttling: burst.
    pub throttle_burst: i32,
    /// Retention of both log groups, days (one of [`RETENTION_DAYS`]).
    pub log_retention_days: i32,
    /// The custom domain.
    pub domain: DomainPlan,
    /// Read only and print what would change.
    pub dry_run: bool,
    /// Test hook: fail right after the step of this kind (e.g. `"function"`)
    /// has been carried out, as a crash or a failed call would, leaving a
    /// half-made stack for the next run to converge.
    pub fail_after: Option<String>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            stack: DEFAULT_STACK.to_owned(),
            zip: PathBuf::from(DEFAULT_ZIP),
            memory_mb: DEFAULT_MEMORY_MB,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            arch: Arch::default(),
            refresh_secs: DEFAULT_REFRESH_SECS,
            throttle_rate: DEFAULT_THROTTLE_RATE,
            throttle_burst: DEFAULT_THROTTLE_BURST,
            log_retention_days: DEFAULT_LOG_RETENTION_DAYS,
            domain: DomainPlan::Keep,
            dry_run: false,
            fail_after: None,
        }
    }
}

impl DeployOptions {
    /// Checks every option before anything is called.
    pub fn validate(&self, region: &str) -> anyhow::Result<()> {
        names::validate_stack(&self.stack)?;
        ensure!(
            (128..=10_240).contains(&self.memory_mb),
            "--memory must be 128-10240 MB, not {}",
            self.memory_mb
        );
        ensure!(
            (1..=900).contains(&self.timeout_secs),
            "--timeout must be 1-900 seconds, not {}",
            self.timeout_secs
        );
        ensure!(
            (1..=3600).contains(&self.refresh_secs),
            "--refresh-secs must be 1-3600, not {}",
            self.refresh_secs
        );
        ensure!(
            self.throttle_rate.is_finite() && self.throttle_rate > 0.0,
            "--throttle-rate must be a positive number of requests per second"
        );
        ensure!(
            (0..=5000).contains(&self.throttle_burst),
            "--throttle-burst must be 0-5000, not {}",
            self.throttle_burst
        );
        ensure!(
            RETENTION_DAYS.contains(&self.log_retention_days),
            "--log-retention-days must be one of {RETENTION_DAYS:?}"
        );
        if let DomainPlan::Set(domain) = &self.domain {
            names::validate_domain(&domain.name)?;
            names::validate_certificate_arn(&domain.certificate_arn, region)?;
        }
        Ok(())
    }

    fn environment(&self, names: &Names) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("AIRLOCK_STORE".to_owned(), names.store_url()),
            (
                "AIRLOCK_REFRESH_SECS".to_owned(),
                self.refresh_secs.to_string(),
            ),
        ])
    }
}

/// What `deploy` did and where the API answers.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Every step and what it did.
    pub report: Report,
    /// The stack's names.
    pub names: Names,
    /// The API id (`None` in a dry run of a new stack).
    pub api_id: Option<String>,
    /// The HTTPS endpoint: the custom domain if there is one, else execute-api.
    pub endpoint: Option<String>,
    /// The custom domain, if any.
    pub domain: Option<ActiveDomain>,
    /// The function version `live` serves.
    pub live_version: Option<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// The first sample of scikit-learn's digits set (a zero), 8×8 pixels.
const DIGITS_SAMPLE: &str = "0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,\
0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0";

impl Deployment {
    /// The endpoint and ready-to-run `airlock push` and `curl` lines.
    pub fn instructions(&self) -> String {
        let Some(endpoint) = &self.endpoint else {
            return "Dry run: nothing was changed; the endpoint is known once the API exists.\n"
                .to_owned();
        };
        let mut out = String::new();
        if self.dry_run {
            out.push_str("Dry run: nothing was changed.\n");
        }
        out.push_str(&format!("Endpoint: {endpoint}\n"));
        if let Some(domain) = &self.domain {
            if let Some(target) = &domain.target {
                out.push_str(&format!(
                    "DNS: point {} at {target} (CNAME, or a Route 53 alias in zone {})\n",
                    domain.name,
                    domain.hosted_zone_id.as_deref().unwrap_or("?")
                ));
            }
            out.push_str(
                "The execute-api endpoint is disabled; the API answers only on the domain.\n",
            );
        }
        out.push_str(&format!(
            "\nUpload a model (repository routes need SigV4-signed requests from a principal \
             allowed execute-api:Invoke):\n  airlock push model.wasm --name digits --server {endpoint}\n"
        ));
        out.push_str(&format!(
            "\nAsk it:\n  curl {endpoint}/v2/models/digits/infer -H 'content-type: application/json' \
             -d '{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,64],\"datatype\":\"FP32\",\
             \"data\":[{DIGITS_SAMPLE}]}}]}}'\n"
        ));
        out
    }
}

fn step_failed(kind: &str, resource: &str) -> String {
    format!("step {kind} {resource:?} failed")
}

/// Creates or updates the whole stack; safe to run again.
pub async fn deploy(aws: &Aws, options: &DeployOptions) -> anyhow::Result<Deployment> {
    options.validate(&aws.region)?;
    let dry_run = options.dry_run;
    let package = match CodePackage::read(&options.zip) {
        Ok(package) => Some(package),
        Err(e) if dry_run => {
            println!("note: {e:#}; the plan does not compare the function code");
            None
        }
        Err(e) => return Err(e),
    };
    if options.timeout_secs * 1000 > api::MAX_INTEGRATION_TIMEOUT_MS {
        println!(
            "note: --timeout {} s is longer than API Gateway waits (30 s); requests through \
             the API give up at 30 s",
            options.timeout_secs
        );
    }
    let account = aws.account_id().await?;
    let names = Names::new(&options.stack, &aws.region, &account)?;
    println!(
        "{} stack {:?} in account {account}, region {}:",
        if dry_run { "Planning" } else { "Deploying" },
        names.stack,
        names.region
    );
    let mut run = Run::new(dry_run, options.fail_after.clone());

    let change = bucket::ensure(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("bucket", &names.bucket))?;
    run.record("bucket", &names.bucket, change)?;

    let (change, role_arn) = role::ensure(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("role", &names.role))?;
    run.record("role", &names.role, change)?;

    for group in [&names.function_log_group, &names.access_log_group] {
        let change = logs::ensure(aws, &names, group, options.log_retention_days, dry_run)
            .await
            .with_context(|| step_failed("log-group", group))?;
        run.record("log-group", group, change)?;
    }

    let mut environment = options.environment(&names);
    let artifact_key = function::artifact_key(aws, &names)
        .await
        .with_context(|| step_failed("function", &names.function))?;
    environment.insert(function::ARTIFACT_KEY_ENV.to_owned(), artifact_key);
    let spec = function::Spec {
        package: package.as_ref(),
        role_arn,
        memory_mb: options.memory_mb,
        timeout_secs: options.timeout_secs,
        architecture: options.arch.lambda(),
        environment,
        log_group: names.function_log_group.clone(),
    };
    let change = function::ensure(aws, &names, &spec, dry_run)
        .await
        .with_context(|| step_failed("function", &names.function))?;
    let function_is_new = change == Change::Created;
    run.record("function", &names.function, change)?;

    let alias = format!("{}:{ALIAS}", names.function);
    let (change, live_version) =
        function::ensure_alias(aws, &names, &spec, function_is_new, dry_run)
            .await
            .with_context(|| step_failed("alias", &alias))?;
    let alias_is_new = change == Change::Created;
    let shown = match &live_version {
        Some(version) => format!("{alias} (version {version})"),
        None => alias.clone(),
    };
    run.record("alias", shown, change)?;

    let (change, api) = api::ensure(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("api", &names.api))?;
    let api_label = match &api.id {
        Some(id) => format!("{} ({id})", names.api),
        None => names.api.clone(),
    };
    run.record("api", &api_label, change)?;
    let api_id = api.id.as_deref();

    let timeout_ms = (options.timeout_secs * 1000).min(api::MAX_INTEGRATION_TIMEOUT_MS);
    let (change, integration_id) =
        api::ensure_integration(aws, &names, api_id, timeout_ms, dry_run)
            .await
            .with_context(|| step_failed("integration", &alias))?;
    run.record("integration", format!("{} -> {alias}", names.api), change)?;

    let change = api::ensure_routes(aws, api_id, integration_id.as_deref(), dry_run)
        .await
        .with_context(|| step_failed("routes", &names.api))?;
    let routes = format!(
        "{} ({} public, {} AWS_IAM)",
        names.api,
        PUBLIC_ROUTES.len(),
        ADMIN_ROUTES.len()
    );
    run.record("routes", routes, change)?;

    let stage = api::StageSpec {
        throttle_rate: options.throttle_rate,
        throttle_burst: options.throttle_burst,
    };
    let change = api::ensure_stage(aws, &names, api_id, stage, dry_run)
        .await
        .with_context(|| step_failed("stage", STAGE))?;
    run.record("stage", format!("{} {STAGE}", names.api), change)?;

    let change = function::ensure_permission(aws, &names, api_id, alias_is_new, dry_run)
        .await
        .with_context(|| step_failed("permission", &names.permission_sid))?;
    run.record("permission", format!("{alias} <- {}", names.api), change)?;

    let (outcomes, domain) = domain::ensure(aws, &names, api_id, &options.domain, dry_run)
        .await
        .with_context(|| step_failed("domain", &names.stack))?;
    for (kind, resource, change) in outcomes {
        run.record(kind, resource, change)?;
    }

    let change = api::ensure_execute_api_endpoint(aws, &api, domain.is_some(), dry_run)
        .await
        .with_context(|| step_failed("endpoint", "execute-api"))?;
    run.record("endpoint", "execute-api", change)?;

    let endpoint = match (&domain, &api.endpoint) {
        (Some(domain), _) => Some(format!("https://{}", domain.name)),
        (None, Some(endpoint)) => Some(endpoint.clone()),
        (None, None) => None,
    };
    let report = run.report;
    if !report.changed() {
        println!("No change: the stack is as wanted.");
    }
    Ok(Deployment {
        report,
        names,
        api_id: api.id,
        endpoint,
        domain,
        live_version,
        dry_run,
    })
}

/// What `destroy` removes.
#[derive(Debug, Clone)]
pub struct DestroyOptions {
    /// The stack name.
    pub stack: String,
    /// Also delete the model bucket and every model version in it.
    pub delete_bucket: bool,
    /// Read only and print what would be deleted.
    pub dry_run: bool,
}

impl Default for DestroyOptions {
    fn default() -> Self {
        Self {
            stack: DEFAULT_STACK.to_owned(),
            delete_bucket: false,
            dry_run: false,
        }
    }
}

/// Deletes everything `deploy` made; the model bucket only when asked.
pub async fn destroy(aws: &Aws, options: &DestroyOptions) -> anyhow::Result<Report> {
    names::validate_stack(&options.stack)?;
    let dry_run = options.dry_run;
    let account = aws.account_id().await?;
    let names = Names::new(&options.stack, &aws.region, &account)?;
    println!(
        "{} stack {:?} in account {account}, region {}:",
        if dry_run {
            "Planning to destroy"
        } else {
            "Destroying"
        },
        names.stack,
        names.region
    );
    let mut run = Run::new(dry_run, None);

    let domains = domain::stack_domains(aws, &names)
        .await
        .with_context(|| step_failed("domain", &names.stack))?;
    for found in domains {
        let name = found.domain_name().unwrap_or_default().to_owned();
        let change = domain::delete_one(aws, &name, dry_run)
            .await
            .with_context(|| step_failed("domain", &name))?;
        run.record("domain", name, change)?;
    }

    let (change, label) = api::delete(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("api", &names.api))?;
    run.record("api", label, change)?;

    let change = function::delete(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("function", &names.function))?;
    run.record("function", &names.function, change)?;

    for group in [&names.function_log_group, &names.access_log_group] {
        let change = logs::delete(aws, group, dry_run)
            .await
            .with_context(|| step_failed("log-group", group))?;
        run.record("log-group", group, change)?;
    }

    let change = role::delete(aws, &names, dry_run)
        .await
        .with_context(|| step_failed("role", &names.role))?;
    run.record("role", &names.role, change)?;

    let change = if options.delete_bucket {
        bucket::delete(aws, &names, dry_run)
            .await
            .with_context(|| step_failed("bucket", &names.bucket))?
    } else if bucket::exists(aws, &names).await? {
        Change::Kept("it holds the models; pass --delete-bucket to delete it and them".to_owned())
    } else {
        Change::Absent
    };
    run.record("bucket", &names.bucket, change)?;
    Ok(run.report)
}

/// What exists of a stack.
#[derive(Debug, Clone)]
pub struct StackStatus {
    /// The stack's names.
    pub names: Names,
    /// The role's ARN, if it exists.
    pub role_arn: Option<String>,
    /// Whether the bucket exists.
    pub bucket: bool,
    /// The function's `$LATEST` state and code hash, if it exists.
    pub function: Option<String>,
    /// The version `live` points at.
    pub live_version: Option<String>,
    /// The API id, if it exists.
    pub api_id: Option<String>,
    /// Its route keys with their authorization.
    pub routes: Vec<(String, String)>,
    /// Whether the `$default` stage exists.
    pub stage: bool,
    /// Whether the execute-api endpoint is disabled.
    pub execute_api_disabled: bool,
    /// The stack's custom domains.
    pub domains: Vec<ActiveDomain>,
    /// The log groups and whether each exists.
    pub log_groups: Vec<(String, bool)>,
    /// The HTTPS endpoint.
    pub endpoint: Option<String>,
    /// The models in the store (when the bucket exists).
    pub models: Vec<ModelStatus>,
}

/// Reads what exists of the stack; changes nothing.
pub async fn status(aws: &Aws, stack: &str) -> anyhow::Result<StackStatus> {
    names::validate_stack(stack)?;
    let account = aws.account_id().await?;
    let names = Names::new(stack, &aws.region, &account)?;

    let role_arn = role::arn(aws, &names).await?;
    let bucket = bucket::exists(aws, &names).await?;
    let function = function::get(aws, &names, None).await?.and_then(|f| {
        f.configuration().map(|c| {
            format!(
                "{} (state {}, code sha256 {}, modified {})",
                c.function_arn().unwrap_or_default(),
                c.state().map_or("?", |s| s.as_str()),
                c.code_sha256().unwrap_or("?"),
                c.last_modified().unwrap_or("?"),
            )
        })
    });
    let live_version = if function.is_some() {
        function::alias_version(aws, &names).await?
    } else {
        None
    };
    let api = api::find(aws, &names).await?;
    let api_id = api.as_ref().and_then(|a| a.api_id()).map(str::to_owned);
    let mut routes = Vec::new();
    let mut stage = false;
    if let Some(id) = &api_id {
        routes = api::list_routes(aws, id)
            .await?
            .iter()
            .map(|r| {
                (
                    r.route_key().unwrap_or_default().to_owned(),
                    r.authorization_type()
                        .map_or("NONE", |a| a.as_str())
                        .to_owned(),
                )
            })
            .collect();
        routes.sort();
        stage = api::get_stage(aws, id).await?.is_some();
    }
    let execute_api_disabled = api
        .as_ref()
        .is_some_and(|a| a.disable_execute_api_endpoint() == Some(true));
    let mut domains = Vec::new();
    for found in domain::stack_domains(aws, &names).await? {
        let config = found.domain_name_configurations().first();
        domains.push(ActiveDomain {
            name: found.domain_name().unwrap_or_default().to_owned(),
            target: config
                .and_then(|c| c.api_gateway_domain_name())
                .map(str::to_owned),
            hosted_zone_id: config.and_then(|c| c.hosted_zone_id()).map(str::to_owned),
            security_policy: config
                .and_then(|c| c.security_policy())
                .map(|p| p.as_str().to_owned()),
        });
    }
    let mut log_groups = Vec::new();
    for group in [&names.function_log_group, &names.access_log_group] {
        log_groups.push((group.clone(), logs::find(aws, group).await?.is_some()));
    }
    let endpoint = match (domains.first(), &api) {
        (Some(domain), _) => Some(format!("https://{}", domain.name)),
        (None, Some(api)) => api.api_id().map(|id| {
            api.api_endpoint()
                .map_or_else(|| names.execute_api_endpoint(id), str::to_owned)
        }),
        (None, None) => None,
    };
    let models = if bucket {
        bucket::models(aws, &names).await?
    } else {
        Vec::new()
    };
    Ok(StackStatus {
        names,
        role_arn,
        bucket,
        function,
        live_version,
        api_id,
        routes,
        stage,
        execute_api_disabled,
        domains,
        log_groups,
        endpoint,
        models,
    })
}

impl StackStatus {
    /// Whether nothing of the stack exists (the bucket aside).
    pub fn is_empty(&self) -> bool {
        self.role_arn.is_none()
            && self.function.is_none()
            && self.api_id.is_none()
            && self.domains.is_empty()
            && self.log_groups.iter().all(|(_, exists)| !exists)
    }
}

impl fmt::Display for StackStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.names;
        let or_absent = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".to_owned());
        writeln!(
            f,
            "stack {:?} in account {}, region {}",
            n.stack, n.account, n.region
        )?;
        writeln!(f, "  role {}: {}", n.role, or_absent(&self.role_arn))?;
        writeln!(
            f,
            "  bucket {}: {}",
            n.bucket,
            if self.bucket { "exists" } else { "absent" }
        )?;
        for (group, exists) in &self.log_groups {
            writeln!(
                f,
                "  log-group {group}: {}",
                if *exists { "exists" } else { "absent" }
            )?;
        }
        writeln!(
            f,
            "  function {}: {}",
            n.function,
            or_absent(&self.function)
        )?;
        writeln!(
            f,
            "  alias {}:{ALIAS}: {}",
            n.function,
            match &self.live_version {
                Some(v) => format!("version {v}"),
                None => "absent".to_owned(),
            }
        )?;
        match &self.api_id {
            Some(id) => {
                let iam = self.routes.iter().filter(|(_, a)| a == "AWS_IAM").count();
                writeln!(
                    f,
                    "  api {} ({id}): {} routes ({iam} AWS_IAM), stage {STAGE} {}, execute-api endpoint {}",
                    n.api,
                    self.routes.len(),
                    if self.stage { "exists" } else { "absent" },
                    if self.execute_api_disabled {
                        "disabled"
                    } else {
                        "enabled"
                    }
                )?;
            }
            None => writeln!(f, "  api {}: absent", n.api)?,
        }
        for domain in &self.domains {
            writeln!(
                f,
                "  domain {}: {}, target {}",
                domain.name,
                domain.security_policy.as_deref().unwrap_or("?"),
                domain.target.as_deref().unwrap_or("?")
            )?;
        }
        match &self.endpoint {
            Some(endpoint) => writeln!(f, "endpoint: {endpoint}")?,
            None => writeln!(f, "endpoint: none (not deployed)")?,
        }
        if self.bucket {
            if self.models.is_empty() {
                writeln!(f, "models: none uploaded yet")?;
            } else {
                writeln!(f, "models:")?;
                for m in &self.models {
                    if let Some(problem) = &m.problem {
                        writeln!(f, "  {}: unreadable index ({problem})", m.name)?;
                        continue;
                    }
                    writeln!(
                        f,
                        "  {}: active version {}, {} version(s){}",
                        m.name,
                        m.active.as_deref().unwrap_or("none"),
                        m.versions,
                        if m.loaded { "" } else { ", unloaded" }
                    )?;
                }
            }
        }
        Ok(())
    }
}
