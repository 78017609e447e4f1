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
/// The functions' key for the MAC on shared artifacts (as `infra` sets one).
const ARTIFACT_KEY: &str = "8f2d0c7e5b3a19464e0f7d2c8b6a5d4e3f2a1b0c9d8e7f60514233241506a7b8";

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
        .env("AIRLOCK_ARTIFACT_KEY", ARTIFACT_KEY)
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
    let data = tempfile::tempdir().unwrap();
    let mut config = airlock::HostConfig::new(data.path());
    config.admin_token = Some(TOKEN.into());
    let host = airlock::Host::new(config).unwrap();
    host.load_file("digits", Path::new(airlock_artifacts::DIGITS))
        .unwrap();
    infer_in_process(&host, request)
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
    let v1 = airlock::digest::sha256_hex(&std::fs::read(digits).unwrap());
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
    let v2 = airlock::digest::sha256_hex(&digits_v2());

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

/// The identity the API Gateway stand-in accepts: temporary credentials,
/// so that the session token must be signed too.
const GW_KEY: &str = "AKIDSTANDINEXAMPLE";
const GW_SECRET: &str = "stand-in/secret+key/EXAMPLE";
const GW_SESSION: &str = "stand-in-session-token";

/// host/tests/apigw_stand_in.py: API Gateway's AWS_IAM check done by
/// botocore, in front of a function; its log has one JSON line per request.
struct Gateway {
    _process: Running,
    stdin: std::process::ChildStdin,
    url: String,
    log: PathBuf,
}

fn gateway(moto: &str, dir: &Path) -> Gateway {
    use std::io::BufRead as _;
    // The venv's Python has botocore (moto depends on it).
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python3");
    let python = if venv.is_file() {
        venv
    } else {
        tool("python3")
    };
    let log = dir.join("gateway.jsonl");
    let mut child = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apigw_stand_in.py"))
        .args(["--s3", moto, "--bucket", BUCKET, "--token", TOKEN])
        .args(["--region", "us-east-1", "--log"])
        .arg(&log)
        .env("AWS_ACCESS_KEY_ID", GW_KEY)
        .env("AWS_SECRET_ACCESS_KEY", GW_SECRET)
        .env("AWS_SESSION_TOKEN", GW_SESSION)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start the API Gateway stand-in");
    let stdin = child.stdin.take().unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the stand-in did not start: {port:?}"));
    Gateway {
        _process: Running(child),
        stdin,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// `airlock` with SigV4 and credentials from the environment only (no
/// ~/.aws of whoever runs the tests, no instance metadata).
fn airlock_signed(args: &[&str], secret: &str, home: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .args(["--auth", "sigv4"])
        .env_remove("AIRLOCK_ADMIN_TOKEN")
        .env_remove("AIRLOCK_CACERT")
        .env_remove("AWS_PROFILE")
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", GW_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", GW_SESSION)
        .env("AWS_REGION", "us-east-1")
        .current_dir(home)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `airlock push`/`models`/`rollback` sign every repository request with
/// SigV4 so that API Gateway's AWS_IAM check lets them through: here an
/// independent implementation (botocore, in the stand-in) recomputes each
/// signature from the request as it arrived, and the function behind it
/// takes the uploads. The presigned S3 leg goes out unsigned (its URL is
/// its authorisation). A wrong secret, a bearer token, or a request
/// changed after signing (body, query, path, a signed header) is refused.
#[test]
fn push_signs_for_api_gateway_as_botocore_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // Empty AWS config files: nothing but the environment's credentials.
    std::fs::write(home.join("no-config"), "").unwrap();
    std::fs::write(home.join("no-credentials"), "").unwrap();
    let (_moto, moto_url) = moto();
    let created = http().put(format!("{moto_url}/{BUCKET}")).send().unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    // The function's S3 endpoint is the stand-in, so that the presigned
    // URLs it hands out point there and the stand-in sees that PUT.
    let mut gw = gateway(&moto_url, dir.path());
    let function = function(&gw.url, dir.path(), "a");
    {
        use std::io::Write as _;
        writeln!(gw.stdin, "{}", function.url).unwrap();
    }
    let server = gw.url.as_str();
    let digits = airlock_artifacts::DIGITS;

    // v1 the presigned way, v2 directly as multipart with a policy
    // manifest (the payload hash covers the whole multipart body).
    let (ok, out) = airlock_signed(
        &["push", digits, "--name", "digits", "--activate"],
        GW_SECRET,
        &home,
    );
    assert!(!ok, "no --server: the default is a local server: {out}");
    let (ok, out) = airlock_signed(
        &[
            "push",
            digits,
            "--name",
            "digits",
            "--activate",
            "--upload-via",
            "presigned",
            "--server",
            server,
        ],
        GW_SECRET,
        &home,
    );
    assert!(ok && out.contains("uploaded model version 1"), "{out}");
    let v2 = dir.path().join("digits-v2.wasm");
    std::fs::write(&v2, digits_v2()).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "deadline_ms = 1500\n").unwrap();
    let (ok, out) = airlock_signed(
        &[
            "push",
            v2.to_str().unwrap(),
            "--name",
            "digits",
            "--activate",
            "--upload-via",
            "direct",
            "--policy",
            policy.to_str().unwrap(),
            "--server",
            server,
        ],
        GW_SECRET,
        &home,
    );
    assert!(ok && out.contains("uploaded model version 2"), "{out}");
    let (ok, out) = airlock_signed(&["models", "--server", server], GW_SECRET, &home);
    assert!(ok && out.contains("digits"), "{out}");
    let (ok, out) = airlock_signed(
        &["rollback", "digits", "--server", server],
        GW_SECRET,
        &home,
    );
    assert!(ok && out.contains("rolled back to version \"1\""), "{out}");
    // The public routes need no signature.
    assert_eq!(infer(server)["model_version"], "1");

    // Refused before the function: a wrong secret, and the bearer token
    // (API Gateway's AWS_IAM routes take nothing but SigV4).
    let (ok, out) = airlock_signed(&["models", "--server", server], "wrong", &home);
    assert!(
        !ok && out.contains("403") && out.contains("signature mismatch"),
        "{out}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "models", "--server", server, "--auth", "token", "--token", TOKEN,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("403"), "{text}");

    // What the stand-in checks would catch a wrong canonical request: a
    // request signed by the library, then changed in one signed part.
    let signer = airlock::sigv4::Signer::new(
        aws_credential_types::Credentials::new(
            GW_KEY,
            GW_SECRET,
            Some(GW_SESSION.into()),
            None,
            "test",
        ),
        "us-east-1",
    );
    let index = format!("{server}/v2/repository/index");
    let send = |url: &str, content_type: &str, body: &[u8]| {
        let mut request = http().post(url).header("content-type", content_type);
        for (name, value) in signer
            .sign(
                "POST",
                &index,
                &[("content-type", "application/json")],
                b"{}",
            )
            .unwrap()
        {
            request = request.header(name, value);
        }
        request
            .body(body.to_vec())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(&index, "application/json", b"{}"), 200);
    assert_eq!(send(&index, "application/json", b"{ }"), 403, "body");
    assert_eq!(
        send(&format!("{index}?a=b"), "application/json", b"{}"),
        403,
        "query"
    );
    let other = format!("{server}/v2/repository/models/digits/rollback");
    assert_eq!(send(&other, "application/json", b"{}"), 403, "path");
    assert_eq!(send(&index, "text/plain", b"{}"), 403, "signed header");

    // The stand-in's log: every repository request the CLI made was
    // verified, and the presigned PUT reached S3 with no second signature.
    let log: Vec<Value> = std::fs::read_to_string(&gw.log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let admin = |verified: bool| {
        log.iter()
            .filter(|e| e["kind"] == "admin" && e["verified"] == verified)
            .collect::<Vec<_>>()
    };
    let paths: Vec<&str> = admin(true)
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/v2/repository/models/digits/uploads"),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/v2/repository/models/digits/uploads/")),
        "{paths:?}"
    );
    assert!(
        admin(true)
            .iter()
            .any(|e| e["path"] == "/v2/repository/models/digits/versions"
                && e["query"] == "activate=true"
                && e["status"] == 201),
        "{log:?}"
    );
    // 1 wrong secret + 1 token + 4 changed requests.
    assert_eq!(admin(false).len(), 6, "{:?}", admin(false));
    let presigned: Vec<&Value> = log
        .iter()
        .filter(|e| e["kind"] == "s3" && e["presigned"] == true)
        .collect();
    assert_eq!(presigned.len(), 1, "{log:?}");
    assert_eq!(presigned[0]["method"], "PUT");
    assert_eq!(presigned[0]["authorization"], false);
    assert_eq!(presigned[0]["status"], 200);
}

/// Two hosts on one bucket (two Lambda instances) taking uploads of the
/// same model at the same moment: the index writes are compare-and-swap
/// (`If-Match`/`If-None-Match` on S3, emulated by moto), so every version
/// survives, each with its own number.
#[test]
fn two_hosts_on_one_bucket_keep_every_concurrent_upload() {
    const EACH: usize = 4;
    let (_moto, moto_url) = moto();
    let created = http().put(format!("{moto_url}/{BUCKET}")).send().unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let sdk = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&moto_url)
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing", "testing", None, None, "test",
                ))
                .load(),
        );
    let url = format!("s3://{BUCKET}/cas");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let stores: Vec<_> = dirs
        .iter()
        .map(|_| {
            std::sync::Arc::new(
                airlock::s3store::S3Store::connect_with(&url, Some(sdk.clone())).unwrap(),
            )
        })
        .collect();
    let hosts: Vec<airlock::Host> = dirs
        .iter()
        .zip(&stores)
        .map(|(dir, store)| {
            airlock::Host::with_store(airlock::HostConfig::new(dir.path()), store.clone()).unwrap()
        })
        .collect();

    // 2 × EACH distinct components (a custom section apiece), all uploads
    // released at once.
    let base = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let component = |i: usize| {
        let mut wasm = base.clone();
        let name = format!("cas-{i}");
        wasm.extend_from_slice(&[0, (name.len() + 1) as u8, name.len() as u8]);
        wasm.extend_from_slice(name.as_bytes());
        wasm
    };
    let barrier = std::sync::Barrier::new(2 * EACH);
    let reports: Vec<airlock::UploadReport> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2 * EACH)
            .map(|i| {
                let host = &hosts[i % 2];
                let wasm = component(i);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    host.upload("digits", &wasm, false).unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let index = hosts[0].store().read_index("digits").unwrap().unwrap();
    let mut stored: Vec<(String, String)> = index
        .versions
        .iter()
        .map(|v| (v.sha256.clone(), v.version.clone()))
        .collect();
    let mut uploaded: Vec<(String, String)> = reports
        .iter()
        .map(|r| {
            assert!(r.created);
            (r.sha256.clone(), r.version.clone())
        })
        .collect();
    stored.sort();
    uploaded.sort();
    assert_eq!(
        stored, uploaded,
        "every upload is in the index, as reported"
    );
    let mut numbers: Vec<u64> = index
        .versions
        .iter()
        .map(|v| v.version.parse().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=2 * EACH as u64).collect::<Vec<_>>());
    assert_eq!(index.next_version, 2 * EACH as u64 + 1);

    // The primitive itself, against the emulator: a stale ETag and a
    // create over an existing index are refused; nothing is written.
    use airlock::store::{IndexRead, Store as _};
    let IndexRead::Changed { index, tag } =
        stores[0].read_index_if_changed("digits", None).unwrap()
    else {
        panic!("the index exists");
    };
    let mut a = index.clone();
    a.loaded = false;
    assert!(stores[0].write_index_if(&a, Some(&tag)).unwrap());
    let mut b = index.clone();
    b.next_version += 100;
    assert!(!stores[1].write_index_if(&b, Some(&tag)).unwrap(), "stale");
    assert!(!stores[1].write_index_if(&b, None).unwrap(), "exists");
    let now = stores[1].read_index("digits").unwrap().unwrap();
    assert_eq!(now, a);
}

/// An SDK configuration for the moto server at `moto_url`.
fn moto_sdk(moto_url: &str) -> aws_config::SdkConfig {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(moto_url)
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(aws_credential_types::Credentials::new(
                    "testing", "testing", None, None, "test",
                ))
                .load(),
        )
}

/// Issue 15, item 6, on S3: an index that is not a valid model index (here
/// not JSON; the filesystem test in tests/all also has one nested too deep),
/// written into the bucket beside a good model. A host starting on the
/// bucket serves the good model and reports the bad one, instead of
/// refusing to start.
#[test]
fn an_unreadable_index_in_s3_is_skipped_and_reported() {
    let (_moto, moto_url) = moto();
    let created = http().put(format!("{moto_url}/{BUCKET}")).send().unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let sdk = moto_sdk(&moto_url);
    let url = format!("s3://{BUCKET}/unreadable");
    let store = || {
        std::sync::Arc::new(
            airlock::s3store::S3Store::connect_with(&url, Some(sdk.clone())).unwrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let host =
            airlock::Host::with_store(airlock::HostConfig::new(dir.path().join("a")), store())
                .unwrap();
        host.upload(
            "digits",
            &std::fs::read(airlock_artifacts::DIGITS).unwrap(),
            true,
        )
        .unwrap();
    }
    let put = http()
        .put(format!(
            "{moto_url}/{BUCKET}/unreadable/models/bad/index.json"
        ))
        .body("{\"name\": \"bad\", not json")
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    let host =
        airlock::Host::with_store(airlock::HostConfig::new(dir.path().join("b")), store()).unwrap();
    let report = host
        .refresh()
        .expect("one bad index does not fail the refresh");
    assert_eq!(report.updated, ["digits"]);
    assert_eq!(report.failed, ["bad"]);
    // The good model answers (200), as `airlock serve` does.
    let body = infer_in_process(&host, &digits_request());
    assert_eq!(
        body["outputs"],
        served_locally(&digits_request())["outputs"]
    );
    let listed = host.list().unwrap();
    assert!(listed.iter().any(|m| m.index.name == "bad" && m.unreadable));
    assert!(listed.iter().any(|m| m.index.name == "digits" && m.serving));
}

/// `request` through `host`'s router, in process; asserts a 200.
fn infer_in_process(host: &airlock::Host, request: &Value) -> Value {
    use tower::ServiceExt as _;
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

/// Issue 15, item 9: compiled artifacts shared through S3 carry an
/// HMAC-SHA256 under the hosts' key. A host with the key takes an untampered
/// one; an artifact altered in the bucket (its old MAC kept, or the old
/// unkeyed XXH3 checksum recomputed, or a MAC under another key) is refused
/// and compiled again, and the good artifact is shared in its place; a host
/// without a key neither fetches nor shares.
#[test]
fn shared_artifacts_are_trusted_only_with_a_valid_mac() {
    use airlock::artifacts::{ArtifactCache, ArtifactKey, CacheOutcome};
    use airlock::digest::sha256_hex;
    use wasmtime::component::Component;

    let (_moto, moto_url) = moto();
    let created = http().put(format!("{moto_url}/{BUCKET}")).send().unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let sdk = moto_sdk(&moto_url);
    let store: std::sync::Arc<dyn airlock::store::Store> = std::sync::Arc::new(
        airlock::s3store::S3Store::connect_with(&format!("s3://{BUCKET}/mac"), Some(sdk.clone()))
            .unwrap(),
    );
    let runtime = airlock::Runtime::new(&airlock::EngineConfig::default()).unwrap();
    let wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let digest = sha256_hex(&wasm);
    // The bucket as its writer sees it, through the SDK.
    let s3 = Bucket::new(
        &sdk,
        format!("mac/artifacts/{}/{digest}.cwasm", runtime.compat_hash()),
    );
    let key = ArtifactKey::from_hex(ARTIFACT_KEY).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let mut hosts = 0;
    // A host with an empty local cache: what it made of the shared tier.
    let mut load = |key: Option<&ArtifactKey>| {
        hosts += 1;
        let cache = ArtifactCache::new(&dirs.path().join(hosts.to_string()), &runtime)
            .with_shared(store.clone(), key.cloned());
        let (component, outcome) = cache
            .load_or_compile::<Component>(&runtime, &digest, &wasm, &airlock::Limits::default())
            .unwrap();
        drop(component);
        outcome
    };

    // Compiled once, shared with its MAC (and no unkeyed checksum).
    assert_eq!(load(Some(&key)), CacheOutcome::Compiled);
    let (good, metadata) = s3.get().expect("the artifact is shared");
    let mac = metadata["hmac-sha256"].clone();
    assert!(!metadata.contains_key("xxh3"), "{metadata:?}");
    assert!(key.verify(runtime.compat_hash(), &digest, &good, &mac));
    // Another host with the key takes it as it is.
    assert_eq!(load(Some(&key)), CacheOutcome::Hit);

    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    let xxh3 = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&tampered));
    let other_key = ArtifactKey::from_hex(&"11".repeat(32)).unwrap();
    // A MAC made the right way, but under a key that is not the hosts'.
    let forged = other_key.sign(runtime.compat_hash(), &digest, &tampered);
    for (name, value) in [
        ("hmac-sha256", mac.as_str()),
        ("xxh3", xxh3.as_str()),
        ("hmac-sha256", forged.as_str()),
    ] {
        s3.put(&tampered, name, value);
        assert_eq!(
            load(Some(&key)),
            CacheOutcome::Compiled,
            "a tampered artifact ({name}) was trusted"
        );
        // The host put a good artifact back, which the next host takes.
        let (restored, metadata) = s3.get().unwrap();
        assert_ne!(restored, tampered, "{name}");
        assert!(key.verify(
            runtime.compat_hash(),
            &digest,
            &restored,
            &metadata["hmac-sha256"]
        ));
        assert_eq!(load(Some(&key)), CacheOutcome::Hit);
    }

    // A host with another key trusts none of the hosts' artifacts.
    assert_eq!(load(Some(&other_key)), CacheOutcome::Compiled);
    // A host without a key neither fetches nor shares.
    s3.delete();
    assert_eq!(load(None), CacheOutcome::Compiled);
    assert!(
        s3.get().is_none(),
        "a host without a key shared an artifact"
    );
    assert_eq!(load(Some(&key)), CacheOutcome::Compiled);
    assert!(s3.get().is_some());
    assert_eq!(load(None), CacheOutcome::Compiled, "not fetched either");
}

/// One object of the test bucket, read and written through the SDK.
struct Bucket {
    client: aws_sdk_s3::Client,
    key: String,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    fn new(sdk: &aws_config::SdkConfig, key: String) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            key,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The object's bytes and user metadata, if it exists.
    fn get(&self) -> Option<(Vec<u8>, std::collections::HashMap<String, String>)> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(BUCKET)
                .key(&self.key)
                .send()
                .await
                .ok()?;
            let metadata = out.metadata().cloned().unwrap_or_default();
            let bytes = out.body.collect().await.unwrap().into_bytes().to_vec();
            Some((bytes, metadata))
        })
    }

    /// Replaces the object with `bytes` carrying the metadata `name: value`.
    fn put(&self, bytes: &[u8], name: &str, value: &str) {
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(BUCKET)
                .key(&self.key)
                .metadata(name, value)
                .body(bytes.to_vec().into())
                .send()
                .await
                .unwrap();
        });
    }

    fn delete(&self) {
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(BUCKET)
                .key(&self.key)
                .send()
                .await
                .unwrap();
        });
    }
}
