//! The model store in S3, for Lambda and for fleets of edge servers that
//! share one store (`airlock serve --store s3://BUCKET/PREFIX`).
//!
//! Same layout as the filesystem store, under the prefix:
//!
//! ```text
//! <prefix>/blobs/sha256/<hex>.wasm                uploaded bytes, immutable
//! <prefix>/artifacts/<engine-hash>/<hex>.cwasm    compiled by a host; its HMAC-SHA256 in the object's metadata
//! <prefix>/models/<name>/index.json               versions, digests, active pointer, history
//! <prefix>/staging/<id>.wasm                      presigned uploads waiting to be finalised
//! ```
//!
//! Each object is written by one `PutObject`, which S3 makes visible whole
//! or not at all, so the filesystem store's temp-file-and-rename has no
//! equivalent to do here. Index changes are compare-and-swap: the index
//! is read with its ETag and written back with `If-Match: <ETag>` (a new
//! one with `If-None-Match: *`); S3 answers 412 when another host wrote in
//! between, and the change is redone on the fresh index (see
//! [`Store::write_index_if`]). So two Lambda instances that take uploads of
//! one model at the same moment both get their version in.
//!
//! Artifacts are native code, and anyone who can write this bucket prefix
//! could put an artifact in front of every host that shares it. So each
//! carries a keyed MAC (`x-amz-meta-hmac-sha256`) made with the hosts'
//! [`crate::artifacts::ArtifactKey`], which lives in their configuration (the
//! Lambda function's environment), never in the bucket; a host verifies it
//! before the artifact goes anywhere near wasmtime, and a host without the
//! key does not use shared artifacts at all. The prefix should still be
//! writable only by the hosts, as `infra` sets it up (the function's role):
//! a writer without the key can make hosts recompile, not run its code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;

use crate::digest::sha256_hex;
use crate::store::{
    IndexRead, ModelIndex, PresignedUpload, Staged, Store, check_digest, parse_index,
};

/// The user metadata that carries a shared artifact's MAC.
const ARTIFACT_MAC: &str = "hmac-sha256";

/// How long a presigned upload URL is valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);

/// The S3 store.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    io: Arc<IoRuntime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A small tokio runtime of its own for the SDK's I/O.
///
/// The repository API is synchronous (it runs off the executor, and the
/// filesystem store blocks anyway); a dedicated runtime lets it wait for S3
/// from any thread — a blocking-pool thread, a `block_in_place` section, a
/// plain thread in a test — without caring which runtime, if any, is
/// current. It is shut down in the background on drop, so dropping the
/// store inside an async context does not panic.
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl IoRuntime {
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self
            .0
            .as_ref()
            .expect("the I/O runtime lives as long as the store");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().expect("the S3 I/O task ended without an answer")
    }
}

/// Splits `s3://bucket/prefix/…` into the bucket and the prefix (without
/// slashes at either end; it may be empty).
pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .with_context(|| format!("{url:?} is not an s3://BUCKET/PREFIX URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(
        (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{url:?}: {bucket:?} is not a valid S3 bucket name"
    );
    let prefix = prefix.trim_matches('/');
    anyhow::ensure!(
        !prefix.split('/').any(|p| p == ".." || p == "."),
        "{url:?}: the prefix may not contain . or .. segments"
    );
    Ok((bucket.to_owned(), prefix.to_owned()))
}

impl S3Store {
    /// Connects to `s3://BUCKET/PREFIX` with the standard AWS configuration
    /// chain (on Lambda: the function role's credentials from the
    /// environment). `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3` point it at
    /// another endpoint (an emulator), which then gets path-style requests.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, None)
    }

    /// [`S3Store::connect`] with this SDK configuration instead of the
    /// environment's (tests: several stores on one emulator in one process).
    pub fn connect_with(url: &str, sdk: Option<aws_config::SdkConfig>) -> anyhow::Result<Self> {
        let (bucket, prefix) = parse_url(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("airlock-s3")
            .enable_all()
            .build()
            .context("failed to start the S3 I/O runtime")?;
        let io = Arc::new(IoRuntime(Some(rt)));
        let client = io.block_on(async {
            let from_env = sdk.is_none();
            let sdk = match sdk {
                Some(sdk) => sdk,
                None => {
                    aws_config::defaults(aws_config::BehaviorVersion::latest())
                        .load()
                        .await
                }
            };
            let path_style = sdk.endpoint_url().is_some()
                || (from_env
                    && std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty()));
            let config = aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(path_style)
                // Checksums only where S3 requires them: blobs are checked
                // against their sha256 and artifacts against their MAC on
                // read anyway, and a presigned PUT must not carry a checksum
                // of an empty body.
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .build();
            aws_sdk_s3::Client::from_conf(config)
        });
        Ok(Self {
            client,
            bucket,
            prefix,
            io,
        })
    }

    fn key(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.prefix)
        }
    }

    fn index_key(&self, name: &str) -> String {
        self.key(&format!("models/{name}/index.json"))
    }

    fn blob_key(&self, digest: &str) -> String {
        self.key(&format!("blobs/sha256/{digest}.wasm"))
    }

    fn artifact_key(&self, engine_hash: &str, digest: &str) -> String {
        self.key(&format!("artifacts/{engine_hash}/{digest}.cwasm"))
    }

    fn staging_key(&self, id: &str) -> String {
        self.key(&format!("staging/{id}.wasm"))
    }

    fn location_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn put(
        client: aws_sdk_s3::Client,
        bucket: String,
        key: String,
        bytes: Vec<u8>,
        content_type: &'static str,
        metadata: Option<(&'static str, String)>,
    ) -> anyhow::Result<()> {
        let mut request = client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .content_type(content_type)
            .body(ByteStream::from(bytes));
        if let Some((k, v)) = metadata {
            request = request.metadata(k, v);
        }
        request
            .send()
            .await
            .map_err(|e| sdk_error(e, &format!("failed to write s3://{bucket}/{key}")))?;
        Ok(())
    }

    /// Reads `key`: `None` when it does not exist, else its bytes and its
    /// artifact MAC (user metadata `hmac-sha256`), if it has one.
    fn get(&self, key: String) -> anyhow::Result<Option<(Vec<u8>, Option<String>)>> {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        self.io.block_on(async move {
            let out = match client.get_object().bucket(&bucket).key(&key).send().await {
                Ok(out) => out,
                Err(e) if status(&e) == Some(404) => return Ok(None),
                Err(e) => {
                    return Err(sdk_error(e, &format!("failed to read s3://{bucket}/{key}")));
                }
            };
            let checksum = out.metadata().and_then(|m| m.get(ARTIFACT_MAC).cloned());
            let bytes = out
                .body
                .collect()
                .await
                .with_context(|| format!("failed to read s3://{bucket}/{key}"))?
                .into_bytes()
                .to_vec();
            Ok(Some((bytes, checksum)))
        })
    }

    fn delete(&self, key: String) -> anyhow::Result<()> {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        self.io.block_on(async move {
            client
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| sdk_error(e, &format!("failed to delete s3://{bucket}/{key}")))?;
            Ok(())
        })
    }
}

/// The HTTP status of an SDK error, when the service answered.
fn status<E>(
    error: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

/// An SDK error as an `anyhow` chain with what S3 said.
fn sdk_error<E>(
    error: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    what: &str,
) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_s3::error::DisplayErrorContext;
    anyhow::anyhow!("{what}: {}", DisplayErrorContext(&error))
}

impl Store for S3Store {
    fn location(&self) -> String {
        self.location_of(&self.prefix)
    }

    fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_hex(bytes);
        // Content-addressed and immutable: rewriting identical bytes is
        // harmless and costs one request, like checking first would.
        self.io.block_on(Self::put(
            self.client.clone(),
            self.bucket.clone(),
            self.blob_key(&digest),
            bytes.to_vec(),
            "application/wasm",
            None,
        ))?;
        Ok(digest)
    }

    fn get_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        check_digest(digest)?;
        let key = self.blob_key(digest);
        let (bytes, _) = self
            .get(key.clone())?
            .with_context(|| format!("{} does not exist", self.location_of(&key)))?;
        anyhow::ensure!(
            sha256_hex(&bytes) == digest,
            "{} is corrupt: its digest does not match its name",
            self.location_of(&key)
        );
        Ok(bytes)
    }

    fn delete_blob(&self, digest: &str) -> anyhow::Result<()> {
        check_digest(digest)?;
        self.delete(self.blob_key(digest))
    }

    /// One `GetObject` with `If-None-Match: <ETag>`: S3 answers 304 with no
    /// body when the index has not changed, which is what warm Lambda
    /// instances ask every few seconds.
    fn read_index_if_changed(&self, name: &str, known: Option<&str>) -> anyhow::Result<IndexRead> {
        crate::validate_model_name(name).map_err(anyhow::Error::msg)?;
        let key = self.index_key(name);
        let origin = self.location_of(&key);
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let known = known.map(str::to_owned);
        let read = self.io.block_on(async move {
            let mut request = client.get_object().bucket(&bucket).key(&key);
            if let Some(tag) = known {
                request = request.if_none_match(tag);
            }
            let out = match request.send().await {
                Ok(out) => out,
                Err(e) if status(&e) == Some(304) => return Ok(None),
                Err(e) if status(&e) == Some(404) => return Ok(Some(None)),
                Err(e) => {
                    return Err(sdk_error(e, &format!("failed to read s3://{bucket}/{key}")));
                }
            };
            let tag = out.e_tag().unwrap_or_default().to_owned();
            let bytes = out
                .body
                .collect()
                .await
                .with_context(|| format!("failed to read s3://{bucket}/{key}"))?
                .into_bytes();
            Ok::<_, anyhow::Error>(Some(Some((bytes, tag))))
        })?;
        Ok(match read {
            None => IndexRead::Unchanged,
            Some(None) => IndexRead::Missing,
            Some(Some((bytes, tag))) => IndexRead::Changed {
                index: parse_index(name, &bytes, &origin)?,
                tag,
            },
        })
    }

    fn write_index(&self, index: &ModelIndex) -> anyhow::Result<()> {
        crate::validate_model_name(&index.name).map_err(anyhow::Error::msg)?;
        let json = serde_json::to_vec_pretty(index)?;
        self.io.block_on(Self::put(
            self.client.clone(),
            self.bucket.clone(),
            self.index_key(&index.name),
            json,
            "application/json",
            None,
        ))
    }

    /// A conditional `PutObject` (S3 conditional writes, 2024): 412
    /// Precondition Failed means the tag is stale; 409 (another
    /// conditional write to the key in flight) and 404 (the index was
    /// deleted meanwhile, for `If-Match`) also mean "read again".
    fn write_index_if(&self, index: &ModelIndex, expected: Option<&str>) -> anyhow::Result<bool> {
        crate::validate_model_name(&index.name).map_err(anyhow::Error::msg)?;
        let json = serde_json::to_vec_pretty(index)?;
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let key = self.index_key(&index.name);
        let expected = expected.map(str::to_owned);
        self.io.block_on(async move {
            let mut request = client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(json));
            let if_match = expected.is_some();
            request = match expected {
                Some(tag) => request.if_match(tag),
                None => request.if_none_match("*"),
            };
            match request.send().await {
                Ok(_) => Ok(true),
                Err(e) if matches!(status(&e), Some(412 | 409)) => Ok(false),
                // A 404 without If-Match is a missing bucket: an error.
                Err(e) if if_match && status(&e) == Some(404) => Ok(false),
                Err(e) => Err(sdk_error(
                    e,
                    &format!("failed to write s3://{bucket}/{key}"),
                )),
            }
        })
    }

    fn list(&self) -> anyhow::Result<Vec<String>> {
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let prefix = self.key("models/");
        let mut names = self.io.block_on(async move {
            let mut names = Vec::new();
            let mut token = None;
            loop {
                let out = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .delimiter("/")
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| sdk_error(e, &format!("failed to list s3://{bucket}/{prefix}")))?;
                for common in out.common_prefixes() {
                    if let Some(name) = common
                        .prefix()
                        .and_then(|p| p.strip_prefix(prefix.as_str()))
                        .map(|p| p.trim_end_matches('/'))
                        .filter(|p| crate::validate_model_name(p).is_ok())
                    {
                        names.push(name.to_owned());
                    }
                }
                match out.next_continuation_token() {
                    Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
                    _ => break,
                }
            }
            Ok::<_, anyhow::Error>(names)
        })?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn shares_artifacts(&self) -> bool {
        true
    }

    fn get_artifact(
        &self,
        engine_hash: &str,
        digest: &str,
    ) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        check_digest(digest)?;
        let key = self.artifact_key(engine_hash, digest);
        Ok(match self.get(key)? {
            Some((bytes, Some(mac))) => Some((bytes, mac)),
            // An artifact without a MAC is not one this code wrote.
            Some((_, None)) | None => None,
        })
    }

    fn put_artifact(
        &self,
        engine_hash: &str,
        digest: &str,
        bytes: &[u8],
        mac: &str,
    ) -> anyhow::Result<()> {
        check_digest(digest)?;
        self.io.block_on(Self::put(
            self.client.clone(),
            self.bucket.clone(),
            self.artifact_key(engine_hash, digest),
            bytes.to_vec(),
            "application/octet-stream",
            Some((ARTIFACT_MAC, mac.to_owned())),
        ))
    }

    /// A `PutObject` presigned for exactly `size` bytes of
    /// `application/wasm`: S3 refuses a body of another length.
    fn presign_upload(&self, id: &str, size: u64) -> anyhow::Result<Option<PresignedUpload>> {
        check_upload_id(id)?;
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let key = self.staging_key(id);
        let size = i64::try_from(size).context("upload size out of range")?;
        let presigned = self.io.block_on(async move {
            let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(PRESIGN_TTL)?;
            client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type("application/wasm")
                .content_length(size)
                .presigned(config)
                .await
                .map_err(|e| sdk_error(e, &format!("failed to presign s3://{bucket}/{key}")))
        })?;
        Ok(Some(PresignedUpload {
            url: presigned.uri().to_owned(),
            headers: presigned
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            expires_in: PRESIGN_TTL,
        }))
    }

    fn take_staged(&self, id: &str, max_bytes: u64) -> anyhow::Result<Staged> {
        check_upload_id(id)?;
        let key = self.staging_key(id);
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let head_key = key.clone();
        let size = self.io.block_on(async move {
            match client
                .head_object()
                .bucket(&bucket)
                .key(&head_key)
                .send()
                .await
            {
                Ok(out) => Ok(Some(out.content_length().unwrap_or(0))),
                Err(e) if status(&e) == Some(404) => Ok(None),
                Err(e) => Err(sdk_error(
                    e,
                    &format!("failed to read s3://{bucket}/{head_key}"),
                )),
            }
        })?;
        let Some(size) = size else {
            return Ok(Staged::Missing);
        };
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        let staged = if size > max_bytes {
            Staged::TooLarge(size)
        } else {
            match self.get(key.clone())? {
                Some((bytes, _)) => Staged::Ready(bytes),
                None => Staged::Missing,
            }
        };
        self.delete(key)?;
        Ok(staged)
    }
}

/// Upload ids are 32 lowercase hex characters (128 random bits), which
/// keeps them out of reach of guessing and safe inside a key.
pub fn check_upload_id(id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "not an upload id: {id:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://my-bucket/models").unwrap(),
            ("my-bucket".into(), "models".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert!(parse_url("https://my-bucket/x").is_err());
        assert!(parse_url("s3://My_Bucket/x").is_err());
        assert!(parse_url("s3://bucket/../x").is_err());
        assert!(check_upload_id(&"a".repeat(32)).is_ok());
        assert!(check_upload_id("../../models/x/index.json").is_err());
    }
}
