//! Shared helpers: code packages, deploy options, reads of the deployed state.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use airlock_infra::{Aws, DeployOptions};
use zip::write::SimpleFileOptions;

/// A code package like the one `cargo lambda build` makes: a zip holding
/// an executable `bootstrap` (here a script whose text tells packages apart).
pub fn write_zip(dir: &Path, file: &str, bootstrap: &str) -> PathBuf {
    let path = dir.join(file);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    zip.start_file("bootstrap", options).unwrap();
    zip.write_all(bootstrap.as_bytes()).unwrap();
    zip.finish().unwrap();
    path
}

/// A temp dir with one package in it.
pub fn package(bootstrap: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let zip = write_zip(dir.path(), "bootstrap.zip", bootstrap);
    (dir, zip)
}

/// Default options with this zip.
pub fn options(zip: &Path) -> DeployOptions {
    DeployOptions {
        zip: zip.to_owned(),
        ..DeployOptions::default()
    }
}

/// A description of everything the default stack has in the emulator, with
/// revision ids and modification times, so that two snapshots are equal
/// only if nothing was changed in between.
pub async fn snapshot(aws: &Aws, api_id: &str) -> String {
    let mut out = String::new();
    let role = aws
        .iam
        .get_role()
        .role_name("airlock-lambda")
        .send()
        .await
        .unwrap();
    writeln!(out, "role {:?}", role.role).unwrap();
    let inline = aws
        .iam
        .get_role_policy()
        .role_name("airlock-lambda")
        .policy_name("airlock-model-bucket")
        .send()
        .await
        .unwrap();
    writeln!(out, "inline {}", inline.policy_document()).unwrap();
    let attached = aws
        .iam
        .list_attached_role_policies()
        .role_name("airlock-lambda")
        .send()
        .await
        .unwrap();
    writeln!(out, "attached {:?}", attached.attached_policies()).unwrap();

    let bucket = "airlock-models-123456789012-us-east-1";
    let policy = aws
        .s3
        .get_bucket_policy()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    writeln!(out, "bucket policy {:?}", policy.policy()).unwrap();
    let encryption = aws
        .s3
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    writeln!(
        out,
        "encryption {:?}",
        encryption.server_side_encryption_configuration()
    )
    .unwrap();
    let versioning = aws
        .s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    writeln!(out, "versioning {:?}", versioning.status()).unwrap();
    let block = aws
        .s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    writeln!(out, "block {:?}", block.public_access_block_configuration()).unwrap();
    let tags = aws
        .s3
        .get_bucket_tagging()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    writeln!(out, "bucket tags {:?}", tags.tag_set()).unwrap();

    let function = aws
        .lambda
        .get_function()
        .function_name("airlock")
        .send()
        .await
        .unwrap();
    let cfg = function.configuration().unwrap();
    writeln!(
        out,
        "function {:?} {:?} {:?} {:?}",
        cfg.revision_id(),
        cfg.last_modified(),
        cfg.code_sha256(),
        sorted(function.tags())
    )
    .unwrap();
    let versions = aws
        .lambda
        .list_versions_by_function()
        .function_name("airlock")
        .send()
        .await
        .unwrap();
    let versions: Vec<_> = versions.versions().iter().map(|v| v.version()).collect();
    writeln!(out, "versions {versions:?}").unwrap();
    let alias = aws
        .lambda
        .get_alias()
        .function_name("airlock")
        .name("live")
        .send()
        .await
        .unwrap();
    writeln!(
        out,
        "alias {:?} {:?}",
        alias.function_version(),
        alias.revision_id()
    )
    .unwrap();
    let policy = aws
        .lambda
        .get_policy()
        .function_name("airlock")
        .qualifier("live")
        .send()
        .await
        .unwrap();
    writeln!(out, "permission {:?}", policy.policy()).unwrap();

    let apis = aws.apigw.get_apis().send().await.unwrap();
    for api in apis.items() {
        let mut api = api.clone();
        let tags = sorted(api.tags.take().as_ref());
        writeln!(out, "api {api:?} {tags:?}").unwrap();
    }
    let integrations = aws
        .apigw
        .get_integrations()
        .api_id(api_id)
        .send()
        .await
        .unwrap();
    writeln!(out, "integrations {:?}", integrations.items()).unwrap();
    let mut routes: Vec<_> = aws
        .apigw
        .get_routes()
        .api_id(api_id)
        .send()
        .await
        .unwrap()
        .items()
        .iter()
        .map(|r| format!("{:?}", r))
        .collect();
    routes.sort();
    writeln!(out, "routes {routes:?}").unwrap();
    let stage = aws
        .apigw
        .get_stage()
        .api_id(api_id)
        .stage_name("$default")
        .send()
        .await
        .unwrap();
    writeln!(
        out,
        "stage {:?} {:?} {:?} {:?} {:?}",
        stage.last_updated_date(),
        stage.auto_deploy(),
        stage.default_route_settings(),
        stage.access_log_settings(),
        sorted(stage.tags())
    )
    .unwrap();
    let domains = aws.apigw.get_domain_names().send().await.unwrap();
    for domain in domains.items() {
        let mut domain = domain.clone();
        let tags = sorted(domain.tags.take().as_ref());
        writeln!(out, "domain {domain:?} {tags:?}").unwrap();
    }
    let groups = aws
        .logs
        .describe_log_groups()
        .log_group_name_prefix("/aws/")
        .send()
        .await
        .unwrap();
    writeln!(out, "log groups {:?}", groups.log_groups()).unwrap();
    out
}

fn sorted(tags: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    tags.map(|t| t.clone().into_iter().collect())
        .unwrap_or_default()
}

/// Fails with the lines that differ between two snapshots.
pub fn assert_same(before: &str, after: &str, what: &str) {
    let changed: Vec<String> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("before: {a}\nafter:  {b}"))
        .collect();
    assert!(
        changed.is_empty() && before.lines().count() == after.lines().count(),
        "{what} changed the stack:\n{}",
        changed.join("\n")
    );
}
