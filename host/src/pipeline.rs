//! The inference pipeline, with no transport in it: the REST router, the
//! Lambda adapter (through the router) and the benches run a request
//! through the same steps, and each transport only maps its own framing
//! and statuses onto [`InferError`].
//!
//! It runs in two parts, so that a transport can refuse a caller before it
//! reads a byte of the body:
//!
//! 1. [`Host::prepare_infer`], on the request head: the model (its active
//!    version, or the version named) and the caller's API key. Cheap; it
//!    gives the body limit the transport reads against.
//! 2. [`InferCall::run`], on the body the transport has read and charged
//!    to [`Host::request_budget`]: admission (the model's concurrency),
//!    parsing and validation, the request guards, the model, the response
//!    guards, the output checks and serialisation. Synchronous and
//!    CPU-bound: an async transport runs it off its executor.
//!
//! ```no_run
//! # fn demo(host: &airlock::Host, body: bytes::Bytes) -> Result<(), airlock::pipeline::InferError> {
//! let call = host.prepare_infer("digits", None, None)?;
//! let mut reservation = host.request_budget().reservation();
//! reservation.try_grow(body.len())?;
//! let output = call.run(body, None, reservation)?;
//! println!("{}", String::from_utf8_lossy(&output.bytes));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use bytes::Bytes;

use crate::Host;
use crate::bindings::{GuestError, InferResponse};
use crate::budget::{Exhausted, Reservation};
use crate::decisions::DecisionLog;
use crate::guard::{ChainStop, Chains, LoadedGuard};
use crate::model::LoadedModel;
use crate::oip::{self, BadRequest, InferResponseBody, RequestLimits, ResponseError};
use crate::registry::Registry;
use crate::sandbox::GuestFailure;

/// Why an inference was refused or failed, whatever carried it. The
/// messages of client errors are for the caller; the details of the
/// others are for the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// The request is malformed or does not fit the model.
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version.
    #[error("{0}")]
    NotFound(String),
    /// The model needs an API key and none was presented.
    #[error("{0}")]
    Unauthorized(String),
    /// The key presented may not call the model.
    #[error("{0}")]
    Forbidden(String),
    /// The body is over the limit ([`InferCall::body_limit`]).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The model already runs as many requests as its policy allows.
    #[error("model {model:?} is at its limit of {limit} concurrent requests; retry later")]
    Busy {
        /// The model.
        model: String,
        /// Its `max_concurrency`.
        limit: u32,
    },
    /// The host holds as much request data as its memory budget allows.
    #[error(transparent)]
    Overloaded(#[from] Exhausted),
    /// The model refused the input (its `invalid-input`/`unsupported`).
    #[error("model {model:?} rejected the request: {message}")]
    ModelRejected {
        /// The model.
        model: String,
        /// The model's message.
        message: String,
    },
    /// The model returned an internal error, or an answer that does not
    /// fit its metadata or the request.
    #[error("model {model:?} failed")]
    ModelFailed {
        /// The model.
        model: String,
        /// For the log, never for the caller.
        detail: String,
    },
    /// The sandbox stopped the model.
    #[error("model {model:?}: {failure}")]
    Sandbox {
        /// The model.
        model: String,
        /// What happened.
        failure: GuestFailure,
    },
    /// A guard of the model's policy denied, failed or is not loaded.
    #[error(transparent)]
    Guard(#[from] ChainStop),
    /// A bug or an I/O error on the host's side.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<BadRequest> for InferError {
    fn from(e: BadRequest) -> Self {
        InferError::BadRequest(e.0)
    }
}

/// A serialised answer: the JSON response, or with the binary tensor data
/// extension the JSON header followed by the tensors' bytes.
#[derive(Debug)]
pub struct InferOutput {
    /// The body.
    pub bytes: Vec<u8>,
    /// With binary outputs, how many leading bytes of `bytes` are the JSON
    /// header (the `Inference-Header-Content-Length` of the REST
    /// extension); `None` for a plain JSON answer.
    pub json_len: Option<usize>,
}

/// An inference the caller may make, prepared on the request head by
/// [`Host::prepare_infer`]; [`InferCall::run`] runs it on the body.
pub struct InferCall {
    model: Arc<LoadedModel>,
    guards: Arc<Registry<LoadedGuard>>,
    decisions: Arc<DecisionLog>,
    limits: RequestLimits,
    body_limit: usize,
    server_limit: usize,
}

impl Host {
    /// The model that answers a request to `name` (its active version) or
    /// to `name` version `version`. A version that is not the active one
    /// comes confined by the active version's policy ([`Registry::version`],
    /// see [`crate::registry::stricter_policy`]): its `policy()` is the one
    /// the request is held to, keys, guards and limits alike, so everything
    /// that reads the policy of the model it is given (authorisation,
    /// admission, guards) applies the stricter rule with nothing more to do.
    pub fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, InferError> {
        let registry = self.registry();
        let found = match version {
            None => registry.active(name),
            Some(v) => registry.version(name, v),
        };
        found.ok_or_else(|| match version {
            None => InferError::NotFound(format!("unknown model {name:?}")),
            Some(v) => InferError::NotFound(format!("unknown model {name:?} version {v:?}")),
        })
    }

    /// The first part of an inference, on the request head: finds the
    /// model ([`Host::lookup`]) and checks the caller's API key
    /// (`credentials`, as [`authorize`] takes it). Nothing of the body is
    /// needed, so a transport refuses a caller before reading it.
    pub fn prepare_infer(
        &self,
        name: &str,
        version: Option<&str>,
        credentials: Option<&str>,
    ) -> Result<InferCall, InferError> {
        let model = self.lookup(name, version)?;
        self.prepare_call(model, credentials)
    }

    /// [`Host::prepare_infer`] for a model already looked up: checks the
    /// caller's API key against it.
    pub fn prepare_call(
        &self,
        model: Arc<LoadedModel>,
        credentials: Option<&str>,
    ) -> Result<InferCall, InferError> {
        authorize(&model, credentials)?;
        let config = self.config();
        let policy = model.policy();
        let limits = RequestLimits {
            max_elements: policy.max_elements,
            ..config.request_limits
        };
        Ok(InferCall {
            body_limit: policy.max_request_bytes.min(config.max_body_bytes),
            server_limit: config.max_body_bytes,
            limits,
            guards: Arc::clone(self.guards()),
            decisions: Arc::clone(self.decisions()),
            model,
        })
    }
}

/// Checks a caller's API key against the model's policy: any caller when
/// the policy lists no keys; else `credentials` (the key presented, if
/// any) whose sha256 is listed. Compared without early exit.
///
/// `model` as [`Host::lookup`] returns it: for a version route to an
/// inactive version its policy is already the stricter of that version's
/// and the active version's, so the one key presented must be accepted by
/// both.
pub fn authorize(model: &LoadedModel, credentials: Option<&str>) -> Result<(), InferError> {
    let allowed = &model.policy().api_keys;
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(presented) = credentials else {
        return Err(InferError::Unauthorized(format!(
            "model {:?} needs an API key: `Authorization: Bearer <key>`",
            model.name()
        )));
    };
    let hashed = crate::manifest::hash_key(presented);
    let mut matched = false;
    for key in allowed {
        matched |= crate::digest::digests_match(key.as_bytes(), hashed.as_bytes());
    }
    if matched {
        Ok(())
    } else {
        Err(InferError::Forbidden(format!(
            "this API key may not call model {:?}",
            model.name()
        )))
    }
}

impl InferCall {
    /// The model that runs the call.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// The largest body the call takes, in bytes: the smaller of the
    /// model's `max_request_bytes` and the host's `max_body_bytes`.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The refusal of a body over [`InferCall::body_limit`]: it names the
    /// model's limit when that is the smaller one, else the host's.
    pub fn too_large(&self) -> InferError {
        let limit = self.body_limit;
        InferError::PayloadTooLarge(if limit < self.server_limit {
            format!(
                "the request body is over model {:?}'s limit of {limit} bytes",
                self.model.name()
            )
        } else {
            format!("the request body is over the size limit of {limit} bytes")
        })
    }

    /// The second part of an inference, on the body: admission, parsing
    /// (`json_len` as [`oip::parse_infer`] takes it), the request guards,
    /// the model, the response guards, the output checks and
    /// serialisation. `reservation` holds the body's bytes (drawn on
    /// [`Host::request_budget`]); the parsed tensors are charged to it too,
    /// and it is held until the answer is bytes. Synchronous and CPU-bound.
    pub fn run(
        self,
        body: Bytes,
        json_len: Option<usize>,
        reservation: Reservation,
    ) -> Result<InferOutput, InferError> {
        let mut reservation = reservation;
        let model = &self.model;
        if body.len() > self.body_limit {
            return Err(self.too_large());
        }
        let Some(admission) = model.try_admit() else {
            return Err(InferError::Busy {
                model: model.name().to_owned(),
                limit: model.policy().max_concurrency.unwrap_or(u32::MAX),
            });
        };
        let limits = &self.limits;
        let oip::ParsedInfer { request, encoding } =
            oip::parse_infer(&body, json_len, model.metadata(), limits, &mut reservation).map_err(
                |e| match e {
                    oip::ParseError::Bad(e) => InferError::from(e),
                    oip::ParseError::Exhausted(e) => InferError::Overloaded(e),
                },
            )?;
        let body_len = body.len();
        drop(body);
        reservation.shrink(body_len);
        let chains = Chains::new(&self.guards, &self.decisions, model);
        let request = chains.check_request(request)?;
        let response = model_response(model, model.infer(&request))?;
        let response = chains.check_response(&request, response)?;
        drop(admission);
        let outputs = oip::check_response(response, model.metadata(), &request.outputs, limits)
            .map_err(|error| match error {
                ResponseError::TooLarge(_) => InferError::Sandbox {
                    model: model.name().to_owned(),
                    failure: GuestFailure::OutputTooLarge(error.to_string()),
                },
                _ => InferError::ModelFailed {
                    model: model.name().to_owned(),
                    detail: error.to_string(),
                },
            })?;
        let parameters = [("sha256", model.digest())];
        let body = InferResponseBody {
            model_name: model.name(),
            model_version: model.version(),
            id: request.id.as_deref(),
            parameters: &parameters,
            outputs: &outputs,
            encoding: &encoding,
        };
        let (bytes, json_len) = body
            .to_bytes()
            .map_err(|e| InferError::Internal(e.into()))?;
        drop(reservation);
        Ok(InferOutput { bytes, json_len })
    }
}

/// The model's answer, or the error it is for the caller.
fn model_response(
    model: &LoadedModel,
    outcome: Result<Result<InferResponse, GuestError>, GuestFailure>,
) -> Result<InferResponse, InferError> {
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(GuestError::InvalidInput(message) | GuestError::Unsupported(message))) => {
            Err(InferError::ModelRejected {
                model: model.name().to_owned(),
                message,
            })
        }
        Ok(Err(GuestError::Internal(detail) | GuestError::Other(detail))) => {
            Err(InferError::ModelFailed {
                model: model.name().to_owned(),
                detail,
            })
        }
        Err(failure) => Err(InferError::Sandbox {
            model: model.name().to_owned(),
            failure,
        }),
    }
}
