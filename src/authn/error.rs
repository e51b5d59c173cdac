//! Why a request is not authenticated ([`AuthnError`]) and the metric label of each reason.
//!
//! Security notes: the descriptions are sent to the client (in `WWW-Authenticate` and the
//! body, see `crate::error`), so they name the failure and nothing of the token: no claim,
//! no key, no issuer URL.

/// Why a request is not authenticated. Descriptions are safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No credentials.
    #[error("missing token")]
    Missing,
    /// More than one `Authorization` header, or not the Bearer scheme with a token.
    #[error("invalid request")]
    InvalidRequest,
    /// Larger than `auth.max_token_bytes`.
    #[error("token too large")]
    TooLarge,
    /// Not a JWS compact token, or bad JSON/base64.
    #[error("token malformed")]
    Malformed,
    /// A `crit` header (no extension is understood).
    #[error("unsupported critical header")]
    UnsupportedCrit,
    /// `alg` not allowed for the issuer or not matching the key.
    #[error("algorithm not allowed")]
    DisallowedAlgorithm,
    /// `iss` is not a configured issuer.
    #[error("issuer not accepted")]
    UnknownIssuer,
    /// `iss` is configured, but not the one this route accepts.
    #[error("issuer not accepted for this route")]
    WrongIssuer,
    /// `kid` not in the issuer's keys (after a refresh, if one was allowed).
    #[error("unknown signing key")]
    UnknownKid,
    /// No usable keys for the issuer (none yet, or older than max_stale).
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// Signature does not verify.
    #[error("signature invalid")]
    BadSignature,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `aud` has no accepted audience.
    #[error("audience not accepted")]
    BadAudience,
    /// A required claim is missing.
    #[error("required claim missing")]
    MissingClaim,
    /// Not an access token: an ID token, logout token or other typed JWT (see
    /// `oidc::id_token::check_access_token`).
    #[error("not an access token")]
    NotAccessToken,
}

// === impl AuthnError ===

impl AuthnError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::InvalidRequest => "invalid_request",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::UnsupportedCrit => "unsupported_crit",
            Self::DisallowedAlgorithm => "disallowed_algorithm",
            Self::UnknownIssuer => "unknown_issuer",
            Self::WrongIssuer => "wrong_issuer",
            Self::UnknownKid => "unknown_kid",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::BadAudience => "bad_audience",
            Self::MissingClaim => "missing_claim",
            Self::NotAccessToken => "not_access_token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [AuthnError; 17] = [
        AuthnError::Missing,
        AuthnError::InvalidRequest,
        AuthnError::TooLarge,
        AuthnError::Malformed,
        AuthnError::UnsupportedCrit,
        AuthnError::DisallowedAlgorithm,
        AuthnError::UnknownIssuer,
        AuthnError::WrongIssuer,
        AuthnError::UnknownKid,
        AuthnError::KeysUnavailable,
        AuthnError::BadSignature,
        AuthnError::Expired,
        AuthnError::NotYetValid,
        AuthnError::IssuedInFuture,
        AuthnError::BadAudience,
        AuthnError::MissingClaim,
        AuthnError::NotAccessToken,
    ];

    #[test]
    fn every_reason_is_its_own_snake_case_label() {
        let mut seen = std::collections::HashSet::new();
        for e in ALL {
            let r = e.reason();
            assert!(seen.insert(r), "{r} used twice");
            assert!(
                !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
    }

    #[test]
    fn labels_and_descriptions_stay_as_published() {
        // Dashboards and alerts select these labels; clients read these descriptions.
        assert_eq!(AuthnError::UnknownKid.reason(), "unknown_kid");
        assert_eq!(AuthnError::NotAccessToken.reason(), "not_access_token");
        assert_eq!(AuthnError::Expired.to_string(), "token expired");
        assert_eq!(
            AuthnError::WrongIssuer.to_string(),
            "issuer not accepted for this route"
        );
        for e in ALL {
            assert!(e.to_string().is_ascii(), "{e:?}");
        }
    }
}
