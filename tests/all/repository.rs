//! The repository API: auth, uploads and their validation, versions,
//! activation, rollback, deletion, hot swap under load, and persistence.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;

use crate::support::{
    ADMIN_TOKEN, assert_still_serving, digits_request, post_json, server, split, test_config, walk,
};

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn upload(
    client: &reqwest::Client,
    name: &str,
    bytes: Vec<u8>,
    activate: bool,
) -> (u16, Value) {
    let s = server();
    let url = s.url(&format!(
        "/v2/repository/models/{name}/versions?activate={activate}"
    ));
    let response = client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let (status, _, body) = split(response).await;
    (status, body)
}

async fn admin_post(client: &reqwest::Client, path: &str) -> (u16, Value) {
    let response = client
        .post(server().url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, _, body) = split(response).await;
    (status, body)
}

async fn index(client: &reqwest::Client) -> Vec<Value> {
    let (status, body) = admin_post(client, "/v2/repository/index").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn infer_version_of(client: &reqwest::Client, name: &str) -> (String, Value) {
    let (status, _, body) = post_json(
        client,
        &server().url(&format!("/v2/models/{name}/infer")),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        body["model_version"].as_str().unwrap().to_owned(),
        body["outputs"].clone(),
    )
}

#[tokio::test]
async fn repository_needs_the_admin_token() {
    let s = server();
    let client = s.client();
    let url = s.url("/v2/repository/index");
    let none = client.post(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let (_, _, body) = split(none).await;
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let wrong = client
        .post(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let upload = client
        .post(s.url("/v2/repository/models/sneaky/versions"))
        .bearer_auth("not-the-token")
        .header("content-type", "application/wasm")
        .body(wasm(airlock_artifacts::DIGITS))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 403);
    assert!(
        index(&client)
            .await
            .iter()
            .all(|row| row["name"] != "sneaky")
    );
}

#[tokio::test]
async fn versions_activate_roll_back_and_delete() {
    let client = server().client();
    let name = "lc-versions";
    let (status, v1) = upload(&client, name, wasm(airlock_artifacts::DIGITS), false).await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["version"], "1");
    assert_eq!(v1["active"], true, "a model's first version is active");
    let (status, v2) = upload(&client, name, wasm(airlock_artifacts::DIGITS_ONNX), false).await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!(v2["version"], "2");
    assert_eq!(v2["active"], false);
    // Identical bytes are not stored twice.
    let (status, again) = upload(&client, name, wasm(airlock_artifacts::DIGITS), false).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version"], "1");
    assert_eq!(again["created"], false);

    assert_eq!(infer_version_of(&client, name).await.0, "1");
    let (status, body) = admin_post(
        &client,
        &format!("/v2/repository/models/{name}/versions/2/activate"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(infer_version_of(&client, name).await.0, "2");
    // Both versions stay addressable.
    let (status, _, _) = post_json(
        &client,
        &server().url(&format!("/v2/models/{name}/versions/1/infer")),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) =
        admin_post(&client, &format!("/v2/repository/models/{name}/rollback")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], "1");
    assert_eq!(infer_version_of(&client, name).await.0, "1");

    let s = server();
    let delete_active = client
        .delete(s.url(&format!("/v2/repository/models/{name}/versions/1")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(delete_active.status(), 409);
    let delete_old = client
        .delete(s.url(&format!("/v2/repository/models/{name}/versions/2")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(delete_old.status(), 200);
    let (status, _, _) = post_json(
        &client,
        &s.url(&format!("/v2/models/{name}/versions/2/infer")),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 404);
    let rows: Vec<Value> = index(&client)
        .await
        .into_iter()
        .filter(|r| r["name"] == name)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["version"], "1");
    assert_eq!(rows[0]["active"], true);
    assert_eq!(rows[0]["state"], "READY");

    // Unload stops serving; load brings it back.
    assert_eq!(
        admin_post(&client, &format!("/v2/repository/models/{name}/unload"))
            .await
            .0,
        200
    );
    let (status, _, _) = post_json(
        &client,
        &s.url(&format!("/v2/models/{name}/infer")),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        admin_post(&client, &format!("/v2/repository/models/{name}/load"))
            .await
            .0,
        200
    );
    assert_eq!(infer_version_of(&client, name).await.0, "1");
}

/// A minimal valid core module: the preamble and nothing else.
const EMPTY_CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let s = server();
    let client = s.client();
    let name = "lc-bad";
    let mut random = vec![0u8; 4096];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("random bytes", random, 400, "not WebAssembly"),
        ("empty body", Vec::new(), 400, "empty"),
        (
            "core module",
            EMPTY_CORE_MODULE.to_vec(),
            400,
            "core WebAssembly module",
        ),
        (
            // Neither a model nor a guard: a component that exports nothing.
            "another world",
            wat::parse_str("(component)").unwrap(),
            400,
            "airlock:inference/inference",
        ),
        (
            "sockets import",
            wasm(airlock_artifacts::NET_PROBE),
            400,
            "wasi:sockets",
        ),
        (
            "metadata traps",
            wasm(airlock_artifacts::METADATA_TRAP),
            400,
            "metadata() failed",
        ),
        (
            "metadata loops",
            wasm(airlock_artifacts::METADATA_LOOP),
            400,
            "deadline",
        ),
        (
            "over the size limit",
            vec![0u8; crate::support::MAX_UPLOAD_BYTES + 1],
            413,
            "size limit",
        ),
    ];
    let blobs = s.data_dir.join("blobs/sha256");
    for (what, bytes, want_status, want_text) in cases {
        let digest = airlock::digest::sha256_hex(&bytes);
        let (status, body) = upload(&client, name, bytes, true).await;
        assert_eq!(status, want_status, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(want_text),
            "{what}: {message:?} should mention {want_text:?}"
        );
        assert!(
            index(&client).await.iter().all(|row| row["name"] != name),
            "{what} left a version in the index"
        );
        assert!(
            !blobs.join(format!("{digest}.wasm")).exists(),
            "{what} left its bytes stored"
        );
        let (status, _, _) = post_json(
            &client,
            &s.url(&format!("/v2/models/{name}/infer")),
            &digits_request(),
        )
        .await;
        assert_eq!(status, 404, "{what} is being served");
        assert_still_serving(&client).await;
    }
    let wrong_type = client
        .post(s.url(&format!("/v2/repository/models/{name}/versions")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(wasm(airlock_artifacts::DIGITS))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let bad_name = upload(&client, "Bad..Name!", wasm(airlock_artifacts::DIGITS), true).await;
    assert_eq!(bad_name.0, 400, "{}", bad_name.1);
    assert!(index(&client).await.iter().all(|row| row["name"] != name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_drops_nothing_and_never_mixes_versions() {
    let client = server().client();
    let name = "lc-swap";
    // Two versions that answer the same request measurably differently:
    // the Rust MLP and the same network run by tract (last-bit differences).
    assert_eq!(
        upload(&client, name, wasm(airlock_artifacts::DIGITS), true)
            .await
            .0,
        201
    );
    let (v, out1) = infer_version_of(&client, name).await;
    assert_eq!(v, "1");
    assert_eq!(
        upload(&client, name, wasm(airlock_artifacts::DIGITS_ONNX), true)
            .await
            .0,
        201
    );
    let (v, out2) = infer_version_of(&client, name).await;
    assert_eq!(v, "2");
    assert_ne!(out1, out2, "the two versions must be distinguishable");
    let expected = Arc::new([out1, out2]);

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, stop, served, expected) = (
            client.clone(),
            stop.clone(),
            served.clone(),
            expected.clone(),
        );
        workers.push(tokio::spawn(async move {
            let url = server().url(&format!("/v2/models/{name}/infer"));
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) = post_json(&client, &url, &digits_request()).await;
                assert_eq!(status, 200, "a request failed during the swap: {body}");
                let version = body["model_version"].as_str().unwrap();
                let index = match version {
                    "1" => 0,
                    "2" => 1,
                    other => panic!("unexpected version {other}"),
                };
                assert_eq!(
                    body["outputs"], expected[index],
                    "version {version} answered with the other version's outputs"
                );
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut flips = 0;
    for i in 0..60 {
        let version = if i % 2 == 0 { "1" } else { "2" };
        let (status, body) = admin_post(
            &client,
            &format!("/v2/repository/models/{name}/versions/{version}/activate"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        flips += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let served = served.load(Ordering::Relaxed);
    println!("hot swap: {flips} flips, {served} requests, 0 failed");
    assert!(flips >= 50);
    assert!(served >= 100, "only {served} requests ran during the swaps");
}

#[test]
fn a_restart_brings_back_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let digits = wasm(airlock_artifacts::DIGITS);
    let onnx = wasm(airlock_artifacts::DIGITS_ONNX);
    let snapshot = |host: &airlock::Host| -> Vec<(String, String, Vec<String>)> {
        host.registry()
            .entries()
            .into_iter()
            .map(|(name, entry)| {
                (
                    name,
                    entry.active.version().to_owned(),
                    entry.versions.keys().cloned().collect(),
                )
            })
            .collect()
    };
    let before = {
        let host = airlock::Host::new(test_config(dir.path())).unwrap();
        host.upload("a", &digits, true).unwrap();
        host.upload("a", &onnx, true).unwrap();
        host.rollback("a").unwrap();
        host.upload("b", &onnx, true).unwrap();
        host.upload("c", &digits, true).unwrap();
        host.unload("c").unwrap();
        snapshot(&host)
    };
    assert_eq!(
        before,
        vec![
            (
                "a".to_owned(),
                "1".to_owned(),
                vec!["1".to_owned(), "2".to_owned()]
            ),
            ("b".to_owned(), "1".to_owned(), vec!["1".to_owned()]),
        ]
    );
    let host = airlock::Host::new(test_config(dir.path())).unwrap();
    assert!(host.registry().entries().is_empty());
    host.restore().unwrap();
    assert_eq!(snapshot(&host), before);
    // The rollback history survived too: rolling forward again is possible.
    host.activate("a", "2").unwrap();
    assert_eq!(host.rollback("a").unwrap(), "1");
    assert!(
        Path::new(&dir.path().join("models/c/index.json")).exists(),
        "unloaded models stay stored"
    );
}

#[tokio::test]
async fn signatures_are_checked_before_anything_is_compiled_or_stored() {
    use airlock::signing::{self, SignatureError, TrustedKeys};
    use tower::ServiceExt as _;

    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = signing::generate().unwrap();
    let (stranger, _) = signing::generate().unwrap();
    let mut config = test_config(dir.path());
    // Its own artifact dir, to see that a refused upload compiled nothing.
    config.artifacts_dir = Some(dir.path().join("artifacts"));
    config.trusted_keys = TrustedKeys::from_hex([public.as_str()]).unwrap();
    config.require_signatures = true;
    let host = airlock::Host::new(config).unwrap();
    let digits = wasm(airlock_artifacts::DIGITS);
    let digest = airlock::digest::sha256_hex(&digits);
    let nothing_left = |host: &airlock::Host| {
        assert!(host.list().unwrap().is_empty());
        assert!(
            !dir.path()
                .join(format!("blobs/sha256/{digest}.wasm"))
                .exists()
        );
        let compiled = walk(&dir.path().join("artifacts"));
        assert!(
            compiled.is_empty(),
            "a refused upload was compiled: {compiled:?}"
        );
    };

    let unsigned = host.upload("signed", &digits, true).unwrap_err();
    assert!(
        matches!(
            unsigned,
            airlock::RepoError::Signature(SignatureError::Missing)
        ),
        "{unsigned}"
    );
    nothing_left(&host);
    let wrong = signing::sign(&stranger, &digits, None).unwrap();
    let refused = host
        .upload_with(
            "signed",
            airlock::Upload {
                wasm: &digits,
                manifest: None,
                activate: true,
                signature: Some(&wrong),
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            refused,
            airlock::RepoError::Signature(SignatureError::Untrusted)
        ),
        "{refused}"
    );
    nothing_left(&host);
    // A signature over other bytes does not carry over.
    let other = signing::sign(&secret, b"other bytes", None).unwrap();
    assert!(
        host.upload_with(
            "signed",
            airlock::Upload {
                wasm: &digits,
                manifest: None,
                activate: true,
                signature: Some(&other),
            },
        )
        .is_err()
    );
    nothing_left(&host);

    // Over HTTP the refusal is a 403 with the reason.
    let request = |signature: Option<&str>| {
        let mut builder =
            axum::http::Request::post("/v2/repository/models/signed/versions?activate=true")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .header("content-type", "application/wasm");
        if let Some(signature) = signature {
            builder = builder.header(signing::SIGNATURE_HEADER, signature);
        }
        builder
            .body(axum::body::Body::from(digits.clone()))
            .unwrap()
    };
    let response = host.router().oneshot(request(Some(&wrong))).await.unwrap();
    assert_eq!(response.status(), 403);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("does not verify"),
        "{body:?}"
    );
    nothing_left(&host);

    let good = signing::sign(&secret, &digits, None).unwrap();
    let response = host.router().oneshot(request(Some(&good))).await.unwrap();
    assert_eq!(response.status(), 201);
    let listed = host.list().unwrap();
    assert_eq!(
        listed[0].index.versions[0].signed_by.as_deref(),
        Some(public.as_str())
    );
}
