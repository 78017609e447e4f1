//! The memory flood, written as the attack: many connections each declaring
//! a body at the size limit and sending it slowly, so that a server which
//! buffers first and asks later holds all of them at once. Bodies now draw
//! on one memory budget before they are read; large ones only on its first
//! three quarters, so ordinary small requests still get through while the
//! flood runs. And a caller without the model's key is refused before its
//! body is read at all.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::connections::{connect, read_response};
use crate::support::{
    MAX_BODY_BYTES, assert_serving, assert_still_serving, digits_request, server, start_with,
    upload_with_manifest,
};

/// The request head of an inference whose body is `length` bytes.
fn head(model: &str, length: usize, extra: &str) -> String {
    format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_flood_of_large_bodies_is_refused_up_front_and_small_requests_still_get_through() {
    // 4 MiB for request data: three bodies at the 1 MiB limit fill the three
    // quarters that large bodies may take.
    let s = start_with(
        |config| config.request_memory_bytes = 4 * MAX_BODY_BYTES,
        &[("digits", airlock_artifacts::DIGITS)],
    );
    let mut flood = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&s, &[b"http/1.1"]).await.unwrap();
        stream
            .write_all(head("digits", MAX_BODY_BYTES, "").as_bytes())
            .await
            .unwrap();
        stream.write_all(b"{").await.unwrap();
        flood.push(stream);
    }
    // One more large body is refused with 503 before it is sent: the server
    // answers on the head alone. (Polled: the three above reserve as soon
    // as the server has read their heads.)
    let mut refused = None;
    for _ in 0..50 {
        let mut stream = connect(&s, &[b"http/1.1"]).await.unwrap();
        stream
            .write_all(head("digits", MAX_BODY_BYTES, "").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), read_response(&mut stream)).await;
        if let Ok((status, body)) = answer {
            refused = Some((status, String::from_utf8_lossy(&body).into_owned()));
            break;
        }
    }
    let (status, body) = refused.expect("a fourth large body was never refused");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("retry later"), "{body}");

    // A small request is served while the flood holds its memory.
    assert_serving(&s, &s.client()).await;

    // Once the flood is gone its memory is back: a large, valid body (the
    // digits request padded with white space to near the limit) is served.
    drop(flood);
    let padded = {
        let mut text = digits_request().to_string();
        text.push_str(&" ".repeat(MAX_BODY_BYTES - text.len() - 16));
        text
    };
    let client = s.client();
    let mut last = 0;
    for _ in 0..50 {
        let response = client
            .post(s.url("/v2/models/digits/infer"))
            .header("content-type", "application/json")
            .body(padded.clone())
            .send()
            .await
            .unwrap();
        last = response.status().as_u16();
        if last == 200 {
            break;
        }
        assert_eq!(last, 503, "only the budget may refuse it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "the flood's reservations were not released");
}

#[tokio::test]
async fn a_caller_without_the_key_is_refused_before_the_body_is_read() {
    let s = server();
    let client = s.client();
    let manifest = "api_keys = [\"flood-caller-key-0123\"]\n";
    let wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let (status, body) =
        upload_with_manifest(&client, "flood-keyed", wasm, Some(manifest), true).await;
    assert_eq!(status, 201, "{body}");

    // The head declares a body at the limit and none follows: the answer
    // must come from the head alone (before, the server waited for the
    // whole body, buffered it, and only then looked at the key).
    let mut stream = connect(s, &[b"http/1.1"]).await.unwrap();
    stream
        .write_all(head("flood-keyed", MAX_BODY_BYTES, "").as_bytes())
        .await
        .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("no answer without the body: the key is checked after reading it");
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    let mut stream = connect(s, &[b"http/1.1"]).await.unwrap();
    let wrong = "authorization: Bearer not-the-key-at-all\r\n";
    stream
        .write_all(head("flood-keyed", MAX_BODY_BYTES, wrong).as_bytes())
        .await
        .unwrap();
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("no answer without the body");
    assert_eq!(status, 403);
    assert_still_serving(&client).await;
}

/// Guests share one memory budget: the pool's slots times the per-model cap
/// may be far more than the machine has, but what live guests hold together
/// is bounded. A guest that grows past the shared budget fails its own
/// request (503, `capacity`), gives its memory back, and others are served.
#[tokio::test]
async fn guests_grow_against_one_shared_memory_budget() {
    let s = start_with(
        // Each store may have 64 MiB (TEST_LIMITS); all together only 40.
        |config| config.engine.guest_memory_bytes = 40 << 20,
        &[
            ("digits", airlock_artifacts::DIGITS),
            ("misbehave", airlock_artifacts::MISBEHAVE),
        ],
    );
    let client = s.client();
    let oom = serde_json::json!({
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        "parameters": {"mode": "oom"},
    });
    for _ in 0..3 {
        let (status, kind, body) =
            crate::support::post_json(&client, &s.url("/v2/models/misbehave/infer"), &oom).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(kind.as_deref(), Some("capacity"), "{body}");
        // The budget is back after each: digits still runs.
        assert_serving(&s, &client).await;
    }
}
