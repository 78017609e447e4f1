//! Test fixture `misbehave`: a model that does what the request parameter
//! `mode` (text) tells it to, so that host tests can check how a misbehaving
//! guest is contained.
//!
//! | `mode`     | behaviour                                                  |
//! |------------|------------------------------------------------------------|
//! | `echo`     | the default: returns input `x` as output `y`               |
//! | `trap`     | panics, which is a wasm trap                               |
//! | `loop`     | spins forever                                              |
//! | `oom`      | allocates and touches memory until an allocation fails     |
//! | `invalid`  | returns `invalid-input("misbehave says no")`               |
//! | `internal` | returns `internal("secret internal detail")`               |
//!
//! Input `x`: FP32 `[-1]`. Output `y`: FP32 `[-1]`.

use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, ParameterValue, Tensor, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const INPUT: &str = "x";
const OUTPUT: &str = "y";

struct Misbehave;

impl Guest for Misbehave {
    fn metadata() -> ModelMetadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        };
        ModelMetadata {
            name: "misbehave".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![spec(INPUT)],
            outputs: vec![spec(OUTPUT)],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        let mode = match request.parameters.iter().find(|(name, _)| name == "mode") {
            None => "echo",
            Some((_, ParameterValue::Text(mode))) => mode.as_str(),
            Some(_) => {
                return Err(Error::InvalidInput(
                    "parameter \"mode\" must be text".into(),
                ));
            }
        };
        match mode {
            "echo" => echo(request),
            "trap" => panic!("misbehave: trap requested"),
            "loop" => spin(),
            "oom" => exhaust_memory(),
            "invalid" => Err(Error::InvalidInput("misbehave says no".into())),
            "internal" => Err(Error::Internal("secret internal detail".into())),
            other => Err(Error::InvalidInput(format!("unknown mode {other:?}"))),
        }
    }
}

/// Returns input `x` unchanged as output `y`.
fn echo(request: InferRequest) -> Result<InferResponse, Error> {
    if let Some(name) = request.outputs.iter().find(|name| *name != OUTPUT) {
        return Err(Error::InvalidInput(format!(
            "unknown output {name:?}: this model produces {OUTPUT:?}"
        )));
    }
    let x = request
        .inputs
        .into_iter()
        .find(|tensor| tensor.name == INPUT)
        .ok_or_else(|| Error::InvalidInput(format!("missing input {INPUT:?}")))?;
    Ok(InferResponse {
        outputs: vec![Tensor {
            name: OUTPUT.into(),
            ..x
        }],
    })
}

/// Loops until the host interrupts it. `black_box` keeps the counter, and so
/// the loop, observable to the optimiser.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter).wrapping_add(1);
    }
}

/// Holds on to ever more 1 MiB chunks, writing to every page of each, until
/// growing linear memory fails and the allocation failure aborts.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 64 << 10;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for byte in chunk.iter_mut().step_by(PAGE) {
            *byte = 1;
        }
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}

export!(Misbehave);
