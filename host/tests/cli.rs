//! The `airlock` binary as a user runs it: first run generates a CA and
//! prints its path, the printed address answers over TLS, SIGTERM shuts it
//! down cleanly, and a second run reuses the same certificate.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Running {
    child: Child,
    addr: String,
    ca: String,
    generated: bool,
}

const TOKEN: &str = "cli-test-token-0";

fn start(data_dir: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-examples",
            "--data-dir",
        ])
        .arg(data_dir)
        .arg("--model")
        .arg(format!("digits={}", airlock_artifacts::DIGITS))
        .env("AIRLOCK_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut ca = None;
    let mut generated = false;
    while addr.is_none() || ca.is_none() {
        let line = lines
            .next()
            .expect("airlock exited before printing its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("airlock listening on https://") {
            addr = Some(rest.trim().to_owned());
        }
        if line.contains("CA certificate: ") {
            generated = line.starts_with("generated");
            let path = line.split("CA certificate: ").nth(1).unwrap();
            ca = Some(path.split(" (").next().unwrap().to_owned());
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        addr: addr.unwrap(),
        ca: ca.unwrap(),
        generated,
    }
}

fn client(ca: &str) -> reqwest::blocking::Client {
    // reqwest is built without a default crypto provider; pick ours.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap();
    let cert = reqwest::Certificate::from_pem(&pem).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn terminate(mut running: Running) -> std::process::ExitStatus {
    let pid = running.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    running.child.wait().unwrap()
}

#[test]
fn serve_generates_a_ca_answers_over_tls_and_shuts_down_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let first = start(data.path());
    assert!(first.generated, "first run should generate the certificate");
    assert!(std::path::Path::new(&first.ca).is_absolute());
    let port = first.addr.rsplit(':').next().unwrap().to_owned();

    let http = client(&first.ca);
    let url = format!("https://localhost:{port}/v2/models/digits/infer");
    let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
        "data": [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}]});
    let answer: serde_json::Value = http.post(&url).json(&body).send().unwrap().json().unwrap();
    let probs: Vec<f64> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let best = (0..10)
        .max_by(|a, b| probs[*a].total_cmp(&probs[*b]))
        .unwrap();
    // That image is the dataset's first sample, a zero.
    assert_eq!(best, 0, "{answer}");

    let status = terminate(first);
    assert!(
        status.success(),
        "SIGTERM should be a clean exit: {status:?}"
    );

    // A second run reuses the generated certificate.
    let second = start(data.path());
    assert!(!second.generated, "second run should reuse the certificate");
    let port = second.addr.rsplit(':').next().unwrap().to_owned();
    let live = client(&second.ca)
        .get(format!("https://localhost:{port}/v2/health/live"))
        .send()
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(terminate(second).success());
}

#[test]
fn user_certificate_flags_must_come_together() {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--tls-cert", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
}

/// A body that trickles out slowly, so the server can be killed mid-upload.
struct Slow(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(10));
        let n = buf.len().min(32 << 10);
        std::io::Read::read(&mut self.0, &mut buf[..n])
    }
}

fn port(running: &Running) -> String {
    running.addr.rsplit(':').next().unwrap().to_owned()
}

fn versions(http: &reqwest::blocking::Client, port: &str) -> serde_json::Value {
    let index: serde_json::Value = http
        .post(format!("https://localhost:{port}/v2/repository/index"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    index
}

#[test]
fn kill_9_during_an_upload_leaves_the_previous_version_serving() {
    let data = tempfile::tempdir().unwrap();
    let mut first = start(data.path());
    let http = client(&first.ca);
    let p = port(&first);
    let before = versions(&http, &p);
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");

    let onnx = std::fs::read(airlock_artifacts::DIGITS_ONNX).unwrap();
    let len = onnx.len() as u64;
    let upload = {
        let http = http.clone();
        let url =
            format!("https://localhost:{p}/v2/repository/models/digits/versions?activate=true");
        std::thread::spawn(move || {
            http.post(url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/wasm")
                .body(reqwest::blocking::Body::sized(
                    Slow(std::io::Cursor::new(onnx)),
                    len,
                ))
                .send()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    assert!(
        upload.join().unwrap().is_err(),
        "the upload cannot have completed"
    );

    let second = start(data.path());
    let http = client(&second.ca);
    let p = port(&second);
    assert_eq!(versions(&http, &p), before, "a partial version is listed");
    let meta: serde_json::Value = http
        .get(format!("https://localhost:{p}/v2/models/digits"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["versions"], serde_json::json!(["1"]));
    assert_eq!(meta["platform"], "rust-mlp");
    assert!(terminate(second).success());
}

#[test]
fn push_models_activate_and_rollback_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let running = start(data.path());
    let server = format!("https://localhost:{}", port(&running));
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .args(["--server", &server, "--cacert", &running.ca])
            .env("AIRLOCK_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&[
        "push",
        airlock_artifacts::MISBEHAVE,
        "--name",
        "digits",
        "--activate",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("uploaded model version 2 (active)"), "{text}");
    let (ok, text) = cli(&["models"]);
    assert!(ok, "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("digits")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[1].contains('*'),
        "version 2 should be marked active: {text}"
    );
    let (ok, text) = cli(&["rollback", "digits"]);
    assert!(ok, "{text}");
    assert!(text.contains("rolled back to version \"1\""), "{text}");
    let (ok, text) = cli(&["activate", "digits", "2"]);
    assert!(ok, "{text}");
    // Errors print the server's message, not a backtrace.
    let (ok, text) = cli(&["activate", "digits", "9"]);
    assert!(!ok);
    assert!(text.contains("has no version \"9\""), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let (ok, text) = cli(&["push", "/etc/hostname", "--name", "digits"]);
    assert!(!ok);
    assert!(text.contains("not WebAssembly"), "{text}");
    assert!(terminate(running).success());
}

#[test]
fn keygen_and_sign_produce_a_signature_the_server_side_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["keygen", "--out", "team"]);
    let model = dir.path().join("model.wasm");
    std::fs::copy(airlock_artifacts::DIGITS, &model).unwrap();
    run(&["sign", "model.wasm", "--key", "team.key"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("team.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret key is readable by others");
    }
    let public = std::fs::read_to_string(dir.path().join("team.pub")).unwrap();
    let keys = airlock::signing::TrustedKeys::from_hex([public.as_str()]).unwrap();
    let signature = std::fs::read_to_string(dir.path().join("model.wasm.sig")).unwrap();
    let wasm = std::fs::read(&model).unwrap();
    let bare = airlock::signing::Subject::new(&wasm, None);
    assert_eq!(keys.verify(&bare, &signature), Ok(public.trim().to_owned()));
    // With the manifest it will be pushed with: the signature covers both,
    // and is not valid for the component alone.
    std::fs::write(dir.path().join("policy.toml"), "max_concurrency = 2\n").unwrap();
    run(&[
        "sign",
        "model.wasm",
        "--key",
        "team.key",
        "--policy",
        "policy.toml",
    ]);
    let signature = std::fs::read_to_string(dir.path().join("model.wasm.sig")).unwrap();
    let manifest = airlock::manifest::Manifest::parse(b"max_concurrency = 2").unwrap();
    let covered = airlock::signing::Subject::new(&wasm, Some(&manifest));
    assert_eq!(
        keys.verify(&covered, &signature),
        Ok(public.trim().to_owned())
    );
    assert!(keys.verify(&bare, &signature).is_err());
    // keygen never overwrites a key.
    let again = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["keygen", "--out", "team"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// An empty admin token, by flag or by environment, stops `serve` before it
/// listens: over HTTP/2 an empty token matched `Authorization: Bearer `.
#[test]
fn an_empty_admin_token_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let serve = |flag: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_airlock"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--no-examples"])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("AIRLOCK_ADMIN_TOKEN");
        if flag {
            command.args(["--admin-token", ""]);
        } else {
            command.env("AIRLOCK_ADMIN_TOKEN", "");
        }
        // Bounded: a serve that wrongly starts is killed, and fails below.
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    for flag in [true, false] {
        let out = serve(flag);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "flag={flag}: {stdout}{stderr}");
        assert!(
            stderr.contains("admin token"),
            "flag={flag}: the error names the token: {stderr}"
        );
        assert!(!stdout.contains("listening"), "flag={flag}: {stdout}");
    }
}
