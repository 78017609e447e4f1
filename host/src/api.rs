//! The one HTTP router, shared by `airlock serve` and the Lambda adapter.
//!
//! Open Inference Protocol v2 REST:
//!
//! | method | path | |
//! |---|---|---|
//! | GET  | `/v2` | server metadata |
//! | GET  | `/v2/health/live`, `/v2/health/ready` | health |
//! | GET  | `/v2/models/{name}[/versions/{version}]` | model metadata |
//! | GET  | `/v2/models/{name}[/versions/{version}]/ready` | model readiness |
//! | POST | `/v2/models/{name}[/versions/{version}]/infer` | inference |
//!
//! Every error is `{"error": "..."}` with a status from [`ApiError`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::json;

use crate::bindings::{GuestError, InferResponse, TensorSpec};
use crate::budget::{Exhausted, MemoryBudget, Reservation};
use crate::sandbox::GuestFailure;
use crate::guard::{ChainStop, Chains, GuardError};
use crate::model::LoadedModel;
use crate::oip::{self, BadRequest, InferResponseBody, RequestLimits, ResponseError};
use crate::registry::Registry;

/// Header that names the kind of a sandbox failure (`trap`, `deadline`,
/// `memory`, `output`, `capacity`, `model-error`, `internal`), so clients
/// need not parse messages.
pub const ERROR_KIND_HEADER: &str = "x-airlock-error";

/// What the router serves from.
#[derive(Clone)]
pub struct AppState {
    /// The host (for the repository API). In an `Arc`: axum clones the
    /// state for every request, and a `Host` clone copies its configuration
    /// (paths, keys, token), which profiling found on the request path.
    pub host: Arc<crate::Host>,
    /// The models.
    pub registry: Arc<Registry>,
    /// Largest request body, in bytes (each model's policy may set less).
    pub max_body_bytes: usize,
}

/// An error answer. 4xx messages help the caller; 5xx details go to the
/// log only, except for sandbox failures, whose kind the caller may know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request is malformed or does not fit the model.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such model, version or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 408: the request body did not arrive within the server's body
    /// deadline or minimum rate.
    #[error("{0}")]
    RequestTimeout(String),
    /// 401: no credentials for the repository API.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: wrong credentials, or the repository API is disabled.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the operation conflicts with the model's state.
    #[error("{0}")]
    Conflict(String),
    /// 501: the server cannot do this (a presigned upload without S3).
    #[error("{0}")]
    NotImplemented(String),
    /// 415: the upload is not `application/wasm`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400: the model refused the input (its `invalid-input`/`unsupported`).
    #[error("model {model:?} rejected the request: {message}")]
    ModelRejected {
        /// The model.
        model: String,
        /// The model's message.
        message: String,
    },
    /// 500: the model returned an internal error (the detail is logged).
    #[error("model {model:?} failed")]
    ModelFailed {
        /// The model.
        model: String,
        /// Logged, never sent.
        detail: String,
    },
    /// 500/502/503/504/507: the sandbox stopped the model.
    #[error("model {model:?}: {failure}")]
    Sandbox {
        /// The model.
        model: String,
        /// What happened.
        failure: GuestFailure,
    },
    /// A guard of the model's policy stopped the request: 403 when it
    /// denied; when it failed or is not loaded, the request fails closed
    /// with the status a model's failure of that kind gets (503 when the
    /// guard is missing).
    #[error(transparent)]
    Guard(#[from] crate::guard::ChainStop),
    /// 503: the model already runs as many requests as its policy allows.
    #[error("model {model:?} is at its limit of {limit} concurrent requests; retry later")]
    Busy {
        /// The model.
        model: String,
        /// Its `max_concurrency`.
        limit: u32,
    },
    /// 503: the server holds as much request data as its memory budget
    /// allows; retry later.
    #[error(transparent)]
    Overloaded(#[from] Exhausted),
    /// 500: a bug or an I/O error on our side (the detail is logged).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<crate::RepoError> for ApiError {
    fn from(e: crate::RepoError) -> Self {
        use crate::RepoError;
        match e {
            RepoError::Invalid(e) if !e.is_input_fault() => ApiError::Internal(e.into()),
            RepoError::Invalid(e) => ApiError::BadRequest(format!("upload refused: {e}")),
            RepoError::BadRequest(m) => ApiError::BadRequest(m),
            RepoError::NotFound(m) => ApiError::NotFound(m),
            RepoError::Conflict(m) => ApiError::Conflict(m),
            // A stored version's refusal names itself; an upload's is the upload's.
            RepoError::Signature(e @ crate::signing::SignatureError::Stored { .. }) => {
                ApiError::Forbidden(e.to_string())
            }
            RepoError::Signature(e) => ApiError::Forbidden(format!("upload refused: {e}")),
            RepoError::Storage(e) => ApiError::Internal(e),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if let Some(timeout) = crate::server::find_body_timeout(&rejection) {
            return ApiError::RequestTimeout(timeout.to_string());
        }
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is over the size limit".into())
            }
            _ => ApiError::BadRequest(format!("could not read the request body: {rejection}")),
        }
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::ModelRejected { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::ModelFailed { .. } | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Busy { .. } | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Sandbox { failure, .. } => failure_status(failure),
            ApiError::Guard(stop) => match stop {
                ChainStop::Denied { .. } => StatusCode::FORBIDDEN,
                ChainStop::Missing { .. } => StatusCode::SERVICE_UNAVAILABLE,
                ChainStop::Failed {
                    error: GuardError::Sandbox(failure),
                    ..
                } => failure_status(failure),
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn kind(&self) -> Option<&'static str> {
        match self {
            ApiError::ModelFailed { .. } => Some("model-error"),
            ApiError::Busy { .. } => Some("busy"),
            ApiError::Overloaded(_) => Some("overloaded"),
            ApiError::Guard(ChainStop::Denied { .. }) => Some("denied"),
            ApiError::Guard(_) => Some("guard"),
            ApiError::Sandbox { failure, .. } => Some(match failure {
                GuestFailure::Deadline(_) => "deadline",
                GuestFailure::MemoryCap(_) => "memory",
                GuestFailure::Capacity(_) => "capacity",
                GuestFailure::Trap(_) => "trap",
                GuestFailure::OutputTooLarge(_) => "output",
                _ => "internal",
            }),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::ModelFailed { model, detail } => {
                let detail = oip::cut_message(detail, oip::MAX_MESSAGE_BYTES);
                tracing::warn!(model = %model, detail = %detail, "model returned an internal error");
                self.to_string()
            }
            ApiError::Sandbox {
                model,
                failure: GuestFailure::Other(error),
            } => {
                tracing::error!(model = %model, error = format!("{error:#}"), "sandbox failure");
                format!("model {model:?} failed")
            }
            ApiError::Sandbox { model, failure } => {
                tracing::warn!(model = %model, failure = %failure, "model stopped by the sandbox");
                self.to_string()
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                self.to_string()
            }
            ApiError::Guard(ChainStop::Failed {
                guard,
                stage,
                error,
            }) => {
                // The sandbox's own limits may be named; anything else is a
                // bug in the guard or the host, for the log only.
                let limit = match error {
                    GuardError::Sandbox(GuestFailure::Deadline(d)) => {
                        Some(format!("it ran past its deadline of {d:?}"))
                    }
                    GuardError::Sandbox(GuestFailure::MemoryCap(cap)) => {
                        Some(format!("it hit its memory cap of {cap} bytes"))
                    }
                    GuardError::Sandbox(GuestFailure::Trap(_)) => Some("it trapped".to_owned()),
                    GuardError::Sandbox(GuestFailure::Capacity(_)) => {
                        Some("no sandbox capacity left".to_owned())
                    }
                    _ => None,
                };
                let error = error.to_string();
                let error = oip::cut_message(&error, oip::MAX_MESSAGE_BYTES);
                tracing::warn!(guard = %guard, stage = %stage, error = %error, "guard failed; request refused");
                match limit {
                    Some(limit) => format!("guard {guard:?} failed on the {stage}: {limit}"),
                    None => format!("guard {guard:?} failed on the {stage}"),
                }
            }
            ApiError::Guard(ChainStop::Missing { guard, .. }) => {
                tracing::error!(guard = %guard, "a model's policy names a guard that is not loaded");
                self.to_string()
            }
            // Client errors may quote the caller's data: never logged.
            _ => self.to_string(),
        };
        // The one boundary every error body passes: whatever a message
        // quotes (a caller's names, a model's or a guard's reason, a
        // compiler's output), no error answer is longer than this.
        let message = oip::cut_message(&message, oip::MAX_MESSAGE_BYTES);
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if let Some(kind) = self.kind() {
            response
                .headers_mut()
                .insert(ERROR_KIND_HEADER, HeaderValue::from_static(kind));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The status of a sandbox failure, a model's or a guard's.
fn failure_status(failure: &GuestFailure) -> StatusCode {
    match failure {
        GuestFailure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
        GuestFailure::MemoryCap(_) => StatusCode::INSUFFICIENT_STORAGE,
        GuestFailure::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
        // The model is the upstream here; its answer is unusable.
        GuestFailure::OutputTooLarge(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    let body_limit = state.max_body_bytes;
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
        .merge(crate::admin::routes(state.host.config().max_upload_bytes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
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

/// The model that answers a request to `name` (its active version) or to
/// `name` version `version`. A version that is not the active one comes
/// confined by the active version's policy ([`Registry::version`], see
/// [`crate::registry::stricter_policy`]): its `policy()` is the one the
/// request is held to, keys, guards and limits alike, so everything that
/// reads the policy of the model it is given (authorisation, admission,
/// guards) applies the stricter rule with nothing more to do.
fn lookup(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, ApiError> {
    let found = match version {
        None => state.registry.active(name),
        Some(v) => state.registry.version(name, v),
    };
    found.ok_or_else(|| match version {
        None => ApiError::NotFound(format!("unknown model {name:?}")),
        Some(v) => ApiError::NotFound(format!("unknown model {name:?} version {v:?}")),
    })
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
///   [`crate::admin::Admin`] check): the Open Inference Protocol fields and
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
        authorize(model, headers)?;
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
    admin: Result<crate::admin::Admin, ApiError>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = lookup(&state, &name, None)?;
    metadata_json(&state, &model, admin.is_ok(), &headers).map(Json)
}

async fn model_version_metadata(
    admin: Result<crate::admin::Admin, ApiError>,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = lookup(&state, &name, Some(&version))?;
    metadata_json(&state, &model, admin.is_ok(), &headers).map(Json)
}

async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    lookup(&state, &name, None)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    lookup(&state, &name, Some(&version))?;
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
    let model = lookup(&state, &name, None)?;
    observed(&state, model, &headers, body).await
}

async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = lookup(&state, &name, Some(&version))?;
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
async fn metrics(_: crate::admin::Admin, State(state): State<AppState>) -> Response {
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

/// Checks the caller's API key against the model's policy: any caller when
/// the policy lists no keys; else `Authorization: Bearer <key>` (or
/// `x-api-key`) whose sha256 is listed. Compared without early exit.
///
/// `model` as [`lookup`] returns it: for a version route to an inactive
/// version its policy is already the stricter of that version's and the
/// active version's, so the one key presented must be accepted by both.
fn authorize(model: &LoadedModel, headers: &HeaderMap) -> Result<(), ApiError> {
    let allowed = &model.policy().api_keys;
    if allowed.is_empty() {
        return Ok(());
    }
    let presented = crate::auth::bearer_token(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|key| !key.is_empty())
    });
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized(format!(
            "model {:?} needs an API key: `Authorization: Bearer <key>`",
            model.name()
        )));
    };
    let hashed = crate::manifest::hash_key(presented);
    let mut matched = false;
    for key in allowed {
        matched |= crate::auth::digests_match(key.as_bytes(), hashed.as_bytes());
    }
    if matched {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this API key may not call model {:?}",
            model.name()
        )))
    }
}

async fn run_infer(
    state: &AppState,
    model: Arc<LoadedModel>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The caller is checked before a byte of the body is read or buffered.
    authorize(&model, headers)?;
    let policy = model.policy();
    let limit = BodyLimit {
        model: model.name(),
        limit: policy.max_request_bytes.min(state.max_body_bytes),
        server_limit: state.max_body_bytes,
    };
    let (body, reservation) = read_body(body, headers, &limit, state.host.request_budget()).await?;
    let Some(admission) = model.try_admit() else {
        return Err(ApiError::Busy {
            model: model.name().to_owned(),
            limit: policy.max_concurrency.unwrap_or(u32::MAX),
        });
    };
    let limits = RequestLimits {
        max_elements: policy.max_elements,
        ..state.host.config().request_limits
    };
    let json_len = inference_header_length(headers)?;
    let guards = Arc::clone(state.host.guards());
    let decisions = Arc::clone(state.host.decisions());
    // Everything CPU-bound (parsing, guards, the model, the answer's checks
    // and serialisation) runs off the async workers, holding the request's
    // memory reservation until the answer is bytes.
    let work = move || {
        let mut reservation = reservation;
        let oip::ParsedInfer { request, encoding } =
            oip::parse_infer(&body, json_len, model.metadata(), &limits, &mut reservation)
                .map_err(|e| match e {
                    oip::ParseError::Bad(e) => ApiError::from(e),
                    oip::ParseError::Exhausted(e) => ApiError::Overloaded(e),
                })?;
        let body_len = body.len();
        drop(body);
        reservation.shrink(body_len);
        let chains = Chains::new(&guards, &decisions, &model);
        let request = chains.check_request(request)?;
        let response = model_response(&model, model.infer(&request))?;
        let response = chains.check_response(&request, response)?;
        drop(admission);
        let outputs = oip::check_response(response, model.metadata(), &request.outputs, &limits)
            .map_err(|error| match error {
                ResponseError::TooLarge(_) => ApiError::Sandbox {
                    model: model.name().to_owned(),
                    failure: GuestFailure::OutputTooLarge(error.to_string()),
                },
                _ => ApiError::ModelFailed {
                    model: model.name().to_owned(),
                    detail: error.to_string(),
                },
            })?;
        let parameters = [("sha256", model.digest())];
        let body = InferResponseBody {
            model_name: model.name(),
            model_version: model.version(),
            id: request.id.as_deref(),
            parameters: &parameters,
            outputs: &outputs,
            encoding: &encoding,
        };
        body.to_bytes().map_err(|e| ApiError::Internal(e.into()))
    };
    let (bytes, json_len) = run_blocking(work).await??;
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

/// How large an inference body may be: the smaller of the model's
/// `max_request_bytes` and the server's limit (which the 413 names).
struct BodyLimit<'a> {
    model: &'a str,
    limit: usize,
    server_limit: usize,
}

/// Bodies up to this size draw on the whole memory budget; larger ones
/// only on its first three quarters ([`Reservation::try_grow_bulky`]), so
/// that a flood of large bodies cannot shut out ordinary small requests.
const SMALL_BODY: usize = 64 << 10;

/// Reads a request body of at most `limit` bytes, drawing on `budget`
/// before anything is kept: the whole declared `Content-Length` up front
/// (so an over-budget request is refused before it is read), or chunk by
/// chunk when the length is not declared. A body that cannot be covered is
/// refused with 503 and `Retry-After`, and what it held is released.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: &BodyLimit<'_>,
    budget: &MemoryBudget,
) -> Result<(Bytes, Reservation), ApiError> {
    let &BodyLimit {
        model,
        limit,
        server_limit,
    } = limit;
    let too_large = || {
        ApiError::PayloadTooLarge(if limit < server_limit {
            format!("the request body is over model {model:?}'s limit of {limit} bytes")
        } else {
            format!("the request body is over the size limit of {limit} bytes")
        })
    };
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

/// The model's answer, or the error it is for the caller.
fn model_response(
    model: &LoadedModel,
    outcome: Result<Result<InferResponse, GuestError>, GuestFailure>,
) -> Result<InferResponse, ApiError> {
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(GuestError::InvalidInput(message) | GuestError::Unsupported(message))) => {
            Err(ApiError::ModelRejected {
                model: model.name().to_owned(),
                message,
            })
        }
        Ok(Err(GuestError::Internal(detail) | GuestError::Other(detail))) => {
            Err(ApiError::ModelFailed {
                model: model.name().to_owned(),
                detail,
            })
        }
        Err(failure) => Err(ApiError::Sandbox {
            model: model.name().to_owned(),
            failure,
        }),
    }
}

/// Runs CPU-bound sandbox work without stalling the async executor: in place
/// on a multi-threaded runtime (tokio moves the worker's other tasks away),
/// on the blocking pool otherwise.
pub(crate) async fn run_blocking<F, T>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::current().runtime_flavor() {
        RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(f)),
        _ => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::Internal(e.into())),
    }
}
