//! Guest model `digits`: classifies 8×8 handwritten digits with the MLP in
//! [`mlp`], whose weights are compiled into the component.
//!
//! Input `input`: FP32 `[N, 64]`, raw pixel values 0..=16.
//! Output `probabilities`: FP32 `[N, 10]`, one probability per digit.

mod mlp;

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const INPUT: &str = "input";
const OUTPUT: &str = "probabilities";

struct Digits;

impl Guest for Digits {
    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "digits".into(),
            version: "1".into(),
            platform: "rust-mlp".into(),
            inputs: vec![spec(INPUT, mlp::INPUTS)],
            outputs: vec![spec(OUTPUT, mlp::CLASSES)],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        if let Some(name) = request.outputs.iter().find(|name| *name != OUTPUT) {
            return Err(Error::InvalidInput(format!(
                "unknown output {name:?}: this model produces {OUTPUT:?}"
            )));
        }
        let input = request
            .inputs
            .into_iter()
            .find(|tensor| tensor.name == INPUT)
            .ok_or_else(|| Error::InvalidInput(format!("missing input {INPUT:?}")))?;
        let TensorData::Fp32(pixels) = input.data else {
            return Err(Error::InvalidInput(format!("input {INPUT:?} must be FP32")));
        };
        let batch = match input.shape[..] {
            [rows, cols] if cols == mlp::INPUTS as u64 => usize::try_from(rows).ok(),
            _ => None,
        }
        .filter(|rows| rows.checked_mul(mlp::INPUTS) == Some(pixels.len()))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "input {INPUT:?} must have shape [N, {}] and N × {} values, got shape {:?} and {} values",
                mlp::INPUTS,
                mlp::INPUTS,
                input.shape,
                pixels.len(),
            ))
        })?;

        let mut probabilities = Vec::new();
        mlp::forward(&pixels, batch, &mut probabilities);
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: OUTPUT.into(),
                shape: vec![batch as u64, mlp::CLASSES as u64],
                data: TensorData::Fp32(probabilities),
            }],
        })
    }
}

/// An FP32 `[-1, width]` tensor spec.
fn spec(name: &str, width: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: Datatype::Fp32,
        shape: vec![-1, width as i64],
    }
}

export!(Digits);
