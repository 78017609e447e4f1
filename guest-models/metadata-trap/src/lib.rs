//! Test fixture `metadata-trap`: `metadata()` panics. Uploads of it must be
//! refused with the trap named.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{Error, InferRequest, InferResponse, ModelMetadata};
use exports::airlock::inference::inference::Guest;

struct MetadataTrap;

impl Guest for MetadataTrap {
    fn metadata() -> ModelMetadata {
        panic!("metadata-trap: no metadata for you")
    }

    fn infer(_request: InferRequest) -> Result<InferResponse, Error> {
        Err(Error::Internal(
            "unreachable: the host never loads this model".into(),
        ))
    }
}

export!(MetadataTrap);
