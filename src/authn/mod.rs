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

pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod oidc;
pub mod state;
pub mod step;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    issuer: usize,
    /// The key that verified it (None: the issuer's shared secret).
    key: Option<Arc<VerifyKey>>,
    exp: u64,
}

struct Issuer {
    keys: Arc<IssuerKeys>,
    validations: Vec<(Algorithm, Validation)>,
    secret: Option<Arc<VerifyKey>>,
}

/// Authenticates bearer tokens for every configured issuer.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    cache: moka::sync::Cache<[u8; 32], Arc<Cached>>,
    max_token_bytes: usize,
    metrics: Metrics,
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
        let state_dir: Option<&Path> = Some(config.state_dir.as_path());
        let mut issuers = Vec::new();
        let mut by_iss = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, ic) in config.issuers.iter().enumerate() {
            let tls = crate::tls_client::config(ic.ca_file.as_deref()).map_err(|source| {
                BuildError::Tls {
                    issuer: ic.name.clone(),
                    source,
                }
            })?;
            let idp = IdpClient::new(
                &ic.name,
                tls,
                ic.idp.clone(),
                clock.clone(),
                metrics.clone(),
            );
            let keys = Arc::new(IssuerKeys::new(
                ic.clone(),
                idp,
                clock.clone(),
                metrics.clone(),
                state_dir,
            ));
            issuers.push(Issuer {
                validations: validations(ic),
                secret: ic
                    .shared_secret
                    .as_ref()
                    .map(|s| Arc::new(VerifyKey::from_secret(s.expose()))),
                keys,
            });
            metrics.init_issuer(&ic.name);
            by_iss.insert(ic.issuer.clone(), i);
            by_name.insert(ic.name.clone(), i);
        }
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.auth.token_cache_entries)
            .expire_after(ExpireAtExp)
            .build();
        Ok(Self {
            issuers,
            by_iss,
            by_name,
            cache,
            max_token_bytes: config.auth.max_token_bytes,
            metrics,
        })
    }

    /// Index of the issuer named `name`.
    pub fn issuer_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The keys of every issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.iter().map(|i| &i.keys)
    }

    /// Loads persisted keys, then fetches every issuer now and keeps refreshing in the
    /// background. Returns the background tasks.
    pub async fn start(&self) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for issuer in &self.issuers {
            issuer.keys.load_persisted().await;
            tasks.spawn(issuer.keys.clone().run(Duration::ZERO));
        }
        tasks
    }

    /// True when every issuer has had usable keys since start (fetched or persisted); keys
    /// going stale later do not undo it (see `health::Readiness`).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.had_usable_keys())
    }

    /// Updates gauges that depend on time (key age); called before /metrics renders.
    pub fn update_gauges(&self) {
        for i in &self.issuers {
            let age = i.keys.age().map_or(-1.0, |a| a.as_secs_f64());
            self.metrics
                .jwks_age
                .with_label_values(&[&i.keys.config.name])
                .set(age);
            i.keys.publish_usable();
        }
    }

    /// Authenticates the request's bearer token. `issuer` limits which issuer is accepted.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        issuer: Option<usize>,
    ) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer(headers)?;
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::TooLarge);
        }
        let hash = sha256(token);
        if let Some(c) = self.cache.get(&hash) {
            if self.cached_still_valid(&c) {
                self.metrics.token_cache.with_label_values(&["hit"]).inc();
                if issuer.is_some_and(|i| i != c.issuer) {
                    return Err(AuthnError::WrongIssuer);
                }
                return Ok(c.identity.clone());
            }
            self.cache.invalidate(&hash);
        }
        self.metrics.token_cache.with_label_values(&["miss"]).inc();
        let cached = self.verify(token, issuer).await?;
        let identity = cached.identity.clone();
        if cached.exp > now_unix() {
            self.cache.insert(hash, Arc::new(cached));
        }
        Ok(identity)
    }

    fn cached_still_valid(&self, c: &Cached) -> bool {
        if c.exp <= now_unix() {
            return false;
        }
        let Some(issuer) = self.issuers.get(c.issuer) else {
            return false;
        };
        match &c.key {
            Some(k) => issuer.keys.usable() && issuer.keys.still_has(k),
            None => true,
        }
    }

    async fn verify(&self, token: &str, only: Option<usize>) -> Result<Cached, AuthnError> {
        let peeked = jwt::peek(token)?;
        let idx = *self
            .by_iss
            .get(&peeked.iss)
            .ok_or(AuthnError::UnknownIssuer)?;
        if only.is_some_and(|o| o != idx) {
            return Err(AuthnError::WrongIssuer);
        }
        let issuer = &self.issuers[idx];
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
                    let cfg = &issuer.keys.config;
                    check_iat(&claims, cfg.clock_skew)?;
                    oidc::id_token::check_access_token(token, &claims)?;
                    if cfg.required_claims.iter().any(|c| !claims.contains_key(c)) {
                        return Err(AuthnError::MissingClaim);
                    }
                    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let identity = Arc::new(build_identity(cfg, claims));
                    let key = (!is_hmac(peeked.alg)).then_some(key);
                    return Ok(Cached {
                        identity,
                        issuer: idx,
                        key,
                        exp,
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
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::TooLarge);
        }
        let peeked = jwt::peek(token)?;
        let i = self.issuers.get(issuer).ok_or(AuthnError::UnknownIssuer)?;
        if self.by_iss.get(&peeked.iss) != Some(&issuer) {
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
                    check_iat(&claims, i.keys.config.clock_skew)?;
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

fn build_identity(cfg: &IssuerConfig, claims: Map<String, Value>) -> Identity {
    let scopes = cfg
        .scope_claims
        .iter()
        .find_map(|p| p.get(&claims))
        .map(|v| strings(Some(v), true))
        .unwrap_or_default();
    Identity {
        issuer: Arc::from(cfg.name.as_str()),
        subject: claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string),
        scopes,
        groups: strings(cfg.groups_claim.get(&claims), false),
        roles: strings(cfg.roles_claim.get(&claims), false),
        claims,
    }
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
