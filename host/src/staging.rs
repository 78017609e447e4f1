//! Uploads too large for one request: presigned `PUT`s into the store.
//!
//! A Lambda function takes at most 6 MB per synchronous invocation (API
//! Gateway itself 10 MB), and a binary body travels base64-encoded, so a
//! component over about 4 MB cannot go through the repository API. With a
//! store that can presign (S3), the upload goes in three steps:
//!
//! 1. `POST /v2/repository/models/{name}/uploads` `{"size": N}`: the host
//!    answers with an upload id and a presigned `PUT` URL to a staging key,
//!    valid for [`crate::s3store::PRESIGN_TTL`] and only for exactly N bytes;
//! 2. the client `PUT`s the component to that URL, straight to S3;
//! 3. `POST /v2/repository/models/{name}/uploads/{id}` `{"sha256": "…"}`:
//!    the host takes the staged bytes out of staging, checks them against the
//!    sha256 the client computed (so bytes changed on the way are refused),
//!    and carries on exactly as with a direct upload (signature, manifest,
//!    validation, blob, index, registry); a policy manifest rides along as
//!    text in that JSON body (`"manifest"`).
//!
//! With the filesystem store there is nothing to presign: step 1 answers 501
//! and clients upload the body directly.

use std::time::Duration;

use crate::digest::sha256_hex;
use crate::manifest::Manifest;
use crate::store::Staged;
use crate::{Host, RepoError, Upload, UploadReport};

/// A presigned upload handed to a client.
#[derive(Debug, Clone)]
pub struct StagedUpload {
    /// The id to finalise the upload with.
    pub id: String,
    /// Where to `PUT` the bytes.
    pub url: String,
    /// Headers to send with the `PUT`.
    pub headers: Vec<(String, String)>,
    /// How long the URL is valid.
    pub expires_in: Duration,
}

impl Host {
    /// Opens a presigned upload of `size` bytes for model `name`; `None`
    /// when the store cannot presign (upload the body directly instead).
    pub fn begin_staged_upload(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Option<StagedUpload>, RepoError> {
        crate::validate_model_name(name).map_err(RepoError::BadRequest)?;
        if size == 0 {
            return Err(RepoError::BadRequest("the upload is empty".into()));
        }
        let id = random_id()?;
        Ok(self
            .store
            .presign_upload(&id, size)?
            .map(|presigned| StagedUpload {
                id,
                url: presigned.url,
                headers: presigned.headers,
                expires_in: presigned.expires_in,
            }))
    }

    /// Finalises presigned upload `id` as a new version of `name`: the
    /// staged bytes must hash to `sha256`; then as [`Host::upload_with`].
    pub fn finish_staged_upload(
        &self,
        name: &str,
        id: &str,
        sha256: &str,
        manifest: Option<&Manifest>,
        activate: bool,
        signature: Option<&str>,
    ) -> Result<UploadReport, RepoError> {
        crate::validate_model_name(name).map_err(RepoError::BadRequest)?;
        crate::s3store::check_upload_id(id).map_err(|e| RepoError::BadRequest(e.to_string()))?;
        let max = self.config.max_upload_bytes as u64;
        let wasm = match self.store.take_staged(id, max)? {
            Staged::Ready(bytes) => bytes,
            Staged::Missing => {
                return Err(RepoError::NotFound(format!(
                    "no staged upload {id:?}: it was never uploaded, has expired or was already finalised"
                )));
            }
            Staged::TooLarge(size) => {
                return Err(RepoError::BadRequest(format!(
                    "the staged upload is {size} bytes, over the limit of {max}"
                )));
            }
        };
        if sha256_hex(&wasm) != sha256.to_ascii_lowercase() {
            return Err(RepoError::BadRequest(
                "the staged bytes do not match the sha256 given: upload again".into(),
            ));
        }
        self.upload_with(
            name,
            Upload {
                wasm: &wasm,
                manifest,
                activate,
                signature,
            },
        )
    }
}

/// 128 random bits in hex.
fn random_id() -> Result<String, RepoError> {
    let bytes = crate::fsutil::random_bytes::<16>().map_err(|e| {
        RepoError::Storage(anyhow::Error::new(e).context("failed to read random bytes"))
    })?;
    Ok(hex::encode(bytes))
}
