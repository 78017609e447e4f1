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
        let (status, _, again) = split(client.get(&versioned).send().await.unwrap()).await;
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
