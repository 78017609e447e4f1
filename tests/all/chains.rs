//! Guard chains over real HTTPS: guards uploaded like models, named in a
//! model's manifest, run in order before and after the model, every
//! decision in the decision log and the metrics, and every way a guard can
//! fail closing the request rather than opening it.

use serde_json::{Value, json};

use crate::pii;
use crate::support::{
    ADMIN_TOKEN, assert_still_serving, post_json, server, split, upload_with_manifest,
};

fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Uploads `path` as `name` (activating it) and returns the response body.
async fn upload(client: &reqwest::Client, name: &str, path: &str, manifest: Option<&str>) -> Value {
    let (status, body) = upload_with_manifest(client, name, wasm(path), manifest, true).await;
    assert!(status == 200 || status == 201, "{name}: {status} {body}");
    body
}

/// Uploads the `text-echo` model as `name`, guarded as `manifest` says.
async fn echo_model(client: &reqwest::Client, name: &str, manifest: &str) {
    upload(client, name, airlock_artifacts::TEXT_ECHO, Some(manifest)).await;
}

fn text_request(texts: &[&str]) -> Value {
    json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]})
}

/// POSTs `texts` to `model` and returns (status, error kind, body).
async fn infer_texts(
    client: &reqwest::Client,
    model: &str,
    texts: &[&str],
) -> (u16, Option<String>, Value) {
    let url = server().url(&format!("/v2/models/{model}/infer"));
    post_json(client, &url, &text_request(texts)).await
}

/// What `text-echo` answered: the text as the model received it.
fn echoed(body: &Value) -> Vec<String> {
    body["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs in {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn decisions(client: &reqwest::Client) -> Vec<Value> {
    let response = client
        .get(server().url("/v2/repository/decisions?limit=4096"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, _, body) = split(response).await;
    assert_eq!(status, 200, "{body}");
    body["decisions"].as_array().unwrap().clone()
}

async fn metrics(client: &reqwest::Client) -> String {
    let response = client
        .get(server().url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_pii_redactor_strips_personal_data_before_the_model_sees_it() {
    let client = server().client();
    let body = upload(&client, "ch-pii", airlock_artifacts::PII_REDACTOR, None).await;
    assert_eq!(body["kind"], "guard", "{body}");
    echo_model(
        &client,
        "ch-pii-echo",
        "[[guards.request]]\nname = \"ch-pii\"\n",
    )
    .await;

    // Every line of the corpus that carries personal data, in one batch.
    let corpus: Vec<pii::Line> = pii::corpus()
        .into_iter()
        .filter(|l| !l.pii.is_empty())
        .collect();
    assert!(corpus.len() > 100, "{} lines", corpus.len());
    let texts: Vec<&str> = corpus.iter().map(|l| l.text.as_str()).collect();
    let (status, _, body) = infer_texts(&client, "ch-pii-echo", &texts).await;
    assert_eq!(status, 200, "{body}");
    let seen = echoed(&body);
    assert_eq!(seen.len(), corpus.len());
    let mut values = 0;
    for (line, seen) in corpus.iter().zip(&seen) {
        for gold in &line.pii {
            values += 1;
            assert!(
                !seen.contains(&gold.value),
                "the model saw {} {:?} in {seen:?}",
                gold.kind,
                gold.value
            );
        }
        assert!(seen.contains('['), "no placeholder in {seen:?}");
    }
    assert!(values >= corpus.len());

    // The decision log has the rewrite, and not a byte of the payload.
    let log = decisions(&client).await;
    let ours: Vec<&Value> = log.iter().filter(|d| d["model"] == "ch-pii-echo").collect();
    assert_eq!(ours.len(), 1, "{log:?}");
    assert_eq!(ours[0]["guard"], "ch-pii");
    assert_eq!(ours[0]["guard_version"], "1");
    assert_eq!(ours[0]["stage"], "request");
    assert_eq!(ours[0]["decision"], "rewrite");
    assert!(ours[0]["micros"].as_u64().unwrap() > 0);
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains(&corpus[0].pii[0].value),
        "payload in the log"
    );

    let text = metrics(&client).await;
    let line = "airlock_guard_decisions_total{model=\"ch-pii-echo\",version=\"1\",guard=\"ch-pii\",stage=\"request\",decision=\"rewrite\"} 1";
    assert!(text.contains(line), "missing {line:?} in:\n{text}");
    assert!(text.contains(
        "airlock_guard_duration_seconds_count{model=\"ch-pii-echo\",version=\"1\",guard=\"ch-pii\",stage=\"request\"} 1"
    ));
}

#[tokio::test]
async fn the_text_model_still_answers_behind_the_redactor() {
    let client = server().client();
    upload(&client, "ch-pii-2", airlock_artifacts::PII_REDACTOR, None).await;
    let manifest =
        "[[guards.request]]\nname = \"ch-pii-2\"\nconfig = { kinds = [\"email\", \"phone\"] }\n";
    upload(
        &client,
        "ch-langid",
        airlock_artifacts::LANGID,
        Some(manifest),
    )
    .await;
    let text =
        "Bonjour, pouvez-vous m'envoyer la facture à claire.dupont@exemple.fr avant vendredi ?";
    let url = |m: &str| server().url(&format!("/v2/models/{m}/infer"));
    let request = text_request(&[text]);
    let (status, _, guarded) = post_json(&client, &url("ch-langid"), &request).await;
    assert_eq!(status, 200, "{guarded}");
    let (status, _, bare) = post_json(&client, &url("langid"), &request).await;
    assert_eq!(status, 200, "{bare}");
    let label = |body: &Value| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["datatype"] == "BYTES")
            .map(|o| o["data"][0].clone())
            .unwrap_or_else(|| panic!("no label in {body}"))
    };
    assert_eq!(label(&guarded), "fr", "{guarded}");
    assert_eq!(label(&guarded), label(&bare));
    let metadata: Value = client
        .get(server().url("/v2/models/ch-langid"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = &metadata["airlock"]["policy"]["guards"]["request"];
    assert_eq!(chain[0]["name"], "ch-pii-2", "{metadata}");
    assert_eq!(chain[0]["config"]["kinds"][1], "phone", "{metadata}");
}

#[tokio::test]
async fn guards_run_in_order_and_response_guards_see_the_model_output() {
    let client = server().client();
    upload(&client, "ch-script", airlock_artifacts::SCRIPT_GUARD, None).await;
    let manifest = "[[guards.request]]\nname = \"ch-script\"\nconfig = \"append:A\"\n\
                    [[guards.request]]\nname = \"ch-script\"\nconfig = \"append:B\"\n\
                    [[guards.response]]\nname = \"ch-script\"\nconfig = \"append:C\"\n\
                    [[guards.response]]\nname = \"ch-script\"\nconfig = \"allow\"\n";
    echo_model(&client, "ch-order", manifest).await;
    let (status, _, body) = infer_texts(&client, "ch-order", &["x", "y"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body), ["xABC", "yABC"]);

    let log = decisions(&client).await;
    let ours: Vec<(String, String)> = log
        .iter()
        .filter(|d| d["model"] == "ch-order")
        .map(|d| {
            (
                d["stage"].as_str().unwrap().to_owned(),
                d["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("request", "rewrite"),
        ("request", "rewrite"),
        ("response", "rewrite"),
        ("response", "allow"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(ours, want);
}

#[tokio::test]
async fn a_denying_guard_is_a_403_with_its_reason() {
    let client = server().client();
    upload(&client, "ch-deny", airlock_artifacts::SCRIPT_GUARD, None).await;
    echo_model(
        &client,
        "ch-deny-req",
        "[[guards.request]]\nname = \"ch-deny\"\nconfig = \"deny:no text today\"\n",
    )
    .await;
    let (status, kind, body) = infer_texts(&client, "ch-deny-req", &["x"]).await;
    assert_eq!((status, kind.as_deref()), (403, Some("denied")), "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("\"ch-deny\" denied the request: no text today"),
        "{message}"
    );

    echo_model(
        &client,
        "ch-deny-resp",
        "[[guards.response]]\nname = \"ch-deny\"\nconfig = \"deny:withheld\"\n",
    )
    .await;
    let (status, kind, body) = infer_texts(&client, "ch-deny-resp", &["x"]).await;
    assert_eq!((status, kind.as_deref()), (403, Some("denied")), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("denied the response: withheld"),
        "{body}"
    );
    assert!(body.get("outputs").is_none(), "{body}");
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_guard_that_fails_closes_the_request() {
    let client = server().client();
    upload(&client, "ch-bad", airlock_artifacts::SCRIPT_GUARD, None).await;
    for (script, want_status, want_message) in [
        // The test server's deadline is 200 ms.
        (
            "loop",
            504,
            "failed on the request: it ran past its deadline",
        ),
        ("trap", 500, "failed on the request: it trapped"),
        // A rewrite into another structure is a guard bug: not described.
        ("reshape", 500, "guard \"ch-bad\" failed on the request"),
    ] {
        let name = format!("ch-bad-{script}");
        let manifest = format!("[[guards.request]]\nname = \"ch-bad\"\nconfig = \"{script}\"\n");
        echo_model(&client, &name, &manifest).await;
        let (status, kind, body) = infer_texts(&client, &name, &["x", "y"]).await;
        assert_eq!(status, want_status, "{script}: {body}");
        assert_eq!(kind.as_deref(), Some("guard"), "{script}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(want_message), "{script}: {message}");
        assert!(body.get("outputs").is_none(), "{body}");
        assert_still_serving(&client).await;
    }
    let log = decisions(&client).await;
    let errors = log
        .iter()
        .filter(|d| d["model"].as_str().unwrap().starts_with("ch-bad-") && d["decision"] == "error")
        .count();
    assert_eq!(errors, 3, "{log:?}");
}

#[tokio::test]
async fn guards_must_exist_at_upload_and_a_missing_one_fails_closed() {
    let client = server().client();
    let echo = || wasm(airlock_artifacts::TEXT_ECHO);
    for (manifest, want) in [
        (
            "[[guards.request]]\nname = \"ch-nobody\"\n",
            "`guards.request[0]`: no guard named \"ch-nobody\"",
        ),
        (
            "[[guards.response]]\nname = \"digits\"\n",
            "`guards.response[0]`: \"digits\" is a model, not a guard",
        ),
    ] {
        let (status, body) =
            upload_with_manifest(&client, "ch-refused", echo(), Some(manifest), true).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{body}");
    }

    upload(&client, "ch-gone", airlock_artifacts::SCRIPT_GUARD, None).await;
    let pinned = "[[guards.request]]\nname = \"ch-gone\"\nversion = \"7\"\n";
    let (status, body) =
        upload_with_manifest(&client, "ch-refused", echo(), Some(pinned), true).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no version \"7\""),
        "{body}"
    );
    let (status, _) = upload_with_manifest(&client, "ch-refused", echo(), None, true).await;
    assert_eq!(status, 201);

    echo_model(
        &client,
        "ch-orphan",
        "[[guards.request]]\nname = \"ch-gone\"\n",
    )
    .await;
    let (status, _, body) = infer_texts(&client, "ch-orphan", &["x"]).await;
    assert_eq!(status, 200, "{body}");
    let admin = |path: &str| {
        client
            .post(server().url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let response = admin("/v2/repository/models/ch-gone/unload").await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, kind, body) = infer_texts(&client, "ch-orphan", &["x"]).await;
    assert_eq!((status, kind.as_deref()), (503, Some("guard")), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is not loaded"),
        "{body}"
    );
    let response = admin("/v2/repository/models/ch-gone/load").await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, body) = infer_texts(&client, "ch-orphan", &["x"]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_new_guard_version_reaches_the_models_it_guards() {
    let client = server().client();
    // Version 1 lets everything through (empty script); version 2 is the redactor.
    upload(&client, "ch-swap", airlock_artifacts::SCRIPT_GUARD, None).await;
    echo_model(
        &client,
        "ch-swap-echo",
        "[[guards.request]]\nname = \"ch-swap\"\n",
    )
    .await;
    let text = "write to ana@example.org";
    let (_, _, body) = infer_texts(&client, "ch-swap-echo", &[text]).await;
    assert_eq!(echoed(&body), [text]);

    let body = upload(&client, "ch-swap", airlock_artifacts::PII_REDACTOR, None).await;
    assert_eq!(body["version"], "2", "{body}");
    let (_, _, body) = infer_texts(&client, "ch-swap-echo", &[text]).await;
    assert_eq!(echoed(&body), ["write to [EMAIL]"]);

    let response = client
        .post(server().url("/v2/repository/models/ch-swap/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, _, body) = infer_texts(&client, "ch-swap-echo", &[text]).await;
    assert_eq!(echoed(&body), [text]);
}

#[tokio::test]
async fn guards_and_models_keep_to_their_own_names() {
    let client = server().client();
    upload(&client, "ch-own", airlock_artifacts::SCRIPT_GUARD, None).await;
    // A guard is not served for inference.
    let (status, _, body) = infer_texts(&client, "ch-own", &["x"]).await;
    assert_eq!(status, 404, "{body}");
    // A model cannot become a version of a guard, nor the reverse.
    let (status, body) = upload_with_manifest(
        &client,
        "ch-own",
        wasm(airlock_artifacts::TEXT_ECHO),
        None,
        true,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("holds guards"),
        "{body}"
    );
    let (status, body) = upload_with_manifest(
        &client,
        "digits",
        wasm(airlock_artifacts::SCRIPT_GUARD),
        None,
        false,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // Only the sandbox limits of a manifest apply to a guard.
    let (status, body) = upload_with_manifest(
        &client,
        "ch-own-2",
        wasm(airlock_artifacts::SCRIPT_GUARD),
        Some("max_concurrency = 2\n"),
        true,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`max_concurrency`"),
        "{body}"
    );
    let (status, body) = upload_with_manifest(
        &client,
        "ch-own-2",
        wasm(airlock_artifacts::SCRIPT_GUARD),
        Some("memory_mib = 16\ndeadline_ms = 50\n"),
        true,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The repository index says which is which.
    let response = client
        .post(server().url("/v2/repository/index"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (_, _, index) = split(response).await;
    let kind = |name: &str| {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["name"] == name)
            .map(|row| row["kind"].clone())
    };
    assert_eq!(kind("ch-own"), Some(json!("guard")));
    assert_eq!(kind("digits"), Some(json!("model")));
}

#[test]
fn guards_and_guarded_models_come_back_after_a_restart() {
    use airlock::Upload;
    use airlock::bindings::{InferRequest, Tensor, TensorData};
    use airlock::manifest::Manifest;

    let dir = tempfile::tempdir().unwrap();
    let manifest =
        Manifest::parse(b"[[guards.request]]\nname = \"redact\"\nconfig = \"\"\n").unwrap();
    {
        let host = airlock::Host::new(crate::support::test_config(dir.path())).unwrap();
        let guard = wasm(airlock_artifacts::PII_REDACTOR);
        let report = host.upload("redact", &guard, true).unwrap();
        assert_eq!(report.kind, airlock::store::Kind::Guard);
        let echo = wasm(airlock_artifacts::TEXT_ECHO);
        let upload = Upload {
            wasm: &echo,
            manifest: Some(&manifest),
            activate: true,
            signature: None,
        };
        host.upload_with("echo", upload).unwrap();
    }
    let host = airlock::Host::new(crate::support::test_config(dir.path())).unwrap();
    let mut restored = host.restore().unwrap();
    restored.sort();
    assert_eq!(restored, ["echo", "redact"]);
    assert!(
        host.registry().active("redact").is_none(),
        "a guard is no model"
    );
    let model = host.registry().active("echo").unwrap();
    assert_eq!(model.policy().guards, manifest.guards);
    let request = InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "text".into(),
            shape: vec![1],
            data: TensorData::Bytes(vec![b"IBAN DE89 3704 0044 0532 0130 00, thanks".to_vec()]),
        }],
        outputs: Vec::new(),
    };
    let chains = airlock::Chains::new(host.guards(), host.decisions(), &model);
    let seen = chains.check_request(request).unwrap();
    let TensorData::Bytes(text) = &seen.inputs[0].data else {
        panic!("not text")
    };
    assert_eq!(text[0], b"IBAN [IBAN], thanks");
    assert_eq!(host.decisions().recent(1)[0].guard_version, "1");
}
