//! The client side of the repository API, for `airlock push`, `models`,
//! `activate` and `rollback`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// A repository API client for one server.
pub struct Client {
    http: reqwest::blocking::Client,
    server: String,
    token: String,
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
        let http = reqwest::blocking::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(Duration::from_secs(600))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            http,
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
    /// the body goes out.
    pub fn push(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: Option<&[u8]>,
        activate: bool,
        signature: Option<&str>,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> anyhow::Result<serde_json::Value> {
        let (content_type, wasm) = match manifest {
            None => ("application/wasm".to_owned(), wasm),
            Some(manifest) => multipart(wasm, manifest),
        };
        let total = wasm.len() as u64;
        let body = reqwest::blocking::Body::sized(
            Progress {
                data: std::io::Cursor::new(wasm),
                total,
                report: Box::new(progress),
            },
            total,
        );
        let url = format!(
            "{}/v2/repository/models/{name}/versions?activate={activate}",
            self.server
        );
        let mut request = self.http.post(url).header("content-type", content_type);
        if let Some(signature) = signature {
            request = request.header(crate::signing::SIGNATURE_HEADER, signature.trim());
        }
        self.send(request.body(body))
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
