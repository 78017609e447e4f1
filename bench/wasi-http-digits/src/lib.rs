//! Benchmark peer: `POST /v2/models/digits/infer` as a `wasi:http` proxy
//! component, for `wasmtime serve`.
//!
//! The forward pass is the `digits` guest's own `mlp.rs`; the JSON in and out
//! is the Open Inference Protocol v2 body `airlock serve` takes and gives for
//! that model (flat `data` only, which is what the benchmark sends). What is
//! not here is everything `airlock serve` adds around a model: TLS, policy,
//! metadata checks beyond the one input, a registry, limits.

#[path = "../../../guest-models/digits/src/mlp.rs"]
#[allow(dead_code)]
mod mlp;

use serde::{Deserialize, Serialize};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Digits);

struct Digits;

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
struct Input {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Vec<f32>,
}

#[derive(Serialize)]
struct Response<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: [Output; 1],
}

#[derive(Serialize)]
struct Output {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    data: Vec<f32>,
}

impl wasip2::exports::http::incoming_handler::Guest for Digits {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (status, body) = match answer(request) {
            Ok(json) => (200, json),
            Err((status, message)) => (
                status,
                serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default(),
            ),
        };
        respond(out, status, &body);
    }
}

/// The JSON body of the answer, or a status and an error message.
fn answer(request: IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
    if request.path_with_query().as_deref() != Some("/v2/models/digits/infer") {
        return Err((404, "not found".into()));
    }
    if !matches!(request.method(), Method::Post) {
        return Err((405, "use POST".into()));
    }
    let body = read_body(&request).map_err(|()| (400, "could not read the body".to_owned()))?;
    let request: Request =
        serde_json::from_slice(&body).map_err(|e| (400, format!("malformed request: {e}")))?;
    let [input] = &request.inputs[..] else {
        return Err((400, "expected exactly one input".into()));
    };
    let batch = match input.shape[..] {
        [rows, cols] if cols == mlp::INPUTS as i64 => usize::try_from(rows).ok(),
        _ => None,
    }
    .filter(|rows| rows.checked_mul(mlp::INPUTS) == Some(input.data.len()));
    let (Some(batch), "input", "FP32") = (batch, input.name.as_str(), input.datatype.as_str())
    else {
        return Err((
            400,
            "expected one FP32 input \"input\" of shape [N, 64]".into(),
        ));
    };
    let mut probabilities = vec![0.0; batch * mlp::CLASSES];
    mlp::forward(&input.data, batch, &mut probabilities);
    let response = Response {
        model_name: "digits",
        model_version: "1",
        id: request.id,
        outputs: [Output {
            name: "probabilities",
            datatype: "FP32",
            shape: [batch, mlp::CLASSES],
            data: probabilities,
        }],
    };
    serde_json::to_vec(&response).map_err(|_| (500, "internal error".into()))
}

/// Reads the whole request body (at most 1 MiB).
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, ()> {
    let body = request.consume()?;
    let stream = body.stream()?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(_) => return Err(()),
        }
        if bytes.len() > 1 << 20 {
            return Err(());
        }
    }
    drop(stream);
    Ok(bytes)
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), b"application/json".to_vec()),
        (
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ),
    ])
    .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
