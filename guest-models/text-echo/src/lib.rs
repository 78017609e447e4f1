//! Test fixture `text-echo`: a model that returns its BYTES input `text`
//! (shape `[-1]`) unchanged as output `text`, so that host tests can see
//! exactly what a model received once the request guards had run.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const TEXT: &str = "text";

struct TextEcho;

impl Guest for TextEcho {
    fn metadata() -> ModelMetadata {
        let spec = TensorSpec {
            name: TEXT.into(),
            datatype: Datatype::Bytes,
            shape: vec![-1],
        };
        ModelMetadata {
            name: "text-echo".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![spec.clone()],
            outputs: vec![spec],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        let Some(input) = request.inputs.into_iter().find(|t| t.name == TEXT) else {
            return Err(Error::InvalidInput(format!("no input named {TEXT:?}")));
        };
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: TEXT.into(),
                shape: input.shape,
                data: input.data,
            }],
        })
    }
}

export!(TextEcho);
