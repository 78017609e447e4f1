//! The Open Inference Protocol routes: server and model metadata, health,
//! readiness, inference, and the Prometheus metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::json;

use super::auth::{Admin, api_key};
use super::{ApiError, AppState, run_blocking};
use crate::bindings::TensorSpec;
use crate::budget::{Exhausted, MemoryBudget, Reservation};
use crate::model::LoadedModel;
use crate::pipeline::{self, InferCall, InferOutput};

/// The inference protocol's routes and `/metrics`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "airlock",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<AppState>) -> Response {
    // Models are loaded before the listener opens, so a serving process is
    // ready once it has a model.
    let ready = !state.registry.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

fn specs_json(specs: &[TensorSpec]) -> serde_json::Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape }))
        .collect()
}

/// A model's metadata, by who asks:
///
/// - the admin (the admin token, or IAM behind API Gateway: the
///   [`Admin`](super::auth::Admin) check): the Open Inference Protocol fields and
///   an `airlock` section with the version served, its sha256, its kind and
///   the policy in force for this route (limits, guards with their
///   configuration, whether keys and signatures are required; the key
///   hashes never, not even to the admin: a hash of a short key is a way to
///   guess it offline, and nothing needs it on the wire);
/// - anyone else: the protocol's fields only (name, versions, platform,
///   inputs, outputs), what a client needs to form a request. When the
///   policy in force for the route requires an API key, only with a key it
///   accepts (401/403 otherwise, exactly as inference), so a key-protected
///   model shows nothing of itself to callers who may not call it. Whether
///   a name or version exists is not hidden (404 against 401 tells it on
///   every route, as do the readiness routes); what it is, is.
fn metadata_json(
    state: &AppState,
    model: &LoadedModel,
    admin: bool,
    headers: &HeaderMap,
) -> Result<serde_json::Value, ApiError> {
    if !admin {
        pipeline::authorize(model, api_key(headers))?;
    }
    let versions: Vec<String> = state
        .registry
        .entry(model.name())
        .map(|e| e.versions.keys().cloned().collect())
        .unwrap_or_default();
    let meta = model.metadata();
    let mut value = json!({
        "name": model.name(),
        "versions": versions,
        "platform": meta.platform,
        "inputs": specs_json(&meta.inputs),
        "outputs": specs_json(&meta.outputs),
    });
    if admin {
        value["airlock"] = json!({
            "version": model.version(),
            "sha256": model.digest(),
            "kind": model.kind(),
            "policy": model.policy().to_json(),
        });
    }
    Ok(value)
}

async fn model_metadata(
    admin: Result<Admin, ApiError>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = state.host.lookup(&name, None)?;
    metadata_json(&state, &model, admin.is_ok(), &headers).map(Json)
}

async fn model_version_metadata(
    admin: Result<Admin, ApiError>,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = state.host.lookup(&name, Some(&version))?;
    metadata_json(&state, &model, admin.is_ok(), &headers).map(Json)
}

async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.host.lookup(&name, None)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.host.lookup(&name, Some(&version))?;
    Ok(Json(
        json!({ "name": name, "version": version, "ready": true }),
    ))
}

async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = state.host.lookup(&name, None)?;
    observed(&state, model, &headers, body).await
}

async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = state.host.lookup(&name, Some(&version))?;
    observed(&state, model, &headers, body).await
}

/// Runs an inference and records it in the model's metrics.
async fn observed(
    state: &AppState,
    model: Arc<LoadedModel>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = run_infer(state, Arc::clone(&model), headers, body).await;
    let (status, failure) = match &result {
        Ok(response) => (response.status(), None),
        Err(error) => (error.status(), error.kind()),
    };
    model
        .stats()
        .record(status.as_u16(), failure, started.elapsed());
    result
}

/// `GET /metrics`: Prometheus text, per served model version. Needs the
/// admin token: traffic per model is not for every caller to see.
async fn metrics(_: Admin, State(state): State<AppState>) -> Response {
    let entries = state.registry.entries();
    let models = entries.iter().flat_map(|(name, entry)| {
        entry
            .versions
            .iter()
            .map(move |(version, model)| (name.as_str(), version.as_str(), model.stats()))
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        crate::metrics::render(models),
    )
        .into_response()
}

/// Runs an inference through the [pipeline](crate::pipeline): the
/// caller's key is checked on the head, the body is read under the memory
/// budget, and the rest runs through [`run_blocking`](super::run_blocking)
/// (tokio hands the worker's other tasks away first), holding the request's
/// memory reservation until the answer is bytes.
async fn run_infer(
    state: &AppState,
    model: Arc<LoadedModel>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The caller is checked before a byte of the body is read or buffered.
    let call = state.host.prepare_call(model, api_key(headers))?;
    let (body, reservation) = read_body(body, headers, &call, state.host.request_budget()).await?;
    let json_len = inference_header_length(headers)?;
    let InferOutput { bytes, json_len } =
        run_blocking(move || call.run(body, json_len, reservation)).await??;
    let Some(json_len) = json_len else {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response());
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                HeaderName::from_static(INFERENCE_HEADER_CONTENT_LENGTH),
                HeaderValue::from(json_len),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Bodies up to this size draw on the whole memory budget; larger ones
/// only on its first three quarters ([`Reservation::try_grow_bulky`]), so
/// that a flood of large bodies cannot shut out ordinary small requests.
const SMALL_BODY: usize = 64 << 10;

/// Reads a request body of at most [`InferCall::body_limit`] bytes, drawing on `budget`
/// before anything is kept: the whole declared `Content-Length` up front
/// (so an over-budget request is refused before it is read), or chunk by
/// chunk when the length is not declared. A body that cannot be covered is
/// refused with 503 and `Retry-After`, and what it held is released.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    call: &InferCall,
    budget: &MemoryBudget,
) -> Result<(Bytes, Reservation), ApiError> {
    let limit = call.body_limit();
    let too_large = || ApiError::from(call.too_large());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut reservation = budget.reservation();
    if let Some(declared) = declared {
        let declared = usize::try_from(declared)
            .ok()
            .filter(|&d| d <= limit)
            .ok_or_else(too_large)?;
        grow(&mut reservation, declared)?;
    }
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(body_error)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(too_large());
        }
        let short = total.saturating_sub(reservation.held());
        grow(&mut reservation, short)?;
        chunks.push(data);
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            // The copy is held beside the chunks until they are dropped.
            grow(&mut reservation, total)?;
            let mut joined = bytes::BytesMut::with_capacity(total);
            for chunk in chunks.drain(..) {
                joined.extend_from_slice(&chunk);
            }
            reservation.shrink(total);
            joined.freeze()
        }
    };
    // A declared length larger than what came gives the rest back.
    reservation.shrink(reservation.held().saturating_sub(bytes.len()));
    Ok((bytes, reservation))
}

/// Grows a body's reservation by `bytes`, as a bulky step once the body
/// is past [`SMALL_BODY`].
fn grow(reservation: &mut Reservation, bytes: usize) -> Result<(), Exhausted> {
    if reservation.held().saturating_add(bytes) > SMALL_BODY {
        reservation.try_grow_bulky(bytes)
    } else {
        reservation.try_grow(bytes)
    }
}

/// A failed body read: 408 when the server's body deadline cut it, else
/// the client broke it off or sent bad framing.
fn body_error(error: axum::Error) -> ApiError {
    if let Some(timeout) = crate::server::find_body_timeout(&error) {
        return ApiError::RequestTimeout(timeout.to_string());
    }
    ApiError::BadRequest(format!("could not read the request body: {error}"))
}

/// The binary tensor data extension's header: how many bytes of the body
/// are the JSON object, binary tensor data following it.
const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

fn inference_header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest("Inference-Header-Content-Length must be a number of bytes".into())
        })
}
