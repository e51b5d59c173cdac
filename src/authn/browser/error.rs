//! Why the browser flow refused: a sign-in that could not start or finish
//! ([`SignInError`]), a back-channel logout that was refused ([`LogoutError`]), or an own path
//! asked with a method it does not take. Each carries what its response needs; the status and
//! page of each are chosen in `crate::error`, next to every other refusal, and the metric
//! reasons here ([`SignInFailure::reason`]), next to the type, like `AuthnError::reason`.
//!
//! Security notes: nothing an IdP or a client sent is kept but the IdP's `error` code, cut to
//! 64 characters of `[A-Za-z0-9_]` (shown on the page); the login cookie to clear is a
//! `Set-Cookie` this process built.

use std::sync::Arc;

use http::HeaderValue;

/// Why a sign-in could not start or finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInFailure {
    /// The callback's query is malformed: a repeated parameter, no usable `state` or `code`.
    #[error("malformed callback")]
    Malformed,
    /// No login cookie opens for the callback's `state` (or its issuer is gone).
    #[error("no login for this state")]
    NoLogin,
    /// The login cookie holds another state.
    #[error("state does not match the login")]
    BadState,
    /// The login is older than `LOGIN_TTL`.
    #[error("login expired")]
    ExpiredLogin,
    /// The state was used by an earlier callback (a replay or a forged link).
    #[error("state already used")]
    ReplayedState,
    /// The session store could not record the state or store the session (or, on a browser
    /// navigation, look the session up).
    #[error("session store unavailable")]
    StoreUnavailable,
    /// The issuer's discovery document cannot be had now: sign-in cannot start.
    #[error("identity provider unavailable")]
    Unreachable,
    /// The issuer's discovery document cannot be had at the callback (503).
    #[error("issuer unavailable")]
    IssuerUnavailable,
    /// The token endpoint did not answer, or not usably (502).
    #[error("token endpoint unavailable")]
    TokenTransient,
    /// The callback's `iss` names another issuer (RFC 9207).
    #[error("callback from another issuer")]
    WrongIssuer,
    /// The IdP sent `error=` (its code, cut to safe characters).
    #[error("the identity provider refused the sign-in ({0})")]
    IdpRefused(String),
    /// The token endpoint refused the code (replayed, expired).
    #[error("code refused")]
    CodeRefused,
    /// The token response has no ID token.
    #[error("no ID token")]
    NoIdToken,
    /// The ID token did not validate.
    #[error("ID token invalid")]
    IdTokenInvalid,
    /// A login or session could not be made here (randomness or sealing failed).
    #[error("sign-in state could not be created")]
    Internal,
}

// === impl SignInFailure ===

impl SignInFailure {
    /// Refused before any token endpoint call: counted in `callback_errors{reason}` (and the
    /// page links to `/`); the others in `login_failures{issuer, reason}`.
    pub fn before_token_call(&self) -> bool {
        matches!(
            self,
            Self::Malformed
                | Self::NoLogin
                | Self::BadState
                | Self::ExpiredLogin
                | Self::ReplayedState
        )
    }

    /// The `reason` label of the metric it is counted in (`docs/METRICS.md`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NoLogin => "no_login",
            Self::BadState => "bad_state",
            Self::ExpiredLogin => "expired_login",
            Self::ReplayedState => "replayed_state",
            Self::StoreUnavailable => "store_unavailable",
            Self::Unreachable | Self::IssuerUnavailable | Self::TokenTransient => "token_transient",
            Self::WrongIssuer | Self::IdpRefused(_) => "idp_error",
            Self::CodeRefused => "token_definitive",
            Self::NoIdToken | Self::IdTokenInvalid => "id_token_invalid",
            Self::Internal => "internal",
        }
    }
}

/// A sign-in that could not start or finish, with what its page needs.
#[derive(Debug, thiserror::Error)]
#[error("{failure}")]
pub struct SignInError {
    /// What went wrong.
    pub failure: SignInFailure,
    /// Where "sign in again" (or "try again") leads: the page the sign-in was for.
    pub again: String,
    /// The issuer of the login, once one was opened (for metrics and logs).
    pub issuer: Option<Arc<str>>,
    /// A `Set-Cookie` that clears the login cookie, once one was found.
    pub clear: Option<HeaderValue>,
}

impl From<SignInFailure> for SignInError {
    /// A failure before any login was opened: nothing to clear, "again" leads to `/`.
    fn from(failure: SignInFailure) -> Self {
        Self {
            failure,
            again: "/".to_string(),
            issuer: None,
            clear: None,
        }
    }
}

impl SignInError {
    /// `failure` of a sign-in that was to return to `again`.
    pub fn at(failure: SignInFailure, again: &str) -> Self {
        Self {
            again: again.to_string(),
            ..failure.into()
        }
    }
}

/// Why a back-channel logout request was refused (answered with a JSON `error`, as the
/// specification's RFC 6749 section 5.2 errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutError {
    /// Not a form with one valid, unseen logout token of a known issuer (400).
    #[error("invalid logout request")]
    InvalidRequest,
    /// The session store could not record the token or end the sessions (503).
    #[error("session store unavailable")]
    Unavailable,
}

/// Why an own path (callback, sign-out, back-channel logout) answered with a refusal.
#[derive(Debug, thiserror::Error)]
pub enum OwnPathError {
    /// The path does not take this method; the value is its `Allow`.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Sign-in (or sign-out) could not go on.
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// A back-channel logout was refused.
    #[error(transparent)]
    Logout(#[from] LogoutError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_before_a_token_call_are_the_callback_error_reasons() {
        let before = [
            SignInFailure::Malformed,
            SignInFailure::NoLogin,
            SignInFailure::BadState,
            SignInFailure::ExpiredLogin,
            SignInFailure::ReplayedState,
        ];
        for f in &before {
            assert!(f.before_token_call(), "{f:?}");
        }
        let reasons: Vec<_> = before.iter().map(SignInFailure::reason).collect();
        assert_eq!(
            reasons,
            [
                "malformed",
                "no_login",
                "bad_state",
                "expired_login",
                "replayed_state"
            ]
        );
        for f in [
            SignInFailure::StoreUnavailable,
            SignInFailure::TokenTransient,
            SignInFailure::CodeRefused,
            SignInFailure::IdpRefused("access_denied".into()),
        ] {
            assert!(!f.before_token_call(), "{f:?}");
        }
    }

    #[test]
    fn failures_after_it_use_the_documented_login_failure_reasons() {
        assert_eq!(
            SignInFailure::IdpRefused("x".into()).reason(),
            SignInFailure::WrongIssuer.reason()
        );
        assert_eq!(SignInFailure::WrongIssuer.reason(), "idp_error");
        assert_eq!(SignInFailure::CodeRefused.reason(), "token_definitive");
        assert_eq!(SignInFailure::TokenTransient.reason(), "token_transient");
        assert_eq!(SignInFailure::NoIdToken.reason(), "id_token_invalid");
        assert_eq!(SignInFailure::IdTokenInvalid.reason(), "id_token_invalid");
        assert_eq!(
            SignInFailure::StoreUnavailable.reason(),
            "store_unavailable"
        );
    }

    #[test]
    fn a_failure_before_a_login_leads_back_to_the_root_and_clears_nothing() {
        let e = SignInError::from(SignInFailure::Malformed);
        assert_eq!(e.again, "/");
        assert!(e.clear.is_none() && e.issuer.is_none());
        let e = SignInError::at(SignInFailure::StoreUnavailable, "/app?x=1");
        assert_eq!(e.again, "/app?x=1");
    }
}
