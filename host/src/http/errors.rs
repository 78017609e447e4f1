//! The one error answer of the HTTP layer: [`ApiError`], its status, its
//! `{"error": "..."}` body and the [`ERROR_KIND_HEADER`] that names a
//! failure's kind.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::budget::Exhausted;
use crate::guard::{ChainStop, GuardError};
use crate::oip::{self, BadRequest};
use crate::pipeline::InferError;
use crate::sandbox::GuestFailure;

/// Header that names the kind of a sandbox failure (`trap`, `deadline`,
/// `memory`, `output`, `capacity`, `model-error`, `internal`), so clients
/// need not parse messages.
pub const ERROR_KIND_HEADER: &str = "x-airlock-error";

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

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::BadRequest(m) => ApiError::BadRequest(m),
            InferError::NotFound(m) => ApiError::NotFound(m),
            InferError::Unauthorized(m) => ApiError::Unauthorized(m),
            InferError::Forbidden(m) => ApiError::Forbidden(m),
            InferError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(m),
            InferError::Busy { model, limit } => ApiError::Busy { model, limit },
            InferError::Overloaded(e) => ApiError::Overloaded(e),
            InferError::ModelRejected { model, message } => {
                ApiError::ModelRejected { model, message }
            }
            InferError::ModelFailed { model, detail } => ApiError::ModelFailed { model, detail },
            InferError::Sandbox { model, failure } => ApiError::Sandbox { model, failure },
            InferError::Guard(stop) => ApiError::Guard(stop),
            InferError::Internal(e) => ApiError::Internal(e),
        }
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

    /// The kind [`ERROR_KIND_HEADER`] names, for the failures that have one.
    pub(crate) fn kind(&self) -> Option<&'static str> {
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
