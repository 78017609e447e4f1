//! WASI preview 1 command models: core modules that read the request JSON on
//! stdin and write the response on stdout, with metadata from a manifest.

use crate::support::{
    assert_still_serving, digits_request, post_json, server, split, upload_with_manifest,
};

fn manifest() -> String {
    std::fs::read_to_string(airlock_artifacts::DIGITS_WASIP1_MANIFEST).unwrap()
}

fn module() -> Vec<u8> {
    std::fs::read(airlock_artifacts::DIGITS_WASIP1).unwrap()
}

#[tokio::test]
async fn a_wasip1_command_serves_like_a_component() {
    let s = server();
    let client = s.client();
    let (status, body) =
        upload_with_manifest(&client, "digits-p1", module(), Some(&manifest()), true).await;
    assert!(status == 201 || status == 200, "{status}: {body}");

    let response = client
        .get(s.url("/v2/models/digits-p1"))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, _, meta) = split(response).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["platform"], "rust-mlp-wasip1");
    assert_eq!(meta["airlock"]["kind"], "wasi-p1-command");
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 64]));
    assert_eq!(meta["airlock"]["policy"]["limits"]["deadline_ms"], 1000);

    // The same held-out split, the same bar as the component models.
    crate::accuracy::check_model("digits-p1").await;

    // Same answer as the component build of the same MLP, to the bit.
    let url = |name: &str| s.url(&format!("/v2/models/{name}/infer"));
    let (_, _, p1) = post_json(&client, &url("digits-p1"), &digits_request()).await;
    let (_, _, p2) = post_json(&client, &url("digits"), &digits_request()).await;
    assert_eq!(p1["outputs"][0]["data"], p2["outputs"][0]["data"]);
    assert_eq!(p1["model_name"], "digits-p1");

    // The host checks requests against the manifest before the module runs.
    let bad = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]});
    let (status, _, body) = post_json(&client, &url("digits-p1"), &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("shape"), "{body}");
}

/// A core module exporting `_start` and `memory` but importing `env.f`.
const IMPORTS_ENV: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // preamble
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: () -> ()
    0x02, 0x09, 0x01, 0x03, b'e', b'n', b'v', 0x01, b'f', 0x00, 0x00, // import env.f
    0x05, 0x03, 0x01, 0x00, 0x01, // one memory, 1 page
    0x07, 0x13, 0x02, // two exports
    0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // _start = func 0
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // memory = memory 0
];

#[tokio::test]
async fn core_modules_that_are_not_wasi_commands_are_refused() {
    let s = server();
    let client = s.client();
    let cases: [(&str, Vec<u8>, Option<String>, &str); 4] = [
        ("no manifest", module(), None, "upload it with a manifest"),
        (
            "no _start",
            b"\0asm\x01\0\0\0".to_vec(),
            Some(manifest()),
            "exports no `_start`",
        ),
        (
            "imports beyond WASI",
            IMPORTS_ENV.to_vec(),
            Some(manifest()),
            "imports `env`.`f`",
        ),
        (
            "metadata on a component",
            std::fs::read(airlock_artifacts::DIGITS).unwrap(),
            Some(manifest()),
            "for WASI preview 1 command modules",
        ),
    ];
    for (what, wasm, manifest, want) in cases {
        let (status, body) =
            upload_with_manifest(&client, "p1-bad", wasm, manifest.as_deref(), true).await;
        assert_eq!(status, 400, "{what}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(want), "{what}: {message:?} lacks {want:?}");
        let response = client.get(s.url("/v2/models/p1-bad")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{what} is served");
    }
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_command_runs_under_its_memory_cap() {
    let s = server();
    let client = s.client();
    // A Rust wasip1 binary starts with a 1 MiB stack in its linear memory:
    // a 1 MiB cap cannot hold it, and the upload says so.
    let capped = format!("memory_mib = 1\n{}", manifest());
    let (status, body) =
        upload_with_manifest(&client, "p1-capped", module(), Some(&capped), true).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("memory cap"),
        "{body}"
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_command_cannot_sleep_past_its_deadline() {
    let s = server();
    let client = s.client();
    let manifest = std::fs::read_to_string(airlock_artifacts::P1_SLEEPER_MANIFEST).unwrap();
    let wasm = std::fs::read(airlock_artifacts::P1_SLEEPER).unwrap();
    let (status, body) =
        upload_with_manifest(&client, "p1-sleeper", wasm, Some(&manifest), true).await;
    assert!(status == 201 || status == 200, "{status}: {body}");
    let request = serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]});
    let started = std::time::Instant::now();
    let (status, kind, body) =
        post_json(&client, &s.url("/v2/models/p1-sleeper/infer"), &request).await;
    // Its poll_oneoff fails at once (Rust's sleep then panics: a trap);
    // the hour-long sleep never holds the request.
    assert_eq!((status, kind.as_deref()), (500, Some("trap")), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the sleep held the request for {:?}",
        started.elapsed()
    );
    assert_still_serving(&client).await;
}
