//! The assertion's signing keys: loaded from PEM files (`auth.assertion.keys`: the first
//! signs, all are published) or generated at start, and published as a JWKS.
//!
//! Security notes: a key file's bytes are held in a [`Secret`] (zeroed on drop) only while
//! parsing; the parsed key pair lives in [`SigningKey`], whose `Debug` prints its `kid` and
//! algorithm only. Nothing here logs key material; errors name the key path and the file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{AssertionAlgorithm, AssertionConfig, Config, ConfigError};
use crate::secret::Secret;

/// One signing key: its key pair, `kid` (the RFC 7638 thumbprint of its public JWK), and
/// its public JWK.
pub struct SigningKey {
    pair: Pair,
    kid: String,
    /// The public JWK, as JSON.
    jwk: serde_json::Value,
    /// The JOSE header `{"alg":..,"kid":..,"typ":"JWT"}`, base64url-encoded once.
    header_b64: String,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// The keys of one configuration, and its JWKS.
#[derive(Debug)]
pub struct KeySet {
    /// The first signs; all are published.
    keys: Vec<Arc<SigningKey>>,
    /// `{"keys":[...]}`.
    jwks: Bytes,
    /// Where the JWKS is served (`auth.assertion.jwks_path`).
    path: String,
    /// Its `Cache-Control: max-age`.
    max_age: Duration,
}

/// Portcullis's assertion keys across reloads: the published set (the admin listener
/// serves its JWKS) and a generated key, kept so a reload without configured keys publishes
/// the same one.
#[derive(Default)]
pub struct Keys {
    published: ArcSwapOption<KeySet>,
    generated: Mutex<Option<Arc<SigningKey>>>,
}

/// A key that could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KeyError {
    /// `auth.assertion.keys[i]`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

// === impl SigningKey ===

impl SigningKey {
    /// A new random key for `alg`.
    pub fn generate(alg: AssertionAlgorithm) -> Result<Self, String> {
        let pair = match alg {
            AssertionAlgorithm::Es256 => Pair::Es256(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| "cannot generate a P-256 key".to_string())?,
            ),
            AssertionAlgorithm::EdDsa => Pair::EdDsa(
                Ed25519KeyPair::generate().map_err(|_| "cannot generate an Ed25519 key")?,
            ),
        };
        Ok(Self::of(pair))
    }

    /// A key from PEM text (PKCS#8, or SEC1 for P-256): P-256 or Ed25519.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| "no private key in PEM form (PKCS#8 or SEC1)".to_string())?;
        let der = Secret::new(der.secret_der());
        let pair = match EcdsaKeyPair::from_private_key_der(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.expose(),
        ) {
            Ok(p) => Pair::Es256(p),
            Err(_) => Pair::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.expose())
                    .map_err(|_| "not a P-256 (ES256) or Ed25519 (EdDSA) private key")?,
            ),
        };
        Ok(Self::of(pair))
    }

    fn of(pair: Pair) -> Self {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (alg, thumb_input, jwk) = match &pair {
            Pair::Es256(p) => {
                // The uncompressed point: 0x04, then x and y (32 bytes each).
                let point = p.public_key().as_ref();
                let coords = point.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                let (x, y) = (b64(x), b64(y));
                (
                    "ES256",
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                    serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                )
            }
            Pair::EdDsa(p) => {
                let x = b64(p.public_key().as_ref());
                (
                    "EdDSA",
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                )
            }
        };
        let kid = thumbprint(&thumb_input);
        let mut jwk = jwk;
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), kid.clone().into());
            o.insert("alg".into(), alg.into());
            o.insert("use".into(), "sig".into());
        }
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
        Self {
            pair,
            header_b64: b64(header.as_bytes()),
            kid,
            jwk,
        }
    }

    /// The RFC 7638 thumbprint of its public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        match self.pair {
            Pair::Es256(_) => AssertionAlgorithm::Es256,
            Pair::EdDsa(_) => AssertionAlgorithm::EdDsa,
        }
    }

    /// The JOSE header, base64url-encoded.
    pub fn header_b64(&self) -> &str {
        &self.header_b64
    }

    /// The signature of `message` (64 bytes: r and s for ES256, as JWS wants).
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        match &self.pair {
            Pair::Es256(p) => p
                .sign(&SystemRandom::new(), message)
                .ok()
                .map(|s| s.as_ref().to_vec()),
            Pair::EdDsa(p) => Some(p.sign(message).as_ref().to_vec()),
        }
    }
}

impl std::fmt::Debug for SigningKey {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// The RFC 7638 thumbprint of a JWK's required members, written in lexicographic order
/// without spaces (`input`): SHA-256, base64url without padding.
pub fn thumbprint(input: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, input.as_bytes()))
}

// === impl KeySet ===

impl KeySet {
    /// A set of `keys` (the first signs), served at `path` with `max_age`.
    pub fn new(keys: Vec<Arc<SigningKey>>, path: String, max_age: Duration) -> Self {
        let jwks = serde_json::json!({
            "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()
        });
        Self {
            jwks: Bytes::from(jwks.to_string()),
            keys,
            path,
            max_age,
        }
    }

    /// The key that signs.
    pub fn signing(&self) -> Option<&Arc<SigningKey>> {
        self.keys.first()
    }

    /// Every published key's `kid`, in order.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid()).collect()
    }

    /// The JWKS document.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// Where it is served.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How long clients may keep it.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

// === impl Keys ===

impl Keys {
    /// The keys of `config` (`None` without `auth.assertion`): its key files, or the
    /// generated key (made once, and again only for another algorithm; a warning says so).
    pub fn load(&self, config: &Config) -> Result<Option<Arc<KeySet>>, KeyError> {
        let Some(a) = &config.auth.assertion else {
            return Ok(None);
        };
        let keys = if a.keys.is_empty() {
            vec![self.generated(a)?]
        } else {
            load_files(a)?
        };
        Ok(Some(Arc::new(KeySet::new(
            keys,
            a.jwks_path.clone(),
            a.jwks_max_age,
        ))))
    }

    /// Publishes `set` on the admin listener (after a reload: before the new keys sign).
    pub fn publish(&self, set: Option<Arc<KeySet>>) {
        self.published.store(set);
    }

    /// The published set.
    pub fn published(&self) -> Option<Arc<KeySet>> {
        self.published.load_full()
    }

    fn generated(&self, a: &AssertionConfig) -> Result<Arc<SigningKey>, KeyError> {
        let mut g = self.generated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = g.as_ref().filter(|k| k.algorithm() == a.algorithm) {
            return Ok(k.clone());
        }
        let key = Arc::new(SigningKey::generate(a.algorithm).map_err(|problem| KeyError {
            key: "auth.assertion.keys".into(),
            problem,
        })?);
        tracing::warn!(
            kid = key.kid(),
            "auth.assertion.keys is empty: signing assertions with a key generated at start; \
             every replica (and every restart) has its own, so an upstream can verify only \
             what this process signed; configure keys for more than one replica"
        );
        *g = Some(key.clone());
        Ok(key)
    }
}

/// Loads every file of `auth.assertion.keys`; the first must have `algorithm` when it was set.
fn load_files(a: &AssertionConfig) -> Result<Vec<Arc<SigningKey>>, KeyError> {
    let mut keys: Vec<Arc<SigningKey>> = Vec::new();
    for (i, path) in a.keys.iter().enumerate() {
        let err = |problem: String| KeyError {
            key: format!("auth.assertion.keys[{i}]"),
            problem: format!("{}: {problem}", path.display()),
        };
        let key = read_key(path).map_err(err)?;
        if keys.iter().any(|k| k.kid() == key.kid()) {
            return Err(err("the same key as an earlier entry".into()));
        }
        if i == 0 && a.algorithm_set && key.algorithm() != a.algorithm {
            return Err(err(format!(
                "the signing key is {}, but auth.assertion.algorithm is {}",
                key.algorithm().name(),
                a.algorithm.name()
            )));
        }
        keys.push(Arc::new(key));
    }
    Ok(keys)
}

fn read_key(path: &Path) -> Result<SigningKey, String> {
    let pem = Secret::new(std::fs::read(path).map_err(|e| e.to_string())?);
    SigningKey::from_pem(pem.expose())
}

/// Opens and parses every assertion key file, for `check-config`.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if let Some(a) = &config.auth.assertion {
        load_files(a).map_err(|e| ConfigError::invalid(e.key, e.problem))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_thumbprint_is_rfc_8037s_example() {
        // RFC 8037, appendix A.3.
        let input = r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert_eq!(
            thumbprint(input),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_key_signs_and_publishes_a_jwk_under_its_thumbprint() {
        for alg in [AssertionAlgorithm::Es256, AssertionAlgorithm::EdDsa] {
            let k = SigningKey::generate(alg).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(k.kid().len(), 43);
            assert_eq!(k.jwk["kid"], k.kid());
            assert_eq!(k.sign(b"x").map(|s| s.len()), Some(64));
            // Debug never shows key material.
            let dbg = format!("{k:?}");
            assert!(dbg.contains(k.kid()) && !dbg.contains("pair"), "{dbg}");
            // The thumbprint is of the published members, independently recomputed.
            let j = &k.jwk;
            let input = match alg {
                AssertionAlgorithm::Es256 => format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    j["x"].as_str().unwrap_or(""),
                    j["y"].as_str().unwrap_or("")
                ),
                AssertionAlgorithm::EdDsa => format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    j["x"].as_str().unwrap_or("")
                ),
            };
            assert_eq!(thumbprint(&input), k.kid());
        }
    }

    #[test]
    fn pem_that_is_not_a_supported_key_is_refused() {
        assert!(SigningKey::from_pem(b"not pem").is_err());
    }
}
