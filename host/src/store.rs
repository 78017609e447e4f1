//! The model store: one [`Store`] trait, two backends with the same layout,
//! the filesystem ([`FsStore`], here) and S3 ([`crate::s3store::S3Store`]).
//!
//! ```text
//! <root>/blobs/sha256/<hex>.wasm                 uploaded bytes, immutable, content-addressed
//! <root>/artifacts/<engine-hash>/<hex>.cwasm     compiled by this host (see artifacts::ArtifactCache)
//! <root>/models/<name>/index.json                versions, digests, active pointer, history
//! ```
//!
//! Every write is a temp file, fsync, rename (and an fsync of the
//! directory), so a crash leaves the previous file whole. A version exists
//! once its index entry does; its blob is always written first.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;
use crate::fsutil::write_atomic;

/// The persisted state of one model name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIndex {
    /// The model name.
    pub name: String,
    /// Versions, oldest first.
    pub versions: Vec<VersionRecord>,
    /// The version that answers unversioned requests.
    pub active: Option<String>,
    /// Previously active versions, most recent last (for rollback).
    #[serde(default)]
    pub history: Vec<String>,
    /// Whether the model is served (`unload` clears it, `load` sets it).
    pub loaded: bool,
    /// The number the next upload gets as its version.
    pub next_version: u64,
    /// What the name holds: models, or guards run on other models' requests.
    /// A name holds one kind only.
    #[serde(default, skip_serializing_if = "Kind::is_model")]
    pub kind: Kind,
}

/// What a stored name holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Models (world `model`, or WASI preview 1 commands), served for inference.
    #[default]
    Model,
    /// Guards (world `policy`), run by the host on models' requests and responses.
    Guard,
}

impl Kind {
    fn is_model(&self) -> bool {
        *self == Kind::Model
    }

    /// `"model"` or `"guard"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Guard => "guard",
        }
    }
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The version string (assigned by the server: "1", "2", …).
    pub version: String,
    /// sha256 of the component bytes (lowercase hex).
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded_unix: u64,
    /// The version string the model declares in its own metadata.
    pub model_version: String,
    /// The trusted public key (hex) whose signature the upload carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// That signature (hex; see [`crate::signing`]), over the component and
    /// `manifest`: checked again whenever the version is loaded or
    /// activated while signatures are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The manifest uploaded with the version (its policy; the metadata of
    /// a WASI preview 1 command). API keys in it are hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<crate::manifest::Manifest>,
}

impl ModelIndex {
    /// A fresh index for `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            versions: Vec::new(),
            active: None,
            history: Vec::new(),
            loaded: true,
            next_version: 1,
            kind: Kind::Model,
        }
    }

    /// The record of `version`.
    pub fn version(&self, version: &str) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Makes `version` the active one, remembering the previous.
    pub fn activate(&mut self, version: &str) {
        if self.active.as_deref() == Some(version) {
            return;
        }
        if let Some(previous) = self.active.replace(version.to_owned()) {
            self.history.push(previous);
        }
    }

    /// Goes back to the most recent previously active version that still
    /// exists; returns it.
    pub fn rollback(&mut self) -> Option<String> {
        while let Some(previous) = self.history.pop() {
            if self.version(&previous).is_some() && self.active.as_deref() != Some(&previous) {
                self.active = Some(previous.clone());
                return Some(previous);
            }
        }
        None
    }
}

/// The filesystem store.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(format!("{digest}.wasm"))
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name).join("index.json")
    }

    /// Stores `bytes` under their sha256 and returns it. Idempotent.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_hex(bytes);
        let path = self.blob_path(&digest);
        if path.exists() && self.get_blob(&digest).is_ok() {
            return Ok(digest);
        }
        std::fs::create_dir_all(path.parent().expect("blob path has a parent"))?;
        write_atomic(&path, bytes)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(digest)
    }

    /// Reads the blob `digest`, checking that its bytes still hash to it.
    pub fn get_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        check_digest(digest)?;
        let path = self.blob_path(digest);
        let bytes =
            std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
        anyhow::ensure!(
            sha256_hex(&bytes) == digest,
            "{} is corrupt: its digest does not match its name",
            path.display()
        );
        Ok(bytes)
    }

    /// Removes the blob `digest` (when no version refers to it any more).
    pub fn delete_blob(&self, digest: &str) -> anyhow::Result<()> {
        check_digest(digest)?;
        match std::fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The index of `name`, if the model exists.
    pub fn read_index(&self, name: &str) -> anyhow::Result<Option<ModelIndex>> {
        crate::validate_model_name(name).map_err(anyhow::Error::msg)?;
        let path = self.index_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let index: ModelIndex = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid model index", path.display()))?;
        anyhow::ensure!(index.name == name, "{} names another model", path.display());
        Ok(Some(index))
    }

    /// Writes the index of its model atomically.
    pub fn write_index(&self, index: &ModelIndex) -> anyhow::Result<()> {
        crate::validate_model_name(&index.name).map_err(anyhow::Error::msg)?;
        let path = self.index_path(&index.name);
        std::fs::create_dir_all(path.parent().expect("index path has a parent"))?;
        let json = serde_json::to_vec_pretty(index)?;
        write_atomic(&path, &json).with_context(|| format!("failed to write {}", path.display()))
    }

    /// Names of all stored models, sorted.
    pub fn list(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.root.join("models");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // Leftovers that are not model names (editor files, temp files) are skipped.
            if crate::validate_model_name(&name).is_ok() && self.index_path(&name).exists() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// What a conditional read of an index found.
#[derive(Debug)]
pub enum IndexRead {
    /// The index is the one the caller already has (its tag matched).
    Unchanged,
    /// There is no index for this name (any more).
    Missing,
    /// The index, with the tag that identifies this content.
    Changed {
        /// The index.
        index: ModelIndex,
        /// An opaque tag (S3's ETag; a checksum on the filesystem) to pass
        /// to the next conditional read.
        tag: String,
    },
}

/// A staged upload, taken out of the staging area.
#[derive(Debug)]
pub enum Staged {
    /// No such upload: never `PUT`, expired, or already finalised.
    Missing,
    /// Over the size limit (its size); it was deleted.
    TooLarge(u64),
    /// The uploaded bytes.
    Ready(Vec<u8>),
}

/// A presigned upload slot handed to a client.
#[derive(Debug, Clone)]
pub struct PresignedUpload {
    /// The URL to `PUT` the bytes to.
    pub url: String,
    /// Headers the client must send with the `PUT` (they are signed).
    pub headers: Vec<(String, String)>,
    /// How long the URL is valid.
    pub expires_in: std::time::Duration,
}

/// Where models are kept: blobs, indexes and, for stores shared between
/// machines, compiled artifacts and staged uploads.
///
/// The repository ([`crate::Host::upload`] and friends) only speaks to this
/// trait, so the filesystem and S3 behave alike. Methods block: the
/// repository runs off the async executor (see `http::run_blocking`).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages (`/path/to/data`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Stores `bytes` under their sha256 and returns it. Idempotent.
    fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String>;
    /// Reads the blob `digest`, checking that its bytes still hash to it.
    fn get_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>>;
    /// Removes the blob `digest` (when no version refers to it any more).
    fn delete_blob(&self, digest: &str) -> anyhow::Result<()>;
    /// The index of `name`, if the model exists.
    fn read_index(&self, name: &str) -> anyhow::Result<Option<ModelIndex>> {
        Ok(match self.read_index_if_changed(name, None)? {
            IndexRead::Changed { index, .. } => Some(index),
            IndexRead::Missing | IndexRead::Unchanged => None,
        })
    }
    /// The index of `name` unless it still has the tag `known` (a cheap
    /// conditional read: `If-None-Match` on S3).
    fn read_index_if_changed(&self, name: &str, known: Option<&str>) -> anyhow::Result<IndexRead>;
    /// Writes the index of its model atomically, whatever is there.
    fn write_index(&self, index: &ModelIndex) -> anyhow::Result<()>;
    /// Writes the index of its model atomically, but only if the stored
    /// index is still the one the caller read: `expected` is the tag
    /// [`Store::read_index_if_changed`] gave with it, `None` when there was
    /// no index (then there must still be none). `Ok(false)`, with nothing
    /// written, when another writer got there first: read again, redo the
    /// change, retry (see `Host::update_index`). A compare-and-swap, so
    /// that hosts sharing a store never lose each other's changes.
    fn write_index_if(&self, index: &ModelIndex, expected: Option<&str>) -> anyhow::Result<bool>;
    /// Names of all stored models, sorted.
    fn list(&self) -> anyhow::Result<Vec<String>>;

    /// Whether compiled artifacts are shared through this store (S3: one
    /// instance compiles, the others download). The filesystem store keeps
    /// them in the host's local artifact cache only.
    fn shares_artifacts(&self) -> bool {
        false
    }
    /// The shared artifact of `digest` for engine `engine_hash` with its
    /// recorded MAC, if there is one. Callers verify the MAC (see
    /// [`crate::artifacts::ArtifactCache`]); the store only carries it.
    fn get_artifact(
        &self,
        _engine_hash: &str,
        _digest: &str,
    ) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        Ok(None)
    }
    /// Shares a compiled artifact and its MAC (hex).
    fn put_artifact(
        &self,
        _engine_hash: &str,
        _digest: &str,
        _bytes: &[u8],
        _mac: &str,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// A presigned `PUT` for staged upload `id` of `size` bytes, or `None`
    /// when the store has no such thing (the filesystem: clients upload the
    /// body directly).
    fn presign_upload(&self, _id: &str, _size: u64) -> anyhow::Result<Option<PresignedUpload>> {
        Ok(None)
    }
    /// Takes the staged upload `id` out of the staging area (it is deleted
    /// whatever its fate): its bytes when it is at most `max_bytes` long.
    fn take_staged(&self, _id: &str, _max_bytes: u64) -> anyhow::Result<Staged> {
        Ok(Staged::Missing)
    }
}

impl Store for FsStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }
    fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        FsStore::put_blob(self, bytes)
    }
    fn get_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        FsStore::get_blob(self, digest)
    }
    fn delete_blob(&self, digest: &str) -> anyhow::Result<()> {
        FsStore::delete_blob(self, digest)
    }
    fn read_index(&self, name: &str) -> anyhow::Result<Option<ModelIndex>> {
        FsStore::read_index(self, name)
    }
    /// The tag is an XXH3 of the file: reading a small local file is the
    /// cheap part, so there is no point in trusting modification times.
    fn read_index_if_changed(&self, name: &str, known: Option<&str>) -> anyhow::Result<IndexRead> {
        crate::validate_model_name(name).map_err(anyhow::Error::msg)?;
        let path = self.index_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexRead::Missing),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let tag = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
        if known == Some(tag.as_str()) {
            return Ok(IndexRead::Unchanged);
        }
        let index = parse_index(name, &bytes, &path.display().to_string())?;
        Ok(IndexRead::Changed { index, tag })
    }
    fn write_index(&self, index: &ModelIndex) -> anyhow::Result<()> {
        FsStore::write_index(self, index)
    }
    /// Compares the file's tag, then renames the new one into place.
    /// Writers in one process are serialised by the host's write lock, so
    /// the check holds for them. Two processes on one directory are not
    /// serialised: between the check and the rename the other may write,
    /// and its change is lost. Share a store between hosts through S3,
    /// whose conditional write is atomic, not through a shared directory.
    fn write_index_if(&self, index: &ModelIndex, expected: Option<&str>) -> anyhow::Result<bool> {
        let current = match self.read_index_if_changed(&index.name, None)? {
            IndexRead::Changed { tag, .. } => Some(tag),
            IndexRead::Missing | IndexRead::Unchanged => None,
        };
        if current.as_deref() != expected {
            return Ok(false);
        }
        FsStore::write_index(self, index)?;
        Ok(true)
    }
    fn list(&self) -> anyhow::Result<Vec<String>> {
        FsStore::list(self)
    }
}

/// Parses the index of `name` read from `origin`, checking that it names
/// that model.
pub(crate) fn parse_index(name: &str, bytes: &[u8], origin: &str) -> anyhow::Result<ModelIndex> {
    let index: ModelIndex = serde_json::from_slice(bytes)
        .with_context(|| format!("{origin} is not a valid model index"))?;
    anyhow::ensure!(index.name == name, "{origin} names another model");
    Ok(index)
}

pub(crate) fn check_digest(digest: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::digest::is_sha256_hex(digest),
        "not a sha256 hex digest: {digest:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        assert_eq!(store.read_index("m").unwrap(), None);
        let mut index = ModelIndex::new("m");
        for v in ["1", "2", "3"] {
            index.versions.push(VersionRecord {
                version: v.into(),
                sha256: "0".repeat(64),
                size: 1,
                uploaded_unix: 0,
                model_version: "x".into(),
                signed_by: None,
                signature: None,
                manifest: None,
            });
            index.activate(v);
        }
        store.write_index(&index).unwrap();
        let mut back = store.read_index("m").unwrap().unwrap();
        assert_eq!(back, index);
        assert_eq!(back.rollback().as_deref(), Some("2"));
        back.versions.retain(|v| v.version != "1");
        assert_eq!(
            back.rollback(),
            None,
            "version 1 is gone, nothing to go back to"
        );
        assert_eq!(store.list().unwrap(), vec!["m".to_owned()]);
    }

    #[test]
    fn conditional_index_writes_refuse_a_stale_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let mut index = ModelIndex::new("m");
        assert!(Store::write_index_if(&store, &index, None).unwrap());
        assert!(
            !Store::write_index_if(&store, &index, None).unwrap(),
            "it exists now"
        );
        let IndexRead::Changed { tag, .. } = store.read_index_if_changed("m", None).unwrap() else {
            panic!("the index is there");
        };
        index.next_version = 2;
        assert!(Store::write_index_if(&store, &index, Some(&tag)).unwrap());
        index.next_version = 3;
        assert!(
            !Store::write_index_if(&store, &index, Some(&tag)).unwrap(),
            "the tag is stale"
        );
        assert_eq!(store.read_index("m").unwrap().unwrap().next_version, 2);
    }

    #[test]
    fn blobs_are_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let digest = store.put_blob(b"hello").unwrap();
        assert_eq!(store.get_blob(&digest).unwrap(), b"hello");
        std::fs::write(store.blob_path(&digest), b"tampered").unwrap();
        assert!(store.get_blob(&digest).is_err());
        assert!(store.get_blob("../../etc/passwd").is_err());
        assert!(store.read_index("../evil").is_err());
    }
}
