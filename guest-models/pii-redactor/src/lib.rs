//! Guard `pii-redactor` (world `policy`): replaces email addresses, phone
//! numbers, payment card numbers (Luhn-checked) and IBANs (mod-97-checked)
//! in BYTES tensors with `[EMAIL]`, `[PHONE]`, `[CARD]` and `[IBAN]`, so
//! that the model behind it never sees them. The detection rules are in
//! [`pii`].
//!
//! `check-request` rewrites the BYTES inputs and `check-response` the BYTES
//! outputs; it answers `rewrite` when anything was replaced and `allow`
//! otherwise. Tensors of other datatypes are left untouched.
//!
//! Configuration (optional JSON): `{"kinds": ["EMAIL", "PHONE", "CARD",
//! "IBAN"]}` limits what is redacted; the default is every kind. A
//! configuration it cannot read makes it deny, naming the problem, rather
//! than let personal data through.

mod pii;

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use airlock::inference::types::{InferRequest, InferResponse, Tensor, TensorData};
use exports::airlock::inference::guard::{Guest, RequestDecision, ResponseDecision};
use pii::Kind;

/// The guard's configuration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The kinds to redact, by name.
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

/// Reads the configuration: the kinds to redact.
fn kinds(config: &str) -> Result<Vec<Kind>, String> {
    if config.trim().is_empty() {
        return Ok(Kind::ALL.to_vec());
    }
    let config: Config = serde_json::from_str(config)
        .map_err(|e| format!("pii-redactor: invalid configuration: {e}"))?;
    let Some(names) = config.kinds else {
        return Ok(Kind::ALL.to_vec());
    };
    names
        .iter()
        .map(|name| {
            Kind::parse(name).ok_or_else(|| {
                format!(
                    "pii-redactor: invalid configuration: unknown kind {name:?} \
                     (known: EMAIL, PHONE, CARD, IBAN)"
                )
            })
        })
        .collect()
}

/// Redacts the BYTES tensors among `tensors`; whether anything changed.
fn redact_tensors(tensors: &mut [Tensor], kinds: &[Kind]) -> bool {
    let mut changed = false;
    for tensor in tensors {
        if let TensorData::Bytes(elements) = &mut tensor.data {
            for element in elements.iter_mut() {
                if let Some(redacted) = pii::redact(element, kinds) {
                    *element = redacted;
                    changed = true;
                }
            }
        }
    }
    changed
}

struct PiiRedactor;

impl Guest for PiiRedactor {
    fn check_request(config: String, mut request: InferRequest) -> RequestDecision {
        let kinds = match kinds(&config) {
            Ok(kinds) => kinds,
            Err(reason) => return RequestDecision::Deny(reason),
        };
        if redact_tensors(&mut request.inputs, &kinds) {
            RequestDecision::Rewrite(request)
        } else {
            RequestDecision::Allow
        }
    }

    fn check_response(
        config: String,
        _request: InferRequest,
        mut response: InferResponse,
    ) -> ResponseDecision {
        let kinds = match kinds(&config) {
            Ok(kinds) => kinds,
            Err(reason) => return ResponseDecision::Deny(reason),
        };
        if redact_tensors(&mut response.outputs, &kinds) {
            ResponseDecision::Rewrite(response)
        } else {
            ResponseDecision::Allow
        }
    }
}

export!(PiiRedactor);
