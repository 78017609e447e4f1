//! A model's manifest: the policy uploaded with it and, for WASI preview 1
//! command modules (which cannot describe themselves), its metadata.
//!
//! TOML or JSON (JSON when the text starts with `{`); unknown fields are
//! refused, naming the field. Every setting is optional: what is missing
//! comes from the server's configuration. Example:
//!
//! ```toml
//! memory_mib = 64          # linear memory cap per request
//! deadline_ms = 250        # wall-clock budget per call
//! max_request_bytes = 65536
//! max_elements = 6400      # tensor elements over all inputs
//! max_concurrency = 4      # requests in flight; more get 503 + Retry-After
//! api_keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! require_signatures = true
//!
//! [[guards.request]]       # run in order before the model
//! name = "pii-redactor"    # a guard uploaded to this server
//! config = { kinds = ["email", "iban"] }   # handed to the guard as JSON text
//! [[guards.response]]      # run in order on the model's outputs
//! name = "range-guard"
//! version = "2"            # pinned; without it the guard's active version runs
//!
//! [metadata]               # WASI preview 1 command modules only
//! version = "1"
//! platform = "wasi-p1"
//! inputs = [{ name = "input", datatype = "FP32", shape = [-1, 64] }]
//! outputs = [{ name = "probabilities", datatype = "FP32", shape = [-1, 10] }]
//! ```
//!
//! Bounds: a manifest is at most [`MAX_MANIFEST_BYTES`] (64 KiB) of text, and
//! a guard configuration nests at most [`MAX_GUARD_CONFIG_DEPTH`] (32) arrays
//! and tables deep (the rest of a manifest has a fixed shape). The manifest
//! is stored inside the model's index (`models/<name>/index.json`), a few
//! levels deeper than it was uploaded, and that index is read back with
//! serde_json's nesting limit of 128 at every start: the bound keeps whatever
//! is accepted well inside that limit, so an accepted upload can always be
//! read back (see the round-trip test in `store.rs`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bindings::{Datatype, ModelMetadata, TensorSpec};
use crate::sandbox::Limits;

/// Largest memory cap a manifest may ask for: all of wasm32's 4 GiB.
const MAX_MEMORY_MIB: u64 = 4096;
/// Longest deadline a manifest may ask for.
const MAX_DEADLINE_MS: u64 = 60_000;
/// Most guards in one chain (request or response).
const MAX_GUARDS: usize = 8;
/// Largest guard configuration, as JSON text.
const MAX_GUARD_CONFIG_BYTES: usize = 64 << 10;
/// Largest manifest, as uploaded (TOML or JSON text).
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;
/// Deepest nesting of arrays and tables (objects) in a guard configuration:
/// `{}` and `[]` are depth 1, a string or number 0. Stored in an index, a
/// configuration sits 7 levels deep; 7 + 32 is far below serde_json's 128.
pub const MAX_GUARD_CONFIG_DEPTH: usize = 32;

/// The manifest as uploaded (after validation; API keys are stored hashed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Linear memory cap per request, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Deadline of one call into the model, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Largest inference request body, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Most tensor elements over all inputs of one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elements: Option<u64>,
    /// Most requests in flight at once; the rest get 503 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Callers allowed to infer, as `sha256:<hex>` of the key (a plain key is
    /// accepted at upload and stored hashed). Empty: anyone may infer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// Refuse later uploads to this model unless signed by a trusted key.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_signatures: bool,
    /// The guards that run on each request and response, in order.
    #[serde(default, skip_serializing_if = "Guards::is_empty")]
    pub guards: Guards,
    /// The metadata of a WASI preview 1 command module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<CommandMetadata>,
}

/// A model's guard chains, as its manifest names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// Run in order on the request, before the model sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request: Vec<GuardRef>,
    /// Run in order on the model's response, before the caller sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response: Vec<GuardRef>,
}

impl Guards {
    /// Whether no guard runs.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// One guard of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRef {
    /// The name the guard was uploaded under.
    pub name: String,
    /// A version to pin; without one, the guard's active version runs, so
    /// a new guard version reaches every model it guards at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The guard's configuration: a string is handed over as it is, any
    /// other value as JSON text (TOML tables become JSON objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<GuardConfig>,
}

impl GuardRef {
    /// The configuration text the guard receives (`""` when none).
    pub fn config_text(&self) -> &str {
        self.config.as_ref().map_or("", |config| &config.text)
    }
}

/// A guard's configuration as the manifest gives it, and the text the
/// guard receives, rendered once when the manifest is read rather than on
/// every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    value: serde_json::Value,
    text: String,
}

impl From<serde_json::Value> for GuardConfig {
    fn from(value: serde_json::Value) -> Self {
        let text = match &value {
            serde_json::Value::String(text) => text.clone(),
            value => value.to_string(),
        };
        Self { value, text }
    }
}

impl Serialize for GuardConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for GuardConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Self::from)
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// What a WASI preview 1 command module declares through its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMetadata {
    /// The model's own version string.
    #[serde(default = "default_version")]
    pub version: String,
    /// The platform reported in metadata.
    #[serde(default = "default_platform")]
    pub platform: String,
    /// Inputs the model takes.
    pub inputs: Vec<SpecEntry>,
    /// Outputs the model produces.
    pub outputs: Vec<SpecEntry>,
}

fn default_version() -> String {
    "1".into()
}

fn default_platform() -> String {
    "wasi-p1".into()
}

/// One tensor of [`CommandMetadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecEntry {
    /// Tensor name.
    pub name: String,
    /// An Open Inference Protocol datatype (`FP32`, `INT64`, `BYTES`, …).
    pub datatype: String,
    /// Shape; -1 for a variable dimension.
    pub shape: Vec<i64>,
}

impl Manifest {
    /// Parses and validates a manifest; plain API keys come back hashed.
    /// Errors name the offending field.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
                text.len()
            ));
        }
        let text = std::str::from_utf8(text).map_err(|_| "the manifest is not UTF-8".to_owned())?;
        let mut manifest: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("invalid manifest (JSON): {e}"))?
        } else {
            toml::from_str(text).map_err(|e| format!("invalid manifest (TOML): {e}"))?
        };
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&mut self) -> Result<(), String> {
        check_range("memory_mib", self.memory_mib, 1, MAX_MEMORY_MIB)?;
        check_range("deadline_ms", self.deadline_ms, 1, MAX_DEADLINE_MS)?;
        check_range("max_request_bytes", self.max_request_bytes, 2, u64::MAX)?;
        check_range("max_elements", self.max_elements, 1, u64::MAX)?;
        check_range(
            "max_concurrency",
            self.max_concurrency.map(u64::from),
            1,
            100_000,
        )?;
        for key in &mut self.api_keys {
            *key = hash_key_entry(key)?;
        }
        if let Some(metadata) = &self.metadata {
            metadata.to_model_metadata("")?;
        }
        for (stage, chain) in [
            ("request", &self.guards.request),
            ("response", &self.guards.response),
        ] {
            if chain.len() > MAX_GUARDS {
                return Err(format!(
                    "manifest field `guards.{stage}` names {} guards; at most {MAX_GUARDS} may run",
                    chain.len()
                ));
            }
            for (i, guard) in chain.iter().enumerate() {
                crate::validate_model_name(&guard.name)
                    .map_err(|e| format!("manifest field `guards.{stage}[{i}].name`: {e}"))?;
                if guard.config_text().len() > MAX_GUARD_CONFIG_BYTES {
                    return Err(format!(
                        "manifest field `guards.{stage}[{i}].config` is over {MAX_GUARD_CONFIG_BYTES} bytes"
                    ));
                }
                // Checked on the parsed value, so TOML (whose parser has a
                // limit of its own) and JSON are held to the same bound.
                if let Some(config) = &guard.config
                    && nesting_depth(&config.value) > MAX_GUARD_CONFIG_DEPTH
                {
                    return Err(format!(
                        "manifest field `guards.{stage}[{i}].config` nests arrays and tables \
                         more than {MAX_GUARD_CONFIG_DEPTH} levels deep"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuses the fields that mean nothing for a guard (a guard is called
    /// by the host, not by clients, and guards no one itself): only the
    /// sandbox limits `memory_mib` and `deadline_ms` apply.
    pub fn check_for_guard(&self) -> Result<(), String> {
        let misplaced = [
            ("max_request_bytes", self.max_request_bytes.is_some()),
            ("max_elements", self.max_elements.is_some()),
            ("max_concurrency", self.max_concurrency.is_some()),
            ("api_keys", !self.api_keys.is_empty()),
            ("guards", !self.guards.is_empty()),
            ("metadata", self.metadata.is_some()),
        ];
        match misplaced.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(format!(
                "manifest field `{field}` does not apply to a guard (only `memory_mib`, \
                 `deadline_ms` and `require_signatures` do)"
            )),
            None => Ok(()),
        }
    }

    /// The policy in force for a model with this manifest on a server whose
    /// defaults are `defaults`.
    pub fn policy(&self, defaults: &Policy) -> Policy {
        let mut policy = defaults.clone();
        if let Some(mib) = self.memory_mib {
            policy.limits.memory_bytes = usize::try_from(mib << 20).unwrap_or(usize::MAX);
        }
        if let Some(ms) = self.deadline_ms {
            policy.limits.deadline = Duration::from_millis(ms);
        }
        if let Some(bytes) = self.max_request_bytes {
            policy.max_request_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(elements) = self.max_elements {
            policy.max_elements = elements;
        }
        if self.max_concurrency.is_some() {
            policy.max_concurrency = self.max_concurrency;
        }
        policy.api_keys = self.api_keys.clone();
        policy.require_signatures |= self.require_signatures;
        policy.guards = self.guards.clone();
        policy
    }
}

/// How deeply arrays and objects nest in `value` (a scalar: 0). Walks an
/// explicit stack, so a value that is deeper than the stack allows (which the
/// parsers already refuse) could not overflow it either.
fn nesting_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

fn check_range(field: &str, value: Option<u64>, min: u64, max: u64) -> Result<(), String> {
    match value {
        Some(v) if v < min || v > max => Err(format!(
            "manifest field `{field}` is {v}; it must be between {min} and {max}"
        )),
        _ => Ok(()),
    }
}

/// `sha256:<hex>` stays as it is (lowercased); anything else is a plain key,
/// hashed so that the store never holds it.
fn hash_key_entry(entry: &str) -> Result<String, String> {
    if let Some(hex) = entry.strip_prefix("sha256:") {
        let hex = hex.to_ascii_lowercase();
        if crate::digest::is_sha256_hex(&hex) {
            return Ok(format!("sha256:{hex}"));
        }
        return Err(
            "manifest field `api_keys`: `sha256:` must be followed by 64 hex digits".into(),
        );
    }
    if entry.len() < 16 {
        return Err("manifest field `api_keys`: a key must be at least 16 characters".into());
    }
    Ok(hash_key(entry))
}

/// How an API key is stored and compared: `sha256:<hex>`.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl CommandMetadata {
    /// The metadata the model is served with, named `name`.
    pub fn to_model_metadata(&self, name: &str) -> Result<ModelMetadata, String> {
        let specs = |field: &str, entries: &[SpecEntry]| {
            entries
                .iter()
                .map(|entry| {
                    let datatype = Datatype::parse(&entry.datatype).ok_or_else(|| {
                        format!(
                            "manifest field `metadata.{field}`: {:?} has unknown datatype {:?}",
                            entry.name, entry.datatype
                        )
                    })?;
                    Ok(TensorSpec {
                        name: entry.name.clone(),
                        datatype,
                        shape: entry.shape.clone(),
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let metadata = ModelMetadata {
            name: name.to_owned(),
            version: self.version.clone(),
            platform: self.platform.clone(),
            inputs: specs("inputs", &self.inputs)?,
            outputs: specs("outputs", &self.outputs)?,
        };
        crate::model::validate_metadata(&metadata)
            .map_err(|e| format!("manifest field `metadata`: {e}"))?;
        Ok(metadata)
    }
}

/// The policy in force for one model: the server's defaults overridden by
/// its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Sandbox limits of each call.
    #[serde(serialize_with = "serialize_limits")]
    pub limits: Limits,
    /// Largest inference request body, in bytes.
    pub max_request_bytes: usize,
    /// Most tensor elements over all inputs of one request.
    pub max_elements: u64,
    /// Most requests in flight; `None`: bounded only by the server.
    pub max_concurrency: Option<u32>,
    /// Hashed keys allowed to infer (`sha256:<hex>`); empty: anyone.
    #[serde(skip)]
    pub api_keys: Vec<String>,
    /// Uploads to this model must be signed.
    pub require_signatures: bool,
    /// The guards run on each request and response (shown with their
    /// configuration: it is policy, not a secret).
    #[serde(skip_serializing_if = "Guards::is_empty")]
    pub guards: Guards,
}

fn serialize_limits<S: serde::Serializer>(limits: &Limits, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut map = s.serialize_map(Some(2))?;
    map.serialize_entry("memory_mib", &(limits.memory_bytes >> 20))?;
    map.serialize_entry("deadline_ms", &limits.deadline.as_millis())?;
    map.end()
}

impl Policy {
    /// The policy as shown in model metadata: limits, and whether callers
    /// need a key (never the key hashes themselves).
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "api_key_required".into(),
                serde_json::Value::Bool(!self.api_keys.is_empty()),
            );
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Policy {
        Policy {
            limits: Limits::default(),
            max_request_bytes: 1 << 20,
            max_elements: 1 << 20,
            max_concurrency: None,
            api_keys: Vec::new(),
            require_signatures: false,
            guards: Guards::default(),
        }
    }

    #[test]
    fn toml_and_json_agree() {
        let toml =
            Manifest::parse(b"memory_mib = 64\ndeadline_ms = 250\nmax_concurrency = 2\n").unwrap();
        let json =
            Manifest::parse(br#"{"memory_mib": 64, "deadline_ms": 250, "max_concurrency": 2}"#)
                .unwrap();
        assert_eq!(toml, json);
        let policy = toml.policy(&defaults());
        assert_eq!(policy.limits.memory_bytes, 64 << 20);
        assert_eq!(policy.limits.deadline, Duration::from_millis(250));
        assert_eq!(policy.max_concurrency, Some(2));
        assert_eq!(policy.max_request_bytes, 1 << 20, "default kept");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Manifest::parse(b"memory_mb = 64\n").unwrap_err();
        assert!(err.contains("memory_mb"), "{err}");
        let err = Manifest::parse(br#"{"deadline": 5}"#).unwrap_err();
        assert!(err.contains("deadline"), "{err}");
        let err =
            Manifest::parse(b"[metadata]\nversion = \"1\"\ninputs = []\noutputs = []\nextra = 1\n")
                .unwrap_err();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let err = Manifest::parse(b"memory_mib = 0").unwrap_err();
        assert!(err.contains("memory_mib"), "{err}");
        let err = Manifest::parse(b"deadline_ms = 3600000").unwrap_err();
        assert!(err.contains("deadline_ms"), "{err}");
        let err = Manifest::parse(b"max_concurrency = 0").unwrap_err();
        assert!(err.contains("max_concurrency"), "{err}");
    }

    #[test]
    fn api_keys_are_stored_hashed() {
        let m = Manifest::parse(b"api_keys = [\"a-long-enough-secret-key\"]").unwrap();
        assert_eq!(m.api_keys, vec![hash_key("a-long-enough-secret-key")]);
        assert!(!serde_json::to_string(&m).unwrap().contains("secret"));
        assert!(Manifest::parse(b"api_keys = [\"short\"]").is_err());
        assert!(Manifest::parse(b"api_keys = [\"sha256:abc\"]").is_err());
    }

    #[test]
    fn guard_chains_parse_with_their_configuration() {
        let toml = Manifest::parse(
            b"[[guards.request]]\nname = \"pii\"\nconfig = { kinds = [\"email\"] }\n\
              [[guards.request]]\nname = \"script\"\nconfig = \"deny:no\"\nversion = \"2\"\n\
              [[guards.response]]\nname = \"range\"\n",
        )
        .unwrap();
        let json = Manifest::parse(
            br#"{"guards": {"request": [{"name": "pii", "config": {"kinds": ["email"]}},
                {"name": "script", "config": "deny:no", "version": "2"}],
                "response": [{"name": "range"}]}}"#,
        )
        .unwrap();
        assert_eq!(toml, json);
        let request = &toml.guards.request;
        assert_eq!(request[0].config_text(), r#"{"kinds":["email"]}"#);
        assert_eq!(
            request[1].config_text(),
            "deny:no",
            "a string goes as it is"
        );
        assert_eq!(request[1].version.as_deref(), Some("2"));
        assert_eq!(toml.guards.response[0].config_text(), "");
        assert_eq!(toml.policy(&defaults()).guards, toml.guards);
        // Shown (in metadata) as the manifest gave it, not as the text.
        assert_eq!(
            serde_json::to_value(&toml.guards).unwrap(),
            serde_json::json!({"request": [{"name": "pii", "config": {"kinds": ["email"]}},
                {"name": "script", "version": "2", "config": "deny:no"}],
                "response": [{"name": "range"}]})
        );

        let err = Manifest::parse(b"[[guards.request]]\nname = \"../x\"\n").unwrap_err();
        assert!(err.contains("guards.request[0].name"), "{err}");
        let err = Manifest::parse(b"[[guards.request]]\nname = \"x\"\nconf = 1\n").unwrap_err();
        assert!(err.contains("conf"), "{err}");
        let nine = "[[guards.response]]\nname = \"x\"\n".repeat(9);
        let err = Manifest::parse(nine.as_bytes()).unwrap_err();
        assert!(err.contains("guards.response"), "{err}");
        let err = toml.check_for_guard().unwrap_err();
        assert!(err.contains("`guards`"), "{err}");
        assert!(
            Manifest::parse(b"memory_mib = 8")
                .unwrap()
                .check_for_guard()
                .is_ok()
        );
    }

    /// A guard configuration of `depth` nested objects and arrays.
    pub(crate) fn deep_config_json(depth: usize) -> String {
        let mut text = String::from("1");
        for level in 0..depth {
            text = if level % 2 == 0 {
                format!("[{text}]")
            } else {
                format!("{{\"k\": {text}}}")
            };
        }
        text
    }

    #[test]
    fn guard_configs_are_bounded_in_depth() {
        assert_eq!(nesting_depth(&serde_json::json!(1)), 0);
        assert_eq!(nesting_depth(&serde_json::json!({})), 1);
        assert_eq!(
            nesting_depth(&serde_json::json!({"a": [1, {"b": []}], "c": 2})),
            4
        );
        assert_eq!(
            nesting_depth(&serde_json::from_str(&deep_config_json(20)).unwrap()),
            20
        );

        let json = |depth| {
            format!(
                r#"{{"guards": {{"request": [{{"name": "g", "config": {}}}]}}}}"#,
                deep_config_json(depth)
            )
        };
        let m = Manifest::parse(json(MAX_GUARD_CONFIG_DEPTH).as_bytes()).unwrap();
        assert_eq!(m.guards.request[0].config_text().matches('[').count(), 16);
        // Within serde_json's own limit of 128, but not within ours.
        let err = Manifest::parse(json(MAX_GUARD_CONFIG_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(err.contains("guards.request[0].config"), "{err}");
        assert!(err.contains("32 levels"), "{err}");
        let err = Manifest::parse(json(120).as_bytes()).unwrap_err();
        assert!(err.contains("32 levels"), "{err}");

        // TOML: inline tables and arrays, checked on the parsed value.
        let toml = |depth: usize| {
            let mut value = String::from("1");
            for _ in 0..depth {
                value = format!("{{ k = {value} }}");
            }
            format!("[[guards.response]]\nname = \"g\"\nconfig = {value}\n")
        };
        assert!(Manifest::parse(toml(MAX_GUARD_CONFIG_DEPTH).as_bytes()).is_ok());
        let err = Manifest::parse(toml(MAX_GUARD_CONFIG_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(err.contains("guards.response[0].config"), "{err}");
        // Deeper than TOML's own parser allows: refused by it, not a crash.
        assert!(Manifest::parse(toml(200).as_bytes()).is_err());
    }

    /// Whatever is accepted can be stored and read back: the deepest
    /// configurations allowed, in every guard slot, in a JSON and a TOML
    /// manifest, go through the index writer and reader of the store.
    #[test]
    fn the_deepest_accepted_manifest_round_trips_through_the_index() {
        use crate::store::{FsStore, ModelIndex, Store, VersionRecord};
        let guard = format!(
            r#"{{"name": "g", "version": "1", "config": {}}}"#,
            deep_config_json(MAX_GUARD_CONFIG_DEPTH)
        );
        let chain = vec![guard; MAX_GUARDS].join(", ");
        let json = format!(
            r#"{{"guards": {{"request": [{chain}], "response": [{chain}]}},
                "metadata": {{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [-1, 4]}}],
                              "outputs": [{{"name": "y", "datatype": "FP32", "shape": [-1]}}]}}}}"#
        );
        // The same configuration as inline TOML arrays and tables.
        let mut toml_value = String::from("1");
        for level in 0..MAX_GUARD_CONFIG_DEPTH {
            toml_value = if level % 2 == 0 {
                format!("[{toml_value}]")
            } else {
                format!("{{ k = {toml_value} }}")
            };
        }
        let toml =
            format!("[[guards.request]]\nname = \"g\"\nconfig = {toml_value}\n").repeat(MAX_GUARDS);
        let manifests = [
            Manifest::parse(json.as_bytes()).unwrap(),
            Manifest::parse(toml.as_bytes()).unwrap(),
        ];
        assert_eq!(
            manifests[1].guards.request[0].config, manifests[0].guards.request[0].config,
            "the same configuration either way"
        );

        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let mut index = ModelIndex::new("deep");
        for (i, manifest) in manifests.into_iter().enumerate() {
            // From JSON, so that fields added to the record later need no change here.
            let mut record: VersionRecord = serde_json::from_value(serde_json::json!({
                "version": (i + 1).to_string(), "sha256": "0".repeat(64), "size": 1,
                "uploaded_unix": 0, "model_version": "1",
            }))
            .unwrap();
            record.manifest = Some(manifest);
            index.versions.push(record);
        }
        index.activate("2");
        Store::write_index(&store, &index).unwrap();
        assert_eq!(
            Store::read_index(&store, "deep").unwrap(),
            Some(index.clone())
        );
        // What the bound prevents: a configuration serde_json itself accepts
        // in a manifest (depth 121 + 5 < 128) cannot be read back once stored.
        let mut unbounded = index.clone();
        let config = serde_json::from_str::<serde_json::Value>(&deep_config_json(121)).unwrap();
        unbounded.versions[0]
            .manifest
            .as_mut()
            .unwrap()
            .guards
            .request[0]
            .config = Some(GuardConfig::from(config));
        Store::write_index(&store, &unbounded).unwrap();
        let err = Store::read_index(&store, "deep").unwrap_err();
        assert!(format!("{err:#}").contains("recursion limit"), "{err:#}");
        // The reader S3 uses, on the writer's exact bytes.
        let bytes = serde_json::to_vec_pretty(&index).unwrap();
        assert_eq!(
            crate::store::parse_index("deep", &bytes, "test").unwrap(),
            index
        );
    }

    #[test]
    fn manifests_are_bounded_in_size() {
        let padding = format!("memory_mib = 64\n#{}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let err = Manifest::parse(padding.as_bytes()).unwrap_err();
        assert!(err.contains(&MAX_MANIFEST_BYTES.to_string()), "{err}");
        let fits = format!(
            "memory_mib = 64\n#{}\n",
            "x".repeat(MAX_MANIFEST_BYTES - 100)
        );
        assert!(Manifest::parse(fits.as_bytes()).is_ok());
    }

    #[test]
    fn command_metadata_is_checked() {
        let ok = b"[metadata]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [-1, 4] }]\n\
                   outputs = [{ name = \"y\", datatype = \"INT64\", shape = [-1] }]\n";
        let m = Manifest::parse(ok).unwrap();
        let meta = m.metadata.unwrap().to_model_metadata("m").unwrap();
        assert_eq!(meta.platform, "wasi-p1");
        assert_eq!(meta.inputs[0].datatype, Datatype::Fp32);
        let bad = b"[metadata]\ninputs = [{ name = \"x\", datatype = \"FLOAT\", shape = [1] }]\n\
                    outputs = [{ name = \"y\", datatype = \"FP32\", shape = [1] }]\n";
        let err = Manifest::parse(bad).unwrap_err();
        assert!(err.contains("FLOAT"), "{err}");
        let none = b"[metadata]\ninputs = []\noutputs = [{ name = \"y\", datatype = \"FP32\", shape = [1] }]\n";
        assert!(Manifest::parse(none).is_err());
    }
}
