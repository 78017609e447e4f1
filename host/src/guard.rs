//! A loaded guard: a component of the `policy` world, compiled once and
//! instantiated fresh for every call, exactly like a model.
//!
//! A guard inspects a request before the model sees it (allow, deny with a
//! reason, or rewrite it, for example with personal data redacted) and a
//! response before the caller sees it. It runs in the same sandbox as a
//! model (no files, network, environment or clock; memory cap, deadline),
//! and a fresh instance per call means a guard can no more carry one
//! caller's data into the next call than a model can.
//!
//! ```no_run
//! # fn demo(runtime: &airlock::Runtime, cache: &airlock::artifacts::ArtifactCache,
//! #         request: &airlock::bindings::InferRequest) -> anyhow::Result<()> {
//! use airlock::bindings::RequestDecision;
//! let wasm = std::fs::read(airlock_artifacts::RANGE_GUARD)?;
//! let (guard, _) = airlock::LoadedGuard::load(
//!     runtime, cache, "range-guard", "1", &wasm, airlock::Limits::default())?;
//! let config = r#"{"inputs": {"input": {"min": 0, "max": 16}}}"#;
//! match guard.check_request(config, request)? {
//!     RequestDecision::Allow => { /* on to the next guard, then the model */ }
//!     RequestDecision::Deny(reason) => { /* 4xx with `reason` */ }
//!     RequestDecision::Rewrite(rewritten) => { /* use `rewritten` from here on */ }
//! }
//! # Ok(()) }
//! ```

use std::time::Instant;

use crate::bindings::{
    InferRequest, InferResponse, Policy, PolicyPre, RequestDecision, ResponseDecision, Tensor,
};
use wasmtime::component::Component;

use crate::artifacts::{ArtifactCache, CacheOutcome, Compiled};
use crate::decisions::{DecisionLog, Outcome, Stage};
use crate::digest::sha256_hex;
use crate::engine::Runtime;
use crate::manifest::GuardRef;
use crate::model::{LoadError, LoadReport, LoadedModel, WasmKind, check_imports, wasm_kind};
use crate::registry::Registry;
use crate::sandbox::{GuestFailure, Limits, classify};
use crate::store::VersionRecord;

/// Why a guard call gave no usable decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The sandbox stopped the guard (trap, deadline, memory cap…),
    /// classified exactly like a model's failure.
    #[error(transparent)]
    Sandbox(#[from] GuestFailure),
    /// The guard rewrote the request or response into something of another
    /// structure (see [`LoadedGuard::check_request`]). A guard bug, not the
    /// caller's fault: the message is for the log.
    #[error("the guard's rewrite changed the structure of the {what}: {detail}")]
    InvalidRewrite {
        /// `"request"` or `"response"`.
        what: &'static str,
        /// What changed.
        detail: String,
    },
}

/// A guard ready to run.
pub struct LoadedGuard {
    name: String,
    version: String,
    digest: String,
    limits: Limits,
    pre: PolicyPre<crate::sandbox::SandboxState>,
    runtime: Runtime,
}

impl std::fmt::Debug for LoadedGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGuard")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedGuard {
    /// Compiles (or fetches from `cache`) the component `wasm`, checks that
    /// it is a `policy` component importing nothing forbidden (the same
    /// checks as a model's), links it, and instantiates it once in a sandbox
    /// armed with `limits`, so that a guard that cannot even start is
    /// refused at upload rather than failing every request. Every later call
    /// runs with the same `limits`.
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
                    "this is a core WebAssembly module; guards are components of the \
                     `airlock:inference` `policy` world"
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
        let compiled = cache
            .load_or_compile::<Component>(runtime, &digest, wasm, &limits)
            .map_err(LoadError::from_artifact)?;
        Self::assemble(runtime, name, version, digest, compiled, limits, start)
    }

    /// A stored version of guard `name`: from its compiled artifact when a
    /// verified one is cached, without reading the component's bytes; else
    /// as [`LoadedGuard::load`] on the bytes `fetch` returns (see
    /// [`LoadedModel::load_stored`]).
    pub fn load_stored(
        runtime: &Runtime,
        cache: &ArtifactCache,
        name: &str,
        record: &VersionRecord,
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
        limits: Limits,
    ) -> Result<(Self, LoadReport), LoadError> {
        let start = Instant::now();
        match cache.load_cached(runtime, &record.sha256) {
            Some(Compiled::Component(component)) => {
                let compiled = (component, CacheOutcome::Hit);
                let digest = record.sha256.clone();
                Self::assemble(
                    runtime,
                    name,
                    &record.version,
                    digest,
                    compiled,
                    limits,
                    start,
                )
            }
            // A core module is no guard: `load` says so.
            Some(Compiled::Module(_)) | None => {
                let wasm = fetch().map_err(LoadError::Fetch)?;
                Self::load(runtime, cache, name, &record.version, &wasm, limits)
            }
        }
    }

    /// Links a compiled guard and instantiates it once (see [`LoadedGuard::load`]).
    fn assemble(
        runtime: &Runtime,
        name: &str,
        version: &str,
        digest: String,
        (component, outcome): (Component, CacheOutcome),
        limits: Limits,
        start: Instant,
    ) -> Result<(Self, LoadReport), LoadError> {
        let compile = start.elapsed();
        check_imports(runtime, &component)?;

        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::GuardWorld(format!("{:#}", anyhow::Error::from(e))))?;
        let pre = PolicyPre::new(instance_pre)
            .map_err(|e| LoadError::GuardWorld(format!("{:#}", anyhow::Error::from(e))))?;
        {
            let mut store = runtime.new_store(limits);
            pre.instantiate(&mut store)
                .map_err(|e| LoadError::Instantiate(classify(e, &limits)))?;
        }

        let guard = Self {
            name: name.to_owned(),
            version: version.to_owned(),
            digest,
            limits,
            pre,
            runtime: runtime.clone(),
        };
        let report = LoadReport {
            cache: outcome,
            compile,
            total: start.elapsed(),
        };
        Ok((guard, report))
    }

    /// The same guard served as `version`.
    pub fn relabel(self, version: &str) -> Self {
        Self {
            version: version.to_owned(),
            ..self
        }
    }

    /// The name the guard was loaded as.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version loaded.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// sha256 (hex) of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The limits armed on every call.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `check-request` in a fresh sandbox. `config` is the guard's
    /// configuration from the model's policy manifest (JSON text, or `""`).
    ///
    /// A rewrite is accepted only if it keeps the request's structure: the
    /// same inputs in the same order, each with its name, shape and
    /// datatype and an element count that matches the shape, and the same
    /// requested outputs. Guards change contents (redact a string, clamp a
    /// value), not structure, and the host checked the structure against the
    /// model's metadata before the guard ran; this keeps that check valid
    /// for the model that receives the rewritten request.
    pub fn check_request(
        &self,
        config: &str,
        request: &InferRequest,
    ) -> Result<RequestDecision, GuardError> {
        let mut store = self.runtime.new_store(self.limits);
        let guard: Policy = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &self.limits))?;
        let decision = guard
            .airlock_inference_guard()
            .call_check_request(&mut store, config, request)
            .map_err(|e| classify(e, &self.limits))?;
        if let RequestDecision::Rewrite(rewritten) = &decision {
            same_request_structure(request, rewritten).map_err(|detail| {
                GuardError::InvalidRewrite {
                    what: "request",
                    detail,
                }
            })?;
        }
        Ok(decision)
    }

    /// Runs `check-response` in a fresh sandbox, given the request the model
    /// answered. A rewrite must keep the outputs' names, order, shapes and
    /// datatypes, as for [`check_request`](Self::check_request).
    pub fn check_response(
        &self,
        config: &str,
        request: &InferRequest,
        response: &InferResponse,
    ) -> Result<ResponseDecision, GuardError> {
        let mut store = self.runtime.new_store(self.limits);
        let guard: Policy = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &self.limits))?;
        let decision = guard
            .airlock_inference_guard()
            .call_check_response(&mut store, config, request, response)
            .map_err(|e| classify(e, &self.limits))?;
        if let ResponseDecision::Rewrite(rewritten) = &decision {
            same_tensors("output", &response.outputs, &rewritten.outputs).map_err(|detail| {
                GuardError::InvalidRewrite {
                    what: "response",
                    detail,
                }
            })?;
        }
        Ok(decision)
    }
}

/// Whether `wasm` is a guard: a component that exports the `guard`
/// interface (world `policy`) and not `inference` (world `model`). Read
/// from the component's top-level export section, without compiling it, so
/// that an upload knows what it is before the compile worker runs.
pub fn is_guard_component(wasm: &[u8]) -> bool {
    if wasm_kind(wasm) != WasmKind::Component {
        return false;
    }
    let exports = crate::model::top_level_exports(wasm).unwrap_or_default();
    let exported = |prefix: &str| exports.iter().any(|(name, _)| name.starts_with(prefix));
    let (guard, inference) = (
        exported("airlock:inference/guard@"),
        exported("airlock:inference/inference@"),
    );
    guard && !inference
}

/// Why a model's guard chain stopped a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainStop {
    /// A guard denied. The reason is the guard's, for the caller.
    #[error("guard {guard:?} denied the {stage}: {reason}")]
    Denied {
        /// The guard.
        guard: String,
        /// Where.
        stage: Stage,
        /// The guard's reason.
        reason: String,
    },
    /// A guard gave no usable decision: the request fails closed.
    #[error("guard {guard:?} failed on the {stage}: {error}")]
    Failed {
        /// The guard.
        guard: String,
        /// Where.
        stage: Stage,
        /// What went wrong.
        error: GuardError,
    },
    /// The model's policy names a guard (or a pinned version) that is not
    /// loaded: the request fails closed rather than skip it.
    #[error("guard {guard:?}, required by this model's policy, is not loaded")]
    Missing {
        /// The guard.
        guard: String,
        /// Where.
        stage: Stage,
    },
}

/// A request or response decision, whichever the stage.
enum Verdict<T> {
    Allow,
    Deny(String),
    Rewrite(T),
}

/// Runs a model's guard chains (its policy's `guards.request` and
/// `guards.response`, in order), resolving each guard in `guards` at call
/// time, so a new active guard version protects every model at once; each
/// decision goes to the decision log and the model's metrics.
pub struct Chains<'a> {
    guards: &'a Registry<LoadedGuard>,
    log: &'a DecisionLog,
    model: &'a LoadedModel,
}

impl<'a> Chains<'a> {
    /// The chains of `model`.
    pub fn new(
        guards: &'a Registry<LoadedGuard>,
        log: &'a DecisionLog,
        model: &'a LoadedModel,
    ) -> Self {
        Self { guards, log, model }
    }

    /// Runs the request guards; returns the request the model is to see.
    pub fn check_request(&self, request: InferRequest) -> Result<InferRequest, ChainStop> {
        let chain = &self.model.policy().guards.request;
        self.run(chain, Stage::Request, request, |guard, config, request| {
            Ok(match guard.check_request(config, request)? {
                RequestDecision::Allow => Verdict::Allow,
                RequestDecision::Deny(reason) => Verdict::Deny(reason),
                RequestDecision::Rewrite(rewritten) => Verdict::Rewrite(rewritten),
            })
        })
    }

    /// Runs the response guards on the model's answer to `request`; returns
    /// the response the caller is to see.
    pub fn check_response(
        &self,
        request: &InferRequest,
        response: InferResponse,
    ) -> Result<InferResponse, ChainStop> {
        let chain = &self.model.policy().guards.response;
        self.run(
            chain,
            Stage::Response,
            response,
            |guard, config, response| {
                Ok(match guard.check_response(config, request, response)? {
                    ResponseDecision::Allow => Verdict::Allow,
                    ResponseDecision::Deny(reason) => Verdict::Deny(reason),
                    ResponseDecision::Rewrite(rewritten) => Verdict::Rewrite(rewritten),
                })
            },
        )
    }

    /// Passes `value` through the guards of `chain` in order, each call
    /// recorded; the first denial or failure stops it.
    fn run<T>(
        &self,
        chain: &[GuardRef],
        stage: Stage,
        mut value: T,
        check: impl Fn(&LoadedGuard, &str, &T) -> Result<Verdict<T>, GuardError>,
    ) -> Result<T, ChainStop> {
        for step in chain {
            let guard = self.resolve(step, stage)?;
            let started = Instant::now();
            let verdict = check(&guard, step.config_text(), &value);
            let outcome = match &verdict {
                Ok(Verdict::Allow) => Outcome::Allow,
                Ok(Verdict::Deny(_)) => Outcome::Deny,
                Ok(Verdict::Rewrite(_)) => Outcome::Rewrite,
                Err(_) => Outcome::Error,
            };
            self.record(&guard, stage, outcome, started);
            match verdict {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Rewrite(rewritten)) => value = rewritten,
                Ok(Verdict::Deny(reason)) => {
                    return Err(ChainStop::Denied {
                        guard: step.name.clone(),
                        stage,
                        reason,
                    });
                }
                Err(error) => {
                    return Err(ChainStop::Failed {
                        guard: step.name.clone(),
                        stage,
                        error,
                    });
                }
            }
        }
        Ok(value)
    }

    fn resolve(
        &self,
        step: &GuardRef,
        stage: Stage,
    ) -> Result<std::sync::Arc<LoadedGuard>, ChainStop> {
        let guard = match &step.version {
            Some(version) => self.guards.version(&step.name, version),
            None => self.guards.active(&step.name),
        };
        guard.ok_or_else(|| {
            self.log.record(
                self.model.name(),
                self.model.version(),
                &step.name,
                "",
                stage,
                Outcome::Error,
                std::time::Duration::ZERO,
            );
            self.model.stats().record_guard(
                &step.name,
                stage,
                Outcome::Error,
                std::time::Duration::ZERO,
            );
            ChainStop::Missing {
                guard: step.name.clone(),
                stage,
            }
        })
    }

    fn record(&self, guard: &LoadedGuard, stage: Stage, outcome: Outcome, started: Instant) {
        let elapsed = started.elapsed();
        self.log.record(
            self.model.name(),
            self.model.version(),
            guard.name(),
            guard.version(),
            stage,
            outcome,
            elapsed,
        );
        self.model
            .stats()
            .record_guard(guard.name(), stage, outcome, elapsed);
    }
}

/// Whether `rewritten` has the structure of `original` (see
/// [`LoadedGuard::check_request`]).
fn same_request_structure(original: &InferRequest, rewritten: &InferRequest) -> Result<(), String> {
    same_tensors("input", &original.inputs, &rewritten.inputs)?;
    if original.outputs != rewritten.outputs {
        return Err("the requested outputs changed".into());
    }
    Ok(())
}

fn same_tensors(kind: &str, original: &[Tensor], rewritten: &[Tensor]) -> Result<(), String> {
    if original.len() != rewritten.len() {
        return Err(format!(
            "{} {kind}s became {}",
            original.len(),
            rewritten.len()
        ));
    }
    for (a, b) in original.iter().zip(rewritten) {
        if a.name != b.name {
            return Err(format!("{kind} {:?} became {:?}", a.name, b.name));
        }
        if a.shape != b.shape {
            return Err(format!(
                "{kind} {:?}: shape {:?} became {:?}",
                a.name, a.shape, b.shape
            ));
        }
        if a.data.datatype() != b.data.datatype() {
            return Err(format!(
                "{kind} {:?}: datatype {} became {}",
                a.name,
                a.data.datatype().as_str(),
                b.data.datatype().as_str()
            ));
        }
        let expected = a.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
        if expected != u64::try_from(b.data.len()).ok() {
            return Err(format!(
                "{kind} {:?}: {} elements for shape {:?}",
                a.name,
                b.data.len(),
                b.shape
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::TensorData;

    fn request(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest {
            id: None,
            parameters: Vec::new(),
            inputs,
            outputs: vec!["out".into()],
        }
    }

    fn text(name: &str, elements: &[&str]) -> Tensor {
        Tensor {
            name: name.into(),
            shape: vec![elements.len() as u64],
            data: TensorData::Bytes(elements.iter().map(|e| e.as_bytes().to_vec()).collect()),
        }
    }

    #[test]
    fn rewrites_may_change_contents_not_structure() {
        let original = request(vec![text("text", &["a@b.io", "hi"])]);
        let redacted = request(vec![text("text", &["[EMAIL]", "hi"])]);
        assert_eq!(same_request_structure(&original, &redacted), Ok(()));

        let renamed = request(vec![text("other", &["x", "y"])]);
        let fewer = request(vec![text("text", &["x"])]);
        let mut retyped = request(vec![text("text", &["x", "y"])]);
        retyped.inputs[0].data = TensorData::Uint8(vec![1, 2]);
        let mut short = request(vec![text("text", &["x", "y"])]);
        short.inputs[0].data = TensorData::Bytes(vec![b"x".to_vec()]);
        let mut outputs = request(vec![text("text", &["x", "y"])]);
        outputs.outputs.clear();
        for (bad, want) in [
            (renamed, "became \"other\""),
            (fewer, "shape [2] became [1]"),
            (retyped, "datatype BYTES became UINT8"),
            (short, "1 elements for shape [2]"),
            (outputs, "requested outputs changed"),
            (request(Vec::new()), "1 inputs became 0"),
        ] {
            let err = same_request_structure(&original, &bad).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
