//! Policy escapes (issue 15, items 4 and 5), each written as the attack
//! and each checking that a normal client is still served meanwhile:
//!
//! - an old version reached through `/versions/{v}/infer` is held to the
//!   active version's policy as well as its own (keys and guards);
//! - model metadata shows policy only to the admin, and nothing of a
//!   key-protected model to callers without a key;
//! - a signature covers the manifest: replaying signed bytes with another
//!   manifest is refused;
//! - activate and rollback refuse a version whose signature does not hold
//!   while signatures are required;
//! - an index edited in the store (signature, signer, manifest) is refused
//!   at load after a restart, and the other models are served.

use std::path::Path;

use airlock::signing::{self, SignatureError, TrustedKeys};
use airlock::{Host, RepoError, Upload};
use axum::body::Body;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::{ADMIN_TOKEN, digits_request, digits_test, test_config};

const KEY: &str = "caller-key-0123456789";
const OTHER_KEY: &str = "other-caller-key-0123456789";

fn digits() -> Vec<u8> {
    std::fs::read(airlock_artifacts::DIGITS).unwrap()
}

fn manifest(text: &str) -> airlock::manifest::Manifest {
    airlock::manifest::Manifest::parse(text.as_bytes()).unwrap()
}

/// Uploads `wasm` with `manifest` and `signature` straight to the host.
fn put(
    host: &Host,
    name: &str,
    wasm: &[u8],
    manifest: Option<&airlock::manifest::Manifest>,
    signature: Option<&str>,
    activate: bool,
) -> Result<airlock::UploadReport, RepoError> {
    host.upload_with(
        name,
        Upload {
            wasm,
            manifest,
            activate,
            signature,
        },
    )
}

/// One request through the host's router: (status, JSON body).
async fn call(
    host: &Host,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> (u16, Value) {
    let mut request = axum::http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = host
        .router()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 8 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json)
}

/// Infers the digits request on `path` with `headers`.
async fn infer(host: &Host, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    call(
        host,
        "POST",
        path,
        &all,
        Body::from(digits_request().to_string()),
    )
    .await
}

/// Asserts that `body` is a correct digits answer.
fn correct(status: u16, body: &Value) {
    assert_eq!(status, 200, "{body}");
    let probabilities = body["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(
        crate::support::argmax_json(probabilities),
        digits_test().reference_predictions[0],
        "{body}"
    );
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_is_held_to_the_active_policy() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(test_config(dir.path())).unwrap();
    let digits = digits();
    // v1 open to anyone, v2 (active) for KEY only, v3 (inactive) for
    // OTHER_KEY only.
    put(&host, "m", &digits, None, None, true).unwrap();
    let v2 = manifest(&format!(
        "api_keys = [\"{KEY}\"]\nmax_request_bytes = 65536\n"
    ));
    put(&host, "m", &digits, Some(&v2), None, true).unwrap();
    let v3 = manifest(&format!("api_keys = [\"{OTHER_KEY}\"]\n"));
    put(&host, "m", &digits, Some(&v3), None, false).unwrap();
    let (key, other) = (bearer(KEY), bearer(OTHER_KEY));
    let with_key = [("authorization", key.as_str())];

    // The attack: the old, open version without a key.
    let (status, body) = infer(&host, "/v2/models/m/versions/1/infer", &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = infer(
        &host,
        "/v2/models/m/versions/1/infer",
        &[("authorization", "Bearer not-a-listed-key-at-all")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Its metadata is not a way round either.
    let (status, body) = call(&host, "GET", "/v2/models/m/versions/1", &[], Body::empty()).await;
    assert_eq!(status, 401, "{body}");
    // A caller with the active version's key is served, on both routes.
    let (status, body) = infer(&host, "/v2/models/m/versions/1/infer", &with_key).await;
    correct(status, &body);
    assert_eq!(body["model_version"], "1");
    let (status, body) = infer(&host, "/v2/models/m/infer", &with_key).await;
    correct(status, &body);
    // The stricter limit applies too: v1's own is the server's 1 MiB.
    let big = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
        "data": vec![0.0f32; 64]}], "padding": "x".repeat(70_000)});
    let (status, body) = call(
        &host,
        "POST",
        "/v2/models/m/versions/1/infer",
        &[("content-type", "application/json"), with_key[0]],
        Body::from(big.to_string()),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    // v3 lists another key than the active version: no key satisfies
    // both, so nobody may use its route while v2 is active.
    for auth in [&key, &other] {
        let (status, body) = infer(
            &host,
            "/v2/models/m/versions/3/infer",
            &[("authorization", auth.as_str())],
        )
        .await;
        assert_eq!(status, 403, "{auth}: {body}");
    }

    // The rule follows the active version: rolled back to the open v1, v2
    // still needs its own key and v1 needs none.
    host.activate("m", "1").unwrap();
    let (status, body) = infer(&host, "/v2/models/m/versions/2/infer", &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = infer(&host, "/v2/models/m/versions/2/infer", &with_key).await;
    correct(status, &body);
    let (status, body) = infer(&host, "/v2/models/m/versions/1/infer", &[]).await;
    correct(status, &body);
    let (status, body) = infer(
        &host,
        "/v2/models/m/versions/3/infer",
        &[("authorization", other.as_str())],
    )
    .await;
    correct(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_of_the_active_policy_run_on_version_routes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(test_config(dir.path())).unwrap();
    let range = std::fs::read(airlock_artifacts::RANGE_GUARD).unwrap();
    host.upload("range", &range, true).unwrap();
    let digits = digits();
    put(&host, "m", &digits, None, None, true).unwrap();
    let guarded = manifest(
        "[[guards.request]]\nname = \"range\"\n\
         config = { inputs = { input = { min = 0, max = 16 } } }\n",
    );
    put(&host, "m", &digits, Some(&guarded), None, true).unwrap();

    // The attack: a pixel out of range, through the unguarded old version.
    let mut pixels = digits_test().inputs[0].clone();
    pixels[10] = 17.0;
    let over = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
        "data": pixels}]});
    for path in ["/v2/models/m/versions/1/infer", "/v2/models/m/infer"] {
        let (status, body) = call(
            &host,
            "POST",
            path,
            &[("content-type", "application/json")],
            Body::from(over.to_string()),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("17 is above the maximum 16"), "{error}");
    }
    // A normal request passes the guard on both routes.
    let (status, body) = infer(&host, "/v2/models/m/versions/1/infer", &[]).await;
    correct(status, &body);
    let (status, body) = infer(&host, "/v2/models/m/infer", &[]).await;
    correct(status, &body);
    // The guard ran on behalf of version 1 (the decision log says so).
    let decisions = host.decisions().recent(100);
    let text = serde_json::to_string(&decisions).unwrap();
    assert!(text.contains("\"range\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_shows_policy_to_the_admin_only() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(test_config(dir.path())).unwrap();
    let range = std::fs::read(airlock_artifacts::RANGE_GUARD).unwrap();
    host.upload("range", &range, true).unwrap();
    let digits = digits();
    let secret_config = "config = { inputs = { input = { min = 0, max = 16.75 } } }";
    let guarded = manifest(&format!(
        "deadline_ms = 150\n[[guards.request]]\nname = \"range\"\n{secret_config}\n"
    ));
    let report = put(&host, "open", &digits, Some(&guarded), None, true).unwrap();
    let keyed = manifest(&format!("api_keys = [\"{KEY}\"]\n"));
    put(&host, "keyed", &digits, Some(&keyed), None, true).unwrap();
    let admin = bearer(ADMIN_TOKEN);
    let key = bearer(KEY);

    for path in ["/v2/models/open", "/v2/models/open/versions/1"] {
        // Anyone: the protocol's fields, nothing of the policy.
        for headers in [vec![], vec![("authorization", "Bearer wrong-admin-token")]] {
            let (status, meta) = call(&host, "GET", path, &headers, Body::empty()).await;
            assert_eq!(status, 200, "{meta}");
            assert_eq!(meta["name"], "open");
            assert_eq!(meta["versions"], json!(["1"]));
            assert_eq!(meta["inputs"][0]["name"], "input");
            assert_eq!(meta["outputs"][0]["name"], "probabilities");
            assert!(meta.get("airlock").is_none(), "{meta}");
            let text = meta.to_string();
            for hidden in ["range", "16.75", &report.sha256, "deadline"] {
                assert!(!text.contains(hidden), "{hidden} shown: {text}");
            }
        }
        // The admin: all of it.
        let (status, meta) = call(
            &host,
            "GET",
            path,
            &[("authorization", admin.as_str())],
            Body::empty(),
        )
        .await;
        assert_eq!(status, 200, "{meta}");
        assert_eq!(meta["airlock"]["sha256"], report.sha256.as_str());
        let policy = &meta["airlock"]["policy"];
        assert_eq!(policy["limits"]["deadline_ms"], 150, "{meta}");
        assert_eq!(policy["guards"]["request"][0]["name"], "range");
        assert_eq!(
            policy["guards"]["request"][0]["config"]["inputs"]["input"]["max"],
            16.75
        );
    }

    // A key-protected model: nothing without a key, the protocol's fields
    // with one, and its key hashes to no one.
    let (status, body) = call(&host, "GET", "/v2/models/keyed", &[], Body::empty()).await;
    assert_eq!(status, 401, "{body}");
    let (status, meta) = call(
        &host,
        "GET",
        "/v2/models/keyed",
        &[("authorization", key.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert!(meta.get("airlock").is_none(), "{meta}");
    let (status, meta) = call(
        &host,
        "GET",
        "/v2/models/keyed",
        &[("authorization", admin.as_str())],
        Body::empty(),
    )
    .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["airlock"]["policy"]["api_key_required"], true);
    let hash = airlock::manifest::hash_key(KEY);
    assert!(!meta.to_string().contains(&hash[7..]), "{meta}");
    // Readiness stays open (it tells existence only), and callers are served.
    let (status, _) = call(&host, "GET", "/v2/models/keyed/ready", &[], Body::empty()).await;
    assert_eq!(status, 200);
    let (status, body) = infer(&host, "/v2/models/open/infer", &[]).await;
    correct(status, &body);
}

/// A multipart upload body with a `model` and a `manifest` part.
fn multipart(wasm: &[u8], manifest: &str) -> (String, Vec<u8>) {
    let boundary = "escapes-test-boundary-7f3a9c";
    let mut body = Vec::new();
    for (name, content) in [("model", wasm), ("manifest", manifest.as_bytes())] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\ncontent-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A host that trusts one fresh key; returns it with that key's secret and
/// public halves. `require` sets the server-wide flag.
fn signing_host(data: &Path, require: bool) -> (Host, String, String) {
    let (secret, public) = signing::generate().unwrap();
    let mut config = test_config(data);
    config.trusted_keys = TrustedKeys::from_hex([public.as_str()]).unwrap();
    config.require_signatures = require;
    (Host::new(config).unwrap(), secret, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_replayed_with_another_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (host, secret, public) = signing_host(dir.path(), false);
    let digits = digits();
    let signed_text = format!("require_signatures = true\napi_keys = [\"{KEY}\"]\n");
    let signed_manifest = manifest(&signed_text);
    let signature = signing::sign(&secret, &digits, Some(&signed_manifest)).unwrap();
    let report = put(
        &host,
        "s",
        &digits,
        Some(&signed_manifest),
        Some(&signature),
        true,
    )
    .unwrap();
    assert!(report.created && report.active);
    let key = bearer(KEY);
    let admin = bearer(ADMIN_TOKEN);

    // The attack: the same bytes and signature, a manifest without keys or
    // the signature requirement (and with other limits), over HTTP.
    for replayed in ["max_concurrency = 100\n", ""] {
        let (content_type, body) = if replayed.is_empty() {
            ("application/wasm".to_owned(), digits.clone())
        } else {
            multipart(&digits, replayed)
        };
        let (status, answer) = call(
            &host,
            "POST",
            "/v2/repository/models/s/versions?activate=true",
            &[
                ("authorization", admin.as_str()),
                ("content-type", content_type.as_str()),
                (signing::SIGNATURE_HEADER, signature.as_str()),
            ],
            Body::from(body),
        )
        .await;
        assert_eq!(status, 403, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("does not verify"), "{error}");
    }
    let index = host.list().unwrap();
    assert_eq!(index[0].index.versions.len(), 1, "nothing was stored");
    assert_eq!(index[0].index.active.as_deref(), Some("1"));
    assert_eq!(
        index[0].index.versions[0].signed_by.as_deref(),
        Some(public.as_str())
    );
    assert_eq!(
        index[0].index.versions[0].signature.as_deref(),
        Some(signature.as_str())
    );
    // Still key-protected, and its callers are served.
    let (status, body) = infer(&host, "/v2/models/s/infer", &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = infer(&host, "/v2/models/s/infer", &[("authorization", &key)]).await;
    correct(status, &body);

    // The signer can change the policy: a signature over the new manifest.
    let relaxed = manifest("require_signatures = true\nmax_concurrency = 4\n");
    let resigned = signing::sign(&secret, &digits, Some(&relaxed)).unwrap();
    let report = put(&host, "s", &digits, Some(&relaxed), Some(&resigned), true).unwrap();
    assert_eq!((report.version.as_str(), report.active), ("2", true));
    let (status, body) = infer(&host, "/v2/models/s/infer", &[]).await;
    correct(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_and_rollback_refuse_versions_whose_signature_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (host, secret, _) = signing_host(dir.path(), false);
    let digits = digits();
    // v1: unsigned, before the model required signatures.
    put(&host, "r", &digits, None, None, true).unwrap();
    // v2: signed, and from now on the model requires signatures.
    let strict = manifest("require_signatures = true\n");
    let signature = signing::sign(&secret, &digits, Some(&strict)).unwrap();
    put(&host, "r", &digits, Some(&strict), Some(&signature), true).unwrap();
    let admin = bearer(ADMIN_TOKEN);

    // The attack: back to the unsigned version, both ways, over HTTP.
    for path in [
        "/v2/repository/models/r/versions/1/activate",
        "/v2/repository/models/r/rollback",
    ] {
        let (status, body) = call(
            &host,
            "POST",
            path,
            &[("authorization", admin.as_str())],
            Body::empty(),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("version 1") && error.contains("without a signature"),
            "{error}"
        );
    }
    let error = host.activate("r", "1").unwrap_err();
    assert!(
        matches!(
            &error,
            RepoError::Signature(SignatureError::Stored { version, reason, .. })
                if version == "1" && **reason == SignatureError::Unsigned
        ),
        "{error}"
    );
    let index = &host.list().unwrap()[0].index;
    assert_eq!(index.active.as_deref(), Some("2"), "nothing changed");
    // The unsigned version is not served on its own route either.
    let (status, body) = infer(&host, "/v2/models/r/versions/1/infer", &[]).await;
    assert_eq!(status, 404, "{body}");
    // The signed one is.
    let (status, body) = infer(&host, "/v2/models/r/infer", &[]).await;
    correct(status, &body);
    let (status, body) = infer(&host, "/v2/models/r/versions/2/infer", &[]).await;
    correct(status, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_edited_in_the_store_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (secret, public) = signing::generate().unwrap();
    let (_, stranger) = signing::generate().unwrap();
    let mut config = test_config(&data);
    config.trusted_keys = TrustedKeys::from_hex([public.as_str()]).unwrap();
    config.require_signatures = true;
    let digits = digits();
    let keyed = manifest(&format!("api_keys = [\"{KEY}\"]\n"));
    {
        let host = Host::new(config.clone()).unwrap();
        for name in ["ok", "sig", "signer", "policy", "old"] {
            let signature = signing::sign(&secret, &digits, None).unwrap();
            put(&host, name, &digits, None, Some(&signature), true).unwrap();
        }
        // "policy" and "old" get a key-protected v2, active.
        for name in ["policy", "old"] {
            let signature = signing::sign(&secret, &digits, Some(&keyed)).unwrap();
            put(&host, name, &digits, Some(&keyed), Some(&signature), true).unwrap();
        }
    }
    let edit = |name: &str, change: &dyn Fn(&mut Value)| {
        let path = data.join(format!("models/{name}/index.json"));
        let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        change(&mut index);
        std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    };
    // The attacks, on the active version: another signature, another
    // signer, the key requirement dropped from the signed manifest; and on
    // an inactive version, a flipped signature byte.
    edit("sig", &|i| {
        let signature = signing::sign(&secret, b"other bytes", None).unwrap();
        i["versions"][0]["signature"] = signature.into();
    });
    edit("signer", &|i| {
        i["versions"][0]["signed_by"] = stranger.clone().into()
    });
    edit("policy", &|i| {
        i["versions"][1]["manifest"]
            .as_object_mut()
            .unwrap()
            .remove("api_keys");
    });
    edit("old", &|i| {
        let signature = i["versions"][0]["signature"].as_str().unwrap();
        let flipped = format!(
            "{}{}",
            if signature.starts_with('0') { "1" } else { "0" },
            &signature[1..]
        );
        i["versions"][0]["signature"] = flipped.into();
    });

    // `airlock serve`'s start over a data directory.
    let host = Host::new(config.clone()).unwrap();
    let mut served = host.restore().unwrap();
    served.sort();
    assert_eq!(served, ["ok", "old"]);
    for name in ["sig", "signer", "policy"] {
        assert!(host.registry().active(name).is_none(), "{name} is served");
    }
    // "old" serves its intact active version, not the edited one.
    assert!(host.registry().version("old", "2").is_some());
    assert!(host.registry().version("old", "1").is_none());
    // Loading it by hand says why.
    let error = host.load_model("policy").unwrap_err().to_string();
    assert!(
        error.contains("version 2 of \"policy\"") && error.contains("does not verify"),
        "{error}"
    );
    let error = host.load_model("signer").unwrap_err().to_string();
    assert!(error.contains("does not verify"), "{error}");

    // A start that reads the store first (Lambda, S3): the same refusals.
    let (opened, report) = Host::open(config).unwrap();
    let mut failed = report.refresh.failed.clone();
    failed.sort();
    assert_eq!(failed, ["policy", "sig", "signer"]);
    assert!(opened.registry().active("policy").is_none());

    // The untouched models are served, correctly.
    for host in [&host, &opened] {
        let (status, body) = infer(host, "/v2/models/ok/infer", &[]).await;
        correct(status, &body);
        let key = bearer(KEY);
        let (status, body) = infer(host, "/v2/models/old/infer", &[("authorization", &key)]).await;
        correct(status, &body);
    }
}
