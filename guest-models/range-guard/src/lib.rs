//! Guard `range-guard` (world `policy`): refuses requests whose
//! floating-point inputs hold NaN or an infinity, and requests whose numeric
//! inputs leave the ranges its configuration declares.
//!
//! Configuration (JSON; empty means "NaN and infinities only"):
//!
//! ```json
//! {"inputs": {"input": {"min": 0, "max": 16}},
//!  "outputs": {"probabilities": {"min": 0, "max": 1}}}
//! ```
//!
//! `min` and `max` are inclusive and each optional. `inputs` applies to
//! `check-request`, `outputs` to `check-response`; both also refuse NaN and
//! infinities in FP16, FP32 and FP64 tensors whether configured or not. A
//! denial names the tensor, the element's index (flat and per dimension)
//! and the offending value, never more of the data.
//!
//! A configuration that cannot be read, that names an input the request
//! does not have, or that puts a range on a BYTES or BOOL tensor
//! makes the guard deny every call with a message saying so: a range that
//! silently checks nothing would be worse.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use std::collections::BTreeMap;

use airlock::inference::types::{InferRequest, InferResponse, Tensor, TensorData};
use exports::airlock::inference::guard::{Guest, RequestDecision, ResponseDecision};

/// The guard's configuration.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Ranges of request inputs, by name.
    #[serde(default)]
    inputs: BTreeMap<String, Range>,
    /// Ranges of response outputs, by name.
    #[serde(default)]
    outputs: BTreeMap<String, Range>,
}

/// An inclusive range; a missing bound is no bound.
#[derive(serde::Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Range {
    min: Option<f64>,
    max: Option<f64>,
}

fn parse_config(config: &str) -> Result<Config, String> {
    if config.trim().is_empty() {
        return Ok(Config::default());
    }
    let config: Config = serde_json::from_str(config)
        .map_err(|e| format!("range-guard: invalid configuration: {e}"))?;
    for (name, range) in config.inputs.iter().chain(&config.outputs) {
        if let (Some(min), Some(max)) = (range.min, range.max)
            && min > max
        {
            return Err(format!(
                "range-guard: invalid configuration: {name:?} has min {min} above max {max}"
            ));
        }
    }
    Ok(config)
}

/// Checks `tensors` against `ranges`; `Err` is the reason to deny.
///
/// A range for an input the request lacks is a configuration error (the
/// host passes every declared input, so the name is a typo). A range for an
/// output the response lacks is not: the caller may have asked for some
/// outputs only.
fn check(kind: &str, tensors: &[Tensor], ranges: &BTreeMap<String, Range>) -> Result<(), String> {
    if kind == "input" {
        for name in ranges.keys() {
            if !tensors.iter().any(|t| &t.name == name) {
                return Err(format!(
                    "range-guard: invalid configuration: no {kind} named {name:?}"
                ));
            }
        }
    }
    for tensor in tensors {
        let range = ranges.get(&tensor.name).copied();
        check_tensor(kind, tensor, range)?;
    }
    Ok(())
}

fn check_tensor(kind: &str, tensor: &Tensor, range: Option<Range>) -> Result<(), String> {
    let complain = |index: usize, value: f64, why: &str| {
        Err(format!(
            "{kind} {:?} element {index}{}: {} {why}",
            tensor.name,
            position(index, &tensor.shape),
            show(value),
        ))
    };
    // Every element as f64, which holds every FP16 and FP32 value and every
    // integer up to 2^53 exactly; beyond that, the comparison with a bound
    // written in JSON (itself an f64) is as exact as the bound.
    let values: Box<dyn Iterator<Item = f64> + '_> = match &tensor.data {
        TensorData::Fp16(v) => Box::new(v.iter().map(|h| f64::from(f16_to_f32(*h)))),
        TensorData::Fp32(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Fp64(v) => Box::new(v.iter().copied()),
        TensorData::Uint8(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Uint16(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Uint32(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Uint64(v) => Box::new(v.iter().map(|x| *x as f64)),
        TensorData::Int8(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Int16(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Int32(v) => Box::new(v.iter().map(|x| f64::from(*x))),
        TensorData::Int64(v) => Box::new(v.iter().map(|x| *x as f64)),
        TensorData::Bool(_) | TensorData::Bytes(_) => {
            if range.is_some() {
                return Err(format!(
                    "range-guard: invalid configuration: {kind} {:?} is not numeric",
                    tensor.name
                ));
            }
            return Ok(());
        }
    };
    for (index, value) in values.enumerate() {
        if value.is_nan() {
            return complain(index, value, "is not a number");
        }
        if value.is_infinite() {
            return complain(index, value, "is not finite");
        }
        if let Some(range) = range {
            if let Some(min) = range.min
                && value < min
            {
                return complain(index, value, &format!("is below the minimum {}", show(min)));
            }
            if let Some(max) = range.max
                && value > max
            {
                return complain(index, value, &format!("is above the maximum {}", show(max)));
            }
        }
    }
    Ok(())
}

/// `" [row, col]"`: the per-dimension index of flat `index` in `shape`, when
/// the shape has more than one dimension.
fn position(mut index: usize, shape: &[u64]) -> String {
    if shape.len() < 2 {
        return String::new();
    }
    let mut at = vec![0u64; shape.len()];
    for (slot, dim) in at.iter_mut().zip(shape).rev() {
        if *dim == 0 {
            return String::new();
        }
        *slot = index as u64 % dim;
        index /= *dim as usize;
    }
    let parts: Vec<String> = at.iter().map(u64::to_string).collect();
    format!(" [{}]", parts.join(", "))
}

fn show(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// IEEE 754 binary16 to binary32 (exact: every half is a float).
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match exponent {
        // Zero or subnormal: mantissa × 2^-24, exactly representable.
        0 => (mantissa as f32 * f32::powi(2.0, -24)).to_bits(),
        0x1f => 0x7f80_0000 | (mantissa << 13),
        _ => ((exponent + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

struct RangeGuard;

impl Guest for RangeGuard {
    fn check_request(config: String, request: InferRequest) -> RequestDecision {
        let result = parse_config(&config).and_then(|c| check("input", &request.inputs, &c.inputs));
        match result {
            Ok(()) => RequestDecision::Allow,
            Err(reason) => RequestDecision::Deny(reason),
        }
    }

    fn check_response(
        config: String,
        _request: InferRequest,
        response: InferResponse,
    ) -> ResponseDecision {
        let result =
            parse_config(&config).and_then(|c| check("output", &response.outputs, &c.outputs));
        match result {
            Ok(()) => ResponseDecision::Allow,
            Err(reason) => ResponseDecision::Deny(reason),
        }
    }
}

export!(RangeGuard);
