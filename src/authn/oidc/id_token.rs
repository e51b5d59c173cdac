//! ID token validation (OpenID Connect Core 1.0 §3.1.3.7), logout token validation
//! (Back-Channel Logout 1.0 §2.6), and the rule that keeps both out of bearer routes.
//!
//! The signature goes through the same JWKS path as bearer tokens
//! (`Authenticator::verify_for_audience`: issuer pinned, algorithm allowed and matching the
//! key, unknown-`kid` refresh rate-limited), with the client id as the audience.
//!
//! Security notes:
//! - ID token: `iss` is the issuer, `aud` contains the client id, `azp` equals the client id
//!   when present and is required when there are several audiences, `nonce` equals the one
//!   sent (compared in constant time), `exp`, `iat` (not in the future) and `sub` required.
//!   After a refresh the `sub` must stay the same.
//! - Logout token: `iss`, `aud` (client id), `iat` no older than [`LOGOUT_TOKEN_MAX_AGE`],
//!   `jti`, the back-channel-logout `events` member, `sid` or `sub`, and no `nonce` (so an ID
//!   token can never be used as a logout token). `typ`, when present, is `logout+jwt` or `JWT`.
//!   Replays are refused by the caller: [`LogoutClaims::replay_key`] is remembered in the
//!   session store until [`LogoutClaims::replay_until`].
//! - Bearer routes ([`check_access_token`]): a token explicitly typed `at+jwt` is an access
//!   token. A token typed otherwise than `JWT` (or untyped) is refused (`logout+jwt`,
//!   `id_token+jwt`, `secevent+jwt`, ...). An untyped or `JWT` token is refused when it carries
//!   a claim only ID or logout tokens have: `nonce` (Portcullis always sends one, so every
//!   ID token issued to it has one), `at_hash`, `c_hash`, `s_hash` or `events`. The audience
//!   alone cannot decide: some IdPs (Entra ID v2) issue access tokens whose `aud` is the
//!   client id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::authn::{Authenticator, AuthnError};

/// The `events` member a logout token must have.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Oldest `iat` a logout token may have (plus the issuer's clock skew).
pub const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);

/// Claims whose presence marks a JWT as not an access token.
const NOT_ACCESS_TOKEN_CLAIMS: [&str; 5] = ["nonce", "at_hash", "c_hash", "s_hash", "events"];

/// Why an ID or logout token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// Signature, `iss`, `aud`, `exp`, `nbf`, `iat` or a required claim failed.
    #[error(transparent)]
    Token(#[from] AuthnError),
    /// `azp` differs from the client id, or is missing with several audiences.
    #[error("authorized party is not this client")]
    Azp,
    /// `nonce` missing or not the one sent.
    #[error("nonce mismatch")]
    Nonce,
    /// After a refresh, `sub` is not the session's subject.
    #[error("subject changed")]
    SubjectChanged,
    /// A logout token without the back-channel-logout event.
    #[error("not a logout token")]
    NotLogoutToken,
    /// A logout token with a `nonce` (it could be an ID token).
    #[error("logout token carries a nonce")]
    LogoutNonce,
    /// A logout token with neither `sid` nor `sub`, or without `jti`.
    #[error("logout token lacks sid/sub or jti")]
    LogoutClaims,
    /// A logout token issued too long ago.
    #[error("logout token too old")]
    LogoutTooOld,
    /// The issuer index is not configured.
    #[error("unknown issuer")]
    UnknownIssuer,
}

/// What the ID token must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The client id (audience and `azp`).
    pub client_id: &'a str,
    /// The nonce sent with the authorization request (None after a refresh: a refreshed ID
    /// token need not carry one).
    pub nonce: Option<&'a str>,
    /// The session's subject (Some after a refresh: it must not change).
    pub subject: Option<&'a str>,
}

/// A validated ID token.
#[derive(Debug, Clone)]
pub struct ValidatedIdToken {
    /// `sub`
    pub subject: String,
    /// `sid`, when the IdP sends one (back-channel logout by session).
    pub sid: Option<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
}

/// A validated logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    /// `iss`
    pub issuer: String,
    /// `jti`
    pub jti: String,
    /// `sid`: end the sessions of this IdP session.
    pub sid: Option<String>,
    /// `sub`: end every session of this user (when there is no `sid`).
    pub sub: Option<String>,
    /// `iat` (Unix seconds).
    pub iat: u64,
}

/// Validates an ID token from issuer `issuer` (index) against `expected`.
pub async fn validate_id_token(
    authn: &Authenticator,
    issuer: usize,
    token: &str,
    expected: Expected<'_>,
) -> Result<ValidatedIdToken, IdTokenError> {
    let claims = authn
        .verify_for_audience(
            token,
            issuer,
            expected.client_id,
            &["iss", "aud", "exp", "iat", "sub"],
        )
        .await?;
    check_azp(&claims, expected.client_id)?;
    if let Some(n) = expected.nonce {
        let got = claims.get("nonce").and_then(Value::as_str);
        if !got.is_some_and(|g| constant_time_eq(g, n)) {
            return Err(IdTokenError::Nonce);
        }
    }
    let subject = str_claim(&claims, "sub").ok_or(AuthnError::MissingClaim)?;
    if expected.subject.is_some_and(|s| s != subject) {
        return Err(IdTokenError::SubjectChanged);
    }
    Ok(ValidatedIdToken {
        subject,
        sid: str_claim(&claims, "sid"),
        claims,
    })
}

/// Validates a back-channel logout token from issuer `issuer` (index) for `client_id`.
pub async fn validate_logout_token(
    authn: &Authenticator,
    issuer: usize,
    token: &str,
    client_id: &str,
) -> Result<LogoutClaims, IdTokenError> {
    let typ = header_typ(token)?;
    if typ
        .as_deref()
        .is_some_and(|t| !typ_is(t, "logout+jwt") && !typ_is(t, "JWT"))
    {
        return Err(IdTokenError::NotLogoutToken);
    }
    let config = authn
        .issuer_config(issuer)
        .ok_or(IdTokenError::UnknownIssuer)?;
    let claims = authn
        .verify_for_audience(token, issuer, client_id, &["iss", "aud", "iat"])
        .await?;
    check_azp(&claims, client_id)?;
    let is_logout = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !is_logout {
        return Err(IdTokenError::NotLogoutToken);
    }
    if claims.contains_key("nonce") {
        return Err(IdTokenError::LogoutNonce);
    }
    let jti = str_claim(&claims, "jti").ok_or(IdTokenError::LogoutClaims)?;
    let (sid, sub) = (str_claim(&claims, "sid"), str_claim(&claims, "sub"));
    if sid.is_none() && sub.is_none() {
        return Err(IdTokenError::LogoutClaims);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or(AuthnError::Malformed)?;
    let oldest = now_unix().saturating_sub((LOGOUT_TOKEN_MAX_AGE + config.clock_skew).as_secs());
    if iat < oldest as f64 {
        return Err(IdTokenError::LogoutTooOld);
    }
    Ok(LogoutClaims {
        issuer: config.issuer.clone(),
        jti,
        sid,
        sub,
        iat: iat.max(0.0) as u64,
    })
}

/// Refuses a verified bearer token that is not an access token (see the module notes).
pub fn check_access_token(token: &str, claims: &Map<String, Value>) -> Result<(), AuthnError> {
    match header_typ(token).map_err(|_| AuthnError::Malformed)? {
        Some(t) if typ_is(&t, "at+jwt") => Ok(()),
        Some(t) if !typ_is(&t, "JWT") => Err(AuthnError::NotAccessToken),
        _ if NOT_ACCESS_TOKEN_CLAIMS
            .iter()
            .any(|c| claims.contains_key(*c)) =>
        {
            Err(AuthnError::NotAccessToken)
        }
        _ => Ok(()),
    }
}

// === impl LogoutClaims ===

impl LogoutClaims {
    /// The key under which the store remembers this token to refuse replays.
    pub fn replay_key(&self) -> String {
        format!("{}\u{0}{}", self.issuer, self.jti)
    }

    /// Until when (Unix seconds) the replay record must be kept: after that, the token is
    /// refused as too old anyway.
    pub fn replay_until(&self, clock_skew: Duration) -> u64 {
        self.iat
            .saturating_add((LOGOUT_TOKEN_MAX_AGE + clock_skew).as_secs())
            .saturating_add(1)
    }
}

/// `azp`, when present, is the client; with several audiences it must be present.
fn check_azp(claims: &Map<String, Value>, client_id: &str) -> Result<(), IdTokenError> {
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => Ok(()),
        None if !several => Ok(()),
        _ => Err(IdTokenError::Azp),
    }
}

/// The header's `typ` (the signature was or will be checked by the caller).
fn header_typ(token: &str) -> Result<Option<String>, AuthnError> {
    let h = token.split('.').next().ok_or(AuthnError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthnError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| AuthnError::Malformed)?;
    match header.get("typ") {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(AuthnError::Malformed),
    }
}

/// `typ` comparison per RFC 7515 §4.1.9 (case-insensitive, `application/` optional).
fn typ_is(typ: &str, want: &str) -> bool {
    let t = typ.strip_prefix("application/").unwrap_or(typ);
    t.eq_ignore_ascii_case(want)
}

fn str_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(header: Value, claims: &Value) -> (String, Map<String, Value>) {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let map = claims.as_object().cloned().unwrap_or_default();
        (format!("{}.{}.c2ln", enc(&header), enc(claims)), map)
    }

    #[test]
    fn access_token_rule_table() {
        let plain = json!({"sub": "a", "aud": "api", "scope": "read"});
        let with = |k: &str| {
            let mut c = plain.clone();
            c[k] = json!("x");
            c
        };
        let cases: Vec<(Value, Value, bool)> = vec![
            (
                json!({"alg": "RS256", "typ": "at+jwt"}),
                plain.clone(),
                true,
            ),
            (
                json!({"alg": "RS256", "typ": "application/at+JWT"}),
                plain.clone(),
                true,
            ),
            (
                json!({"alg": "RS256", "typ": "at+jwt"}),
                with("nonce"),
                true,
            ),
            (json!({"alg": "RS256", "typ": "JWT"}), plain.clone(), true),
            (json!({"alg": "RS256"}), plain.clone(), true),
            (json!({"alg": "RS256", "typ": "JWT"}), with("nonce"), false),
            (json!({"alg": "RS256"}), with("nonce"), false),
            (json!({"alg": "RS256"}), with("at_hash"), false),
            (json!({"alg": "RS256"}), with("c_hash"), false),
            (json!({"alg": "RS256"}), with("s_hash"), false),
            (json!({"alg": "RS256"}), with("events"), false),
            (
                json!({"alg": "RS256", "typ": "logout+jwt"}),
                plain.clone(),
                false,
            ),
            (
                json!({"alg": "RS256", "typ": "id_token+jwt"}),
                plain.clone(),
                false,
            ),
            (
                json!({"alg": "RS256", "typ": "secevent+jwt"}),
                plain.clone(),
                false,
            ),
        ];
        for (h, c, ok) in cases {
            let (t, claims) = token(h.clone(), &c);
            let got = check_access_token(&t, &claims);
            assert_eq!(got.is_ok(), ok, "{h} {c}");
            if !ok {
                assert_eq!(got, Err(AuthnError::NotAccessToken));
            }
        }
        let (t, claims) = token(json!({"alg": "RS256", "typ": 5}), &plain);
        assert_eq!(check_access_token(&t, &claims), Err(AuthnError::Malformed));
    }

    #[test]
    fn azp_rules() {
        let c = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(check_azp(&c(json!({"aud": "me"})), "me").is_ok());
        assert!(check_azp(&c(json!({"aud": ["me"]})), "me").is_ok());
        assert!(check_azp(&c(json!({"aud": ["me", "x"], "azp": "me"})), "me").is_ok());
        assert_eq!(
            check_azp(&c(json!({"aud": ["me", "x"]})), "me"),
            Err(IdTokenError::Azp)
        );
        assert_eq!(
            check_azp(&c(json!({"aud": "me", "azp": "x"})), "me"),
            Err(IdTokenError::Azp)
        );
        assert_eq!(
            check_azp(&c(json!({"aud": "me", "azp": 1})), "me"),
            Err(IdTokenError::Azp)
        );
    }

    #[test]
    fn replay_window_covers_acceptance_window() {
        let l = LogoutClaims {
            issuer: "https://i".into(),
            jti: "j".into(),
            sid: Some("s".into()),
            sub: None,
            iat: 1_000,
        };
        assert_eq!(l.replay_until(Duration::from_secs(60)), 1_000 + 360 + 1);
        let other = LogoutClaims {
            jti: "k".into(),
            ..l.clone()
        };
        assert_ne!(l.replay_key(), other.replay_key());
    }
}
