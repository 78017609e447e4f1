//! The client side of the repository API, for `airlock push`, `models`,
//! `activate` and `rollback`.
//!
//! `push` picks how to send a component: directly as the request body, or,
//! for components over [`DIRECT_UPLOAD_MAX`], through a presigned upload to
//! the server's S3 store (see [`crate::staging`]); a server that cannot
//! presign (a filesystem store) says so and the body goes directly.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// Components larger than this go through a presigned upload when the
/// server offers one. A Lambda function takes at most 6 MB per synchronous
/// invocation and a binary body arrives base64-encoded (4/3 larger), so
/// about 4.5 MB is the most a direct upload through API Gateway can carry.
pub const DIRECT_UPLOAD_MAX: usize = 4 << 20;

/// How `push` sends the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadVia {
    /// Presigned when over [`DIRECT_UPLOAD_MAX`] and offered, else direct.
    #[default]
    Auto,
    /// Always as the request body.
    Direct,
    /// Always presigned (fails when the server does not offer it).
    Presigned,
}

impl std::str::FromStr for UploadVia {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "direct" => Ok(Self::Direct),
            "presigned" => Ok(Self::Presigned),
            other => Err(format!(
                "unknown upload mode {other:?}: auto, direct or presigned"
            )),
        }
    }
}

/// A repository API client for one server.
pub struct Client {
    http: reqwest::blocking::Client,
    /// For presigned uploads: same TLS settings, but plain HTTP is allowed
    /// for loopback URLs (an S3 emulator), which `http` refuses.
    storage: reqwest::blocking::Client,
    server: String,
    token: String,
}

/// Whether `url` may be used over plain HTTP: only to this machine (a local
/// emulator); anything else must be https.
fn plain_http_allowed(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| {
        u.scheme() == "http"
            && match u.host_str() {
                Some("localhost") => true,
                Some(host) => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()),
                None => false,
            }
    })
}

impl Client {
    /// A client for `server` (an https URL) that trusts the public web PKI
    /// plus `cacert` when given, and authenticates with `token`.
    pub fn new(server: &str, cacert: Option<&Path>, token: String) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = cacert {
            let pem = std::fs::read(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.with_context(|| format!("bad certificate in {}", path.display()))?)
                    .with_context(|| format!("unusable certificate in {}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Plain HTTP only to a server on this machine (the Lambda emulator,
        // a test); everything else is https.
        let http = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .https_only(!plain_http_allowed(server))
            .timeout(Duration::from_secs(600))
            .build()
            .context("failed to build the HTTP client")?;
        let storage = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(600))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            http,
            storage,
            server: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("failed to reach {}", self.server))?;
        let status = response.status();
        let body: serde_json::Value = response.json().with_context(|| {
            format!("the server answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no message");
            anyhow::bail!("the server refused ({status}): {message}");
        }
        Ok(body)
    }

    /// Uploads `wasm` as a new version of `name`, with `manifest` (the text
    /// of a policy manifest) when given, calling `progress(sent, total)` as
    /// the body goes out; `via` picks direct or presigned.
    // The arguments are the upload's independent knobs, as on the command line.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: Option<&[u8]>,
        activate: bool,
        signature: Option<&str>,
        via: UploadVia,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> anyhow::Result<serde_json::Value> {
        let presign = match via {
            UploadVia::Direct => false,
            UploadVia::Presigned => true,
            UploadVia::Auto => wasm.len() > DIRECT_UPLOAD_MAX,
        };
        if presign {
            match self.begin_upload(name, wasm.len() as u64)? {
                Some(slot) => {
                    return self
                        .push_presigned(name, wasm, manifest, activate, signature, slot, progress);
                }
                None if via == UploadVia::Auto => {}
                None => anyhow::bail!(
                    "{} does not offer presigned uploads (its model store is not S3)",
                    self.server
                ),
            }
        }
        let (content_type, wasm) = match manifest {
            None => ("application/wasm".to_owned(), wasm),
            Some(manifest) => multipart(wasm, manifest),
        };
        let total = wasm.len() as u64;
        let url = format!(
            "{}/v2/repository/models/{name}/versions?activate={activate}",
            self.server
        );
        let mut request = self.http.post(url).header("content-type", content_type);
        if let Some(signature) = signature {
            request = request.header(crate::signing::SIGNATURE_HEADER, signature.trim());
        }
        self.send(request.body(progress_body(wasm, total, progress)))
    }

    /// Asks for a presigned upload; `None` when the server has none to give
    /// (501 from a filesystem store; 404/405 from a server that predates them).
    fn begin_upload(&self, name: &str, size: u64) -> anyhow::Result<Option<serde_json::Value>> {
        let response = self
            .http
            .post(format!(
                "{}/v2/repository/models/{name}/uploads",
                self.server
            ))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "size": size }))
            .send()
            .with_context(|| format!("failed to reach {}", self.server))?;
        let status = response.status();
        if matches!(status.as_u16(), 404 | 405 | 501) {
            return Ok(None);
        }
        let body: serde_json::Value = response.json().with_context(|| {
            format!("the server answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no message");
            anyhow::bail!("the server refused ({status}): {message}");
        }
        Ok(Some(body))
    }

    #[allow(clippy::too_many_arguments)]
    fn push_presigned(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: Option<&[u8]>,
        activate: bool,
        signature: Option<&str>,
        slot: serde_json::Value,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> anyhow::Result<serde_json::Value> {
        let id = slot["upload_id"]
            .as_str()
            .context("the server's presigned upload has no upload_id")?;
        let url = slot["url"]
            .as_str()
            .context("the server's presigned upload has no url")?;
        anyhow::ensure!(
            url.starts_with("https://") || plain_http_allowed(url),
            "the server handed out a presigned URL that is neither https nor local"
        );
        let digest = crate::engine::sha256_hex(&wasm);
        let manifest = manifest
            .map(|m| String::from_utf8(m.to_vec()))
            .transpose()
            .context("the policy manifest is not UTF-8 text")?;
        let total = wasm.len() as u64;
        let mut put = self.storage.put(url);
        for (key, value) in slot["headers"].as_object().into_iter().flatten() {
            // reqwest sets these from the URL and the sized body.
            if key.eq_ignore_ascii_case("host") || key.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if let Some(value) = value.as_str() {
                put = put.header(key.as_str(), value);
            }
        }
        let response = put
            .body(progress_body(wasm, total, progress))
            .send()
            .context("failed to upload to the presigned URL")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().unwrap_or_default();
            anyhow::bail!(
                "the store refused the upload ({status}): {}",
                text.chars().take(300).collect::<String>()
            );
        }
        let mut request = self
            .http
            .post(format!(
                "{}/v2/repository/models/{name}/uploads/{id}?activate={activate}",
                self.server
            ))
            .json(&serde_json::json!({ "sha256": digest, "manifest": manifest }));
        if let Some(signature) = signature {
            request = request.header(crate::signing::SIGNATURE_HEADER, signature.trim());
        }
        self.send(request)
    }

    /// Every stored model version.
    pub fn models(&self) -> anyhow::Result<serde_json::Value> {
        self.send(
            self.http
                .post(format!("{}/v2/repository/index", self.server)),
        )
    }

    /// Makes `version` the active version of `name`.
    pub fn activate(&self, name: &str, version: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.post(format!(
            "{}/v2/repository/models/{name}/versions/{version}/activate",
            self.server
        )))
    }

    /// Re-activates the previously active version of `name`.
    pub fn rollback(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.post(format!(
            "{}/v2/repository/models/{name}/rollback",
            self.server
        )))
    }
}

/// A `multipart/form-data` body with the parts `model` and `manifest`, and
/// its content type. Built in memory so that the progress bar covers it.
fn multipart(wasm: Vec<u8>, manifest: &[u8]) -> (String, Vec<u8>) {
    // A boundary that cannot occur in either part: derived from their
    // digest, and checked.
    let mut boundary = format!("airlock-{}", &crate::engine::sha256_hex(&wasm)[..32]);
    while contains(&wasm, boundary.as_bytes()) || contains(manifest, boundary.as_bytes()) {
        boundary.push('x');
    }
    let mut body = Vec::with_capacity(wasm.len() + manifest.len() + 512);
    let mut part = |name: &str, content_type: &str, bytes: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\ncontent-type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("model", "application/wasm", &wasm);
    part("manifest", "text/plain", manifest);
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn progress_body(
    wasm: Vec<u8>,
    total: u64,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> reqwest::blocking::Body {
    reqwest::blocking::Body::sized(
        Progress {
            data: std::io::Cursor::new(wasm),
            total,
            report: Box::new(progress),
        },
        total,
    )
}

/// A reader that reports how much of it has been read.
struct Progress {
    data: std::io::Cursor<Vec<u8>>,
    total: u64,
    report: Box<dyn FnMut(u64, u64) + Send>,
}

impl Read for Progress {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Small reads so that progress moves smoothly.
        let limit = buf.len().min(64 << 10);
        let n = self.data.read(&mut buf[..limit])?;
        (self.report)(self.data.position(), self.total);
        Ok(n)
    }
}
