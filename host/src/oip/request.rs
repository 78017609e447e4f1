//! Parsing and validating an inference request: bounded readers for its
//! JSON (lists, shapes, `parameters`), its shapes checked against the
//! model's metadata, and [`parse_infer`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::binary::{
    BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, OutputEncoding, decode_binary,
};
use super::json::{DataError, Meter, parse_data};
use super::{
    BadRequest, Dims, MAX_MESSAGE_BYTES, MAX_PARAMETERS, MAX_RANK, ParseError, Quoted,
    RequestLimits, cut_message,
};
use crate::bindings::{Datatype, InferRequest, ModelMetadata, ParameterValue, Tensor, TensorSpec};
use crate::budget::Reservation;

/// Deserializes a JSON array into a `Vec`, failing as soon as it holds more
/// than `max` elements rather than after collecting them all. Where
/// `nullable`, `null` is an empty list.
pub(crate) struct BoundedVec<T> {
    max: usize,
    what: &'static str,
    nullable: bool,
    element: PhantomData<fn() -> T>,
}

impl<T> BoundedVec<T> {
    pub(crate) fn new(max: usize, what: &'static str) -> Self {
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
pub(crate) struct Text<'a>(pub(crate) Cow<'a, str>);

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
pub(crate) fn set_once<T, E: de::Error>(
    slot: &mut Option<T>,
    name: &'static str,
    value: T,
) -> Result<(), E> {
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
pub(crate) struct RawInput<'a> {
    #[serde(borrow)]
    pub(crate) name: Cow<'a, str>,
    #[serde(deserialize_with = "bounded_shape")]
    pub(crate) shape: Vec<i64>,
    #[serde(borrow)]
    pub(crate) datatype: Cow<'a, str>,
    /// Absent when the tensor comes as binary data after the JSON.
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
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

/// A parsed and checked inference request, and how to send its answer.
#[derive(Debug)]
pub struct ParsedInfer {
    /// What the guards and the model receive.
    pub request: InferRequest,
    /// Which outputs go back as binary data.
    pub encoding: OutputEncoding,
}

/// A serde_json error as a caller sees it: cut, as it may quote the input.
pub(crate) fn json_error(error: &serde_json::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::TensorData;
    use crate::budget::MemoryBudget;
    use crate::oip::binary::encode_binary;
    use crate::oip::tests::{
        fp32, infer, metadata, normal_request_still_parses, parse, parse_json, with_binary,
    };
    use crate::oip::{ALLOC_OVERHEAD, CHARGE_STEP};

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

    // Attacks on the parser: each is refused, or charged, before it is
    // allocated, and a normal request parses after it.

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
}
