//! Benchmark peer: `POST /v2/models/digits/infer` answered by the digits MLP
//! compiled natively into this binary, over HTTPS.
//!
//! The transport mirrors `airlock serve` (host/src/server.rs and
//! host/src/tls.rs): rustls with the aws-lc-rs provider, TLS 1.3 and 1.2,
//! ALPN h2 and http/1.1, server cipher order; hyper-util's auto (HTTP/1.1 +
//! HTTP/2) connection builder with keep-alive; `TCP_NODELAY`. The JSON in and
//! out is the Open Inference Protocol v2 body `airlock serve` takes and gives
//! for the `digits` model. What it leaves out is exactly what is measured:
//! the sandbox (a fresh instance per request, tensors copied in and out,
//! limits), policy checks, the model registry, metrics and tracing.
//!
//! Usage: `airlock-bench-native <listen-addr> <cert.pem> <key.pem>`.

#[path = "../../../guest-models/digits/src/mlp.rs"]
#[allow(dead_code)]
mod mlp;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
struct Input {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Vec<f32>,
}

#[derive(Serialize)]
struct Answer<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: [Output; 1],
}

#[derive(Serialize)]
struct Output {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    data: Vec<f32>,
}

fn bad(message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (StatusCode::BAD_REQUEST, body).into_response()
}

async fn infer(body: Bytes) -> Response {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return bad(format!("malformed inference request: {e}")),
    };
    let [input] = &request.inputs[..] else {
        return bad("expected exactly one input");
    };
    let batch = match input.shape[..] {
        [rows, cols] if cols == mlp::INPUTS as i64 => usize::try_from(rows).ok(),
        _ => None,
    }
    .filter(|rows| rows.checked_mul(mlp::INPUTS) == Some(input.data.len()));
    let (Some(batch), "input", "FP32") = (batch, input.name.as_str(), input.datatype.as_str())
    else {
        return bad("expected one FP32 input \"input\" of shape [N, 64]");
    };
    let mut probabilities = vec![0.0; batch * mlp::CLASSES];
    mlp::forward(&input.data, batch, &mut probabilities);
    let answer = Answer {
        model_name: "digits",
        model_version: "1",
        id: request.id,
        outputs: [Output {
            name: "probabilities",
            datatype: "FP32",
            shape: [batch, mlp::CLASSES],
            data: probabilities,
        }],
    };
    match serde_json::to_vec(&answer) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The rustls configuration `airlock serve` uses (host/src/tls.rs).
fn tls_config(cert: &str, key: &str) -> anyhow::Result<rustls::ServerConfig> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("failed to read {cert}"))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("failed to parse {cert}"))?;
    let key_pem = std::fs::read(key).with_context(|| format!("failed to read {key}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?
        .with_context(|| format!("no private key in {key}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key] = &args[..] else {
        anyhow::bail!("usage: airlock-bench-native <listen-addr> <cert.pem> <key.pem>");
    };
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("bad listen address {listen:?}"))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert, key)?));
    let router = Router::new().route("/v2/models/digits/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    eprintln!("listening on https://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().keep_alive(true);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
