//! The function's execution role: trusted by Lambda only, allowed to write
//! its logs (AWSLambdaBasicExecutionRole) and to use its own model store.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_iam::client::Waiters as _;
use aws_sdk_iam::types::Tag;

use crate::aws::{Aws, AwsResultExt as _, WaitResultExt as _, failed, found};
use crate::names::Names;
use crate::policy;
use crate::report::Change;

const NOT_FOUND: &[&str] = &["NoSuchEntity"];

/// Creates the role or brings it in line; returns its ARN.
pub(crate) async fn ensure(
    aws: &Aws,
    names: &Names,
    dry_run: bool,
) -> anyhow::Result<(Change, String)> {
    let role = names.role.as_str();
    let current = found(aws.iam.get_role().role_name(role).send().await, NOT_FOUND)
        .aws(|| failed("get role", role))?
        .and_then(|out| out.role);

    let Some(current) = current else {
        if dry_run {
            return Ok((Change::Created, names.role_arn()));
        }
        let mut create = aws
            .iam
            .create_role()
            .role_name(role)
            .description(format!(
                "Execution role of the {} Airlock function",
                names.stack
            ))
            .assume_role_policy_document(policy::trust_policy().to_string());
        for (key, value) in names.tags() {
            create = create.tags(Tag::builder().key(key).value(value).build()?);
        }
        let created = create.send().await.aws(|| failed("create role", role))?;
        aws.iam
            .wait_until_role_exists()
            .role_name(role)
            .wait(Duration::from_secs(60))
            .await
            .waited(|| failed("wait for role", role))?;
        attach_basic_execution(aws, names).await?;
        put_inline_policy(aws, names).await?;
        let arn = created
            .role
            .map(|r| r.arn)
            .unwrap_or_else(|| names.role_arn());
        return Ok((Change::Created, arn));
    };

    let mut updates = Vec::new();

    let trust = current
        .assume_role_policy_document()
        .map(policy::parse_document)
        .transpose()
        .ok()
        .flatten();
    if !trust.is_some_and(|doc| policy::same_document(&doc, &policy::trust_policy())) {
        updates.push("trust policy".to_owned());
        if !dry_run {
            aws.iam
                .update_assume_role_policy()
                .role_name(role)
                .policy_document(policy::trust_policy().to_string())
                .send()
                .await
                .aws(|| failed("update the trust policy of role", role))?;
        }
    }

    let attached = aws
        .iam
        .list_attached_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .aws(|| failed("list the managed policies of role", role))?;
    let basic = names.basic_execution_policy_arn();
    if !attached
        .iter()
        .any(|p| p.policy_arn() == Some(basic.as_str()))
    {
        updates.push("AWSLambdaBasicExecutionRole".to_owned());
        if !dry_run {
            attach_basic_execution(aws, names).await?;
        }
    }

    let inline = found(
        aws.iam
            .get_role_policy()
            .role_name(role)
            .policy_name(&names.role_policy)
            .send()
            .await,
        NOT_FOUND,
    )
    .aws(|| failed("get the inline policy of role", role))?;
    let inline_ok = inline
        .and_then(|p| policy::parse_document(p.policy_document()).ok())
        .is_some_and(|doc| policy::same_document(&doc, &policy::role_policy(names)));
    if !inline_ok {
        updates.push("model bucket policy".to_owned());
        if !dry_run {
            put_inline_policy(aws, names).await?;
        }
    }

    let tags: BTreeMap<String, String> = aws
        .iam
        .list_role_tags()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .aws(|| failed("list the tags of role", role))?
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect();
    let missing: Vec<_> = names
        .tags()
        .into_iter()
        .filter(|(k, v)| tags.get(k) != Some(v))
        .collect();
    if !missing.is_empty() {
        updates.push("tags".to_owned());
        if !dry_run {
            let mut tag = aws.iam.tag_role().role_name(role);
            for (key, value) in missing {
                tag = tag.tags(Tag::builder().key(key).value(value).build()?);
            }
            tag.send().await.aws(|| failed("tag role", role))?;
        }
    }

    Ok((Change::from_updates(updates), current.arn))
}

async fn attach_basic_execution(aws: &Aws, names: &Names) -> anyhow::Result<()> {
    aws.iam
        .attach_role_policy()
        .role_name(&names.role)
        .policy_arn(names.basic_execution_policy_arn())
        .send()
        .await
        .aws(|| failed("attach AWSLambdaBasicExecutionRole to role", &names.role))?;
    Ok(())
}

async fn put_inline_policy(aws: &Aws, names: &Names) -> anyhow::Result<()> {
    aws.iam
        .put_role_policy()
        .role_name(&names.role)
        .policy_name(&names.role_policy)
        .policy_document(policy::role_policy(names).to_string())
        .send()
        .await
        .aws(|| failed("put the inline policy of role", &names.role))?;
    Ok(())
}

/// Whether the role exists (for status).
pub(crate) async fn arn(aws: &Aws, names: &Names) -> anyhow::Result<Option<String>> {
    let role = names.role.as_str();
    Ok(
        found(aws.iam.get_role().role_name(role).send().await, NOT_FOUND)
            .aws(|| failed("get role", role))?
            .and_then(|out| out.role)
            .map(|r| r.arn),
    )
}

/// Detaches the managed policies, deletes the inline ones, then the role.
pub(crate) async fn delete(aws: &Aws, names: &Names, dry_run: bool) -> anyhow::Result<Change> {
    let role = names.role.as_str();
    if arn(aws, names).await?.is_none() {
        return Ok(Change::Absent);
    }
    if dry_run {
        return Ok(Change::Deleted);
    }
    let attached = aws
        .iam
        .list_attached_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .aws(|| failed("list the managed policies of role", role))?;
    for policy in attached {
        let policy_arn = policy.policy_arn().unwrap_or_default();
        aws.iam
            .detach_role_policy()
            .role_name(role)
            .policy_arn(policy_arn)
            .send()
            .await
            .aws(|| failed(&format!("detach {policy_arn} from role"), role))?;
    }
    let inline = aws
        .iam
        .list_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .aws(|| failed("list the inline policies of role", role))?;
    for policy_name in inline {
        aws.iam
            .delete_role_policy()
            .role_name(role)
            .policy_name(&policy_name)
            .send()
            .await
            .aws(|| failed(&format!("delete inline policy {policy_name} of role"), role))?;
    }
    aws.iam
        .delete_role()
        .role_name(role)
        .send()
        .await
        .aws(|| failed("delete role", role))?;
    Ok(Change::Deleted)
}
