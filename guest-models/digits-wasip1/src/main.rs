//! Guest model `digits-wasip1`: the digits MLP of `digits/` as a WASI
//! preview 1 command, for toolchains without component support (this one is
//! Rust for `wasm32-wasip1`; TinyGo, Zig, C or AssemblyScript work the same).
//!
//! The contract: read one Open Inference Protocol v2 inference request as
//! JSON on stdin (the host has already checked names, datatypes, shapes and
//! element counts against the manifest, and sends `data` flat), write the
//! response JSON (`{"outputs": [...]}`) on stdout, exit 0. To refuse a
//! request, write `{"error": "..."}` and exit non-zero. The host fills in
//! `model_name`, `model_version` and `id`. Its metadata is in `airlock.toml`.

#[path = "../../digits/src/mlp.rs"]
mod mlp;

use std::io::{Read as _, Write as _};

use serde::Deserialize;
use serde_json::json;

const INPUT: &str = "input";
const OUTPUT: &str = "probabilities";

#[derive(Deserialize)]
struct Request {
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
struct Input {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    data: Vec<f32>,
}

fn main() {
    let mut body = Vec::new();
    let answer = match std::io::stdin().read_to_end(&mut body) {
        Ok(_) => infer(&body),
        Err(error) => Err(format!("could not read the request: {error}")),
    };
    let (text, code) = match answer {
        Ok(response) => (response.to_string(), 0),
        Err(message) => (json!({ "error": message }).to_string(), 1),
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing sensible is left to do if stdout is gone; the host reports
    // the missing response.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    std::process::exit(code);
}

fn infer(body: &[u8]) -> Result<serde_json::Value, String> {
    let request: Request =
        serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))?;
    let input = request
        .inputs
        .into_iter()
        .find(|input| input.name == INPUT)
        .ok_or_else(|| format!("missing input {INPUT:?}"))?;
    if input.datatype != "FP32" {
        return Err(format!("input {INPUT:?} must be FP32"));
    }
    let batch = match input.shape[..] {
        [rows, cols] if cols == mlp::INPUTS as u64 => usize::try_from(rows).ok(),
        _ => None,
    }
    .filter(|rows| rows.checked_mul(mlp::INPUTS) == Some(input.data.len()))
    .ok_or_else(|| {
        format!(
            "input {INPUT:?} must have shape [N, {}] and N × {} values",
            mlp::INPUTS,
            mlp::INPUTS
        )
    })?;
    let mut probabilities = vec![0.0; batch * mlp::CLASSES];
    mlp::forward(&input.data, batch, &mut probabilities);
    Ok(json!({
        "outputs": [{
            "name": OUTPUT,
            "datatype": "FP32",
            "shape": [batch, mlp::CLASSES],
            "data": probabilities,
        }]
    }))
}
