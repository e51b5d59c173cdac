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
use crate::idp::SharedClock;
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
    index: Cache<String, Arc<Vec<SessionId>>>,
    used: Cache<[u8; 32], Duration>,
    locks: Mutex<HashMap<SessionId, (LockToken, tokio::time::Instant)>>,
    /// Serialises read-modify-write of one record (touch, replace).
    writes: Mutex<()>,
    options: StoreOptions,
    metrics: Metrics,
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
        let sessions = Cache::builder()
            .max_capacity(options.max_sessions)
            .expire_after(SessionExpiry {
                clock: clock.clone(),
                idle: options.idle_timeout,
            })
            .build();
        let index = Cache::builder()
            .max_capacity(options.max_sessions)
            .time_to_idle(options.idle_timeout)
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
            metrics,
            clock,
        }
    }

    /// Sessions held (approximate until moka's pending work runs).
    pub fn len(&self) -> u64 {
        self.sessions.entry_count()
    }

    /// Whether no sessions are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs moka's pending maintenance (exact counts for tests and the gauge).
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
        let fresh = !self.sessions.contains_key(&session.id);
        self.sessions
            .insert(session.id.clone(), Arc::new(session.clone()));
        if fresh {
            let mut keys = vec![index_key("sub", &session.issuer, &session.subject)];
            if let Some(sid) = &session.sid {
                keys.push(index_key("sid", &session.issuer, sid));
            }
            for key in keys {
                self.index.entry(key).and_upsert_with(|old| {
                    let mut ids: Vec<SessionId> = old
                        .map(|e| e.into_value().as_ref().clone())
                        .unwrap_or_default();
                    // Drop ids whose sessions are gone, so the list stays short.
                    ids.retain(|i| self.sessions.contains_key(i));
                    if !ids.contains(&session.id) {
                        ids.push(session.id.clone());
                    }
                    Arc::new(ids)
                });
            }
        }
        self.update_gauge();
    }

    fn delete_index(&self, key: String) -> usize {
        let Some(ids) = self.index.remove(&key) else {
            return 0;
        };
        let mut n = 0;
        for id in ids.iter() {
            if self.sessions.remove(id).is_some() {
                n += 1;
            }
        }
        self.update_gauge();
        n
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
        let result = if out.is_some() { "ok" } else { "miss" };
        observe(&self.metrics, BACKEND, "get", result, started.elapsed());
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
            if self.sessions.contains_key(&session.id) {
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
            // Keep the indexes alive as long as the session.
            let _ = self
                .index
                .get(&index_key("sub", &session.issuer, &session.subject));
            if let Some(sid) = &session.sid {
                let _ = self.index.get(&index_key("sid", &session.issuer, sid));
            }
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
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
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
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        let started = StdInstant::now();
        let n = self.delete_index(index_key("sub", issuer, sub));
        Box::pin(std::future::ready(Ok(self.record(
            "delete_by_sub",
            started,
            n,
        ))))
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

fn index_key(kind: &str, issuer: &str, value: &str) -> String {
    format!("{kind}\0{issuer}\0{value}")
}
