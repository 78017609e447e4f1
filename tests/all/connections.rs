//! Connection-phase deadlines of `airlock serve`'s transport, each written
//! as the attack: connections that handshake and go silent, partial
//! protocol openings, idle keep-alive connections, and request bodies
//! dribbled a byte at a time. Each server here is the test's own, with
//! short deadlines and a small connection limit, so every test is bounded
//! to a few seconds; each also checks that a normal client is served.

use std::sync::Arc;
use std::time::Duration;

use airlock::server::ServerLimits;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::support::{Server, assert_serving, digits_request, start_with_limits};

/// Slack on top of a deadline for the server's timer, the scheduler and a
/// loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty HTTP/2 SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn server(limits: ServerLimits) -> Server {
    start_with_limits(|_| {}, &[("digits", airlock_artifacts::DIGITS)], limits)
}

/// A TLS connection to `s` that trusts its CA and offers `alpn`.
pub(crate) async fn connect(s: &Server, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut tls = crate::support::client_tls(&s.ca_pem);
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(s.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Reads (and discards) until the server closes `stream`; panics when that
/// takes longer than `limit`. Returns when it closed.
async fn closed_by_server(mut stream: impl AsyncRead + Unpin, limit: Duration) -> Instant {
    let mut buffer = [0u8; 4096];
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|_| panic!("the server kept the connection open for over {limit:?}"))
}

/// Reads one HTTP/1.1 response with a `content-length`: (status, body).
pub(crate) async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (u16, Vec<u8>) {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before a response head: {data:?}");
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while data.len() < head_end + length {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed inside a response body");
        data.extend_from_slice(&buffer[..n]);
    }
    (status, data[head_end..head_end + length].to_vec())
}

async fn assert_live(client: &reqwest::Client, s: &Server) {
    let response = client.get(s.url("/v2/health/live")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn silent_connections_after_the_handshake_are_closed_and_free_their_slots() {
    const SLOTS: usize = 16;
    let deadline = Duration::from_secs(2);
    let s = server(ServerLimits {
        first_request_timeout: deadline,
        max_connections: SLOTS,
        ..ServerLimits::default()
    });

    // The attack: every slot taken by a connection that completes its TLS
    // handshake and then sends nothing.
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SLOTS {
        silent.push(connect(&s, &[b"h2", b"http/1.1"]).await.unwrap());
    }
    // The slots are all held: one more connection is refused.
    assert!(
        connect(&s, &[b"h2", b"http/1.1"]).await.is_err(),
        "a connection beyond the limit was served"
    );

    // Each is closed by the server once the deadline has passed.
    let closes: Vec<_> = silent
        .into_iter()
        .map(|stream| tokio::spawn(closed_by_server(stream, deadline + SLACK + SLACK)))
        .collect();
    let mut held = Vec::new();
    for close in closes {
        held.push(close.await.unwrap() - started);
    }
    let (first, last) = (held.iter().min().unwrap(), held.iter().max().unwrap());
    eprintln!("{SLOTS} silent connections held {first:?} .. {last:?}");
    assert!(*first >= deadline, "closed before the deadline: {first:?}");
    assert!(*last <= deadline + SLACK, "held for {last:?}");

    // The slots are free again: a normal client is served while a second
    // wave of silent connections holds all but one of them.
    let mut second = Vec::new();
    for _ in 0..SLOTS - 1 {
        second.push(connect(&s, &[b"h2", b"http/1.1"]).await.unwrap());
    }
    let client = s.client();
    assert_live(&client, &s).await;
    assert_serving(&s, &client).await;
    drop(second);
}

/// What is sent after the handshake, and the ALPN protocols offered.
type Opening = (&'static str, Vec<u8>, &'static [&'static [u8]]);

#[tokio::test]
async fn partial_protocol_openings_are_closed_at_the_first_request_deadline() {
    let deadline = Duration::from_secs(2);
    let s = server(ServerLimits {
        first_request_timeout: deadline,
        max_connections: 16,
        ..ServerLimits::default()
    });
    let mut preface_and_settings = H2_PREFACE.to_vec();
    preface_and_settings.extend_from_slice(H2_SETTINGS);
    let openings: [Opening; 5] = [
        ("10 bytes of the h2 preface", H2_PREFACE[..10].to_vec(), &[]),
        (
            "10 bytes of the h2 preface after ALPN h2",
            H2_PREFACE[..10].to_vec(),
            &[b"h2"],
        ),
        (
            "the h2 preface and SETTINGS, then no request",
            preface_and_settings,
            &[b"h2"],
        ),
        (
            "half an HTTP/1.1 request line",
            b"GET /v2/hea".to_vec(),
            &[b"http/1.1"],
        ),
        (
            "an HTTP/1.1 head without its end, no ALPN",
            b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n".to_vec(),
            &[],
        ),
    ];
    let started = Instant::now();
    let mut attacks = Vec::new();
    for (what, bytes, alpn) in openings {
        let mut stream = connect(&s, alpn).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        attacks.push((
            what,
            tokio::spawn(closed_by_server(stream, deadline + SLACK + SLACK)),
        ));
    }
    // A normal client is served while they are open.
    let client = s.client();
    assert_live(&client, &s).await;
    assert_serving(&s, &client).await;
    for (what, closed) in attacks {
        let held = closed.await.unwrap() - started;
        eprintln!("{what}: held {held:?}");
        assert!(
            held >= deadline && held <= deadline + SLACK,
            "{what}: held {held:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(1500);
    let s = server(ServerLimits {
        idle_timeout: idle,
        first_request_timeout: Duration::from_secs(5),
        ..ServerLimits::default()
    });
    // No ALPN: a plain HTTP/1.1 client still works.
    let mut stream = connect(&s, &[]).await.unwrap();
    let request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let (status, _) = read_response(&mut stream).await;
    assert_eq!(status, 200);
    // A request before the idle timeout is served on the same connection
    // and restarts the idle clock.
    tokio::time::sleep(idle / 2).await;
    stream.write_all(request).await.unwrap();
    let (status, _) = read_response(&mut stream).await;
    assert_eq!(status, 200);
    let answered = Instant::now();

    let held = closed_by_server(stream, idle + SLACK + SLACK).await - answered;
    eprintln!("idle HTTP/1.1 connection held {held:?}");
    assert!(
        held >= idle - Duration::from_millis(100) && held <= idle + SLACK,
        "held {held:?}"
    );
    assert_live(&s.client(), &s).await;
}

/// Writes one HTTP/2 frame.
async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: &[u8],
) {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap();
}

/// Reads one HTTP/2 frame: (type, flags, stream id, payload).
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream_id, payload)
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(1500);
    let s = server(ServerLimits {
        idle_timeout: idle,
        first_request_timeout: Duration::from_secs(5),
        ..ServerLimits::default()
    });
    let mut stream = connect(&s, &[b"h2"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream.write_all(H2_PREFACE).await.unwrap();
    write_frame(&mut stream, 4, 0, 0, &[]).await;
    // GET /v2/health/live, HPACK without Huffman: :method GET, :scheme
    // https (indexed), :authority and :path (literal, indexed names).
    let mut block = vec![0x82, 0x87, 0x41, 9];
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x44, 15]);
    block.extend_from_slice(b"/v2/health/live");
    write_frame(&mut stream, 1, 0x4 | 0x1, 1, &block).await;

    // Until the response on stream 1 has ended: ack the server's settings.
    let mut status_ok = false;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (kind, flags, id, payload) = read_frame(&mut stream).await;
            match kind {
                4 if flags & 1 == 0 => write_frame(&mut stream, 4, 1, 0, &[]).await,
                1 if id == 1 => status_ok |= payload.first() == Some(&0x88),
                _ => {}
            }
            if id == 1 && flags & 1 == 1 && (kind == 0 || kind == 1) {
                break;
            }
        }
    })
    .await
    .expect("no HTTP/2 response");
    assert!(status_ok, "the HTTP/2 response was not 200");
    let answered = Instant::now();

    let held = closed_by_server(stream, idle + SLACK + SLACK).await - answered;
    eprintln!("idle HTTP/2 connection held {held:?}");
    assert!(
        held >= idle - Duration::from_millis(100) && held <= idle + SLACK,
        "held {held:?}"
    );
    assert_live(&s.client(), &s).await;
}

/// Sends an HTTP/1.1 POST to the digits model with a body of `length`
/// bytes, one byte every `every`, while reading the answer. Returns the
/// answer's status and body (none when the server closed without one) and
/// how long after the request head it came.
async fn dribble(s: &Server, length: usize, every: Duration) -> (Option<(u16, String)>, Duration) {
    let stream = connect(s, &[b"http/1.1"]).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.flush().await.unwrap();
    let sent = Instant::now();
    let writing = tokio::spawn(async move {
        for _ in 0..length {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                // The answer head is in; its (small) body follows at once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), reader.read(&mut buffer)).await
                {
                    answer.extend_from_slice(&buffer[..n]);
                }
                break;
            }
        }
    })
    .await;
    let elapsed = sent.elapsed();
    writing.abort();
    assert!(read.is_ok(), "no answer and no close within 20 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let parsed = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .map(|code| {
            let body = answer
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            (code, body)
        });
    (parsed, elapsed)
}

#[tokio::test]
async fn a_body_dribbled_byte_by_byte_fails_at_the_overall_body_deadline() {
    let deadline = Duration::from_secs(2);
    let s = server(ServerLimits {
        body_timeout: deadline,
        // Off, in effect: only the overall deadline is under test here.
        min_body_rate: 1,
        body_rate_grace: Duration::from_secs(1),
        ..ServerLimits::default()
    });
    // One byte every 300 ms would never trip a per-chunk timeout; a normal
    // client is served meanwhile.
    let (normal, (answer, elapsed)) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_serving(&s, &s.client()).await;
        },
        dribble(&s, 10_000, Duration::from_millis(300)),
    );
    let () = normal;
    eprintln!("dribbled body ended after {elapsed:?}: {answer:?}");
    if let Some((status, body)) = &answer {
        assert_eq!(*status, 408, "{body}");
        assert!(body.contains("not complete within"), "{body}");
    }
    assert!(
        elapsed >= deadline - Duration::from_millis(100) && elapsed <= deadline + SLACK,
        "the dribbled body held the request for {elapsed:?}"
    );
}

#[tokio::test]
async fn a_body_under_the_minimum_rate_fails_long_before_the_deadline() {
    let grace = Duration::from_secs(1);
    let s = server(ServerLimits {
        body_timeout: Duration::from_secs(30),
        min_body_rate: 1000,
        body_rate_grace: grace,
        ..ServerLimits::default()
    });
    // 5 bytes/s against a minimum of 1000 bytes/s.
    let (normal, (answer, elapsed)) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_serving(&s, &s.client()).await;
        },
        dribble(&s, 10_000, Duration::from_millis(200)),
    );
    let () = normal;
    eprintln!("slow body ended after {elapsed:?}: {answer:?}");
    if let Some((status, body)) = &answer {
        assert_eq!(*status, 408, "{body}");
        assert!(body.contains("too slowly"), "{body}");
    }
    assert!(
        elapsed >= grace - Duration::from_millis(100) && elapsed <= grace + SLACK,
        "the slow body held the request for {elapsed:?}"
    );
}

#[tokio::test]
async fn a_body_sent_in_time_is_served_even_past_the_connection_deadlines() {
    // The body takes longer than both connection deadlines, but a request
    // in flight is never cut by them.
    let s = server(ServerLimits {
        first_request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(10),
        min_body_rate: 100,
        body_rate_grace: Duration::from_secs(1),
        ..ServerLimits::default()
    });
    let body = serde_json::to_vec(&digits_request()).unwrap();
    let mut stream = connect(&s, &[b"http/1.1"]).await.unwrap();
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let chunks = 10;
    for chunk in body.chunks(body.len().div_ceil(chunks)) {
        stream.write_all(chunk).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, answer) = read_response(&mut stream).await;
    let took = started.elapsed();
    assert!(took > Duration::from_secs(2), "{took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["outputs"][0]["data"].as_array().unwrap().len(), 10);
    assert_serving(&s, &s.client()).await;
}
