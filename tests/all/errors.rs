//! Every error path answers with its status and an OIP error body, and the
//! server keeps serving afterwards.

use serde_json::{Value, json};

use crate::support::{MAX_BODY_BYTES, assert_still_serving, post_json, server, split};

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no OIP error field in {body}"))
}

#[tokio::test]
async fn client_errors_are_4xx_with_a_message() {
    let s = server();
    let client = s.client();
    let row: Vec<f32> = vec![0.0; 64];
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v2/models/nope/infer",
            input(json!([1, 64]), "FP32", json!(row)),
            404,
            "unknown model",
        ),
        (
            "/v2/models/digits/versions/9/infer",
            input(json!([1, 64]), "FP32", json!(row)),
            404,
            "version",
        ),
        (
            "/v2/models/digits/infer",
            input(json!([1, 64]), "INT32", json!(row)),
            400,
            "datatype INT32 does not match",
        ),
        (
            "/v2/models/digits/infer",
            input(json!([1, 63]), "FP32", json!(row)),
            400,
            "does not match the model's",
        ),
        (
            "/v2/models/digits/infer",
            input(json!([64]), "FP32", json!(row)),
            400,
            "dimensions",
        ),
        (
            "/v2/models/digits/infer",
            input(json!([2, 64]), "FP32", json!(row)),
            400,
            "needs 128 elements but data has 64",
        ),
        (
            "/v2/models/digits/infer",
            input(json!([1, 64]), "FP32", json!(vec!["a"; 64])),
            400,
            "not a number",
        ),
        (
            "/v2/models/digits/infer",
            json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row}]}),
            400,
            "unexpected input",
        ),
        (
            "/v2/models/digits/infer",
            json!({"inputs": []}),
            400,
            "missing input",
        ),
        (
            "/v2/models/digits/infer",
            json!({"id": "x"}),
            400,
            "missing field `inputs`",
        ),
    ];
    for (path, body, want_status, want_text) in cases {
        let (status, _, answer) = post_json(&client, &s.url(path), &body).await;
        assert_eq!(status, want_status, "{path}: {answer}");
        assert!(
            error_text(&answer).contains(want_text),
            "{path}: {answer} should mention {want_text:?}"
        );
        assert_still_serving(&client).await;
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = server();
    let client = s.client();
    for body in ["{", "not json", "{\"inputs\": [1, 2]}", ""] {
        let response = client
            .post(s.url("/v2/models/digits/infer"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, _, answer) = split(response).await;
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert!(error_text(&answer).contains("malformed"), "{answer}");
        assert_still_serving(&client).await;
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let s = server();
    let client = s.client();
    let big = vec![b' '; MAX_BODY_BYTES + 1024];
    let response = client
        .post(s.url("/v2/models/digits/infer"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, _, answer) = split(response).await;
    assert_eq!(status, 413, "{answer}");
    assert!(error_text(&answer).contains("size limit"));
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let s = server();
    let client = s.client();
    let (status, _, body) = split(client.get(s.url("/v3/nothing")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    error_text(&body);
    let (status, _, body) = split(
        client
            .get(s.url("/v2/models/digits/infer"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    error_text(&body);
}

async fn misbehave(mode: &str) -> (u16, Option<String>, Value) {
    let s = server();
    let request = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}],
                         "parameters": {"mode": mode}});
    post_json(&s.client(), &s.url("/v2/models/misbehave/infer"), &request).await
}

#[tokio::test]
async fn guest_trap_is_500_trap() {
    let (status, kind, body) = misbehave("trap").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(kind.as_deref(), Some("trap"));
    assert!(error_text(&body).contains("trapped"), "{body}");
    assert_still_serving(&server().client()).await;
    // The same model serves again right after its own trap.
    assert_eq!(misbehave("echo").await.0, 200);
}

#[tokio::test]
async fn deadline_exceeded_is_504() {
    let started = std::time::Instant::now();
    let (status, kind, body) = misbehave("loop").await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(kind.as_deref(), Some("deadline"));
    assert!(error_text(&body).contains("deadline"), "{body}");
    // The fixture's deadline is 200 ms; the loop must be cut near it.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_still_serving(&server().client()).await;
    assert_eq!(misbehave("echo").await.0, 200);
}

#[tokio::test]
async fn memory_cap_is_507() {
    let (status, kind, body) = misbehave("oom").await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(kind.as_deref(), Some("memory"));
    assert!(error_text(&body).contains("memory cap"), "{body}");
    assert_still_serving(&server().client()).await;
    assert_eq!(misbehave("echo").await.0, 200);
}

#[tokio::test]
async fn model_errors_map_to_400_and_opaque_500() {
    let (status, kind, body) = misbehave("invalid").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(kind, None);
    assert!(error_text(&body).contains("misbehave says no"), "{body}");

    let (status, kind, body) = misbehave("internal").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(kind.as_deref(), Some("model-error"));
    assert!(
        !error_text(&body).contains("secret"),
        "internal detail leaked: {body}"
    );
    assert_still_serving(&server().client()).await;
}
