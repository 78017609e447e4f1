//! TLS-only transport: no plain HTTP answer, nothing below TLS 1.2.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::server;

#[test]
fn plain_http_gets_no_http_answer() {
    let s = server();
    let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.windows(5).any(|w| w == b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Whatever came back is a TLS record (an alert), if anything.
    if let Some(first) = answer.first() {
        assert_eq!(*first, 0x15, "expected a TLS alert record, got {answer:?}");
    }
}

/// Runs `openssl s_client` against the server with extra flags; returns
/// (success, combined output).
fn s_client(args: &[&str]) -> (bool, String) {
    let s = server();
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(s.addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(&s.ca_path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed for the TLS version tests (.ci/run installs it)");
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tls_1_1_and_1_0_are_refused_while_1_2_and_1_3_work() {
    // SECLEVEL=0 lets the OpenSSL client even try old versions, so a refusal
    // comes from the server, not from the client's own policy.
    for old in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(&[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{old} handshake succeeded:\n{text}");
        // The client did send its hello and the server answered with an
        // alert, without ever showing a certificate.
        assert!(
            text.contains("no peer certificate available"),
            "{old}:\n{text}"
        );
        assert!(
            text.contains("SSL alert number"),
            "{old}: no alert from the server:\n{text}"
        );
        assert!(
            !text.contains("Cipher is TLS") && !text.contains("Cipher is ECDHE"),
            "{old}:\n{text}"
        );
    }
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(&[flag]);
        assert!(ok, "{flag} failed:\n{text}");
        assert!(text.contains(version), "{flag}: no {version} in:\n{text}");
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{flag}: certificate did not verify:\n{text}"
        );
    }
}

#[test]
fn alpn_offers_h2_and_http1() {
    for (proto, expect) in [
        ("h2", "ALPN protocol: h2"),
        ("http/1.1", "ALPN protocol: http/1.1"),
    ] {
        let (ok, text) = s_client(&["-alpn", proto]);
        assert!(ok, "{text}");
        assert!(text.contains(expect), "{proto}: {text}");
    }
}
