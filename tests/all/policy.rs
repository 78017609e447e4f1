//! Per-model policy manifests: limits, caller keys, request bounds and
//! concurrency, set at upload and enforced on every request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, assert_still_serving, digits_request, post_json, server, split,
    upload_with_manifest,
};

fn digits() -> Vec<u8> {
    std::fs::read(airlock_artifacts::DIGITS).unwrap()
}

async fn infer_with(
    client: &reqwest::Client,
    name: &str,
    auth: Option<(&str, &str)>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut request = client
        .post(server().url(&format!("/v2/models/{name}/infer")))
        .json(body);
    if let Some((header, value)) = auth {
        request = request.header(header, value);
    }
    split(request.send().await.unwrap()).await
}

const CALLER_KEY: &str = "caller-key-0123456789";
const OTHER_KEY: &str = "other-key-0123456789";

#[tokio::test]
async fn a_manifest_sets_the_policy_and_every_request_is_held_to_it() {
    let s = server();
    let client = s.client();
    let other_hash = airlock::manifest::hash_key(OTHER_KEY);
    let manifest = format!(
        "deadline_ms = 150\nmemory_mib = 16\nmax_request_bytes = 4096\nmax_elements = 128\n\
         api_keys = [\"{CALLER_KEY}\", \"{other_hash}\"]\n"
    );
    let (status, body) =
        upload_with_manifest(&client, "pol-digits", digits(), Some(&manifest), true).await;
    assert_eq!(status, 201, "{body}");

    // The effective policy is in the metadata (for the admin); the keys
    // are not.
    let response = client
        .get(s.url("/v2/models/pol-digits"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, _, meta) = split(response).await;
    assert_eq!(status, 200);
    let policy = &meta["airlock"]["policy"];
    assert_eq!(policy["limits"]["deadline_ms"], 150, "{meta}");
    assert_eq!(policy["limits"]["memory_mib"], 16);
    assert_eq!(policy["max_request_bytes"], 4096);
    assert_eq!(policy["max_elements"], 128);
    assert_eq!(policy["api_key_required"], true);
    let text = meta.to_string();
    assert!(!text.contains(CALLER_KEY) && !text.contains(&other_hash[7..]));
    // Stored hashed: the plain key is nowhere in the store.
    let index = std::fs::read_to_string(s.data_dir.join("models/pol-digits/index.json")).unwrap();
    assert!(!index.contains(CALLER_KEY), "{index}");
    assert!(index.contains(&airlock::manifest::hash_key(CALLER_KEY)));

    // Callers need a listed key.
    let one = digits_request();
    let (status, _, body) = infer_with(&client, "pol-digits", None, &one).await;
    assert_eq!(status, 401, "{body}");
    let bearer = |key: &str| format!("Bearer {key}");
    let wrong = bearer("not-a-listed-key-at-all");
    let (status, _, body) =
        infer_with(&client, "pol-digits", Some(("authorization", &wrong)), &one).await;
    assert_eq!(status, 403, "{body}");
    let right = bearer(CALLER_KEY);
    let (status, _, body) =
        infer_with(&client, "pol-digits", Some(("authorization", &right)), &one).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) =
        infer_with(&client, "pol-digits", Some(("x-api-key", OTHER_KEY)), &one).await;
    assert_eq!(status, 200, "{body}");
    // The admin token is not a caller key.
    let admin = bearer(ADMIN_TOKEN);
    let (status, _, _) =
        infer_with(&client, "pol-digits", Some(("authorization", &admin)), &one).await;
    assert_eq!(status, 403);

    // Request bounds: elements, then bytes.
    let rows = vec![vec![0.0f32; 64]; 3];
    let three =
        json!({"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": rows}]});
    let (status, _, body) = infer_with(
        &client,
        "pol-digits",
        Some(("authorization", &right)),
        &three,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("128"), "{body}");
    let mut padded = digits_request();
    padded["id"] = json!("x".repeat(5000));
    let (status, _, body) = infer_with(
        &client,
        "pol-digits",
        Some(("authorization", &right)),
        &padded,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("4096"), "{body}");

    // Other models keep their own (open) policy.
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_field() {
    let s = server();
    let client = s.client();
    let cases = [
        ("memory_mb = 64", "memory_mb"),
        ("deadline_ms = 0", "deadline_ms"),
        ("memory_mib = 100000", "memory_mib"),
        ("max_request_bytes = 999999999", "max_request_bytes"),
        ("api_keys = [\"short\"]", "api_keys"),
        (r#"{"max_concurrency": 2, "limits": {}}"#, "limits"),
        ("this is not = = toml", "invalid manifest"),
        (
            "[metadata]\ninputs = []\noutputs = []\nplatfrom = \"x\"",
            "platfrom",
        ),
    ];
    for (manifest, want) in cases {
        let (status, body) =
            upload_with_manifest(&client, "pol-bad", digits(), Some(manifest), true).await;
        assert_eq!(status, 400, "{manifest}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(want),
            "{manifest}: {message:?} lacks {want:?}"
        );
    }
    // A form without its model part, and with an unknown part.
    for form in [
        reqwest::multipart::Form::new().text("manifest", "deadline_ms = 5"),
        reqwest::multipart::Form::new()
            .part("model", reqwest::multipart::Part::bytes(digits()))
            .text("policy", "deadline_ms = 5"),
    ] {
        let response = client
            .post(s.url("/v2/repository/models/pol-bad/versions"))
            .bearer_auth(ADMIN_TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let (status, _, body) = split(response).await;
        assert_eq!(status, 400, "{body}");
    }
    let response = client
        .get(s.url("/v2/models/pol-bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "a refused upload is served");
    assert!(!s.data_dir.join("models/pol-bad").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_model_answers_503_and_others_keep_serving() {
    let s = server();
    let client = s.client();
    let misbehave = std::fs::read(airlock_artifacts::MISBEHAVE).unwrap();
    let manifest = "max_concurrency = 1\ndeadline_ms = 1500\n";
    let (status, body) =
        upload_with_manifest(&client, "pol-slow", misbehave, Some(manifest), true).await;
    assert_eq!(status, 201, "{body}");
    let request = |mode: &str| {
        json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
               "parameters": {"mode": mode}})
    };
    let url = s.url("/v2/models/pol-slow/infer");

    let slow = {
        let (client, url, body) = (client.clone(), url.clone(), request("loop"));
        tokio::spawn(async move { post_json(&client, &url, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one slot is taken: refused at once, with a hint to retry.
    let response = client
        .post(&url)
        .json(&request("echo"))
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, kind, body) = split(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(kind.as_deref(), Some("busy"));
    assert!(retry_after.is_some());
    assert!(body["error"].as_str().unwrap().contains("concurrent"));
    // Another model is not held up by the saturated one.
    let started = std::time::Instant::now();
    let (status, _, body) = post_json(
        &client,
        &s.url("/v2/models/digits/infer"),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "digits waited for the saturated model"
    );

    let (status, kind, _) = slow.await.unwrap();
    assert_eq!((status, kind.as_deref()), (504, Some("deadline")));
    // The slot is free again.
    let (status, _, body) = post_json(&client, &url, &request("echo")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn metrics_count_requests_by_status_and_failure_kind() {
    let s = server();
    let client = s.client();
    let misbehave = std::fs::read(airlock_artifacts::MISBEHAVE).unwrap();
    let (status, body) =
        upload_with_manifest(&client, "metrics-probe", misbehave, None, true).await;
    assert_eq!(status, 201, "{body}");
    let url = s.url("/v2/models/metrics-probe/infer");
    for (mode, want) in [("echo", 200), ("echo", 200), ("trap", 500)] {
        let request = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
                             "parameters": {"mode": mode}});
        let (status, _, body) = post_json(&client, &url, &request).await;
        assert_eq!(status, want, "{body}");
    }

    let anonymous = client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let response = client
        .get(s.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let series = "model=\"metrics-probe\",version=\"1\"";
    for line in [
        format!("airlock_requests_total{{{series},status=\"200\"}} 2"),
        format!("airlock_requests_total{{{series},status=\"500\"}} 1"),
        format!("airlock_failures_total{{{series},kind=\"trap\"}} 1"),
        format!("airlock_failures_total{{{series},kind=\"deadline\"}} 0"),
        format!("airlock_request_duration_seconds_count{{{series}}} 3"),
        format!("airlock_request_duration_seconds_bucket{{{series},le=\"+Inf\"}} 3"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
}
