//! Bearer-token authentication.
//!
//! `Authenticator::authenticate` takes the `Authorization: Bearer` token, answers from the
//! verified-token cache when it can (one SHA-256 and one lookup), and otherwise verifies the
//! JWT against the keys of the issuer its `iss` names. See `jwks.rs` for how keys survive
//! rollover and IdP outages, `jwt.rs` for the checks.
//!
//! Security notes: the token itself is never logged or stored; the cache is keyed by its
//! SHA-256. A cached token is accepted only while the key that verified it is still in the
//! issuer's key set, and never past its `exp`.

pub mod browser;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod oidc;
pub mod state;
pub mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub use crate::claims::Identity;
use crate::config::{Config, IssuerConfig};
use crate::idp::{IdpClient, SharedClock};
use crate::metrics::Metrics;
use jwks::IssuerKeys;
use keys::VerifyKey;

pub use step::{AuthnStep, Forwarding, Outcome, Refusal};

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

/// A verified token, cached by its hash.
struct Cached {
    identity: Arc<Identity>,
    /// The issuer's slot (see [`Authenticator::issuer_index`]).
    issuer: usize,
    /// The key that verified it (None: the issuer's shared secret).
    key: Option<Arc<VerifyKey>>,
    exp: u64,
    /// The [`IssuerSet`] generation it was verified under: after a reload it is verified
    /// again, so a token the new settings refuse (audience removed, ...) is never served.
    generation: u64,
}

struct Issuer {
    /// This configuration's settings for the issuer (audiences, claims, ...); the keys may
    /// have been fetched under an earlier configuration with the same key source.
    config: Arc<IssuerConfig>,
    /// Its name, shared by every identity it verifies.
    name: Arc<str>,
    keys: Arc<IssuerKeys>,
    validations: Vec<(Algorithm, Validation)>,
    secret: Option<Arc<VerifyKey>>,
}

/// The issuers of one configuration, swapped whole on a reload.
struct IssuerSet {
    generation: u64,
    /// By slot; `None` for a slot whose issuer this configuration does not have.
    issuers: Vec<Option<Issuer>>,
    by_iss: HashMap<String, usize>,
    max_token_bytes: usize,
    /// Top-level claims something reads (identity headers, `authorize` claim rules); a
    /// cached identity keeps only these, which is most of what keeps an entry small.
    kept_claims: Arc<[String]>,
}

/// The key refresh task of each issuer, by name, so a reload can stop the ones it drops.
#[derive(Default)]
struct KeyTasks {
    /// Whether [`Authenticator::start`] ran: before it, a reload starts nothing.
    started: bool,
    running: HashMap<String, (Arc<IssuerKeys>, tokio::task::AbortHandle)>,
}

/// Authenticates bearer tokens for every configured issuer.
///
/// It outlives configuration reloads: [`Authenticator::reload`] swaps the issuer set, keeping
/// the fetched keys of every issuer whose key source did not change. Issuers are numbered by
/// slot: a name keeps its slot for the life of the process, so a route built against one
/// configuration never names another issuer under a later one.
pub struct Authenticator {
    set: ArcSwap<IssuerSet>,
    /// Slot -> issuer name; only grows.
    slots: Mutex<Vec<Arc<str>>>,
    tasks: Mutex<KeyTasks>,
    cache: moka::sync::Cache<[u8; 32], Arc<Cached>>,
    /// `portcullis_token_cache_requests_total{result="hit"}` and `{result="miss"}`, resolved once.
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
    metrics: Metrics,
    clock: SharedClock,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// TLS for an issuer could not be set up.
    #[error("issuers.{issuer}: {source}")]
    Tls {
        issuer: String,
        #[source]
        source: crate::tls_client::TlsClientError,
    },
}

struct ExpireAtExp;

impl moka::Expiry<[u8; 32], Arc<Cached>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Cached>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(now_unix())))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            .identity_headers
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.auth.token_cache_bytes)
            .weigher(move |_k, v: &Arc<Cached>| cached_weight(v, &mapped))
            .expire_after(ExpireAtExp)
            .build();
        let auth = Self {
            set: ArcSwap::from_pointee(IssuerSet {
                generation: 0,
                issuers: Vec::new(),
                by_iss: HashMap::new(),
                max_token_bytes: config.auth.max_token_bytes,
                kept_claims: Arc::from(Vec::new()),
            }),
            slots: Mutex::new(Vec::new()),
            tasks: Mutex::new(KeyTasks::default()),
            cache,
            cache_hits: metrics.token_cache.with_label_values(&["hit"]),
            cache_misses: metrics.token_cache.with_label_values(&["miss"]),
            metrics,
            clock,
        };
        let set = auth.build_set(config, 0)?;
        auth.set.store(Arc::new(set));
        Ok(auth)
    }

    /// The slot of the issuer named `name`, assigned now if the name is new. A name keeps its
    /// slot for the life of the process (across reloads). Always `Some`.
    pub fn issuer_index(&self, name: &str) -> Option<usize> {
        Some(self.slot(name))
    }

    /// Issuer names by slot (for metric labels), including names a reload removed.
    pub fn slot_names(&self) -> Vec<Arc<str>> {
        lock(&self.slots).clone()
    }

    fn slot(&self, name: &str) -> usize {
        let mut slots = lock(&self.slots);
        match slots.iter().position(|n| &**n == name) {
            Some(i) => i,
            None => {
                slots.push(Arc::from(name));
                slots.len() - 1
            }
        }
    }

    /// The keys of every issuer of the running configuration.
    pub fn issuers(&self) -> Vec<Arc<IssuerKeys>> {
        self.set
            .load()
            .issuers
            .iter()
            .flatten()
            .map(|i| i.keys.clone())
            .collect()
    }

    /// The settings of the issuer in `slot` (see [`Authenticator::issuer_index`]).
    pub fn issuer_config(&self, slot: usize) -> Option<Arc<IssuerConfig>> {
        self.set
            .load()
            .issuers
            .get(slot)
            .and_then(Option::as_ref)
            .map(|i| i.config.clone())
    }

    /// The keys of the issuer in `slot` (its discovery document, for the code flow).
    pub fn issuer_keys(&self, slot: usize) -> Option<Arc<IssuerKeys>> {
        self.set
            .load()
            .issuers
            .get(slot)
            .and_then(Option::as_ref)
            .map(|i| i.keys.clone())
    }

    /// The slot of the configured issuer whose `iss` the (unverified) `token` names.
    pub fn slot_for_token(&self, token: &str) -> Option<usize> {
        let peeked = jwt::peek(token).ok()?;
        self.set.load().by_iss.get(&peeked.iss).copied()
    }

    /// The claims a session keeps from an ID token of the issuer in `slot`: `sub`, and the
    /// top-level claims that identity headers, rules, groups, roles and scopes read.
    pub fn session_claims(
        &self,
        slot: usize,
        mut claims: Map<String, Value>,
    ) -> Map<String, Value> {
        let set = self.set.load();
        let Some(i) = set.issuers.get(slot).and_then(Option::as_ref) else {
            return Map::new();
        };
        let cfg = &i.config;
        let firsts: Vec<&str> = std::iter::once(&cfg.groups_claim)
            .chain(std::iter::once(&cfg.roles_claim))
            .chain(cfg.scope_claims.iter())
            .filter_map(|p| p.0.first().map(String::as_str))
            .collect();
        claims.retain(|k, _| {
            k == "sub" || firsts.contains(&k.as_str()) || set.kept_claims.iter().any(|c| c == k)
        });
        claims
    }

    /// The identity of a session of the issuer in `slot`, from its kept claims.
    pub fn session_identity(&self, slot: usize, claims: &Map<String, Value>) -> Option<Identity> {
        let set = self.set.load();
        let i = set.issuers.get(slot).and_then(Option::as_ref)?;
        Some(build_identity(
            &i.config,
            &i.name,
            claims.clone(),
            &set.kept_claims,
        ))
    }

    /// Builds the issuer set for `config`, reusing the running keys of every issuer whose
    /// key source (issuer URL, `jwks_uri`, `ca_file`) is unchanged. Nothing is installed.
    fn build_set(&self, config: &Config, generation: u64) -> Result<IssuerSet, BuildError> {
        let running: HashMap<String, Arc<IssuerKeys>> = {
            let current = self.set.load();
            current
                .issuers
                .iter()
                .flatten()
                .map(|i| (i.config.name.clone(), i.keys.clone()))
                .collect()
        };
        let mut issuers: Vec<Option<Issuer>> = Vec::new();
        let mut by_iss = HashMap::new();
        for ic in &config.issuers {
            let keys = match running.get(&ic.name) {
                Some(k) if same_key_source(&k.config, ic) => {
                    if !same_fetch_settings(&k.config, ic) {
                        tracing::warn!(
                            issuer = %ic.name,
                            "key refresh and IdP call settings of this issuer take effect after a restart"
                        );
                    }
                    k.clone()
                }
                _ => Arc::new(self.new_keys(config, ic)?),
            };
            let slot = self.slot(&ic.name);
            if issuers.len() <= slot {
                issuers.resize_with(slot + 1, || None);
            }
            issuers[slot] = Some(Issuer {
                config: ic.clone(),
                name: Arc::from(ic.name.as_str()),
                validations: validations(ic),
                secret: ic
                    .shared_secret
                    .as_ref()
                    .map(|s| Arc::new(VerifyKey::from_secret(s.expose()))),
                keys,
            });
            self.metrics.init_issuer(&ic.name);
            by_iss.insert(ic.issuer.clone(), slot);
        }
        Ok(IssuerSet {
            generation,
            issuers,
            by_iss,
            max_token_bytes: config.auth.max_token_bytes,
            kept_claims: kept_claims(config),
        })
    }

    fn new_keys(&self, config: &Config, ic: &Arc<IssuerConfig>) -> Result<IssuerKeys, BuildError> {
        let tls =
            crate::tls_client::config(ic.ca_file.as_deref()).map_err(|source| BuildError::Tls {
                issuer: ic.name.clone(),
                source,
            })?;
        let idp = IdpClient::new(
            &ic.name,
            tls,
            ic.idp.clone(),
            self.clock.clone(),
            self.metrics.clone(),
        );
        Ok(IssuerKeys::new(
            ic.clone(),
            idp,
            self.clock.clone(),
            self.metrics.clone(),
            Some(config.state_dir.as_path()),
        ))
    }

    /// Prepares `config`'s issuers (TLS set up, keys reused or created) without applying
    /// them; [`PreparedIssuers::apply`] swaps them in.
    pub fn prepare(&self, config: &Config) -> Result<PreparedIssuers<'_>, BuildError> {
        let generation = self.set.load().generation + 1;
        Ok(PreparedIssuers {
            auth: self,
            set: self.build_set(config, generation)?,
        })
    }

    /// Applies `config`'s issuers at once (what a reload does): changed settings take effect
    /// for the next request, added issuers start fetching keys, removed ones stop, and every
    /// cached token is verified again under the new settings.
    pub fn reload(&self, config: &Config) -> Result<(), BuildError> {
        self.prepare(config)?.apply();
        Ok(())
    }

    fn install(&self, set: IssuerSet) {
        let keep: Vec<(String, Arc<IssuerKeys>)> = set
            .issuers
            .iter()
            .flatten()
            .map(|i| (i.config.name.clone(), i.keys.clone()))
            .collect();
        let old = self.set.swap(Arc::new(set));
        // Entries of the old generation are never served again; this frees their memory.
        self.cache.invalidate_all();
        for gone in old.issuers.iter().flatten() {
            if !keep.iter().any(|(n, _)| *n == gone.config.name) {
                let name = [gone.config.name.as_str()];
                let _ = self.metrics.jwks_age.remove_label_values(&name);
                let _ = self.metrics.jwks_keys.remove_label_values(&name);
            }
        }
        let mut tasks = lock(&self.tasks);
        tasks.running.retain(|name, (keys, handle)| {
            let kept = keep.iter().any(|(n, k)| n == name && Arc::ptr_eq(k, keys));
            if !kept {
                handle.abort();
            }
            kept
        });
        if !tasks.started {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to fetch the keys of added issuers on");
            return;
        };
        for (name, keys) in keep {
            if tasks.running.contains_key(&name) {
                continue;
            }
            let k = keys.clone();
            let handle = rt
                .spawn(async move {
                    k.load_persisted().await;
                    k.run(Duration::ZERO).await;
                })
                .abort_handle();
            tasks.running.insert(name, (keys, handle));
        }
    }

    /// Loads persisted keys, then fetches every issuer now and keeps refreshing in the
    /// background. The tasks stop when the returned set is dropped, or when a reload removes
    /// their issuer.
    pub async fn start(&self) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let set = self.set.load_full();
        for issuer in set.issuers.iter().flatten() {
            issuer.keys.load_persisted().await;
            let handle = tasks.spawn(issuer.keys.clone().run(Duration::ZERO));
            lock(&self.tasks)
                .running
                .insert(issuer.config.name.clone(), (issuer.keys.clone(), handle));
        }
        lock(&self.tasks).started = true;
        tasks
    }

    /// True when every issuer has had usable keys since start (fetched or persisted); keys
    /// going stale later do not undo it (see `health::Readiness`).
    pub fn ready(&self) -> bool {
        self.set
            .load()
            .issuers
            .iter()
            .flatten()
            .all(|i| i.keys.had_usable_keys())
    }

    /// Updates gauges that depend on time (key age); called before /metrics renders.
    pub fn update_gauges(&self) {
        for i in self.set.load().issuers.iter().flatten() {
            let age = i.keys.age().map_or(-1.0, |a| a.as_secs_f64());
            self.metrics
                .jwks_age
                .with_label_values(&[&i.config.name])
                .set(age);
            i.keys.publish_usable();
        }
    }

    /// The verified-token cache's estimated size in bytes (see `cached_weight`), after
    /// pending maintenance.
    pub fn token_cache_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Tokens in the verified-token cache, after pending maintenance.
    pub fn token_cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
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
        if let Some(c) = self.cache.get(&hash) {
            if c.generation == set.generation && cached_still_valid(&set, &c) {
                self.cache_hits.inc();
                if issuer.is_some_and(|i| i != c.issuer) {
                    return Err(AuthnError::WrongIssuer);
                }
                return Ok(c.identity.clone());
            }
            self.cache.invalidate(&hash);
        }
        self.cache_misses.inc();
        let cached = self.verify(&set, token, issuer).await?;
        let identity = cached.identity.clone();
        if cached.exp > now_unix() {
            self.cache.insert(hash, Arc::new(cached));
        }
        Ok(identity)
    }

    async fn verify(
        &self,
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
        let issuer = set
            .issuers
            .get(idx)
            .and_then(Option::as_ref)
            .ok_or(AuthnError::UnknownIssuer)?;
        let validation = issuer
            .validations
            .iter()
            .find(|(a, _)| *a == peeked.alg)
            .map(|(_, v)| v)
            .ok_or(AuthnError::DisallowedAlgorithm)?;
        let candidates: Vec<Arc<VerifyKey>> = if is_hmac(peeked.alg) {
            vec![
                issuer
                    .secret
                    .clone()
                    .ok_or(AuthnError::DisallowedAlgorithm)?,
            ]
        } else {
            self.candidates(&issuer.keys, peeked.kid.as_deref(), peeked.alg)
                .await?
        };
        let mut last = AuthnError::DisallowedAlgorithm;
        for key in candidates {
            if !key.allows(peeked.alg) {
                last = AuthnError::DisallowedAlgorithm;
                continue;
            }
            match jwt::verify(token, &key.key, validation) {
                Ok(claims) => {
                    let cfg = &issuer.config;
                    check_iat(&claims, cfg.clock_skew)?;
                    oidc::id_token::check_access_token(token, &claims)?;
                    if cfg.required_claims.iter().any(|c| !claims.contains_key(c)) {
                        return Err(AuthnError::MissingClaim);
                    }
                    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let identity =
                        Arc::new(build_identity(cfg, &issuer.name, claims, &set.kept_claims));
                    let key = (!is_hmac(peeked.alg)).then_some(key);
                    return Ok(Cached {
                        identity,
                        issuer: idx,
                        key,
                        exp,
                        generation: set.generation,
                    });
                }
                // Without a kid several keys may be tried; only a bad signature moves on.
                Err(AuthnError::BadSignature) => last = AuthnError::BadSignature,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn candidates(
        &self,
        keys: &Arc<IssuerKeys>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<VerifyKey>>, AuthnError> {
        use jwks::Lookup;
        match keys.lookup(kid, alg) {
            Lookup::Keys(k) => Ok(k),
            Lookup::Unavailable => Err(AuthnError::KeysUnavailable),
            Lookup::UnknownKid => {
                let kid = kid.unwrap_or_default();
                if keys.refresh_for_unknown_kid(kid).await {
                    match keys.lookup(Some(kid), alg) {
                        Lookup::Keys(k) => Ok(k),
                        Lookup::Unavailable => Err(AuthnError::KeysUnavailable),
                        Lookup::UnknownKid => Err(AuthnError::UnknownKid),
                    }
                } else {
                    Err(AuthnError::UnknownKid)
                }
            }
        }
    }

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
        let i = set
            .issuers
            .get(issuer)
            .and_then(Option::as_ref)
            .ok_or(AuthnError::UnknownIssuer)?;
        if set.by_iss.get(&peeked.iss) != Some(&issuer) {
            return Err(AuthnError::WrongIssuer);
        }
        let mut validation = i
            .validations
            .iter()
            .find(|(a, _)| *a == peeked.alg)
            .map(|(_, v)| v.clone())
            .ok_or(AuthnError::DisallowedAlgorithm)?;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(required);
        let candidates: Vec<Arc<VerifyKey>> = if is_hmac(peeked.alg) {
            vec![i.secret.clone().ok_or(AuthnError::DisallowedAlgorithm)?]
        } else {
            self.candidates(&i.keys, peeked.kid.as_deref(), peeked.alg)
                .await?
        };
        let mut last = AuthnError::DisallowedAlgorithm;
        for key in candidates.iter().filter(|k| k.allows(peeked.alg)) {
            match jwt::verify(token, &key.key, &validation) {
                Ok(claims) => {
                    check_iat(&claims, i.config.clock_skew)?;
                    if required.iter().any(|c| !claims.contains_key(*c)) {
                        return Err(AuthnError::MissingClaim);
                    }
                    return Ok(claims);
                }
                Err(AuthnError::BadSignature) => last = AuthnError::BadSignature,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// A reload's issuers, built but not applied yet (see [`Authenticator::prepare`]).
pub struct PreparedIssuers<'a> {
    auth: &'a Authenticator,
    set: IssuerSet,
}

// === impl PreparedIssuers ===

impl PreparedIssuers<'_> {
    /// Swaps the issuers in.
    pub fn apply(self) {
        self.auth.install(self.set);
    }
}

fn cached_still_valid(set: &IssuerSet, c: &Cached) -> bool {
    if c.exp <= now_unix() {
        return false;
    }
    let Some(issuer) = set.issuers.get(c.issuer).and_then(Option::as_ref) else {
        return false;
    };
    match &c.key {
        Some(k) => issuer.keys.usable() && issuer.keys.still_has(k),
        None => true,
    }
}

/// Where the keys come from: when this is unchanged, a reload keeps the fetched keys.
fn same_key_source(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    a.issuer == b.issuer && a.jwks_uri == b.jwks_uri && a.ca_file == b.ca_file
}

/// How the keys are fetched and for how long they stay usable (fixed for reused keys).
fn same_fetch_settings(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    (
        a.refresh_interval,
        a.refresh_min,
        a.refresh_max,
        a.unknown_kid_cooldown,
        a.max_stale,
    ) == (
        b.refresh_interval,
        b.refresh_min,
        b.refresh_max,
        b.unknown_kid_cooldown,
        b.max_stale,
    ) && a.idp == b.idp
}

/// moka's bookkeeping per entry (key copy, entry and deque nodes, expiry timer node), on
/// top of what the entry owns; measured in `tests/token_cache.rs` (see docs/BENCHMARKS.md).
const ENTRY_OVERHEAD: usize = 256;
/// Reference counts in front of an `Arc`'s value.
const ARC_HEADER: usize = 16;
/// One B-tree node of a `serde_json::Map` (up to 11 keys and values, plus links).
const MAP_NODE: usize = 16 + 11 * (size_of::<String>() + size_of::<Value>());

/// Estimated bytes one cached token holds (what the cache's byte bound counts), with the
/// identity headers of the `mapped` claims it will keep.
fn cached_weight(c: &Arc<Cached>, mapped: &[crate::claims::ClaimPath]) -> u32 {
    let id = &c.identity;
    // Capacity, not length: that is what is allocated.
    let strings = |v: &Vec<String>| {
        v.capacity() * size_of::<String>() + v.iter().map(String::capacity).sum::<usize>()
    };
    let bytes = ENTRY_OVERHEAD
        + ARC_HEADER
        + size_of::<Cached>()
        + ARC_HEADER
        + size_of::<Identity>()
        + id.subject.as_ref().map_or(0, String::capacity)
        + strings(&id.scopes)
        + strings(&id.groups)
        + strings(&id.roles)
        + map_bytes(&id.claims)
        + header_bytes(&id.claims, mapped);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The identity headers built from `claims` (kept in `claims::HeaderCache`): a value is
/// about as long as its claim's text.
fn header_bytes(claims: &Map<String, Value>, mapped: &[crate::claims::ClaimPath]) -> usize {
    let (count, bytes) = mapped
        .iter()
        .filter_map(|p| p.get(claims))
        .filter(|v| !matches!(v, Value::Null | Value::Object(_)))
        .fold((0, 0), |(n, b), v| (n + 1, b + value_bytes(v).max(8)));
    if count == 0 {
        return 0;
    }
    // The boxed slice of (name, value) pairs, and each value's shared buffer.
    ARC_HEADER + count * (size_of::<(http::HeaderName, http::HeaderValue)>() + 32) + bytes
}

fn map_bytes(m: &Map<String, Value>) -> usize {
    if m.is_empty() {
        return 0;
    }
    // Nodes are between half full and full; count them as two-thirds full.
    let nodes = m.len().div_ceil(7).max(1);
    nodes * MAP_NODE
        + m.iter()
            .map(|(k, v)| k.capacity() + value_bytes(v))
            .sum::<usize>()
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.capacity(),
        Value::Array(a) => {
            a.capacity() * size_of::<Value>() + a.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(m) => map_bytes(m),
        _ => 0,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn validations(ic: &IssuerConfig) -> Vec<(Algorithm, Validation)> {
    ic.algorithms
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = ic.clock_skew.as_secs();
            v.validate_nbf = true;
            v.set_audience(&ic.audiences);
            v.set_issuer(&[&ic.issuer]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (*alg, v)
        })
        .collect()
}

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

/// Strings from a claim that is a string (split on spaces) or an array of strings.
fn strings(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn build_identity(
    cfg: &IssuerConfig,
    name: &Arc<str>,
    mut claims: Map<String, Value>,
    kept: &[String],
) -> Identity {
    let scopes = cfg
        .scope_claims
        .iter()
        .find_map(|p| p.get(&claims))
        .map(|v| strings(Some(v), true))
        .unwrap_or_default();
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string);
    let groups = strings(cfg.groups_claim.get(&claims), false);
    let roles = strings(cfg.roles_claim.get(&claims), false);
    claims.retain(|k, _| kept.iter().any(|c| c == k));
    Identity {
        issuer: name.clone(),
        subject,
        scopes,
        groups,
        roles,
        claims,
        headers: Default::default(),
    }
}

/// The top-level claims the configuration reads from [`Identity::claims`]: identity headers
/// and routes' `authorize` claim rules (scopes, groups, roles and `sub` have their own fields).
fn kept_claims(config: &Config) -> Arc<[String]> {
    let mut kept: Vec<String> = Vec::new();
    let mut add = |path: &crate::claims::ClaimPath| {
        if let Some(first) = path.0.first()
            && !kept.contains(first)
        {
            kept.push(first.clone());
        }
    };
    for (path, _) in &config.auth.identity_headers {
        add(path);
    }
    for r in &config.routes {
        for rule in &r.policy.rules {
            if let crate::authz::Rule::Claim(path, _) = rule {
                add(path);
            }
        }
    }
    Arc::from(kept)
}

/// The token from `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthnError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(AuthnError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthnError::InvalidRequest);
    }
    let v = v.to_str().map_err(|_| AuthnError::InvalidRequest)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthnError::InvalidRequest)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::InvalidRequest);
    }
    Ok(token)
}

fn sha256(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
