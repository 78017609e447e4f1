//! Credentials as the HTTP layer reads them: one bearer parser, one
//! constant-time comparison, one rule for what a token may be.

use axum::http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};

/// Shortest admin token a host accepts. A token is a password for the
/// whole repository API, so an empty or guessable one is refused at start.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a configured token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Shorter than [`MIN_TOKEN_LEN`] (empty included).
    #[error("the admin token is {0} characters long; it needs at least {MIN_TOKEN_LEN}")]
    TooShort(usize),
    /// A character a client could not send after `Bearer ` (space, control
    /// or non-ASCII).
    #[error(
        "the admin token may only hold visible ASCII characters (no spaces or control characters)"
    )]
    BadCharacter,
}

/// Checks a token before a host starts with it.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(token.chars().count()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::BadCharacter);
    }
    Ok(())
}

/// The credentials of `Authorization: Bearer <token>`: the scheme matched
/// without regard to case (RFC 9110, section 11.1), surrounding white space
/// trimmed (HTTP/2 keeps a trailing space that HTTP/1 parsers strip).
/// `None` when the header is missing, is another scheme, or carries an
/// empty token: an empty credential is no credential.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
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
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer  abc ",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer_token(&with_auth(value)), Some("abc"), "{value:?}");
        }
    }

    #[test]
    fn empty_or_foreign_credentials_are_none() {
        for value in [
            "Bearer ",
            "Bearer",
            "Bearer    ",
            "Basic abc",
            "Bearerabc",
            "",
        ] {
            assert_eq!(bearer_token(&with_auth(value)), None, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_are_checked_before_start() {
        assert_eq!(check_token(""), Err(TokenError::TooShort(0)));
        assert_eq!(check_token("short"), Err(TokenError::TooShort(5)));
        assert_eq!(
            check_token("a token with spaces"),
            Err(TokenError::BadCharacter)
        );
        assert_eq!(check_token("0123456789abcdef"), Ok(()));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_match(b"same", b"same"));
        assert!(!secrets_match(b"same", b"other"));
        assert!(!secrets_match(b"secret", b"secreT"));
        assert!(!secrets_match(b"secret-and-more", b"secret"));
        assert!(!secrets_match(b"", b"x"));
        assert!(!digests_match(b"ab", b"abc"));
    }
}
