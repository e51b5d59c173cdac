//! Starting a sign-in: `state`, `nonce`, the PKCE pair and the authorization URL, plus the
//! [`LoginState`] record kept (sealed) in a short-lived login cookie until the callback.
//!
//! Security notes: `state`, `nonce` and the PKCE verifier are 256 random bits each from
//! aws-lc-rs's system RNG, base64url without padding (the verifier is 43 characters, within
//! RFC 7636's 43..128). The challenge is always S256. The login cookie is named per state
//! ([`LoginState::cookie_name`]), so sign-ins in several tabs do not overwrite each other; the
//! record must be sealed (AES-256-GCM, the session `Sealer`) before it leaves the process,
//! because it holds the verifier. `Debug` never shows the secrets.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use serde::{Deserialize, Serialize};

use super::form;

/// Prefix of every login cookie's name.
pub const LOGIN_COOKIE_PREFIX: &str = "portcullis_login_";

/// Random bytes in a state, nonce or verifier.
const RANDOM_BYTES: usize = 32;

/// The system RNG failed (no secret can be made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("random number generator unavailable")]
pub struct RandomUnavailable;

/// A PKCE verifier (RFC 7636) and its S256 challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkce {
    verifier: String,
}

/// What the callback needs to finish a sign-in, kept in the sealed login cookie.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter (also names the cookie).
    pub state: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// Where to send the browser afterwards (validated, same-origin relative path).
    pub return_to: String,
    /// When the login started (Unix seconds).
    pub created: u64,
    /// The issuer's name in the config (which issuer the callback talks to).
    #[serde(default)]
    pub issuer: String,
    /// The `redirect_uri` sent (the code exchange must send the same).
    #[serde(default)]
    pub redirect_uri: String,
    /// The `max_age` sent (seconds), when the route asks for a recent sign-in: the ID token
    /// must then carry an `auth_time` within it (OpenID Connect Core 3.1.2.1, 3.1.3.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

/// The fixed parts of an authorization request for one issuer.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The provider's `authorization_endpoint`.
    pub authorization_endpoint: Uri,
    /// `client_id`
    pub client_id: String,
    /// `redirect_uri` (the callback URL).
    pub redirect_uri: String,
    /// Scopes asked for (`openid` is added when missing).
    pub scopes: Vec<String>,
}

/// 256 random bits, base64url without padding (43 characters).
pub fn random_token() -> Result<String, RandomUnavailable> {
    let mut buf = [0u8; RANDOM_BYTES];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| RandomUnavailable)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// base64url(SHA-256(`verifier`)), the S256 code challenge.
pub fn s256_challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

// === impl Pkce ===

impl Pkce {
    /// A fresh verifier.
    pub fn generate() -> Result<Self, RandomUnavailable> {
        Ok(Self {
            verifier: random_token()?,
        })
    }

}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"<redacted>")
            .finish()
    }
}

// === impl LoginState ===

impl LoginState {
    /// A new login returning to `return_to` (already validated), started at `now` (Unix s).
    pub fn generate(return_to: &str, now: u64) -> Result<Self, RandomUnavailable> {
        Ok(Self {
            state: random_token()?,
            verifier: Pkce::generate()?.verifier,
            nonce: random_token()?,
            return_to: return_to.to_string(),
            created: now,
            issuer: String::new(),
            redirect_uri: String::new(),
            max_age: None,
        })
    }

    /// The login cookie's name for this state: the prefix and the first 16 characters.
    pub fn cookie_name(&self) -> String {
        cookie_name_for(&self.state)
    }

    /// The S256 challenge of the verifier.
    pub fn challenge(&self) -> String {
        s256_challenge(&self.verifier)
    }

    /// Whether a login started at `created` is older than `ttl` seconds at `now`.
    pub fn is_expired(&self, now: u64, ttl: u64) -> bool {
        now.saturating_sub(self.created) > ttl || self.created > now.saturating_add(60)
    }

    /// The serialised form (JSON), to be sealed into the login cookie.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an opened login cookie (None: not a login state).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("cookie", &self.cookie_name())
            .field("return_to", &self.return_to)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The login cookie's name for `state` (the callback looks the cookie up by it). Characters
/// outside base64url are dropped, so a forged `state` cannot put anything else in a cookie
/// name; a state that does not name a live login cookie is refused by the callback.
pub fn cookie_name_for(state: &str) -> String {
    let prefix: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect();
    format!("{LOGIN_COOKIE_PREFIX}{prefix}")
}

// === impl LoginRequest ===

impl LoginRequest {
    /// The authorization URL for `login`: response_type=code, client_id, redirect_uri, scope,
    /// state, nonce, code_challenge and code_challenge_method=S256, form-encoded and appended
    /// to any query the endpoint already has.
    pub fn authorization_url(&self, login: &LoginState) -> String {
        let mut scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        if !scopes.contains(&"openid") {
            scopes.insert(0, "openid");
        }
        let scope = scopes.join(" ");
        let challenge = login.challenge();
        let max_age = login.max_age.map(|s| s.to_string());
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("scope", scope.as_str()),
            ("state", login.state.as_str()),
            ("nonce", login.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(m) = &max_age {
            pairs.push(("max_age", m.as_str()));
        }
        let query = form::encode_pairs(pairs);
        let base = self.authorization_endpoint.to_string();
        let sep = match self.authorization_endpoint.query() {
            Some(q) if !q.is_empty() => "&",
            Some(_) => "",
            None => "?",
        };
        format!("{base}{sep}{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> LoginState {
        LoginState::generate("/app?x=1", 1_000).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn secrets_are_random_long_and_distinct() {
        let a = login();
        let b = login();
        for s in [&a.state, &a.verifier, &a.nonce] {
            assert_eq!(s.len(), 43, "256 bits in base64url");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            );
        }
        assert_ne!(a.state, b.state);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.verifier, b.verifier);
        assert_ne!(a.state, a.nonce);
        assert_ne!(a.cookie_name(), b.cookie_name());
        assert_eq!(
            a.cookie_name(),
            format!("portcullis_login_{}", &a.state[..16])
        );
    }

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let l = login();
        let shown = format!("{l:?} {:?}", Pkce::generate());
        assert!(!shown.contains(&l.verifier) && !shown.contains(&l.nonce));
        assert!(!shown.contains(&l.state[16..]));
    }

    #[test]
    fn serialises_for_the_cookie() {
        let l = login();
        assert_eq!(LoginState::from_bytes(&l.to_bytes()), Some(l.clone()));
        assert_eq!(LoginState::from_bytes(b"{\"state\":1}"), None);
        assert!(!l.is_expired(1_300, 300));
        assert!(l.is_expired(1_301, 300));
        assert!(l.is_expired(100, 300), "created in the future");
    }

    #[test]
    fn authorization_url_is_complete_and_encoded() {
        let l = login();
        let req = LoginRequest {
            authorization_endpoint: Uri::from_static("https://idp.example/authorize?p=b2c_1"),
            client_id: "my app&x=1".into(),
            redirect_uri: "https://app.example/oauth2/callback?a=b".into(),
            scopes: vec!["profile".into(), "email".into()],
        };
        let url = req.authorization_url(&l);
        let (base, query) = url.split_once('?').unwrap_or_else(|| panic!("{url}"));
        assert_eq!(base, "https://idp.example/authorize");
        let pairs = form::parse(query);
        let get = |k: &str| form::get(&pairs, k).map(str::to_string);
        assert_eq!(get("p").as_deref(), Some("b2c_1"));
        assert_eq!(get("response_type").as_deref(), Some("code"));
        assert_eq!(get("client_id").as_deref(), Some("my app&x=1"));
        assert_eq!(
            get("redirect_uri").as_deref(),
            Some("https://app.example/oauth2/callback?a=b")
        );
        assert_eq!(get("scope").as_deref(), Some("openid profile email"));
        assert_eq!(get("state"), Some(l.state.clone()));
        assert_eq!(get("nonce"), Some(l.nonce.clone()));
        assert_eq!(get("code_challenge"), Some(l.challenge()));
        assert_eq!(get("code_challenge_method").as_deref(), Some("S256"));
        assert!(!url.contains(&l.verifier), "the verifier never leaves");
        assert_eq!(pairs.len(), 9);
        let plain = LoginRequest {
            authorization_endpoint: Uri::from_static("https://idp.example/authorize"),
            scopes: vec!["openid".into()],
            ..req
        };
        let url = plain.authorization_url(&l);
        assert!(url.starts_with("https://idp.example/authorize?response_type=code&"));
        assert!(url.contains("&scope=openid&"));
    }
}
