//! The repository (admin) routes, aligned with the Triton/KServe repository
//! extension where it has an equivalent:
//! extension where it has an equivalent (the route table is in [`super`]).
//!
//! A guard (a component of the `policy` world) is uploaded, versioned,
//! activated and rolled back through the same `models/{name}` routes: the
//! upload tells what it is from the component's exports. It is not served
//! for inference; models name it in their manifests' `guards`.
//!
//! Every route needs `Authorization: Bearer <admin token>`: 401 without it,
//! 403 with a wrong one. Tokens are compared in constant time. Behind API
//! Gateway the repository routes are IAM-authorised instead: the Lambda
//! adapter marks such requests with [`GatewayAuthorized`](super::GatewayAuthorized), which only it
//! can set (it is a request extension, not a header).

use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest as _, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::auth::Admin;
use super::{ApiError, AppState, run_blocking};
use crate::Upload;
use crate::manifest::Manifest;

/// The repository routes; uploads may be up to `max_upload_bytes`.
pub(super) fn routes(max_upload_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/decisions", get(decisions))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
        .route(
            "/v2/repository/models/{name}/versions",
            post(upload).layer(DefaultBodyLimit::max(max_upload_bytes)),
        )
        .route(
            "/v2/repository/models/{name}/versions/{version}/activate",
            post(activate),
        )
        .route("/v2/repository/models/{name}/rollback", post(rollback))
        .route(
            "/v2/repository/models/{name}/versions/{version}",
            delete(delete_version),
        )
        .route("/v2/repository/models/{name}/uploads", post(begin_upload))
        .route(
            "/v2/repository/models/{name}/uploads/{id}",
            post(finish_upload),
        )
}

async fn index(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let models = on_host(&state, |host| host.list()).await?;
    let mut rows = Vec::new();
    for status in models {
        let index = status.index;
        if status.unreadable {
            // Reported for this name only; the details are in the log.
            rows.push(json!({
                "name": index.name,
                "state": if status.serving { "READY" } else { "UNAVAILABLE" },
                "reason": "the stored index is unreadable (see the server log)",
            }));
            continue;
        }
        for record in &index.versions {
            let active = index.active.as_deref() == Some(record.version.as_str());
            let (state, reason) = if status.serving {
                ("READY", "")
            } else {
                ("UNAVAILABLE", "unloaded")
            };
            rows.push(json!({
                "name": index.name,
                "version": record.version,
                "kind": index.kind.as_str(),
                "state": state,
                "reason": reason,
                "active": active,
                "sha256": record.sha256,
                "size": record.size,
                "uploaded_unix": record.uploaded_unix,
                "model_version": record.model_version,
            }));
        }
    }
    Ok(Json(serde_json::Value::Array(rows)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionsQuery {
    limit: Option<usize>,
}

/// `GET /v2/repository/decisions[?limit=N]`: the most recent guard
/// decisions (default 100, at most the ring's capacity), oldest first.
async fn decisions(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<DecisionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    let decisions = state.host.decisions().recent(limit);
    Ok(Json(json!({ "decisions": decisions })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    activate: bool,
}

async fn upload(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let headers = request.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut signature = headers
        .get(crate::signing::SIGNATURE_HEADER)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::BadRequest("the signature header is not text".into()))?;
    let (wasm, manifest) = if content_type.starts_with("multipart/form-data") {
        let form = read_form(
            Multipart::from_request(request, &state)
                .await
                .map_err(|e| {
                    ApiError::BadRequest(format!("malformed multipart upload: {}", e.body_text()))
                })?,
        )
        .await?;
        if form.signature.is_some() {
            signature = form.signature;
        }
        (form.model, form.manifest)
    } else if content_type.starts_with("application/wasm")
        || content_type.starts_with("application/octet-stream")
    {
        (Bytes::from_request(request, &state).await?, None)
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "upload the component as the body with content-type application/wasm, or as \
             multipart/form-data with a `model` part and an optional `manifest` part"
                .into(),
        ));
    };
    let manifest = manifest
        .map(|text| Manifest::parse(&text))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("upload refused: {e}")))?;
    let report = on_host(&state, move |host| {
        host.upload_with(
            &name,
            Upload {
                wasm: &wasm,
                manifest: manifest.as_ref(),
                activate: query.activate,
                signature: signature.as_deref(),
            },
        )
    })
    .await?;
    Ok(upload_response(&report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeginUpload {
    size: u64,
}

async fn begin_upload(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<BeginUpload>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(BeginUpload { size }) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let max = state.host.config().max_upload_bytes as u64;
    if size > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the upload is {size} bytes, over the limit of {max}"
        )));
    }
    let staged = on_host(&state, move |host| host.begin_staged_upload(&name, size)).await?;
    let Some(staged) = staged else {
        return Err(ApiError::NotImplemented(
            "this server's model store cannot take presigned uploads (it is not S3): \
             upload the component as the body of POST /v2/repository/models/{name}/versions"
                .into(),
        ));
    };
    let headers: serde_json::Map<String, serde_json::Value> = staged
        .headers
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    Ok(Json(json!({
        "upload_id": staged.id,
        "method": "PUT",
        "url": staged.url,
        "headers": headers,
        "expires_in_secs": staged.expires_in.as_secs(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishUpload {
    sha256: String,
    /// The text of a policy manifest, as the `manifest` part of a direct
    /// multipart upload would carry it.
    #[serde(default)]
    manifest: Option<String>,
}

async fn finish_upload(
    _: Admin,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Result<Json<FinishUpload>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(FinishUpload { sha256, manifest }) =
        body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let manifest = manifest
        .map(|text| Manifest::parse(text.as_bytes()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("upload refused: {e}")))?;
    let signature = signature_header(&headers)?;
    let report = on_host(&state, move |host| {
        host.finish_staged_upload(
            &name,
            &id,
            &sha256,
            manifest.as_ref(),
            query.activate,
            signature.as_deref(),
        )
    })
    .await?;
    Ok(upload_response(&report))
}

fn signature_header(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(crate::signing::SIGNATURE_HEADER)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::BadRequest("the signature header is not text".into()))
}

fn upload_response(report: &crate::UploadReport) -> Response {
    let status = if report.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({
            "name": report.name,
            "version": report.version,
            "kind": report.kind.as_str(),
            "sha256": report.sha256,
            "created": report.created,
            "active": report.active,
            "compiled": report.cache == crate::artifacts::CacheOutcome::Compiled,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
        })),
    )
        .into_response()
}

/// The parts of a multipart upload.
struct UploadForm {
    model: Bytes,
    manifest: Option<Bytes>,
    signature: Option<String>,
}

async fn read_form(mut form: Multipart) -> Result<UploadForm, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        if let Some(timeout) = crate::server::find_body_timeout(&e) {
            return ApiError::RequestTimeout(timeout.to_string());
        }
        ApiError::BadRequest(format!("malformed multipart upload: {}", e.body_text()))
    };
    let (mut model, mut manifest, mut signature) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        let slot = match name.as_str() {
            "model" => &mut model,
            "manifest" => &mut manifest,
            "signature" => &mut signature,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected multipart field {other:?}; expected `model`, `manifest`, `signature`"
                )));
            }
        };
        if slot.is_some() {
            return Err(ApiError::BadRequest(format!(
                "multipart field {name:?} appears twice"
            )));
        }
        *slot = Some(field.bytes().await.map_err(bad)?);
    }
    let model = model
        .ok_or_else(|| ApiError::BadRequest("the multipart upload has no `model` part".into()))?;
    let signature = signature
        .map(|b| String::from_utf8(b.to_vec()))
        .transpose()
        .map_err(|_| ApiError::BadRequest("the signature part is not text".into()))?
        .map(|s| s.trim().to_owned());
    Ok(UploadForm {
        model,
        manifest,
        signature,
    })
}

/// Runs a repository operation off the async executor.
async fn on_host<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(&crate::Host) -> Result<T, crate::RepoError> + Send + 'static,
) -> Result<T, ApiError> {
    let host = state.host.clone();
    Ok(run_blocking(move || op(&host)).await??)
}

async fn activate(
    _: Admin,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reply = json!({ "name": name, "active": version });
    on_host(&state, move |host| host.activate(&name, &version)).await?;
    Ok(Json(reply))
}

async fn rollback(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = name.clone();
    let version = on_host(&state, move |host| host.rollback(&n)).await?;
    Ok(Json(json!({ "name": name, "active": version })))
}

async fn delete_version(
    _: Admin,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reply = json!({ "name": name, "deleted": version });
    on_host(&state, move |host| host.delete_version(&name, &version)).await?;
    Ok(Json(reply))
}

async fn load(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reply = json!({ "name": name, "loaded": true });
    on_host(&state, move |host| host.load_model(&name)).await?;
    Ok(Json(reply))
}

async fn unload(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reply = json!({ "name": name, "loaded": false });
    on_host(&state, move |host| host.unload(&name)).await?;
    Ok(Json(reply))
}
