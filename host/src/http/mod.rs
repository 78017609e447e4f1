//! The HTTP layer: the one router, shared by `airlock serve` and the Lambda adapter.
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
//! | GET  | `/metrics` | Prometheus text per served model version (admin token) |
//!
//! The repository (admin) API, aligned with the Triton/KServe repository
//! extension where it has an equivalent (see [`repository`]):
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v2/repository/index` | every stored model and guard, and their versions |
//! | GET  | `/v2/repository/decisions[?limit=N]` | the most recent guard decisions (see [`crate::decisions`]) |
//! | POST | `/v2/repository/models/{name}/load` | serve a stored model again |
//! | POST | `/v2/repository/models/{name}/unload` | stop serving it (it stays stored) |
//! | POST | `/v2/repository/models/{name}/versions[?activate=true]` | upload a new version: an `application/wasm` body, or `multipart/form-data` with parts `model`, `manifest` (TOML/JSON, see [`crate::manifest`]) and `signature` |
//! | POST | `/v2/repository/models/{name}/versions/{version}/activate` | make a version active |
//! | POST | `/v2/repository/models/{name}/rollback` | re-activate the previous version |
//! | DELETE | `/v2/repository/models/{name}/versions/{version}` | delete a version that is not active |
//! | POST | `/v2/repository/models/{name}/uploads` | `{"size": N}`: a presigned upload (S3 store only; 501 otherwise) |
//! | POST | `/v2/repository/models/{name}/uploads/{id}[?activate=true]` | `{"sha256": "…", "manifest": "…"?}`: finalise it as a new version |
//!
//! Every error is `{"error": "..."}` with a status from [`ApiError`].
//!
//! The modules by job: [`state`] (what the router serves from), [`errors`]
//! (the error answer), [`auth`] (credentials), [`infer`] (the inference
//! protocol's routes), [`repository`] (the repository routes).

pub mod auth;
pub mod errors;
pub mod infer;
pub mod repository;
pub mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;

pub use self::auth::GatewayAuthorized;
pub use self::errors::{ApiError, ERROR_KIND_HEADER};
pub use self::state::AppState;

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    let body_limit = state.max_body_bytes;
    let max_upload_bytes = state.host.config().max_upload_bytes;
    Router::new()
        .merge(infer::routes())
        .merge(repository::routes(max_upload_bytes))
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
