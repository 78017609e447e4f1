//! Detached ed25519 signatures over model components.
//!
//! A signature covers `"airlock-model-signature-v1\0" || sha256(component)`,
//! so it binds the exact bytes and cannot be replayed for another purpose.
//! Keys and signatures travel as lowercase hex: a public key is 64 hex
//! characters, a signature 128. `airlock keygen` writes a key pair,
//! `airlock sign` a `<file>.sig`, and `airlock push` sends it in the
//! `x-airlock-signature` header; a server with trusted keys checks it
//! before compiling anything.

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The request header that carries an upload's signature.
pub const SIGNATURE_HEADER: &str = "x-airlock-signature";

const DOMAIN: &[u8] = b"airlock-model-signature-v1\0";

fn message(wasm: &[u8]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(wasm));
    message
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
        "this server requires signed models: send the signature in the x-airlock-signature header (airlock sign, airlock push --signature)"
    )]
    Missing,
    /// The signature is not 128 hex characters.
    #[error("the signature is not a hex-encoded ed25519 signature")]
    Malformed,
    /// No trusted key verifies the signature over these bytes.
    #[error("the signature does not verify against any trusted key")]
    Untrusted,
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

    /// Checks `signature` (hex) over `wasm`; returns the verifying key (hex).
    pub fn verify(&self, wasm: &[u8], signature: &str) -> Result<String, SignatureError> {
        let bytes = hex::decode(signature.trim()).map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Malformed)?;
        let message = message(wasm);
        self.keys
            .iter()
            .find(|key| key.verify_strict(&message, &signature).is_ok())
            .map(|key| hex::encode(key.as_bytes()))
            .ok_or(SignatureError::Untrusted)
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
    let mut seed = [0u8; 32];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("failed to read random bytes for the key")?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        hex::encode(seed),
        hex::encode(key.verifying_key().as_bytes()),
    ))
}

/// Signs `wasm` with the secret key `secret_hex`; returns the signature (hex).
pub fn sign(secret_hex: &str, wasm: &[u8]) -> anyhow::Result<String> {
    let seed: [u8; 32] = hex::decode(secret_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("a secret key must be 64 hex characters")?;
    let key = SigningKey::from_bytes(&seed);
    Ok(hex::encode(key.sign(&message(wasm)).to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_and_bytes() {
        let (secret, public) = generate().unwrap();
        let (_, other_public) = generate().unwrap();
        let trusted = TrustedKeys::from_hex([public.as_str()]).unwrap();
        let signature = sign(&secret, b"component bytes").unwrap();
        assert_eq!(trusted.verify(b"component bytes", &signature), Ok(public));
        assert_eq!(
            trusted.verify(b"other bytes", &signature),
            Err(SignatureError::Untrusted)
        );
        let stranger = TrustedKeys::from_hex([other_public.as_str()]).unwrap();
        assert_eq!(
            stranger.verify(b"component bytes", &signature),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            trusted.verify(b"component bytes", "zz"),
            Err(SignatureError::Malformed)
        );
        assert!(TrustedKeys::from_hex(["abcd"]).is_err());
    }
}
