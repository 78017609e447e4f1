//! The Lambda function, the version the `live` alias points at, and the
//! permission that lets this stack's API (and nothing else) invoke it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_lambda::client::Waiters as _;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Architecture, Environment, FunctionCode, FunctionConfiguration, LastUpdateStatus, LogFormat,
    LoggingConfig, Runtime,
};

use crate::aws::{Aws, AwsResultExt as _, WaitResultExt as _, failed, found, has_code, message};
use crate::names::{ALIAS, Names};
use crate::package::CodePackage;
use crate::report::Change;

const NOT_FOUND: &[&str] = &["ResourceNotFoundException"];
/// How long to wait for a function update or a new version to settle.
const SETTLE: Duration = Duration::from_secs(300);
/// The one principal allowed to invoke the alias.
const APIGATEWAY: &str = "apigateway.amazonaws.com";

/// The environment variable that holds the key of the MAC on compiled
/// artifacts the function's instances share through the bucket (hex; see
/// the host's `artifacts::ArtifactKey`). It lives in the function's
/// configuration, never in the bucket: whoever can write the bucket cannot
/// forge an artifact the instances would run.
pub const ARTIFACT_KEY_ENV: &str = "AIRLOCK_ARTIFACT_KEY";

/// The artifact key of the function: the one its `$LATEST` configuration
/// already has (every instance and every published version must agree on
/// it, and a new key would only cost a recompile), or a fresh random one
/// (32 bytes, hex) for a new function or one deployed before keys existed.
pub(crate) async fn artifact_key(aws: &Aws, names: &Names) -> anyhow::Result<String> {
    let existing = get(aws, names, None).await?.and_then(|f| {
        f.configuration()
            .and_then(|c| c.environment())
            .and_then(|e| e.variables())
            .and_then(|vars| vars.get(ARTIFACT_KEY_ENV).cloned())
    });
    match existing {
        Some(key) if is_artifact_key(&key) => Ok(key),
        _ => random_key(),
    }
}

/// Whether `key` is what [`random_key`] makes: 64 lowercase hex digits.
fn is_artifact_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 32 random bytes from the operating system, as hex.
fn random_key() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("failed to read random bytes for the artifact key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the function should look like. (Not `Debug`: its environment
/// holds the artifact key.)
#[derive(Clone)]
pub(crate) struct Spec<'a> {
    /// The zip; `None` only in a dry run without one (code is then not compared).
    pub(crate) package: Option<&'a CodePackage>,
    pub(crate) role_arn: String,
    pub(crate) memory_mb: i32,
    pub(crate) timeout_secs: i32,
    pub(crate) architecture: Architecture,
    pub(crate) environment: BTreeMap<String, String>,
    pub(crate) log_group: String,
}

impl Spec<'_> {
    /// Differences in what `UpdateFunctionCode` sets.
    fn code_drift(&self, cfg: &FunctionConfiguration) -> Vec<String> {
        let mut drift = Vec::new();
        if let Some(package) = self.package
            && cfg.code_sha256() != Some(package.sha256.as_str())
        {
            drift.push("code".to_owned());
        }
        if cfg.architectures() != [self.architecture.clone()] {
            drift.push("architecture".to_owned());
        }
        drift
    }

    /// Differences in what `UpdateFunctionConfiguration` sets.
    fn config_drift(&self, cfg: &FunctionConfiguration) -> Vec<String> {
        let mut drift = Vec::new();
        let mut differs = |same: bool, what: &str| {
            if !same {
                drift.push(what.to_owned());
            }
        };
        differs(cfg.runtime() == Some(&Runtime::Providedal2023), "runtime");
        differs(cfg.handler() == Some("bootstrap"), "handler");
        differs(cfg.role() == Some(self.role_arn.as_str()), "role");
        differs(cfg.memory_size() == Some(self.memory_mb), "memory");
        differs(cfg.timeout() == Some(self.timeout_secs), "timeout");
        let env: BTreeMap<String, String> = cfg
            .environment()
            .and_then(|e| e.variables())
            .map(|vars| vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        differs(env == self.environment, "environment");
        // Lambda always reports its logging configuration; the emulator
        // does not, and then there is nothing to compare.
        if let Some(logging) = cfg.logging_config() {
            differs(
                logging.log_format() == Some(&LogFormat::Json)
                    && logging.log_group() == Some(self.log_group.as_str()),
                "logging",
            );
        }
        drift
    }

    fn environment(&self) -> Environment {
        let vars: HashMap<String, String> = self.environment.clone().into_iter().collect();
        Environment::builder().set_variables(Some(vars)).build()
    }

    fn logging(&self) -> LoggingConfig {
        // JSON logs: the host switches its own log format on AWS_LAMBDA_LOG_FORMAT.
        LoggingConfig::builder()
            .log_format(LogFormat::Json)
            .log_group(&self.log_group)
            .build()
    }

    fn package(&self) -> anyhow::Result<&CodePackage> {
        self.package
            .context("internal error: no code package outside a dry run")
    }
}

/// The function's `$LATEST` configuration, if the function exists.
pub(crate) async fn get(
    aws: &Aws,
    names: &Names,
    qualifier: Option<&str>,
) -> anyhow::Result<Option<aws_sdk_lambda::operation::get_function::GetFunctionOutput>> {
    let function = names.function.as_str();
    found(
        aws.lambda
            .get_function()
            .function_name(function)
            .set_qualifier(qualifier.map(str::to_owned))
            .send()
            .await,
        NOT_FOUND,
    )
    .aws(|| {
        failed(
            "get function",
            format_args!(
                "{function}{}",
                qualifier.map(|q| format!(":{q}")).unwrap_or_default()
            ),
        )
    })
}

/// Creates the function or brings `$LATEST` in line, waiting for every
/// update to finish.
pub(crate) async fn ensure(
    aws: &Aws,
    names: &Names,
    spec: &Spec<'_>,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let function = names.function.as_str();
    let Some(current) = get(aws, names, None).await? else {
        if !dry_run {
            create(aws, names, spec).await?;
        }
        return Ok(Change::Created);
    };
    let cfg = current.configuration().with_context(|| {
        format!("lambda:GetFunction returned no configuration for {function:?}")
    })?;

    let code = spec.code_drift(cfg);
    let config = spec.config_drift(cfg);
    let tags = current.tags().cloned().unwrap_or_default();
    let missing_tags: Vec<_> = names
        .tags()
        .into_iter()
        .filter(|(k, v)| tags.get(k) != Some(v))
        .collect();

    let mut updates: Vec<String> = code.iter().chain(&config).cloned().collect();
    if !missing_tags.is_empty() {
        updates.push("tags".to_owned());
    }
    if dry_run || updates.is_empty() {
        return Ok(Change::from_updates(updates));
    }

    // A previous run may have left an update in progress.
    if cfg.last_update_status() == Some(&LastUpdateStatus::InProgress) {
        wait_updated(aws, function).await?;
    }
    if !code.is_empty() {
        let package = spec.package()?;
        aws.lambda
            .update_function_code()
            .function_name(function)
            .zip_file(Blob::new(package.bytes.clone()))
            .architectures(spec.architecture.clone())
            .send()
            .await
            .aws(|| failed("update the code of function", function))?;
        wait_updated(aws, function).await?;
    }
    if !config.is_empty() {
        aws.lambda
            .update_function_configuration()
            .function_name(function)
            .runtime(Runtime::Providedal2023)
            .handler("bootstrap")
            .role(&spec.role_arn)
            .memory_size(spec.memory_mb)
            .timeout(spec.timeout_secs)
            .environment(spec.environment())
            .logging_config(spec.logging())
            .send()
            .await
            .aws(|| failed("update the configuration of function", function))?;
        wait_updated(aws, function).await?;
    }
    if !missing_tags.is_empty() {
        let mut tag = aws.lambda.tag_resource().resource(names.function_arn());
        for (key, value) in missing_tags {
            tag = tag.tags(key, value);
        }
        tag.send().await.aws(|| failed("tag function", function))?;
    }
    Ok(Change::Updated(updates))
}

async fn create(aws: &Aws, names: &Names, spec: &Spec<'_>) -> anyhow::Result<()> {
    let function = names.function.as_str();
    let package = spec.package()?;
    // A role created seconds ago may not be assumable by Lambda yet (IAM
    // is eventually consistent): retry that one error for a minute.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut create = aws
            .lambda
            .create_function()
            .function_name(function)
            .description(format!("Airlock inference ({} stack)", names.stack))
            .runtime(Runtime::Providedal2023)
            .handler("bootstrap")
            .role(&spec.role_arn)
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(package.bytes.clone()))
                    .build(),
            )
            .architectures(spec.architecture.clone())
            .memory_size(spec.memory_mb)
            .timeout(spec.timeout_secs)
            .environment(spec.environment())
            .logging_config(spec.logging());
        for (key, value) in names.tags() {
            create = create.tags(key, value);
        }
        match create.send().await {
            Ok(_) => break,
            Err(e)
                if attempt < 20
                    && has_code(&e, &["InvalidParameterValueException"])
                    && message(&e).contains("role") =>
            {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e).aws(|| failed("create function", function)),
        }
    }
    aws.lambda
        .wait_until_function_active_v2()
        .function_name(function)
        .wait(SETTLE)
        .await
        .waited(|| failed("wait for function to become active", function))?;
    Ok(())
}

async fn wait_updated(aws: &Aws, function: &str) -> anyhow::Result<()> {
    aws.lambda
        .wait_until_function_updated_v2()
        .function_name(function)
        .wait(SETTLE)
        .await
        .waited(|| failed("wait for the update of function", function))?;
    Ok(())
}

/// The version `live` points at, if the alias exists.
pub(crate) async fn alias_version(aws: &Aws, names: &Names) -> anyhow::Result<Option<String>> {
    let function = names.function.as_str();
    let alias = found(
        aws.lambda
            .get_alias()
            .function_name(function)
            .name(ALIAS)
            .send()
            .await,
        NOT_FOUND,
    )
    .aws(|| failed("get alias", format_args!("{function}:{ALIAS}")))?;
    Ok(alias.and_then(|a| a.function_version().map(str::to_owned)))
}

/// Publishes a version when `$LATEST` differs from what `live` serves, and
/// points `live` at it.
pub(crate) async fn ensure_alias(
    aws: &Aws,
    names: &Names,
    spec: &Spec<'_>,
    function_is_new: bool,
    dry_run: bool,
) -> anyhow::Result<(Change, Option<String>)> {
    let function = names.function.as_str();
    let current = if function_is_new && dry_run {
        None
    } else {
        alias_version(aws, names).await?
    };
    if let Some(version) = &current {
        let published = get(aws, names, Some(version)).await?;
        let drift = published
            .as_ref()
            .and_then(|p| p.configuration())
            .map(|cfg| [spec.code_drift(cfg), spec.config_drift(cfg)].concat());
        if drift.is_some_and(|d| d.is_empty()) {
            return Ok((Change::Unchanged, Some(version.clone())));
        }
    }
    if dry_run {
        let change = match &current {
            None => Change::Created,
            Some(version) => Change::updated(format!("version {version} -> new")),
        };
        return Ok((change, current));
    }

    let package = spec.package()?;
    let published = aws
        .lambda
        .publish_version()
        .function_name(function)
        // Publish only what this run uploaded, not a concurrent deploy's code.
        .code_sha256(&package.sha256)
        .send()
        .await
        .aws(|| failed("publish a version of function", function))?;
    let version = published
        .version()
        .context("lambda:PublishVersion returned no version number")?
        .to_owned();
    aws.lambda
        .wait_until_published_version_active()
        .function_name(function)
        .qualifier(&version)
        .wait(SETTLE)
        .await
        .waited(|| {
            failed(
                "wait for version to become active",
                format_args!("{function}:{version}"),
            )
        })?;

    let change = match &current {
        None => {
            aws.lambda
                .create_alias()
                .function_name(function)
                .name(ALIAS)
                .function_version(&version)
                .send()
                .await
                .aws(|| failed("create alias", format_args!("{function}:{ALIAS}")))?;
            Change::Created
        }
        Some(previous) => {
            aws.lambda
                .update_alias()
                .function_name(function)
                .name(ALIAS)
                .function_version(&version)
                .send()
                .await
                .aws(|| failed("update alias", format_args!("{function}:{ALIAS}")))?;
            Change::updated(format!("version {previous} -> {version}"))
        }
    };
    Ok((change, Some(version)))
}

/// Lets the API `api_id` (any stage, method and route of it, and nothing
/// else) invoke the `live` alias.
pub(crate) async fn ensure_permission(
    aws: &Aws,
    names: &Names,
    api_id: Option<&str>,
    alias_is_new: bool,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let function = names.function.as_str();
    let (Some(api_id), false) = (api_id, alias_is_new && dry_run) else {
        return Ok(Change::Created);
    };
    let source_arn = names.api_source_arn(api_id);
    let statement = permission_statement(aws, names).await?;
    let change = match statement {
        Some(statement) if statement_matches(&statement, &source_arn) => {
            return Ok(Change::Unchanged);
        }
        Some(_) => {
            if !dry_run {
                aws.lambda
                    .remove_permission()
                    .function_name(function)
                    .qualifier(ALIAS)
                    .statement_id(&names.permission_sid)
                    .send()
                    .await
                    .aws(|| failed("remove the outdated invoke permission of", function))?;
            }
            Change::updated("source ARN")
        }
        None => Change::Created,
    };
    if !dry_run {
        aws.lambda
            .add_permission()
            .function_name(function)
            .qualifier(ALIAS)
            .statement_id(&names.permission_sid)
            .action("lambda:InvokeFunction")
            .principal(APIGATEWAY)
            .source_arn(&source_arn)
            .send()
            .await
            .aws(|| {
                failed(
                    "let the API invoke function",
                    format_args!("{function}:{ALIAS}"),
                )
            })?;
    }
    Ok(change)
}

/// The stack's statement in the alias's resource policy.
pub(crate) async fn permission_statement(
    aws: &Aws,
    names: &Names,
) -> anyhow::Result<Option<serde_json::Value>> {
    let function = names.function.as_str();
    let policy = found(
        aws.lambda
            .get_policy()
            .function_name(function)
            .qualifier(ALIAS)
            .send()
            .await,
        NOT_FOUND,
    )
    .aws(|| {
        failed(
            "get the resource policy of",
            format_args!("{function}:{ALIAS}"),
        )
    })?;
    let Some(text) = policy.as_ref().and_then(|p| p.policy()) else {
        return Ok(None);
    };
    let doc: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("the resource policy of {function}:{ALIAS} is not JSON"))?;
    Ok(doc["Statement"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["Sid"] == names.permission_sid.as_str()))
        .cloned())
}

/// The source ARN a permission statement is scoped to.
pub fn statement_source_arn(statement: &serde_json::Value) -> Option<&str> {
    statement["Condition"]["ArnLike"]["AWS:SourceArn"].as_str()
}

fn statement_matches(statement: &serde_json::Value, source_arn: &str) -> bool {
    statement["Effect"] == "Allow"
        && statement["Action"] == "lambda:InvokeFunction"
        && statement["Principal"]["Service"] == APIGATEWAY
        && statement_source_arn(statement) == Some(source_arn)
}

/// Deletes the function with its versions, alias and permission.
pub(crate) async fn delete(aws: &Aws, names: &Names, dry_run: bool) -> anyhow::Result<Change> {
    let function = names.function.as_str();
    if get(aws, names, None).await?.is_none() {
        return Ok(Change::Absent);
    }
    if !dry_run {
        aws.lambda
            .delete_function()
            .function_name(function)
            .send()
            .await
            .aws(|| failed("delete function", function))?;
    }
    Ok(Change::Deleted)
}
