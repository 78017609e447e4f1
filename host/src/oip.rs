//! The Open Inference Protocol v2 (REST) wire format: parsing requests into
//! guest tensors, checking them against a model's metadata, and writing
//! responses.
//!
//! Tensor `data` is parsed straight into the typed lists the guest receives
//! (no intermediate `serde_json::Value`), only after the request's shape and
//! datatype were checked, and it may be flat or nested row-major arrays.
//!
//! The binary tensor data extension (KServe's and Triton's) is supported
//! both ways: an input may carry `"parameters": {"binary_data_size": n}`
//! instead of `data`, its `n` bytes following the JSON object in the body
//! (whose length the `Inference-Header-Content-Length` header gives), and
//! outputs asked for with `"binary_data": true` (or all of them, with the
//! request parameter `"binary_data_output": true`) go back the same way:
//! little-endian, row-major, BOOL as one byte 0 or 1, BYTES as a 4-byte
//! little-endian length before each element.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::bindings::{
    Datatype, InferRequest, InferResponse, ModelMetadata, ParameterValue, Tensor, TensorData,
    TensorSpec,
};

/// A request the caller got wrong; the message goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

macro_rules! bad {
    ($($arg:tt)*) => { BadRequest(format!($($arg)*)) };
}

/// Bounds checked while parsing a request and before writing a response.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most tensor elements over all inputs of one request.
    pub max_elements: u64,
    /// Most tensor elements over all outputs of one response. The bytes a
    /// model may hand back are bounded in the sandbox
    /// ([`Limits::output_bytes`](crate::Limits::output_bytes)); this bounds
    /// the JSON written from them, where one byte of BOOL or UINT8 becomes
    /// up to six characters.
    pub max_output_elements: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_elements: 16 << 20,
            max_output_elements: 16 << 20,
        }
    }
}

/// Why a model's response cannot be sent. Either way it is the model's
/// fault, a 5xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The response does not fit the model's metadata or the request
    /// (logged, not sent: it may describe the model's internals).
    #[error("{0}")]
    Invalid(String),
    /// The response is over [`RequestLimits::max_output_elements`].
    #[error("the response has more than {0} tensor elements")]
    TooLarge(u64),
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Absent when the tensor comes as binary data after the JSON.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The binary extension's input parameter: the tensor's size in bytes.
const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The binary extension's output parameter: send this output as binary.
const BINARY_DATA: &str = "binary_data";
/// The binary extension's request parameter: send every output as binary
/// unless its own `binary_data` says otherwise. Not passed to the model.
const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// How the response sends each output: as JSON `data`, or as binary data
/// after the JSON object (the binary tensor data extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputEncoding {
    /// The request's `binary_data_output`.
    all_binary: bool,
    /// Requested outputs' own `binary_data`, which wins over `all_binary`.
    per_output: Vec<(String, bool)>,
}

impl OutputEncoding {
    /// Whether output `name` goes back as binary data.
    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all_binary, |(_, binary)| *binary)
    }
}

/// A parsed and checked inference request, and how to send its answer.
#[derive(Debug)]
pub struct ParsedInfer {
    /// What the guards and the model receive.
    pub request: InferRequest,
    /// Which outputs go back as binary data.
    pub encoding: OutputEncoding,
}

/// Parses an inference request body and checks it against `metadata`.
///
/// `json_len` is the `Inference-Header-Content-Length` header: the body's
/// first `json_len` bytes are the JSON object and the rest is the binary
/// data of the inputs that have `binary_data_size`, in their order. Without
/// it the whole body is JSON.
///
/// Every declared input must be present exactly once, with the declared
/// datatype and a shape that matches the declared one (-1 matches any size),
/// and its data must hold exactly as many elements as the shape says.
pub fn parse_infer(
    body: &[u8],
    json_len: Option<usize>,
    metadata: &ModelMetadata,
    limits: &RequestLimits,
) -> Result<ParsedInfer, BadRequest> {
    let (json, mut binary) = match json_len {
        Some(len) if len > body.len() => {
            return Err(bad!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            ));
        }
        Some(len) => body.split_at(len),
        None => (body, &[][..]),
    };
    let raw: RawRequest<'_> =
        serde_json::from_slice(json).map_err(|e| bad!("malformed inference request: {e}"))?;

    let mut parameters = raw.parameters;
    let all_binary = match parameters
        .as_mut()
        .and_then(|map| map.remove(BINARY_DATA_OUTPUT))
    {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => return Err(bad!("parameter {BINARY_DATA_OUTPUT:?} must be a boolean")),
    };
    let parameters = match parameters {
        Some(map) => convert_parameters(map)?,
        None => Vec::new(),
    };

    let mut seen = HashSet::new();
    let mut total_elements: u64 = 0;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for input in &raw.inputs {
        if !seen.insert(input.name.as_str()) {
            return Err(bad!("input {:?} appears more than once", input.name));
        }
        let spec = metadata
            .inputs
            .iter()
            .find(|spec| spec.name == input.name)
            .ok_or_else(|| {
                bad!(
                    "unexpected input {:?}; the model takes {}",
                    input.name,
                    names(&metadata.inputs)
                )
            })?;
        let datatype = Datatype::parse(&input.datatype).ok_or_else(|| {
            bad!(
                "input {:?}: unknown datatype {:?}",
                input.name,
                input.datatype
            )
        })?;
        if datatype != spec.datatype {
            return Err(bad!(
                "input {:?}: datatype {} does not match the model's {}",
                input.name,
                datatype.as_str(),
                spec.datatype.as_str()
            ));
        }
        let shape = check_shape(&input.name, &input.shape, spec)?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| bad!("input {:?}: shape is too large", input.name))?;
        total_elements = total_elements.saturating_add(elements);
        if total_elements > limits.max_elements {
            return Err(bad!(
                "the request has more than {} tensor elements",
                limits.max_elements
            ));
        }
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get(BINARY_DATA_SIZE))
        {
            None => None,
            Some(size) => Some(size.as_u64().ok_or_else(|| {
                bad!(
                    "input {:?}: {BINARY_DATA_SIZE} must be a non-negative integer",
                    input.name
                )
            })?),
        };
        let data = match (input.data, binary_size) {
            (Some(data), None) => parse_data(data, datatype, &shape),
            (None, Some(size)) => {
                if json_len.is_none() {
                    return Err(bad!(
                        "input {:?} has {BINARY_DATA_SIZE} but the request has no \
                         Inference-Header-Content-Length header to say where the JSON ends",
                        input.name
                    ));
                }
                let Some(bytes) = usize::try_from(size)
                    .ok()
                    .and_then(|size| binary.split_off(..size))
                else {
                    return Err(bad!(
                        "input {:?}: {BINARY_DATA_SIZE} is {size} but only {} bytes of \
                         binary data are left",
                        input.name,
                        binary.len()
                    ));
                };
                decode_binary(bytes, datatype, elements)
            }
            (Some(_), Some(_)) => {
                return Err(bad!(
                    "input {:?} has both data and {BINARY_DATA_SIZE}",
                    input.name
                ));
            }
            (None, None) => {
                return Err(bad!(
                    "input {:?} has no data (nor {BINARY_DATA_SIZE})",
                    input.name
                ));
            }
        }
        .map_err(|e| bad!("input {:?}: {e}", input.name))?;
        if data.len() as u64 != elements {
            return Err(bad!(
                "input {:?}: shape {:?} needs {elements} elements but data has {}",
                input.name,
                input.shape,
                data.len()
            ));
        }
        inputs.push(Tensor {
            name: input.name.clone(),
            shape,
            data,
        });
    }
    if let Some(missing) = metadata
        .inputs
        .iter()
        .find(|spec| !seen.contains(spec.name.as_str()))
    {
        return Err(bad!("missing input {:?}", missing.name));
    }

    if !binary.is_empty() {
        return Err(bad!(
            "{} bytes of binary data after the JSON belong to no input",
            binary.len()
        ));
    }

    let mut outputs = Vec::new();
    let mut per_output = Vec::new();
    if let Some(requested) = raw.outputs {
        let mut seen = HashSet::new();
        for output in requested {
            if !metadata.outputs.iter().any(|spec| spec.name == output.name) {
                return Err(bad!(
                    "unknown output {:?}; the model produces {}",
                    output.name,
                    names(&metadata.outputs)
                ));
            }
            if !seen.insert(output.name.clone()) {
                return Err(bad!("output {:?} is requested twice", output.name));
            }
            match output.parameters.as_ref().and_then(|p| p.get(BINARY_DATA)) {
                None => {}
                Some(serde_json::Value::Bool(b)) => per_output.push((output.name.clone(), *b)),
                Some(_) => {
                    return Err(bad!(
                        "output {:?}: {BINARY_DATA} must be a boolean",
                        output.name
                    ));
                }
            }
            outputs.push(output.name);
        }
    }

    Ok(ParsedInfer {
        request: InferRequest {
            id: raw.id,
            parameters,
            inputs,
            outputs,
        },
        encoding: OutputEncoding {
            all_binary,
            per_output,
        },
    })
}

/// Decodes one input's binary data: `elements` elements of `datatype`,
/// little-endian, taking exactly all of `bytes`.
fn decode_binary(bytes: &[u8], datatype: Datatype, elements: u64) -> Result<TensorData, String> {
    fn fixed<const N: usize, T>(
        bytes: &[u8],
        elements: u64,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, String> {
        let (chunks, rest) = bytes.as_chunks::<N>();
        if chunks.len() as u64 != elements || !rest.is_empty() {
            return Err(format!(
                "{BINARY_DATA_SIZE} is {} but the shape needs {elements} elements of {N} \
                 bytes",
                bytes.len()
            ));
        }
        Ok(chunks.iter().map(|c| from(*c)).collect())
    }
    Ok(match datatype {
        Datatype::Bool => {
            let bytes = fixed::<1, u8>(bytes, elements, |[b]| b)?;
            if let Some(bad) = bytes.iter().find(|b| **b > 1) {
                return Err(format!("BOOL element {bad} is neither 0 nor 1"));
            }
            TensorData::Bool(bytes.into_iter().map(|b| b == 1).collect())
        }
        Datatype::Uint8 => TensorData::Uint8(fixed(bytes, elements, u8::from_le_bytes)?),
        Datatype::Uint16 => TensorData::Uint16(fixed(bytes, elements, u16::from_le_bytes)?),
        Datatype::Uint32 => TensorData::Uint32(fixed(bytes, elements, u32::from_le_bytes)?),
        Datatype::Uint64 => TensorData::Uint64(fixed(bytes, elements, u64::from_le_bytes)?),
        Datatype::Int8 => TensorData::Int8(fixed(bytes, elements, i8::from_le_bytes)?),
        Datatype::Int16 => TensorData::Int16(fixed(bytes, elements, i16::from_le_bytes)?),
        Datatype::Int32 => TensorData::Int32(fixed(bytes, elements, i32::from_le_bytes)?),
        Datatype::Int64 => TensorData::Int64(fixed(bytes, elements, i64::from_le_bytes)?),
        Datatype::Fp16 => TensorData::Fp16(fixed(bytes, elements, u16::from_le_bytes)?),
        Datatype::Fp32 => TensorData::Fp32(fixed(bytes, elements, f32::from_le_bytes)?),
        Datatype::Fp64 => TensorData::Fp64(fixed(bytes, elements, f64::from_le_bytes)?),
        Datatype::Bytes => {
            // Each element costs at least its 4-byte length, so the body's
            // size bounds this allocation.
            let mut out = Vec::with_capacity(elements.min(bytes.len() as u64 / 4) as usize);
            let mut rest = bytes;
            for i in 0..elements {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(format!(
                        "the binary data ends before BYTES element {i} of {elements}"
                    ));
                };
                let len = u32::from_le_bytes(*len) as usize;
                let Some(element) = tail.get(..len) else {
                    return Err(format!(
                        "BYTES element {i} says {len} bytes but only {} are left",
                        tail.len()
                    ));
                };
                out.push(element.to_vec());
                rest = &tail[len..];
            }
            if !rest.is_empty() {
                return Err(format!(
                    "{} bytes are left after the last of {elements} BYTES elements",
                    rest.len()
                ));
            }
            TensorData::Bytes(out)
        }
    })
}

/// The size of `data` in the binary tensor data format.
fn binary_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        other => other.len() * element_size(other.datatype()),
    }
}

/// Bytes per element of a fixed-size datatype (BYTES: 0, it has none).
fn element_size(datatype: Datatype) -> usize {
    match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Bytes => 0,
    }
}

/// Appends `data` in the binary tensor data format.
fn encode_binary(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Uint16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int8(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp16(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            for element in v {
                // `to_bytes` checked that each length fits.
                out.extend_from_slice(&(element.len() as u32).to_le_bytes());
                out.extend_from_slice(element);
            }
        }
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let quoted: Vec<String> = specs.iter().map(|s| format!("{:?}", s.name)).collect();
    quoted.join(", ")
}

fn check_shape(name: &str, shape: &[i64], spec: &TensorSpec) -> Result<Vec<u64>, BadRequest> {
    if shape.len() != spec.shape.len() {
        return Err(bad!(
            "input {name:?}: shape {shape:?} has {} dimensions, the model expects {} ({:?})",
            shape.len(),
            spec.shape.len(),
            spec.shape
        ));
    }
    let mut dims = Vec::with_capacity(shape.len());
    for (&got, &want) in shape.iter().zip(&spec.shape) {
        if got < 0 {
            return Err(bad!(
                "input {name:?}: negative dimension in shape {shape:?}"
            ));
        }
        if want != -1 && got != want {
            return Err(bad!(
                "input {name:?}: shape {shape:?} does not match the model's {:?}",
                spec.shape
            ));
        }
        dims.push(got as u64);
    }
    Ok(dims)
}

fn convert_parameters(
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, ParameterValue)>, BadRequest> {
    map.into_iter()
        .map(|(key, value)| {
            let value = match value {
                serde_json::Value::Bool(b) => ParameterValue::Bool(b),
                serde_json::Value::String(s) => ParameterValue::Text(s),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => ParameterValue::Int(i),
                    None => ParameterValue::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
                _ => {
                    return Err(bad!(
                        "parameter {key:?}: only booleans, numbers and strings are supported"
                    ));
                }
            };
            Ok((key, value))
        })
        .collect()
}

/// Parses `data` (flat, or nested to exactly the depth of `shape`) into a
/// typed list.
fn parse_data(raw: &RawValue, datatype: Datatype, shape: &[u64]) -> Result<TensorData, String> {
    let capacity = shape.iter().product::<u64>().min(1 << 20) as usize;
    macro_rules! parse_as {
        ($variant:ident, $ty:ty) => {{
            let mut out: Vec<$ty> = Vec::with_capacity(capacity);
            flatten::<$ty>(raw, shape, &mut out)?;
            TensorData::$variant(out)
        }};
    }
    Ok(match datatype {
        Datatype::Bool => parse_as!(Bool, bool),
        Datatype::Uint8 => parse_as!(Uint8, u8),
        Datatype::Uint16 => parse_as!(Uint16, u16),
        Datatype::Uint32 => parse_as!(Uint32, u32),
        Datatype::Uint64 => parse_as!(Uint64, u64),
        Datatype::Int8 => parse_as!(Int8, i8),
        Datatype::Int16 => parse_as!(Int16, i16),
        Datatype::Int32 => parse_as!(Int32, i32),
        Datatype::Int64 => parse_as!(Int64, i64),
        Datatype::Fp16 => {
            let mut out: Vec<Half> = Vec::with_capacity(capacity);
            flatten::<Half>(raw, shape, &mut out)?;
            TensorData::Fp16(out.into_iter().map(|h| h.0).collect())
        }
        Datatype::Fp32 => parse_as!(Fp32, f32),
        Datatype::Fp64 => parse_as!(Fp64, f64),
        Datatype::Bytes => parse_as!(Bytes, Vec<u8>),
    })
}

/// An FP16 element: parsed from a JSON number, stored as binary16 bits.
struct Half(u16);

/// One JSON scalar converted to a tensor element type.
trait Element: Sized {
    const EXPECTED: &'static str;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl Element for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

macro_rules! int_element {
    ($($ty:ty),*) => {$(
        impl Element for $ty {
            const EXPECTED: &'static str = concat!("an integer in the range of ", stringify!($ty));
            fn from_u64(v: u64) -> Option<Self> { <$ty>::try_from(v).ok() }
            fn from_i64(v: i64) -> Option<Self> { <$ty>::try_from(v).ok() }
        }
    )*};
}
int_element!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Element for f32 {
    const EXPECTED: &'static str = "a number in the range of FP32";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let x = v as f32;
        x.is_finite().then_some(x)
    }
}

impl Element for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl Element for Half {
    const EXPECTED: &'static str = "a number in the range of FP16";
    fn from_u64(v: u64) -> Option<Self> {
        Self::from_f64(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Self::from_f64(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let h = half::f16::from_f64(v);
        h.is_finite().then_some(Half(h.to_bits()))
    }
}

impl Element for Vec<u8> {
    const EXPECTED: &'static str = "a string";
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

/// Walks a JSON array (flat, or nested to the depth of `shape`) and pushes
/// its leaves into `out`, checking the nesting against `shape`.
fn flatten<T: Element>(raw: &RawValue, shape: &[u64], out: &mut Vec<T>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let mut state = FlattenState {
        shape,
        leaf_depth: None,
    };
    Level {
        out,
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut de)
    .map_err(|e| {
        // serde_json appends " at line L column C"; the position inside the
        // data array is not useful to a caller, the message is.
        let text = e.to_string();
        match text.find(" at line ") {
            Some(i) => text[..i].to_owned(),
            None => text,
        }
    })
}

struct FlattenState<'s> {
    shape: &'s [u64],
    /// Depth of the first leaf seen: 1 for flat data, `shape.len()` for nested.
    leaf_depth: Option<usize>,
}

struct Level<'a, 's, T> {
    out: &'a mut Vec<T>,
    state: &'a mut FlattenState<'s>,
    depth: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Level<'_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Level<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.depth == 0 {
            f.write_str("an array of tensor elements")
        } else {
            write!(f, "{} or an array", T::EXPECTED)
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > self.state.shape.len().max(1) {
            return Err(de::Error::custom(format!(
                "data is nested deeper than the shape's {} dimensions",
                self.state.shape.len()
            )));
        }
        let mut count: u64 = 0;
        while seq
            .next_element_seed(Level {
                out: &mut *self.out,
                state: &mut *self.state,
                depth,
            })?
            .is_some()
        {
            count += 1;
        }
        // Nested data must follow the shape at every level.
        if let Some(leaf) = self.state.leaf_depth
            && leaf > 1
        {
            let want = self.state.shape[depth - 1];
            if count != want {
                return Err(de::Error::custom(format!(
                    "nested data has {count} entries at depth {depth}, the shape says {want}"
                )));
            }
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(T::from_bool(v), || v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(T::from_u64(v), || v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(T::from_i64(v), || v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(T::from_f64(v), || v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(T::from_str(v), || "a string".to_owned())
    }
}

impl<T: Element> Level<'_, '_, T> {
    fn leaf<E: de::Error>(self, value: Option<T>, shown: impl FnOnce() -> String) -> Result<(), E> {
        if self.depth == 0 {
            return Err(E::custom("data must be an array"));
        }
        match self.state.leaf_depth {
            None => {
                if self.depth != 1 && self.depth != self.state.shape.len() {
                    return Err(E::custom(format!(
                        "data must be flat or nested to the shape's {} dimensions",
                        self.state.shape.len()
                    )));
                }
                self.state.leaf_depth = Some(self.depth);
            }
            Some(leaf) if leaf != self.depth => {
                return Err(E::custom("data mixes nesting depths"));
            }
            Some(_) => {}
        }
        match value {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => Err(E::custom(format!(
                "element {} is not {}",
                shown(),
                T::EXPECTED
            ))),
        }
    }
}

/// The body of a successful inference response.
pub struct InferResponseBody<'a> {
    /// The name the model is served under.
    pub model_name: &'a str,
    /// The version that answered.
    pub model_version: &'a str,
    /// The request's id, echoed.
    pub id: Option<&'a str>,
    /// Extra response parameters (digest, …).
    pub parameters: &'a [(&'a str, &'a str)],
    /// The outputs to send.
    pub outputs: &'a [Tensor],
    /// Which of them go as binary data.
    pub encoding: &'a OutputEncoding,
}

impl InferResponseBody<'_> {
    /// The response body, and the length of its JSON object when binary
    /// data follows it (the `Inference-Header-Content-Length` header).
    pub fn to_bytes(&self) -> Result<(Vec<u8>, Option<usize>), serde_json::Error> {
        let binary: Vec<&Tensor> = self
            .outputs
            .iter()
            .filter(|t| self.encoding.is_binary(&t.name))
            .collect();
        if binary.is_empty() {
            return Ok((serde_json::to_vec(self)?, None));
        }
        // A BYTES element's length goes out as 4 bytes.
        if binary.iter().any(|t| {
            matches!(&t.data, TensorData::Bytes(v) if v.iter().any(|e| u32::try_from(e.len()).is_err()))
        }) {
            return Err(serde::ser::Error::custom(
                "a BYTES element of 4 GiB or more cannot be sent as binary data",
            ));
        }
        let size: usize = binary.iter().map(|t| binary_len(&t.data)).sum();
        let mut body = Vec::with_capacity(256 + size);
        serde_json::to_writer(&mut body, self)?;
        let json_len = body.len();
        for tensor in binary {
            encode_binary(&tensor.data, &mut body);
        }
        Ok((body, Some(json_len)))
    }
}

impl Serialize for InferResponseBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model_name", self.model_name)?;
        map.serialize_entry("model_version", self.model_version)?;
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        if !self.parameters.is_empty() {
            map.serialize_entry("parameters", &Params(self.parameters))?;
        }
        map.serialize_entry(
            "outputs",
            &Outputs {
                tensors: self.outputs,
                encoding: Some(self.encoding),
            },
        )?;
        map.end()
    }
}

struct Params<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for Params<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Tensors as a JSON array, each with its `data` unless `encoding` sends
/// it as binary data after the JSON.
struct Outputs<'a> {
    tensors: &'a [Tensor],
    encoding: Option<&'a OutputEncoding>,
}

impl Serialize for Outputs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.tensors.len()))?;
        for tensor in self.tensors {
            let binary = self.encoding.is_some_and(|e| e.is_binary(&tensor.name));
            seq.serialize_element(&OutputTensor { tensor, binary })?;
        }
        seq.end()
    }
}

struct OutputTensor<'a> {
    tensor: &'a Tensor,
    binary: bool,
}

/// `"parameters": {"binary_data_size": n}` of a binary output.
struct BinarySize(usize);

impl Serialize for BinarySize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(BINARY_DATA_SIZE, &self.0)?;
        map.end()
    }
}

impl Serialize for OutputTensor<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("name", &t.name)?;
        map.serialize_entry("datatype", t.data.datatype().as_str())?;
        map.serialize_entry("shape", &t.shape)?;
        if self.binary {
            map.serialize_entry("parameters", &BinarySize(binary_len(&t.data)))?;
            return map.end();
        }
        match &t.data {
            TensorData::Bool(v) => map.serialize_entry("data", v)?,
            TensorData::Uint8(v) => map.serialize_entry("data", v)?,
            TensorData::Uint16(v) => map.serialize_entry("data", v)?,
            TensorData::Uint32(v) => map.serialize_entry("data", v)?,
            TensorData::Uint64(v) => map.serialize_entry("data", v)?,
            TensorData::Int8(v) => map.serialize_entry("data", v)?,
            TensorData::Int16(v) => map.serialize_entry("data", v)?,
            TensorData::Int32(v) => map.serialize_entry("data", v)?,
            TensorData::Int64(v) => map.serialize_entry("data", v)?,
            TensorData::Fp16(v) => map.serialize_entry("data", &HalfList(v))?,
            TensorData::Fp32(v) => map.serialize_entry("data", v)?,
            TensorData::Fp64(v) => map.serialize_entry("data", v)?,
            TensorData::Bytes(v) => map.serialize_entry("data", &BytesList(v))?,
        }
        map.end()
    }
}

struct HalfList<'a>(&'a [u16]);

impl Serialize for HalfList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|b| half::f16::from_bits(*b).to_f32()))
    }
}

struct BytesList<'a>(&'a [Vec<u8>]);

impl Serialize for BytesList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // BYTES elements go out as JSON strings; bytes that are not UTF-8
        // are replaced (U+FFFD), as JSON cannot carry them.
        serializer.collect_seq(self.0.iter().map(|b| String::from_utf8_lossy(b)))
    }
}

/// A request as a WASI preview 1 command reads it on stdin: the Open
/// Inference Protocol request JSON, with flat `data`.
pub struct CommandRequest<'a>(pub &'a InferRequest);

impl Serialize for CommandRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let request = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(id) = &request.id {
            map.serialize_entry("id", id)?;
        }
        if !request.parameters.is_empty() {
            map.serialize_entry("parameters", &RequestParams(&request.parameters))?;
        }
        map.serialize_entry(
            "inputs",
            &Outputs {
                tensors: &request.inputs,
                encoding: None,
            },
        )?;
        if !request.outputs.is_empty() {
            let names: Vec<_> = request
                .outputs
                .iter()
                .map(|name| serde_json::json!({ "name": name }))
                .collect();
            map.serialize_entry("outputs", &names)?;
        }
        map.end()
    }
}

struct RequestParams<'a>(&'a [(String, ParameterValue)]);

impl Serialize for RequestParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match value {
                ParameterValue::Bool(b) => map.serialize_entry(key, b)?,
                ParameterValue::Int(i) => map.serialize_entry(key, i)?,
                ParameterValue::Double(d) => map.serialize_entry(key, d)?,
                ParameterValue::Text(t) => map.serialize_entry(key, t)?,
            }
        }
        map.end()
    }
}

#[derive(Deserialize)]
struct RawCommandOutput<'a> {
    #[serde(default, borrow)]
    outputs: Option<Vec<RawInput<'a>>>,
    #[serde(default)]
    error: Option<String>,
}

/// Parses what a WASI preview 1 command wrote on stdout: an Open Inference
/// Protocol response (`{"outputs": [...]}`; other fields are ignored, the
/// host fills them in), or `{"error": "..."}` for a request the model
/// refuses (the inner `Err`). The outer `Err` says why the output is not
/// a response at all. The outputs still go through [`check_response`].
pub fn parse_command_output(stdout: &[u8]) -> Result<Result<Vec<Tensor>, String>, String> {
    let raw: RawCommandOutput<'_> =
        serde_json::from_slice(stdout).map_err(|e| format!("not a JSON response: {e}"))?;
    if let Some(message) = raw.error {
        return Ok(Err(message));
    }
    let raw_outputs = raw
        .outputs
        .ok_or_else(|| "the response has neither `outputs` nor `error`".to_owned())?;
    let mut outputs = Vec::with_capacity(raw_outputs.len());
    for output in raw_outputs {
        let datatype = Datatype::parse(&output.datatype).ok_or_else(|| {
            format!(
                "output {:?}: unknown datatype {:?}",
                output.name, output.datatype
            )
        })?;
        let shape = output
            .shape
            .iter()
            .map(|d| u64::try_from(*d))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| format!("output {:?}: negative dimension", output.name))?;
        if shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .is_none()
        {
            return Err(format!("output {:?}: shape is too large", output.name));
        }
        let raw_data = output
            .data
            .ok_or_else(|| format!("output {:?} has no data", output.name))?;
        let data = parse_data(raw_data, datatype, &shape)
            .map_err(|e| format!("output {:?}: {e}", output.name))?;
        outputs.push(Tensor {
            name: output.name,
            shape,
            data,
        });
    }
    Ok(Ok(outputs))
}

/// Checks a model's response against its metadata, the request and
/// `limits`, and keeps only the requested outputs. Each output must be
/// declared, returned once, of its declared datatype, and hold as many
/// elements as its shape says.
pub fn check_response(
    response: InferResponse,
    metadata: &ModelMetadata,
    requested: &[String],
    limits: &RequestLimits,
) -> Result<Vec<Tensor>, ResponseError> {
    use ResponseError::Invalid;
    let total: u64 = response
        .outputs
        .iter()
        .map(|t| t.data.len() as u64)
        .fold(0, u64::saturating_add);
    if total > limits.max_output_elements {
        return Err(ResponseError::TooLarge(limits.max_output_elements));
    }
    let mut seen = HashSet::new();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        let Some(spec) = metadata.outputs.iter().find(|s| s.name == tensor.name) else {
            return Err(Invalid(format!(
                "the model returned undeclared output {:?}",
                tensor.name
            )));
        };
        if !seen.insert(spec.name.as_str()) {
            return Err(Invalid(format!(
                "the model returned output {:?} more than once",
                tensor.name
            )));
        }
        if tensor.data.datatype() != spec.datatype {
            return Err(Invalid(format!(
                "output {:?} is {}, declared {}",
                tensor.name,
                tensor.data.datatype().as_str(),
                spec.datatype.as_str()
            )));
        }
        let elements = tensor
            .shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d));
        if elements != Some(tensor.data.len() as u64) {
            return Err(Invalid(format!(
                "output {:?} has shape {:?} but {} elements",
                tensor.name,
                tensor.shape,
                tensor.data.len()
            )));
        }
        if requested.is_empty() || requested.contains(&tensor.name) {
            outputs.push(tensor);
        }
    }
    if let Some(missing) = requested
        .iter()
        .find(|name| !outputs.iter().any(|t| &t.name == *name))
    {
        return Err(Invalid(format!(
            "the model did not return requested output {missing:?}"
        )));
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            version: "1".into(),
            platform: "test".into(),
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: Datatype::Fp32,
                shape: vec![-1, 3],
            }],
            outputs: vec![TensorSpec {
                name: "out".into(),
                datatype: Datatype::Fp32,
                shape: vec![-1],
            }],
        }
    }

    /// Parses a JSON-only request against `meta`.
    fn parse_json(
        body: &str,
        meta: &ModelMetadata,
        limits: &RequestLimits,
    ) -> Result<InferRequest, BadRequest> {
        parse_infer(body.as_bytes(), None, meta, limits).map(|parsed| parsed.request)
    }

    fn parse(body: &str) -> Result<InferRequest, BadRequest> {
        parse_json(body, &metadata(), &RequestLimits::default())
    }

    fn fp32(req: &InferRequest) -> &[f32] {
        match &req.inputs[0].data {
            TensorData::Fp32(v) => v,
            other => panic!("unexpected {:?}", other.datatype()),
        }
    }

    #[test]
    fn flat_and_nested_data_parse_the_same() {
        let flat = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#).unwrap();
        let nested = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}]}"#).unwrap();
        assert_eq!(fp32(&flat), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        assert_eq!(fp32(&flat), fp32(&nested));
        assert_eq!(flat.inputs[0].shape, vec![2, 3]);
    }

    #[test]
    fn nesting_must_follow_the_shape() {
        let err = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2],[3,4],[5,6]]}]}"#).unwrap_err();
        assert!(err.0.contains("nested data has"), "{err}");
        let err = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,[2,3],4,5,6]}]}"#).unwrap_err();
        assert!(err.0.contains("mixes nesting"), "{err}");
        let err = parse(
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[[[1,2,3]]]}]}"#,
        )
        .unwrap_err();
        assert!(err.0.contains("deeper"), "{err}");
    }

    #[test]
    fn checks_against_metadata() {
        let cases = [
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
                "does not match the model's FP32",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FLOAT","data":[1,2,3]}]}"#,
                "unknown datatype",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
                "does not match the model's",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "dimensions",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "needs 6 elements but data has 3",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[-1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "negative dimension",
            ),
            (
                r#"{"inputs":[{"name":"other","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "unexpected input",
            ),
            (r#"{"inputs":[]}"#, "missing input"),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,"x",3]}]}"#,
                "not a number",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,1e300]}]}"#,
                "range of FP32",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":5}]}"#,
                "must be an array",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"nope"}]}"#,
                "unknown output",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"parameters":{"a":[1]}}"#,
                "parameter \"a\"",
            ),
            (r#"{"inputs": [}"#, "malformed"),
        ];
        for (body, expected) in cases {
            let err = parse(body).expect_err(body);
            assert!(
                err.0.contains(expected),
                "{body}: got {err}, wanted {expected:?}"
            );
        }
    }

    #[test]
    fn integer_types_are_range_checked() {
        let mut meta = metadata();
        meta.inputs[0].datatype = Datatype::Uint8;
        let ok =
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"UINT8","data":[0,255,7]}]}"#;
        let req = parse_json(ok, &meta, &RequestLimits::default()).unwrap();
        assert!(matches!(&req.inputs[0].data, TensorData::Uint8(v) if v == &[0, 255, 7]));
        for bad in ["[0,256,7]", "[0,-1,7]", "[0,1.5,7]", "[0,true,7]"] {
            let body = format!(
                r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"UINT8","data":{bad}}}]}}"#
            );
            assert!(
                parse_json(&body, &meta, &RequestLimits::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn element_limit_is_enforced() {
        let limits = RequestLimits {
            max_elements: 5,
            ..RequestLimits::default()
        };
        let body =
            r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#;
        let err = parse_json(body, &metadata(), &limits).unwrap_err();
        assert!(err.0.contains("more than 5"), "{err}");
    }

    fn output(name: &str, data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.into(),
            shape: vec![data.len() as u64],
            data: TensorData::Fp32(data),
        }
    }

    #[test]
    fn responses_are_checked() {
        let limits = RequestLimits::default();
        let check = |outputs: Vec<Tensor>, requested: &[String]| {
            check_response(InferResponse { outputs }, &metadata(), requested, &limits)
        };
        assert_eq!(check(vec![output("out", vec![1.0])], &[]).unwrap().len(), 1);
        let invalid = |result: Result<Vec<Tensor>, ResponseError>| match result {
            Err(ResponseError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(invalid(check(vec![output("nope", vec![1.0])], &[])).contains("undeclared"));
        assert!(
            invalid(check(
                vec![output("out", vec![1.0]), output("out", vec![2.0])],
                &[]
            ))
            .contains("more than once")
        );
        let mut wrong_shape = output("out", vec![1.0, 2.0]);
        wrong_shape.shape = vec![3];
        assert!(invalid(check(vec![wrong_shape], &[])).contains("but 2 elements"));
        assert!(invalid(check(vec![], &["out".to_owned()])).contains("did not return"));
    }

    #[test]
    fn output_element_limit_is_enforced() {
        let limits = RequestLimits {
            max_output_elements: 3,
            ..RequestLimits::default()
        };
        let within = InferResponse {
            outputs: vec![output("out", vec![0.0; 3])],
        };
        assert!(check_response(within, &metadata(), &[], &limits).is_ok());
        let over = InferResponse {
            outputs: vec![output("out", vec![0.0; 4])],
        };
        assert!(matches!(
            check_response(over, &metadata(), &[], &limits),
            Err(ResponseError::TooLarge(3))
        ));
    }

    #[test]
    fn response_serialises_per_datatype() {
        let outputs = vec![
            Tensor {
                name: "a".into(),
                shape: vec![2],
                data: TensorData::Fp16(vec![
                    half::f16::from_f32(0.5).to_bits(),
                    half::f16::from_f32(-2.0).to_bits(),
                ]),
            },
            Tensor {
                name: "b".into(),
                shape: vec![1],
                data: TensorData::Bytes(vec![b"hi".to_vec()]),
            },
            Tensor {
                name: "c".into(),
                shape: vec![2],
                data: TensorData::Bool(vec![true, false]),
            },
        ];
        let body = InferResponseBody {
            model_name: "m",
            model_version: "1",
            id: Some("x"),
            parameters: &[],
            outputs: &outputs,
            encoding: &OutputEncoding::default(),
        };
        let json: serde_json::Value = serde_json::to_value(&body).unwrap();
        assert_eq!(json["id"], "x");
        assert_eq!(json["outputs"][0]["data"], serde_json::json!([0.5, -2.0]));
        assert_eq!(json["outputs"][0]["datatype"], "FP16");
        assert_eq!(json["outputs"][1]["data"], serde_json::json!(["hi"]));
        assert_eq!(json["outputs"][2]["data"], serde_json::json!([true, false]));
    }

    /// One tensor of every datatype, three elements each.
    fn every_datatype() -> Vec<TensorData> {
        vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::Uint8(vec![0, 7, 255]),
            TensorData::Uint16(vec![0, 7, u16::MAX]),
            TensorData::Uint32(vec![0, 7, u32::MAX]),
            TensorData::Uint64(vec![0, 7, u64::MAX]),
            TensorData::Int8(vec![i8::MIN, -1, i8::MAX]),
            TensorData::Int16(vec![i16::MIN, -1, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, -1, i32::MAX]),
            TensorData::Int64(vec![i64::MIN, -1, i64::MAX]),
            TensorData::Fp16(vec![0x3c00, 0xc000, 0x7bff]),
            // Binary data carries what JSON numbers cannot: NaN, infinities.
            TensorData::Fp32(vec![f32::NAN, -0.0, f32::MAX]),
            TensorData::Fp64(vec![f64::NEG_INFINITY, -1e300, f64::MIN_POSITIVE]),
            TensorData::Bytes(vec![b"".to_vec(), b"hi".to_vec(), vec![0xff, 0, 1]]),
        ]
    }

    #[test]
    fn binary_data_round_trips_every_datatype() {
        for data in every_datatype() {
            let mut bytes = Vec::new();
            encode_binary(&data, &mut bytes);
            assert_eq!(bytes.len(), binary_len(&data), "{:?}", data.datatype());
            let back = decode_binary(&bytes, data.datatype(), 3).unwrap();
            assert_eq!(format!("{back:?}"), format!("{data:?}"));
        }
        // The layout is the extension's: little-endian, BOOL as 0/1 bytes,
        // BYTES with a 4-byte little-endian length before each element.
        let mut bytes = Vec::new();
        encode_binary(&TensorData::Uint16(vec![0x0102]), &mut bytes);
        encode_binary(&TensorData::Bool(vec![true, false]), &mut bytes);
        encode_binary(&TensorData::Bytes(vec![b"ab".to_vec()]), &mut bytes);
        assert_eq!(bytes, [0x02, 0x01, 1, 0, 2, 0, 0, 0, b'a', b'b']);
    }

    #[test]
    fn binary_data_of_the_wrong_size_is_refused() {
        let four = [0u8; 4];
        let err = decode_binary(&four, Datatype::Fp32, 2).unwrap_err();
        assert!(err.contains("needs 2 elements of 4 bytes"), "{err}");
        assert!(decode_binary(&four[..3], Datatype::Fp32, 1).is_err());
        assert!(
            decode_binary(&[2], Datatype::Bool, 1)
                .unwrap_err()
                .contains("neither 0 nor 1")
        );
        // BYTES: a length running past the end, a length cut short, bytes left over.
        assert!(decode_binary(&[5, 0, 0, 0, b'a'], Datatype::Bytes, 1).is_err());
        assert!(decode_binary(&[1, 0, 0, 0, b'a', 0, 0], Datatype::Bytes, 2).is_err());
        assert!(decode_binary(&[1, 0, 0, 0, b'a', 9], Datatype::Bytes, 1).is_err());
        assert!(matches!(
            decode_binary(&[0, 0, 0, 0], Datatype::Bytes, 1).unwrap(),
            TensorData::Bytes(v) if v == [Vec::<u8>::new()]
        ));
    }

    /// `json` then `binary`, with the JSON's length as the header says.
    fn with_binary(json: &str, binary: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        (body, Some(json.len()))
    }

    #[test]
    fn binary_inputs_follow_the_json_in_order() {
        let mut meta = metadata();
        meta.inputs.push(TensorSpec {
            name: "flags".into(),
            datatype: Datatype::Bool,
            shape: vec![-1],
        });
        meta.inputs.push(TensorSpec {
            name: "words".into(),
            datatype: Datatype::Bytes,
            shape: vec![-1],
        });
        let mut binary = Vec::new();
        encode_binary(&TensorData::Fp32(vec![1.0, 2.0, 3.0]), &mut binary);
        encode_binary(
            &TensorData::Bytes(vec![b"x".to_vec(), b"yz".to_vec()]),
            &mut binary,
        );
        let json = r#"{"inputs":[
            {"name":"input","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}},
            {"name":"flags","shape":[2],"datatype":"BOOL","data":[true,false]},
            {"name":"words","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],
            "parameters":{"binary_data_output":true,"tag":"t"},
            "outputs":[{"name":"out","parameters":{"binary_data":false}}]}"#;
        let (body, len) = with_binary(json, &binary);
        let parsed = parse_infer(&body, len, &meta, &RequestLimits::default()).unwrap();
        let request = &parsed.request;
        assert_eq!(fp32(request), &[1.0, 2.0, 3.0]);
        assert!(matches!(&request.inputs[1].data, TensorData::Bool(v) if v == &[true, false]));
        assert!(matches!(
            &request.inputs[2].data,
            TensorData::Bytes(v) if v == &[b"x".to_vec(), b"yz".to_vec()]
        ));
        // The extension's own parameter is not the model's.
        assert_eq!(request.parameters.len(), 1);
        assert!(matches!(
            &request.parameters[0],
            (key, ParameterValue::Text(t)) if key == "tag" && t == "t"
        ));
        // `binary_data` on the output wins over `binary_data_output`.
        assert!(!parsed.encoding.is_binary("out"));
        assert!(parsed.encoding.is_binary("other"));
    }

    #[test]
    fn malformed_binary_requests_are_refused_with_a_reason() {
        let meta = metadata();
        let input = |params: &str| {
            format!(r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"FP32"{params}}}]}}"#)
        };
        let sized = input(r#","parameters":{"binary_data_size":12}"#);
        let twelve = [0u8; 12];
        let cases: Vec<(Vec<u8>, Option<usize>, &str)> = vec![
            // No header: the body is all JSON, the binary data cannot be found.
            (
                sized.clone().into_bytes(),
                None,
                "no Inference-Header-Content-Length",
            ),
            // The header says more than the body has.
            (sized.clone().into_bytes(), Some(sized.len() + 1), "only"),
            // Fewer bytes than the input claims.
            (
                with_binary(&sized, &twelve[..8]).0,
                Some(sized.len()),
                "only 8 bytes",
            ),
            // Bytes no input claims.
            (
                with_binary(&sized, &[0; 13]).0,
                Some(sized.len()),
                "belong to no input",
            ),
            // The size disagrees with the shape.
            {
                let j = input(r#","parameters":{"binary_data_size":8}"#);
                (
                    with_binary(&j, &twelve[..8]).0,
                    Some(j.len()),
                    "needs 3 elements",
                )
            },
            {
                let j = input(r#","parameters":{"binary_data_size":-4}"#);
                (
                    j.clone().into_bytes(),
                    Some(j.len()),
                    "non-negative integer",
                )
            },
            {
                let j = input(r#","data":[1,2,3],"parameters":{"binary_data_size":12}"#);
                (with_binary(&j, &twelve).0, Some(j.len()), "both data and")
            },
            (input("").into_bytes(), None, "has no data"),
            {
                let j = r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"parameters":{"binary_data_output":"yes"}}"#;
                (j.as_bytes().to_vec(), None, "must be a boolean")
            },
            {
                let j = r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"out","parameters":{"binary_data":1}}]}"#;
                (j.as_bytes().to_vec(), None, "must be a boolean")
            },
        ];
        for (body, len, want) in cases {
            let err = parse_infer(&body, len, &meta, &RequestLimits::default()).unwrap_err();
            assert!(
                err.0.contains(want),
                "{:?}: {err} (wanted {want:?})",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn binary_outputs_follow_the_json_with_their_sizes() {
        let outputs = vec![
            Tensor {
                name: "p".into(),
                shape: vec![2],
                data: TensorData::Fp32(vec![0.25, 0.75]),
            },
            Tensor {
                name: "label".into(),
                shape: vec![1],
                data: TensorData::Bytes(vec![b"en".to_vec()]),
            },
        ];
        let encoding = OutputEncoding {
            all_binary: true,
            per_output: vec![("label".into(), false)],
        };
        let body = InferResponseBody {
            model_name: "m",
            model_version: "1",
            id: None,
            parameters: &[],
            outputs: &outputs,
            encoding: &encoding,
        };
        let (bytes, json_len) = body.to_bytes().unwrap();
        let json_len = json_len.expect("a binary output means a JSON length");
        let json: serde_json::Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!(["en"]));
        let tail = &bytes[json_len..];
        assert_eq!(tail.len(), 8);
        assert!(matches!(
            decode_binary(tail, Datatype::Fp32, 2).unwrap(),
            TensorData::Fp32(v) if v == [0.25, 0.75]
        ));

        // Nothing binary: the body is the JSON alone, and no length.
        let plain = InferResponseBody {
            encoding: &OutputEncoding::default(),
            ..body
        };
        let (bytes, json_len) = plain.to_bytes().unwrap();
        assert_eq!(json_len, None);
        assert_eq!(bytes, serde_json::to_vec(&plain).unwrap());
    }
}
