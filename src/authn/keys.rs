//! Verification keys parsed from a JWKS.
//!
//! Security notes: symmetric (`oct`) keys from a JWKS are never used — a public endpoint can't
//! hold a shared secret, and accepting one would let anyone who can read it mint tokens.
//! Keys marked for encryption (`use: enc`) are skipped. A key is only tried with algorithms of
//! its own family (and curve), and with its declared `alg` when it has one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::time::Instant;

/// One verification key.
pub struct VerifyKey {
    /// Its `kid`.
    pub kid: Option<String>,
    /// The algorithms it may verify.
    pub algorithms: Vec<Algorithm>,
    /// The key.
    pub key: DecodingKey,
    /// The JWK as JSON, to keep the same `Arc` across refreshes when it did not change.
    fingerprint: String,
}

/// The keys of one issuer at one time.
pub struct KeySet {
    /// By `kid`.
    pub by_kid: HashMap<String, Arc<VerifyKey>>,
    /// All keys, in JWKS order.
    pub all: Vec<Arc<VerifyKey>>,
    /// When they were fetched (monotonic, on the injected clock).
    pub fetched_at: Instant,
    /// When they were fetched (wall clock, persisted).
    pub fetched_wall: SystemTime,
    /// Loaded from the state directory rather than fetched by this process.
    pub from_disk: bool,
}

/// Why a JWKS document was unusable.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    #[error("malformed JWKS")]
    Malformed(#[source] serde_json::Error),
    /// No usable signing key in it.
    #[error("JWKS has no usable signing key")]
    Empty,
}

// === impl VerifyKey ===

impl VerifyKey {
    /// Parses one JWK; None when it can't be used for signature verification.
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                _ => return None,
            },
            _ => return None,
        };
        let algorithms = match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        {
            Some(declared) if family.contains(&declared) => vec![declared],
            Some(_) => return None,
            None if jwk.common.key_algorithm.is_some() => return None,
            None => family,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(Self {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
            fingerprint: serde_json::to_string(jwk).unwrap_or_default(),
        })
    }

    /// The issuer's shared secret, for HS256/384/512 only.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            kid: None,
            algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            key: DecodingKey::from_secret(secret),
            fingerprint: String::new(),
        }
    }

    /// Whether this key may verify `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

// === impl KeySet ===

impl KeySet {
    /// Parses a JWKS document. Keys that did not change since `previous` keep their `Arc`,
    /// so tokens cached against them stay valid across refreshes.
    pub fn parse(
        body: &[u8],
        previous: Option<&KeySet>,
        fetched_at: Instant,
        fetched_wall: SystemTime,
    ) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(JwksError::Malformed)?;
        let mut by_kid = HashMap::new();
        let mut all = Vec::new();
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(key) = VerifyKey::from_jwk(&jwk) else {
                continue;
            };
            let reused = previous
                .and_then(|p| key.kid.as_ref().and_then(|k| p.by_kid.get(k)))
                .filter(|old| old.fingerprint == key.fingerprint)
                .cloned();
            let key = reused.unwrap_or_else(|| Arc::new(key));
            if let Some(kid) = &key.kid {
                // First key with a kid wins; a duplicate kid is ignored.
                by_kid.entry(kid.clone()).or_insert_with(|| key.clone());
            }
            all.push(key);
        }
        if all.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(Self {
            by_kid,
            all,
            fetched_at,
            fetched_wall,
            from_disk: false,
        })
    }

    /// Whether `key` (by identity) is still in this set.
    pub fn contains(&self, key: &Arc<VerifyKey>) -> bool {
        match &key.kid {
            Some(kid) => self.by_kid.get(kid).is_some_and(|k| Arc::ptr_eq(k, key)),
            None => self.all.iter().any(|k| Arc::ptr_eq(k, key)),
        }
    }
}
