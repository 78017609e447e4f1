//! The Lambda adapter, driven with recorded API Gateway v2 (HTTP API,
//! payload format 2.0) events from `tests/data/*.json`, through the same
//! conversion `lambda_http::run` applies (event -> request -> router ->
//! response -> Lambda response JSON).

use std::path::Path;

use airlock::Host;
use airlock::lambda::LambdaService;
use base64::Engine as _;
use lambda_http::lambda_runtime::{Context, LambdaEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::tower::Service as _;
use serde_json::Value;

use crate::support::{self, argmax_json, digits_test};

/// A host like the one on Lambda: no admin token (the repository routes
/// are IAM-authorised by API Gateway), the digits model loaded.
fn lambda_host(admin_token: Option<&str>) -> (Host, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = support::test_config(data.path());
    config.admin_token = admin_token.map(str::to_owned);
    let host = Host::new(config).unwrap();
    host.load_file("digits", Path::new(airlock_artifacts::DIGITS))
        .unwrap();
    (host, data)
}

fn event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/{name}.json"));
    let mut event: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // The upload event was recorded with a placeholder for its (binary,
    // hence base64) body, to keep the file small.
    if event["body"] == "@DIGITS_WASM_BASE64@" {
        let wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
        event["body"] = base64::engine::general_purpose::STANDARD
            .encode(wasm)
            .into();
    }
    event
}

/// Runs `event` through the handler as the Lambda runtime would; returns
/// the Lambda response as JSON.
async fn invoke_raw(service: &LambdaService, event: Value) -> Value {
    let payload: LambdaRequest = serde_json::from_value(event).unwrap();
    let mut adapter = lambda_http::Adapter::from(service.clone());
    let response = adapter
        .call(LambdaEvent::new(payload, Context::default()))
        .await
        .unwrap();
    serde_json::to_value(&response).unwrap()
}

/// [`invoke_raw`] for a JSON answer: returns the Lambda response and its
/// body parsed as JSON.
async fn invoke(service: &LambdaService, event: Value) -> (Value, Value) {
    let response = invoke_raw(service, event).await;
    assert_eq!(
        response["isBase64Encoded"], false,
        "JSON answers are sent as text: {response}"
    );
    assert_eq!(
        response["headers"]["content-type"], "application/json",
        "{response}"
    );
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    (response, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_metadata_and_infer_events() {
    let (host, _data) = lambda_host(None);
    let service = LambdaService::new(host, None);

    let (response, body) = invoke(&service, event("metadata")).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(body["name"], "digits");
    assert_eq!(body["inputs"][0]["name"], "input");
    assert_eq!(body["outputs"][0]["name"], "probabilities");

    let expected = digits_test().reference_predictions[0];
    for name in ["infer", "infer-base64"] {
        let (response, body) = invoke(&service, event(name)).await;
        assert_eq!(response["statusCode"], 200, "{name}: {response}");
        assert_eq!(body["model_name"], "digits");
        assert_eq!(body["id"], "probe");
        let out = &body["outputs"][0];
        assert_eq!(out["shape"], serde_json::json!([1, 10]));
        assert_eq!(
            argmax_json(out["data"].as_array().unwrap()),
            expected,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_upload_events_use_the_gateway_iam_authorisation() {
    let (host, _data) = lambda_host(None);
    let service = LambdaService::new(host.clone(), None);

    // Authorised by API Gateway (requestContext.authorizer.iam): no token needed.
    let (response, body) = invoke(&service, event("upload")).await;
    assert_eq!(response["statusCode"], 201, "{response}");
    assert_eq!(body["name"], "digits-lambda");
    assert_eq!(body["version"], "1");
    assert_eq!(body["active"], true);
    let wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    assert_eq!(body["sha256"], airlock::digest::sha256_hex(&wasm));
    assert!(host.registry().active("digits-lambda").is_some());

    // The same route without the IAM context: refused (no token configured).
    let (response, body) = invoke(&service, event("upload-no-iam")).await;
    assert_eq!(response["statusCode"], 403, "{response}");
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );

    // A SigV4 `Authorization` header is no authorisation by itself: API
    // Gateway checks the signature and refuses a bad or missing one (403)
    // before the function runs; the host does not check signatures and
    // only trusts the IAM context API Gateway adds after its check.
    let mut signed = event("upload-no-iam");
    signed["headers"]["authorization"] = "AWS4-HMAC-SHA256 \
        Credential=AKIDEXAMPLE/20241126/eu-west-1/execute-api/aws4_request, \
        SignedHeaders=host;x-amz-date, Signature=0000"
        .into();
    signed["headers"]["x-amz-date"] = "20241126T000000Z".into();
    let (response, _) = invoke(&service, signed.clone()).await;
    assert_eq!(response["statusCode"], 403, "{response}");

    // With a token configured, a caller without one is asked for it, and a
    // signature is not a token.
    let (host, _data) = lambda_host(Some("lambda-test-token"));
    let service = LambdaService::new(host, None);
    let (response, _) = invoke(&service, event("upload-no-iam")).await;
    assert_eq!(response["statusCode"], 401, "{response}");
    assert_eq!(response["headers"]["www-authenticate"], "Bearer");
    let (response, _) = invoke(&service, signed).await;
    assert_eq!(response["statusCode"], 401, "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_error_events() {
    let (host, _data) = lambda_host(None);
    let service = LambdaService::new(host, None);
    let cases: [(&str, u16, &str); 6] = [
        ("upload-not-wasm", 400, "upload refused"),
        ("presign-fs", 501, "presigned"),
        ("error-unknown-model", 404, "unknown model"),
        ("error-bad-json", 400, ""),
        ("error-wrong-shape", 400, "shape"),
        ("error-no-route", 404, "no such route"),
    ];
    for (name, status, needle) in cases {
        let (response, body) = invoke(&service, event(name)).await;
        assert_eq!(response["statusCode"], status, "{name}: {response}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {body}"));
        assert!(message.contains(needle), "{name}: {message}");
    }
}

/// Two hosts on one store, as two Lambda instances on one bucket (here the
/// filesystem store, which has the same conditional reads): what one
/// writes, the other serves after its next look, and only then.
#[test]
fn refresh_publishes_what_another_host_wrote() {
    let data = tempfile::tempdir().unwrap();
    let a = Host::new(support::test_config(data.path())).unwrap();
    let b = Host::new(support::test_config(data.path())).unwrap();
    assert_eq!(a.refresh().unwrap(), Default::default());

    b.load_file("digits", Path::new(airlock_artifacts::DIGITS))
        .unwrap();
    assert!(a.registry().active("digits").is_none(), "not looked yet");
    assert_eq!(a.refresh().unwrap().updated, vec!["digits".to_owned()]);
    assert_eq!(a.registry().active("digits").unwrap().version(), "1");
    // Unchanged index: nothing published again.
    assert!(a.refresh().unwrap().updated.is_empty());
    // A look just happened: the next one is not due yet.
    assert!(!a.refresh_if_due(std::time::Duration::from_secs(3600)));

    // Another component (a custom section appended), activated through b.
    let mut v2 = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    v2.extend_from_slice(&[0, 4, 3, b'v', b'-', b'2']);
    b.upload("digits", &v2, true).unwrap();
    assert_eq!(a.registry().active("digits").unwrap().version(), "1");
    assert_eq!(a.refresh().unwrap().updated, vec!["digits".to_owned()]);
    assert_eq!(a.registry().active("digits").unwrap().version(), "2");

    b.unload("digits").unwrap();
    a.refresh().unwrap();
    assert!(a.registry().active("digits").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_tensor_data_travels_base64_through_api_gateway() {
    let (host, _data) = lambda_host(None);
    let service = LambdaService::new(host, None);
    let test = digits_test();
    let binary: Vec<u8> = test.inputs[0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let head = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": binary.len()}}],
        "parameters": {"binary_data_output": true},
    }))
    .unwrap();
    let mut body = head.clone();
    body.extend_from_slice(&binary);
    // The recorded infer event, carrying a binary body as API Gateway
    // does: base64, with the extension's header.
    let mut event = event("infer-base64");
    event["body"] = base64::engine::general_purpose::STANDARD
        .encode(&body)
        .into();
    let headers = &mut event["headers"];
    headers["content-type"] = "application/octet-stream".into();
    headers["content-length"] = body.len().to_string().into();
    headers["inference-header-content-length"] = head.len().to_string().into();

    let response = invoke_raw(&service, event).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["isBase64Encoded"], true, "{response}");
    assert_eq!(
        response["headers"]["content-type"],
        "application/octet-stream"
    );
    let json_len: usize = response["headers"]["inference-header-content-length"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let answer = base64::engine::general_purpose::STANDARD
        .decode(response["body"].as_str().unwrap())
        .unwrap();
    let head: Value = serde_json::from_slice(&answer[..json_len]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
    let probabilities: Vec<f64> = answer[json_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    assert_eq!(probabilities.len(), 10);
    assert_eq!(
        support::argmax(&probabilities),
        test.reference_predictions[0]
    );
}
