//! Compiled artifacts: the on-disk [`ArtifactCache`] (with its checksums),
//! its shared tier in a store and the [`ArtifactKey`] that authenticates
//! what is shared there, and the [`Artifact`] trait over components and
//! core modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::compile::{ArtifactKind, CompileError};
use crate::digest::is_sha256_hex;
use crate::engine::Runtime;
use crate::fsutil::write_atomic;
use crate::sandbox::Limits;

/// Compiled artifacts, kept on disk and keyed by the component's sha256 and
/// the engine's compatibility hash.
///
/// Layout: `<dir>/<engine-hash>/<sha256>.cwasm` plus a `.xxh3` sidecar with
/// a 128-bit XXH3 checksum of the `.cwasm` itself. An artifact is
/// deserialized only when its sidecar matches, so a truncated or corrupted
/// file is recompiled, never trusted. Only bytes this host compiled are ever
/// deserialized. (The checksum guards against corruption, not against
/// someone who can write the data directory, who could rewrite a sidecar
/// as easily; XXH3 because it is many times faster than sha256 on large
/// artifacts: docs/src/testing.md, "Artifact checksums and MACs".)
///
/// The local directory is trusted: it is this host's own disk, written only
/// by this host (like its binary and its data directory). Whoever can write
/// it can already run code as the host.
///
/// With a store that shares artifacts (S3), the cache has a second tier: a
/// local miss looks for the artifact in the store (under the same engine
/// hash), checks it, writes it to the local directory with its sidecar and
/// deserializes the local copy; an artifact compiled here is written to the
/// store as well, so one Lambda instance compiles and the others download.
/// A shared store is not this host's disk: anyone who can write its prefix
/// could hand every host native code. So a shared artifact carries a keyed
/// MAC (HMAC-SHA256, in the object's metadata) over its engine hash, the
/// component's digest and its bytes, with an [`ArtifactKey`] from the
/// host's configuration that is never stored beside the artifacts; one
/// whose MAC does not verify is ignored and compiled again (and the good
/// artifact shared in its place). A host without a key neither fetches nor
/// shares artifacts: it compiles everything itself (and says so at start).
/// The MAC's cost is paid only on a download or an upload, next to the
/// transfer itself (figures in docs/src/testing.md).
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_hash: String,
    shared: Option<(Arc<dyn crate::store::Store>, ArtifactKey)>,
}

/// The secret key of the MAC on compiled artifacts shared through a store
/// (see [`ArtifactCache`]): at least [`ArtifactKey::MIN_BYTES`] bytes, given
/// in hex in `AIRLOCK_ARTIFACT_KEY` (on Lambda the function's configuration,
/// where `infra` puts a random key on create and keeps it on update). Every
/// host sharing a store needs the same key. Its `Debug` form shows nothing.
#[derive(Clone)]
pub struct ArtifactKey(Arc<[u8]>);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(..)")
    }
}

impl ArtifactKey {
    /// The environment variable both binaries read the key from.
    pub const ENV: &'static str = "AIRLOCK_ARTIFACT_KEY";
    /// The shortest key accepted, in bytes.
    pub const MIN_BYTES: usize = 32;

    /// A key from its hex form (surrounding whitespace ignored). Errors
    /// never repeat the key.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| "the artifact key must be hex digits".to_owned())?;
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!(
                "the artifact key is {} bytes; at least {} are needed",
                bytes.len(),
                Self::MIN_BYTES
            ));
        }
        Ok(Self(bytes.into()))
    }

    /// The key in [`ArtifactKey::ENV`]: `None` when the variable is unset,
    /// an error when it is set but empty or not a valid key (a typo must not
    /// quietly turn artifact sharing off, nor run with a weak key).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{}: the artifact key must be hex digits", Self::ENV)
            }
            Ok(text) => Self::from_hex(&text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}: {e}", Self::ENV)),
        }
    }

    /// The MAC of a shared artifact: HMAC-SHA256 over a domain tag, the
    /// engine hash, the component digest and the artifact's bytes, so that
    /// an artifact cannot be passed off as another component's or another
    /// engine's.
    fn mac(&self, engine_hash: &str, digest: &str, bytes: &[u8]) -> hmac::Hmac<Sha256> {
        use hmac::Mac as _;
        let mut mac =
            <hmac::Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"airlock shared artifact v1\0");
        mac.update(engine_hash.as_bytes());
        mac.update(b"\0");
        mac.update(digest.as_bytes());
        mac.update(b"\0");
        mac.update(bytes);
        mac
    }

    /// The MAC (hex) a shared artifact of component `digest` compiled by
    /// engine `engine_hash` carries: HMAC-SHA256 over a domain tag, the
    /// engine hash, the digest and the artifact's bytes.
    pub fn sign(&self, engine_hash: &str, digest: &str, bytes: &[u8]) -> String {
        use hmac::Mac as _;
        hex::encode(self.mac(engine_hash, digest, bytes).finalize().into_bytes())
    }

    /// Whether `tag` (hex) is [`ArtifactKey::sign`]'s MAC of this artifact
    /// under this key, compared in constant time.
    pub fn verify(&self, engine_hash: &str, digest: &str, bytes: &[u8], tag: &str) -> bool {
        use hmac::Mac as _;
        hex::decode(tag.trim()).is_ok_and(|tag| {
            self.mac(engine_hash, digest, bytes)
                .verify_slice(&tag)
                .is_ok()
        })
    }
}

/// How a component was obtained from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid artifact was found and deserialized.
    Hit,
    /// No valid artifact: compiled now, and stored for next time.
    Compiled,
}

impl ArtifactCache {
    /// A cache under `root` for artifacts of `runtime`'s engine.
    pub fn new(root: &Path, runtime: &Runtime) -> Self {
        Self {
            dir: root.join(runtime.compat_hash()),
            engine_hash: runtime.compat_hash().to_owned(),
            shared: None,
        }
    }

    /// Adds `store` as a shared second tier, if it shares artifacts and
    /// there is a `key` to authenticate them with; without a key, shared
    /// artifacts are not trusted at all (logged once, here).
    pub fn with_shared(
        mut self,
        store: Arc<dyn crate::store::Store>,
        key: Option<ArtifactKey>,
    ) -> Self {
        if store.shares_artifacts() {
            match key {
                Some(key) => self.shared = Some((store, key)),
                None => tracing::warn!(
                    store = %store.location(),
                    "no artifact key ({}): compiled artifacts are neither fetched from nor \
                     shared through the store; this host compiles every model itself",
                    ArtifactKey::ENV
                ),
            }
        }
        self
    }

    /// The directory artifacts of this engine go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an artifact for `digest` is on disk (not checked).
    pub fn contains(&self, digest: &str) -> bool {
        self.dir.join(format!("{digest}.cwasm")).exists()
    }

    /// Removes the artifact for `digest`, if any (after a failed validation,
    /// so that a rejected upload leaves nothing behind).
    pub fn remove(&self, digest: &str) {
        if is_sha256_hex(digest) {
            let _ = std::fs::remove_file(self.dir.join(format!("{digest}.cwasm")));
            let _ = std::fs::remove_file(self.dir.join(format!("{digest}.cwasm.xxh3")));
        }
    }

    /// Returns the compiled `T` (a component or a core module) for `wasm`,
    /// whose sha256 is `digest` (lowercase hex): from disk when a verified
    /// artifact exists, else compiled (by the runtime's [`Compiler`]) and
    /// written back.
    ///
    /// A component that exports `wizer-initialize` is compiled from its
    /// pre-initialised snapshot, taken under `limits` (the model's memory
    /// cap; see [`crate::preinit`]). The artifact is still keyed by the
    /// uploaded bytes, so a restart maps it without running the init again.
    /// (The key does not include the limits: the init sees no input, so
    /// its snapshot does not depend on them; a snapshot that later does not
    /// fit a smaller cap fails to instantiate, with that cap in the error.)
    pub fn load_or_compile<T: Artifact>(
        &self,
        runtime: &Runtime,
        digest: &str,
        wasm: &[u8],
        limits: &Limits,
    ) -> Result<(T, CacheOutcome), ArtifactError> {
        if !is_sha256_hex(digest) {
            return Err(ArtifactError::Store(anyhow::anyhow!(
                "not a sha256 hex digest: {digest:?}"
            )));
        }
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        let sidecar = self.dir.join(format!("{digest}.cwasm.xxh3"));
        if let Some(compiled) = self.load_verified(runtime, &artifact, &sidecar) {
            return Ok((compiled, CacheOutcome::Hit));
        }
        if self.fetch_shared(digest, &artifact, &sidecar)
            && let Some(component) = self.load_verified(runtime, &artifact, &sidecar)
        {
            return Ok((component, CacheOutcome::Hit));
        }

        let bytes = runtime.precompile(T::KIND, wasm, limits)?;
        let sum = checksum(&bytes);
        let stored = (|| {
            std::fs::create_dir_all(&self.dir)?;
            // Sidecar first: an artifact without a matching sidecar is
            // ignored, so a crash between the two writes costs a recompile.
            write_atomic(&sidecar, sum.as_bytes())?;
            write_atomic(&artifact, &bytes)
        })();
        stored.map_err(|e| ArtifactError::Store(e.into()))?;
        if let Some((shared, key)) = &self.shared
            && let Err(error) = shared.put_artifact(
                &self.engine_hash,
                digest,
                &bytes,
                &key.sign(&self.engine_hash, digest, &bytes),
            )
        {
            // Only a cost: other hosts compile it themselves.
            tracing::warn!(
                sha256 = digest,
                error = format!("{error:#}"),
                "failed to share a compiled artifact"
            );
        }
        drop(bytes);
        // SAFETY: the file was just written from the output of this host's
        // compiler (in process, or its own worker binary), never bytes a
        // client sent, and is only ever replaced by rename.
        let compiled = unsafe { T::deserialize_file(runtime.engine(), &artifact) }
            .map_err(|e| ArtifactError::Store(anyhow::Error::from(e)))?;
        Ok((compiled, CacheOutcome::Compiled))
    }

    /// The compiled component or module of `digest` from a verified
    /// artifact (local, else shared), without the bytes it was compiled
    /// from: a stored version loads at start-up without reading its blob.
    /// `None` when there is no usable artifact; then
    /// [`ArtifactCache::load_or_compile`] needs the bytes.
    pub fn load_cached(&self, runtime: &Runtime, digest: &str) -> Option<Compiled> {
        if !is_sha256_hex(digest) {
            return None;
        }
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        let sidecar = self.dir.join(format!("{digest}.cwasm.xxh3"));
        if !artifact.exists() && !self.fetch_shared(digest, &artifact, &sidecar) {
            return None;
        }
        // Which of the two it is, from the artifact's header; the checksum
        // and wasmtime's own checks follow in `load_verified`.
        match Engine::detect_precompiled_file(&artifact) {
            Ok(Some(wasmtime::Precompiled::Component)) => self
                .load_verified(runtime, &artifact, &sidecar)
                .map(Compiled::Component),
            Ok(Some(wasmtime::Precompiled::Module)) => self
                .load_verified(runtime, &artifact, &sidecar)
                .map(Compiled::Module),
            Ok(None) | Err(_) => None,
        }
    }

    /// Copies the shared artifact of `digest`, if there is one and its MAC
    /// verifies under this host's key, into the local directory (with a
    /// local checksum sidecar). Never deserializes anything: the local copy
    /// goes through `load_verified`.
    fn fetch_shared(&self, digest: &str, artifact: &Path, sidecar: &Path) -> bool {
        let Some((shared, key)) = &self.shared else {
            return false;
        };
        let (bytes, expected) = match shared.get_artifact(&self.engine_hash, digest) {
            Ok(Some(found)) => found,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(
                    sha256 = digest,
                    error = format!("{error:#}"),
                    "failed to read a shared artifact"
                );
                return false;
            }
        };
        if !key.verify(&self.engine_hash, digest, &bytes, &expected) {
            tracing::warn!(
                sha256 = digest,
                "shared artifact failed its MAC (altered, or written with another key); recompiling"
            );
            return false;
        }
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomic(sidecar, checksum(&bytes).as_bytes()))
            .and_then(|()| write_atomic(artifact, &bytes));
        match written {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(sha256 = digest, error = %error, "failed to cache a shared artifact locally");
                false
            }
        }
    }

    fn load_verified<T: Artifact>(
        &self,
        runtime: &Runtime,
        artifact: &Path,
        sidecar: &Path,
    ) -> Option<T> {
        let expected = std::fs::read_to_string(sidecar).ok()?;
        if file_checksum(artifact).ok()? != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "compiled artifact failed its checksum; recompiling");
            return None;
        }
        // SAFETY: the file was written by this host (its checksum matches
        // the sidecar written alongside it) and is only ever replaced by rename,
        // never modified in place, so the mapping stays valid.
        match unsafe { T::deserialize_file(runtime.engine(), artifact) } {
            Ok(compiled) => Some(compiled),
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), error = %error, "compiled artifact rejected; recompiling");
                None
            }
        }
    }
}

#[cfg(test)]
mod artifact_key_tests {
    use super::ArtifactKey;

    #[test]
    fn keys_are_hex_of_at_least_32_bytes_and_never_shown() {
        let key = ArtifactKey::from_hex(&format!(" {} \n", "ab".repeat(32))).unwrap();
        assert_eq!(format!("{key:?}"), "ArtifactKey(..)");
        let err = ArtifactKey::from_hex(&"ab".repeat(31)).unwrap_err();
        assert!(err.contains("31 bytes"), "{err}");
        let err = ArtifactKey::from_hex(&format!("{}zz", "ab".repeat(32))).unwrap_err();
        assert!(!err.contains("abab"), "the key is not repeated: {err}");
        assert!(ArtifactKey::from_hex("").is_err());
    }

    #[test]
    fn the_mac_binds_the_bytes_the_component_and_the_engine() {
        let key = ArtifactKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = ArtifactKey::from_hex(&"cd".repeat(32)).unwrap();
        let (engine, digest) = ("e1", "0".repeat(64));
        let tag = key.sign(engine, &digest, b"artifact");
        assert_eq!(tag.len(), 64);
        assert!(key.verify(engine, &digest, b"artifact", &tag));
        assert!(!key.verify(engine, &digest, b"artifacT", &tag), "bytes");
        assert!(
            !key.verify(engine, &"1".repeat(64), b"artifact", &tag),
            "component"
        );
        assert!(!key.verify("e2", &digest, b"artifact", &tag), "engine");
        assert!(!other.verify(engine, &digest, b"artifact", &tag), "key");
        assert!(!key.verify(engine, &digest, b"artifact", "not hex"));
        assert!(
            !key.verify(engine, &digest, b"artifact", &tag[..32]),
            "truncated"
        );
        let unkeyed = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"artifact"));
        assert!(!key.verify(engine, &digest, b"artifact", &unkeyed));
    }
}

/// What [`ArtifactCache::load_cached`] found.
pub enum Compiled {
    /// A component.
    Component(Component),
    /// A core module (a WASI preview 1 command).
    Module(wasmtime::Module),
}

/// Why [`ArtifactCache::load_or_compile`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes did not compile within the budget (the input's fault).
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Writing or reading the artifact failed (the host's fault).
    #[error("artifact cache: {0:#}")]
    Store(anyhow::Error),
}

/// Something compiled that the cache can hold: a component or a core module.
pub trait Artifact: Sized {
    /// How to compile it.
    const KIND: ArtifactKind;
    /// Maps a serialized file.
    ///
    /// # Safety
    /// The file must hold the output of this host's compiler (see wasmtime's
    /// `Component::deserialize_file`) and must not change while mapped.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self>;
}

impl Artifact for Component {
    const KIND: ArtifactKind = ArtifactKind::Component;
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded to the caller.
        unsafe { Component::deserialize_file(engine, path) }
    }
}

impl Artifact for wasmtime::Module {
    const KIND: ArtifactKind = ArtifactKind::Module;
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded to the caller.
        unsafe { wasmtime::Module::deserialize_file(engine, path) }
    }
}

/// The checksum of a file, streamed through a small buffer: no copy of a
/// (possibly 50 MB) artifact on the heap just to hash it.
fn file_checksum(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// The artifact checksum: XXH3-128 in hex.
fn checksum(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}
