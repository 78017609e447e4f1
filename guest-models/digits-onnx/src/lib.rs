//! Guest model `digits-onnx`: the digits MLP exported to ONNX
//! (`guest-models/data/digits_mlp.onnx`, compiled in) and run by tract
//! inside the component, to show that a model can be brought as an ONNX
//! file rather than as code.
//!
//! Input `input`: FP32 `[N, 64]`, raw pixel values 0..=16.
//! Output `probabilities`: FP32 `[N, 10]`, one probability per digit.
//!
//! Parsing and optimising the ONNX graph takes far longer than running it,
//! so it happens once per instance, on first use, and `wizer-initialize`
//! does it ahead of time: a host that snapshots the component after calling
//! it gives every fresh instance a ready plan.

use std::sync::OnceLock;

use tract_onnx::prelude::{
    Arc, Datum, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTensor, ToDim,
    TractResult, TypedRunnableModel, tract_ndarray, tvec,
};
use tract_onnx::tract_core::internal::{ensure, format_err};

wit_bindgen::generate!({
    path: "../../wit",
    world: "model-preinit",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest as Inference;

/// The ONNX model: `input` [N, 64] → `probabilities` [N, 10].
static ONNX: &[u8] = include_bytes!("../../data/digits_mlp.onnx");

const INPUT: &str = "input";
const OUTPUT: &str = "probabilities";
const INPUTS: usize = 64;
const CLASSES: usize = 10;

/// The optimised plan, or why it could not be built.
static PLAN: OnceLock<Result<Arc<TypedRunnableModel>, String>> = OnceLock::new();

/// Returns the plan, building it on first use.
fn plan() -> Result<&'static Arc<TypedRunnableModel>, Error> {
    PLAN.get_or_init(|| load().map_err(|error| format!("cannot load digits_mlp.onnx: {error:#}")))
        .as_ref()
        .map_err(|message| Error::Internal(message.clone()))
}

/// Parses the ONNX model with a symbolic batch size and optimises it.
fn load() -> TractResult<Arc<TypedRunnableModel>> {
    let model = tract_onnx::onnx().model_for_read(&mut &ONNX[..])?;
    let batch = model.sym("N");
    model
        .with_input_fact(0, f32::fact([batch.to_dim(), INPUTS.to_dim()]).into())?
        .into_optimized()?
        .into_runnable()
}

/// Runs `plan` on `batch` rows of pixels.
fn run(plan: &Arc<TypedRunnableModel>, pixels: Vec<f32>, batch: usize) -> TractResult<Vec<f32>> {
    let input = tract_ndarray::Array2::from_shape_vec((batch, INPUTS), pixels)?.into_tensor();
    let outputs = plan.run(tvec!(input.into()))?;
    let output = outputs
        .first()
        .ok_or_else(|| format_err!("the model produced no output"))?;
    ensure!(
        output.shape() == [batch, CLASSES] && output.datum_type() == f32::datum_type(),
        "the model produced {:?} {:?}, expected F32 [{batch}, {CLASSES}]",
        output.datum_type(),
        output.shape(),
    );
    Ok(output.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

struct DigitsOnnx;

impl Guest for DigitsOnnx {
    fn wizer_initialize() {
        // A trap here fails the snapshot, which is where a broken model
        // should be caught.
        let plan = match plan() {
            Ok(plan) => plan,
            Err(error) => panic!("{error:?}"),
        };
        // One inference settles what else the first request would set up.
        if let Err(error) = run(plan, vec![0.0; INPUTS], 1) {
            panic!("warm-up inference failed: {error:#}");
        }
    }
}

impl Inference for DigitsOnnx {
    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "digits-onnx".into(),
            version: "1".into(),
            platform: "onnx-tract".into(),
            inputs: vec![spec(INPUT, INPUTS)],
            outputs: vec![spec(OUTPUT, CLASSES)],
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
            [rows, cols] if cols == INPUTS as u64 => usize::try_from(rows).ok(),
            _ => None,
        }
        .filter(|rows| rows.checked_mul(INPUTS) == Some(pixels.len()))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "input {INPUT:?} must have shape [N, {INPUTS}] and N × {INPUTS} values, got shape {:?} and {} values",
                input.shape,
                pixels.len(),
            ))
        })?;

        let plan = plan()?;
        let probabilities = if batch == 0 {
            Vec::new()
        } else {
            run(plan, pixels, batch).map_err(|error| Error::Internal(format!("{error:#}")))?
        };
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: OUTPUT.into(),
                shape: vec![batch as u64, CLASSES as u64],
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

export!(DigitsOnnx);
