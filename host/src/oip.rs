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
//!
//! # Bounds
//!
//! Whatever a caller (or a WASI preview 1 command, whose stdout goes
//! through the same parser) sends is bounded as it is parsed, before it is
//! allocated:
//! - every list is counted as it is deserialized, never collected first:
//!   inputs and requested outputs at most as many as the model declares,
//!   shapes at most [`MAX_RANK`] dimensions, `parameters` objects at most
//!   [`MAX_PARAMETERS`] entries, whose values stay raw JSON until a scalar
//!   is converted (an array or object value is refused unread);
//! - each tensor's memory is charged to the request's
//!   [`Reservation`](crate::budget::Reservation) before its vector is
//!   allocated, with exactly the capacity its shape needs (and never more
//!   than its data could hold), and parsing stops at the first element past
//!   the shape; BYTES strings are charged as they are copied, a step of
//!   [`CHARGE_STEP`] bytes at a time;
//! - messages quote at most [`MAX_QUOTED`] bytes of a name and
//!   [`MAX_SHOWN_DIMS`] dimensions of a shape, and [`cut_message`] bounds
//!   whole messages.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::bindings::{
    Datatype, InferRequest, InferResponse, ModelMetadata, ParameterValue, Tensor, TensorData,
    TensorSpec,
};
use crate::budget::{Exhausted, MemoryBudget, Reservation};

/// A request the caller got wrong; the message goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

macro_rules! bad {
    ($($arg:tt)*) => { BadRequest(format!($($arg)*)) };
}

/// Why [`parse_infer`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The request is malformed or does not fit the model (a 400).
    #[error(transparent)]
    Bad(#[from] BadRequest),
    /// The memory budget cannot hold the parsed request now (a 503: retry
    /// later).
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// Most dimensions a tensor's shape may have (in a request, or in a WASI
/// command's response). ONNX and the OIP need far fewer; the bound keeps a
/// shape of a million dimensions from being parsed or echoed.
pub const MAX_RANK: usize = 64;

/// Most entries in one `parameters` object (of the request, an input or an
/// output).
pub const MAX_PARAMETERS: usize = 64;

/// Most bytes of a message that goes to a caller (see [`cut_message`]).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Most bytes of a name (of an input, an output, a parameter, a datatype)
/// quoted in a message.
pub const MAX_QUOTED: usize = 64;

/// Most dimensions of a shape shown in a message.
pub const MAX_SHOWN_DIMS: usize = 16;

/// Smallest step in which the parser grows a reservation, so that many small
/// allocations (BYTES elements) cost one atomic operation per step rather
/// than one each. What a request does not use is given back when it has
/// been parsed.
pub const CHARGE_STEP: usize = 64 << 10;

/// Charged per non-empty BYTES element on top of its bytes: the most a
/// heap block exceeds its request by (glibc's smallest block is 32 bytes,
/// and blocks are rounded to 16 with an 8-byte header).
const ALLOC_OVERHEAD: usize = 32;

/// `text`, cut to at most `max` bytes at a char boundary, with a marker
/// saying how many bytes were cut.
pub fn cut_message(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let end = text.floor_char_boundary(max);
    Cow::Owned(format!(
        "{}… ({} bytes cut)",
        &text[..end],
        text.len() - end
    ))
}

/// Cuts `text` in place as [`cut_message`] does, and frees the memory the
/// cut part held: for a message lifted from a guest, before it is copied
/// or logged anywhere.
pub fn cut_string(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let end = text.floor_char_boundary(max);
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} bytes cut)"));
    text.shrink_to_fit();
}

/// A name in a message: quoted, at most [`MAX_QUOTED`] bytes of it.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= MAX_QUOTED {
            write!(f, "{:?}", self.0)
        } else {
            let end = self.0.floor_char_boundary(MAX_QUOTED);
            write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len())
        }
    }
}

/// A shape in a message: at most [`MAX_SHOWN_DIMS`] dimensions of it.
struct Dims<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Dims<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().take(MAX_SHOWN_DIMS).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > MAX_SHOWN_DIMS {
            write!(f, ", … ({} dimensions)", self.0.len())?;
        }
        f.write_str("]")
    }
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
    /// A command's response would take more host memory than its sandbox's
    /// [`Limits::output_bytes`](crate::Limits::output_bytes) once parsed.
    #[error("the response needs more than {0} bytes of host memory")]
    TooManyBytes(usize),
}

/// Deserializes a JSON array into a `Vec`, failing as soon as it holds more
/// than `max` elements rather than after collecting them all. Where
/// `nullable`, `null` is an empty list.
struct BoundedVec<T> {
    max: usize,
    what: &'static str,
    nullable: bool,
    element: PhantomData<fn() -> T>,
}

impl<T> BoundedVec<T> {
    fn new(max: usize, what: &'static str) -> Self {
        Self {
            max,
            what,
            nullable: false,
            element: PhantomData,
        }
    }

    fn nullable(max: usize, what: &'static str) -> Self {
        Self {
            nullable: true,
            ..Self::new(max, what)
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        if self.nullable {
            deserializer.deserialize_option(self)
        } else {
            deserializer.deserialize_seq(self)
        }
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {} {}", self.max, self.what)
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                return Err(de::Error::custom(format_args!(
                    "more {} than the {} allowed",
                    self.what, self.max
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

fn bounded_shape<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    BoundedVec::new(MAX_RANK, "dimensions").deserialize(deserializer)
}

/// A JSON string, borrowed from the input unless it has escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// A `parameters` object: at most [`MAX_PARAMETERS`] entries, each key
/// once, each value kept as raw JSON (an array or object value is skipped
/// over, never built).
#[derive(Default)]
struct RawParams<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawParams<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawParams<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ParamsVisitor<'a> {
            type Value = RawParams<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object of at most {MAX_PARAMETERS} parameters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawParams<'a>, A::Error> {
                let mut entries: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::new();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    if entries.len() == MAX_PARAMETERS {
                        return Err(de::Error::custom(format_args!(
                            "more parameters than the {MAX_PARAMETERS} allowed"
                        )));
                    }
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!(
                            "parameter {} appears twice",
                            Quoted(&key)
                        )));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawParams(entries))
            }
        }
        deserializer.deserialize_map(ParamsVisitor(PhantomData))
    }
}

/// A parameter's value as the guest gets it: booleans, numbers and strings
/// only. An array or an object is refused at its first byte.
fn scalar(raw: &RawValue) -> Option<ParameterValue> {
    struct ScalarVisitor;
    impl Visitor<'_> for ScalarVisitor {
        type Value = ParameterValue;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean, a number or a string")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParameterValue, E> {
            Ok(ParameterValue::Bool(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParameterValue, E> {
            Ok(ParameterValue::Int(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParameterValue, E> {
            Ok(i64::try_from(v).map_or(ParameterValue::Double(v as f64), ParameterValue::Int))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParameterValue, E> {
            Ok(ParameterValue::Double(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<ParameterValue, E> {
            Ok(ParameterValue::Text(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<ParameterValue, E> {
            Ok(ParameterValue::Text(v))
        }
    }
    serde_json::Deserializer::from_str(raw.get())
        .deserialize_any(ScalarVisitor)
        .ok()
}

/// The request body's JSON, as parsed before tensor data.
struct RawRequest<'a> {
    id: Option<String>,
    parameters: Option<RawParams<'a>>,
    inputs: Vec<RawInput<'a>>,
    outputs: Vec<RawOutput<'a>>,
}

/// Parses a [`RawRequest`] with at most `max_inputs` inputs and
/// `max_outputs` requested outputs.
struct RequestSeed {
    max_inputs: usize,
    max_outputs: usize,
}

/// Sets a field of an object once; a second time is an error, as derived
/// deserializers have it.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RawRequest<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RawRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "id" => set_once(&mut id, "id", map.next_value::<Option<String>>()?)?,
                "parameters" => set_once(
                    &mut parameters,
                    "parameters",
                    map.next_value::<Option<RawParams<'de>>>()?,
                )?,
                "inputs" => set_once(
                    &mut inputs,
                    "inputs",
                    map.next_value_seed(BoundedVec::new(self.max_inputs, "inputs"))?,
                )?,
                "outputs" => set_once(
                    &mut outputs,
                    "outputs",
                    map.next_value_seed(BoundedVec::nullable(self.max_outputs, "outputs"))?,
                )?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawRequest {
            id: id.flatten(),
            parameters: parameters.flatten(),
            inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
            outputs: outputs.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
struct RawInput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<i64>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    /// Absent when the tensor comes as binary data after the JSON.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parameters: Option<RawParams<'a>>,
}

#[derive(Deserialize)]
struct RawOutput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    parameters: Option<RawParams<'a>>,
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

/// A serde_json error as a caller sees it: cut, as it may quote the input.
fn json_error(error: &serde_json::Error) -> String {
    cut_message(&error.to_string(), MAX_MESSAGE_BYTES / 2).into_owned()
}

/// Parses an inference request body and checks it against `metadata`,
/// charging what it allocates to `reservation` first.
///
/// `json_len` is the `Inference-Header-Content-Length` header: the body's
/// first `json_len` bytes are the JSON object and the rest is the binary
/// data of the inputs that have `binary_data_size`, in their order. Without
/// it the whole body is JSON.
///
/// Every declared input must be present exactly once, with the declared
/// datatype and a shape that matches the declared one (-1 matches any size),
/// and its data must hold exactly as many elements as the shape says.
///
/// What is charged: the JSON text outside `data` arrays (a bound on the
/// strings the request keeps: its id, names and parameters), then before
/// each input's vector is allocated its exact size (`elements ×` the
/// element's size), and for BYTES each non-empty element's bytes plus a
/// heap block's overhead (32 bytes) as it is copied. The rest of the
/// structural parse is bounded, not charged: at most as many inputs and
/// outputs as the model declares, [`MAX_RANK`] dimensions and
/// [`MAX_PARAMETERS`] parameters each (a few KiB per input). The charge
/// stays held (it is what the request holds) until `reservation` is
/// dropped or shrunk.
///
/// [`ParseError::Exhausted`] when the budget cannot cover the request now;
/// [`ParseError::Bad`] for everything the caller got wrong.
pub fn parse_infer(
    body: &[u8],
    json_len: Option<usize>,
    metadata: &ModelMetadata,
    limits: &RequestLimits,
    reservation: &mut Reservation,
) -> Result<ParsedInfer, ParseError> {
    let (json, mut binary) = match json_len {
        Some(len) if len > body.len() => {
            return Err(bad!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )
            .into());
        }
        Some(len) => body.split_at(len),
        None => (body, &[][..]),
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw = RequestSeed {
        max_inputs: metadata.inputs.len(),
        max_outputs: metadata.outputs.len(),
    }
    .deserialize(&mut de)
    .and_then(|raw| de.end().map(|()| raw))
    .map_err(|e| bad!("malformed inference request: {}", json_error(&e)))?;

    let mut meter = Meter::new(reservation);
    let data_text: usize = raw
        .inputs
        .iter()
        .filter_map(|input| input.data)
        .map(|data| data.get().len())
        .sum();
    meter.charge(json.len().saturating_sub(data_text))?;

    let mut all_binary = false;
    let mut parameters = Vec::new();
    if let Some(RawParams(entries)) = raw.parameters {
        parameters.reserve_exact(entries.len());
        for (key, value) in entries {
            let Some(value) = scalar(value) else {
                return Err(bad!(
                    "parameter {}: only booleans, numbers and strings are supported",
                    Quoted(&key)
                )
                .into());
            };
            if key == BINARY_DATA_OUTPUT {
                let ParameterValue::Bool(b) = value else {
                    return Err(bad!("parameter {BINARY_DATA_OUTPUT:?} must be a boolean").into());
                };
                all_binary = b;
                continue;
            }
            parameters.push((key.into_owned(), value));
        }
    }

    let mut seen = HashSet::new();
    let mut total_elements: u64 = 0;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for input in &raw.inputs {
        let name = Quoted(&input.name);
        if !seen.insert(input.name.as_ref()) {
            return Err(bad!("input {name} appears more than once").into());
        }
        let spec = metadata
            .inputs
            .iter()
            .find(|spec| spec.name == input.name)
            .ok_or_else(|| {
                bad!(
                    "unexpected input {name}; the model takes {}",
                    names(&metadata.inputs)
                )
            })?;
        let datatype = Datatype::parse(&input.datatype)
            .ok_or_else(|| bad!("input {name}: unknown datatype {}", Quoted(&input.datatype)))?;
        if datatype != spec.datatype {
            return Err(bad!(
                "input {name}: datatype {} does not match the model's {}",
                datatype.as_str(),
                spec.datatype.as_str()
            )
            .into());
        }
        let shape = check_shape(&input.name, &input.shape, spec)?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| bad!("input {name}: shape is too large"))?;
        total_elements = total_elements.saturating_add(elements);
        if total_elements > limits.max_elements {
            return Err(bad!(
                "the request has more than {} tensor elements",
                limits.max_elements
            )
            .into());
        }
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get(BINARY_DATA_SIZE))
        {
            None => None,
            Some(size) => Some(serde_json::from_str::<u64>(size.get()).map_err(|_| {
                bad!("input {name}: {BINARY_DATA_SIZE} must be a non-negative integer")
            })?),
        };
        let data = match (input.data, binary_size) {
            (Some(data), None) => parse_data(data, datatype, &shape, elements, &mut meter),
            (None, Some(size)) => {
                if json_len.is_none() {
                    return Err(bad!(
                        "input {name} has {BINARY_DATA_SIZE} but the request has no \
                         Inference-Header-Content-Length header to say where the JSON ends"
                    )
                    .into());
                }
                let Some(bytes) = usize::try_from(size)
                    .ok()
                    .and_then(|size| binary.split_off(..size))
                else {
                    return Err(bad!(
                        "input {name}: {BINARY_DATA_SIZE} is {size} but only {} bytes of \
                         binary data are left",
                        binary.len()
                    )
                    .into());
                };
                decode_binary(bytes, datatype, elements, &mut meter)
            }
            (Some(_), Some(_)) => {
                return Err(bad!("input {name} has both data and {BINARY_DATA_SIZE}").into());
            }
            (None, None) => {
                return Err(bad!("input {name} has no data (nor {BINARY_DATA_SIZE})").into());
            }
        }
        .map_err(|e| match e {
            DataError::Bad(e) => ParseError::Bad(bad!("input {name}: {e}")),
            DataError::Exhausted(e) => ParseError::Exhausted(e),
        })?;
        if data.len() as u64 != elements {
            return Err(bad!(
                "input {name}: shape {} needs {elements} elements but data has {}",
                Dims(&input.shape),
                data.len()
            )
            .into());
        }
        inputs.push(Tensor {
            name: input.name.clone().into_owned(),
            shape,
            data,
        });
    }
    if let Some(missing) = metadata
        .inputs
        .iter()
        .find(|spec| !seen.contains(spec.name.as_str()))
    {
        return Err(bad!("missing input {}", Quoted(&missing.name)).into());
    }

    if !binary.is_empty() {
        return Err(bad!(
            "{} bytes of binary data after the JSON belong to no input",
            binary.len()
        )
        .into());
    }

    let mut outputs = Vec::with_capacity(raw.outputs.len());
    let mut per_output = Vec::new();
    let mut seen = HashSet::new();
    for output in &raw.outputs {
        let name = Quoted(&output.name);
        if !metadata.outputs.iter().any(|spec| spec.name == output.name) {
            return Err(bad!(
                "unknown output {name}; the model produces {}",
                names(&metadata.outputs)
            )
            .into());
        }
        if !seen.insert(output.name.as_ref()) {
            return Err(bad!("output {name} is requested twice").into());
        }
        match output.parameters.as_ref().and_then(|p| p.get(BINARY_DATA)) {
            None => {}
            Some(raw) => match serde_json::from_str::<bool>(raw.get()) {
                Ok(b) => per_output.push((output.name.clone().into_owned(), b)),
                Err(_) => {
                    return Err(bad!("output {name}: {BINARY_DATA} must be a boolean").into());
                }
            },
        }
        outputs.push(output.name.clone().into_owned());
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

/// Charges a [`Reservation`] before allocations, growing it by at least
/// [`CHARGE_STEP`] bytes at a time; the credit left over is given back when
/// the meter is dropped.
struct Meter<'r> {
    reservation: &'r mut Reservation,
    credit: usize,
}

impl<'r> Meter<'r> {
    fn new(reservation: &'r mut Reservation) -> Self {
        Self {
            reservation,
            credit: 0,
        }
    }

    /// Takes `bytes` from the credit, growing the reservation first when
    /// the credit is short.
    fn charge(&mut self, bytes: usize) -> Result<(), Exhausted> {
        if bytes > self.credit {
            let need = bytes - self.credit;
            let step = need.max(CHARGE_STEP);
            // Near the budget's end, a full step may not fit where the
            // exact need does.
            let grown = match self.reservation.try_grow(step) {
                Ok(()) => step,
                Err(_) => self.reservation.try_grow(need).map(|()| need)?,
            };
            self.credit += grown;
        }
        self.credit -= bytes;
        Ok(())
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        self.reservation.shrink(self.credit);
    }
}

/// Why one tensor's data could not be parsed.
enum DataError {
    /// The data is malformed or does not fit its shape.
    Bad(String),
    /// The budget cannot hold it.
    Exhausted(Exhausted),
}

impl From<String> for DataError {
    fn from(message: String) -> Self {
        Self::Bad(message)
    }
}

impl From<Exhausted> for DataError {
    fn from(e: Exhausted) -> Self {
        Self::Exhausted(e)
    }
}

/// The exact capacity charged for `elements` of `T`.
fn vector_bytes<T>(elements: usize) -> usize {
    elements.saturating_mul(size_of::<T>())
}

/// Decodes one input's binary data: `elements` elements of `datatype`,
/// little-endian, taking exactly all of `bytes`.
fn decode_binary(
    bytes: &[u8],
    datatype: Datatype,
    elements: u64,
    meter: &mut Meter<'_>,
) -> Result<TensorData, DataError> {
    fn fixed<const N: usize, T>(
        bytes: &[u8],
        elements: u64,
        meter: &mut Meter<'_>,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, DataError> {
        let (chunks, rest) = bytes.as_chunks::<N>();
        if chunks.len() as u64 != elements || !rest.is_empty() {
            return Err(DataError::Bad(format!(
                "{BINARY_DATA_SIZE} is {} but the shape needs {elements} elements of {N} \
                 bytes",
                bytes.len()
            )));
        }
        meter.charge(vector_bytes::<T>(chunks.len()))?;
        Ok(chunks.iter().map(|c| from(*c)).collect())
    }
    Ok(match datatype {
        Datatype::Bool => {
            let bytes = fixed::<1, u8>(bytes, elements, meter, |[b]| b)?;
            if let Some(bad) = bytes.iter().find(|b| **b > 1) {
                return Err(DataError::Bad(format!(
                    "BOOL element {bad} is neither 0 nor 1"
                )));
            }
            // Collected in place: a `bool` is a byte.
            TensorData::Bool(bytes.into_iter().map(|b| b == 1).collect())
        }
        Datatype::Uint8 => TensorData::Uint8(fixed(bytes, elements, meter, u8::from_le_bytes)?),
        Datatype::Uint16 => TensorData::Uint16(fixed(bytes, elements, meter, u16::from_le_bytes)?),
        Datatype::Uint32 => TensorData::Uint32(fixed(bytes, elements, meter, u32::from_le_bytes)?),
        Datatype::Uint64 => TensorData::Uint64(fixed(bytes, elements, meter, u64::from_le_bytes)?),
        Datatype::Int8 => TensorData::Int8(fixed(bytes, elements, meter, i8::from_le_bytes)?),
        Datatype::Int16 => TensorData::Int16(fixed(bytes, elements, meter, i16::from_le_bytes)?),
        Datatype::Int32 => TensorData::Int32(fixed(bytes, elements, meter, i32::from_le_bytes)?),
        Datatype::Int64 => TensorData::Int64(fixed(bytes, elements, meter, i64::from_le_bytes)?),
        Datatype::Fp16 => TensorData::Fp16(fixed(bytes, elements, meter, u16::from_le_bytes)?),
        Datatype::Fp32 => TensorData::Fp32(fixed(bytes, elements, meter, f32::from_le_bytes)?),
        Datatype::Fp64 => TensorData::Fp64(fixed(bytes, elements, meter, f64::from_le_bytes)?),
        Datatype::Bytes => {
            // Each element costs at least its 4-byte length, so the body's
            // size bounds this allocation.
            let capacity = elements.min(bytes.len() as u64 / 4) as usize;
            meter.charge(vector_bytes::<Vec<u8>>(capacity))?;
            let mut out = Vec::with_capacity(capacity);
            let mut rest = bytes;
            for i in 0..elements {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(DataError::Bad(format!(
                        "the binary data ends before BYTES element {i} of {elements}"
                    )));
                };
                let len = u32::from_le_bytes(*len) as usize;
                let Some(element) = tail.get(..len) else {
                    return Err(DataError::Bad(format!(
                        "BYTES element {i} says {len} bytes but only {} are left",
                        tail.len()
                    )));
                };
                if len > 0 {
                    meter.charge(len + ALLOC_OVERHEAD)?;
                }
                out.push(element.to_vec());
                rest = &tail[len..];
            }
            if !rest.is_empty() {
                return Err(DataError::Bad(format!(
                    "{} bytes are left after the last of {elements} BYTES elements",
                    rest.len()
                )));
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

/// The names of `specs`, quoted, for a message (at most 16 of them).
fn names(specs: &[TensorSpec]) -> String {
    let mut quoted: Vec<String> = specs
        .iter()
        .take(16)
        .map(|s| Quoted(&s.name).to_string())
        .collect();
    if specs.len() > 16 {
        quoted.push(format!("… ({} in all)", specs.len()));
    }
    quoted.join(", ")
}

fn check_shape(name: &str, shape: &[i64], spec: &TensorSpec) -> Result<Vec<u64>, BadRequest> {
    let name = Quoted(name);
    if shape.len() != spec.shape.len() {
        return Err(bad!(
            "input {name}: shape {} has {} dimensions, the model expects {} ({})",
            Dims(shape),
            shape.len(),
            spec.shape.len(),
            Dims(&spec.shape)
        ));
    }
    let mut dims = Vec::with_capacity(shape.len());
    for (&got, &want) in shape.iter().zip(&spec.shape) {
        if got < 0 {
            return Err(bad!(
                "input {name}: negative dimension in shape {}",
                Dims(shape)
            ));
        }
        if want != -1 && got != want {
            return Err(bad!(
                "input {name}: shape {} does not match the model's {}",
                Dims(shape),
                Dims(&spec.shape)
            ));
        }
        dims.push(got as u64);
    }
    Ok(dims)
}

/// Parses `data` (flat, or nested to exactly the depth of `shape`) into a
/// typed list of at most `elements` elements, charging `meter` before it
/// allocates.
fn parse_data(
    raw: &RawValue,
    datatype: Datatype,
    shape: &[u64],
    elements: u64,
    meter: &mut Meter<'_>,
) -> Result<TensorData, DataError> {
    // Each element takes at least two bytes of JSON (a digit and a comma,
    // or the closing bracket), so `data` holds at most half its length in
    // elements: a shape that claims more than that does not get the
    // capacity it claims. Valid data gets exactly what its shape needs.
    let capacity = elements.min(raw.get().len() as u64 / 2) as usize;
    macro_rules! parse_as {
        ($variant:ident, $ty:ty) => {{
            meter.charge(vector_bytes::<$ty>(capacity))?;
            let mut out: Vec<$ty> = Vec::with_capacity(capacity);
            flatten::<$ty>(raw, shape, elements, &mut out, meter)?;
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
            meter.charge(vector_bytes::<Half>(capacity))?;
            let mut out: Vec<Half> = Vec::with_capacity(capacity);
            flatten::<Half>(raw, shape, elements, &mut out, meter)?;
            // Collected in place: `Half` is a transparent `u16`.
            TensorData::Fp16(out.into_iter().map(|h| h.0).collect())
        }
        Datatype::Fp32 => parse_as!(Fp32, f32),
        Datatype::Fp64 => parse_as!(Fp64, f64),
        Datatype::Bytes => parse_as!(Bytes, Vec<u8>),
    })
}

/// An FP16 element: parsed from a JSON number, stored as binary16 bits.
#[repr(transparent)]
struct Half(u16);

/// One JSON scalar converted to a tensor element type.
trait Element: Sized {
    const EXPECTED: &'static str;
    /// Whether an element owns heap memory (BYTES), charged as it is parsed.
    const HEAP: bool = false;
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
    const HEAP: bool = true;
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

/// Walks a JSON array (flat, or nested to the depth of `shape`) and pushes
/// its leaves into `out`, checking the nesting against `shape` and stopping
/// at the first leaf past `limit`. BYTES elements are charged to `meter`
/// before they are copied.
fn flatten<T: Element>(
    raw: &RawValue,
    shape: &[u64],
    limit: u64,
    out: &mut Vec<T>,
    meter: &mut Meter<'_>,
) -> Result<(), DataError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let mut state = FlattenState {
        shape,
        limit,
        leaf_depth: None,
        meter,
        exhausted: None,
    };
    let result = Level {
        out,
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut de);
    if let Some(exhausted) = state.exhausted {
        return Err(DataError::Exhausted(exhausted));
    }
    result.map_err(|e| {
        // serde_json appends " at line L column C"; the position inside the
        // data array is not useful to a caller, the message is.
        let text = e.to_string();
        DataError::Bad(match text.find(" at line ") {
            Some(i) => text[..i].to_owned(),
            None => text,
        })
    })
}

struct FlattenState<'s, 'm, 'r> {
    shape: &'s [u64],
    /// Most leaves to take: the shape's element count.
    limit: u64,
    /// Depth of the first leaf seen: 1 for flat data, `shape.len()` for nested.
    leaf_depth: Option<usize>,
    meter: &'m mut Meter<'r>,
    /// Set when the meter refused a charge (the error then says no more).
    exhausted: Option<Exhausted>,
}

struct Level<'a, 's, 'm, 'r, T> {
    out: &'a mut Vec<T>,
    state: &'a mut FlattenState<'s, 'm, 'r>,
    depth: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Level<'_, '_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Level<'_, '_, '_, '_, T> {
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
        if T::HEAP && !v.is_empty() && self.depth > 0 {
            // Charged before `from_str` copies it.
            if let Err(exhausted) = self.state.meter.charge(v.len() + ALLOC_OVERHEAD) {
                self.state.exhausted = Some(exhausted);
                return Err(E::custom("the memory budget is exhausted"));
            }
        }
        self.leaf(T::from_str(v), || "a string".to_owned())
    }
}

impl<T: Element> Level<'_, '_, '_, '_, T> {
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
        // Stop at the first element past the shape rather than buffer them
        // all: the vector's capacity is the shape's count.
        if self.out.len() as u64 >= self.state.limit {
            return Err(E::custom(format!(
                "data has more elements than the {} its shape needs",
                self.state.limit
            )));
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

/// What a WASI preview 1 command wrote, as parsed before tensor data.
struct RawCommandOutput<'a> {
    outputs: Option<Vec<RawInput<'a>>>,
    error: Option<String>,
}

/// Parses a [`RawCommandOutput`] with at most `max_outputs` outputs and
/// the first [`MAX_MESSAGE_BYTES`] of its `error`.
struct CommandSeed {
    max_outputs: usize,
}

impl<'de> DeserializeSeed<'de> for CommandSeed {
    type Value = RawCommandOutput<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CommandSeed {
    type Value = RawCommandOutput<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an inference response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut outputs, mut error) = (None, None);
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "outputs" => set_once(
                    &mut outputs,
                    "outputs",
                    map.next_value_seed(BoundedVec::new(self.max_outputs, "outputs"))?,
                )?,
                "error" => set_once(
                    &mut error,
                    "error",
                    map.next_value_seed(CutString(MAX_MESSAGE_BYTES))?,
                )?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawCommandOutput {
            outputs,
            error: error.flatten(),
        })
    }
}

/// An optional string, of which at most `.0` bytes are kept (see
/// [`cut_message`]): the rest is never copied.
struct CutString(usize);

impl<'de> DeserializeSeed<'de> for CutString {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for CutString {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok(Some(cut_message(v, self.0).into_owned()))
    }
}

/// Parses what a WASI preview 1 command wrote on stdout: an Open Inference
/// Protocol response (`{"outputs": [...]}`; other fields are ignored, the
/// host fills them in), or `{"error": "..."}` for a request the model
/// refuses (the inner `Err`, cut to [`MAX_MESSAGE_BYTES`]). The outer `Err`
/// says why the output is not a response at all, or is over a bound.
///
/// Bounded as a request is: at most as many outputs as `metadata`
/// declares, counted as they are parsed; at most
/// `limits.max_output_elements` elements over all outputs, checked on the
/// declared shapes before anything is allocated; and at most `max_bytes`
/// of host memory for the parsed tensors (the sandbox's
/// [`Limits::output_bytes`](crate::Limits::output_bytes), the bound a
/// component's response has), charged before each allocation. The outputs
/// still go through [`check_response`].
pub fn parse_command_output(
    stdout: &[u8],
    metadata: &ModelMetadata,
    limits: &RequestLimits,
    max_bytes: usize,
) -> Result<Result<Vec<Tensor>, String>, ResponseError> {
    use ResponseError::Invalid;
    let mut de = serde_json::Deserializer::from_slice(stdout);
    let raw = CommandSeed {
        max_outputs: metadata.outputs.len(),
    }
    .deserialize(&mut de)
    .and_then(|raw| de.end().map(|()| raw))
    .map_err(|e| Invalid(format!("not a JSON response: {}", json_error(&e))))?;
    if let Some(message) = raw.error {
        return Ok(Err(message));
    }
    let raw_outputs = raw
        .outputs
        .ok_or_else(|| Invalid("the response has neither `outputs` nor `error`".to_owned()))?;

    let budget = MemoryBudget::new(max_bytes);
    let mut reservation = budget.reservation();
    let mut meter = Meter::new(&mut reservation);
    let mut total: u64 = 0;
    let mut outputs = Vec::with_capacity(raw_outputs.len());
    for output in raw_outputs {
        let name = Quoted(&output.name);
        let datatype = Datatype::parse(&output.datatype).ok_or_else(|| {
            Invalid(format!(
                "output {name}: unknown datatype {}",
                Quoted(&output.datatype)
            ))
        })?;
        let shape = output
            .shape
            .iter()
            .map(|d| u64::try_from(*d))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| Invalid(format!("output {name}: negative dimension")))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| Invalid(format!("output {name}: shape is too large")))?;
        total = total.saturating_add(elements);
        if total > limits.max_output_elements {
            return Err(ResponseError::TooLarge(limits.max_output_elements));
        }
        let raw_data = output
            .data
            .ok_or_else(|| Invalid(format!("output {name} has no data")))?;
        let data =
            parse_data(raw_data, datatype, &shape, elements, &mut meter).map_err(|e| match e {
                DataError::Bad(e) => Invalid(format!("output {name}: {e}")),
                DataError::Exhausted(_) => ResponseError::TooManyBytes(max_bytes),
            })?;
        outputs.push(Tensor {
            name: output.name.into_owned(),
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
                "the model returned undeclared output {}",
                Quoted(&tensor.name)
            )));
        };
        if !seen.insert(spec.name.as_str()) {
            return Err(Invalid(format!(
                "the model returned output {} more than once",
                Quoted(&tensor.name)
            )));
        }
        if tensor.data.datatype() != spec.datatype {
            return Err(Invalid(format!(
                "output {} is {}, declared {}",
                Quoted(&tensor.name),
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
                "output {} has shape {} but {} elements",
                Quoted(&tensor.name),
                Dims(&tensor.shape),
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

    /// Parses with a budget that never runs out: these tests are about
    /// what a request says, not what it costs.
    fn infer(
        body: &[u8],
        json_len: Option<usize>,
        meta: &ModelMetadata,
        limits: &RequestLimits,
    ) -> Result<ParsedInfer, BadRequest> {
        let mut reservation = MemoryBudget::new(usize::MAX).reservation();
        parse_infer(body, json_len, meta, limits, &mut reservation).map_err(|e| match e {
            ParseError::Bad(e) => e,
            ParseError::Exhausted(e) => panic!("an unlimited budget ran out: {e}"),
        })
    }

    fn decode(bytes: &[u8], datatype: Datatype, elements: u64) -> Result<TensorData, String> {
        let mut reservation = MemoryBudget::new(usize::MAX).reservation();
        decode_binary(bytes, datatype, elements, &mut Meter::new(&mut reservation)).map_err(|e| {
            match e {
                DataError::Bad(e) => e,
                DataError::Exhausted(e) => panic!("an unlimited budget ran out: {e}"),
            }
        })
    }

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
        infer(body.as_bytes(), None, meta, limits).map(|parsed| parsed.request)
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
            let back = decode(&bytes, data.datatype(), 3).unwrap();
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
        let err = decode(&four, Datatype::Fp32, 2).unwrap_err();
        assert!(err.contains("needs 2 elements of 4 bytes"), "{err}");
        assert!(decode(&four[..3], Datatype::Fp32, 1).is_err());
        assert!(
            decode(&[2], Datatype::Bool, 1)
                .unwrap_err()
                .contains("neither 0 nor 1")
        );
        // BYTES: a length running past the end, a length cut short, bytes left over.
        assert!(decode(&[5, 0, 0, 0, b'a'], Datatype::Bytes, 1).is_err());
        assert!(decode(&[1, 0, 0, 0, b'a', 0, 0], Datatype::Bytes, 2).is_err());
        assert!(decode(&[1, 0, 0, 0, b'a', 9], Datatype::Bytes, 1).is_err());
        assert!(matches!(
            decode(&[0, 0, 0, 0], Datatype::Bytes, 1).unwrap(),
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
        let parsed = infer(&body, len, &meta, &RequestLimits::default()).unwrap();
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
            let err = infer(&body, len, &meta, &RequestLimits::default()).unwrap_err();
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
            decode(tail, Datatype::Fp32, 2).unwrap(),
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

    // Attacks on the parser: each is refused, or charged, before it is
    // allocated, and a normal request parses after it.

    fn normal_request_still_parses() {
        let req = parse(
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
        )
        .unwrap();
        assert_eq!(fp32(&req), &[1.0, 2.0, 3.0]);
    }

    fn bad_of(result: Result<ParsedInfer, ParseError>) -> String {
        match result {
            Err(ParseError::Bad(e)) => e.0,
            Err(ParseError::Exhausted(e)) => panic!("expected a bad request, got {e}"),
            Ok(_) => panic!("expected a bad request, got a request"),
        }
    }

    #[test]
    fn a_small_request_holds_what_it_keeps_and_the_budget_gets_the_rest_back() {
        let budget = MemoryBudget::new(1 << 20);
        let mut reservation = budget.reservation();
        let body = r#"{"id":"x","inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#;
        let parsed = parse_infer(
            body.as_bytes(),
            None,
            &metadata(),
            &RequestLimits::default(),
            &mut reservation,
        )
        .unwrap();
        let data = r#"[1,2,3,4,5,6]"#.len();
        // The text outside `data`, then 6 FP32 exactly; the step's credit
        // went back.
        assert_eq!(reservation.held(), body.len() - data + 6 * 4);
        assert_eq!(budget.in_use(), reservation.held());
        drop(parsed);
        drop(reservation);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_shape_that_claims_more_than_its_data_does_not_get_its_capacity() {
        // 3e9 FP64 elements declared (24 GB), none sent: refused for what
        // the data holds, within a 1 MiB budget, nothing reserved for the
        // claim.
        let limits = RequestLimits {
            max_elements: u64::MAX,
            ..RequestLimits::default()
        };
        let mut meta = metadata();
        meta.inputs[0].datatype = Datatype::Fp64;
        let budget = MemoryBudget::new(1 << 20);
        let mut reservation = budget.reservation();
        let body = r#"{"inputs":[{"name":"input","shape":[1000000000,3],"datatype":"FP64","data":[1,2]}]}"#;
        let message = bad_of(parse_infer(
            body.as_bytes(),
            None,
            &meta,
            &limits,
            &mut reservation,
        ));
        assert!(
            message.contains("needs 3000000000 elements but data has 2"),
            "{message}"
        );
        assert!(
            reservation.held() < 1024,
            "{} bytes held",
            reservation.held()
        );
        normal_request_still_parses();
    }

    #[test]
    fn data_past_the_shape_stops_at_the_first_extra_element() {
        // Shape [1, 3], a million elements: refused at the fourth, and the
        // vector never grows past its 3-element capacity (charged: 12 bytes).
        let data = vec!["1"; 1 << 20].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"FP32","data":[{data}]}}]}}"#
        );
        let budget = MemoryBudget::new(usize::MAX);
        let mut reservation = budget.reservation();
        let message = bad_of(parse_infer(
            body.as_bytes(),
            None,
            &metadata(),
            &RequestLimits::default(),
            &mut reservation,
        ));
        assert!(message.contains("more elements than the 3"), "{message}");
        normal_request_still_parses();
    }

    #[test]
    fn a_million_dimensions_are_refused_with_a_short_message() {
        let dims = vec!["1"; 1_000_000].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[{dims}],"datatype":"FP32","data":[1]}}]}}"#
        );
        let err = parse(&body).unwrap_err();
        assert!(
            err.0.contains("more dimensions than the 64 allowed"),
            "{err}"
        );
        assert!(err.0.len() < 256, "{} bytes", err.0.len());
        // Within the rank bound, a mismatched shape shows 16 dimensions.
        let dims = vec!["1"; 40].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[{dims}],"datatype":"FP32","data":[1]}}]}}"#
        );
        let err = parse(&body).unwrap_err();
        assert!(err.0.contains("… (40 dimensions)]"), "{err}");
        assert!(err.0.len() < 256, "{} bytes", err.0.len());
        normal_request_still_parses();
    }

    #[test]
    fn long_names_are_cut_where_they_are_quoted() {
        let name = "n".repeat(1 << 20);
        let body = format!(
            r#"{{"inputs":[{{"name":"{name}","shape":[1,3],"datatype":"{name}","data":[1,2,3]}}]}}"#
        );
        let err = parse(&body).unwrap_err();
        assert!(
            err.0.starts_with("unexpected input \"nnn"),
            "{}",
            &err.0[..100]
        );
        assert!(err.0.contains("(1048576 bytes)"), "{}", &err.0[..200]);
        assert!(err.0.len() < 256, "{} bytes", err.0.len());
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"{name}","data":[1,2,3]}}]}}"#
        );
        let err = parse(&body).unwrap_err();
        assert!(err.0.contains("unknown datatype"), "{}", &err.0[..100]);
        assert!(err.0.len() < 256, "{} bytes", err.0.len());
        // A serde error quoting a huge string is cut too.
        let body = format!(r#"{{"inputs":"{name}"}}"#);
        let err = parse(&body).unwrap_err();
        assert!(err.0.len() <= MAX_MESSAGE_BYTES, "{} bytes", err.0.len());
    }

    #[test]
    fn parameters_are_bounded_and_only_scalars_are_read() {
        let ok_input =
            r#""inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]"#;
        // A parameter holding a huge array: refused, never built.
        let big = vec!["0"; 1 << 20].join(",");
        let err = parse(&format!(r#"{{"parameters":{{"a":[{big}]}},{ok_input}}}"#)).unwrap_err();
        assert!(err.0.contains("parameter \"a\": only booleans"), "{err}");
        // Too many keys: refused at the 65th.
        let keys: Vec<String> = (0..100_000).map(|i| format!(r#""k{i}":1"#)).collect();
        let err = parse(&format!(
            r#"{{"parameters":{{{}}},{ok_input}}}"#,
            keys.join(",")
        ))
        .unwrap_err();
        assert!(
            err.0.contains("more parameters than the 64 allowed"),
            "{err}"
        );
        // The same on an input's and an output's parameters.
        let err = parse(&format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3],"parameters":{{{}}}}}]}}"#,
            keys.join(",")
        ))
        .unwrap_err();
        assert!(err.0.contains("more parameters than"), "{err}");
        // A key twice is ambiguous.
        let err = parse(&format!(r#"{{"parameters":{{"a":1,"a":2}},{ok_input}}}"#)).unwrap_err();
        assert!(err.0.contains("appears twice"), "{err}");
        // Scalars convert as before.
        let req = parse(&format!(
            r#"{{"parameters":{{"b":true,"i":-3,"u":18446744073709551615,"f":0.5,"t":"x\n"}},{ok_input}}}"#
        ))
        .unwrap();
        assert!(matches!(req.parameters[0], (ref k, ParameterValue::Bool(true)) if k == "b"));
        assert!(matches!(req.parameters[1], (_, ParameterValue::Int(-3))));
        assert!(matches!(req.parameters[2], (_, ParameterValue::Double(d)) if d > 1e19));
        assert!(matches!(
            req.parameters[3],
            (_, ParameterValue::Double(0.5))
        ));
        assert!(matches!(&req.parameters[4], (_, ParameterValue::Text(t)) if t == "x\n"));
    }

    #[test]
    fn inputs_and_outputs_are_counted_against_what_the_model_declares() {
        let one = r#"{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}"#;
        let inputs = vec![one; 100_000].join(",");
        let err = parse(&format!(r#"{{"inputs":[{inputs}]}}"#)).unwrap_err();
        assert!(err.0.contains("more inputs than the 1 allowed"), "{err}");
        let outputs = vec![r#"{"name":"out"}"#; 100_000].join(",");
        let err = parse(&format!(r#"{{"inputs":[{one}],"outputs":[{outputs}]}}"#)).unwrap_err();
        assert!(err.0.contains("more outputs than the 1 allowed"), "{err}");
        // Within the count, duplicates are still named.
        let mut meta = metadata();
        meta.inputs.push(TensorSpec {
            name: "other".into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        });
        let err = infer(
            format!(r#"{{"inputs":[{one},{one}]}}"#).as_bytes(),
            None,
            &meta,
            &RequestLimits::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("appears more than once"), "{err}");
        normal_request_still_parses();
    }

    #[test]
    fn bytes_elements_are_charged_and_a_small_budget_runs_out() {
        let mut meta = metadata();
        meta.inputs[0] = TensorSpec {
            name: "input".into(),
            datatype: Datatype::Bytes,
            shape: vec![-1],
        };
        let request = |element: &str, n: usize| {
            let data = vec![element; n].join(",");
            format!(
                r#"{{"inputs":[{{"name":"input","shape":[{n}],"datatype":"BYTES","data":[{data}]}}]}}"#
            )
        };
        let limits = RequestLimits::default();
        // 200,000 empty strings (600 KB of JSON) are 4.8 MB of vector: a
        // 1 MiB budget refuses them, as it does in the binary format.
        let budget = MemoryBudget::new(1 << 20);
        let body = request(r#""""#, 200_000);
        let mut reservation = budget.reservation();
        let result = parse_infer(body.as_bytes(), None, &meta, &limits, &mut reservation);
        assert!(
            matches!(result, Err(ParseError::Exhausted(_))),
            "{result:?}"
        );
        let mut binary = Vec::new();
        encode_binary(&TensorData::Bytes(vec![Vec::new(); 200_000]), &mut binary);
        let json = r#"{"inputs":[{"name":"input","shape":[200000],"datatype":"BYTES","parameters":{"binary_data_size":800000}}]}"#;
        let (body, len) = with_binary(json, &binary);
        let result = parse_infer(&body, len, &meta, &limits, &mut reservation);
        assert!(
            matches!(result, Err(ParseError::Exhausted(_))),
            "{result:?}"
        );
        drop(reservation);
        assert_eq!(budget.in_use(), 0, "a refused request holds nothing");

        // With room, what is held covers the vector and each string's heap
        // block, in both formats.
        let budget = MemoryBudget::new(usize::MAX);
        for (body, len) in [(request(r#""ab""#, 10_000).into_bytes(), None), {
            let mut binary = Vec::new();
            encode_binary(
                &TensorData::Bytes(vec![b"ab".to_vec(); 10_000]),
                &mut binary,
            );
            let json = format!(
                r#"{{"inputs":[{{"name":"input","shape":[10000],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
                binary.len()
            );
            with_binary(&json, &binary)
        }] {
            let mut reservation = budget.reservation();
            let parsed = parse_infer(&body, len, &meta, &limits, &mut reservation).unwrap();
            assert_eq!(parsed.request.inputs[0].data.len(), 10_000);
            let floor = 10_000 * (size_of::<Vec<u8>>() + 2 + ALLOC_OVERHEAD);
            assert!(
                reservation.held() >= floor,
                "{} < {floor}",
                reservation.held()
            );
            assert!(reservation.held() < floor + body.len() + CHARGE_STEP);
        }
        assert_eq!(budget.in_use(), 0);
        normal_request_still_parses();
    }

    #[test]
    fn messages_are_cut_at_a_char_boundary_with_a_marker() {
        assert_eq!(cut_message("short", 10), "short");
        let cut = cut_message("ééééé", 5); // 10 bytes; byte 5 is inside an é
        assert_eq!(cut, "éé… (6 bytes cut)");
        let mut s = "x".repeat(1 << 20);
        cut_string(&mut s, MAX_MESSAGE_BYTES);
        assert!(s.ends_with("… (1047552 bytes cut)"), "{}", &s[1000..]);
        assert!(s.capacity() < 2 * MAX_MESSAGE_BYTES, "{}", s.capacity());
    }

    /// What a hostile command writes: `count` outputs each declaring a
    /// 1 Mi-element BYTES tensor with no data.
    fn hostile_command_output(count: usize) -> Vec<u8> {
        let one = r#"{"name":"out","shape":[1048576],"datatype":"BYTES","data":[]}"#;
        format!(r#"{{"outputs":[{}]}}"#, vec![one; count].join(",")).into_bytes()
    }

    #[test]
    fn a_command_cannot_declare_more_outputs_or_elements_than_allowed() {
        let limits = RequestLimits::default();
        // 200,001 outputs against one declared: refused at the second.
        let stdout = hostile_command_output(200_001);
        let result = parse_command_output(&stdout, &metadata(), &limits, 16 << 20);
        assert!(
            matches!(&result, Err(ResponseError::Invalid(m)) if m.contains("more outputs than the 1 allowed")),
            "{result:?}"
        );
        // A model declaring that many outputs: its shapes claim 16 Mi
        // elements by the 17th, over the response's element bound.
        let mut many = metadata();
        many.outputs = (0..200_001)
            .map(|i| TensorSpec {
                name: format!("o{i}"),
                datatype: Datatype::Bytes,
                shape: vec![-1],
            })
            .collect();
        let result = parse_command_output(&stdout, &many, &limits, 16 << 20);
        assert!(
            matches!(result, Err(ResponseError::TooLarge(n)) if n == limits.max_output_elements),
            "{result:?}"
        );
        // One output whose data runs past its shape: refused at the first
        // extra element.
        let data = vec!["1"; 1 << 20].join(",");
        let stdout = format!(
            r#"{{"outputs":[{{"name":"out","shape":[1],"datatype":"FP32","data":[{data}]}}]}}"#
        );
        let result = parse_command_output(stdout.as_bytes(), &metadata(), &limits, 16 << 20);
        assert!(
            matches!(&result, Err(ResponseError::Invalid(m)) if m.contains("more elements than the 1")),
            "{result:?}"
        );
        // Strings that take more host memory than the output allowance.
        let data = vec![r#""ab""#; 100_000].join(",");
        let stdout = format!(
            r#"{{"outputs":[{{"name":"out","shape":[100000],"datatype":"BYTES","data":[{data}]}}]}}"#
        );
        let result = parse_command_output(stdout.as_bytes(), &metadata(), &limits, 1 << 20);
        assert!(
            matches!(result, Err(ResponseError::TooManyBytes(n)) if n == 1 << 20),
            "{result:?}"
        );
        // A well-behaved command still parses.
        let ok = br#"{"outputs":[{"name":"out","shape":[2],"datatype":"FP32","data":[0.5,1]}],"model_name":"x"}"#;
        let outputs = parse_command_output(ok, &metadata(), &limits, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(matches!(&outputs[0].data, TensorData::Fp32(v) if v == &[0.5, 1.0]));
    }

    #[test]
    fn a_command_error_message_is_cut_as_it_is_parsed() {
        let stdout = format!(r#"{{"error":"{}"}}"#, "e".repeat(4 << 20));
        let message = parse_command_output(
            stdout.as_bytes(),
            &metadata(),
            &RequestLimits::default(),
            1 << 20,
        )
        .unwrap()
        .unwrap_err();
        assert!(
            message.len() < MAX_MESSAGE_BYTES + 64,
            "{} bytes",
            message.len()
        );
        assert!(message.ends_with("bytes cut)"), "{}", &message[1000..]);
    }
}
