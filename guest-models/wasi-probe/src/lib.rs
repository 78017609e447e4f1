//! Test fixture `wasi-probe`: a model that tries everything a model might use
//! to learn about its host (environment, arguments, files, stdin, clocks,
//! randomness) and reports what it got, one `key=value` line per element of
//! its BYTES output `report`. Host tests check that it got nothing.
//!
//! | `mode`  | behaviour                                                       |
//! |---------|-----------------------------------------------------------------|
//! | `probe` | the default: runs every probe                                   |
//! | `sleep` | sleeps for an hour (`std::thread::sleep`), then reports how much monotonic time passed |
//!
//! Input `x`: FP32 `[-1]` (ignored). Output `report`: BYTES `[-1]`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::hint::black_box;
use std::io::Read as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, ParameterValue, Tensor,
    TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

struct WasiProbe;

impl Guest for WasiProbe {
    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "wasi-probe".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: Datatype::Fp32,
                shape: vec![-1],
            }],
            outputs: vec![TensorSpec {
                name: "report".into(),
                datatype: Datatype::Bytes,
                shape: vec![-1],
            }],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        let mode = match request.parameters.iter().find(|(name, _)| name == "mode") {
            None => "probe",
            Some((_, ParameterValue::Text(mode))) => mode.as_str(),
            Some(_) => {
                return Err(Error::InvalidInput(
                    "parameter \"mode\" must be text".into(),
                ));
            }
        };
        let lines = match mode {
            "probe" => probe(),
            "sleep" => sleep(),
            other => return Err(Error::InvalidInput(format!("unknown mode {other:?}"))),
        };
        let data: Vec<Vec<u8>> = lines.into_iter().map(String::into_bytes).collect();
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: "report".into(),
                shape: vec![data.len() as u64],
                data: TensorData::Bytes(data),
            }],
        })
    }
}

/// `ok:<detail>` or `err:<io error kind>`.
fn outcome<T>(result: std::io::Result<T>, detail: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("ok:{}", detail(value)),
        Err(error) => format!("err:{:?}", error.kind()),
    }
}

fn probe() -> Vec<String> {
    let mut lines = Vec::new();
    let env: Vec<String> = std::env::vars_os()
        .map(|(key, _)| key.to_string_lossy().into_owned())
        .collect();
    lines.push(format!("env={}", env.join(",")));
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    lines.push(format!("args={}", args.join(" ")));

    for path in ["/", ".", "/tmp", "/etc", "/proc/self"] {
        let listed = outcome(std::fs::read_dir(path), |entries| {
            entries.count().to_string()
        });
        lines.push(format!("read_dir:{path}={listed}"));
    }
    for path in ["/etc/passwd", "/proc/self/environ", "Cargo.toml"] {
        let read = outcome(std::fs::read(path), |bytes| bytes.len().to_string());
        lines.push(format!("read:{path}={read}"));
    }
    let created = outcome(std::fs::File::create("airlock-probe.txt"), |_| {
        String::new()
    });
    lines.push(format!("create:airlock-probe.txt={created}"));
    let mut stdin = Vec::new();
    let read = outcome(std::io::stdin().read_to_end(&mut stdin), |n| n.to_string());
    lines.push(format!("stdin={read}"));

    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::MAX);
    lines.push(format!("wall_ns={}", wall.as_nanos()));
    let start = Instant::now();
    let mut spin = 0u64;
    for i in 0..1_000_000u64 {
        spin = black_box(spin.wrapping_add(i));
    }
    black_box(spin);
    lines.push(format!(
        "monotonic_elapsed_ns={}",
        start.elapsed().as_nanos()
    ));

    // std seeds every HashMap from the host (wasi:random/insecure-seed).
    lines.push(format!(
        "hash_seed={:016x}",
        RandomState::new().hash_one(0u64)
    ));
    lines
}

/// Sleeps for an hour. If the host let a sleep block its thread, the
/// request would hang past any deadline, since the epoch deadline only
/// interrupts wasm code, not a host call.
fn sleep() -> Vec<String> {
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3600));
    vec![format!("slept_monotonic_ns={}", start.elapsed().as_nanos())]
}

export!(WasiProbe);
