//! Content digests: the sha256 of a blob, in lowercase hex, and the one
//! rule for what counts as such a digest.

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

#[cfg(test)]
mod tests {
    use super::*;

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
