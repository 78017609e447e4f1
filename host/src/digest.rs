//! Content digests: the sha256 of a blob, in lowercase hex, the one rule
//! for what counts as such a digest, and the constant-time comparison of
//! digests and secrets.

use sha2::{Digest as _, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `text` is a sha256 digest as the host writes it (see
/// [`sha256_hex`]): exactly 64 lowercase hex digits. Every digest that
/// names a file or an object is checked with this before it is used.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Compares two secrets in time that depends on neither: both are hashed
/// to fixed-length digests, which are compared without an early exit.
pub fn secrets_match(presented: &[u8], expected: &[u8]) -> bool {
    digests_match(&Sha256::digest(presented), &Sha256::digest(expected))
}

/// Compares two equal-length digests without an early exit. Digests of
/// different lengths never match.
pub fn digests_match(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_match(b"same", b"same"));
        assert!(!secrets_match(b"same", b"other"));
        assert!(!secrets_match(b"secret", b"secreT"));
        assert!(!secrets_match(b"secret-and-more", b"secret"));
        assert!(!secrets_match(b"", b"x"));
        assert!(!digests_match(b"ab", b"abc"));
    }

    #[test]
    fn digests_are_64_lowercase_hex_digits() {
        let digest = sha256_hex(b"airlock");
        assert!(is_sha256_hex(&digest));
        assert!(!is_sha256_hex(&digest.to_ascii_uppercase()));
        assert!(!is_sha256_hex(&digest[..63]));
        assert!(!is_sha256_hex(&format!("{digest}0")));
        assert!(!is_sha256_hex(&format!("../{}", &digest[3..])));
        assert!(!is_sha256_hex(""));
    }
}
