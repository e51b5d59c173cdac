//! Token extraction: the bearer token of a request (`Authorization: Bearer <token>`).
//!
//! Security notes:
//! - Exactly one `Authorization` header is read: two are refused (`invalid_request`), so
//!   the proxy and the upstream can never each read a different one.
//! - The scheme is compared in any ASCII case (RFC 9110 section 11.1); another scheme
//!   (`Basic`, ...) counts as no bearer token (`missing`), so a route answers with the
//!   challenge rather than a parse error.
//! - The size limit (`auth.max_token_bytes`) is checked by the caller before anything else
//!   reads the token; the token itself is never logged.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::AuthnError;

/// The token from `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthnError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(AuthnError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthnError::InvalidRequest);
    }
    let v = v.to_str().map_err(|_| AuthnError::InvalidRequest)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthnError::InvalidRequest)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::InvalidRequest);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(AUTHORIZATION, v);
            }
        }
        h
    }

    #[test]
    fn bearer_in_any_case_of_the_scheme() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR abc"] {
            assert_eq!(bearer(&with(&[v.as_bytes()])), Ok("abc"), "{v}");
        }
        // The header name's case never matters to http's map; a raw lowercase name parses the same.
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t.u.v"));
        assert_eq!(bearer(&h), Ok("t.u.v"));
    }

    #[test]
    fn surrounding_spaces_are_trimmed() {
        assert_eq!(bearer(&with(&[b"Bearer   abc  "])), Ok("abc"));
    }

    #[test]
    fn no_header_or_another_scheme_is_missing() {
        assert_eq!(bearer(&HeaderMap::new()), Err(AuthnError::Missing));
        for v in [
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Bearerx abc",
            "Bearer: abc",
        ] {
            assert_eq!(
                bearer(&with(&[v.as_bytes()])),
                Err(AuthnError::Missing),
                "{v}"
            );
        }
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let h = with(&[b"Bearer a", b"Bearer b"]);
        assert_eq!(bearer(&h), Err(AuthnError::InvalidRequest));
        // Even when the second one is not a bearer token.
        let h = with(&[b"Bearer a", b"Basic Zm9v"]);
        assert_eq!(bearer(&h), Err(AuthnError::InvalidRequest));
    }

    #[test]
    fn malformed_values_are_invalid_requests() {
        for v in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer    ",
            b"",
            b"Bearer\tabc",
        ] {
            assert_eq!(
                bearer(&with(&[v])),
                Err(AuthnError::InvalidRequest),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        // Not visible ASCII: not a string the token could be read from.
        assert_eq!(
            bearer(&with(&[b"Bearer caf\xc3\xa9"])),
            Err(AuthnError::InvalidRequest)
        );
    }

    #[test]
    fn oversized_tokens_come_back_whole_for_the_caller_to_refuse() {
        let token = "a".repeat(64 * 1024);
        let h = with(&[format!("Bearer {token}").as_bytes()]);
        assert_eq!(bearer(&h).map(str::len), Ok(token.len()));
    }
}
