//! Test fixture `huge-memory`: a model whose linear memory starts at more
//! than 320 MiB, more than any model's memory cap allows (256 MiB by
//! default, 64 MiB on the test servers). The memory is declared, not
//! grown: a large zero-initialised static lands in `.bss`, and the linker
//! sizes the initial memory to hold it. The host refuses it when it first
//! instantiates it, at upload.

use core::mem::MaybeUninit;
use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

/// Size of the static that makes the initial memory huge.
const HUGE: usize = 320 << 20;

/// Uninitialised, so that the compiler does not build a 320 MiB image of it.
static mut BALLAST: MaybeUninit<[u8; HUGE]> = MaybeUninit::uninit();

struct HugeMemory;

impl Guest for HugeMemory {
    fn metadata() -> ModelMetadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        };
        ModelMetadata {
            name: "huge-memory".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        }
    }

    fn infer(_request: InferRequest) -> Result<InferResponse, Error> {
        // Uses the static, so that the linker keeps it.
        let ballast = black_box(core::ptr::addr_of_mut!(BALLAST)) as usize;
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: "y".into(),
                shape: vec![1],
                data: TensorData::Fp32(vec![ballast as f32]),
            }],
        })
    }
}

export!(HugeMemory);
