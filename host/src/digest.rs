//! Content digests: the sha256 of a blob, in lowercase hex, and the one
//! rule for what counts as such a digest.

use sha2::{Digest as _, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
