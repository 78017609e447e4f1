//! A moto server (the AWS API emulator) per test, on a free loopback port,
//! stopped when the guard drops.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_infra::Aws;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_iam::config::Credentials;

/// The region every test deploys to.
pub const REGION: &str = "us-east-1";
/// moto's account id.
pub const ACCOUNT: &str = "123456789012";

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
}

/// `moto_server` from PATH (tests/run puts its venv there), or from the
/// venv tests/run makes, for a bare `cargo test -p infra` after it ran once.
fn moto_server() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/moto_server");
    on_path.or_else(|| venv.is_file().then_some(venv)).unwrap_or_else(|| {
        panic!(
            "moto_server (the AWS API emulator these tests run against) is not on PATH. \
             Run the tests with tests/run, which installs it, or install it yourself: \
             python3 -m venv target/test-venv && target/test-venv/bin/pip install -r tests/requirements.txt"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

impl Moto {
    /// Starts a server with the AWS managed policies loaded (the stack
    /// attaches AWSLambdaBasicExecutionRole) and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server; `managed_policies` false leaves AWS's managed
    /// policies out, so that attaching one fails as a real error would.
    pub fn start_with(managed_policies: bool) -> Self {
        let program = moto_server();
        let mut last_error = String::new();
        // The port is free when chosen but could be taken before moto binds it.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env(
                    "MOTO_IAM_LOAD_MANAGED_POLICIES",
                    managed_policies.to_string(),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("failed to start {}: {e}", program.display()));
            let started = Instant::now();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            while started.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("moto_server exited with {status}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Self { child, port };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if last_error.is_empty() {
                last_error = "moto_server did not listen within 60 s".to_owned();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start moto_server: {last_error}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The SDK configuration for this server (dummy credentials).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await
    }

    /// The clients `infra` uses, pointed at this server.
    pub async fn aws(&self) -> Aws {
        Aws::from_sdk_config(&self.sdk_config().await).expect("clients for moto")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
