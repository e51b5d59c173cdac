//! Signature and claim verification: one key loop for bearer tokens
//! ([`bearer_token`]) and for ID and logout tokens ([`Authenticator::verify_for_audience`]).
//!
//! Both run [`verify_with`]: choose the issuer's validation for the token's `alg`, find the
//! candidate keys ([`candidates`]: the shared secret for HS*, else the key its `kid` names,
//! with one unknown-`kid` refresh, or up to four keys of the right type without a `kid`),
//! try each in order ([`try_keys`]), then check `iat`.
//!
//! Security notes:
//! - The algorithm is the issuer's choice, not the token's: a token whose `alg` the issuer
//!   does not accept, or that its key may not verify (an RSA key for `ES256`, a JWKS key for
//!   `HS256`), is refused before any signature check.
//! - Only a bad signature moves the loop on to the next key; any other failure (expired,
//!   wrong audience, ...) of a key whose signature verified ends it, so trying more keys can
//!   never turn a refusal into an acceptance.
//! - A bearer token must be an access token (`oidc::id_token::check_access_token`): an ID
//!   token of the same issuer is refused.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::issuers::{Issuer, IssuerSet};
use super::jwks::{IssuerKeys, Lookup};
use super::jwt::{self, Peeked};
use super::keys::VerifyKey;
use super::token_cache::{Cached, now_unix};
use super::{Authenticator, AuthnError, oidc};
use crate::claims::Identity;

/// What a token is checked for besides its signature.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect<'a> {
    /// The issuer's configured audiences (bearer tokens).
    Configured,
    /// `audience` instead, with the registered claims in `required` present (ID and logout
    /// tokens).
    Audience {
        audience: &'a str,
        required: &'a [&'a str],
    },
}

// === impl Authenticator ===

impl Authenticator {
    /// Verifies `token` with the keys of issuer `issuer` (an index, see
    /// [`Authenticator::issuer_index`]) for `audience` instead of the issuer's configured
    /// audiences: signature (same key lookup, algorithms and unknown-`kid` refresh as bearer
    /// tokens), `iss`, `aud` contains `audience`, `exp`/`nbf` when present, `iat` not in the
    /// future, and every claim in `required` present. Returns the claims; nothing is cached.
    /// Used for ID tokens (audience = client_id) and logout tokens.
    pub(crate) async fn verify_for_audience(
        &self,
        token: &str,
        issuer: usize,
        audience: &str,
        required: &[&str],
    ) -> Result<Map<String, Value>, AuthnError> {
        let set = self.set.load_full();
        if token.len() > set.max_token_bytes {
            return Err(AuthnError::TooLarge);
        }
        let peeked = jwt::peek(token)?;
        let i = set.get(issuer).ok_or(AuthnError::UnknownIssuer)?;
        if set.by_iss.get(&peeked.iss) != Some(&issuer) {
            return Err(AuthnError::WrongIssuer);
        }
        let expect = Expect::Audience { audience, required };
        let (claims, _) = verify_with(i, token, &peeked, expect).await?;
        if required.iter().any(|c| !claims.contains_key(*c)) {
            return Err(AuthnError::MissingClaim);
        }
        Ok(claims)
    }
}

/// Verifies a bearer `token` under `set`; `only` (a slot) limits which issuer is accepted.
/// The result is what the token cache keeps.
pub(super) async fn bearer_token(
    set: &IssuerSet,
    token: &str,
    only: Option<usize>,
) -> Result<Cached, AuthnError> {
    let peeked = jwt::peek(token)?;
    let idx = *set
        .by_iss
        .get(&peeked.iss)
        .ok_or(AuthnError::UnknownIssuer)?;
    if only.is_some_and(|o| o != idx) {
        return Err(AuthnError::WrongIssuer);
    }
    let issuer = set.get(idx).ok_or(AuthnError::UnknownIssuer)?;
    let (claims, key) = verify_with(issuer, token, &peeked, Expect::Configured).await?;
    oidc::id_token::check_access_token(token, &claims)?;
    let cfg = &issuer.config;
    if cfg.required_claims.iter().any(|c| !claims.contains_key(c)) {
        return Err(AuthnError::MissingClaim);
    }
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let identity = Identity::from_claims(&issuer.name, claims, issuer.sources(), &set.kept_claims);
    Ok(Cached {
        identity: Arc::new(identity),
        issuer: idx,
        key: (!is_hmac(peeked.alg)).then_some(key),
        exp,
        generation: set.generation,
    })
}

/// The key loop: `token`'s signature and `expect`ed claims checked with `issuer`'s keys,
/// then `iat`. Returns the claims and the key that verified them.
pub(super) async fn verify_with(
    issuer: &Issuer,
    token: &str,
    peeked: &Peeked,
    expect: Expect<'_>,
) -> Result<(Map<String, Value>, Arc<VerifyKey>), AuthnError> {
    let configured = issuer
        .validation(peeked.alg)
        .ok_or(AuthnError::DisallowedAlgorithm)?;
    let validation = match expect {
        Expect::Configured => Cow::Borrowed(configured),
        Expect::Audience { audience, required } => {
            let mut v = configured.clone();
            v.set_audience(&[audience]);
            v.set_required_spec_claims(required);
            Cow::Owned(v)
        }
    };
    let keys = candidates(issuer, peeked).await?;
    let (claims, key) = try_keys(token, peeked.alg, keys, &validation)?;
    check_iat(&claims, issuer.config.clock_skew)?;
    Ok((claims, key))
}

/// The keys that may have signed a token: the issuer's shared secret for HS* (refused when
/// it has none), else its keys by `kid` (see [`keys_for`]).
async fn candidates(issuer: &Issuer, peeked: &Peeked) -> Result<Vec<Arc<VerifyKey>>, AuthnError> {
    if is_hmac(peeked.alg) {
        let secret = issuer.secret.clone();
        return Ok(vec![secret.ok_or(AuthnError::DisallowedAlgorithm)?]);
    }
    keys_for(&issuer.keys, peeked.kid.as_deref(), peeked.alg).await
}

/// The issuer's keys for `kid` (or without one, up to four of the right type); an unknown
/// `kid` waits for one refresh (rate limited, see `jwks`).
async fn keys_for(
    keys: &Arc<IssuerKeys>,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Vec<Arc<VerifyKey>>, AuthnError> {
    match keys.lookup(kid, alg) {
        Lookup::Keys(k) => Ok(k),
        Lookup::Unavailable => Err(AuthnError::KeysUnavailable),
        Lookup::UnknownKid => {
            let kid = kid.unwrap_or_default();
            if !keys.refresh_for_unknown_kid(kid).await {
                return Err(AuthnError::UnknownKid);
            }
            match keys.lookup(Some(kid), alg) {
                Lookup::Keys(k) => Ok(k),
                Lookup::Unavailable => Err(AuthnError::KeysUnavailable),
                Lookup::UnknownKid => Err(AuthnError::UnknownKid),
            }
        }
    }
}

/// Tries `candidates` in order: a key that may not verify `alg` is skipped, a bad signature
/// moves on to the next key, the first key whose signature verifies decides (its claims, or
/// the claim check's refusal). With no key left: the last bad signature, or
/// `DisallowedAlgorithm` when no key could verify `alg` at all.
fn try_keys(
    token: &str,
    alg: Algorithm,
    candidates: Vec<Arc<VerifyKey>>,
    validation: &Validation,
) -> Result<(Map<String, Value>, Arc<VerifyKey>), AuthnError> {
    let mut last = AuthnError::DisallowedAlgorithm;
    for key in candidates.into_iter().filter(|k| k.allows(alg)) {
        match jwt::verify(token, &key.key, validation) {
            Ok(claims) => return Ok((claims, key)),
            // Without a kid several keys may be tried; only a bad signature moves on.
            Err(AuthnError::BadSignature) => last = AuthnError::BadSignature,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// `iat`, when present, is a number and not later than now plus the clock skew.
fn check_iat(claims: &Map<String, Value>, skew: Duration) -> Result<(), AuthnError> {
    match claims.get("iat") {
        None => Ok(()),
        Some(v) => {
            let iat = v.as_f64().ok_or(AuthnError::Malformed)?;
            if iat > (now_unix() + skew.as_secs()) as f64 {
                Err(AuthnError::IssuedInFuture)
            } else {
                Ok(())
            }
        }
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn token(secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn key(secret: &str) -> Arc<VerifyKey> {
        Arc::new(VerifyKey::from_secret(secret.as_bytes()))
    }

    fn claims(exp_from_now: i64) -> Value {
        let exp = now_unix() as i64 + exp_from_now;
        json!({"iss": "https://idp", "aud": "api", "exp": exp, "sub": "alice"})
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["api"]);
        v.set_issuer(&["https://idp"]);
        v.leeway = 0;
        v
    }

    #[test]
    fn keys_are_tried_in_order_and_the_first_that_verifies_wins() {
        let t = token("right", claims(60));
        let (wrong, right, also_right) = (key("wrong"), key("right"), key("right"));
        let keys = vec![wrong, right.clone(), also_right];
        let (c, used) = try_keys(&t, Algorithm::HS256, keys, &validation()).unwrap();
        assert!(Arc::ptr_eq(&used, &right));
        assert_eq!(c.get("sub"), Some(&json!("alice")));
    }

    #[test]
    fn only_a_bad_signature_moves_on() {
        // Every key fails its signature: the answer is the bad signature.
        let t = token("right", claims(60));
        let keys = vec![key("a"), key("b")];
        assert_eq!(
            try_keys(&t, Algorithm::HS256, keys, &validation()).err(),
            Some(AuthnError::BadSignature)
        );
        // The right key with an expired token ends the loop: a later key is never asked.
        let old = token("right", claims(-3600));
        let keys = vec![key("wrong"), key("right"), key("right")];
        assert_eq!(
            try_keys(&old, Algorithm::HS256, keys, &validation()).err(),
            Some(AuthnError::Expired)
        );
    }

    #[test]
    fn a_key_that_may_not_verify_the_alg_is_never_used() {
        let t = token("right", claims(60));
        let mut other_alg = VerifyKey::from_secret(b"right");
        other_alg.algorithms = vec![Algorithm::HS384];
        let other_alg = Arc::new(other_alg);
        assert_eq!(
            try_keys(&t, Algorithm::HS256, vec![other_alg.clone()], &validation()).err(),
            Some(AuthnError::DisallowedAlgorithm)
        );
        // Skipped, not counted: a bad signature before it stays the answer.
        let keys = vec![key("wrong"), other_alg];
        assert_eq!(
            try_keys(&t, Algorithm::HS256, keys, &validation()).err(),
            Some(AuthnError::BadSignature)
        );
        assert_eq!(
            try_keys(&t, Algorithm::HS256, Vec::new(), &validation()).err(),
            Some(AuthnError::DisallowedAlgorithm)
        );
    }

    #[test]
    fn iat_in_the_future_beyond_the_skew_is_refused() {
        let skew = Duration::from_secs(30);
        let now = now_unix();
        let at = |iat: Value| json!({ "iat": iat }).as_object().cloned().unwrap();
        assert_eq!(check_iat(&Map::new(), skew), Ok(()));
        assert_eq!(check_iat(&at(json!(now)), skew), Ok(()));
        assert_eq!(check_iat(&at(json!(now + 20)), skew), Ok(()));
        assert_eq!(
            check_iat(&at(json!(now + 3600)), skew),
            Err(AuthnError::IssuedInFuture)
        );
        assert_eq!(
            check_iat(&at(json!("yesterday")), skew),
            Err(AuthnError::Malformed)
        );
    }

    /// A token with this header and `iss`, and a signature no key makes.
    fn unsigned(header: Value, iss: &str) -> String {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            b64(header),
            b64(json!({ "iss": iss, "aud": "api" }))
        )
    }

    #[tokio::test]
    async fn unknown_kid_and_a_key_of_another_alg_are_refused() {
        const ISS: &str = "http://127.0.0.1:1/corp";
        let dir =
            std::env::temp_dir().join(format!("portcullis-verify-unit-{}", std::process::id()));
        // One P-256 key, `k1` (RFC 7517 appendix A.1's public key), as persisted keys.
        let state = json!({
            "issuer": ISS, "fetched_at_unix": now_unix(), "jwks_uri": "http://127.0.0.1:1/jwks",
            "discovery": null,
            "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
                "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]},
        });
        let file = super::super::state::state_file(&dir, "corp");
        super::super::state::write_atomic(&file, state.to_string().as_bytes()).unwrap();
        let yaml = format!(
            "listeners:\n  plain: {{ address: \"127.0.0.1:0\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9\"] }}\n\
             routes:\n  - {{ path: /, upstream: app, auth: bearer }}\n\
             state_dir: \"{}\"\n\
             issuers:\n  corp:\n    issuer: \"{ISS}\"\n    audiences: [api]\n    \
             algorithms: [ES256, RS256]\n    retries: 0\n    unknown_kid_wait: 100ms\n",
            dir.display()
        );
        let config = crate::config::Config::from_yaml(&yaml, []).unwrap();
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::TokioClock);
        let metrics = crate::metrics::Metrics::try_new().unwrap();
        let auth = Authenticator::try_new(&config, metrics, clock).unwrap();
        for keys in auth.issuers() {
            assert!(keys.load_persisted().await, "persisted keys load");
        }
        let set = auth.set.load_full();
        let verify = |t: String| {
            let set = set.clone();
            async move { bearer_token(&set, &t, None).await.err() }
        };
        // A kid the keys do not have (and the refresh it triggers can't bring).
        let t = unsigned(json!({"alg": "ES256", "kid": "nope"}), ISS);
        assert_eq!(verify(t).await, Some(AuthnError::UnknownKid));
        // The kid names an EC key; the token says RS256 (accepted by the issuer, not by it).
        let t = unsigned(json!({"alg": "RS256", "kid": "k1"}), ISS);
        assert_eq!(verify(t).await, Some(AuthnError::DisallowedAlgorithm));
        // An algorithm the issuer does not accept is refused before any key is looked up.
        let t = unsigned(json!({"alg": "ES384", "kid": "nope"}), ISS);
        assert_eq!(verify(t).await, Some(AuthnError::DisallowedAlgorithm));
        // HS256 with no shared secret: refused, never checked against a JWKS key.
        let t = unsigned(json!({"alg": "HS256", "kid": "k1"}), ISS);
        assert_eq!(verify(t).await, Some(AuthnError::DisallowedAlgorithm));
        // The right kid and alg get as far as the signature.
        let t = unsigned(json!({"alg": "ES256", "kid": "k1"}), ISS);
        assert_eq!(verify(t).await, Some(AuthnError::BadSignature));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_hs_algorithms_use_the_shared_secret() {
        assert!(is_hmac(Algorithm::HS256) && is_hmac(Algorithm::HS512));
        assert!(!is_hmac(Algorithm::RS256) && !is_hmac(Algorithm::ES256));
    }
}
