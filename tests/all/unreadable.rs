//! Issue 15, item 6: a manifest that is accepted must stay readable once it
//! is stored (inside `models/<name>/index.json`, a few levels deeper), and
//! one unreadable index must not keep a host from serving the other models.

use std::path::Path;

use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::{ADMIN_TOKEN, assert_serving, split, start_with, test_config};

/// `depth` nested arrays around a number.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// The attack: guard configurations nested within serde_json's own limit
/// (128) but deeper than what fits once stored, and an oversized manifest.
/// Each is refused with a 400 that names the bound; nothing is stored; the
/// server keeps serving. (A server of its own with the digits model only:
/// the shared one compiles the large ONNX guest first.)
#[tokio::test(flavor = "multi_thread")]
async fn a_deep_guard_config_is_refused_at_upload() {
    let server = tokio::task::spawn_blocking(|| {
        start_with(|_| {}, &[("digits", airlock_artifacts::DIGITS)])
    })
    .await
    .unwrap();
    let client = server.client();
    let digits = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let json = format!(
        r#"{{"guards": {{"request": [{{"name": "some-guard", "config": {}}}]}}}}"#,
        nested(120)
    );
    let mut toml_value = String::from("1");
    for _ in 0..33 {
        toml_value = format!("{{ k = {toml_value} }}");
    }
    let toml = format!("[[guards.response]]\nname = \"some-guard\"\nconfig = {toml_value}\n");
    let big = format!("memory_mib = 16\n#{}\n", "x".repeat(70 << 10));
    for (manifest, expected) in [
        (json.as_str(), "32 levels"),
        (toml.as_str(), "32 levels"),
        (big.as_str(), "65536"),
    ] {
        let form = reqwest::multipart::Form::new()
            .part(
                "model",
                reqwest::multipart::Part::bytes(digits.clone())
                    .file_name("model.wasm")
                    .mime_str("application/wasm")
                    .unwrap(),
            )
            .text("manifest", manifest.to_owned());
        let response = client
            .post(server.url("/v2/repository/models/deep-config/versions?activate=true"))
            .bearer_auth(ADMIN_TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let (status, _, body) = split(response).await;
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
        assert_serving(&server, &client).await;
    }
    let status = client
        .get(server.url("/v2/models/deep-config"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "nothing was stored");
    assert!(!server.data_dir.join("models/deep-config").exists());
    let index = client
        .post(server.url("/v2/repository/index"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), 200);
}

/// A stored index whose guard configuration nests 130 levels: what the
/// first wave accepted and then could not read back.
fn too_deep_index(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "versions": [{{"version": "1", "sha256": "{zero}", "size": 1,
            "uploaded_unix": 0, "model_version": "1", "manifest": {{"guards": {{"request":
            [{{"name": "g", "config": {deep}}}]}}}}}}], "active": "1", "history": [],
            "loaded": true, "next_version": 2}}"#,
        zero = "0".repeat(64),
        deep = nested(130),
    )
}

async fn call(router: &axum::Router, path: &str, body: Value, admin: bool) -> (u16, Value) {
    let mut request = axum::http::Request::post(path).header("content-type", "application/json");
    if admin {
        request = request.header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    }
    let request = request
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The attack: beside a good model, one index too deep for serde_json and
/// one that is not JSON at all, written straight into the data directory,
/// then a restart. Every start-up path (`Host::open` as on Lambda,
/// `restore` as `airlock serve`, `refresh` as a store shared over S3)
/// starts, serves the good model and reports the bad ones; the repository
/// index lists them without failing for everyone.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_index_is_skipped_at_start_up_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = test_config(&data);
    config.artifacts_dir = Some(dir.path().join("artifacts"));
    {
        let host = airlock::Host::new(config.clone()).unwrap();
        host.load_file("good", Path::new(airlock_artifacts::DIGITS))
            .unwrap();
    }
    for (name, text) in [
        ("deep", too_deep_index("deep")),
        ("junk", "{\"name\": \"junk\", not json".to_owned()),
    ] {
        let index = data.join("models").join(name).join("index.json");
        std::fs::create_dir_all(index.parent().unwrap()).unwrap();
        std::fs::write(&index, text).unwrap();
    }

    let (host, opened) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || airlock::Host::open(config)
    })
    .await
    .unwrap()
    .expect("the host starts despite two unreadable indexes");
    let mut failed = opened.refresh.failed.clone();
    failed.sort();
    assert_eq!(failed, ["deep", "junk"]);
    assert_eq!(opened.refresh.updated, ["good"]);

    let router = host.router();
    let (status, body) = call(
        &router,
        "/v2/models/good/infer",
        crate::support::digits_request(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let probabilities = body["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(
        crate::support::argmax_json(probabilities),
        crate::support::digits_test().reference_predictions[0]
    );

    // The repository index answers, with the bad ones reported by name.
    let (status, rows) = call(&router, "/v2/repository/index", json!({}), true).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    assert_eq!(row("good").unwrap()["state"], "READY", "{rows:?}");
    for name in ["deep", "junk"] {
        let row = row(name).unwrap_or_else(|| panic!("{name} is not listed: {rows:?}"));
        assert_eq!(row["state"], "UNAVAILABLE");
        assert!(
            row["reason"].as_str().unwrap().contains("unreadable"),
            "{row}"
        );
        assert!(!row.to_string().contains("data/models"), "no paths: {row}");
    }

    // `airlock serve`'s start over a data directory, and a later refresh.
    let restored = tokio::task::spawn_blocking(move || {
        let host = airlock::Host::new(config).unwrap();
        let served = host.restore().unwrap();
        let refreshed = host.refresh().unwrap();
        (served, refreshed)
    })
    .await
    .unwrap();
    assert_eq!(restored.0, ["good"]);
    let mut failed = restored.1.failed;
    failed.sort();
    assert_eq!(failed, ["deep", "junk"]);
}
