//! Model lifecycle: upload, activate, roll back, delete, load, unload.
//!
//! Everything is validated (compiled, linked, `metadata()` answered within
//! the deadline) before anything is stored. Then the blob is written, then
//! the index, each atomically; only then is the registry swapped. A crash at
//! any point leaves the previous state serving after a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Host;
use crate::artifacts::CacheOutcome;
use crate::digest::sha256_hex;
use crate::guard::LoadedGuard;
use crate::manifest::{Manifest, Policy};
use crate::model::{LoadError, LoadedModel};
use crate::registry::{Registry, Versioned};
use crate::store::{IndexRead, Kind, ModelIndex, VersionRecord};

/// How many times an index change is redone when other hosts keep
/// changing the same index in between (each retry means another host's
/// change went in, so the system as a whole made progress).
const INDEX_WRITE_ATTEMPTS: u32 = 16;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The upload is not an acceptable model (400).
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// A bad argument, such as an invalid name (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such model or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The upload's signature is missing or not from a trusted key (403).
    #[error(transparent)]
    Signature(#[from] crate::signing::SignatureError),
    /// Reading or writing the store failed (500).
    #[error("storage error: {0:#}")]
    Storage(#[from] anyhow::Error),
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct UploadReport {
    /// The model name.
    pub name: String,
    /// The version assigned (or the existing one, for identical bytes).
    pub version: String,
    /// A model, or a guard (world `policy`).
    pub kind: Kind,
    /// sha256 of the component.
    pub sha256: String,
    /// Whether a new version was created (false: these bytes were already
    /// stored as `version`).
    pub created: bool,
    /// Whether the version is now the active one.
    pub active: bool,
    /// Whether compiling was needed or the artifact was cached.
    pub cache: CacheOutcome,
    /// Time from bytes to serving.
    pub elapsed: Duration,
}

/// A new version, as uploaded.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// The component (or WASI preview 1 command module) bytes.
    pub wasm: &'a [u8],
    /// The manifest uploaded with it (policy; metadata for a command).
    pub manifest: Option<&'a Manifest>,
    /// Make it the active version.
    pub activate: bool,
    /// Detached signature (hex), from `airlock sign`.
    pub signature: Option<&'a str>,
}

/// One model's state, for listings.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    /// The stored index.
    pub index: ModelIndex,
    /// Whether it is being served now.
    pub serving: bool,
    /// Its stored index could not be read (the error is in the log); `index`
    /// is then an empty one of that name.
    pub unreadable: bool,
}

impl Host {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the index of `name` as a compare-and-swap: reads it with its
    /// tag, lets `change` edit it (`None`: there is none yet), writes it
    /// back only if nobody else wrote it meanwhile, and otherwise starts
    /// over from the fresh index. The write lock serialises this host's
    /// writers; the conditional write is what protects against other hosts
    /// on the same store (Lambda instances on one bucket). `change` must
    /// be a pure function of the index it is given: it may run again.
    fn update_index<T>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<ModelIndex>) -> Result<(ModelIndex, T), RepoError>,
    ) -> Result<(ModelIndex, T), RepoError> {
        for attempt in 1..=INDEX_WRITE_ATTEMPTS {
            let (current, tag) = match self.store.read_index_if_changed(name, None)? {
                IndexRead::Changed { index, tag } => (Some(index), Some(tag)),
                IndexRead::Missing => (None, None),
                IndexRead::Unchanged => {
                    return Err(anyhow::anyhow!(
                        "the store answered an unconditional read of {name:?} with `unchanged`"
                    )
                    .into());
                }
            };
            let (index, out) = change(current)?;
            if self.store.write_index_if(&index, tag.as_deref())? {
                return Ok((index, out));
            }
            tracing::info!(
                model = name,
                attempt,
                "another host changed the index meanwhile; redoing the change"
            );
            // Spread out hosts that collided so that they do not collide
            // again in lockstep: a few ms, growing, with jitter.
            std::thread::sleep(Duration::from_micros(jitter() % (1000 << attempt.min(6))));
        }
        Err(RepoError::Conflict(format!(
            "the index of model {name:?} kept changing under this write \
             ({INDEX_WRITE_ATTEMPTS} attempts); try again"
        )))
    }

    /// [`Host::update_index`] for a model that must exist.
    fn update_existing<T>(
        &self,
        name: &str,
        mut change: impl FnMut(&mut ModelIndex) -> Result<T, RepoError>,
    ) -> Result<(ModelIndex, T), RepoError> {
        crate::validate_model_name(name).map_err(RepoError::BadRequest)?;
        self.update_index(name, |index| {
            let mut index =
                index.ok_or_else(|| RepoError::NotFound(format!("unknown model {name:?}")))?;
            let out = change(&mut index)?;
            Ok((index, out))
        })
    }

    /// Uploads `wasm` as a new version of `name`, with no manifest and no
    /// signature. The version is made active when `activate` is set or when
    /// it is the model's first.
    pub fn upload(
        &self,
        name: &str,
        wasm: &[u8],
        activate: bool,
    ) -> Result<UploadReport, RepoError> {
        self.upload_with(
            name,
            Upload {
                wasm,
                manifest: None,
                activate,
                signature: None,
            },
        )
    }

    /// Uploads a new version of `name`. The signature, when one is required
    /// (by the configuration, or by the policy of the model's active version
    /// or of this upload's manifest) or offered, is checked before anything
    /// is compiled or stored.
    pub fn upload_with(&self, name: &str, upload: Upload<'_>) -> Result<UploadReport, RepoError> {
        let Upload {
            wasm,
            manifest,
            activate,
            signature,
        } = upload;
        let started = std::time::Instant::now();
        crate::validate_model_name(name).map_err(RepoError::BadRequest)?;
        if wasm.is_empty() {
            return Err(RepoError::BadRequest("the upload is empty".into()));
        }
        let current = self.store.read_index(name)?;
        let required = self.config.require_signatures
            || current.as_ref().is_some_and(active_requires_signatures)
            || manifest.is_some_and(|m| m.require_signatures);
        let keys = &self.config.trusted_keys;
        // (key that verified it, the signature), kept in the index entry.
        let signed = match signature {
            Some(signature) if !keys.is_empty() => {
                let subject = crate::signing::Subject::new(wasm, manifest);
                let key = keys.verify(&subject, signature)?;
                Some((key, signature.trim().to_ascii_lowercase()))
            }
            None if required => {
                return Err(crate::signing::SignatureError::Missing.into());
            }
            Some(_) if required => {
                return Err(RepoError::BadRequest(
                    "this model requires signed uploads, but the server trusts no keys".into(),
                ));
            }
            _ => None,
        };
        let policy = self.policy_for(manifest)?;
        let digest = sha256_hex(wasm);

        // Identical bytes and manifest already stored: nothing to compile or
        // write (unless this upload brings a signature the stored one lacks).
        if let Some(index) = &current
            && let Some(existing) = index.versions.iter().find(|v| {
                v.sha256 == digest
                    && v.manifest.as_ref() == manifest
                    && (signed.is_none() || v.signature.is_some())
            })
        {
            let version = existing.version.clone();
            let active = if activate {
                self.activate(name, &version)?;
                true
            } else {
                index.active.as_deref() == Some(version.as_str())
            };
            return Ok(UploadReport {
                name: name.to_owned(),
                version,
                kind: index.kind,
                sha256: digest,
                created: false,
                active,
                cache: CacheOutcome::Hit,
                elapsed: started.elapsed(),
            });
        }

        // A guard (world `policy`) is stored and loaded like a model, under a
        // name of its own; models name it in their manifests' `guards`.
        let kind = if crate::guard::is_guard_component(wasm) {
            Kind::Guard
        } else {
            Kind::Model
        };
        if let Some(index) = &current
            && index.kind != kind
        {
            return Err(RepoError::Conflict(format!(
                "{name:?} holds {}s; this upload is a {}: give it a name of its own",
                index.kind.as_str(),
                kind.as_str()
            )));
        }
        match (kind, manifest) {
            (Kind::Guard, Some(manifest)) => {
                manifest.check_for_guard().map_err(RepoError::BadRequest)?;
            }
            (Kind::Model, Some(manifest)) => self.check_guards_exist(manifest)?,
            (_, None) => {}
        }

        // Validate fully, outside the lock: this may compile for seconds.
        // The version number is only a label here; it is fixed under the lock.
        let had_artifact = self.cache.contains(&digest);
        let probe = match kind {
            Kind::Model => LoadedModel::load(
                &self.runtime,
                &self.cache,
                name,
                "0",
                wasm,
                manifest,
                policy,
            )
            .map(|(model, report)| (Loaded::Model(Box::new(model)), report)),
            Kind::Guard => {
                LoadedGuard::load(&self.runtime, &self.cache, name, "0", wasm, policy.limits)
                    .map(|(guard, report)| (Loaded::Guard(Box::new(guard)), report))
            }
        };
        let (probe, report) = match probe {
            Ok(ok) => ok,
            Err(error) => {
                if !had_artifact {
                    self.cache.remove(&digest);
                }
                return Err(error.into());
            }
        };

        let _guard = self.lock();
        // The blob first: a version exists once its index entry does.
        self.store.put_blob(wasm)?;
        let uploaded_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let model_version = match &probe {
            Loaded::Model(model) => model.metadata().version.clone(),
            Loaded::Guard(_) => String::new(),
        };
        let (index, (version, make_active)) = self.update_index(name, |index| {
            let mut index = index.unwrap_or_else(|| ModelIndex {
                kind,
                ..ModelIndex::new(name)
            });
            if index.kind != kind {
                return Err(RepoError::Conflict(format!(
                    "{name:?} now holds {}s; this upload is a {}",
                    index.kind.as_str(),
                    kind.as_str()
                )));
            }
            let version = index.next_version.to_string();
            index.next_version += 1;
            index.versions.push(VersionRecord {
                version: version.clone(),
                sha256: digest.clone(),
                size: wasm.len() as u64,
                uploaded_unix,
                model_version: model_version.clone(),
                signed_by: signed.as_ref().map(|(key, _)| key.clone()),
                signature: signed.as_ref().map(|(_, signature)| signature.clone()),
                manifest: manifest.cloned(),
            });
            let make_active = activate || index.active.is_none();
            if make_active {
                index.activate(&version);
            }
            Ok((index, (version, make_active)))
        })?;
        if index.loaded {
            match probe {
                Loaded::Model(model) => {
                    self.registry
                        .insert(Arc::new((*model).relabel(&version)), make_active);
                }
                Loaded::Guard(guard) => {
                    self.guards
                        .insert(Arc::new((*guard).relabel(&version)), make_active);
                }
            }
            // Signatures required now (by the server or by the active
            // version, perhaps this one): the versions whose signature
            // does not hold stop being served. Nothing is loaded again.
            if self.config.require_signatures || active_requires_signatures(&index) {
                self.publish(&index)?;
            }
        }
        tracing::info!(
            model = name,
            kind = kind.as_str(),
            version = %version,
            sha256 = %digest,
            active = make_active,
            cache = ?report.cache,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "model version uploaded"
        );
        Ok(UploadReport {
            name: name.to_owned(),
            version,
            kind,
            sha256: digest,
            created: true,
            active: make_active,
            cache: report.cache,
            elapsed: started.elapsed(),
        })
    }

    /// Makes `version` the active version of `name`. While signatures are
    /// required (see [`Host::check_signature`]), only a version whose stored
    /// signature verifies may become active.
    pub fn activate(&self, name: &str, version: &str) -> Result<(), RepoError> {
        let _guard = self.lock();
        let (index, ()) = self.update_existing(name, |index| {
            let Some(record) = index.version(version) else {
                return Err(RepoError::NotFound(format!(
                    "model {name:?} has no version {version:?}"
                )));
            };
            self.check_signature(name, record, active_requires_signatures(index))?;
            index.activate(version);
            Ok(())
        })?;
        self.publish(&index)?;
        Ok(())
    }

    /// Re-activates the previously active version of `name`; returns it.
    /// Refused, as [`Host::activate`] is, when signatures are required and
    /// that version's stored signature does not verify.
    pub fn rollback(&self, name: &str) -> Result<String, RepoError> {
        let _guard = self.lock();
        let (index, version) = self.update_existing(name, |index| {
            // Judged by the version rolled back from, as an activation is.
            let active_requires = active_requires_signatures(index);
            let version = index.rollback().ok_or_else(|| {
                RepoError::Conflict(format!(
                    "model {name:?} has no previous version to roll back to"
                ))
            })?;
            if let Some(record) = index.version(&version) {
                self.check_signature(name, record, active_requires)?;
            }
            Ok(version)
        })?;
        self.publish(&index)?;
        Ok(version)
    }

    /// Deletes a version that is not active.
    pub fn delete_version(&self, name: &str, version: &str) -> Result<(), RepoError> {
        let _guard = self.lock();
        let (index, record) = self.update_existing(name, |index| {
            let Some(record) = index.version(version).cloned() else {
                return Err(RepoError::NotFound(format!(
                    "model {name:?} has no version {version:?}"
                )));
            };
            if index.active.as_deref() == Some(version) {
                return Err(RepoError::Conflict(format!(
                    "version {version:?} of {name:?} is active; activate another version first"
                )));
            }
            index.versions.retain(|v| v.version != version);
            index.history.retain(|v| v != version);
            Ok(record)
        })?;
        self.publish(&index)?;
        if !self.store.list()?.iter().any(|other| {
            // An unreadable index may refer to it: kept, to be safe.
            self.store.read_index(other).map_or(true, |i| {
                i.is_some_and(|i| i.versions.iter().any(|v| v.sha256 == record.sha256))
            })
        }) {
            self.store.delete_blob(&record.sha256)?;
        }
        Ok(())
    }

    /// Stops serving `name` (it stays stored; `load` serves it again).
    pub fn unload(&self, name: &str) -> Result<(), RepoError> {
        let _guard = self.lock();
        self.update_existing(name, |index| {
            index.loaded = false;
            Ok(())
        })?;
        self.unpublish(name);
        Ok(())
    }

    /// Serves `name` again from the store.
    pub fn load_model(&self, name: &str) -> Result<(), RepoError> {
        let _guard = self.lock();
        // Served first, so that a model that no longer loads stays unloaded
        // (publishing again on a retry reuses what is loaded).
        self.update_existing(name, |index| {
            index.loaded = true;
            self.publish(index)
        })?;
        Ok(())
    }

    /// Every stored model and whether it is served.
    pub fn list(&self) -> Result<Vec<ModelStatus>, RepoError> {
        let mut all = Vec::new();
        for name in self.store.list()? {
            match self.store.read_index(&name) {
                Ok(Some(index)) => {
                    let serving = match index.kind {
                        Kind::Model => self.registry.entry(&name).is_some(),
                        Kind::Guard => self.guards.entry(&name).is_some(),
                    };
                    all.push(ModelStatus {
                        index,
                        serving,
                        unreadable: false,
                    });
                }
                Ok(None) => {}
                // Listed for what it is, without failing the whole listing.
                Err(error) => {
                    tracing::error!(model = %name, error = format!("{error:#}"), "failed to read a model index");
                    all.push(ModelStatus {
                        index: ModelIndex::new(&name),
                        serving: self.registry.entry(&name).is_some()
                            || self.guards.entry(&name).is_some(),
                        unreadable: true,
                    });
                }
            }
        }
        Ok(all)
    }

    /// Serves every loaded model of the store, as it was left. Returns the
    /// names served.
    pub fn restore(&self) -> Result<Vec<String>, RepoError> {
        let _guard = self.lock();
        let mut served = Vec::new();
        for name in self.store.list()? {
            // An unreadable index is skipped (and logged), not fatal: the
            // other models are served all the same.
            let index = match self.store.read_index(&name) {
                Ok(Some(index)) => index,
                Ok(None) => continue,
                Err(error) => {
                    tracing::error!(model = %name, error = format!("{error:#}"), "failed to read a model index; the model is not served");
                    continue;
                }
            };
            if index.loaded && index.active.is_some() {
                match self.publish(&index) {
                    // Refused (and logged) for its signature: the others
                    // are served all the same.
                    Err(RepoError::Signature(_)) => continue,
                    other => other?,
                }
                served.push(name);
            }
        }
        Ok(served)
    }

    /// The server's default policy: what a model without a manifest gets.
    pub fn default_policy(&self) -> Policy {
        Policy {
            limits: self.config.limits,
            max_request_bytes: self.config.max_body_bytes,
            max_elements: self.config.request_limits.max_elements,
            max_concurrency: None,
            api_keys: Vec::new(),
            require_signatures: self.config.require_signatures,
            guards: Default::default(),
        }
    }

    /// The policy a model with `manifest` gets on this server.
    fn policy_for(&self, manifest: Option<&Manifest>) -> Result<Policy, RepoError> {
        let defaults = self.default_policy();
        let Some(manifest) = manifest else {
            return Ok(defaults);
        };
        let policy = manifest.policy(&defaults);
        let ceiling = self.config.engine.max_memory_bytes;
        if policy.limits.memory_bytes > ceiling {
            return Err(RepoError::BadRequest(format!(
                "manifest field `memory_mib` asks for {} MiB; this server allows at most {} MiB",
                policy.limits.memory_bytes >> 20,
                ceiling >> 20
            )));
        }
        if policy.max_request_bytes > self.config.max_body_bytes {
            return Err(RepoError::BadRequest(format!(
                "manifest field `max_request_bytes` is {}; this server accepts bodies of at most {} bytes",
                policy.max_request_bytes, self.config.max_body_bytes
            )));
        }
        Ok(policy)
    }

    /// Checks the stored signature of `record`, a version of model `name`,
    /// when the model requires signatures; `active_requires` says whether
    /// the manifest of its active version does.
    ///
    /// A version must carry a signature that verifies when any of these
    /// holds:
    /// - the server requires signatures (`--require-signatures`): every
    ///   version of every model and guard;
    /// - the manifest of the model's active version says
    ///   `require_signatures = true` (the active version's policy governs
    ///   the name, as it does for uploads and version routes);
    /// - the version's own manifest says so.
    ///
    /// "Verifies" means: a signature is stored, it is of the current format
    /// (component and manifest, see [`crate::signing`]), and the key the
    /// index names as `signed_by` is still trusted by this server and
    /// verifies it over the stored digest and manifest. A signature is
    /// stored in the index, and the index is writable by whoever writes the
    /// store: against such a writer only the server flag is a guarantee (a
    /// per-model requirement is itself in the index), while the signature
    /// still binds what the signer approved (bytes, and policy).
    pub fn check_signature(
        &self,
        name: &str,
        record: &VersionRecord,
        active_requires: bool,
    ) -> Result<(), crate::signing::SignatureError> {
        use crate::signing::{SignatureError, Subject};
        let required = self.config.require_signatures
            || active_requires
            || record
                .manifest
                .as_ref()
                .is_some_and(|m| m.require_signatures);
        if !required {
            return Ok(());
        }
        let checked = match (&record.signature, &record.signed_by) {
            (Some(signature), Some(signed_by)) => {
                Subject::stored(&record.sha256, record.manifest.as_ref()).and_then(|subject| {
                    self.config
                        .trusted_keys
                        .verify_by(signed_by, &subject, signature)
                })
            }
            (Some(_), None) => Err(SignatureError::Untrusted),
            (None, _) => Err(SignatureError::Unsigned),
        };
        checked.map_err(|reason| SignatureError::Stored {
            name: name.to_owned(),
            version: record.version.clone(),
            reason: Box::new(reason),
        })
    }

    /// `index` with only the versions that may be served (see
    /// [`Host::publish`]).
    fn servable(&self, index: &ModelIndex) -> Result<ModelIndex, RepoError> {
        let active_requires = active_requires_signatures(index);
        let mut servable = index.clone();
        let mut active_refused = None;
        servable.versions.retain(|record| {
            let Err(error) = self.check_signature(&index.name, record, active_requires) else {
                return true;
            };
            tracing::error!(
                model = %index.name,
                version = %record.version,
                error = %error,
                "stored version refused: not served"
            );
            if index.active.as_deref() == Some(record.version.as_str()) {
                active_refused = Some(error);
            }
            false
        });
        match active_refused {
            Some(error) => Err(error.into()),
            None => Ok(servable),
        }
    }

    /// Refuses a model manifest naming a guard (or a pinned guard version)
    /// that the store does not hold. Read from the store, not this host's
    /// registry: on Lambda another instance may have taken the guard's
    /// upload a moment ago.
    fn check_guards_exist(&self, manifest: &Manifest) -> Result<(), RepoError> {
        for (stage, chain) in [
            ("request", &manifest.guards.request),
            ("response", &manifest.guards.response),
        ] {
            for (i, step) in chain.iter().enumerate() {
                let field = format!("manifest field `guards.{stage}[{i}]`");
                let index = self.store.read_index(&step.name)?;
                match index {
                    Some(index) if index.kind == Kind::Guard => {
                        if let Some(version) = &step.version
                            && index.version(version).is_none()
                        {
                            return Err(RepoError::BadRequest(format!(
                                "{field}: guard {:?} has no version {version:?}",
                                step.name
                            )));
                        }
                    }
                    Some(_) => {
                        return Err(RepoError::BadRequest(format!(
                            "{field}: {:?} is a model, not a guard",
                            step.name
                        )));
                    }
                    None => {
                        return Err(RepoError::BadRequest(format!(
                            "{field}: no guard named {:?} has been uploaded",
                            step.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops serving `name`, model or guard.
    pub(crate) fn unpublish(&self, name: &str) {
        self.registry.replace(name, Vec::new(), None);
        self.guards.replace(name, Vec::new(), None);
    }

    /// Makes the registry match `index`: every version loaded (reusing the
    /// ones already in memory), the active one answering by default.
    ///
    /// While signatures are required (see [`Host::check_signature`]), a
    /// version whose stored signature does not verify is not served (and
    /// the refusal is logged); when that is the active version, nothing of
    /// the model is published and the error says why. This runs on every
    /// load: a process start, a store refresh, `load`, `activate`.
    pub(crate) fn publish(&self, index: &ModelIndex) -> Result<(), RepoError> {
        if !index.loaded {
            self.unpublish(&index.name);
            return Ok(());
        }
        let index = &self.servable(index)?;
        match index.kind {
            Kind::Model => publish_into(&self.registry, index, &*self.store, |record, fetch| {
                let policy = self.policy_for(record.manifest.as_ref())?;
                LoadedModel::load_stored(
                    &self.runtime,
                    &self.cache,
                    &index.name,
                    record,
                    fetch,
                    policy,
                )
                .map(|(model, _)| model)
                .map_err(RepoError::from)
            }),
            Kind::Guard => publish_into(&self.guards, index, &*self.store, |record, fetch| {
                let policy = self.policy_for(record.manifest.as_ref())?;
                LoadedGuard::load_stored(
                    &self.runtime,
                    &self.cache,
                    &index.name,
                    record,
                    fetch,
                    policy.limits,
                )
                .map(|(guard, _)| guard)
                .map_err(RepoError::from)
            }),
        }
    }
}

/// Whether the manifest of the active version of the model `index`
/// describes says `require_signatures = true`.
fn active_requires_signatures(index: &ModelIndex) -> bool {
    index
        .active
        .as_deref()
        .and_then(|active| index.version(active))
        .and_then(|record| record.manifest.as_ref())
        .is_some_and(|m| m.require_signatures)
}

/// What an upload turned out to be, loaded.
enum Loaded {
    Model(Box<LoadedModel>),
    Guard(Box<LoadedGuard>),
}

/// Makes `registry` match `index`: every version loaded with `load`
/// (reusing the ones already in memory with the same digest), the active
/// one answering by default. `load` gets the way to read a version's bytes
/// from the store, needed only when its compiled artifact is not cached.
fn publish_into<T: Versioned>(
    registry: &Registry<T>,
    index: &ModelIndex,
    store: &dyn crate::store::Store,
    load: impl Fn(&VersionRecord, &dyn Fn() -> anyhow::Result<Vec<u8>>) -> Result<T, RepoError>,
) -> Result<(), RepoError> {
    let current = registry.entry(&index.name);
    let mut loaded = Vec::with_capacity(index.versions.len());
    for record in &index.versions {
        let reused = current
            .as_ref()
            .and_then(|e| e.versions.get(&record.version))
            .filter(|m| m.digest() == record.sha256)
            .cloned();
        let item = match reused {
            Some(item) => item,
            None => {
                let item = load(record, &|| store.get_blob(&record.sha256)).map_err(|e| {
                    RepoError::Storage(anyhow::anyhow!(
                        "stored version {} of {:?} no longer loads: {e}",
                        record.version,
                        index.name
                    ))
                })?;
                Arc::new(item)
            }
        };
        loaded.push(item);
    }
    registry.replace(&index.name, loaded, index.active.as_deref());
    Ok(())
}

/// A random number for retry jitter: std's per-process random hash keys
/// over the clock and the thread (no need for a random-number crate).
fn jitter() -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::thread::current().id().hash(&mut hasher);
    SystemTime::now().hash(&mut hasher);
    hasher.finish()
}
