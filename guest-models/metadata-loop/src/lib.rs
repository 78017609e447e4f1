//! Test fixture `metadata-loop`: `metadata()` never returns. Uploads of it
//! must be refused once the deadline passes.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{Error, InferRequest, InferResponse, ModelMetadata};
use exports::airlock::inference::inference::Guest;

struct MetadataLoop;

impl Guest for MetadataLoop {
    fn metadata() -> ModelMetadata {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn infer(_request: InferRequest) -> Result<InferResponse, Error> {
        Err(Error::Internal(
            "unreachable: the host never loads this model".into(),
        ))
    }
}

export!(MetadataLoop);
