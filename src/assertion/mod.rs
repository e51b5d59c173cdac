//! The signed identity assertion: a short-lived JWT that tells the upstream who the caller
//! is, signed by Portcullis (`auth.assertion`), so an upstream can verify the identity
//! instead of trusting plain headers on faith; and the JWKS that publishes its keys.
//!
//! - Claims: `iss` (configured), `sub`, `aud` (the route's `assertion.audience`, else the
//!   request's canonical host), `iat`, `exp` (`iat` + `lifetime`, never past the bearer
//!   token's own `exp`), then the optional ones as long as the assertion stays within
//!   `max_bytes`: `email`, the configured `claims`, `groups` (the issuer's groups). An
//!   optional claim that does not fit is left out and counted
//!   (`portcullis_assertion_claims_dropped_total{claim}`); the request never fails for it.
//! - Signing is not per request: an assertion is kept with its identity
//!   (`claims::HeaderCache`, at most `claims::MAX_KEPT_ASSERTIONS` audiences, so its memory
//!   is bounded by the token cache and the session identity cache that hold identities) and
//!   signed again once half its lifetime has passed, or by another configuration's signer.
//! - `keys`: the key files (the first signs, all are published) or a generated key.
//! - `jwks`: the JWKS response, on an own path of the proxy listeners and on the admin
//!   listener.
//!
//! Security notes: the assertion is built from the verified identity only; its header is
//! owned (the client's copies are stripped in every spelling before authentication). Key
//! material never reaches a log (`keys`). The assertion is a bearer credential for its
//! audience: it is never logged either.

pub mod jwks;
pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::claims::{ClaimPath, Identity, KeptAssertion};
use crate::clock::SharedClock;
use crate::config::AssertionConfig;
use crate::config::assertion::b64_len;
use crate::metrics::Metrics;

pub use keys::{KeyError, KeySet, Keys};

/// Signs assertions for one configuration.
pub struct Assertions {
    /// Unique per signer: an assertion kept with an identity by another signer (an earlier
    /// configuration, other keys) is signed again.
    id: u64,
    keys: Arc<KeySet>,
    issuer: Value,
    header: HeaderName,
    lifetime: u64,
    claims: Vec<(String, ClaimPath)>,
    max_bytes: usize,
    clock: SharedClock,
    signed: prometheus::IntCounter,
    dropped: prometheus::IntCounterVec,
}

/// Numbers the signers.
static SIGNERS: AtomicU64 = AtomicU64::new(1);

// === impl Assertions ===

impl Assertions {
    /// A signer of `config`'s assertions with `keys`, on `clock`.
    pub fn new(
        config: &AssertionConfig,
        keys: Arc<KeySet>,
        clock: SharedClock,
        metrics: &Metrics,
    ) -> Self {
        for (name, _) in &config.claims {
            metrics.assertion_claims_dropped.with_label_values(&[name]);
        }
        for name in ["email", "groups"] {
            metrics.assertion_claims_dropped.with_label_values(&[name]);
        }
        Self {
            id: SIGNERS.fetch_add(1, Ordering::Relaxed),
            keys,
            issuer: Value::String(config.issuer.clone()),
            header: config.header.clone(),
            lifetime: config.lifetime.as_secs().max(1),
            claims: config.claims.clone(),
            max_bytes: config.max_bytes,
            clock,
            signed: metrics.assertions_signed.clone(),
            dropped: metrics.assertion_claims_dropped.clone(),
        }
    }

    /// The header the assertion is sent in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// `auth.assertion.lifetime`, in seconds.
    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    /// The keys (and JWKS) it signs with.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// The assertion of `identity` for `audience`: the one kept with the identity while it
    /// is in the first half of its life, else a new one (kept for the next requests).
    /// `None` only when it cannot be signed (the bearer token expired, or signing failed).
    pub fn value(&self, identity: &Identity, audience: &str) -> Option<HeaderValue> {
        let now = self
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(v) = identity.headers.assertion(self.id, audience, now) {
            return Some(v);
        }
        let (value, renew_at) = self.sign(identity, audience, now)?;
        identity.headers.keep_assertion(KeptAssertion {
            signer: self.id,
            audience: Arc::from(audience),
            value: value.clone(),
            renew_at,
        });
        Some(value)
    }

    /// A new assertion, signed now (`now`: seconds since the epoch), and when to sign again.
    pub fn sign(&self, identity: &Identity, audience: &str, now: u64) -> Option<(HeaderValue, u64)> {
        let key = self.keys.signing()?;
        let exp = match identity.expires {
            Some(token_exp) if token_exp <= now => return None,
            Some(token_exp) => token_exp.min(now + self.lifetime),
            None => now + self.lifetime,
        };
        let payload = self.payload(identity, audience, now, exp, key.header_b64().len());
        let mut jwt = String::with_capacity(self.max_bytes.min(4096));
        jwt.push_str(key.header_b64());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jwt);
        let signature = key.sign(jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
        self.signed.inc();
        let value = HeaderValue::try_from(jwt).ok()?;
        Some((value, now + (exp - now) / 2))
    }

    /// The claims as JSON: the fixed ones, then each optional one that still fits
    /// `max_bytes` (in order: email, the configured claims, groups); the rest are counted.
    fn payload(
        &self,
        identity: &Identity,
        audience: &str,
        iat: u64,
        exp: u64,
        header_len: usize,
    ) -> Vec<u8> {
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone());
        if let Some(sub) = &identity.subject {
            claims.insert("sub".into(), sub.as_str().into());
        }
        claims.insert("aud".into(), audience.into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), exp.into());
        // Room for the payload: what is left after the header, two dots and a 64-byte
        // signature, in bytes before base64url.
        let room = self
            .max_bytes
            .saturating_sub(header_len + 2 + b64_len(64))
            .saturating_mul(3)
            / 4;
        let mut used = json_len(&Value::Object(claims.clone()));
        let optional = std::iter::once((
            "email",
            ClaimPath(vec!["email".into()]).get(&identity.claims).cloned(),
        ))
        .chain(
            self.claims
                .iter()
                .map(|(name, path)| (name.as_str(), path.get(&identity.claims).cloned())),
        )
        .chain(std::iter::once((
            "groups",
            (!identity.groups.is_empty()).then(|| identity.groups.clone().into()),
        )));
        for (name, value) in optional {
            let Some(value) = value.filter(|v| !v.is_null()) else {
                continue;
            };
            // `,"name":value`
            let size = 4 + name.len() + json_len(&value);
            if used + size <= room {
                used += size;
                claims.insert(name.to_string(), value);
            } else {
                self.dropped.with_label_values(&[name]).inc();
            }
        }
        serde_json::to_vec(&claims).unwrap_or_default()
    }
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("id", &self.id)
            .field("kids", &self.keys.kids())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
