//! Host-side bindings for the guest contract in `wit/`.
//!
//! All `bindgen!` output lives here; the rest of the crate uses the re-exports.

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "model",
    });
}

/// The `policy` world (guards). Its `types` are those of the `model` world,
/// not a second copy, so that a request a guard rewrote goes straight to
/// the model.
#[allow(missing_docs)]
mod generated_policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        with: {
            "airlock:inference/types": super::generated::airlock::inference::types,
        },
    });
}

pub use generated::{Model, ModelPre};
pub use generated_policy::exports::airlock::inference::guard::{
    Guest as GuardExports, RequestDecision, ResponseDecision,
};
pub use generated_policy::{Policy, PolicyPre};

// Spelled through `generated`: this crate is itself named `airlock`, so a
// bare `airlock::` path would be ambiguous.
pub use generated::airlock::inference::types::{
    Datatype, Error as GuestError, InferRequest, InferResponse, ModelMetadata, ParameterValue,
    Tensor, TensorData, TensorSpec,
};
pub use generated::exports::airlock::inference::inference::Guest as InferenceExports;

impl Datatype {
    /// The Open Inference Protocol name of this datatype (`"FP32"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Parses an Open Inference Protocol datatype name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::Uint8,
            "UINT16" => Datatype::Uint16,
            "UINT32" => Datatype::Uint32,
            "UINT64" => Datatype::Uint64,
            "INT8" => Datatype::Int8,
            "INT16" => Datatype::Int16,
            "INT32" => Datatype::Int32,
            "INT64" => Datatype::Int64,
            "FP16" => Datatype::Fp16,
            "FP32" => Datatype::Fp32,
            "FP64" => Datatype::Fp64,
            "BYTES" => Datatype::Bytes,
            _ => return None,
        })
    }
}

impl TensorData {
    /// The datatype of these elements.
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::Bool,
            TensorData::Uint8(_) => Datatype::Uint8,
            TensorData::Uint16(_) => Datatype::Uint16,
            TensorData::Uint32(_) => Datatype::Uint32,
            TensorData::Uint64(_) => Datatype::Uint64,
            TensorData::Int8(_) => Datatype::Int8,
            TensorData::Int16(_) => Datatype::Int16,
            TensorData::Int32(_) => Datatype::Int32,
            TensorData::Int64(_) => Datatype::Int64,
            TensorData::Fp16(_) => Datatype::Fp16,
            TensorData::Fp32(_) => Datatype::Fp32,
            TensorData::Fp64(_) => Datatype::Fp64,
            TensorData::Bytes(_) => Datatype::Bytes,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
