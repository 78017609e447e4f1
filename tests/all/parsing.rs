//! What a hostile model or caller makes the host parse is bounded before it
//! is allocated, and what goes back is a short message: WASI preview 1
//! commands written in WAT that print hostile responses on stdout, and a
//! component whose refusal quotes a huge caller string.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::{assert_still_serving, post_json, server, upload_with_manifest};

/// A WASI preview 1 command that writes `head`, then `unit` `count` times,
/// then `tail` on stdout (however many `fd_write` calls it takes) and
/// exits 0, whatever its stdin says. `unit` must be at most 1 KiB, `tail`
/// at most 2 KiB.
fn p1_writer(head: &str, unit: &str, count: u32, tail: &str) -> Vec<u8> {
    assert!(unit.len() <= 1024 && tail.len() <= 2048);
    let esc = |s: &str| {
        let mut out = String::with_capacity(3 * s.len());
        for b in s.bytes() {
            write!(out, "\\{b:02x}").unwrap();
        }
        out
    };
    let total = 4096 + head.len() + unit.len() * count as usize + tail.len();
    let pages = total.div_ceil(65536);
    let (start, unit_len, tail_len) = (4096 + head.len(), unit.len(), tail.len());
    let (head, unit, tail) = (esc(head), esc(unit), esc(tail));
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 1024) "{unit}")
  (data (i32.const 2048) "{tail}")
  (data (i32.const 4096) "{head}")
  (func (export "_start")
    (local $p i32) (local $i i32) (local $end i32)
    (local.set $p (i32.const {start}))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
        (memory.copy (local.get $p) (i32.const 1024) (i32.const {unit_len}))
        (local.set $p (i32.add (local.get $p) (i32.const {unit_len})))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (memory.copy (local.get $p) (i32.const 2048) (i32.const {tail_len}))
    (local.set $end (i32.add (local.get $p) (i32.const {tail_len})))
    (local.set $p (i32.const 4096))
    (block $written
      (loop $write
        (br_if $written (i32.ge_u (local.get $p) (local.get $end)))
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (i32.sub (local.get $end) (local.get $p)))
        (br_if $written
          (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $p (i32.add (local.get $p) (i32.load (i32.const 8))))
        (br $write)))))"#
    );
    wat::parse_str(&wat).unwrap()
}

/// Input `x` FP32 `[-1]`, output `y` BYTES `[-1]`.
const MANIFEST: &str = r#"deadline_ms = 2000

[metadata]
inputs = [{ name = "x", datatype = "FP32", shape = [-1] }]
outputs = [{ name = "y", datatype = "BYTES", shape = [-1] }]
"#;

fn request() -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
}

/// Uploads `wasm` as `name` and asks it, twice (the second time the
/// server must still be there to answer), while a normal client is served
/// alongside; returns the status, error kind and body of the first answer.
async fn attack(name: &str, wasm: Vec<u8>) -> (u16, Option<String>, serde_json::Value) {
    let s = server();
    let client = s.client();
    let (status, body) = upload_with_manifest(&client, name, wasm, Some(MANIFEST), true).await;
    assert!(status == 201 || status == 200, "{status}: {body}");
    let url = s.url(&format!("/v2/models/{name}/infer"));
    let request = request();
    let started = Instant::now();
    let (first, ()) = tokio::join!(
        post_json(&client, &url, &request),
        assert_still_serving(&client)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the hostile answer took {:?}",
        started.elapsed()
    );
    let again = post_json(&client, &url, &request).await;
    assert_eq!((again.0, &again.1), (first.0, &first.1), "{}", again.2);
    assert_still_serving(&client).await;
    first
}

#[tokio::test]
async fn a_command_declaring_200001_outputs_is_refused_as_it_is_parsed() {
    // The first wave reserved up to 24 MiB per output for this and aborted.
    let one = r#"{"name":"y","shape":[1048576],"datatype":"BYTES","data":[]}"#;
    let wasm = p1_writer(
        &format!(r#"{{"outputs":[{one}"#),
        &format!(",{one}"),
        200_000,
        "]}",
    );
    let (status, kind, body) = attack("p1-many-outputs", wasm).await;
    assert_eq!(
        (status, kind.as_deref()),
        (500, Some("model-error")),
        "{body}"
    );
    // The detail (which names the model's internals) is logged, not sent.
    assert_eq!(body["error"], "model \"p1-many-outputs\" failed");
}

#[tokio::test]
async fn a_command_whose_data_runs_past_its_shape_is_refused() {
    // Shape [1], two million elements: refused at the second.
    let wasm = p1_writer(
        r#"{"outputs":[{"name":"y","shape":[1],"datatype":"BYTES","data":["a""#,
        r#","a""#,
        2_000_000,
        "]}]}",
    );
    let (status, kind, body) = attack("p1-past-shape", wasm).await;
    assert_eq!(
        (status, kind.as_deref()),
        (500, Some("model-error")),
        "{body}"
    );
}

#[tokio::test]
async fn a_command_whose_response_needs_more_host_memory_than_its_allowance_is_refused() {
    // 2.5 million two-byte strings: 12.5 MB of stdout, over 150 MB once
    // parsed; the sandbox's output allowance (16 MiB here) refuses it
    // before the vector is allocated.
    let wasm = p1_writer(
        r#"{"outputs":[{"name":"y","shape":[2500000],"datatype":"BYTES","data":["ab""#,
        r#","ab""#,
        2_499_999,
        "]}]}",
    );
    let (status, kind, body) = attack("p1-memory-bomb", wasm).await;
    assert_eq!((status, kind.as_deref()), (502, Some("output")), "{body}");
}

#[tokio::test]
async fn a_command_refusal_with_a_huge_message_is_cut() {
    let wasm = p1_writer(r#"{"error":""#, &"e".repeat(1024), 4096, r#""}"#);
    let (status, _, body) = attack("p1-long-error", wasm).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.len() < 1200, "a {} byte message", message.len());
    assert!(message.contains("eeee"), "{message}");
    assert!(message.contains("bytes cut)"), "{message}");
}

#[tokio::test]
async fn a_component_refusal_quoting_a_huge_string_is_cut() {
    // misbehave refuses an unknown mode by quoting it: 600 KB of message.
    let s = server();
    let client = s.client();
    let mode = "m".repeat(600_000);
    let request = serde_json::json!({
        "parameters": {"mode": mode},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]
    });
    let url = s.url("/v2/models/misbehave/infer");
    let ((status, _, body), ()) = tokio::join!(
        post_json(&client, &url, &request),
        assert_still_serving(&client)
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("unknown mode \"mmm"),
        "{}",
        &message[..100]
    );
    assert!(message.len() < 1200, "a {} byte message", message.len());
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_shape_of_a_million_dimensions_gets_a_short_400() {
    let s = server();
    let client = s.client();
    let request = serde_json::json!({
        "inputs": [{"name": "input", "shape": vec![1; 200_000], "datatype": "FP32", "data": [1]}]
    });
    let (status, _, body) = post_json(&client, &s.url("/v2/models/digits/infer"), &request).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("more dimensions than"), "{message}");
    assert!(message.len() < 300, "a {} byte message", message.len());
    assert_still_serving(&client).await;
}
