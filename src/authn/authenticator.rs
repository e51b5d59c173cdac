//! The [`Authenticator`]: bearer tokens in, identities out, for every configured issuer.
//!
//! `authenticate` takes the `Authorization: Bearer` token (`extract`), answers from the
//! verified-token cache when it can (`token_cache`: one SHA-256 and one lookup), and
//! otherwise verifies the JWT against the keys of the issuer its `iss` names (`verify`),
//! under the issuer set of the running configuration (`issuers`).
//!
//! Security notes: the token is checked against `auth.max_token_bytes` before anything
//! parses it, never logged, and cached only by its SHA-256. A cached token answers only under
//! the issuer set it was verified under and only while the key that verified it is still
//! there; a route that names an issuer refuses a token of another (`wrong_issuer`), cached or
//! not.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::extract::bearer;
use super::issuers::{BuildError, IssuerSet, KeyTasks};
use super::token_cache::{Cached, TokenCache, cached_still_valid, sha256};
use super::{AuthnError, verify};
use crate::claims::{self, Identity};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;

/// Authenticates bearer tokens for every configured issuer.
///
/// It outlives configuration reloads: [`Authenticator::reload`] swaps the issuer set, keeping
/// the fetched keys of every issuer whose key source did not change. Issuers are numbered by
/// slot: a name keeps its slot for the life of the process, so a route built against one
/// configuration never names another issuer under a later one.
pub struct Authenticator {
    pub(super) set: ArcSwap<IssuerSet>,
    /// Slot -> issuer name; only grows.
    pub(super) slots: Mutex<Vec<Arc<str>>>,
    pub(super) tasks: Mutex<KeyTasks>,
    pub(super) cache: TokenCache,
    pub(super) metrics: Metrics,
    pub(super) clock: SharedClock,
}

// === impl Authenticator ===

impl Authenticator {
    /// Builds issuers from `config` (nothing is fetched yet: see [`Authenticator::start`]).
    pub fn try_new(
        config: &Config,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Result<Self, BuildError> {
        // The identity headers a cached token keeps once its first request has sent them
        // (`claims::HeaderCache`) are counted up front, from the mapping at start-up.
        let mapped: Arc<[crate::claims::ClaimPath]> = config
            .auth
            .mapped_headers()
            .into_iter()
            .map(|m| m.claim)
            .collect();
        let auth = Self {
            set: ArcSwap::from_pointee(IssuerSet::empty(config.auth.max_token_bytes)),
            slots: Mutex::new(Vec::new()),
            tasks: Mutex::new(KeyTasks::default()),
            cache: TokenCache::new(
                config.auth.token_cache_bytes,
                mapped,
                assertion_weight(config),
                &metrics,
            ),
            metrics,
            clock,
        };
        let set = auth.build_set(config, 0)?;
        auth.set.store(Arc::new(set));
        Ok(auth)
    }

    /// Wall-clock now, as token lifetimes are judged.
    pub fn wall(&self) -> std::time::SystemTime {
        self.clock.wall()
    }

    /// The clock it judges token lifetimes by (assertions are dated by it too).
    pub fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    /// Authenticates the request's bearer token. `issuer` (a slot from
    /// [`Authenticator::issuer_index`]) limits which issuer is accepted.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        issuer: Option<usize>,
    ) -> Result<Arc<Identity>, AuthnError> {
        let set = self.set.load_full();
        let token = bearer(headers)?;
        if token.len() > set.max_token_bytes {
            return Err(AuthnError::TooLarge);
        }
        let hash = sha256(token);
        let valid = |c: &Cached| c.generation == set.generation && cached_still_valid(&set, c);
        if let Some(c) = self.cache.get(&hash, valid) {
            if issuer.is_some_and(|i| i != c.issuer) {
                return Err(AuthnError::WrongIssuer);
            }
            return Ok(c.identity.clone());
        }
        let cached = verify::bearer_token(&set, token, issuer).await?;
        let identity = cached.identity.clone();
        self.cache.insert(hash, cached);
        Ok(identity)
    }

    /// The verified-token cache's estimated size in bytes (see `token_cache`), after
    /// pending maintenance.
    pub fn token_cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Tokens in the verified-token cache, after pending maintenance.
    pub fn token_cache_entries(&self) -> u64 {
        self.cache.entries()
    }

    /// The claims a session keeps from an ID token of the issuer in `slot`: `sub`, and the
    /// top-level claims that identity headers, rules, groups, roles and scopes read.
    pub fn session_claims(&self, slot: usize, claims: Map<String, Value>) -> Map<String, Value> {
        let set = self.set.load();
        match set.get(slot) {
            Some(i) => claims::session_claims(claims, i.sources(), &set.kept_claims),
            None => Map::new(),
        }
    }

    /// The identity of a session of the issuer in `slot`, from its kept claims.
    pub fn session_identity(&self, slot: usize, claims: &Map<String, Value>) -> Option<Identity> {
        let set = self.set.load();
        let i = set.get(slot)?;
        Some(Identity::from_claims(
            &i.name,
            claims.clone(),
            i.sources(),
            &set.kept_claims,
        ))
    }
}

/// What a cached identity's signed assertion holds (`claims::HeaderCache`), counted up
/// front in the token cache's bound: one assertion of the usual size (the fixed claims with
/// the longest `sub` leave room for a few optional ones), or nothing without assertions.
fn assertion_weight(config: &Config) -> u32 {
    config.auth.assertion.as_ref().map_or(0, |a| {
        let bytes = crate::config::assertion::fixed_size(&a.issuer, 64).min(a.max_bytes)
            + size_of::<claims::KeptAssertion>()
            + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::AUTHORIZATION;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::authn::token_cache::now_unix;

    const SECRET: &str = "a-shared-secret-for-authenticator-unit-tests-0123";

    fn config(extra: &str) -> Config {
        let dir = std::env::temp_dir().join("portcullis-authenticator-unit");
        let yaml = format!(
            "listeners:\n  plain: {{ address: \"127.0.0.1:0\" }}\n\
             upstreams:\n  app: {{ addresses: [\"http://127.0.0.1:9\"] }}\n\
             routes:\n  - {{ path: /, upstream: app, auth: bearer }}\n\
             state_dir: \"{}\"\n\
             issuers:\n  corp:\n    issuer: \"https://corp\"\n    audiences: [api]\n    \
             algorithms: [HS256]\n    shared_secret: \"{SECRET}\"\n{extra}",
            dir.display()
        );
        Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("{e}"))
    }

    fn auth(config: &Config) -> Authenticator {
        let clock: SharedClock = Arc::new(crate::clock::TokioClock);
        Authenticator::try_new(config, Metrics::try_new().unwrap(), clock).unwrap()
    }

    fn headers(claims: Value) -> HeaderMap {
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn good() -> Value {
        json!({"iss": "https://corp", "aud": "api", "exp": now_unix() + 600, "sub": "alice"})
    }

    #[tokio::test]
    async fn a_verified_token_is_cached_and_answered_from_the_cache() {
        let a = auth(&config(""));
        let h = headers(good());
        let first = a.authenticate(&h, None).await.unwrap();
        assert_eq!(first.subject.as_deref(), Some("alice"));
        assert_eq!(a.token_cache_entries(), 1);
        let second = a.authenticate(&h, None).await.unwrap();
        assert!(Arc::ptr_eq(&first, &second), "served from the cache");
    }

    #[tokio::test]
    async fn the_route_issuer_is_enforced_on_cached_tokens_too() {
        let a = auth(&config(""));
        let other = a.issuer_index("other");
        let h = headers(good());
        assert_eq!(
            a.authenticate(&h, Some(other)).await.err(),
            Some(AuthnError::WrongIssuer)
        );
        let corp = Some(a.issuer_index("corp"));
        a.authenticate(&h, corp).await.unwrap();
        assert_eq!(
            a.authenticate(&h, Some(other)).await.err(),
            Some(AuthnError::WrongIssuer)
        );
    }

    #[tokio::test]
    async fn oversized_and_refused_tokens_are_not_cached() {
        let a = auth(&config("auth: { max_token_bytes: 1024 }\n"));
        let big = json!({"iss": "https://corp", "aud": "api", "exp": now_unix() + 600,
                          "pad": "x".repeat(2048)});
        assert_eq!(
            a.authenticate(&headers(big), None).await.err(),
            Some(AuthnError::TooLarge)
        );
        let wrong_aud = json!({"iss": "https://corp", "aud": "web", "exp": now_unix() + 600});
        assert_eq!(
            a.authenticate(&headers(wrong_aud), None).await.err(),
            Some(AuthnError::BadAudience)
        );
        assert_eq!(a.token_cache_entries(), 0);
    }

    #[tokio::test]
    async fn a_reload_drops_what_the_old_settings_verified() {
        let a = auth(&config(""));
        let h = headers(good());
        a.authenticate(&h, None).await.unwrap();
        let stricter = config("    required_claims: [email]\n");
        a.reload(&stricter).unwrap();
        assert_eq!(a.token_cache_entries(), 0);
        assert_eq!(
            a.authenticate(&h, None).await.err(),
            Some(AuthnError::MissingClaim)
        );
    }

    #[test]
    fn sessions_keep_and_rebuild_from_the_issuers_claims() {
        let a = auth(&config(""));
        let slot = a.issuer_index("corp");
        let claims = json!({"sub": "alice", "scope": "read", "nonce": "n"});
        let kept = a.session_claims(slot, claims.as_object().cloned().unwrap());
        assert!(kept.contains_key("sub") && kept.contains_key("scope"));
        assert!(!kept.contains_key("nonce"));
        let id = a.session_identity(slot, &kept).unwrap();
        assert_eq!(
            (&*id.issuer, id.subject.as_deref()),
            ("corp", Some("alice"))
        );
        // A slot without an issuer keeps nothing and builds no identity.
        let gone = a.issuer_index("gone");
        assert!(a.session_claims(gone, kept.clone()).is_empty());
        assert!(a.session_identity(gone, &kept).is_none());
    }
}
