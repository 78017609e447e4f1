//! A loaded model: compiled once, instantiated fresh for every request.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::bindings::{GuestError, InferRequest, InferResponse, Model, ModelMetadata, ModelPre};
use crate::engine::{
    ArtifactCache, CacheOutcome, GuestFailure, Limits, Runtime, classify, sha256_hex,
};

/// Why a component could not be loaded as a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// Compilation failed.
    #[error("the component failed to compile: {0}")]
    Compile(String),
    /// The component imports something the host does not provide, or does
    /// not export the `model` world.
    #[error("the component does not fit the `model` world: {0}")]
    World(String),
    /// The component imports a capability no model may have (sockets, HTTP).
    #[error("the component imports capabilities models may not have: {0}")]
    Forbidden(String),
    /// `metadata()` failed.
    #[error("metadata() failed: {0}")]
    Metadata(GuestFailure),
    /// `metadata()` answered something unusable.
    #[error("invalid model metadata: {0}")]
    InvalidMetadata(String),
    /// Storing the compiled artifact failed.
    #[error("failed to cache the compiled component: {0:#}")]
    Cache(anyhow::Error),
}

/// Figures from loading a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// Whether the compiled artifact came from the cache.
    pub cache: CacheOutcome,
    /// Time to compile or deserialize.
    pub compile: Duration,
    /// Time from bytes to a model ready to serve.
    pub total: Duration,
}

/// A model ready to serve.
pub struct LoadedModel {
    name: String,
    version: String,
    digest: String,
    metadata: ModelMetadata,
    limits: Limits,
    pre: ModelPre<crate::engine::SandboxState>,
    runtime: Runtime,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Compiles (or fetches from `cache`) the component `wasm`, links it,
    /// and reads its metadata in a sandbox armed with `limits`. The model is
    /// served as `name` version `version`.
    pub fn load(
        runtime: &Runtime,
        cache: &ArtifactCache,
        name: &str,
        version: &str,
        wasm: &[u8],
        limits: Limits,
    ) -> Result<(Self, LoadReport), LoadError> {
        let start = Instant::now();
        match wasm_kind(wasm) {
            WasmKind::Component => {}
            WasmKind::CoreModule => {
                return Err(LoadError::NotAComponent(
                    "this is a core WebAssembly module; models are components of the \
                     `airlock:inference` `model` world"
                        .into(),
                ));
            }
            WasmKind::NotWasm => {
                return Err(LoadError::NotAComponent(
                    "the bytes are not WebAssembly (no \\0asm preamble)".into(),
                ));
            }
        }
        let digest = sha256_hex(wasm);
        let (component, outcome) = cache
            .load_or_compile(runtime, &digest, wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let compile = start.elapsed();

        let forbidden: Vec<String> = component
            .component_type()
            .imports(runtime.engine())
            .map(|(import, _)| import.to_owned())
            .filter(|import| FORBIDDEN_IMPORTS.iter().any(|p| import.starts_with(p)))
            .collect();
        if !forbidden.is_empty() {
            return Err(LoadError::Forbidden(forbidden.join(", ")));
        }

        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::World(format!("{:#}", anyhow::Error::from(e))))?;
        let pre = ModelPre::new(instance_pre)
            .map_err(|e| LoadError::World(format!("{:#}", anyhow::Error::from(e))))?;

        let metadata = {
            let mut store = runtime.new_store(limits);
            let model: Model = pre
                .instantiate(&mut store)
                .map_err(|e| LoadError::Metadata(classify(e, &limits)))?;
            model
                .airlock_inference_inference()
                .call_metadata(&mut store)
                .map_err(|e| LoadError::Metadata(classify(e, &limits)))?
        };
        validate_metadata(&metadata).map_err(LoadError::InvalidMetadata)?;

        let model = Self {
            name: name.to_owned(),
            version: version.to_owned(),
            digest,
            metadata,
            limits,
            pre,
            runtime: runtime.clone(),
        };
        let report = LoadReport {
            cache: outcome,
            compile,
            total: start.elapsed(),
        };
        Ok((model, report))
    }

    /// The same model served as `version`.
    pub fn relabel(self, version: &str) -> Self {
        Self {
            version: version.to_owned(),
            ..self
        }
    }

    /// The name the model is served under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version being served.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// sha256 (hex) of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the model declared about itself.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The limits armed on every request to this model.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs one inference in a fresh sandbox. The outer error is a sandbox
    /// failure (trap, deadline, memory cap); the inner one is the model's own
    /// typed error.
    pub fn infer(
        &self,
        request: &InferRequest,
    ) -> Result<Result<InferResponse, GuestError>, GuestFailure> {
        let mut store = self.runtime.new_store(self.limits);
        let model = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &self.limits))?;
        model
            .airlock_inference_inference()
            .call_infer(&mut store, request)
            .map_err(|e| classify(e, &self.limits))
    }
}

/// Import prefixes refused at load time. Models compute; they get no
/// network. (`wasi:filesystem` is linked, because Rust's standard library
/// imports it even in pure-compute guests, but with no preopened
/// directories there is nothing to open.)
const FORBIDDEN_IMPORTS: &[&str] = &["wasi:sockets/", "wasi:http/"];

/// What a byte string is, going by its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// The component binary format (`\0asm`, layer 1).
    Component,
    /// A core module (`\0asm`, version 1, layer 0).
    CoreModule,
    /// Anything else.
    NotWasm,
}

/// Tells components, core modules and other bytes apart by the preamble.
pub fn wasm_kind(bytes: &[u8]) -> WasmKind {
    if bytes.len() < 8 || bytes[0..4] != *b"\0asm" {
        return WasmKind::NotWasm;
    }
    match bytes[4..8] {
        [_, _, 1, 0] => WasmKind::Component,
        [1, 0, 0, 0] => WasmKind::CoreModule,
        _ => WasmKind::NotWasm,
    }
}

fn validate_metadata(metadata: &ModelMetadata) -> Result<(), String> {
    if metadata.inputs.is_empty() {
        return Err("the model declares no inputs".into());
    }
    if metadata.outputs.is_empty() {
        return Err("the model declares no outputs".into());
    }
    for (kind, specs) in [("input", &metadata.inputs), ("output", &metadata.outputs)] {
        let mut seen = HashSet::new();
        for spec in specs {
            if spec.name.is_empty() {
                return Err(format!("an {kind} has an empty name"));
            }
            if !seen.insert(spec.name.as_str()) {
                return Err(format!("{kind} {:?} is declared twice", spec.name));
            }
            if let Some(dim) = spec.shape.iter().find(|d| **d < -1) {
                return Err(format!(
                    "{kind} {:?} has dimension {dim}; use -1 for a variable dimension",
                    spec.name
                ));
            }
        }
    }
    Ok(())
}
