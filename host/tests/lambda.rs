//! The real `bootstrap` binary under the Lambda runtime API emulator
//! (`cargo lambda watch --only-lambda-apis`, which runs the binary built
//! here instead of building its own), with S3 served by moto, both on
//! free loopback ports; and the function's zip package.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BUCKET: &str = "airlock-lambda-test";
const TOKEN: &str = "lambda-test-token";

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tool from PATH (tests/run puts its venv there) or from that venv.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/test-venv/bin/{name}"));
    on_path
        .or_else(|| venv.is_file().then_some(venv))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not on PATH. Run the tests with tests/run, which installs it from \
                 tests/requirements.txt into target/test-venv"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// Starts `command` (told to listen on the port it is given) and waits
/// until the port accepts connections; retries on another port if the
/// chosen one was taken meanwhile.
fn start_listening(what: &str, mut command: impl FnMut(u16) -> Command) -> (Running, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {what}: {e}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (Running(child), port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start {what}");
}

fn moto() -> (Running, String) {
    let program = tool("moto_server");
    let (child, port) = start_listening("moto_server", |port| {
        let mut c = Command::new(&program);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        c
    });
    (child, format!("http://127.0.0.1:{port}"))
}

/// One Lambda function: the emulator's runtime API and the real
/// `bootstrap` polling it. Returns the processes, the invoke URL and the
/// function's log file.
struct Function {
    bootstrap: Running,
    _emulator: Running,
    url: String,
    log: PathBuf,
}

fn function(moto: &str, dir: &Path, name: &str) -> Function {
    let cargo_lambda = tool("cargo-lambda");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (emulator, port) = start_listening("cargo lambda watch", |port| {
        let mut c = Command::new(&cargo_lambda);
        c.args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .current_dir(&workspace);
        c
    });
    let log = dir.join(format!("{name}.log"));
    let data = dir.join(name);
    let bootstrap = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", "INFO")
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AIRLOCK_STORE", format!("s3://{BUCKET}/models"))
        .env("AIRLOCK_REFRESH_SECS", "1")
        .env("AIRLOCK_DATA_DIR", &data)
        .env("AIRLOCK_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("failed to start bootstrap");
    let function = Function {
        bootstrap: Running(bootstrap),
        _emulator: emulator,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    // Ready once an invocation goes through the function.
    let client = http();
    let started = Instant::now();
    loop {
        let ok = client
            .get(format!("{}/v2/health/live", function.url))
            .send()
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the function did not answer; its log:\n{}",
            std::fs::read_to_string(&function.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    function
}

fn http() -> reqwest::blocking::Client {
    // reqwest is built without a default TLS provider (the host installs
    // its own); these requests are plain HTTP to loopback anyway.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `airlock push` as a user runs it, against `server`.
fn push(server: &str, file: &Path, name: &str, via: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["push"])
        .arg(file)
        .args(["--name", name, "--activate", "--upload-via", via])
        .args(["--server", server, "--token", TOKEN])
        .env_remove("AIRLOCK_CACERT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "airlock push --upload-via {via} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A request whose `id` must never show up in a log.
fn digits_request() -> Value {
    let test: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-models/data/digits_test.json"),
        )
        .unwrap(),
    )
    .unwrap();
    json!({
        "id": "private-request-marker",
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": test["inputs"][0]}]
    })
}

fn infer(url: &str) -> Value {
    let response = http()
        .post(format!("{url}/v2/models/digits/infer"))
        .json(&digits_request())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

/// The digits component with a custom section appended: another
/// component (another sha256) that computes exactly the same.
fn digits_v2() -> Vec<u8> {
    let mut wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let name = b"airlock-v2";
    wasm.extend_from_slice(&[0, (name.len() + 1) as u8, name.len() as u8]);
    wasm.extend_from_slice(name);
    wasm
}

/// What `airlock serve` answers for the same request: the same router,
/// in process, over the filesystem store.
fn served_locally(request: &Value) -> Value {
    use tower::ServiceExt as _;
    let data = tempfile::tempdir().unwrap();
    let mut config = airlock::HostConfig::new(data.path());
    config.admin_token = Some(TOKEN.into());
    let host = airlock::Host::new(config).unwrap();
    host.load_file("digits", Path::new(airlock_artifacts::DIGITS))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let request = axum::http::Request::post("/v2/models/digits/infer")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(request.to_string()))
            .unwrap();
        let response = host.router().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    })
}

#[test]
fn bootstrap_under_the_lambda_emulator_picks_up_uploads_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, moto_url) = moto();
    // The bucket infra would have created.
    let created = http().put(format!("{moto_url}/{BUCKET}")).send().unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    let mut a = function(&moto_url, dir.path(), "a");

    // v1 through function A, the presigned way (PUT straight to S3).
    let digits = Path::new(airlock_artifacts::DIGITS);
    let out = push(&a.url, digits, "digits", "presigned");
    assert!(out.contains("uploaded model version 1"), "{out}");
    let v1 = airlock::engine::sha256_hex(&std::fs::read(digits).unwrap());
    let body = infer(&a.url);
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["parameters"]["sha256"], v1.as_str());
    assert_eq!(body["id"], "private-request-marker");
    // The same answer as `airlock serve` gives.
    let local = served_locally(&digits_request());
    assert_eq!(body["outputs"], local["outputs"]);
    // The staging object is gone, the blob and the shared artifact are in S3.
    let listing = http()
        .get(format!("{moto_url}/{BUCKET}?list-type=2&prefix=models/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        listing.contains(&format!("models/blobs/sha256/{v1}.wasm")),
        "{listing}"
    );
    assert!(listing.contains(".cwasm</Key>"), "{listing}");
    assert!(!listing.contains("models/staging/"), "{listing}");

    // v2 from a second client, through another instance of the function
    // (a second warm instance on the same bucket), uploaded directly.
    let b = function(&moto_url, dir.path(), "b");
    let v2_file = dir.path().join("digits-v2.wasm");
    std::fs::write(&v2_file, digits_v2()).unwrap();
    let out = push(&b.url, &v2_file, "digits", "direct");
    assert!(out.contains("uploaded model version 2"), "{out}");
    let v2 = airlock::engine::sha256_hex(&digits_v2());

    // Function A, still running, answers with v2 once its refresh interval
    // (1 s) has passed: no restart, no redeploy.
    let started = Instant::now();
    loop {
        let body = infer(&a.url);
        if body["parameters"]["sha256"] == v2.as_str() {
            assert_eq!(body["model_version"], "2");
            assert_eq!(body["outputs"], local["outputs"]);
            break;
        }
        assert_eq!(body["parameters"]["sha256"], v1.as_str());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "function A never switched to v2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        a.bootstrap.0.try_wait().unwrap().is_none(),
        "function A must not have restarted"
    );

    // Logs: JSON lines (AWS_LAMBDA_LOG_FORMAT=JSON), one initialisation,
    // the change noticed, and never the request's data.
    drop(b);
    let mut log = String::new();
    std::fs::File::open(&a.log)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert_eq!(
        messages.iter().filter(|m| **m == "initialised").count(),
        1,
        "{log}"
    );
    assert!(
        messages.iter().any(|m| m.contains("changed in the store")),
        "{log}"
    );
    assert!(!log.contains("private-request-marker"), "{log}");
}

/// The zip `infra package` makes from the binary this build made: what
/// provided.al2023 needs to run it.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn bootstrap_zip_runs_on_provided_al2023() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bootstrap.zip");
    let binary = Path::new(env!("CARGO_BIN_EXE_bootstrap"));
    let packaged = airlock_infra::package(binary, &out, airlock_infra::Arch::X86_64).unwrap();
    let glibc = packaged.max_glibc.expect("a glibc executable");
    assert!(
        glibc <= airlock_infra::AL2023_GLIBC,
        "needs glibc {glibc:?}"
    );

    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(zip.len(), 1);
    let mut entry = zip.by_name("bootstrap").unwrap();
    let mode = entry.unix_mode().expect("unix permissions recorded");
    assert_eq!(mode & 0o111, 0o111, "executable bit: {mode:o}");
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, std::fs::read(binary).unwrap());
    let info = airlock_infra::elf::inspect(&bytes).unwrap();
    assert_eq!(info.machine, airlock_infra::elf::EM_X86_64);
    assert!(info.executable);
    assert!(packaged.zip_bytes < 50 << 20, "over Lambda's direct upload");
    eprintln!(
        "bootstrap.zip: {} bytes (bootstrap {} bytes), needs glibc {}.{}",
        packaged.zip_bytes, packaged.binary_bytes, glibc.0, glibc.1
    );
}
