//! The AWS clients and the error helpers every step uses.
//!
//! All SDK calls go through the fields of [`Aws`] (`aws.iam.…`,
//! `aws.s3.…`, …). The least-privilege test (`tests/all/policy.rs`) relies
//! on that: it finds every operation by those field names and checks it
//! against `deployer-policy.json`.

use std::fmt::Display;

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// One client per service, built from one [`SdkConfig`].
#[derive(Debug, Clone)]
pub struct Aws {
    /// IAM (the Lambda's execution role).
    pub iam: aws_sdk_iam::Client,
    /// S3 (the model bucket).
    pub s3: aws_sdk_s3::Client,
    /// Lambda (the function, its versions, alias and permission).
    pub lambda: aws_sdk_lambda::Client,
    /// API Gateway v2 (the HTTP API, its stage and custom domain).
    pub apigw: aws_sdk_apigatewayv2::Client,
    /// CloudWatch Logs (the function's and the API's log groups).
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// STS (the account id, for resource names and ARNs).
    pub sts: aws_sdk_sts::Client,
    /// The region every client talks to.
    pub region: String,
}

/// Where and as whom to connect; unset fields come from the standard
/// chain (`AWS_REGION`, `AWS_PROFILE`, `~/.aws/config`, SSO, instance roles, …).
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Region (`--region`).
    pub region: Option<String>,
    /// Named profile (`--profile`).
    pub profile: Option<String>,
}

impl Aws {
    /// Loads the standard credential chain (aws-config) with the overrides
    /// in `connect`. `AWS_ENDPOINT_URL` (e.g. an emulator) is honoured.
    pub async fn connect(connect: &Connect) -> anyhow::Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &connect.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &connect.profile {
            loader = loader.profile_name(profile);
        }
        Self::from_sdk_config(&loader.load().await)
    }

    /// Clients for an already loaded configuration (tests point it at an
    /// emulator with `endpoint_url`).
    pub fn from_sdk_config(sdk: &SdkConfig) -> anyhow::Result<Self> {
        let region = sdk
            .region()
            .context("no AWS region configured: pass --region or set AWS_REGION")?
            .to_string();
        // A custom endpoint (an emulator on 127.0.0.1) cannot serve
        // virtual-host bucket names; AWS itself takes either.
        let path_style = sdk.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        Ok(Self {
            iam: aws_sdk_iam::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3),
            lambda: aws_sdk_lambda::Client::new(sdk),
            apigw: aws_sdk_apigatewayv2::Client::new(sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(sdk),
            sts: aws_sdk_sts::Client::new(sdk),
            region,
        })
    }

    /// The account the credentials belong to.
    pub async fn account_id(&self) -> anyhow::Result<String> {
        let me =
            self.sts.get_caller_identity().send().await.aws(|| {
                "failed to get the caller identity (are AWS credentials configured?)".into()
            })?;
        me.account()
            .map(str::to_owned)
            .context("sts:GetCallerIdentity returned no account id")
    }
}

/// Turns an SDK error into an `anyhow` error that says what AWS said (code,
/// message, request id) under a "failed to <verb> <name>" context.
pub(crate) trait AwsResultExt<T> {
    fn aws(self, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E, R> AwsResultExt<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn aws(self, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{}", describe(&e)))
            .with_context(what)
    }
}

/// The same for SDK waiters, whose errors carry the last poll.
pub(crate) trait WaitResultExt<T> {
    fn waited(self, what: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E> WaitResultExt<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn waited(self, what: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
            .with_context(what)
    }
}

/// A service error as "AWS said CODE: message (request id …)"; any other
/// failure (no connection, timeout, credentials) with its whole source chain.
fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => {
            let code = service.code().unwrap_or("an unnamed error");
            let message = service.message().unwrap_or("(no message)");
            match service.meta().extra("aws_request_id") {
                Some(id) => format!("AWS said {code}: {message} (request id {id})"),
                None => format!("AWS said {code}: {message}"),
            }
        }
        None => DisplayErrorContext(error).to_string(),
    }
}

/// `Ok(None)` when the call failed with one of `codes` (the resource does
/// not exist), the original error otherwise.
pub(crate) fn found<T, E, R>(
    result: Result<T, SdkError<E, R>>,
    codes: &[&str],
) -> Result<Option<T>, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
{
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if has_code(&e, codes) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a service error carries one of `codes`.
pub(crate) fn has_code<E, R>(error: &SdkError<E, R>, codes: &[&str]) -> bool
where
    E: ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|code| codes.contains(&code))
}

/// The message of a service error ("" for transport errors).
pub(crate) fn message<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(ProvideErrorMetadata::message)
        .unwrap_or_default()
        .to_owned()
}

/// `format!("failed to {verb} {name:?}")`, the context every call gets.
pub(crate) fn failed(verb: &str, name: impl Display) -> String {
    format!("failed to {verb} \"{name}\"")
}
