//! The two log groups: the function's (`/aws/lambda/<stack>`, which Lambda
//! would otherwise create on first use with no retention) and the API's
//! access log. Created here so that they have a retention, tags, and are
//! removed by `destroy`.

use std::collections::HashMap;

use crate::aws::{Aws, AwsResultExt as _, failed};
use crate::names::Names;
use crate::report::Change;

/// The retention periods CloudWatch Logs accepts, in days.
pub const RETENTION_DAYS: [i32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// A log group as found.
pub(crate) struct Found {
    pub(crate) retention_days: Option<i32>,
}

/// Looks `group` up by exact name.
pub(crate) async fn find(aws: &Aws, group: &str) -> anyhow::Result<Option<Found>> {
    let groups = aws
        .logs
        .describe_log_groups()
        .log_group_name_prefix(group)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .aws(|| failed("look up log group", group))?;
    Ok(groups
        .into_iter()
        .find(|g| g.log_group_name() == Some(group))
        .map(|g| Found {
            retention_days: g.retention_in_days(),
        }))
}

/// Creates the group or sets its retention and tags.
pub(crate) async fn ensure(
    aws: &Aws,
    names: &Names,
    group: &str,
    retention_days: i32,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let Some(found) = find(aws, group).await? else {
        if !dry_run {
            let mut create = aws.logs.create_log_group().log_group_name(group);
            for (key, value) in names.tags() {
                create = create.tags(key, value);
            }
            create
                .send()
                .await
                .aws(|| failed("create log group", group))?;
            set_retention(aws, group, retention_days).await?;
        }
        return Ok(Change::Created);
    };
    let mut updates = Vec::new();
    if found.retention_days != Some(retention_days) {
        updates.push(format!("retention {retention_days} days"));
        if !dry_run {
            set_retention(aws, group, retention_days).await?;
        }
    }
    let arn = names.log_group_arn(group);
    let tags: HashMap<String, String> = aws
        .logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .aws(|| failed("list the tags of log group", group))?
        .tags
        .unwrap_or_default();
    let missing: Vec<_> = names
        .tags()
        .into_iter()
        .filter(|(k, v)| tags.get(k) != Some(v))
        .collect();
    if !missing.is_empty() {
        updates.push("tags".to_owned());
        if !dry_run {
            let mut tag = aws.logs.tag_resource().resource_arn(&arn);
            for (key, value) in missing {
                tag = tag.tags(key, value);
            }
            tag.send().await.aws(|| failed("tag log group", group))?;
        }
    }
    Ok(Change::from_updates(updates))
}

async fn set_retention(aws: &Aws, group: &str, days: i32) -> anyhow::Result<()> {
    aws.logs
        .put_retention_policy()
        .log_group_name(group)
        .retention_in_days(days)
        .send()
        .await
        .aws(|| failed("set the retention of log group", group))?;
    Ok(())
}

/// Deletes the group (and the logs in it).
pub(crate) async fn delete(aws: &Aws, group: &str, dry_run: bool) -> anyhow::Result<Change> {
    if find(aws, group).await?.is_none() {
        return Ok(Change::Absent);
    }
    if !dry_run {
        aws.logs
            .delete_log_group()
            .log_group_name(group)
            .send()
            .await
            .aws(|| failed("delete log group", group))?;
    }
    Ok(Change::Deleted)
}
