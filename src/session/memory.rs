//! The in-process session store (moka): the default, for a single replica.
//!
//! Sessions live in one bounded cache whose per-entry expiry is the session's own deadline
//! (the earlier of idle and absolute expiry); `get` checks the deadline again, so an entry
//! moka has not evicted yet is still no session. The refresh lock is an in-process single
//! flight; one-time values are a second cache with a per-entry lifetime.
//!
//! Security notes: records are kept as plain structs in process memory (sealing them would
//! cost every request a decryption and protect nothing a memory dump would not also reveal
//! through the key). Tokens are redacted in `Debug`. Capacity is bounded
//! ([`DEFAULT_MAX_SESSIONS`]); beyond it the least recently used sessions are dropped, so a
//! flood of logins cannot exhaust memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use futures_util::future::BoxFuture;
use moka::Expiry;
use moka::sync::Cache;

use super::{
    LockToken, OneTime, Session, SessionId, SessionStore, StoreError, StoreOptions, crypto, observe,
};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// Default bound on the sessions held.
pub const DEFAULT_MAX_SESSIONS: u64 = 1_000_000;
/// Bound on the one-time values remembered.
const MAX_ONE_TIME: u64 = 1_000_000;
/// Locks are pruned when more than this many are held (expired ones only).
const LOCK_PRUNE_AT: usize = 1024;

const BACKEND: &str = "memory";

/// Sessions in a moka cache.
pub struct MemoryStore {
    sessions: Cache<SessionId, Arc<Session>>,
    /// Sessions by `sid` and by subject (keys: [`index_key`]); an entry leaves with its
    /// session (the cache's eviction listener), so it never outgrows the sessions.
    index: Arc<Mutex<Index>>,
    used: Cache<[u8; 32], Duration>,
    locks: Mutex<HashMap<SessionId, (LockToken, tokio::time::Instant)>>,
    /// Serialises read-modify-write of one record (touch, replace).
    writes: Mutex<()>,
    options: StoreOptions,
    metrics: Metrics,
    get_metrics: super::GetMetrics,
    clock: SharedClock,
}

/// Expiry of a session entry: its own deadline, computed on the store's clock.
struct SessionExpiry {
    clock: SharedClock,
    idle: Duration,
}

/// Expiry of a one-time value: the ttl it was recorded with.
struct TtlExpiry;

// === impl MemoryStore ===

impl MemoryStore {
    /// An empty store.
    pub fn new(options: StoreOptions, metrics: Metrics, clock: SharedClock) -> Self {
        let index: Arc<Mutex<Index>> = Arc::default();
        let on_evict = index.clone();
        let sessions = Cache::builder()
            .max_capacity(options.max_sessions)
            .expire_after(SessionExpiry {
                clock: clock.clone(),
                idle: options.idle_timeout,
            })
            .eviction_listener(move |id: Arc<SessionId>, s: Arc<Session>, cause| {
                // A replaced value keeps its place in the index (same id, sub and sid).
                if cause != moka::notification::RemovalCause::Replaced {
                    let mut index = on_evict.lock().unwrap_or_else(|e| e.into_inner());
                    for key in index_keys(&s) {
                        index.remove_id(&key, &id);
                    }
                }
            })
            .build();
        let used = Cache::builder()
            .max_capacity(MAX_ONE_TIME)
            .expire_after(TtlExpiry)
            .build();
        Self {
            sessions,
            index,
            used,
            locks: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
            options,
            get_metrics: super::GetMetrics::new(&metrics, BACKEND),
            metrics,
            clock,
        }
    }

    /// Sessions held (approximate until moka's pending work runs).
    #[cfg(any(test, feature = "test-util"))]
    pub fn len(&self) -> u64 {
        self.sessions.entry_count()
    }

    /// Whether no sessions are held.
    #[cfg(any(test, feature = "test-util"))]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs moka's pending maintenance (exact counts for tests and the gauge).
    #[cfg(any(test, feature = "test-util"))]
    pub fn sync(&self) {
        self.sessions.run_pending_tasks();
        self.update_gauge();
    }

    fn update_gauge(&self) {
        let n = i64::try_from(self.sessions.entry_count()).unwrap_or(i64::MAX);
        self.metrics.sessions_memory.set(n);
    }

    fn record<T>(&self, op: &'static str, started: StdInstant, out: T) -> T {
        observe(&self.metrics, BACKEND, op, "ok", started.elapsed());
        out
    }

    fn get_now(&self, id: &SessionId) -> Option<Arc<Session>> {
        let s = self.sessions.get(id)?;
        if s.is_live(self.clock.wall(), self.options.idle_timeout) {
            Some(s)
        } else {
            self.sessions.invalidate(id);
            None
        }
    }

    fn put_now(&self, session: &Session) {
        {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            for key in index_keys(session) {
                index.add(key, &session.id);
            }
        }
        self.sessions
            .insert(session.id.clone(), Arc::new(session.clone()));
        self.update_gauge();
    }

    fn delete_index(&self, key: [u8; 16]) -> Vec<String> {
        // Taken out first: removing the sessions runs the eviction listener, which locks the
        // index again.
        let ids = {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            index.map.remove(&key).unwrap_or_default()
        };
        let mut gone = Vec::new();
        for id in ids.iter() {
            if self.sessions.remove(id).is_some() {
                gone.push(id.hashed());
            }
        }
        self.update_gauge();
        gone
    }

    /// Live sessions matching `filter` (through the index when it names a subject or `sid`
    /// and the issuer; otherwise one pass over the cache), at most `limit`.
    fn list_now(&self, filter: &super::ListFilter, limit: usize) -> super::Listing {
        let now = self.clock.wall();
        let idle = self.options.idle_timeout;
        let mut out = super::Listing::default();
        let mut take = |s: &Session| {
            if !filter.matches(s) || !s.is_live(now, idle) {
                return true;
            }
            if out.sessions.len() >= limit {
                out.truncated = true;
                return false;
            }
            out.sessions.push(super::SessionSummary::of(s));
            true
        };
        let indexed = match (&filter.issuer, &filter.sid, &filter.sub) {
            (Some(i), Some(sid), _) => Some(index_key("sid", i, sid)),
            (Some(i), None, Some(sub)) => Some(index_key("sub", i, sub)),
            _ => None,
        };
        if let Some(key) = indexed {
            let ids = {
                let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                index.map.get(&key).cloned().unwrap_or_default()
            };
            for id in ids {
                if let Some(s) = self.sessions.get(&id)
                    && !take(&s)
                {
                    break;
                }
            }
        } else {
            for (_, s) in self.sessions.iter() {
                if !take(&s) {
                    break;
                }
            }
        }
        out
    }

    /// The id whose hash is `hash` (one pass: an operator's call, not the request path).
    fn find_hashed(&self, hash: &str) -> Option<SessionId> {
        self.sessions
            .iter()
            .map(|(id, _)| id)
            .find(|id| id.hashed() == hash)
            .map(|id| (*id).clone())
    }

    fn try_lock_now(&self, id: &SessionId, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let now = tokio::time::Instant::now();
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > LOCK_PRUNE_AT {
            locks.retain(|_, (_, until)| *until > now);
        }
        if locks.get(id).is_some_and(|(_, until)| *until > now) {
            self.metrics
                .session_lock_contention
                .with_label_values(&[BACKEND])
                .inc();
            return Ok(None);
        }
        let token = LockToken::generate()?;
        locks.insert(id.clone(), (token.clone(), now + ttl));
        Ok(Some(token))
    }

    fn unlock_now(&self, id: &SessionId, token: &LockToken) -> bool {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        match locks.get(id) {
            Some((held, _)) if held == token => {
                locks.remove(id);
                true
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn get<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        let started = StdInstant::now();
        let out = self.get_now(id);
        self.get_metrics.record(out.is_some(), started.elapsed());
        Box::pin(std::future::ready(Ok(out)))
    }

    fn get_fresh<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        self.get(id)
    }

    fn replace<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let wrote = {
            let _w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = self.sessions.get(&session.id) {
                // A refresh may bring a new `sid` (or a first one): the index follows it
                // before the record changes, so a back-channel logout for the new `sid` finds
                // the session from the moment it carries it.
                let (old_sid, new_sid) = (sid_key(&old), sid_key(session));
                if new_sid != old_sid {
                    let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(k) = new_sid {
                        index.add(k, &session.id);
                    }
                    if let Some(k) = old_sid {
                        index.remove_id(&k, &session.id);
                    }
                }
                self.sessions
                    .insert(session.id.clone(), Arc::new(session.clone()));
                true
            } else {
                false
            }
        };
        Box::pin(std::future::ready(Ok(
            self.record("replace", started, wrote)
        )))
    }

    fn put<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>> {
        let started = StdInstant::now();
        self.put_now(session);
        self.record("put", started, ());
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let existed = self.sessions.remove(id).is_some();
        self.update_gauge();
        Box::pin(std::future::ready(Ok(
            self.record("delete", started, existed)
        )))
    }

    fn touch<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let now = self.clock.wall();
        // An expired session is not brought back by a late touch.
        let _w = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.sessions.get(&session.id);
        let wrote = if let Some(current) = current.filter(|c| {
            c.is_live(now, self.options.idle_timeout)
                && c.touch_due(now, self.options.touch_interval)
        }) {
            let mut s = (*current).clone();
            s.last_seen = now;
            self.sessions.insert(s.id.clone(), Arc::new(s));
            true
        } else {
            false
        };
        Box::pin(std::future::ready(Ok(self.record("touch", started, wrote))))
    }

    fn delete_by_sid<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let started = StdInstant::now();
        let n = self.delete_index(index_key("sid", issuer, sid));
        Box::pin(std::future::ready(Ok(self.record(
            "delete_by_sid",
            started,
            n,
        ))))
    }

    fn delete_by_sub<'a>(
        &'a self,
        issuer: &'a str,
        sub: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let started = StdInstant::now();
        let n = self.delete_index(index_key("sub", issuer, sub));
        Box::pin(std::future::ready(Ok(self.record(
            "delete_by_sub",
            started,
            n,
        ))))
    }

    fn delete_hashed<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let existed = self
            .find_hashed(hash)
            .is_some_and(|id| self.sessions.remove(&id).is_some());
        self.update_gauge();
        Box::pin(std::future::ready(Ok(self.record(
            "delete_hashed",
            started,
            existed,
        ))))
    }

    fn list<'a>(
        &'a self,
        filter: &'a super::ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<super::Listing, StoreError>> {
        let started = StdInstant::now();
        let out = self.list_now(filter, limit);
        Box::pin(std::future::ready(Ok(self.record("list", started, out))))
    }

    fn try_lock<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockToken>, StoreError>> {
        let started = StdInstant::now();
        let out = self.try_lock_now(id, ttl);
        let result = match &out {
            Ok(Some(_)) => "ok",
            Ok(None) => "busy",
            Err(_) => "error",
        };
        observe(&self.metrics, BACKEND, "lock", result, started.elapsed());
        Box::pin(std::future::ready(out))
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SessionId,
        token: &'a LockToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let released = self.unlock_now(id, token);
        Box::pin(std::future::ready(Ok(
            self.record("unlock", started, released)
        )))
    }

    fn mark_used<'a>(
        &'a self,
        kind: OneTime,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let started = StdInstant::now();
        let mut key_input = kind.prefix().as_bytes().to_vec();
        key_input.push(0);
        key_input.extend_from_slice(value);
        let key = crypto::sha256(&key_input);
        let first = self.used.entry(key).or_insert(ttl).is_fresh();
        let result = if first { "ok" } else { "replay" };
        observe(
            &self.metrics,
            BACKEND,
            "mark_used",
            result,
            started.elapsed(),
        );
        Box::pin(std::future::ready(Ok(first)))
    }
}

// === impl SessionExpiry ===

impl Expiry<SessionId, Arc<Session>> for SessionExpiry {
    fn expire_after_create(
        &self,
        _key: &SessionId,
        value: &Arc<Session>,
        _created_at: StdInstant,
    ) -> Option<Duration> {
        Some(value.remaining(self.clock.wall(), self.idle))
    }

    fn expire_after_update(
        &self,
        _key: &SessionId,
        value: &Arc<Session>,
        _updated_at: StdInstant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.remaining(self.clock.wall(), self.idle))
    }
}

// === impl TtlExpiry ===

impl Expiry<[u8; 32], Duration> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Duration,
        _created_at: StdInstant,
    ) -> Option<Duration> {
        Some(*value)
    }
}

/// The index: a 128-bit hash of (kind, issuer, value) to the ids of its sessions. Kept small:
/// about 80 bytes per entry, against several hundred for a cache entry keyed by the string.
#[derive(Default)]
struct Index {
    map: HashMap<[u8; 16], Vec<SessionId>>,
}

impl Index {
    fn add(&mut self, key: [u8; 16], id: &SessionId) {
        let ids = self.map.entry(key).or_default();
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }

    fn remove_id(&mut self, key: &[u8; 16], id: &SessionId) {
        if let Some(ids) = self.map.get_mut(key) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.map.remove(key);
            }
        }
    }
}

fn index_key(kind: &str, issuer: &str, value: &str) -> [u8; 16] {
    let mut input = Vec::with_capacity(kind.len() + issuer.len() + value.len() + 2);
    for (i, part) in [kind, issuer, value].iter().enumerate() {
        if i > 0 {
            input.push(0);
        }
        input.extend_from_slice(part.as_bytes());
    }
    let h = crypto::sha256(&input);
    let mut key = [0u8; 16];
    key.copy_from_slice(&h[..16]);
    key
}

/// The index key of a session's `sid`, when it has one.
fn sid_key(s: &Session) -> Option<[u8; 16]> {
    s.sid.as_deref().map(|sid| index_key("sid", &s.issuer, sid))
}

/// The index keys of a session: its subject and, when it has one, its `sid`.
fn index_keys(s: &Session) -> impl Iterator<Item = [u8; 16]> + '_ {
    std::iter::once(index_key("sub", &s.issuer, &s.subject)).chain(sid_key(s))
}
