//! The mock IdP: minting tokens.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use super::AUDIENCE;
use super::keys::*;
use super::server::*;

pub(super) enum Signer {
    Key(EncodingKey),
    Hmac(Vec<u8>),
    /// `alg: none`: empty signature.
    Unsigned,
}

/// Builds a compact JWS. Defaults: `iss`, `aud: api`, `sub: alice`, `email`, `groups`,
/// `scope`, `iat` now, `exp` now + 300 s; header `typ: JWT`, `alg` and `kid` from the key.
pub struct TokenBuilder {
    pub(super) header: Map<String, Value>,
    pub(super) claims: Map<String, Value>,
    pub(super) signer: Signer,
    pub(super) sign_alg: Algorithm,
}

/// Seconds since the Unix epoch, real time.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TokenBuilder {
    /// Default claims for issuer `iss`, unsigned until a signer is chosen.
    pub fn new(iss: &str) -> Self {
        let now = now_unix();
        let claims = json!({
            "iss": iss,
            "aud": AUDIENCE,
            "sub": "alice",
            "email": "alice@example.com",
            "groups": ["staff", "dev"],
            "scope": "api:read profile",
            "iat": now,
            "exp": now + 300,
        });
        let header = json!({ "typ": "JWT", "alg": "none" });
        Self {
            header: header.as_object().cloned().unwrap(),
            claims: claims.as_object().cloned().unwrap(),
            signer: Signer::Unsigned,
            sign_alg: Algorithm::RS256,
        }
    }

    /// Signs with `key` (sets `alg` and `kid` from it).
    pub fn sign_with(mut self, key: &SigningKey) -> Self {
        self.signer = Signer::Key(key.encoding.clone());
        self.sign_alg = key.alg;
        self.header.insert("alg".into(), json!(alg_name(key.alg)));
        self.header.insert("kid".into(), json!(key.kid));
        self
    }

    /// Signs with HMAC over `secret` (`alg` HS256, no `kid`).
    pub fn hmac(mut self, secret: &[u8]) -> Self {
        self.signer = Signer::Hmac(secret.to_vec());
        self.sign_alg = Algorithm::HS256;
        self.header.insert("alg".into(), json!("HS256"));
        self.header.remove("kid");
        self
    }

    /// `alg: none` and an empty signature.
    pub fn unsigned(mut self) -> Self {
        self.signer = Signer::Unsigned;
        self.header.insert("alg".into(), json!("none"));
        self
    }

    /// Signs with `alg` (same key) and says so in the header.
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.sign_alg = alg;
        self.header.insert("alg".into(), json!(alg_name(alg)));
        self
    }

    /// Sets a header field (after the signer was chosen: overrides it).
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.into(), value.into());
        self
    }

    /// Removes a header field.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Sets the `kid` header.
    pub fn kid(self, kid: &str) -> Self {
        self.header("kid", kid)
    }

    /// Sets a claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Removes a claim.
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// `exp` this many seconds from now (negative: in the past).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", now_unix() + secs)
    }

    /// `nbf` this many seconds from now.
    pub fn nbf_in(self, secs: i64) -> Self {
        self.claim("nbf", now_unix() + secs)
    }

    /// `iat` this many seconds from now.
    pub fn iat_in(self, secs: i64) -> Self {
        self.claim("iat", now_unix() + secs)
    }

    /// The compact token.
    pub fn build(self) -> String {
        // The ordinary path goes through `jsonwebtoken::encode` when the header is one it can
        // represent and agrees with the signer; crafted headers are signed by hand.
        if let Signer::Key(key) = &self.signer
            && let Ok(header) = serde_json::from_value::<Header>(Value::Object(self.header.clone()))
            && header.alg == self.sign_alg
        {
            return jsonwebtoken::encode(&header, &self.claims, key).unwrap();
        }
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.header).unwrap());
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.claims).unwrap());
        let message = format!("{h}.{p}");
        let sig = match &self.signer {
            Signer::Key(key) => {
                jsonwebtoken::crypto::sign(message.as_bytes(), key, self.sign_alg).unwrap()
            }
            Signer::Hmac(secret) => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap(),
            Signer::Unsigned => String::new(),
        };
        format!("{message}.{sig}")
    }
}

/// The JOSE name of `alg`.
pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// The claims of a token, decoded without verification (for assertions).
pub fn claims_of(token: &str) -> Map<String, Value> {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// Counts requests per path (convenience for tests comparing before/after).
pub fn counts(hits: &[Hit]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for h in hits {
        *m.entry(h.path.clone()).or_insert(0) += 1;
    }
    m
}
