//! Token parsing and verification.
//!
//! Security notes: before any key is chosen, only the header and the `iss` claim are read
//! (unverified) to pick the issuer and key. `jku`, `x5u` and embedded `jwk` headers are never
//! followed; a `crit` header is rejected (no extension is understood); the header may have at
//! most [`MAX_HEADER_FIELDS`] fields. The algorithm must be allowed for the issuer and match the
//! key's type, so an RSA public key can never be used as an HMAC secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthnError;

/// Most fields a JOSE header may have.
pub const MAX_HEADER_FIELDS: usize = 16;

/// Longest `kid` accepted (unknown kids are remembered; this bounds that memory).
pub const MAX_KID_BYTES: usize = 256;

/// What is read from a token before verification.
#[derive(Debug)]
pub struct Peeked {
    /// `alg`
    pub alg: Algorithm,
    /// `kid`
    pub kid: Option<String>,
    /// Unverified `iss`: used only to choose the issuer.
    pub iss: String,
}

/// Reads header and `iss` without verifying anything.
pub fn peek(token: &str) -> Result<Peeked, AuthnError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthnError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header_json).map_err(|_| AuthnError::Malformed)?;
    if header.len() > MAX_HEADER_FIELDS {
        return Err(AuthnError::Malformed);
    }
    if header.contains_key("crit") {
        return Err(AuthnError::UnsupportedCrit);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthnError::Malformed)?
        .parse::<Algorithm>()
        .map_err(|_| AuthnError::DisallowedAlgorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_BYTES => Some(k.clone()),
        Some(_) => return Err(AuthnError::Malformed),
    };
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| AuthnError::Malformed)?;
    let iss: Iss = serde_json::from_slice(&payload).map_err(|_| AuthnError::Malformed)?;
    Ok(Peeked {
        alg,
        kid,
        iss: iss.iss.ok_or(AuthnError::UnknownIssuer)?,
    })
}

/// Verifies the signature and the standard claims, returning the claims.
pub fn verify(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthnError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthnError::BadSignature,
            ErrorKind::ExpiredSignature => AuthnError::Expired,
            ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
            ErrorKind::InvalidAudience => AuthnError::BadAudience,
            ErrorKind::InvalidIssuer => AuthnError::UnknownIssuer,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => AuthnError::DisallowedAlgorithm,
            ErrorKind::MissingRequiredClaim(_) => AuthnError::MissingClaim,
            _ => AuthnError::Malformed,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: serde_json::Value, payload: serde_json::Value) -> String {
        let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(payload))
    }

    #[test]
    fn peeks_alg_kid_and_iss() {
        let t = token(
            serde_json::json!({"alg": "RS256", "kid": "k1"}),
            serde_json::json!({"iss": "https://i"}),
        );
        let p = peek(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.alg, p.kid.as_deref(), p.iss.as_str()),
            (Algorithm::RS256, Some("k1"), "https://i")
        );
    }

    #[test]
    fn refuses_what_it_must() {
        let iss = serde_json::json!({"iss": "https://i"});
        let peek_err = |h: serde_json::Value| peek(&token(h, iss.clone())).err();
        assert_eq!(
            peek_err(serde_json::json!({"alg": "none"})),
            Some(AuthnError::DisallowedAlgorithm)
        );
        assert_eq!(
            peek_err(serde_json::json!({"alg": "RS256", "crit": ["exp"]})),
            Some(AuthnError::UnsupportedCrit)
        );
        assert_eq!(
            peek_err(serde_json::json!({"alg": "RS256", "kid": 7})),
            Some(AuthnError::Malformed)
        );
        let long_kid = "k".repeat(MAX_KID_BYTES + 1);
        assert_eq!(
            peek_err(serde_json::json!({"alg": "RS256", "kid": long_kid})),
            Some(AuthnError::Malformed)
        );
        let mut many = serde_json::Map::new();
        many.insert("alg".into(), "RS256".into());
        for i in 0..MAX_HEADER_FIELDS {
            many.insert(format!("x{i}"), i.into());
        }
        assert_eq!(
            peek_err(serde_json::Value::Object(many)),
            Some(AuthnError::Malformed)
        );
        assert_eq!(peek("a.b").err(), Some(AuthnError::Malformed));
        assert_eq!(peek("a.b.c.d").err(), Some(AuthnError::Malformed));
    }
}
