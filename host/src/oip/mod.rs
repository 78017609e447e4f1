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
use std::fmt;

use crate::budget::Exhausted;

/// A request the caller got wrong; the message goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

macro_rules! bad {
    ($($arg:tt)*) => { BadRequest(format!($($arg)*)) };
}

mod binary;
pub(crate) mod json;
pub(crate) mod request;
pub(crate) mod response;

pub use binary::OutputEncoding;
pub use request::{ParsedInfer, parse_infer};
pub use response::{InferResponseBody, check_response};

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
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

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

#[cfg(test)]
pub(crate) mod tests {
    use super::binary::decode_binary;
    use super::json::{DataError, Meter};
    use super::*;
    use crate::bindings::{Datatype, InferRequest, ModelMetadata, TensorData, TensorSpec};
    use crate::budget::MemoryBudget;

    /// Parses with a budget that never runs out: these tests are about
    /// what a request says, not what it costs.
    pub(crate) fn infer(
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

    pub(crate) fn decode(
        bytes: &[u8],
        datatype: Datatype,
        elements: u64,
    ) -> Result<TensorData, String> {
        let mut reservation = MemoryBudget::new(usize::MAX).reservation();
        decode_binary(bytes, datatype, elements, &mut Meter::new(&mut reservation)).map_err(|e| {
            match e {
                DataError::Bad(e) => e,
                DataError::Exhausted(e) => panic!("an unlimited budget ran out: {e}"),
            }
        })
    }

    pub(crate) fn metadata() -> ModelMetadata {
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
    pub(crate) fn parse_json(
        body: &str,
        meta: &ModelMetadata,
        limits: &RequestLimits,
    ) -> Result<InferRequest, BadRequest> {
        infer(body.as_bytes(), None, meta, limits).map(|parsed| parsed.request)
    }

    pub(crate) fn parse(body: &str) -> Result<InferRequest, BadRequest> {
        parse_json(body, &metadata(), &RequestLimits::default())
    }

    pub(crate) fn fp32(req: &InferRequest) -> &[f32] {
        match &req.inputs[0].data {
            TensorData::Fp32(v) => v,
            other => panic!("unexpected {:?}", other.datatype()),
        }
    }

    /// `json` then `binary`, with the JSON's length as the header says.
    pub(crate) fn with_binary(json: &str, binary: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        (body, Some(json.len()))
    }

    pub(crate) fn normal_request_still_parses() {
        let req = parse(
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
        )
        .unwrap();
        assert_eq!(fp32(&req), &[1.0, 2.0, 3.0]);
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
}
