//! Credentials as the HTTP layer reads them: one bearer parser, one
//! constant-time comparison, one rule for what a token may be.
//!
//! Also who may call the repository API: the [`Admin`] extractor, and
//! [`GatewayAuthorized`] for callers API Gateway has authorised.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::{ApiError, AppState};

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

/// The API key a caller presents for a model: `Authorization: Bearer
/// <key>`, else `x-api-key: <key>` (trimmed; empty is none). Checked by
/// [`crate::pipeline::authorize`].
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|key| !key.is_empty())
    })
}

/// A request extension set by the Lambda adapter when API Gateway has
/// authorised the caller with IAM (SigV4) for the route: the repository API
/// then needs no bearer token. Only code in the process can set it.
#[derive(Debug, Clone)]
pub struct GatewayAuthorized {
    /// The caller's ARN as API Gateway reports it (for the log).
    pub caller: String,
}

/// Proof that the request carried the admin token.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(gateway) = parts.extensions.get::<GatewayAuthorized>() {
            tracing::info!(caller = %gateway.caller, "repository call authorised by API Gateway (IAM)");
            return Ok(Admin);
        }
        let Some(expected) = state.host.config().admin_token.as_deref() else {
            return Err(ApiError::Forbidden(
                "the repository API is disabled: no admin token is configured".into(),
            ));
        };
        let Some(presented) = bearer_token(&parts.headers) else {
            return Err(ApiError::Unauthorized(
                "the repository API needs `Authorization: Bearer <token>`".into(),
            ));
        };
        if crate::digest::secrets_match(presented.as_bytes(), expected.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Forbidden("wrong admin token".into()))
        }
    }
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
}
