//! Real Open Inference Protocol clients against the server.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{digits_test, server};

/// Triton's Python HTTP client (`tritonclient`, installed by tests/run)
/// runs `tests/triton_client.py` against the shared server: health,
/// metadata, digits inference with binary and with JSON tensors, BYTES
/// tensors to langid, and a refused request.
#[test]
fn tritonclient_infers_over_tls_with_binary_and_json_tensors() {
    let s = server();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/test-venv/bin/python3");
    assert!(
        python.is_file(),
        "{} is missing: run the tests with tests/run, which installs \
         tests/requirements.txt into target/test-venv",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("triton_client.py"))
        .arg(s.addr.to_string())
        .arg(&s.ca_path)
        .arg(root.join("../guest-models/data/digits_test.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "triton_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(report["live"], true);
    assert_eq!(report["ready"], true);
    assert_eq!(report["model_ready"], true);
    assert_eq!(report["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(
        report["model_inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    let expected = &digits_test().reference_predictions[..32];
    for mode in ["binary", "json"] {
        let answer = &report[mode];
        assert_eq!(answer["id"], "tc", "{mode}");
        assert_eq!(answer["shape"], json!([32, 10]), "{mode}");
        assert_eq!(answer["dtype"], "float32", "{mode}");
        assert_eq!(answer["predictions"], json!(expected), "{mode}");
    }
    assert_eq!(report["languages"], json!(["en", "de"]));
    let refused = &report["refused"];
    assert_eq!(refused["status"], "400", "{report}");
    assert!(
        refused["message"].as_str().unwrap().contains("shape"),
        "{refused}"
    );
}
