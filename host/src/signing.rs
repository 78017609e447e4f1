//! Detached ed25519 signatures over a model component *and* its manifest.
//!
//! A signature covers
//!
//! ```text
//! "airlock-model-signature-v2\0" || sha256(component) || 0x00                        (no manifest)
//! "airlock-model-signature-v2\0" || sha256(component) || 0x01 || sha256(manifest JSON)
//! ```
//!
//! where the manifest JSON is [`canonical_manifest`]: the manifest as the
//! server stores it (parsed, validated, API keys hashed, serialized by
//! serde_json with sorted object keys), so `airlock sign` on the client and
//! the server compute the same bytes from the same TOML or JSON file. Signed
//! bytes with another manifest (other keys, guards, limits, or none) do not
//! verify: a signature cannot be replayed to change a model's policy.
//!
//! The v1 format (`"airlock-model-signature-v1\0" || sha256(component)`,
//! component only) is refused, with an error that says so
//! ([`SignatureError::Legacy`]).
//!
//! Keys and signatures travel as lowercase hex: a public key is 64 hex
//! characters, a signature 128. `airlock keygen` writes a key pair,
//! `airlock sign FILE --key KEY [--policy MANIFEST]` a `<file>.sig`, and
//! `airlock push` sends it in the `x-airlock-signature` header; a server
//! with trusted keys checks it before compiling anything, stores it (and
//! the key that verified it) in the version's index entry, and checks it
//! again whenever that version is loaded or activated while signatures are
//! required (see `Host::upload_with` in [`crate::repository`]).

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::manifest::Manifest;

/// The request header that carries an upload's signature.
pub const SIGNATURE_HEADER: &str = "x-airlock-signature";

const DOMAIN: &[u8] = b"airlock-model-signature-v2\0";
/// The retired format, recognised only to say why it is refused.
const LEGACY_DOMAIN: &[u8] = b"airlock-model-signature-v1\0";

/// The bytes a manifest is signed as: its JSON as the server stores it.
/// A field added to [`Manifest`] must stay out of this serialization while
/// unset (`skip_serializing_if`), or every stored signature stops verifying.
pub fn canonical_manifest(manifest: &Manifest) -> Vec<u8> {
    // A struct of strings, numbers and JSON values: serializing cannot fail.
    serde_json::to_vec(manifest).expect("a manifest serializes to JSON")
}

/// What a signature covers: a component, by its sha256, and the manifest
/// uploaded with it (or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    component: [u8; 32],
    manifest: Option<[u8; 32]>,
}

impl Subject {
    /// The subject of an upload: `wasm` with `manifest`.
    pub fn new(wasm: &[u8], manifest: Option<&Manifest>) -> Self {
        Self {
            component: Sha256::digest(wasm).into(),
            manifest: manifest.map(|m| Sha256::digest(canonical_manifest(m)).into()),
        }
    }

    /// The subject of a stored version: the component's sha256 as the index
    /// records it (hex; its blob and compiled artifact are checked against
    /// it), and the stored manifest.
    pub fn stored(sha256_hex: &str, manifest: Option<&Manifest>) -> Result<Self, SignatureError> {
        let component: [u8; 32] = hex::decode(sha256_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureError::Malformed)?;
        Ok(Self {
            component,
            manifest: manifest.map(|m| Sha256::digest(canonical_manifest(m)).into()),
        })
    }

    fn message(&self) -> Vec<u8> {
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&self.component);
        match &self.manifest {
            None => message.push(0),
            Some(digest) => {
                message.push(1);
                message.extend_from_slice(digest);
            }
        }
        message
    }

    fn legacy_message(&self) -> Vec<u8> {
        let mut message = LEGACY_DOMAIN.to_vec();
        message.extend_from_slice(&self.component);
        message
    }
}

/// A set of public keys whose signatures the server accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Signatures are required and none was sent.
    #[error(
        "this model requires signed uploads (the server, or the policy of the model's active \
         version or of this upload, says so): send the signature in the x-airlock-signature \
         header (airlock sign, airlock push --signature)"
    )]
    Missing,
    /// The signature is not 128 hex characters.
    #[error("the signature is not a hex-encoded ed25519 signature")]
    Malformed,
    /// No trusted key verifies the signature over this component and manifest.
    #[error(
        "the signature does not verify against any trusted key for this component and this \
         manifest (a signature covers both: sign again after changing either)"
    )]
    Untrusted,
    /// A signature of the retired v1 format, over the component only.
    #[error(
        "the signature is in the old v1 format, which covers the component but not its \
         manifest, and is no longer accepted: sign again with this version of airlock \
         (`airlock sign FILE --key KEY --policy MANIFEST`)"
    )]
    Legacy,
    /// A stored version carries no signature.
    #[error("it was stored without a signature")]
    Unsigned,
    /// Signatures are required but the server trusts no key.
    #[error("this server trusts no signing keys (--trusted-key)")]
    NoTrustedKeys,
    /// A stored version may not be served or activated: signatures are
    /// required and its stored signature does not verify.
    #[error(
        "version {version} of {name:?} is refused: signatures are required and its stored \
         signature does not hold ({reason})"
    )]
    Stored {
        /// The model (or guard).
        name: String,
        /// The version.
        version: String,
        /// Why its signature does not hold.
        reason: Box<SignatureError>,
    },
}

impl TrustedKeys {
    /// Parses hex public keys.
    pub fn from_hex<'a>(keys: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        let keys = keys
            .into_iter()
            .map(|k| parse_public_key(k.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { keys })
    }

    /// Reads public key files (hex, as `airlock keygen` writes them).
    pub fn from_files(paths: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut texts = Vec::new();
        for path in paths {
            let path = path.as_ref();
            texts.push(
                std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read {}", path.display()))?,
            );
        }
        Self::from_hex(texts.iter().map(String::as_str))
    }

    /// Whether any key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` (hex) over `subject` against every trusted key;
    /// returns the key that verifies it (hex).
    pub fn verify(&self, subject: &Subject, signature: &str) -> Result<String, SignatureError> {
        self.verify_among(self.keys.iter(), subject, signature)
    }

    /// Checks a stored signature: it must verify under the trusted key the
    /// index names (`signed_by`, hex), not merely under some trusted key, so
    /// that an index whose `signed_by` was edited is caught too.
    pub fn verify_by(
        &self,
        signed_by: &str,
        subject: &Subject,
        signature: &str,
    ) -> Result<(), SignatureError> {
        let named = self
            .keys
            .iter()
            .filter(|key| hex::encode(key.as_bytes()) == signed_by.trim().to_ascii_lowercase());
        self.verify_among(named, subject, signature).map(|_| ())
    }

    fn verify_among<'a>(
        &self,
        mut keys: impl Iterator<Item = &'a VerifyingKey> + Clone,
        subject: &Subject,
        signature: &str,
    ) -> Result<String, SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoTrustedKeys);
        }
        let bytes = hex::decode(signature.trim()).map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Malformed)?;
        let message = subject.message();
        if let Some(key) = keys
            .clone()
            .find(|key| key.verify_strict(&message, &signature).is_ok())
        {
            return Ok(hex::encode(key.as_bytes()));
        }
        let legacy = subject.legacy_message();
        if keys.any(|key| key.verify_strict(&legacy, &signature).is_ok()) {
            return Err(SignatureError::Legacy);
        }
        Err(SignatureError::Untrusted)
    }
}

fn parse_public_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("a public key must be 64 hex characters")?;
    VerifyingKey::from_bytes(&bytes).context("not a valid ed25519 public key")
}

/// Generates a key pair; returns (secret key hex, public key hex).
pub fn generate() -> anyhow::Result<(String, String)> {
    let seed =
        crate::fsutil::random_bytes::<32>().context("failed to read random bytes for the key")?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        hex::encode(seed),
        hex::encode(key.verifying_key().as_bytes()),
    ))
}

/// Signs `wasm` uploaded with `manifest` (see [`Subject`]) with the secret
/// key `secret_hex`; returns the signature (hex).
pub fn sign(secret_hex: &str, wasm: &[u8], manifest: Option<&Manifest>) -> anyhow::Result<String> {
    let seed: [u8; 32] = hex::decode(secret_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("a secret key must be 64 hex characters")?;
    let key = SigningKey::from_bytes(&seed);
    Ok(hex::encode(
        key.sign(&Subject::new(wasm, manifest).message()).to_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(wasm: &[u8], manifest: Option<&str>) -> Subject {
        let manifest = manifest.map(|m| Manifest::parse(m.as_bytes()).unwrap());
        Subject::new(wasm, manifest.as_ref())
    }

    #[test]
    fn signatures_bind_key_bytes_and_manifest() {
        let (secret, public) = generate().unwrap();
        let (_, other_public) = generate().unwrap();
        let trusted = TrustedKeys::from_hex([public.as_str()]).unwrap();
        let bytes = b"component bytes".as_slice();
        let signature = sign(&secret, bytes, None).unwrap();
        assert_eq!(
            trusted.verify(&subject(bytes, None), &signature),
            Ok(public.clone())
        );
        assert_eq!(
            trusted.verify(&subject(b"other bytes", None), &signature),
            Err(SignatureError::Untrusted)
        );
        // The same bytes with a manifest are another subject, and no two
        // manifests are the same subject.
        assert_eq!(
            trusted.verify(&subject(bytes, Some("memory_mib = 8")), &signature),
            Err(SignatureError::Untrusted)
        );
        let manifest = Manifest::parse(b"api_keys = [\"caller-key-0123456789\"]").unwrap();
        let with_keys = sign(&secret, bytes, Some(&manifest)).unwrap();
        assert_eq!(
            trusted.verify(&Subject::new(bytes, Some(&manifest)), &with_keys),
            Ok(public.clone())
        );
        assert_eq!(
            trusted.verify(&subject(bytes, None), &with_keys),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            trusted.verify(&subject(bytes, Some("max_concurrency = 2")), &with_keys),
            Err(SignatureError::Untrusted)
        );
        // TOML and JSON spellings of one manifest sign alike (the canonical
        // form is the stored JSON); a stored version is checked by digest.
        let toml = sign(
            &secret,
            bytes,
            Some(&Manifest::parse(b"memory_mib = 8").unwrap()),
        )
        .unwrap();
        assert_eq!(
            trusted.verify(&subject(bytes, Some(r#"{"memory_mib": 8}"#)), &toml),
            Ok(public.clone())
        );
        let stored = Subject::stored(&crate::digest::sha256_hex(bytes), Some(&manifest)).unwrap();
        assert_eq!(trusted.verify_by(&public, &stored, &with_keys), Ok(()));
        assert_eq!(
            trusted.verify_by(&other_public, &stored, &with_keys),
            Err(SignatureError::Untrusted),
            "signed_by must name the key that signed"
        );

        let stranger = TrustedKeys::from_hex([other_public.as_str()]).unwrap();
        assert_eq!(
            stranger.verify(&subject(bytes, None), &signature),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            trusted.verify(&subject(bytes, None), "zz"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            TrustedKeys::default().verify(&subject(bytes, None), &signature),
            Err(SignatureError::NoTrustedKeys)
        );
        assert!(TrustedKeys::from_hex(["abcd"]).is_err());
    }

    #[test]
    fn v1_signatures_are_refused_and_named() {
        let (secret, public) = generate().unwrap();
        let trusted = TrustedKeys::from_hex([public.as_str()]).unwrap();
        let seed: [u8; 32] = hex::decode(&secret).unwrap().try_into().unwrap();
        let bytes = b"component bytes".as_slice();
        let mut v1 = LEGACY_DOMAIN.to_vec();
        v1.extend_from_slice(&Sha256::digest(bytes));
        let old = hex::encode(SigningKey::from_bytes(&seed).sign(&v1).to_bytes());
        let refused = trusted.verify(&subject(bytes, None), &old).unwrap_err();
        assert_eq!(refused, SignatureError::Legacy);
        assert!(refused.to_string().contains("old v1 format"), "{refused}");
    }
}
