//! The Open Inference Protocol v2 endpoints, happy paths.

use serde_json::json;

use crate::support::{self, argmax_json, digits_test, post_json, server, split};

#[tokio::test]
async fn server_metadata_and_health() {
    let s = server();
    let client = s.client();
    for (path, key) in [("/v2/health/live", "live"), ("/v2/health/ready", "ready")] {
        let (status, _, body) = split(client.get(s.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body[key], true, "{path}: {body}");
    }
    let (status, _, body) = split(client.get(s.url("/v2")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "airlock");
    assert!(body["version"].is_string());
    assert!(body["extensions"].is_array());
}

#[tokio::test]
async fn model_metadata_and_readiness() {
    let s = server();
    let client = s.client();
    for (name, platform) in [("digits", "rust-mlp"), ("digits-onnx", "onnx-tract")] {
        let (status, _, meta) = split(
            client
                .get(s.url(&format!("/v2/models/{name}")))
                .bearer_auth(support::ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{meta}");
        assert_eq!(meta["name"], name);
        assert_eq!(meta["platform"], platform);
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(
            meta["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        );
        assert_eq!(
            meta["outputs"],
            json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}])
        );
        let digest = meta["airlock"]["sha256"].as_str().unwrap();
        assert_eq!(digest.len(), 64);

        let versioned = s.url(&format!("/v2/models/{name}/versions/1"));
        let (status, _, again) = split(
            client
                .get(&versioned)
                .bearer_auth(support::ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(again, meta);

        for path in [
            format!("/v2/models/{name}/ready"),
            format!("/v2/models/{name}/versions/1/ready"),
        ] {
            let (status, _, body) = split(client.get(s.url(&path)).send().await.unwrap()).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(body["ready"], true);
        }
    }
}

#[tokio::test]
async fn infer_single_row_echoes_id_and_predicts() {
    let s = server();
    let client = s.client();
    let test = digits_test();
    for name in ["digits", "digits-onnx"] {
        let (status, _, body) = post_json(
            &client,
            &s.url(&format!("/v2/models/{name}/infer")),
            &support::digits_request(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_name"], name);
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], "probe");
        assert_eq!(body["parameters"]["sha256"].as_str().unwrap().len(), 64);
        let out = &body["outputs"][0];
        assert_eq!(out["name"], "probabilities");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([1, 10]));
        let probs = out["data"].as_array().unwrap();
        let sum: f64 = probs.iter().map(|p| p.as_f64().unwrap()).sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "{name}: probabilities sum to {sum}"
        );
        assert_eq!(argmax_json(probs), test.reference_predictions[0], "{name}");
    }
}

#[tokio::test]
async fn infer_batched_flat_and_nested_agree() {
    let s = server();
    let client = s.client();
    let test = digits_test();
    let rows = &test.inputs[..16];
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let nested =
        json!({"inputs": [{"name": "input", "shape": [16, 64], "datatype": "FP32", "data": rows}]});
    let flat =
        json!({"inputs": [{"name": "input", "shape": [16, 64], "datatype": "FP32", "data": flat}]});
    for name in ["digits", "digits-onnx"] {
        let url = s.url(&format!("/v2/models/{name}/versions/1/infer"));
        let (s1, _, a) = post_json(&client, &url, &flat).await;
        let (s2, _, b) = post_json(&client, &url, &nested).await;
        assert_eq!((s1, s2), (200, 200), "{a} {b}");
        assert!(a.get("id").is_none(), "no id was sent, none comes back");
        assert_eq!(a["outputs"], b["outputs"], "{name}: flat and nested differ");
        assert_eq!(a["outputs"][0]["shape"], json!([16, 10]));
        let data = a["outputs"][0]["data"].as_array().unwrap();
        for (i, row) in data.chunks(10).enumerate() {
            assert_eq!(
                argmax_json(row),
                test.reference_predictions[i],
                "{name} row {i}"
            );
        }
    }
}

#[tokio::test]
async fn requested_outputs_and_parameters_are_accepted() {
    let s = server();
    let client = s.client();
    let mut request = support::digits_request();
    request["outputs"] = json!([{"name": "probabilities", "parameters": {"binary_data": false}}]);
    request["parameters"] = json!({"priority": 1, "tag": "x", "fast": true, "ratio": 0.5});
    let (status, _, body) = post_json(&client, &s.url("/v2/models/digits/infer"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn http2_is_negotiated_and_http1_works() {
    let s = server();
    let h2 = s
        .client()
        .get(s.url("/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = s
        .client_builder_with_alpn(&[b"http/1.1"])
        .http1_only()
        .build()
        .unwrap()
        .get(s.url("/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
}

#[tokio::test]
async fn fixture_echo_round_trips() {
    let s = server();
    let client = s.client();
    let request = json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.5, -2, 3]}],
                         "parameters": {"mode": "echo"}});
    let (status, _, body) =
        post_json(&client, &s.url("/v2/models/misbehave/infer"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1.5, -2.0, 3.0]));
    assert_eq!(body["outputs"][0]["name"], "y");
}

/// POSTs a request in the binary tensor data format: the JSON object, then
/// `binary`, with the JSON's length in `Inference-Header-Content-Length`.
async fn post_binary(
    client: &reqwest::Client,
    url: &str,
    json: &serde_json::Value,
    binary: &[u8],
) -> reqwest::Response {
    let mut body = serde_json::to_vec(json).unwrap();
    let json_len = body.len();
    body.extend_from_slice(binary);
    client
        .post(url)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", json_len)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Splits a response with binary outputs into its JSON object and the
/// binary data after it, checking the extension's headers.
async fn split_binary(response: reqwest::Response) -> (serde_json::Value, Vec<u8>) {
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/octet-stream");
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    let json = serde_json::from_slice(&body[..json_len]).unwrap();
    (json, body[json_len..].to_vec())
}

/// The output called `name` of a response.
fn output<'a>(response: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name:?} in {response}"))
}

#[tokio::test]
async fn binary_tensor_data_gives_the_json_answer() {
    let s = server();
    let client = s.client();
    let (_, _, meta) = split(client.get(s.url("/v2")).send().await.unwrap()).await;
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));

    let test = digits_test();
    let rows: Vec<f32> = test.inputs[..8].iter().flatten().copied().collect();
    let binary: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let as_json =
        json!({"inputs": [{"name": "input", "shape": [8, 64], "datatype": "FP32", "data": rows}]});
    let as_binary = json!({
        "id": "bin",
        "inputs": [{"name": "input", "shape": [8, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": binary.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
    });
    for name in ["digits", "digits-onnx"] {
        let url = s.url(&format!("/v2/models/{name}/infer"));
        let (status, _, plain) = post_json(&client, &url, &as_json).await;
        assert_eq!(status, 200, "{plain}");
        let (head, tail) =
            split_binary(post_binary(&client, &url, &as_binary, &binary).await).await;
        assert_eq!(head["id"], "bin");
        let out = output(&head, "probabilities");
        assert_eq!(out["shape"], json!([8, 10]));
        assert_eq!(out["parameters"]["binary_data_size"], 8 * 10 * 4);
        assert!(out.get("data").is_none(), "{out}");
        assert_eq!(tail.len(), 8 * 10 * 4);
        let from_binary: Vec<f32> = tail
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let from_json: Vec<f32> = output(&plain, "probabilities")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(from_binary, from_json, "{name}");
        for (i, row) in from_binary.chunks(10).enumerate() {
            let row: Vec<f64> = row.iter().map(|x| f64::from(*x)).collect();
            assert_eq!(support::argmax(&row), test.reference_predictions[i]);
        }
    }
}

#[tokio::test]
async fn binary_bytes_tensors_in_and_out() {
    let s = server();
    let client = s.client();
    let url = s.url("/v2/models/langid/infer");
    let texts = [
        "the weather is lovely today and we are going for a walk in the park",
        "le temps est magnifique aujourd'hui et nous allons nous promener",
    ];
    let mut binary = Vec::new();
    for text in texts {
        binary.extend_from_slice(&(text.len() as u32).to_le_bytes());
        binary.extend_from_slice(text.as_bytes());
    }
    let request = json!({
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": binary.len()}}],
        "parameters": {"binary_data_output": true},
        "outputs": [{"name": "language"},
                    {"name": "probabilities", "parameters": {"binary_data": false}}],
    });
    let (head, tail) = split_binary(post_binary(&client, &url, &request, &binary).await).await;
    assert!(output(&head, "probabilities")["data"].is_array());
    let language = output(&head, "language");
    assert_eq!(language["parameters"]["binary_data_size"], tail.len());
    let mut labels = Vec::new();
    let mut rest = &tail[..];
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        labels.push(String::from_utf8(rest[4..4 + len].to_vec()).unwrap());
        rest = &rest[4 + len..];
    }

    let (status, _, plain) = post_json(
        &client,
        &url,
        &json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(json!(labels), output(&plain, "language")["data"]);
    assert_eq!(labels, ["en", "fr"]);
}

#[tokio::test]
async fn malformed_binary_requests_are_400s() {
    let s = server();
    let client = s.client();
    let url = s.url("/v2/models/digits/infer");
    let request = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                      "parameters": {"binary_data_size": 256}}]});
    // 255 of the 256 bytes the input claims.
    let (status, kind, body) = split(post_binary(&client, &url, &request, &[0; 255]).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(kind, None, "a caller's mistake, not a model's");
    assert!(
        body["error"].as_str().unwrap().contains("binary_data_size"),
        "{body}"
    );
    // A header that is not a length.
    let response = client
        .post(&url)
        .header("inference-header-content-length", "lots")
        .body(serde_json::to_vec(&support::digits_request()).unwrap())
        .send()
        .await
        .unwrap();
    let (status, _, body) = split(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Inference-Header-Content-Length")
    );
    support::assert_still_serving(&client).await;
}
