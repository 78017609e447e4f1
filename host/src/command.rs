//! The WASI preview 1 command format: a model built as a command reads
//! the Open Inference Protocol request JSON on stdin ([`CommandRequest`])
//! and writes its response on stdout ([`parse_command_output`]), which is
//! parsed with the bounds a request has.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::bindings::{Datatype, InferRequest, ModelMetadata, ParameterValue, Tensor};
use crate::budget::MemoryBudget;
use crate::oip::json::{DataError, Meter, parse_data};
use crate::oip::request::{BoundedVec, RawInput, Text, json_error, set_once};
use crate::oip::response::Outputs;
use crate::oip::{MAX_MESSAGE_BYTES, Quoted, RequestLimits, ResponseError, cut_message};

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
/// still go through [`check_response`](crate::oip::check_response).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{TensorData, TensorSpec};
    use crate::oip::tests::metadata;

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
