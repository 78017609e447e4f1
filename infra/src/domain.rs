//! The optional custom domain: a regional domain name with security policy
//! TLS_1_2 and the API mapping to the `$default` stage.

use anyhow::{Context as _, bail};
use aws_sdk_apigatewayv2::types::{
    ApiMapping, DomainName, DomainNameConfiguration, EndpointType, SecurityPolicy,
};

use crate::aws::{Aws, AwsResultExt as _, failed};
use crate::names::{Names, STACK_TAG, STAGE};
use crate::report::Change;

/// A custom domain to serve the API on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// The DNS name, e.g. `api.example.com`.
    pub name: String,
    /// An ACM certificate for it in the deploy region.
    pub certificate_arn: String,
}

/// What `deploy` does about the custom domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DomainPlan {
    /// Leave whatever domain the stack has (created by an earlier
    /// `--domain` deploy) as it is, still mapped to the API. The default:
    /// forgetting `--domain` must not take a live domain down.
    #[default]
    Keep,
    /// Serve on this domain (replacing another domain of the stack).
    Set(DomainSpec),
    /// Delete the stack's domain and serve on execute-api again.
    Remove,
}

/// The domain the API is served on after the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveDomain {
    /// The DNS name.
    pub name: String,
    /// The regional API Gateway host name to point a CNAME or alias record at.
    pub target: Option<String>,
    /// The Route 53 hosted zone of that target (for an alias record).
    pub hosted_zone_id: Option<String>,
    /// The TLS security policy.
    pub security_policy: Option<String>,
}

/// The custom domains that carry the stack's tag.
pub(crate) async fn stack_domains(aws: &Aws, names: &Names) -> anyhow::Result<Vec<DomainName>> {
    let mut next: Option<String> = None;
    let mut ours = Vec::new();
    loop {
        let page = aws
            .apigw
            .get_domain_names()
            .set_next_token(next.take())
            .send()
            .await
            .aws(|| failed("list the custom domains of stack", &names.stack))?;
        ours.extend(
            page.items()
                .iter()
                .filter(|d| {
                    d.tags()
                        .and_then(|t| t.get(STACK_TAG))
                        .is_some_and(|s| *s == names.stack)
                })
                .cloned(),
        );
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(ours),
        }
    }
}

/// One recorded sub-step of the domain step.
pub(crate) type Outcome = (&'static str, String, Change);

/// Carries out `plan`; returns what it did and the domain that serves the
/// API afterwards (if any).
pub(crate) async fn ensure(
    aws: &Aws,
    names: &Names,
    api_id: Option<&str>,
    plan: &DomainPlan,
    dry_run: bool,
) -> anyhow::Result<(Vec<Outcome>, Option<ActiveDomain>)> {
    let existing = stack_domains(aws, names).await?;
    let wanted: Option<DomainSpec> = match plan {
        DomainPlan::Remove => None,
        DomainPlan::Set(spec) => Some(spec.clone()),
        DomainPlan::Keep => match &existing[..] {
            [] => None,
            [one] => Some(spec_of(one)?),
            many => bail!(
                "stack {:?} has {} custom domains ({}); pass --domain to say which one to keep",
                names.stack,
                many.len(),
                many.iter()
                    .filter_map(|d| d.domain_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let mut outcomes = Vec::new();
    for domain in &existing {
        let name = domain.domain_name().unwrap_or_default();
        if wanted.as_ref().is_some_and(|w| w.name == name) {
            continue;
        }
        outcomes.push((
            "domain",
            name.to_owned(),
            delete_one(aws, name, dry_run).await?,
        ));
    }
    let Some(wanted) = wanted else {
        return Ok((outcomes, None));
    };

    let current = existing
        .iter()
        .find(|d| d.domain_name() == Some(wanted.name.as_str()));
    let (change, domain) = match current {
        None => {
            let created = if dry_run {
                None
            } else {
                let mut create = aws
                    .apigw
                    .create_domain_name()
                    .domain_name(&wanted.name)
                    .domain_name_configurations(configuration(&wanted));
                for (key, value) in names.tags() {
                    create = create.tags(key, value);
                }
                let out = create
                    .send()
                    .await
                    .aws(|| failed("create custom domain", &wanted.name))?;
                Some(
                    DomainName::builder()
                        .domain_name(&wanted.name)
                        .set_domain_name_configurations(out.domain_name_configurations)
                        .build(),
                )
            };
            (Change::Created, created)
        }
        Some(domain) => {
            let config = domain.domain_name_configurations().first();
            let mut updates = Vec::new();
            if config.and_then(|c| c.certificate_arn()) != Some(wanted.certificate_arn.as_str()) {
                updates.push("certificate".to_owned());
            }
            if config.and_then(|c| c.security_policy()) != Some(&SecurityPolicy::Tls12) {
                updates.push("security policy".to_owned());
            }
            if config.and_then(|c| c.endpoint_type()) != Some(&EndpointType::Regional) {
                updates.push("endpoint type".to_owned());
            }
            let mut domain = domain.clone();
            if !updates.is_empty() && !dry_run {
                let out = aws
                    .apigw
                    .update_domain_name()
                    .domain_name(&wanted.name)
                    .domain_name_configurations(configuration(&wanted))
                    .send()
                    .await
                    .aws(|| failed("update custom domain", &wanted.name))?;
                domain.domain_name_configurations = out.domain_name_configurations;
            }
            (Change::from_updates(updates), Some(domain))
        }
    };
    outcomes.push(("domain", wanted.name.clone(), change));

    let mapping_name = format!("{} -> {}", wanted.name, names.api);
    let mapping = match (api_id, domain.is_some()) {
        (Some(api_id), true) => ensure_mapping(aws, &wanted.name, api_id, dry_run).await?,
        _ => Change::Created,
    };
    outcomes.push(("api-mapping", mapping_name, mapping));

    let config = domain
        .as_ref()
        .and_then(|d| d.domain_name_configurations().first());
    let active = ActiveDomain {
        name: wanted.name.clone(),
        target: config
            .and_then(|c| c.api_gateway_domain_name())
            .map(str::to_owned),
        hosted_zone_id: config.and_then(|c| c.hosted_zone_id()).map(str::to_owned),
        security_policy: Some(
            config
                .and_then(|c| c.security_policy())
                .unwrap_or(&SecurityPolicy::Tls12)
                .as_str()
                .to_owned(),
        ),
    };
    Ok((outcomes, Some(active)))
}

fn configuration(spec: &DomainSpec) -> DomainNameConfiguration {
    DomainNameConfiguration::builder()
        .certificate_arn(&spec.certificate_arn)
        .endpoint_type(EndpointType::Regional)
        .security_policy(SecurityPolicy::Tls12)
        .build()
}

fn spec_of(domain: &DomainName) -> anyhow::Result<DomainSpec> {
    let name = domain
        .domain_name()
        .context("a custom domain without a name")?;
    let certificate_arn = domain
        .domain_name_configurations()
        .first()
        .and_then(|c| c.certificate_arn())
        .with_context(|| format!("custom domain {name:?} has no certificate"))?;
    Ok(DomainSpec {
        name: name.to_owned(),
        certificate_arn: certificate_arn.to_owned(),
    })
}

/// The domain's API mappings.
pub(crate) async fn mappings(aws: &Aws, domain: &str) -> anyhow::Result<Vec<ApiMapping>> {
    let mut next: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = aws
            .apigw
            .get_api_mappings()
            .domain_name(domain)
            .set_next_token(next.take())
            .send()
            .await
            .aws(|| failed("list the API mappings of domain", domain))?;
        all.extend(page.items().iter().cloned());
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// Exactly one mapping: the domain's root to the API's `$default` stage.
async fn ensure_mapping(
    aws: &Aws,
    domain: &str,
    api_id: &str,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let current = mappings(aws, domain).await?;
    let is_root = |m: &ApiMapping| m.api_mapping_key().unwrap_or_default().is_empty();
    let mut updates = Vec::new();
    for mapping in current.iter().filter(|m| !is_root(m)) {
        let key = mapping.api_mapping_key().unwrap_or_default();
        updates.push(format!("-/{key}"));
        if !dry_run {
            delete_mapping(aws, domain, mapping).await?;
        }
    }
    match current.iter().find(|m| is_root(m)) {
        None => {
            if !dry_run {
                aws.apigw
                    .create_api_mapping()
                    .domain_name(domain)
                    .api_id(api_id)
                    .stage(STAGE)
                    .send()
                    .await
                    .aws(|| failed("map API to domain", domain))?;
            }
            if updates.is_empty() {
                return Ok(Change::Created);
            }
            updates.push("+/".to_owned());
        }
        Some(root) if root.api_id() != Some(api_id) || root.stage() != Some(STAGE) => {
            updates.push("target".to_owned());
            if !dry_run {
                let id = root
                    .api_mapping_id()
                    .context("an API mapping without an id")?;
                aws.apigw
                    .update_api_mapping()
                    .domain_name(domain)
                    .api_mapping_id(id)
                    .api_id(api_id)
                    .stage(STAGE)
                    .send()
                    .await
                    .aws(|| failed("update the API mapping of domain", domain))?;
            }
        }
        Some(_) => {}
    }
    Ok(Change::from_updates(updates))
}

async fn delete_mapping(aws: &Aws, domain: &str, mapping: &ApiMapping) -> anyhow::Result<()> {
    let id = mapping
        .api_mapping_id()
        .context("an API mapping without an id")?;
    aws.apigw
        .delete_api_mapping()
        .domain_name(domain)
        .api_mapping_id(id)
        .send()
        .await
        .aws(|| failed("delete an API mapping of domain", domain))?;
    Ok(())
}

/// Deletes a domain's mappings, then the domain.
pub(crate) async fn delete_one(aws: &Aws, domain: &str, dry_run: bool) -> anyhow::Result<Change> {
    if !dry_run {
        for mapping in mappings(aws, domain).await? {
            delete_mapping(aws, domain, &mapping).await?;
        }
        aws.apigw
            .delete_domain_name()
            .domain_name(domain)
            .send()
            .await
            .aws(|| failed("delete custom domain", domain))?;
    }
    Ok(Change::Deleted)
}
