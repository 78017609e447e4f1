//! The IAM policy documents the stack puts in place, and how two documents
//! are compared (AWS returns them URL-encoded, reformatted, sometimes with a
//! single-element list turned into a string).

use serde_json::{Value, json};

use crate::names::{Names, STORE_PREFIX};

/// Who may assume the execution role: the Lambda service, nobody else.
pub fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "lambda.amazonaws.com" },
            "Action": "sts:AssumeRole"
        }]
    })
}

/// What the function may do besides writing its logs: read, write and
/// delete objects under the store prefix of its own bucket, and list that
/// prefix. Nothing else in S3, no other bucket.
pub fn role_policy(names: &Names) -> Value {
    let bucket = names.bucket_arn();
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ModelStoreObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": format!("{bucket}/{STORE_PREFIX}/*")
            },
            {
                "Sid": "ModelStoreList",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {
                    "StringLike": { "s3:prefix": [STORE_PREFIX, format!("{STORE_PREFIX}/*")] }
                }
            }
        ]
    })
}

/// The bucket policy: every request without TLS, or over TLS older than
/// 1.2, is denied, whoever makes it.
pub fn bucket_policy(names: &Names) -> Value {
    let bucket = names.bucket_arn();
    let resources = json!([bucket, format!("{bucket}/*")]);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": { "Bool": { "aws:SecureTransport": "false" } }
            },
            {
                "Sid": "DenyTlsOlderThan12",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": { "NumericLessThan": { "s3:TlsVersion": "1.2" } }
            }
        ]
    })
}

/// Parses a policy document as IAM returns it: URL-encoded JSON (or plain
/// JSON, as some endpoints and emulators return it).
pub fn parse_document(text: &str) -> anyhow::Result<Value> {
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8()?;
    Ok(serde_json::from_str(&decoded)?)
}

/// Whether two policy documents mean the same (modulo formatting, list
/// order and one-element lists written as strings).
pub fn same_document(a: &Value, b: &Value) -> bool {
    normalize(a) == normalize(b)
}

/// Keys whose value may be a string or a list of strings.
const LIST_KEYS: [&str; 7] = [
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Service",
    "AWS",
    "Federated",
];

fn normalize(value: &Value) -> Value {
    normalize_in(value, false)
}

fn normalize_in(value: &Value, list_context: bool) -> Value {
    match value {
        Value::Object(map) => {
            let condition_block = map.keys().any(|k| k.contains(':'));
            Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        // Inside a Condition operator ({"aws:SecureTransport": ...})
                        // every value may be a string or a list.
                        let listy = LIST_KEYS.contains(&k.as_str()) || condition_block;
                        (k.clone(), normalize_in(v, listy))
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(|v| normalize_in(v, false)).collect();
            if items.iter().all(Value::is_string) {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                items.dedup();
            }
            Value::Array(items)
        }
        Value::String(s) if list_context => Value::Array(vec![Value::String(s.clone())]),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoded_documents_parse() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        let value = parse_document(encoded).unwrap();
        assert_eq!(value, json!({"Version": "2012-10-17", "Statement": []}));
        assert_eq!(parse_document("{\"a\": 1}").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn equivalent_documents_compare_equal() {
        let a = json!({"Statement": [{"Action": "s3:GetObject", "Resource": ["b", "a"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]});
        let b = json!({"Statement": [{"Action": ["s3:GetObject"], "Resource": ["a", "b"],
            "Condition": {"Bool": {"aws:SecureTransport": ["false"]}}}]});
        assert!(same_document(&a, &b));
        let c = json!({"Statement": [{"Action": "s3:PutObject", "Resource": ["a", "b"]}]});
        assert!(!same_document(&a, &c));
    }

    #[test]
    fn the_role_policy_is_scoped_to_the_store() {
        let names = Names::new("airlock", "us-east-1", "123456789012").unwrap();
        let doc = role_policy(&names).to_string();
        assert!(doc.contains("arn:aws:s3:::airlock-models-123456789012-us-east-1/models/*"));
        assert!(!doc.contains("\"*\""), "no wildcard resource: {doc}");
    }
}
