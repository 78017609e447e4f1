//! `deployer-policy.json` lists exactly the IAM actions `deploy`, `status`
//! and `destroy` need: no fewer (the tool would fail half-way under it), no
//! more (least privilege).
//!
//! Every SDK call in `infra/src` goes through a field of `airlock_infra::Aws`
//! (`aws.iam.create_role()`, `aws.s3.put_bucket_policy()`, …). The scanner
//! below finds each `.<client>.<operation>(` in the source (across line
//! breaks, outside comments and string literals) and maps the operation to
//! the IAM actions it needs:
//!
//! - IAM, Lambda, CloudWatch Logs: the action is the operation's name
//!   (`create_role` → `iam:CreateRole`), plus the documented extra actions
//!   some operations need (`iam:PassRole` to give Lambda a role, the tag
//!   action when tags are set at creation);
//! - S3: action names differ from operation names (`head_bucket` →
//!   `s3:ListBucket`, `get_bucket_encryption` → `s3:GetEncryptionConfiguration`);
//!   the table says which;
//! - API Gateway v2 has no per-operation actions: IAM authorizes it by
//!   HTTP verb on the resource path (`apigateway:GET` on `/apis/*`, …), so
//!   `get_*` → `apigateway:GET`, `create_*` → `POST`, `update_*` → `PATCH`,
//!   `delete_*` → `DELETE`, `tag_resource` → `POST` (on `/tags/*`). Setting
//!   access logs on a stage also makes API Gateway act with the caller's
//!   rights on CloudWatch Logs log deliveries (the `logs:*LogDelivery`,
//!   `logs:PutResourcePolicy`, `logs:DescribeResourcePolicies` actions);
//! - SDK waiters poll a read operation (`wait_until_role_exists` → `iam:GetRole`);
//! - `sts:GetCallerIdentity` needs no permission.
//!
//! An operation the table does not know fails the test, so that a new call
//! cannot slip past it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CLIENTS: [&str; 6] = ["iam", "s3", "lambda", "apigw", "logs", "sts"];

/// (client field, operation) pairs called in `source`.
fn scan(source: &str) -> BTreeSet<(String, String)> {
    let tokens = tokens(source);
    let mut calls = BTreeSet::new();
    for window in tokens.windows(5) {
        if window[0] == "."
            && CLIENTS.contains(&window[1].as_str())
            && window[2] == "."
            && window[3]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && window[4] == "("
        {
            calls.insert((window[1].clone(), window[3].clone()));
        }
    }
    calls
}

/// Identifiers and punctuation, with comments, string and char literals dropped.
fn tokens(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !prev_is_ident(&chars, i)
        {
            // Raw string: r"..." or r#"..."#.
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                tokens.push("r".to_owned());
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if chars.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c.is_whitespace() {
            i += 1;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Operations of IAM, Lambda and CloudWatch Logs whose action is their name.
const NAMED_OPERATION_PREFIXES: [&str; 12] = [
    "get_", "list_", "create_", "update_", "delete_", "put_", "tag_", "attach_", "detach_", "add_",
    "remove_", "publish_",
];

/// Log-delivery actions API Gateway exercises with the caller's rights
/// when a stage gets access-log settings.
const ACCESS_LOG_DELIVERY: [&str; 7] = [
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
];

/// The IAM actions one call needs.
fn actions(client: &str, operation: &str) -> Result<Vec<String>, String> {
    let unknown = || {
        Err(format!(
            "{client}.{operation}(): unknown operation; add its IAM actions to the table in \
             infra/tests/all/least_privilege.rs"
        ))
    };
    let list = |actions: &[&str]| Ok(actions.iter().map(|a| (*a).to_owned()).collect());
    match client {
        "sts" => match operation {
            "get_caller_identity" => list(&[]),
            _ => unknown(),
        },
        "iam" | "lambda" | "logs" => {
            let service = client;
            let extra: &[&str] = match (client, operation) {
                ("iam", "wait_until_role_exists") => return list(&["iam:GetRole"]),
                ("lambda", "wait_until_function_active_v2" | "wait_until_function_updated_v2") => {
                    return list(&["lambda:GetFunction"]);
                }
                ("lambda", "wait_until_published_version_active") => {
                    return list(&["lambda:GetFunctionConfiguration"]);
                }
                // Tags given at creation need the tagging action too.
                ("iam", "create_role") => &["iam:TagRole"],
                ("logs", "create_log_group") => &["logs:TagResource"],
                ("lambda", "create_function") => &["iam:PassRole", "lambda:TagResource"],
                ("lambda", "update_function_configuration") => &["iam:PassRole"],
                _ => &[],
            };
            if !NAMED_OPERATION_PREFIXES
                .iter()
                .any(|p| operation.starts_with(p))
                && operation != "describe_log_groups"
            {
                return unknown();
            }
            let mut all = vec![format!("{service}:{}", pascal(operation))];
            all.extend(extra.iter().map(|a| (*a).to_owned()));
            Ok(all)
        }
        "s3" => match operation {
            "head_bucket" | "wait_until_bucket_exists" | "list_objects_v2" => {
                list(&["s3:ListBucket"])
            }
            "create_bucket" => list(&["s3:CreateBucket", "s3:PutBucketOwnershipControls"]),
            "delete_bucket" => list(&["s3:DeleteBucket"]),
            "get_bucket_encryption" => list(&["s3:GetEncryptionConfiguration"]),
            "put_bucket_encryption" => list(&["s3:PutEncryptionConfiguration"]),
            "get_bucket_versioning" => list(&["s3:GetBucketVersioning"]),
            "put_bucket_versioning" => list(&["s3:PutBucketVersioning"]),
            "get_public_access_block" => list(&["s3:GetBucketPublicAccessBlock"]),
            "put_public_access_block" => list(&["s3:PutBucketPublicAccessBlock"]),
            "get_bucket_policy" => list(&["s3:GetBucketPolicy"]),
            "put_bucket_policy" => list(&["s3:PutBucketPolicy"]),
            "delete_bucket_policy" => list(&["s3:DeleteBucketPolicy"]),
            "get_bucket_tagging" => list(&["s3:GetBucketTagging"]),
            "get_bucket_lifecycle_configuration" => list(&["s3:GetLifecycleConfiguration"]),
            "put_bucket_lifecycle_configuration" => list(&["s3:PutLifecycleConfiguration"]),
            "put_bucket_tagging" => list(&["s3:PutBucketTagging"]),
            "list_object_versions" => list(&["s3:ListBucketVersions"]),
            "delete_objects" => list(&["s3:DeleteObject", "s3:DeleteObjectVersion"]),
            "get_object" => list(&["s3:GetObject"]),
            _ => unknown(),
        },
        "apigw" => {
            let verb = if operation == "tag_resource" {
                "POST"
            } else if operation == "untag_resource" {
                "DELETE"
            } else if operation.starts_with("get_") {
                "GET"
            } else if operation.starts_with("create_") {
                "POST"
            } else if operation.starts_with("update_") {
                "PATCH"
            } else if operation.starts_with("delete_") {
                "DELETE"
            } else {
                return unknown();
            };
            let mut all = vec![format!("apigateway:{verb}")];
            if matches!(operation, "create_stage" | "update_stage") {
                all.extend(ACCESS_LOG_DELIVERY.iter().map(|a| (*a).to_owned()));
            }
            Ok(all)
        }
        _ => unknown(),
    }
}

fn source_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(source_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every action the calls need, with one call site that needs it.
fn needed(
    calls: &BTreeMap<(String, String), String>,
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut needed = BTreeMap::new();
    let mut errors = Vec::new();
    for ((client, operation), site) in calls {
        match actions(client, operation) {
            Ok(actions) => {
                for action in actions {
                    needed
                        .entry(action)
                        .or_insert_with(|| format!("{client}.{operation}() in {site}"));
                }
            }
            Err(e) => errors.push(format!("{e} (in {site})")),
        }
    }
    if errors.is_empty() {
        Ok(needed)
    } else {
        Err(errors)
    }
}

fn listed_actions() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deployer-policy.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(doc["Version"], "2012-10-17");
    let mut listed = BTreeSet::new();
    for statement in doc["Statement"].as_array().expect("a Statement list") {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        let actions = match &statement["Action"] {
            serde_json::Value::String(one) => vec![one.clone()],
            many => many
                .as_array()
                .expect("Action is a string or a list")
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
        };
        assert!(
            !actions.is_empty(),
            "a statement without actions: {statement}"
        );
        for action in actions {
            assert!(
                !action.contains('*'),
                "wildcard action {action:?}: list the actions"
            );
            assert!(listed.insert(action.clone()), "{action} listed twice");
        }
        assert!(statement["Resource"].is_string() || statement["Resource"].is_array());
    }
    listed
}

/// Compares what the code needs with what the policy lists.
fn check(needed: &BTreeMap<String, String>, listed: &BTreeSet<String>) -> Result<(), String> {
    let missing: Vec<_> = needed
        .iter()
        .filter(|(action, _)| !listed.contains(*action))
        .map(|(action, site)| format!("{action} (needed by {site})"))
        .collect();
    let unused: Vec<_> = listed.iter().filter(|a| !needed.contains_key(*a)).collect();
    if missing.is_empty() && unused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "infra/deployer-policy.json does not match the code.\n  missing: {missing:#?}\n  listed but never needed: {unused:#?}"
    ))
}

fn calls_in_src() -> BTreeMap<(String, String), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut calls = BTreeMap::new();
    for file in source_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&src).unwrap().display().to_string();
        for call in scan(&text) {
            calls.entry(call).or_insert_with(|| name.clone());
        }
    }
    calls
}

#[test]
fn the_deployer_policy_lists_exactly_the_actions_the_code_calls() {
    let calls = calls_in_src();
    // The scanner must see the code (a rename of the client fields would
    // otherwise make this test vacuous).
    for client in CLIENTS {
        assert!(
            calls.keys().any(|(c, _)| c == client),
            "no call on the {client} client found"
        );
    }
    assert!(
        calls.len() > 60,
        "only {} calls found: {calls:?}",
        calls.len()
    );
    let needed = needed(&calls).unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
    if let Err(e) = check(&needed, &listed_actions()) {
        panic!("{e}");
    }
}

#[test]
fn the_scanner_sees_calls_across_lines_and_ignores_comments_and_strings() {
    let source = r##"
        let role = aws
            .iam
            .create_role() // aws.iam.delete_user() in a comment
            .send();
        let s = "aws.iam.delete_user()";
        let r = r#"aws.lambda.delete_alias()"#;
        let c = '.';
        /* aws.s3.delete_bucket() */
        aws.apigw.get_apis().send();
        self.aws.logs . create_log_group ( );
    "##;
    let calls: Vec<_> = scan(source).into_iter().collect();
    assert_eq!(
        calls,
        [
            ("apigw".to_owned(), "get_apis".to_owned()),
            ("iam".to_owned(), "create_role".to_owned()),
            ("logs".to_owned(), "create_log_group".to_owned()),
        ]
    );
}

#[test]
fn a_call_the_policy_does_not_list_fails_the_check() {
    let mut calls = calls_in_src();
    calls.insert(("iam".into(), "delete_user".into()), "a new file".into());
    let err = check(&needed(&calls).unwrap(), &listed_actions()).unwrap_err();
    assert!(
        err.contains("iam:DeleteUser (needed by iam.delete_user() in a new file)"),
        "{err}"
    );

    // An operation without a known mapping fails too, rather than pass unseen.
    calls.insert(("s3".into(), "put_bucket_acl".into()), "a new file".into());
    let errors = needed(&calls).unwrap_err();
    assert!(
        errors[0].contains("s3.put_bucket_acl(): unknown operation"),
        "{errors:?}"
    );

    // And an action the code no longer needs is reported as well.
    let mut fewer = calls_in_src();
    fewer.retain(|(client, op), _| !(client == "iam" && op == "update_assume_role_policy"));
    let err = check(&needed(&fewer).unwrap(), &listed_actions()).unwrap_err();
    assert!(err.contains("\"iam:UpdateAssumeRolePolicy\""), "{err}");
}
