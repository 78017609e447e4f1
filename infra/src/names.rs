//! Every resource name and ARN, derived from the stack name, the account
//! and the region; and the checks on what a user passes in (the AWS
//! emulator accepts nearly anything, AWS does not: fail early and clearly).

use std::collections::BTreeMap;

use anyhow::{bail, ensure};

/// The tag every resource of a stack carries, with the stack name as value.
pub const STACK_TAG: &str = "airlock:stack";
/// The tag that says which tool manages a resource.
pub const MANAGED_BY_TAG: &str = "airlock:managed-by";
/// Its value.
pub const MANAGED_BY: &str = "airlock-infra";
/// The alias API Gateway invokes.
pub const ALIAS: &str = "live";
/// The key prefix of the model store inside the bucket.
pub const STORE_PREFIX: &str = "models";
/// The HTTP API's only stage.
pub const STAGE: &str = "$default";
/// The managed policy that lets the function write its logs.
pub const BASIC_EXECUTION_POLICY: &str = "service-role/AWSLambdaBasicExecutionRole";

/// Names and ARNs of one stack in one account and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The stack name (default `airlock`).
    pub stack: String,
    /// The region.
    pub region: String,
    /// The account id.
    pub account: String,
    /// The ARN partition of the region (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: String,
    /// The execution role: `<stack>-lambda`.
    pub role: String,
    /// The role's inline policy: `<stack>-model-bucket`.
    pub role_policy: String,
    /// The model bucket: `<stack>-models-<account>-<region>` (bucket names are global).
    pub bucket: String,
    /// The function: `<stack>`.
    pub function: String,
    /// The HTTP API: `<stack>`.
    pub api: String,
    /// The function's log group: `/aws/lambda/<stack>`.
    pub function_log_group: String,
    /// The API's access-log group: `/aws/apigateway/<stack>`.
    pub access_log_group: String,
    /// The statement id of the permission that lets the API invoke the alias.
    pub permission_sid: String,
}

impl Names {
    /// Derives every name; fails on a stack name AWS would reject somewhere.
    pub fn new(stack: &str, region: &str, account: &str) -> anyhow::Result<Self> {
        validate_stack(stack)?;
        validate_region(region)?;
        ensure!(
            account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()),
            "unexpected account id {account:?}"
        );
        let bucket = format!("{stack}-models-{account}-{region}");
        ensure!(
            bucket.len() <= 63,
            "bucket name {bucket:?} is over 63 characters"
        );
        Ok(Self {
            stack: stack.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            partition: partition(region).to_owned(),
            role: format!("{stack}-lambda"),
            role_policy: format!("{stack}-model-bucket"),
            bucket,
            function: stack.to_owned(),
            api: stack.to_owned(),
            function_log_group: format!("/aws/lambda/{stack}"),
            access_log_group: format!("/aws/apigateway/{stack}"),
            permission_sid: format!("{stack}-apigateway-invoke"),
        })
    }

    /// Tags put on every taggable resource.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (STACK_TAG.to_owned(), self.stack.clone()),
            (MANAGED_BY_TAG.to_owned(), MANAGED_BY.to_owned()),
        ])
    }

    /// `arn:…:iam::<account>:role/<role>`.
    pub fn role_arn(&self) -> String {
        format!(
            "arn:{}:iam::{}:role/{}",
            self.partition, self.account, self.role
        )
    }

    /// The managed AWSLambdaBasicExecutionRole policy.
    pub fn basic_execution_policy_arn(&self) -> String {
        format!(
            "arn:{}:iam::aws:policy/{BASIC_EXECUTION_POLICY}",
            self.partition
        )
    }

    /// `arn:…:s3:::<bucket>`.
    pub fn bucket_arn(&self) -> String {
        format!("arn:{}:s3:::{}", self.partition, self.bucket)
    }

    /// `s3://<bucket>/models`, the function's `AIRLOCK_STORE`.
    pub fn store_url(&self) -> String {
        format!("s3://{}/{STORE_PREFIX}", self.bucket)
    }

    /// The unqualified function ARN.
    pub fn function_arn(&self) -> String {
        format!(
            "arn:{}:lambda:{}:{}:function:{}",
            self.partition, self.region, self.account, self.function
        )
    }

    /// The ARN of the `live` alias (what the API invokes).
    pub fn alias_arn(&self) -> String {
        format!("{}:{ALIAS}", self.function_arn())
    }

    /// A log group's ARN (without the `:*` suffix).
    pub fn log_group_arn(&self, group: &str) -> String {
        format!(
            "arn:{}:logs:{}:{}:log-group:{group}",
            self.partition, self.region, self.account
        )
    }

    /// The source ARN that scopes the invoke permission to one API (every
    /// stage, method and route of it).
    pub fn api_source_arn(&self, api_id: &str) -> String {
        format!(
            "arn:{}:execute-api:{}:{}:{api_id}/*",
            self.partition, self.region, self.account
        )
    }

    /// The resource ARN API Gateway tags an API by.
    pub fn api_arn(&self, api_id: &str) -> String {
        format!(
            "arn:{}:apigateway:{}::/apis/{api_id}",
            self.partition, self.region
        )
    }

    /// The resource ARN API Gateway tags a stage by.
    pub fn stage_arn(&self, api_id: &str) -> String {
        format!("{}/stages/{STAGE}", self.api_arn(api_id))
    }

    /// The resource ARN API Gateway tags a custom domain by.
    pub fn domain_arn(&self, domain: &str) -> String {
        format!(
            "arn:{}:apigateway:{}::/domainnames/{domain}",
            self.partition, self.region
        )
    }

    /// The default endpoint of an API.
    pub fn execute_api_endpoint(&self, api_id: &str) -> String {
        let suffix = match self.partition.as_str() {
            "aws-cn" => "amazonaws.com.cn",
            _ => "amazonaws.com",
        };
        format!("https://{api_id}.execute-api.{}.{suffix}", self.region)
    }
}

/// The ARN partition of a region.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// A stack name: 1–20 characters, lowercase letters, digits and single
/// hyphens, starting with a letter. It ends up in bucket, role, function,
/// API and log-group names, whose rules this satisfies together.
pub fn validate_stack(stack: &str) -> anyhow::Result<()> {
    let ok = (1..=20).contains(&stack.len())
        && stack.starts_with(|c: char| c.is_ascii_lowercase())
        && !stack.ends_with('-')
        && !stack.contains("--")
        && stack
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ensure!(
        ok,
        "invalid stack name {stack:?}: use 1-20 lowercase letters, digits and single hyphens, \
         starting with a letter"
    );
    Ok(())
}

fn validate_region(region: &str) -> anyhow::Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 25
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ensure!(ok, "invalid region {region:?}");
    Ok(())
}

/// A custom domain name: a lowercase DNS name of at least two labels
/// (no wildcard, no trailing dot).
pub fn validate_domain(domain: &str) -> anyhow::Result<()> {
    let labels: Vec<&str> = domain.split('.').collect();
    let ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()));
    ensure!(
        ok,
        "invalid domain name {domain:?}: expected a lowercase DNS name such as api.example.com"
    );
    Ok(())
}

/// An ACM certificate ARN in the deploy region (a regional custom domain
/// needs its certificate in the same region).
pub fn validate_certificate_arn(arn: &str, region: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition_, service, cert_region, account, resource] = parts[..] else {
        bail!(
            "invalid certificate ARN {arn:?}: expected arn:aws:acm:REGION:ACCOUNT:certificate/ID"
        );
    };
    ensure!(
        prefix == "arn"
            && partition_ == partition(region)
            && service == "acm"
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource
                .strip_prefix("certificate/")
                .is_some_and(|id| !id.is_empty() && !id.contains(['/', ' '])),
        "invalid certificate ARN {arn:?}: expected arn:{}:acm:{region}:ACCOUNT:certificate/ID",
        partition(region)
    );
    ensure!(
        cert_region == region,
        "certificate {arn:?} is in {cert_region}, but a regional custom domain needs a \
         certificate in the deploy region {region}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_stack() {
        let n = Names::new("airlock", "eu-west-1", "123456789012").unwrap();
        assert_eq!(n.role, "airlock-lambda");
        assert_eq!(n.bucket, "airlock-models-123456789012-eu-west-1");
        assert_eq!(
            n.alias_arn(),
            "arn:aws:lambda:eu-west-1:123456789012:function:airlock:live"
        );
        assert_eq!(
            n.api_source_arn("abc"),
            "arn:aws:execute-api:eu-west-1:123456789012:abc/*"
        );
        assert_eq!(
            n.store_url(),
            "s3://airlock-models-123456789012-eu-west-1/models"
        );
        assert_eq!(
            n.execute_api_endpoint("abc"),
            "https://abc.execute-api.eu-west-1.amazonaws.com"
        );
        let longest = Names::new("a2345678901234567890", "ap-southeast-4", "123456789012").unwrap();
        assert!(longest.bucket.len() <= 63);
    }

    #[test]
    fn bad_stack_names_are_rejected() {
        for bad in [
            "",
            "Airlock",
            "1abc",
            "a_b",
            "a--b",
            "abc-",
            "a23456789012345678901",
            "a.b",
        ] {
            assert!(validate_stack(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "airlock", "air-lock-2"] {
            validate_stack(good).unwrap();
        }
    }

    #[test]
    fn domains_are_checked() {
        for bad in [
            "localhost",
            "API.example.com",
            "*.example.com",
            "a..b",
            "-a.com",
            "a.com.",
            "1.2.3.4",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?} accepted");
        }
        validate_domain("api.example.com").unwrap();
        validate_domain("ml-1.eu.example.co.uk").unwrap();
    }

    #[test]
    fn certificate_arns_are_checked() {
        let ok = "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b-2c3d";
        validate_certificate_arn(ok, "eu-west-1").unwrap();
        let other_region = validate_certificate_arn(ok, "us-east-1").unwrap_err();
        assert!(
            other_region.to_string().contains("deploy region"),
            "{other_region}"
        );
        for bad in [
            "arn:aws:iam::123456789012:role/x",
            "arn:aws:acm:eu-west-1:123:certificate/x",
            "arn:aws:acm:eu-west-1:123456789012:certificate/",
            "certificate/x",
        ] {
            assert!(
                validate_certificate_arn(bad, "eu-west-1").is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
