//! A shared HTTPS server for the tests: the real `airlock` host, the real
//! guest components, rustls on 127.0.0.1 with a generated CA, and a reqwest
//! client that trusts only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use airlock::{Host, HostConfig, Limits};

/// The running test server.
pub struct Server {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub ca_path: PathBuf,
    _data: tempfile::TempDir,
}

/// Limits of the test servers: small, so that failures are fast.
pub const TEST_LIMITS: Limits = Limits {
    memory_bytes: 64 << 20,
    deadline: Duration::from_millis(200),
    table_elements: 20_000,
    host_resources: 64,
    output_bytes: 16 << 20,
};

/// Body limit of the test server.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Upload limit of the test server (the ONNX guest is about 16 MB).
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;

/// The admin token of the test servers.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A host configuration with its store in `data` and the shared artifact cache.
pub fn test_config(data: &Path) -> HostConfig {
    let mut config = HostConfig::new(data);
    config.artifacts_dir = Some(artifact_root());
    config.max_body_bytes = MAX_BODY_BYTES;
    config.max_upload_bytes = MAX_UPLOAD_BYTES;
    config.limits = TEST_LIMITS;
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.compiler = airlock::compile::Compiler::worker(
        env!("CARGO_BIN_EXE_airlock-test-worker"),
        airlock::compile::CompileBudget::default(),
    );
    config
}

/// Where compiled artifacts are kept between test runs, so that the large
/// ONNX guest is compiled once per build, not once per test.
pub fn artifact_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("airlock-test-data")
}

/// The shared server, started on first use on its own runtime thread.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let mut models = airlock::example_models().to_vec();
    models.push(("misbehave", airlock_artifacts::MISBEHAVE));
    models.push(("wasi-probe", airlock_artifacts::WASI_PROBE));
    start_with(|_| {}, &models)
}

/// Starts a server of its own, for tests that need other settings than the
/// shared one: `configure` adjusts the test configuration, and `models`
/// lists the (name, component path) pairs to serve.
pub fn start_with(configure: impl FnOnce(&mut HostConfig), models: &[(&str, &str)]) -> Server {
    start_with_limits(configure, models, airlock::server::ServerLimits::default())
}

/// Like [`start_with`], with the transport's connection limits `limits`.
pub fn start_with_limits(
    configure: impl FnOnce(&mut HostConfig),
    models: &[(&str, &str)],
    limits: airlock::server::ServerLimits,
) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    configure(&mut config);
    let host = Host::new(config).unwrap();
    for (name, path) in models {
        host.load_file(name, Path::new(path)).unwrap();
    }

    let local = airlock::tls::ensure_local_certificate(&data.path().join("tls")).unwrap();
    let identity = airlock::tls::Identity::from_pem_files(&local.cert, &local.key).unwrap();
    let tls = airlock::tls::server_config(identity).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let router = host.router();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = airlock::server::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            airlock::server::serve_tls(listener, tls, router, limits, std::future::pending())
                .await
                .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    Server {
        addr,
        data_dir: data.path().to_owned(),
        ca_pem: std::fs::read(&local.ca).unwrap(),
        ca_path: local.ca.clone(),
        _data: data,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// A client that trusts the server's CA and nothing else.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        self.client_builder_with_alpn(&[b"h2", b"http/1.1"])
    }

    /// A client builder offering exactly the ALPN protocols `alpn`.
    pub fn client_builder_with_alpn(&self, alpn: &[&[u8]]) -> reqwest::ClientBuilder {
        let mut tls = client_tls(&self.ca_pem);
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(60))
    }
}

/// A rustls client configuration trusting `ca_pem` only.
pub fn client_tls(ca_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// POSTs `body` as JSON and returns (status, error-kind header, JSON body).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let response = client.post(url).json(body).send().await.unwrap();
    split(response).await
}

pub async fn split(response: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("x-airlock-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, kind, json)
}

/// The committed held-out split of the digits dataset.
#[derive(serde::Deserialize)]
pub struct DigitsTest {
    pub inputs: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    pub reference_predictions: Vec<usize>,
    pub reference_probabilities: Vec<Vec<f32>>,
    pub reference_accuracy: f64,
}

pub fn digits_test() -> DigitsTest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-models/data/digits_test.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A valid one-row digits request (the first held-out image).
pub fn digits_request() -> serde_json::Value {
    let test = digits_test();
    serde_json::json!({
        "id": "probe",
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": test.inputs[0]}]
    })
}

/// Asserts the digits model still answers correctly.
pub async fn assert_still_serving(client: &reqwest::Client) {
    assert_serving(server(), client).await;
}

/// Asserts the digits model of `server` answers correctly.
pub async fn assert_serving(server: &Server, client: &reqwest::Client) {
    let (status, _, body) = post_json(
        client,
        &server.url("/v2/models/digits/infer"),
        &digits_request(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let probs = body["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    assert_eq!(argmax_json(probs), digits_test().reference_predictions[0]);
}

pub fn argmax_json(values: &[serde_json::Value]) -> usize {
    let v: Vec<f64> = values.iter().map(|x| x.as_f64().unwrap()).collect();
    argmax(&v)
}

pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Uploads `wasm` as a new version of `name` on the shared server: as a
/// multipart form with a `manifest` part when one is given (encoded by
/// reqwest, not by Airlock's own client), else as an `application/wasm` body.
pub async fn upload_with_manifest(
    client: &reqwest::Client,
    name: &str,
    wasm: Vec<u8>,
    manifest: Option<&str>,
    activate: bool,
) -> (u16, serde_json::Value) {
    let url = server().url(&format!(
        "/v2/repository/models/{name}/versions?activate={activate}"
    ));
    let request = client.post(url).bearer_auth(ADMIN_TOKEN);
    let request = match manifest {
        Some(manifest) => {
            let form = reqwest::multipart::Form::new()
                .part(
                    "model",
                    reqwest::multipart::Part::bytes(wasm)
                        .file_name("model.wasm")
                        .mime_str("application/wasm")
                        .unwrap(),
                )
                .text("manifest", manifest.to_owned());
            request.multipart(form)
        }
        None => request
            .header("content-type", "application/wasm")
            .body(wasm),
    };
    let (status, _, body) = split(request.send().await.unwrap()).await;
    (status, body)
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
