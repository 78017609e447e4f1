//! The model bucket: default encryption, versioning, every public access
//! blocked, a policy that refuses requests without TLS 1.2+, lifecycle
//! rules, tags.
//!
//! The lifecycle rules bound what the store leaves behind: presigned
//! uploads that were never finalised (`<prefix>/staging/`) expire after a
//! day, and the old versions that versioning keeps of every overwritten
//! object (each upload rewrites a model's `index.json`) after
//! [`NONCURRENT_DAYS`] days, long enough to recover from a bad write.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::client::Waiters as _;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    BucketVersioningStatus, CreateBucketConfiguration, Delete, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
    ObjectIdentifier, ObjectOwnership, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tag, Tagging, VersioningConfiguration,
};

use crate::aws::{Aws, AwsResultExt as _, WaitResultExt as _, failed, found, has_code};
use crate::names::{Names, STORE_PREFIX};
use crate::policy;
use crate::report::Change;

/// Days after which a presigned upload that was never finalised expires.
pub const STAGING_DAYS: i32 = 1;
/// Days an object version is kept once a newer one replaced it.
pub const NONCURRENT_DAYS: i32 = 30;
/// The ID of the lifecycle rule for staging uploads.
pub const STAGING_RULE: &str = "airlock-expire-staging";
/// The ID of the lifecycle rule for noncurrent versions.
pub const NONCURRENT_RULE: &str = "airlock-expire-noncurrent";

/// Creates the bucket or brings its settings in line.
pub(crate) async fn ensure(aws: &Aws, names: &Names, dry_run: bool) -> anyhow::Result<Change> {
    let bucket = names.bucket.as_str();
    if !exists(aws, names).await? {
        if dry_run {
            return Ok(Change::Created);
        }
        create(aws, names).await?;
        configure(aws, names, &all_settings()).await?;
        return Ok(Change::Created);
    }

    let mut drift = Vec::new();

    let encryption = found(
        aws.s3.get_bucket_encryption().bucket(bucket).send().await,
        &["ServerSideEncryptionConfigurationNotFoundError"],
    )
    .aws(|| failed("get the default encryption of bucket", bucket))?;
    // SSE-S3 is what we set; SSE-KMS set by the owner is stronger and kept.
    let encrypted = encryption
        .as_ref()
        .and_then(|e| e.server_side_encryption_configuration())
        .is_some_and(|c| {
            c.rules().iter().any(|r| {
                r.apply_server_side_encryption_by_default()
                    .is_some_and(|d| {
                        matches!(
                            d.sse_algorithm().as_str(),
                            "AES256" | "aws:kms" | "aws:kms:dsse"
                        )
                    })
            })
        });
    if !encrypted {
        drift.push(Setting::Encryption);
    }

    let versioning = aws
        .s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .aws(|| failed("get the versioning of bucket", bucket))?;
    if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
        drift.push(Setting::Versioning);
    }

    let block = found(
        aws.s3.get_public_access_block().bucket(bucket).send().await,
        &["NoSuchPublicAccessBlockConfiguration"],
    )
    .aws(|| failed("get the public access block of bucket", bucket))?;
    let blocked = block
        .as_ref()
        .and_then(|b| b.public_access_block_configuration())
        .is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        });
    if !blocked {
        drift.push(Setting::PublicAccessBlock);
    }

    let current_policy = found(
        aws.s3.get_bucket_policy().bucket(bucket).send().await,
        &["NoSuchBucketPolicy"],
    )
    .aws(|| failed("get the policy of bucket", bucket))?;
    let policy_ok = match current_policy.as_ref().and_then(|p| p.policy()) {
        Some(text) => policy::parse_document(text)
            .is_ok_and(|doc| policy::same_document(&doc, &policy::bucket_policy(names))),
        None => false,
    };
    if !policy_ok {
        drift.push(Setting::Policy);
    }

    let lifecycle = found(
        aws.s3
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await,
        &["NoSuchLifecycleConfiguration"],
    )
    .aws(|| failed("get the lifecycle rules of bucket", bucket))?;
    let current: Vec<LifecycleRule> = lifecycle.map(|l| l.rules().to_vec()).unwrap_or_default();
    if !lifecycle_rules()
        .iter()
        .all(|rule| current.iter().any(|r| same_rule(r, rule)))
    {
        drift.push(Setting::Lifecycle(current));
    }

    let tags = current_tags(aws, bucket).await?;
    if names.tags().iter().any(|(k, v)| tags.get(k) != Some(v)) {
        drift.push(Setting::Tags(tags));
    }

    let what = drift.iter().map(|s| s.label().to_owned()).collect();
    if !dry_run {
        configure(aws, names, &drift).await?;
    }
    Ok(Change::from_updates(what))
}

/// Whether the bucket exists and is ours. A bucket of that name owned by
/// another account is an error, not "absent".
pub(crate) async fn exists(aws: &Aws, names: &Names) -> anyhow::Result<bool> {
    let bucket = names.bucket.as_str();
    let head = aws
        .s3
        .head_bucket()
        .bucket(bucket)
        .expected_bucket_owner(&names.account)
        .send()
        .await;
    match head {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
            anyhow::bail!(
                "bucket {bucket:?} exists but is not accessible to this account (owned by \
                 another account, or access denied): choose another --stack name"
            )
        }
        Err(e) => Err(e).aws(|| failed("look up bucket", bucket)),
    }
}

async fn create(aws: &Aws, names: &Names) -> anyhow::Result<()> {
    let bucket = names.bucket.as_str();
    let mut create = aws
        .s3
        .create_bucket()
        .bucket(bucket)
        .object_ownership(ObjectOwnership::BucketOwnerEnforced);
    // us-east-1 is the one region that takes no location constraint.
    if names.region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(names.region.as_str()))
                .build(),
        );
    }
    create
        .send()
        .await
        .aws(|| failed("create bucket", bucket))?;
    aws.s3
        .wait_until_bucket_exists()
        .bucket(bucket)
        .wait(Duration::from_secs(60))
        .await
        .waited(|| failed("wait for bucket", bucket))?;
    Ok(())
}

enum Setting {
    Encryption,
    Versioning,
    PublicAccessBlock,
    Policy,
    /// With the rules it has now (kept, except ours, which are replaced).
    Lifecycle(Vec<LifecycleRule>),
    /// With the tags it has now (kept: ours are added, none removed).
    Tags(BTreeMap<String, String>),
}

impl Setting {
    fn label(&self) -> &'static str {
        match self {
            Self::Encryption => "encryption",
            Self::Versioning => "versioning",
            Self::PublicAccessBlock => "public access block",
            Self::Policy => "TLS-only policy",
            Self::Lifecycle(_) => "lifecycle rules",
            Self::Tags(_) => "tags",
        }
    }
}

fn all_settings() -> Vec<Setting> {
    vec![
        Setting::PublicAccessBlock,
        Setting::Encryption,
        Setting::Versioning,
        Setting::Policy,
        Setting::Lifecycle(Vec::new()),
        Setting::Tags(BTreeMap::new()),
    ]
}

/// Whether two lifecycle rules say the same, on the fields ours set (S3
/// may echo a rule back with other fields defaulted).
pub fn same_rule(a: &LifecycleRule, b: &LifecycleRule) -> bool {
    let prefix = |r: &LifecycleRule| r.filter().and_then(|f| f.prefix()).unwrap_or("").to_owned();
    a.id() == b.id()
        && a.status() == b.status()
        && prefix(a) == prefix(b)
        && a.expiration().and_then(|e| e.days()) == b.expiration().and_then(|e| e.days())
        && a.noncurrent_version_expiration()
            .and_then(|e| e.noncurrent_days())
            == b.noncurrent_version_expiration()
                .and_then(|e| e.noncurrent_days())
        && a.abort_incomplete_multipart_upload()
            .and_then(|e| e.days_after_initiation())
            == b.abort_incomplete_multipart_upload()
                .and_then(|e| e.days_after_initiation())
}

/// Airlock's lifecycle rules (see the module documentation).
pub fn lifecycle_rules() -> Vec<LifecycleRule> {
    let staging = LifecycleRule::builder()
        .id(STAGING_RULE)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(format!("{STORE_PREFIX}/staging/"))
                .build(),
        )
        .expiration(LifecycleExpiration::builder().days(STAGING_DAYS).build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(STAGING_DAYS)
                .build(),
        )
        .build()
        .expect("the rule has its status");
    let noncurrent = LifecycleRule::builder()
        .id(NONCURRENT_RULE)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .noncurrent_version_expiration(
            NoncurrentVersionExpiration::builder()
                .noncurrent_days(NONCURRENT_DAYS)
                .build(),
        )
        .build()
        .expect("the rule has its status");
    vec![staging, noncurrent]
}

async fn configure(aws: &Aws, names: &Names, settings: &[Setting]) -> anyhow::Result<()> {
    let bucket = names.bucket.as_str();
    for setting in settings {
        match setting {
            Setting::Encryption => {
                let rule = ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(ServerSideEncryption::Aes256)
                            .build()?,
                    )
                    .build();
                aws.s3
                    .put_bucket_encryption()
                    .bucket(bucket)
                    .server_side_encryption_configuration(
                        ServerSideEncryptionConfiguration::builder()
                            .rules(rule)
                            .build()?,
                    )
                    .send()
                    .await
                    .aws(|| failed("set the default encryption of bucket", bucket))?;
            }
            Setting::Versioning => {
                aws.s3
                    .put_bucket_versioning()
                    .bucket(bucket)
                    .versioning_configuration(
                        VersioningConfiguration::builder()
                            .status(BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send()
                    .await
                    .aws(|| failed("enable versioning on bucket", bucket))?;
            }
            Setting::PublicAccessBlock => {
                aws.s3
                    .put_public_access_block()
                    .bucket(bucket)
                    .public_access_block_configuration(
                        PublicAccessBlockConfiguration::builder()
                            .block_public_acls(true)
                            .ignore_public_acls(true)
                            .block_public_policy(true)
                            .restrict_public_buckets(true)
                            .build(),
                    )
                    .send()
                    .await
                    .aws(|| failed("block public access to bucket", bucket))?;
            }
            Setting::Policy => {
                aws.s3
                    .put_bucket_policy()
                    .bucket(bucket)
                    .policy(policy::bucket_policy(names).to_string())
                    .send()
                    .await
                    .aws(|| failed("put the policy of bucket", bucket))?;
            }
            Setting::Lifecycle(existing) => {
                let ours = lifecycle_rules();
                let ids: Vec<_> = ours.iter().map(|r| r.id()).collect();
                let mut rules: Vec<LifecycleRule> = existing
                    .iter()
                    .filter(|r| !ids.contains(&r.id()))
                    .cloned()
                    .collect();
                rules.extend(ours);
                aws.s3
                    .put_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .lifecycle_configuration(
                        BucketLifecycleConfiguration::builder()
                            .set_rules(Some(rules))
                            .build()?,
                    )
                    .send()
                    .await
                    .aws(|| failed("set the lifecycle rules of bucket", bucket))?;
            }
            Setting::Tags(existing) => {
                let mut tags = existing.clone();
                tags.extend(names.tags());
                let mut tagging = Tagging::builder();
                for (key, value) in tags {
                    tagging = tagging.tag_set(Tag::builder().key(key).value(value).build()?);
                }
                aws.s3
                    .put_bucket_tagging()
                    .bucket(bucket)
                    .tagging(tagging.build()?)
                    .send()
                    .await
                    .aws(|| failed("tag bucket", bucket))?;
            }
        }
    }
    Ok(())
}

async fn current_tags(aws: &Aws, bucket: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let tagging = found(
        aws.s3.get_bucket_tagging().bucket(bucket).send().await,
        &["NoSuchTagSet"],
    )
    .aws(|| failed("get the tags of bucket", bucket))?;
    Ok(tagging
        .map(|t| {
            t.tag_set()
                .iter()
                .map(|tag| (tag.key().to_owned(), tag.value().to_owned()))
                .collect()
        })
        .unwrap_or_default())
}

/// Deletes every object version and delete marker, then the bucket.
pub(crate) async fn delete(aws: &Aws, names: &Names, dry_run: bool) -> anyhow::Result<Change> {
    let bucket = names.bucket.as_str();
    if !exists(aws, names).await? {
        return Ok(Change::Absent);
    }
    if dry_run {
        return Ok(Change::Deleted);
    }
    // The policy goes first: its statements deny by condition, and a policy
    // edited to lock callers out, or an evaluator that cannot judge the TLS
    // condition (the AWS emulator the tests use), would stop the emptying.
    let unpolicied = aws.s3.delete_bucket_policy().bucket(bucket).send().await;
    if let Err(e) = unpolicied
        && !has_code(&e, &["NoSuchBucketPolicy"])
    {
        return Err(e).aws(|| failed("delete the policy of bucket", bucket));
    }
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let page = aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .aws(|| failed("list the objects of bucket", bucket))?;
        let mut doomed = Vec::new();
        let versions = page
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                page.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            );
        for (key, version) in versions {
            let key = key.context("S3 listed an object version without a key")?;
            doomed.push(
                ObjectIdentifier::builder()
                    .key(key)
                    .set_version_id(version.map(str::to_owned))
                    .build()?,
            );
        }
        // ListObjectVersions pages hold at most 1000 entries, DeleteObjects takes 1000.
        if !doomed.is_empty() {
            let deleted = aws
                .s3
                .delete_objects()
                .bucket(bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(doomed))
                        .quiet(true)
                        .build()?,
                )
                .send()
                .await
                .aws(|| failed("delete the objects of bucket", bucket))?;
            if let Some(error) = deleted.errors().first() {
                anyhow::bail!(
                    "failed to delete {:?} from bucket {bucket:?}: {} {}",
                    error.key().unwrap_or_default(),
                    error.code().unwrap_or_default(),
                    error.message().unwrap_or_default()
                );
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        version_marker = page.next_version_id_marker().map(str::to_owned);
    }
    match aws.s3.delete_bucket().bucket(bucket).send().await {
        Err(e) if has_code(&e, &["NoSuchBucket"]) => Ok(Change::Absent),
        other => {
            other.aws(|| failed("delete bucket", bucket))?;
            Ok(Change::Deleted)
        }
    }
}

/// One model as the store describes it: `<prefix>/models/<name>/index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model name.
    pub name: String,
    /// Its active version, if any.
    pub active: Option<String>,
    /// How many versions are stored.
    pub versions: usize,
    /// Whether it is served (`unload` clears it).
    pub loaded: bool,
    /// Why its index could not be read, if it could not.
    pub problem: Option<String>,
}

/// The models in the store, read from their index files.
pub(crate) async fn models(aws: &Aws, names: &Names) -> anyhow::Result<Vec<ModelStatus>> {
    let bucket = names.bucket.as_str();
    let prefix = format!("{STORE_PREFIX}/models/");
    let mut keys = Vec::new();
    let mut pages = aws
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.aws(|| failed("list the models in bucket", bucket))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| k.ends_with("/index.json"))
                .map(str::to_owned),
        );
    }
    let mut models = Vec::new();
    for key in keys {
        let name = key
            .trim_start_matches(&prefix)
            .trim_end_matches("/index.json")
            .to_owned();
        // One unreadable index must not hide the others.
        models.push(match read_index(aws, bucket, &key).await {
            Ok(index) => ModelStatus {
                name,
                active: index["active"].as_str().map(str::to_owned),
                versions: index["versions"].as_array().map_or(0, Vec::len),
                loaded: index["loaded"].as_bool().unwrap_or(true),
                problem: None,
            },
            Err(e) => ModelStatus {
                name,
                active: None,
                versions: 0,
                loaded: false,
                problem: Some(format!("{e:#}")),
            },
        });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// A model index as JSON (its format belongs to the host; status reads
/// only `active`, `versions` and `loaded`).
async fn read_index(aws: &Aws, bucket: &str, key: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("s3://{bucket}/{key}");
    let object = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .aws(|| failed("read", &url))?;
    let bytes = object
        .body
        .collect()
        .await
        .with_context(|| failed("read", &url))?
        .into_bytes();
    serde_json::from_slice(&bytes).with_context(|| format!("{url} is not a model index"))
}
