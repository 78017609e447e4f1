//! A loaded model: compiled once, instantiated fresh for every request.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use crate::artifacts::{ArtifactCache, ArtifactError, CacheOutcome, Compiled};
use crate::bindings::{GuestError, InferRequest, InferResponse, Model, ModelMetadata, ModelPre};
use crate::digest::sha256_hex;
use crate::engine::Runtime;
use crate::manifest::{Manifest, Policy};
use crate::sandbox::{CommandState, GuestFailure, Limits, SandboxState, classify};
use crate::store::VersionRecord;

/// Why a component could not be loaded as a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// Compilation failed, or exceeded its time or memory budget.
    #[error("the module failed to compile: {0}")]
    Compile(crate::compile::CompileError),
    /// The component's `wizer-initialize` trapped (or used an import it may
    /// not use during initialisation), or its snapshot failed.
    #[error("the component could not be pre-initialised: {0}")]
    Init(String),
    /// A core module that is not a WASI preview 1 command.
    #[error("not a WASI command: {0}")]
    NotACommand(String),
    /// The manifest does not fit the upload.
    #[error("{0}")]
    Manifest(String),
    /// The component imports something the host does not provide, or does
    /// not export the `model` world.
    #[error("the component does not fit the `model` world: {0}")]
    World(String),
    /// The component imports a capability no model may have (sockets, HTTP).
    #[error("the component imports capabilities models may not have: {0}")]
    Forbidden(String),
    /// The component imports something the host does not provide, or does
    /// not export the `policy` world (loading a guard).
    #[error("the component does not fit the `policy` world: {0}")]
    GuardWorld(String),
    /// `metadata()` failed.
    #[error("metadata() failed: {0}")]
    Metadata(GuestFailure),
    /// A command module or a guard could not be instantiated within its
    /// limits.
    #[error("the module cannot start within its limits: {0}")]
    Instantiate(GuestFailure),
    /// `metadata()` answered something unusable.
    #[error("invalid model metadata: {0}")]
    InvalidMetadata(String),
    /// Reading a stored version's bytes failed (the host's fault).
    #[error("failed to read the stored component: {0:#}")]
    Fetch(anyhow::Error),
    /// Storing the compiled artifact failed (the host's fault).
    #[error("failed to cache the compiled component: {0:#}")]
    Cache(anyhow::Error),
}

impl LoadError {
    pub(crate) fn from_artifact(error: ArtifactError) -> Self {
        match error {
            ArtifactError::Compile(crate::compile::CompileError::Host(e)) => Self::Cache(e),
            ArtifactError::Compile(crate::compile::CompileError::Init(message)) => {
                Self::Init(message)
            }
            ArtifactError::Compile(e) => Self::Compile(e),
            ArtifactError::Store(e) => Self::Cache(e),
        }
    }

    /// Whether the upload is at fault (a 4xx), rather than the host (a 5xx).
    pub fn is_input_fault(&self) -> bool {
        !matches!(self, Self::Cache(_) | Self::Fetch(_))
    }
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
    policy: Policy,
    backend: Backend,
    inflight: Arc<AtomicU32>,
    stats: Arc<crate::metrics::ModelStats>,
    runtime: Runtime,
}

/// How a model runs.
#[derive(Clone)]
enum Backend {
    /// A component of the `model` world.
    Component(ModelPre<SandboxState>),
    /// A WASI preview 1 command: request JSON on stdin, response on stdout.
    Command(wasmtime::InstancePre<CommandState>),
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
    /// Compiles (or fetches from `cache`) `wasm`, links it, and reads its
    /// metadata in a sandbox armed with `policy`'s limits. The model is
    /// served as `name` version `version`.
    ///
    /// `wasm` is a component of the `model` world, or a WASI preview 1
    /// command module whose metadata comes from `manifest`.
    pub fn load(
        runtime: &Runtime,
        cache: &ArtifactCache,
        name: &str,
        version: &str,
        wasm: &[u8],
        manifest: Option<&Manifest>,
        policy: Policy,
    ) -> Result<(Self, LoadReport), LoadError> {
        let start = Instant::now();
        let digest = sha256_hex(wasm);
        let limits = policy.limits;
        // The manifest is checked against the kind before anything compiles.
        let (compiled, declared) = match wasm_kind(wasm) {
            WasmKind::Component => {
                let declared = declared_metadata(true, name, manifest)?;
                let (component, outcome) = cache
                    .load_or_compile::<Component>(runtime, &digest, wasm, &limits)
                    .map_err(LoadError::from_artifact)?;
                ((Compiled::Component(component), outcome), declared)
            }
            WasmKind::CoreModule => {
                let declared = declared_metadata(false, name, manifest)?;
                let (module, outcome) = cache
                    .load_or_compile::<wasmtime::Module>(runtime, &digest, wasm, &limits)
                    .map_err(LoadError::from_artifact)?;
                ((Compiled::Module(module), outcome), declared)
            }
            WasmKind::NotWasm => {
                return Err(LoadError::NotAComponent(
                    "the bytes are not WebAssembly (no \\0asm preamble)".into(),
                ));
            }
        };
        Self::assemble(
            runtime, name, version, digest, compiled, declared, policy, start,
        )
    }

    /// A stored version of `name`: from its compiled artifact when a
    /// verified one is cached (locally, or in a store that shares
    /// artifacts) without reading the component's bytes, which a process
    /// start would otherwise download for every version; else as
    /// [`LoadedModel::load`] on the bytes `fetch` returns.
    pub fn load_stored(
        runtime: &Runtime,
        cache: &ArtifactCache,
        name: &str,
        record: &VersionRecord,
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
        policy: Policy,
    ) -> Result<(Self, LoadReport), LoadError> {
        let start = Instant::now();
        let manifest = record.manifest.as_ref();
        let Some(compiled) = cache.load_cached(runtime, &record.sha256) else {
            let wasm = fetch().map_err(LoadError::Fetch)?;
            return Self::load(
                runtime,
                cache,
                name,
                &record.version,
                &wasm,
                manifest,
                policy,
            );
        };
        let is_component = matches!(compiled, Compiled::Component(_));
        let declared = declared_metadata(is_component, name, manifest)?;
        Self::assemble(
            runtime,
            name,
            &record.version,
            record.sha256.clone(),
            (compiled, CacheOutcome::Hit),
            declared,
            policy,
            start,
        )
    }

    /// Links a compiled model and reads its metadata (see [`LoadedModel::load`]).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        runtime: &Runtime,
        name: &str,
        version: &str,
        digest: String,
        (compiled, outcome): (Compiled, CacheOutcome),
        declared: Option<ModelMetadata>,
        policy: Policy,
        start: Instant,
    ) -> Result<(Self, LoadReport), LoadError> {
        let compile = start.elapsed();
        let limits = policy.limits;
        let (backend, metadata) = match (compiled, declared) {
            (Compiled::Component(component), _) => {
                let (pre, metadata) = link_component(runtime, &component, &limits)?;
                (Backend::Component(pre), metadata)
            }
            (Compiled::Module(module), Some(metadata)) => (
                Backend::Command(link_command(runtime, &module, &limits)?),
                metadata,
            ),
            (Compiled::Module(_), None) => return Err(command_without_metadata()),
        };

        let model = Self {
            name: name.to_owned(),
            version: version.to_owned(),
            digest,
            metadata,
            policy,
            backend,
            inflight: Arc::default(),
            stats: Arc::default(),
            runtime: runtime.clone(),
        };
        let report = LoadReport {
            cache: outcome,
            compile,
            total: start.elapsed(),
        };
        Ok((model, report))
    }

    /// The same model (compiled component, concurrency slots, metrics)
    /// with `policy` in force instead of its own: what requests addressed
    /// to an inactive version run under (see
    /// [`crate::registry::stricter_policy`]).
    pub fn with_policy(&self, policy: Policy) -> Self {
        Self {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            metadata: self.metadata.clone(),
            policy,
            backend: self.backend.clone(),
            inflight: Arc::clone(&self.inflight),
            stats: Arc::clone(&self.stats),
            runtime: self.runtime.clone(),
        }
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

    /// sha256 (hex) of the uploaded bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the model declared about itself (or its manifest, for a command).
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The policy in force: limits armed on every request, caller keys,
    /// concurrency.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Request counters and latencies of this version.
    pub fn stats(&self) -> &crate::metrics::ModelStats {
        &self.stats
    }

    /// The limits armed on every request to this model.
    pub fn limits(&self) -> &Limits {
        &self.policy.limits
    }

    /// `"component"` or `"wasi-p1-command"`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Component(_) => "component",
            Backend::Command(_) => "wasi-p1-command",
        }
    }

    /// Claims one of the model's concurrency slots; `None` when its policy's
    /// `max_concurrency` requests are already in flight.
    pub fn try_admit(&self) -> Option<Admission> {
        let max = self.policy.max_concurrency.unwrap_or(u32::MAX);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Admission(Arc::clone(&self.inflight)))
    }

    /// Runs one inference in a fresh sandbox. The outer error is a sandbox
    /// failure (trap, deadline, memory cap); the inner one is the model's own
    /// typed error.
    pub fn infer(
        &self,
        request: &InferRequest,
    ) -> Result<Result<InferResponse, GuestError>, GuestFailure> {
        let limits = &self.policy.limits;
        match &self.backend {
            Backend::Component(pre) => {
                let started = Instant::now();
                let mut store = self.runtime.new_store(*limits);
                let model = pre
                    .instantiate(&mut store)
                    .map_err(|e| classify(e, limits))?;
                let result = model
                    .airlock_inference_inference()
                    .call_infer(&mut store, request)
                    .map_err(|e| classify(e, limits));
                tracing::debug!(
                    model = %self.name,
                    version = %self.version,
                    peak_memory_bytes = store.data().peak_memory(),
                    micros = started.elapsed().as_micros() as u64,
                    "sandbox call finished"
                );
                // A message lifted from the guest may be as large as its
                // output allowance: cut it before it goes anywhere.
                result.map(|outcome| outcome.map_err(cut_guest_error))
            }
            Backend::Command(pre) => self.run_command(pre, request),
        }
    }

    fn run_command(
        &self,
        pre: &wasmtime::InstancePre<CommandState>,
        request: &InferRequest,
    ) -> Result<Result<InferResponse, GuestError>, GuestFailure> {
        use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
        let limits = &self.policy.limits;
        let input = serde_json::to_vec(&crate::command::CommandRequest(request))
            .map_err(|e| GuestFailure::Other(e.into()))?;
        // The response is collected on the host's heap, outside the guest's
        // memory cap, so it gets a bound of its own; a write past it fails
        // in the guest (a trap, then a 500).
        let stdout = MemoryOutputPipe::new(limits.memory_bytes.min(MAX_COMMAND_OUTPUT));
        let mut store =
            self.runtime
                .new_command_store(*limits, MemoryInputPipe::new(input), stdout.clone());
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, limits))?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| classify(e, limits))?;
        if let Err(error) = start.call(&mut store, ()) {
            match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(wasmtime_wasi::I32Exit(0)) => {}
                Some(wasmtime_wasi::I32Exit(code)) => {
                    // A command that explains itself on stdout is heard out.
                    drop(store);
                    return Ok(match self.command_output(&stdout.contents()) {
                        Ok(Err(message)) => Err(GuestError::InvalidInput(message)),
                        _ => Err(GuestError::Internal(format!(
                            "the command exited with status {code}"
                        ))),
                    });
                }
                None => return Err(classify(error, limits)),
            }
        }
        drop(store);
        match self.command_output(&stdout.contents()) {
            Ok(Ok(outputs)) => Ok(Ok(InferResponse { outputs })),
            Ok(Err(message)) => Ok(Err(GuestError::InvalidInput(message))),
            Err(crate::oip::ResponseError::Invalid(malformed)) => Ok(Err(GuestError::Internal(
                format!("the command wrote an invalid response: {malformed}"),
            ))),
            Err(over) => Err(GuestFailure::OutputTooLarge(over.to_string())),
        }
    }

    /// Parses a command's stdout, bounded as a component's response is: at
    /// most the outputs the model declares, and at most its sandbox's
    /// `output_bytes` of host memory once parsed. (The element bound is the
    /// default one; the server's own is checked again on the parsed
    /// response by [`crate::oip::check_response`].)
    fn command_output(
        &self,
        stdout: &[u8],
    ) -> Result<Result<Vec<crate::bindings::Tensor>, String>, crate::oip::ResponseError> {
        crate::command::parse_command_output(
            stdout,
            &self.metadata,
            &crate::oip::RequestLimits::default(),
            self.policy.limits.output_bytes,
        )
    }
}

/// A guest's error with its message cut to
/// [`crate::oip::MAX_MESSAGE_BYTES`] (and the rest freed): the message goes
/// to the caller or the log, and the guest chooses its size.
fn cut_guest_error(mut error: GuestError) -> GuestError {
    match &mut error {
        GuestError::InvalidInput(message)
        | GuestError::Unsupported(message)
        | GuestError::Internal(message)
        | GuestError::Other(message) => {
            crate::oip::cut_string(message, crate::oip::MAX_MESSAGE_BYTES)
        }
    }
    error
}

/// One request in flight to a model; dropping it frees the slot.
#[derive(Debug)]
pub struct Admission(Arc<AtomicU32>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Links a compiled component against the sandbox and asks for its metadata.
fn link_component(
    runtime: &Runtime,
    component: &Component,
    limits: &Limits,
) -> Result<(ModelPre<SandboxState>, ModelMetadata), LoadError> {
    check_imports(runtime, component)?;

    let instance_pre = runtime
        .linker()
        .instantiate_pre(component)
        .map_err(|e| LoadError::World(format!("{:#}", anyhow::Error::from(e))))?;
    let pre = ModelPre::new(instance_pre)
        .map_err(|e| LoadError::World(format!("{:#}", anyhow::Error::from(e))))?;

    let metadata = {
        let mut store = runtime.new_store(*limits);
        let model: Model = pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Metadata(classify(e, limits)))?;
        model
            .airlock_inference_inference()
            .call_metadata(&mut store)
            .map_err(|e| LoadError::Metadata(classify(e, limits)))?
    };
    validate_metadata(&metadata).map_err(LoadError::InvalidMetadata)?;
    Ok((pre, metadata))
}

/// Refuses a component that imports anything matching
/// [`FORBIDDEN_IMPORTS`]; shared by models and guards.
pub(crate) fn check_imports(runtime: &Runtime, component: &Component) -> Result<(), LoadError> {
    let forbidden: Vec<String> = component
        .component_type()
        .imports(runtime.engine())
        .map(|(import, _)| import.to_owned())
        .filter(|import| FORBIDDEN_IMPORTS.iter().any(|p| import.starts_with(p)))
        .collect();
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Forbidden(forbidden.join(", ")))
    }
}

/// Checks that a core module is a WASI preview 1 command that needs nothing
/// but WASI preview 1, and links it.
fn link_command(
    runtime: &Runtime,
    module: &wasmtime::Module,
    limits: &Limits,
) -> Result<wasmtime::InstancePre<CommandState>, LoadError> {
    let not_command = |why: String| {
        LoadError::NotACommand(format!(
            "{why}; a core-module model must be a WASI preview 1 command \
             (export `_start` and `memory`, import only `wasi_snapshot_preview1`)"
        ))
    };
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        Some(_) => {
            return Err(not_command(
                "its `_start` export is not a `() -> ()` function".into(),
            ));
        }
        None => return Err(not_command("it exports no `_start`".into())),
    }
    if !matches!(
        module.get_export("memory"),
        Some(wasmtime::ExternType::Memory(_))
    ) {
        return Err(not_command("it exports no `memory`".into()));
    }
    if let Some(import) = module
        .imports()
        .find(|i| i.module() != "wasi_snapshot_preview1")
    {
        return Err(not_command(format!(
            "it imports `{}`.`{}`",
            import.module(),
            import.name()
        )));
    }
    let pre = runtime
        .command_linker()
        .instantiate_pre(module)
        .map_err(|e| not_command(format!("{:#}", anyhow::Error::from(e))))?;
    // Instantiate once (without running `_start`), as a component's
    // metadata() call does: a module that cannot even start within its
    // limits is refused now, not on every request.
    {
        use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
        let mut store = runtime.new_command_store(
            *limits,
            MemoryInputPipe::new(Vec::<u8>::new()),
            MemoryOutputPipe::new(0),
        );
        pre.instantiate(&mut store)
            .map_err(|e| LoadError::Instantiate(classify(e, limits)))?;
    }
    Ok(pre)
}

/// Most bytes a WASI preview 1 command may write on stdout: its response.
const MAX_COMMAND_OUTPUT: usize = 16 << 20;

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

/// The metadata a manifest declares for a command module (`None` for a
/// component, which declares its own); an error when the manifest does not
/// fit the kind.
fn declared_metadata(
    is_component: bool,
    name: &str,
    manifest: Option<&Manifest>,
) -> Result<Option<ModelMetadata>, LoadError> {
    let declared = manifest.and_then(|m| m.metadata.as_ref());
    match (is_component, declared) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(LoadError::Manifest(
            "`metadata` in a manifest is for WASI preview 1 command modules; \
             a component declares its own through metadata()"
                .into(),
        )),
        (false, Some(declared)) => declared
            .to_model_metadata(name)
            .map(Some)
            .map_err(LoadError::Manifest),
        (false, None) => Err(command_without_metadata()),
    }
}

fn command_without_metadata() -> LoadError {
    LoadError::NotAComponent(
        "this is a core WebAssembly module: upload it with a manifest whose \
         [metadata] declares its inputs and outputs (a WASI preview 1 command \
         reading the request JSON on stdin), or build a component of the \
         `airlock:inference` `model` world"
            .into(),
    )
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

/// The names and kinds of a component's own (top-level) exports, read from
/// its export sections without compiling it; `None` if the bytes do not
/// parse (compiling them will say why). Used to tell guards from models and
/// to find `wizer-initialize` before the compile worker runs.
pub(crate) fn top_level_exports(
    wasm: &[u8],
) -> Option<Vec<(String, wasmparser::ComponentExternalKind)>> {
    use wasmparser::{Parser, Payload};
    let mut found = Vec::new();
    // Nested modules and components come inline, each opened by a
    // `Version` payload and closed by an `End`: only depth 1 is the
    // component's own export section.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports.into_iter().flatten() {
                    found.push((export.name.name.to_owned(), export.kind));
                }
            }
            _ => {}
        }
    }
    Some(found)
}

pub(crate) fn validate_metadata(metadata: &ModelMetadata) -> Result<(), String> {
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
