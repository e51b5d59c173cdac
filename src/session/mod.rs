//! Browser sessions: the [`Session`] record, its random [`SessionId`], and the
//! [`SessionStore`] trait with two backends, [`memory::MemoryStore`] (moka; one replica) and
//! [`redis::RedisStore`] (standalone, Sentinel or Cluster, with a short-lived in-process cache
//! in front). [`crypto::Sealer`] seals cookies and stored records.
//!
//! Both stores enforce the idle timeout and the absolute lifetime: `get` returns `None` past
//! either, whatever the backend still holds. Last-seen is written back at most once per
//! `touch_interval` (one minute by default) per session, not per request, so the idle timeout
//! is exact to within that interval.
//!
//! Security notes:
//! - Tokens in a [`Session`] are [`Token`]s, whose `Debug` is redacted; sessions can be logged
//!   with `{:?}` without leaking them. A [`SessionId`] is a bearer secret and is redacted too.
//! - Redis holds only sealed records (AES-256-GCM, bound to their key), under key names made
//!   from hashes: neither session ids, subjects nor `sid`s appear in Redis in the clear.
//! - One-time values (login `state`, back-channel `jti`) are recorded as hashes.

pub mod admin;
pub mod crypto;
pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::{SessionsConfig, StoreKind};
use crate::metrics::Metrics;

pub use admin::{Ended, ListFilter, Listing, Notice, SessionSummary};
pub use crypto::{Purpose, Sealer};

/// Bytes of randomness in a session id (256 bits; at least 128 are required).
pub const SESSION_ID_BYTES: usize = 32;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer within `sessions.redis.timeout`.
    #[error("the session store did not answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    /// Redis returned an error or the connection failed.
    #[error("the session store failed ({op})")]
    Redis {
        /// The operation.
        op: &'static str,
        /// What Redis said.
        #[source]
        source: ::redis::RedisError,
    },
    /// A record could not be encoded.
    #[error("a session record could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// Sealing failed.
    #[error("a session record could not be sealed")]
    Seal(#[source] crypto::Error),
    /// The store cannot do this (the message says what).
    #[error("the session store cannot answer this: {0}")]
    Unsupported(&'static str),
    /// The store could not be built from the configuration.
    #[error("the session store could not be set up: {0}")]
    Setup(String, #[source] Option<::redis::RedisError>),
}

/// An opaque random session id (the cookie carries it sealed).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(String);

/// A token (access, refresh or ID token); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

/// The tokens of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// The access token.
    pub access: Token,
    /// The refresh token, when the IdP issued one.
    pub refresh: Option<Token>,
    /// The ID token (for `id_token_hint` at logout).
    pub id_token: Option<Token>,
}

/// One browser session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The issuer's name in the config (`issuers.<name>`).
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// The ID token's `sid` claim, for back-channel logout.
    pub sid: Option<String>,
    /// The claims used for identity headers and authorization rules.
    pub claims: Claims,
    /// Access, refresh and ID tokens.
    pub tokens: Tokens,
    /// When the access token expires.
    pub access_expires_at: SystemTime,
    /// When the current tokens were obtained (login or last refresh): the refresh schedule
    /// runs from here, and a changed value tells a refresh that another one already ran.
    #[serde(default = "epoch")]
    pub tokens_at: SystemTime,
    /// When the session was created (login).
    pub created_at: SystemTime,
    /// When it was last used (written back at most once per touch interval).
    pub last_seen: SystemTime,
    /// Absolute end of the session (`created_at + sessions.lifetime`).
    pub expires_at: SystemTime,
    /// When the user last authenticated at the IdP: the ID token's `auth_time`, when it had
    /// one (`routes[i].max_auth_age` is measured from it, else from `created_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<SystemTime>,
}

fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

/// Claims kept as compact JSON text of an object: a few claims cost their text, where a
/// `serde_json::Map` costs a B-tree node of about 600 bytes plus an allocation per key and
/// value (measured: about 840 bytes less per session for three claims). Read them with
/// [`Claims::to_map`] (the request path caches the identity built from them).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Claims(Box<str>);

/// Proof of holding a refresh lock; only its holder can release it.
#[derive(Clone, PartialEq, Eq)]
pub struct LockToken(String);

/// Kinds of one-time values whose use is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneTime {
    /// A login's `state`.
    LoginState,
    /// A back-channel logout token's `jti`.
    LogoutJti,
}

/// Settings both stores share.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A session unused for this long is gone.
    pub idle_timeout: Duration,
    /// Last-seen is written back at most this often per session.
    pub touch_interval: Duration,
    /// Most sessions the memory store holds (least recently used go first beyond it).
    pub max_sessions: u64,
}

/// A session store. Every method is bounded in time and never panics on what a backend
/// returns; a record that can't be opened (tampered, or sealed under a dropped key) is no
/// session.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The backend's name (`memory`, `redis`), a metric label.
    fn backend(&self) -> &'static str;

    /// The session, unless it is missing, idle past `idle_timeout` or past its absolute expiry.
    /// May be answered by an in-process cache (Redis: up to `cache_ttl` old).
    fn get<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>>;

    /// As [`SessionStore::get`], but from the backend itself, never from a cache (a refresh
    /// holding the lock reads what another replica may have written).
    fn get_fresh<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>>;

    /// Inserts or replaces a session (and indexes it by `sid` and subject).
    fn put<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Replaces a session only if it still exists (a refresh must not bring back a session
    /// that a logout deleted meanwhile); `true` if it was written.
    fn replace<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes a session; `true` if it existed.
    fn delete<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Marks the session used now; writes only when last-seen is older than the touch
    /// interval. Only last-seen changes: the stored record (which a refresh may have replaced
    /// since `session` was read) is updated, never overwritten with `session`'s tokens.
    /// Returns whether it wrote.
    fn touch<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes every session of `issuer` with this `sid`; returns the hashes
    /// ([`SessionId::hashed`]) of those it deleted.
    fn delete_by_sid<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Deletes every session of `issuer` with this subject; returns the hashes of those it
    /// deleted.
    fn delete_by_sub<'a>(
        &'a self,
        issuer: &'a str,
        sub: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Deletes the session whose id hashes to `hash` ([`SessionId::hashed`], what listings
    /// show); `true` if it existed.
    fn delete_hashed<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Live sessions matching `filter`, at most `limit` (the listing says when there were
    /// more, or when the store stopped looking before it had seen them all).
    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Listing, StoreError>>;

    /// Tells the other replicas that these sessions ended (Redis: pub/sub), so they drop
    /// their cached copies and close their tunnels. A store without replicas does nothing.
    fn announce<'a>(&'a self, ended: &'a Ended) -> BoxFuture<'a, ()> {
        let _ = ended;
        Box::pin(std::future::ready(()))
    }

    /// What other replicas announced (already applied to this store's cache), for the
    /// tunnels; `None` for a store without replicas.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }

    /// Takes the refresh lock of a session for `ttl`; `None` if someone else holds it.
    fn try_lock<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockToken>, StoreError>>;

    /// Releases the lock if `token` still holds it; `true` if it did.
    fn unlock<'a>(
        &'a self,
        id: &'a SessionId,
        token: &'a LockToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Records the first use of a one-time value for `ttl`: `true` the first time, `false`
    /// for a replay within `ttl`.
    fn mark_used<'a>(
        &'a self,
        kind: OneTime,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// A store shared by the request path and background tasks.
pub type SharedStore = Arc<dyn SessionStore>;

// === impl SessionId ===

impl SessionId {
    /// A fresh random id.
    pub fn generate() -> Result<Self, crypto::Error> {
        let bytes = crypto::random_bytes::<SESSION_ID_BYTES>()?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// An id from a cookie's opened content; `None` unless it has the shape of one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let decoded = URL_SAFE_NO_PAD.decode(text).ok()?;
        (decoded.len() == SESSION_ID_BYTES).then(|| Self(text.to_string()))
    }

    /// The id's text (what a cookie seals).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short hash of the id: what Redis key names and hash tags are made of.
    pub(crate) fn hashed(&self) -> String {
        URL_SAFE_NO_PAD.encode(&crypto::sha256(self.0.as_bytes())[..18])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

// === impl Claims ===

impl Claims {
    /// From a map of claims.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        // A map of JSON values always serialises.
        Self(
            serde_json::to_string(map)
                .unwrap_or_default()
                .into_boxed_str(),
        )
    }

    /// The claims as a map (empty if the text is not an object, which `from_map` never
    /// writes).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        if self.0.is_empty() {
            return serde_json::Map::new();
        }
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// Sets one claim.
    pub fn insert(&mut self, name: String, value: serde_json::Value) {
        let mut map = self.to_map();
        map.insert(name, value);
        *self = Self::from_map(&map);
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<serde_json::Value> {
        self.to_map().remove(name)
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Claims(<{} bytes>)", self.0.len())
    }
}

impl Serialize for Claims {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        Ok(Self::from_map(&map))
    }
}

// === impl Token ===

impl Token {
    /// Wraps a token.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The token itself (to forward or send to the IdP; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<redacted, {} bytes>)", self.0.len())
    }
}

// === impl LockToken ===

impl LockToken {
    pub(crate) fn generate() -> Result<Self, StoreError> {
        let bytes = crypto::random_bytes::<16>().map_err(StoreError::Seal)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(<redacted>)")
    }
}

// === impl OneTime ===

impl OneTime {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            OneTime::LoginState => "state",
            OneTime::LogoutJti => "jti",
        }
    }
}

// === impl Session ===

impl Session {
    /// A new session created `now`, ending at `now + lifetime`, with a fresh id.
    pub fn new(
        issuer: impl Into<String>,
        subject: impl Into<String>,
        tokens: Tokens,
        access_expires_at: SystemTime,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, crypto::Error> {
        Ok(Self {
            id: SessionId::generate()?,
            issuer: issuer.into(),
            subject: subject.into(),
            sid: None,
            claims: Claims::default(),
            tokens,
            access_expires_at,
            tokens_at: now,
            created_at: now,
            last_seen: now,
            expires_at: now.checked_add(lifetime).unwrap_or(now),
            auth_time: None,
        })
    }

    /// When the user signed in: the ID token's `auth_time`, else the session's creation.
    pub fn signed_in_at(&self) -> SystemTime {
        self.auth_time.unwrap_or(self.created_at)
    }

    /// When it ends if unused: the earlier of idle and absolute expiry.
    pub fn deadline(&self, idle_timeout: Duration) -> SystemTime {
        let idle = self
            .last_seen
            .checked_add(idle_timeout)
            .unwrap_or(self.expires_at);
        idle.min(self.expires_at)
    }

    /// Whether it is still alive at `now`.
    pub fn is_live(&self, now: SystemTime, idle_timeout: Duration) -> bool {
        now < self.deadline(idle_timeout)
    }

    /// Time left at `now` (zero when expired).
    pub fn remaining(&self, now: SystemTime, idle_timeout: Duration) -> Duration {
        self.deadline(idle_timeout)
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether a touch at `now` should write last-seen back.
    pub fn touch_due(&self, now: SystemTime, interval: Duration) -> bool {
        now.duration_since(self.last_seen)
            .is_ok_and(|since| since >= interval)
    }
}

// === impl StoreOptions ===

impl StoreOptions {
    /// The options from the configuration.
    pub fn from_config(c: &SessionsConfig) -> Self {
        Self {
            idle_timeout: c.idle_timeout,
            touch_interval: Duration::from_secs(60),
            max_sessions: memory::DEFAULT_MAX_SESSIONS,
        }
    }
}

/// The metric series of a store's `get`, resolved once: `get` runs on every session request,
/// and a label lookup costs a lock and a hash per series.
pub(crate) struct GetMetrics {
    ok: prometheus::IntCounter,
    miss: prometheus::IntCounter,
    duration: prometheus::Histogram,
    l1_hit: prometheus::IntCounter,
    l1_miss: prometheus::IntCounter,
}

impl GetMetrics {
    pub(crate) fn new(metrics: &Metrics, backend: &'static str) -> Self {
        Self {
            ok: metrics
                .session_store_ops
                .with_label_values(&[backend, "get", "ok"]),
            miss: metrics
                .session_store_ops
                .with_label_values(&[backend, "get", "miss"]),
            duration: metrics
                .session_store_duration
                .with_label_values(&[backend, "get"]),
            l1_hit: metrics.session_l1.with_label_values(&["hit"]),
            l1_miss: metrics.session_l1.with_label_values(&["miss"]),
        }
    }

    /// A `get` that found a session (`found`) or not, taking `took`.
    pub(crate) fn record(&self, found: bool, took: Duration) {
        if found { &self.ok } else { &self.miss }.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// An L1 lookup (Redis store).
    pub(crate) fn l1(&self, hit: bool) {
        if hit { &self.l1_hit } else { &self.l1_miss }.inc();
    }
}

/// Records one store operation: count by backend/op/result, latency by backend/op.
pub(crate) fn observe(
    metrics: &Metrics,
    backend: &'static str,
    op: &'static str,
    result: &'static str,
    took: Duration,
) {
    metrics
        .session_store_ops
        .with_label_values(&[backend, op, result])
        .inc();
    metrics
        .session_store_duration
        .with_label_values(&[backend, op])
        .observe(took.as_secs_f64());
}

/// Builds the configured store and the cookie sealer (memory without keys: a random key).
pub async fn build(
    config: &SessionsConfig,
    metrics: &Metrics,
    clock: SharedClock,
) -> Result<(SharedStore, Arc<Sealer>), StoreError> {
    let sealer = if config.cookie.keys.is_empty() {
        Sealer::generate()
    } else {
        Sealer::try_new(&config.cookie.keys)
    }
    .map_err(StoreError::Seal)?;
    let sealer = Arc::new(sealer);
    let options = StoreOptions::from_config(config);
    let store: SharedStore = match (&config.store, &config.redis) {
        (StoreKind::Redis, Some(redis)) => Arc::new(
            redis::RedisStore::connect(redis, options, sealer.clone(), metrics.clone(), clock)
                .await?,
        ),
        (StoreKind::Redis, None) => {
            return Err(StoreError::Setup(
                "sessions.store is redis but sessions.redis is missing".into(),
                None,
            ));
        }
        (StoreKind::Memory, _) => {
            Arc::new(memory::MemoryStore::new(options, metrics.clone(), clock))
        }
    };
    Ok((store, sealer))
}
