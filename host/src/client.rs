//! The client side of the repository API, for `airlock push`, `models`,
//! `activate` and `rollback`.
//!
//! `push` picks how to send a component: directly as the request body, or,
//! for components over [`DIRECT_UPLOAD_MAX`], through a presigned upload to
//! the server's S3 store (see [`crate::staging`]); a server that cannot
//! presign (a filesystem store) says so and the body goes directly.
//!
//! The client authenticates with the admin token ([`Auth::Token`]), or, for
//! a deployment behind API Gateway whose repository routes are `AWS_IAM`
//! authorised, signs every request to the server with SigV4
//! ([`Auth::SigV4`], see [`crate::sigv4`]). The presigned S3 `PUT` carries
//! neither: its URL is its authorisation.

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

/// How the client proves that it may use the repository API.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>`: `airlock serve`, or a function
    /// configured with `AIRLOCK_ADMIN_TOKEN`.
    Token(String),
    /// AWS SigV4 (service `execute-api`) for API Gateway's `AWS_IAM`
    /// routes. The signature takes the `Authorization` header, so no token
    /// goes with it.
    SigV4(crate::sigv4::Signer),
}

/// A repository API client for one server.
pub struct Client {
    http: reqwest::blocking::Client,
    /// For presigned uploads: same TLS settings, but plain HTTP is allowed
    /// for loopback URLs (an S3 emulator), which `http` refuses.
    storage: reqwest::blocking::Client,
    server: String,
    auth: Auth,
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
    /// plus `cacert` when given, and authenticates with `auth`.
    pub fn new(server: &str, cacert: Option<&Path>, auth: Auth) -> anyhow::Result<Self> {
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
            auth,
        })
    }

    /// A `POST` of `body` to `path` (with its query) on the server, with
    /// `headers` and the client's authentication: signed over all of it
    /// with SigV4, or with the bearer token. `progress` follows the body
    /// as it goes out.
    fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        progress: Option<Box<dyn FnMut(u64, u64) + Send>>,
    ) -> anyhow::Result<reqwest::blocking::RequestBuilder> {
        // Parsed first so that what is signed is the URL exactly as sent
        // (percent-encoded the way reqwest sends it).
        let url = reqwest::Url::parse(&format!("{}{path}", self.server))
            .with_context(|| format!("not a valid URL: {}{path}", self.server))?;
        let mut request = self.http.post(url.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match &self.auth {
            Auth::Token(token) => request = request.bearer_auth(token),
            Auth::SigV4(signer) => {
                for (name, value) in signer.sign("POST", url.as_str(), headers, &body)? {
                    request = request.header(name, value);
                }
            }
        }
        let total = body.len() as u64;
        Ok(match progress {
            Some(report) => request.body(progress_body(body, total, report)),
            None => request.body(body),
        })
    }

    /// A `POST` of `value` as JSON.
    fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        value: &serde_json::Value,
    ) -> anyhow::Result<reqwest::blocking::RequestBuilder> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.post(path, &all, serde_json::to_vec(value)?, None)
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        let response = request
            .send()
            .with_context(|| format!("failed to reach {}", self.server))?;
        let status = response.status();
        let body: serde_json::Value = response.json().with_context(|| {
            format!("the server answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            anyhow::bail!("the server refused ({status}): {}", refusal(&body));
        }
        Ok(body)
    }

    /// Uploads `wasm` as a new version of `name`, with `manifest` (the text
    /// of a policy manifest) when given, calling `progress(sent, total)` as
    /// the body goes out; `via` picks direct or presigned. `signature` is
    /// sent as it is: it must cover `wasm` and this manifest (or the absence
    /// of one), as [`crate::signing::sign`] makes it from the same file.
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
        let mut headers = vec![("content-type", content_type.as_str())];
        if let Some(signature) = signature {
            headers.push((crate::signing::SIGNATURE_HEADER, signature.trim()));
        }
        self.send(self.post(
            &format!("/v2/repository/models/{name}/versions?activate={activate}"),
            &headers,
            wasm,
            Some(Box::new(progress)),
        )?)
    }

    /// Asks for a presigned upload; `None` when the server has none to give
    /// (501 from a filesystem store; 404/405 from a server that predates them).
    fn begin_upload(&self, name: &str, size: u64) -> anyhow::Result<Option<serde_json::Value>> {
        let response = self
            .post_json(
                &format!("/v2/repository/models/{name}/uploads"),
                &[],
                &serde_json::json!({ "size": size }),
            )?
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
            anyhow::bail!("the server refused ({status}): {}", refusal(&body));
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
        let digest = crate::digest::sha256_hex(&wasm);
        let manifest = manifest
            .map(|m| String::from_utf8(m.to_vec()))
            .transpose()
            .context("the policy manifest is not UTF-8 text")?;
        let total = wasm.len() as u64;
        // Not signed, no token: the URL's query is its authorisation (S3
        // refuses a second one), and the bucket is not the server.
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
            .body(progress_body(wasm, total, Box::new(progress)))
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
        let headers: Vec<(&str, &str)> = signature
            .map(|s| (crate::signing::SIGNATURE_HEADER, s.trim()))
            .into_iter()
            .collect();
        self.send(self.post_json(
            &format!("/v2/repository/models/{name}/uploads/{id}?activate={activate}"),
            &headers,
            &serde_json::json!({ "sha256": digest, "manifest": manifest }),
        )?)
    }

    /// Every stored model version.
    pub fn models(&self) -> anyhow::Result<serde_json::Value> {
        self.send(self.post("/v2/repository/index", &[], Vec::new(), None)?)
    }

    /// Makes `version` the active version of `name`.
    pub fn activate(&self, name: &str, version: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.post(
            &format!("/v2/repository/models/{name}/versions/{version}/activate"),
            &[],
            Vec::new(),
            None,
        )?)
    }

    /// Re-activates the previously active version of `name`.
    pub fn rollback(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.post(
            &format!("/v2/repository/models/{name}/rollback"),
            &[],
            Vec::new(),
            None,
        )?)
    }
}

/// What a refusal says: the server's `error`, or API Gateway's `message`
/// (its 403 for a missing or wrong signature).
fn refusal(body: &serde_json::Value) -> &str {
    body["error"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or("no message")
}

/// A `multipart/form-data` body with the parts `model` and `manifest`, and
/// its content type. Built in memory so that the progress bar covers it.
fn multipart(wasm: Vec<u8>, manifest: &[u8]) -> (String, Vec<u8>) {
    // A boundary that cannot occur in either part: derived from their
    // digest, and checked.
    let mut boundary = format!("airlock-{}", &crate::digest::sha256_hex(&wasm)[..32]);
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
    report: Box<dyn FnMut(u64, u64) + Send>,
) -> reqwest::blocking::Body {
    reqwest::blocking::Body::sized(
        Progress {
            data: std::io::Cursor::new(wasm),
            total,
            report,
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
