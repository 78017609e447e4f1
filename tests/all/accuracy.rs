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
