//! The response side: [`InferResponseBody`], each output sent as JSON
//! `data` or as binary data after the JSON, and [`check_response`], which
//! checks what a model returned before it is sent.

use std::collections::HashSet;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::binary::{BINARY_DATA_SIZE, OutputEncoding, binary_len, encode_binary};
use super::{Dims, Quoted, RequestLimits, ResponseError};
use crate::bindings::{InferResponse, ModelMetadata, Tensor, TensorData};

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
pub(crate) struct Outputs<'a> {
    pub(crate) tensors: &'a [Tensor],
    pub(crate) encoding: Option<&'a OutputEncoding>,
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
    use crate::bindings::Datatype;
    use crate::oip::tests::{decode, metadata};

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
}
