//! The served models against the committed held-out split: the same
//! predictions as the reference scikit-learn model.

use serde_json::json;

use crate::support::{argmax, digits_test, post_json, server};

/// Runs the held-out split through model `name` and checks it against the
/// reference predictions.
pub(crate) async fn check_model(name: &str) {
    let s = server();
    let client = s.client();
    let test = digits_test();
    let url = s.url(&format!("/v2/models/{name}/infer"));
    let mut predictions = Vec::new();
    let mut max_prob_diff = 0f64;
    for (batch_index, batch) in test.inputs.chunks(64).enumerate() {
        let request = json!({"inputs": [{"name": "input", "shape": [batch.len(), 64], "datatype": "FP32", "data": batch}]});
        let (status, _, body) = post_json(&client, &url, &request).await;
        assert_eq!(status, 200, "{body}");
        let data: Vec<f64> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(data.len(), batch.len() * 10);
        for (row, probs) in data.chunks(10).enumerate() {
            predictions.push(argmax(probs));
            let reference = &test.reference_probabilities[batch_index * 64 + row];
            for (p, r) in probs.iter().zip(reference) {
                max_prob_diff = max_prob_diff.max((p - f64::from(*r)).abs());
            }
        }
    }
    let n = test.labels.len();
    assert_eq!(predictions.len(), n);
    let agree = predictions
        .iter()
        .zip(&test.reference_predictions)
        .filter(|(a, b)| a == b)
        .count();
    let correct = predictions
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| a == b)
        .count();
    let agreement = agree as f64 / n as f64;
    let accuracy = correct as f64 / n as f64;
    println!(
        "{name}: {n} held-out rows, agreement {:.2}%, accuracy {:.2}% (reference {:.2}%), max |p - p_ref| {max_prob_diff:.2e}",
        agreement * 100.0,
        accuracy * 100.0,
        test.reference_accuracy * 100.0
    );
    assert!(agreement >= 0.99, "{name}: agreement {agreement}");
    assert!(
        (accuracy - test.reference_accuracy).abs() <= 0.005,
        "{name}: accuracy {accuracy} vs reference {}",
        test.reference_accuracy
    );
    assert!(
        max_prob_diff < 1e-4,
        "{name}: probabilities differ by {max_prob_diff}"
    );
}

#[tokio::test]
async fn digits_matches_the_reference_model() {
    check_model("digits").await;
}

#[tokio::test]
async fn digits_onnx_matches_the_reference_model() {
    check_model("digits-onnx").await;
}

/// The committed held-out split of the language identifier's data.
#[derive(serde::Deserialize)]
struct LangidTest {
    labels: Vec<String>,
    texts: Vec<String>,
    targets: Vec<usize>,
    reference_predictions: Vec<usize>,
    reference_probabilities: Vec<Vec<f64>>,
    reference_accuracy: f64,
}

#[tokio::test]
async fn langid_matches_the_reference_model() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-models/data/langid_test.json");
    let test: LangidTest = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let classes = test.labels.len();
    let s = server();
    let client = s.client();
    let url = s.url("/v2/models/langid/infer");
    let (mut agree, mut correct, mut max_prob_diff) = (0, 0, 0f64);
    for (batch_index, batch) in test.texts.chunks(100).enumerate() {
        let request = json!({"inputs": [{"name": "text", "shape": [batch.len()], "datatype": "BYTES", "data": batch}]});
        let (status, _, body) = post_json(&client, &url, &request).await;
        assert_eq!(status, 200, "{body}");
        let outputs = body["outputs"].as_array().unwrap();
        let probs = outputs
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap();
        let languages = outputs.iter().find(|o| o["name"] == "language").unwrap();
        assert_eq!(probs["shape"], json!([batch.len(), classes]));
        assert_eq!(languages["datatype"], "BYTES");
        let data: Vec<f64> = probs["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (row, p) in data.chunks(classes).enumerate() {
            let i = batch_index * 100 + row;
            let predicted = argmax(p);
            assert_eq!(languages["data"][row], test.labels[predicted].as_str());
            agree += usize::from(predicted == test.reference_predictions[i]);
            correct += usize::from(predicted == test.targets[i]);
            for (a, b) in p.iter().zip(&test.reference_probabilities[i]) {
                max_prob_diff = max_prob_diff.max((a - b).abs());
            }
        }
    }
    let n = test.texts.len();
    let (agreement, accuracy) = (agree as f64 / n as f64, correct as f64 / n as f64);
    println!(
        "langid: {n} held-out texts, agreement {:.2}%, accuracy {:.2}% (reference {:.2}%), max |p - p_ref| {max_prob_diff:.2e}",
        agreement * 100.0,
        accuracy * 100.0,
        test.reference_accuracy * 100.0
    );
    // The guest computes what the reference computed (same features, f32
    // weights, f64 arithmetic): only the summation order differs.
    assert!(agreement >= 0.999, "agreement {agreement}");
    assert!((accuracy - test.reference_accuracy).abs() <= 0.002);
    assert!(
        max_prob_diff < 1e-5,
        "probabilities differ by {max_prob_diff}"
    );
}

/// JSON cannot carry bytes that are not UTF-8, so this goes to the model
/// directly: it refuses them with a typed error naming the element.
#[test]
fn langid_refuses_bytes_that_are_not_utf8() {
    use airlock::bindings::{GuestError, InferRequest, Tensor, TensorData};
    let (runtime, cache) = crate::guards::runtime();
    let wasm = std::fs::read(airlock_artifacts::LANGID).unwrap();
    let policy = airlock::manifest::Policy {
        limits: crate::support::TEST_LIMITS,
        max_request_bytes: 1 << 20,
        max_elements: 1 << 20,
        max_concurrency: None,
        api_keys: Vec::new(),
        require_signatures: false,
        guards: Default::default(),
    };
    let (model, _) =
        airlock::LoadedModel::load(runtime, cache, "langid", "1", &wasm, None, policy).unwrap();
    let request = InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "text".into(),
            shape: vec![2],
            data: TensorData::Bytes(vec![b"hello world".to_vec(), b"caf\xe9".to_vec()]),
        }],
        outputs: Vec::new(),
    };
    match model.infer(&request).unwrap() {
        Err(GuestError::InvalidInput(message)) => {
            assert!(message.contains("element 1 is not UTF-8"), "{message}")
        }
        other => panic!("expected invalid-input, got {other:?}"),
    }
}

/// The digits guest is built without std (see its `lib.rs`), so that a fresh
/// instance links nothing but the contract's types: no WASI, no adapter. A
/// change that brings std back (one `println!` does) makes every request
/// slower, and fails here.
#[test]
fn the_digits_component_imports_nothing() {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component =
        wasmtime::component::Component::from_file(&engine, airlock_artifacts::DIGITS).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !name.starts_with("airlock:inference/types@"))
        .collect();
    assert!(imports.is_empty(), "digits imports {imports:?}");
    // A std guest, built the same way, does import WASI.
    let echo =
        wasmtime::component::Component::from_file(&engine, airlock_artifacts::TEXT_ECHO).unwrap();
    assert!(
        echo.component_type()
            .imports(&engine)
            .any(|(name, _)| name.starts_with("wasi:cli/")),
        "text-echo was expected to import wasi:cli"
    );
}
