//! Guards (world `policy`) loaded and run through `airlock::LoadedGuard`:
//! the allow-all fixture, the PII redactor and the range guard, what loading
//! refuses, and how sandbox failures of a guard are classified.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use airlock::artifacts::ArtifactCache;
use airlock::bindings::{
    InferRequest, InferResponse, RequestDecision, ResponseDecision, Tensor, TensorData,
};
use airlock::sandbox::EngineConfig;
use airlock::sandbox::GuestFailure;
use airlock::{GuardError, Limits, LoadError, LoadedGuard, Runtime};

use crate::pii::detect::{self, Kind};
use crate::support::{TEST_LIMITS, artifact_root, digits_test};

/// One engine for these tests (small pool: guards are small).
pub fn runtime() -> &'static (Runtime, ArtifactCache) {
    static RUNTIME: OnceLock<(Runtime, ArtifactCache)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let config = EngineConfig {
            max_memory_bytes: 256 << 20,
            max_instances: 16,
            ..EngineConfig::default()
        };
        let runtime = Runtime::new(&config).unwrap();
        let cache = ArtifactCache::new(&artifact_root(), &runtime);
        (runtime, cache)
    })
}

fn try_load(path: &str, limits: Limits) -> Result<LoadedGuard, LoadError> {
    let (runtime, cache) = runtime();
    let wasm = std::fs::read(path).unwrap();
    LoadedGuard::load(runtime, cache, "guard", "1", &wasm, limits).map(|(guard, _)| guard)
}

fn load(path: &str) -> LoadedGuard {
    try_load(path, TEST_LIMITS).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn request(inputs: Vec<Tensor>) -> InferRequest {
    InferRequest {
        id: Some("guard-test".into()),
        parameters: Vec::new(),
        inputs,
        outputs: Vec::new(),
    }
}

fn tensor(name: &str, shape: &[u64], data: TensorData) -> Tensor {
    Tensor {
        name: name.into(),
        shape: shape.to_vec(),
        data,
    }
}

fn texts(lines: &[&str]) -> Tensor {
    tensor(
        "text",
        &[lines.len() as u64],
        TensorData::Bytes(lines.iter().map(|l| l.as_bytes().to_vec()).collect()),
    )
}

fn denied(decision: RequestDecision) -> String {
    match decision {
        RequestDecision::Deny(reason) => reason,
        other => panic!("expected a denial, got {}", describe(&other)),
    }
}

fn describe(decision: &RequestDecision) -> &'static str {
    match decision {
        RequestDecision::Allow => "allow",
        RequestDecision::Deny(_) => "deny",
        RequestDecision::Rewrite(_) => "rewrite",
    }
}

fn rewritten_texts(decision: RequestDecision) -> Vec<String> {
    let RequestDecision::Rewrite(request) = decision else {
        panic!("expected a rewrite, got {}", describe(&decision));
    };
    let TensorData::Bytes(elements) = &request.inputs[0].data else {
        panic!("the rewrite changed the datatype");
    };
    elements
        .iter()
        .map(|e| String::from_utf8(e.clone()).unwrap())
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn an_empty_script_allows_requests_and_responses() {
    let guard = load(airlock_artifacts::SCRIPT_GUARD);
    let request = request(vec![texts(&["anything"])]);
    let decision = guard.check_request("", &request).unwrap();
    assert!(matches!(decision, RequestDecision::Allow));
    let response = InferResponse {
        outputs: vec![texts(&["out"])],
    };
    let decision = guard.check_response("allow", &request, &response).unwrap();
    assert!(matches!(decision, ResponseDecision::Allow));
    assert_eq!(guard.digest().len(), 64);
}

#[test]
fn loading_refuses_what_is_not_a_guard() {
    let err = try_load(airlock_artifacts::DIGITS, TEST_LIMITS).unwrap_err();
    assert!(matches!(err, LoadError::GuardWorld(_)), "{err}");
    assert!(err.to_string().contains("airlock:inference/guard"), "{err}");

    let err = try_load(airlock_artifacts::NET_PROBE, TEST_LIMITS).unwrap_err();
    assert!(matches!(err, LoadError::Forbidden(_)), "{err}");

    let (runtime, cache) = runtime();
    let err =
        LoadedGuard::load(runtime, cache, "g", "1", b"\0asm\x01\0\0\0", TEST_LIMITS).unwrap_err();
    assert!(err.to_string().contains("guards are components"), "{err}");
    let err = LoadedGuard::load(runtime, cache, "g", "1", b"not wasm", TEST_LIMITS).unwrap_err();
    assert!(matches!(err, LoadError::NotAComponent(_)), "{err}");
}

#[test]
fn guard_failures_are_classified_like_model_failures() {
    // Below the guest's initial memory: refused when loaded, not per request.
    let tiny = Limits {
        memory_bytes: 256 << 10,
        ..TEST_LIMITS
    };
    let err = try_load(airlock_artifacts::PII_REDACTOR, tiny).unwrap_err();
    assert!(
        matches!(err, LoadError::Instantiate(GuestFailure::MemoryCap(_))),
        "{err}"
    );

    // Room to start, not to take in a 4 MiB text: the memory cap, classified.
    let small = Limits {
        memory_bytes: 3 << 20,
        ..TEST_LIMITS
    };
    let guard = try_load(airlock_artifacts::PII_REDACTOR, small).unwrap();
    let big = "a".repeat(4 << 20);
    let err = guard
        .check_request("", &request(vec![texts(&[&big])]))
        .unwrap_err();
    assert!(
        matches!(err, GuardError::Sandbox(GuestFailure::MemoryCap(_))),
        "{err}"
    );
    // The same guard serves a normal call right after.
    let decision = guard
        .check_request("", &request(vec![texts(&["mail a@b.io"])]))
        .unwrap();
    assert_eq!(rewritten_texts(decision), ["mail [EMAIL]"]);
}

#[test]
fn pii_redactor_component_agrees_with_the_native_scanner() {
    let guard = load(airlock_artifacts::PII_REDACTOR);
    let corpus = crate::pii::corpus();
    let lines: Vec<&str> = corpus.iter().map(|l| l.text.as_str()).collect();
    let start = Instant::now();
    let decision = guard
        .check_request("", &request(vec![texts(&lines)]))
        .unwrap();
    let whole = start.elapsed();
    let redacted = rewritten_texts(decision);
    let mut changed = 0;
    for (line, out) in lines.iter().zip(&redacted) {
        let native = detect::redact(line.as_bytes(), &Kind::ALL)
            .map(|b| String::from_utf8(b).unwrap())
            .unwrap_or_else(|| (*line).to_owned());
        assert_eq!(
            *out, native,
            "component and native scanner differ on {line:?}"
        );
        if out != line {
            changed += 1;
        }
    }
    // Every line with personal data lost it: no gold value survives.
    for (line, out) in corpus.iter().zip(&redacted) {
        for gold in &line.pii {
            assert!(
                !out.contains(&gold.value),
                "{:?} survived in {out:?}",
                gold.value
            );
        }
    }
    assert!(changed >= corpus.iter().filter(|l| !l.pii.is_empty()).count());

    // Latency of one call with one typical line (fresh instance, copy in,
    // scan, copy out), for the report; not asserted.
    let one = request(vec![texts(&[lines[0]])]);
    let samples: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            guard.check_request("", &one).unwrap();
            t.elapsed()
        })
        .collect();
    println!(
        "pii-redactor: {} lines in one call {whole:?}; one line per call: median {:?}",
        lines.len(),
        median(samples)
    );
}

#[test]
fn pii_redactor_leaves_clean_and_non_text_inputs_alone() {
    let guard = load(airlock_artifacts::PII_REDACTOR);
    let clean = request(vec![texts(&[
        "Order 4111 1111 1111 1112 shipped on 2024-01-15.",
        "Ünïcödé text, version 1.2.3, nothing personal.",
    ])]);
    assert!(matches!(
        guard.check_request("", &clean).unwrap(),
        RequestDecision::Allow
    ));
    // Digits that would be a card number as text are not text here.
    let numbers = request(vec![tensor(
        "input",
        &[16],
        TensorData::Int64(vec![4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    )]);
    assert!(matches!(
        guard.check_request("", &numbers).unwrap(),
        RequestDecision::Allow
    ));
    // Bytes that are not UTF-8 are scanned and kept byte for byte.
    let mut raw = b"\xff\xfe call +44 20 7946 0958 \xc3".to_vec();
    let request = request(vec![tensor(
        "blob",
        &[1],
        TensorData::Bytes(vec![raw.clone()]),
    )]);
    let RequestDecision::Rewrite(out) = guard.check_request("", &request).unwrap() else {
        panic!("expected a rewrite");
    };
    raw.splice(8..24, b"[PHONE]".iter().copied());
    assert!(matches!(&out.inputs[0].data, TensorData::Bytes(v) if v[0] == raw));
}

#[test]
fn pii_redactor_config_selects_kinds() {
    let guard = load(airlock_artifacts::PII_REDACTOR);
    let line = "Mail jane@example.com, IBAN DE89 3704 0044 0532 0130 00.";
    let request = request(vec![texts(&[line])]);
    let only_iban = guard
        .check_request(r#"{"kinds": ["IBAN"]}"#, &request)
        .unwrap();
    assert_eq!(
        rewritten_texts(only_iban),
        ["Mail jane@example.com, IBAN [IBAN]."]
    );
    let all = guard.check_request(r#"{}"#, &request).unwrap();
    assert_eq!(rewritten_texts(all), ["Mail [EMAIL], IBAN [IBAN]."]);

    for (config, want) in [
        (r#"{"kinds": ["SSN"]}"#, "unknown kind \"SSN\""),
        (r#"{"kind": ["EMAIL"]}"#, "unknown field"),
        ("not json", "invalid configuration"),
    ] {
        let reason = denied(guard.check_request(config, &request).unwrap());
        assert!(reason.contains(want), "{config}: {reason}");
    }
}

#[test]
fn pii_redactor_redacts_text_outputs() {
    let guard = load(airlock_artifacts::PII_REDACTOR);
    let request = request(vec![texts(&["who is on call?"])]);
    let response = InferResponse {
        outputs: vec![
            texts(&["Call Ana on 06 12 34 56 78."]),
            tensor("scores", &[1], TensorData::Fp32(vec![0.5])),
        ],
    };
    let ResponseDecision::Rewrite(out) = guard.check_response("", &request, &response).unwrap()
    else {
        panic!("expected a rewrite");
    };
    assert!(
        matches!(&out.outputs[0].data, TensorData::Bytes(v) if v[0] == b"Call Ana on [PHONE].")
    );
    assert!(matches!(&out.outputs[1].data, TensorData::Fp32(v) if v == &[0.5]));
}

const DIGITS_RANGE: &str = r#"{"inputs": {"input": {"min": 0, "max": 16}}}"#;

#[test]
fn range_guard_refuses_nan_and_infinities() {
    let guard = load(airlock_artifacts::RANGE_GUARD);
    let mut pixels = vec![1.0f32; 2 * 64];
    pixels[64 + 3] = f32::NAN;
    let nan = request(vec![tensor("input", &[2, 64], TensorData::Fp32(pixels))]);
    // With or without a configured range.
    for config in ["", DIGITS_RANGE] {
        let reason = denied(guard.check_request(config, &nan).unwrap());
        assert_eq!(
            reason,
            "input \"input\" element 67 [1, 3]: NaN is not a number"
        );
    }
    let inf = request(vec![tensor(
        "x",
        &[3],
        TensorData::Fp64(vec![0.0, f64::NEG_INFINITY, 1.0]),
    )]);
    let reason = denied(guard.check_request("", &inf).unwrap());
    assert_eq!(reason, "input \"x\" element 1: -Inf is not finite");
    // FP16 travels as bit patterns: 0x7e00 is a NaN, 0x7c00 +Inf.
    let half = request(vec![tensor(
        "h",
        &[1, 3],
        TensorData::Fp16(vec![0x3c00, 0x7c00, 0x7e00]),
    )]);
    let reason = denied(guard.check_request("", &half).unwrap());
    assert_eq!(reason, "input \"h\" element 1 [0, 1]: +Inf is not finite");
    // Finite values pass when nothing else is configured.
    let fine = request(vec![tensor(
        "h",
        &[2],
        TensorData::Fp16(vec![0x3c00, 0xc000]),
    )]);
    assert!(matches!(
        guard.check_request("", &fine).unwrap(),
        RequestDecision::Allow
    ));
}

#[test]
fn range_guard_enforces_configured_ranges() {
    let guard = load(airlock_artifacts::RANGE_GUARD);
    // Every held-out digits image is in 0..=16.
    let test = digits_test();
    let rows: Vec<f32> = test.inputs[..32].concat();
    let ok = request(vec![tensor("input", &[32, 64], TensorData::Fp32(rows))]);
    assert!(matches!(
        guard.check_request(DIGITS_RANGE, &ok).unwrap(),
        RequestDecision::Allow
    ));

    let mut pixels = test.inputs[0].clone();
    pixels[10] = 17.0;
    let over = request(vec![tensor("input", &[1, 64], TensorData::Fp32(pixels))]);
    let reason = denied(guard.check_request(DIGITS_RANGE, &over).unwrap());
    assert_eq!(
        reason,
        "input \"input\" element 10 [0, 10]: 17 is above the maximum 16"
    );
    // Without the configuration 17 is fine.
    assert!(matches!(
        guard.check_request("", &over).unwrap(),
        RequestDecision::Allow
    ));

    let ints = request(vec![tensor("ids", &[3], TensorData::Int32(vec![5, -2, 7]))]);
    let reason = denied(
        guard
            .check_request(r#"{"inputs": {"ids": {"min": 0}}}"#, &ints)
            .unwrap(),
    );
    assert_eq!(reason, "input \"ids\" element 1: -2 is below the minimum 0");
}

#[test]
fn range_guard_refuses_a_configuration_it_cannot_apply() {
    let guard = load(airlock_artifacts::RANGE_GUARD);
    let request = request(vec![
        tensor("input", &[2], TensorData::Fp32(vec![1.0, 2.0])),
        texts(&["hello"]),
    ]);
    for (config, want) in [
        (
            r#"{"inputs": {"input": {"min": 0, "maximum": 1}}}"#,
            "unknown field",
        ),
        (
            r#"{"inputs": {"input": {"min": 2, "max": 1}}}"#,
            "min 2 above max 1",
        ),
        (
            r#"{"inputs": {"pixels": {"max": 1}}}"#,
            "no input named \"pixels\"",
        ),
        (
            r#"{"inputs": {"text": {"max": 1}}}"#,
            "input \"text\" is not numeric",
        ),
        ("[1, 2]", "invalid configuration"),
    ] {
        let reason = denied(guard.check_request(config, &request).unwrap());
        assert!(
            reason.starts_with("range-guard: invalid configuration") && reason.contains(want),
            "{config}: {reason}"
        );
    }
}

#[test]
fn range_guard_checks_outputs() {
    let guard = load(airlock_artifacts::RANGE_GUARD);
    let request = request(vec![tensor("input", &[1], TensorData::Fp32(vec![0.0]))]);
    let config = r#"{"outputs": {"probabilities": {"min": 0, "max": 1}}}"#;
    let ok = InferResponse {
        outputs: vec![tensor(
            "probabilities",
            &[1, 2],
            TensorData::Fp32(vec![0.25, 0.75]),
        )],
    };
    assert!(matches!(
        guard.check_response(config, &request, &ok).unwrap(),
        ResponseDecision::Allow
    ));
    let bad = InferResponse {
        outputs: vec![tensor(
            "probabilities",
            &[1, 2],
            TensorData::Fp32(vec![1.5, f32::NAN]),
        )],
    };
    let ResponseDecision::Deny(reason) = guard.check_response(config, &request, &bad).unwrap()
    else {
        panic!("expected a denial");
    };
    assert_eq!(
        reason,
        "output \"probabilities\" element 0 [0, 0]: 1.5 is above the maximum 1"
    );
    // A caller may ask for some outputs only: a range for one that is not
    // in the response is no error.
    let other = InferResponse {
        outputs: vec![texts(&["de"])],
    };
    assert!(matches!(
        guard.check_response(config, &request, &other).unwrap(),
        ResponseDecision::Allow
    ));
}
