//! The Redis session store: standalone (through `ConnectionManager`), Sentinel (the master
//! is looked up again after a connection error or a `READONLY` reply, so a failover is
//! followed) or Cluster (`cluster-async`), over TLS (`rediss://`) with a password or ACL user.
//!
//! A short-lived in-process cache (L1, moka, `sessions.redis.cache_ttl`, 5 s by default) sits
//! in front of `get`, so a hot session costs no Redis round trip. Deletes invalidate the local
//! L1 at once; the other replicas hear of it over pub/sub (`notices`) and drop theirs within
//! a second; should an announcement be lost, their L1 entries still expire within the TTL.
//!
//! Keys (hash tags keep a session and its lock in one cluster slot):
//! `pc:s:{H}` sealed record, `pc:l:{H}` refresh lock, where `H` is a SHA-256 prefix of the
//! session id; `pc:x:{T}` the set of `H`s for one subject or `sid`, where `T` is a keyed tag
//! ([`Sealer::index_tag`]); `pc:u:<kind>:<hash>` one-time values.
//!
//! Security notes: values are sealed with AES-256-GCM, bound to their key name; a dump of
//! Redis shows neither tokens, claims, session ids, subjects nor `sid`s. Every call is bounded
//! by `sessions.redis.timeout` (tokio timeout) and errors are typed; nothing here panics on
//! what Redis sends. The refresh lock is `SET NX PX` with a random token, released by a Lua
//! compare-and-delete so only its owner can release it.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use moka::sync::Cache;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, RedisError, Script, Value};

use super::crypto::Purpose;
use super::{
    Ended, ListFilter, Listing, LockToken, Notice, OneTime, Session, SessionId, SessionStore,
    StoreError, StoreOptions, crypto, observe,
};
use crate::clock::SharedClock;
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::session::Sealer;

mod admin;
mod connect;
mod notices;

const BACKEND: &str = "redis";
/// Most sessions held in the L1 cache.
const L1_CAPACITY: u64 = 100_000;

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Compare-and-set of a record: writes ARGV[2] with PX ARGV[3] only if the key still holds
/// ARGV[1] (nil otherwise).
const TOUCH_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
";

/// Sessions in Redis, with an in-process L1 cache.
pub struct RedisStore {
    conn: Conn,
    l1: Cache<String, Arc<Session>>,
    sealer: Arc<Sealer>,
    options: StoreOptions,
    timeout: Duration,
    unlock: Script,
    metrics: Metrics,
    get_metrics: super::GetMetrics,
    clock: SharedClock,
    /// Sessions ended recently (here or announced): a read racing the end does not cache them.
    recent: Cache<String, ()>,
    /// What the other replicas announced, for the tunnels.
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// This store's name on the channel (its own announcements come back and are skipped).
    origin: String,
    /// The subscriber task, stopped with the store.
    subscriber: tokio::task::AbortHandle,
}

/// How the store reaches Redis.
enum Conn {
    /// Reconnects by itself after errors.
    Standalone(ConnectionManager),
    /// Connected on first use; the cluster connection then follows slot moves and node loss.
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
    /// The master's connection, dropped (and the master looked up again) after an error.
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        conn: connect::SentinelSlot,
        config: AsyncConnectionConfig,
    },
}

/// One connection of any kind, for a single command.
#[derive(Clone)]
enum AnyConn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
    Multiplexed(MultiplexedConnection),
}

// === impl RedisStore ===

impl RedisStore {
    /// Sets up the connection. Standalone connects lazily (Redis may come up after
    /// Portcullis); Cluster and Sentinel connect on first use.
    pub async fn connect(
        config: &RedisConfig,
        options: StoreOptions,
        sealer: Arc<Sealer>,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        let timeout = config.timeout;
        let certs = connect::ca_certs(config).await?;
        let conn = connect::conn(config, certs.clone())?;
        let source = connect::subscriber(config, certs, &conn)?;
        let ttl = config.cache_ttl.max(Duration::from_millis(1));
        let l1 = Cache::builder()
            .max_capacity(L1_CAPACITY)
            .time_to_live(ttl)
            .build();
        let recent = Cache::builder()
            .max_capacity(L1_CAPACITY)
            .time_to_live(ttl)
            .build();
        let origin = URL_SAFE_NO_PAD.encode(crypto::random_bytes::<12>().map_err(StoreError::Seal)?);
        let notices = notices::queue();
        let subscriber = notices::Subscriber {
            l1: l1.clone(),
            recent: recent.clone(),
            tx: notices.clone(),
            origin: origin.clone(),
            timeout,
            metrics: metrics.clone(),
        }
        .start(source);
        Ok(Self {
            recent,
            notices,
            origin,
            subscriber,
            conn,
            l1,
            sealer,
            options,
            timeout,
            unlock: Script::new(UNLOCK_SCRIPT),
            get_metrics: super::GetMetrics::new(&metrics, BACKEND),
            metrics,
            clock,
        })
    }

    /// Drops every L1 entry (tests: force the next `get` to Redis).
    #[cfg(any(test, feature = "test-util"))]
    pub fn clear_l1(&self) {
        self.l1.invalidate_all();
    }

    /// The Redis key of a session's record (tests read the raw value through it).
    pub fn record_key(id: &SessionId) -> String {
        format!("pc:s:{{{}}}", id.hashed())
    }

    fn lock_key(id: &SessionId) -> String {
        format!("pc:l:{{{}}}", id.hashed())
    }

    fn index_keys(&self, kind: &str, issuer: &str, value: &str) -> Vec<String> {
        self.sealer
            .index_tags(index_input(kind, issuer, value).as_bytes())
            .into_iter()
            .map(|t| format!("pc:x:{{{t}}}"))
            .collect()
    }

    /// A connection, connecting first where needed (bounded by the caller's timeout).
    async fn connection(&self) -> Result<AnyConn, RedisError> {
        match &self.conn {
            Conn::Standalone(m) => Ok(AnyConn::Manager(m.clone())),
            Conn::Cluster { client, conn } => {
                let mut slot = conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(AnyConn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                *slot = Some(c.clone());
                Ok(AnyConn::Cluster(c))
            }
            Conn::Sentinel {
                client,
                conn,
                config,
            } => {
                let mut slot = conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(AnyConn::Multiplexed(c.clone()));
                }
                let c = client
                    .lock()
                    .await
                    .async_get_client()
                    .await?
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                *slot = Some(c.clone());
                Ok(AnyConn::Multiplexed(c))
            }
        }
    }

    /// After a failure that may mean the master moved, forget the Sentinel connection.
    async fn forget(&self, err: Option<&RedisError>) {
        if let Conn::Sentinel { conn, .. } = &self.conn {
            let moved = err.is_none_or(|e| {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
            });
            if moved {
                *conn.lock().await = None;
            }
        }
    }

    /// Runs one command, bounded by the timeout; Sentinel gets one more try after a failover
    /// sign, standalone after a dead connection (the first command after Redis came back
    /// finds the old connection dead; the manager reconnects at once and the retry uses the
    /// new one, so Redis is usable again from its first answer), within the same bound.
    async fn query(&self, op: &'static str, cmd: &Cmd) -> Result<Value, StoreError> {
        let attempts = if matches!(self.conn, Conn::Cluster { .. }) {
            1
        } else {
            2
        };
        let run = async {
            let mut last = None;
            for _ in 0..attempts {
                let res = async {
                    let mut c = self.connection().await?;
                    c.req_packed_command(cmd).await
                }
                .await;
                match res {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        self.forget(Some(&e)).await;
                        let dead = e.is_io_error() || e.is_connection_dropped();
                        last = Some(e);
                        if matches!(self.conn, Conn::Standalone(_)) && !dead {
                            break;
                        }
                    }
                }
            }
            Err(last)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => match v {
                // A server error inside a reply value (RESP3) is still an error.
                Value::ServerError(e) => Err(StoreError::Redis {
                    op,
                    source: RedisError::from(e),
                }),
                v => Ok(v),
            },
            Ok(Err(Some(source))) => Err(StoreError::Redis { op, source }),
            Ok(Err(None)) => Err(StoreError::Timeout(self.timeout, op)),
            Err(_) => {
                self.forget(None).await;
                Err(StoreError::Timeout(self.timeout, op))
            }
        }
    }

    /// Runs `f`, recording its result and latency.
    async fn observed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
        label: impl Fn(&T) -> &'static str,
    ) -> Result<T, StoreError> {
        let started = StdInstant::now();
        let out = f.await;
        let result = match &out {
            Ok(v) => label(v),
            Err(StoreError::Timeout(..)) => "timeout",
            Err(_) => "error",
        };
        observe(&self.metrics, BACKEND, op, result, started.elapsed());
        if let Err(e) = &out {
            tracing::warn!(op, error = %e, "session store call failed");
        }
        out
    }

    fn seal(&self, key: &str, session: &Session) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(session).map_err(StoreError::Encode)?;
        self.sealer
            .seal(Purpose::StoreRecord, key.as_bytes(), &json)
            .map_err(StoreError::Seal)
    }

    fn open(&self, key: &str, id: &SessionId, sealed: &[u8]) -> Option<Session> {
        let json = self
            .sealer
            .open(Purpose::StoreRecord, key.as_bytes(), sealed)
            .ok()?;
        let s: Session = serde_json::from_slice(&json).ok()?;
        (s.id == *id).then_some(s)
    }

    async fn get_inner(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        let now = self.clock.wall();
        let h = id.hashed();
        if let Some(s) = self.l1.get(&h) {
            self.get_metrics.l1(true);
            if s.id == *id && s.is_live(now, self.options.idle_timeout) {
                return Ok(Some(s));
            }
            self.l1.invalidate(&h);
            return Ok(None);
        }
        self.get_metrics.l1(false);
        Ok(self.read("get", id).await?.map(|(s, _)| s))
    }

    /// Reads a record from Redis (not the L1, which it refreshes): the session and the
    /// sealed bytes it came from.
    async fn read(
        &self,
        op: &'static str,
        id: &SessionId,
    ) -> Result<Option<(Arc<Session>, Vec<u8>)>, StoreError> {
        let now = self.clock.wall();
        let h = id.hashed();
        let key = Self::record_key(id);
        let v = self.query(op, redis::cmd("GET").arg(&key)).await?;
        let sealed = match v {
            Value::BulkString(b) => b,
            _ => {
                self.l1.invalidate(&h);
                return Ok(None);
            }
        };
        let Some(s) = self.open(&key, id, &sealed) else {
            tracing::warn!(
                "a stored session record did not open (tampered, or its key was removed)"
            );
            return Ok(None);
        };
        if !s.is_live(now, self.options.idle_timeout) {
            self.l1.invalidate(&h);
            return Ok(None);
        }
        let s = Arc::new(s);
        // A session that just ended may have been read before its record went: not cached.
        if !self.recent.contains_key(&h) {
            self.l1.insert(h, s.clone());
        }
        Ok(Some((s, sealed)))
    }

    async fn write(&self, op: &'static str, session: &Session) -> Result<bool, StoreError> {
        let now = self.clock.wall();
        let ttl = session.remaining(now, self.options.idle_timeout);
        let key = Self::record_key(&session.id);
        if ttl.is_zero() {
            self.l1.invalidate(&session.id.hashed());
            self.query(op, redis::cmd("DEL").arg(&key)).await?;
            return Ok(false);
        }
        let sealed = self.seal(&key, session)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(sealed).arg("PX").arg(millis(ttl));
        let written = !matches!(self.query(op, &cmd).await?, Value::Nil);
        if written {
            self.l1
                .insert(session.id.hashed(), Arc::new(session.clone()));
        } else {
            self.l1.invalidate(&session.id.hashed());
        }
        Ok(written)
    }

    async fn put_inner(&self, session: &Session) -> Result<(), StoreError> {
        self.write("put", session).await?;
        self.add_index("put", session, "sub", &session.subject)
            .await?;
        if let Some(sid) = &session.sid {
            self.add_index("put", session, "sid", sid).await?;
        }
        Ok(())
    }

    /// Adds the session to the index set of (`kind`, its issuer, `value`).
    async fn add_index(
        &self,
        op: &'static str,
        session: &Session,
        kind: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let to_end = session
            .expires_at
            .duration_since(self.clock.wall())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        let Some(tag) = self
            .sealer
            .index_tag(index_input(kind, &session.issuer, value).as_bytes())
        else {
            return Ok(());
        };
        let key = format!("pc:x:{{{tag}}}");
        self.query(op, redis::cmd("SADD").arg(&key).arg(session.id.hashed()))
            .await?;
        // NX sets a first expiry, GT only ever lengthens it: the set lives as long as
        // its longest-lived session.
        for opt in ["NX", "GT"] {
            self.query(
                op,
                redis::cmd("PEXPIRE").arg(&key).arg(millis(to_end)).arg(opt),
            )
            .await?;
        }
        Ok(())
    }

    /// Replaces a record only if it exists (`SET XX GET`). A refresh may bring a new `sid`
    /// (or a first one): the session joins the new `sid`'s index set before the record
    /// changes (so a back-channel logout for the new `sid` finds it from the moment it carries
    /// it) and leaves the old one's after.
    async fn replace_inner(&self, session: &Session) -> Result<bool, StoreError> {
        const OP: &str = "replace";
        let now = self.clock.wall();
        let ttl = session.remaining(now, self.options.idle_timeout);
        let key = Self::record_key(&session.id);
        let h = session.id.hashed();
        if ttl.is_zero() {
            self.l1.invalidate(&h);
            self.query(OP, redis::cmd("DEL").arg(&key)).await?;
            return Ok(false);
        }
        if let Some(sid) = &session.sid {
            self.add_index(OP, session, "sid", sid).await?;
        }
        let sealed = self.seal(&key, session)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(sealed)
            .arg("PX")
            .arg(millis(ttl))
            .arg("XX")
            .arg("GET");
        let old = match self.query(OP, &cmd).await? {
            // XX: a session deleted meanwhile (logout on another replica) stays deleted.
            Value::Nil => {
                self.l1.invalidate(&h);
                return Ok(false);
            }
            Value::BulkString(b) => Some(b),
            _ => None,
        };
        self.l1.insert(h.clone(), Arc::new(session.clone()));
        let old_sid = old
            .and_then(|b| self.open(&key, &session.id, &b))
            .and_then(|o| o.sid);
        if let Some(old_sid) = old_sid.filter(|o| Some(o) != session.sid.as_ref()) {
            for set in self.index_keys("sid", &session.issuer, &old_sid) {
                self.query(OP, redis::cmd("SREM").arg(&set).arg(&h)).await?;
            }
        }
        Ok(true)
    }

    async fn delete_index(
        &self,
        op: &'static str,
        kind: &str,
        issuer: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for h in self.index_members(op, kind, issuer, value).await? {
            self.l1.invalidate(&h);
            self.recent.insert(h.clone(), ());
            let del = self
                .query(op, redis::cmd("DEL").arg(format!("pc:s:{{{h}}}")))
                .await?;
            if matches!(del, Value::Int(1)) {
                gone.push(h);
            }
        }
        for key in self.index_keys(kind, issuer, value) {
            self.query(op, redis::cmd("DEL").arg(&key)).await?;
        }
        Ok(gone)
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Standalone(_) => "standalone",
            Conn::Cluster { .. } => "cluster",
            Conn::Sentinel { .. } => "sentinel",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SessionStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn get<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        Box::pin(async move {
            let started = StdInstant::now();
            let out = self.get_inner(id).await;
            match &out {
                Ok(s) => self.get_metrics.record(s.is_some(), started.elapsed()),
                Err(e) => {
                    let result = if matches!(e, StoreError::Timeout(..)) {
                        "timeout"
                    } else {
                        "error"
                    };
                    observe(&self.metrics, BACKEND, "get", result, started.elapsed());
                    tracing::warn!(op = "get", error = %e, "session store call failed");
                }
            }
            out
        })
    }

    fn get_fresh<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        Box::pin(self.observed(
            "get_fresh",
            async move { Ok(self.read("get_fresh", id).await?.map(|(s, _)| s)) },
            |s| if s.is_some() { "ok" } else { "miss" },
        ))
    }

    fn replace<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed("replace", self.replace_inner(session), |_| "ok"))
    }

    fn put<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.observed("put", self.put_inner(session), |_| "ok"))
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed(
            "delete",
            async move {
                self.l1.invalidate(&id.hashed());
                self.recent.insert(id.hashed(), ());
                let v = self
                    .query("delete", redis::cmd("DEL").arg(Self::record_key(id)))
                    .await?;
                Ok(matches!(v, Value::Int(1)))
            },
            |_| "ok",
        ))
    }

    fn touch<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed(
            "touch",
            async move {
                let now = self.clock.wall();
                // An expired session is not brought back by a late touch.
                if !session.is_live(now, self.options.idle_timeout)
                    || !session.touch_due(now, self.options.touch_interval)
                {
                    return Ok(false);
                }
                // Update last-seen on the record as stored now (a refresh on another replica
                // may have replaced the tokens since `session` was read), and only if it is
                // still exactly that record: compare-and-set in one script.
                let Some((current, sealed)) = self.read("touch", &session.id).await? else {
                    return Ok(false);
                };
                if !current.touch_due(now, self.options.touch_interval) {
                    return Ok(false);
                }
                let mut s = (*current).clone();
                s.last_seen = now;
                let key = Self::record_key(&s.id);
                let ttl = s.remaining(now, self.options.idle_timeout);
                let new = self.seal(&key, &s)?;
                let mut eval = redis::cmd("EVAL");
                eval.arg(TOUCH_SCRIPT)
                    .arg(1)
                    .arg(&key)
                    .arg(sealed)
                    .arg(new)
                    .arg(millis(ttl).max(1));
                let wrote = !matches!(self.query("touch", &eval).await?, Value::Nil);
                if wrote {
                    self.l1.insert(s.id.hashed(), Arc::new(s));
                } else {
                    self.l1.invalidate(&session.id.hashed());
                }
                Ok(wrote)
            },
            |_| "ok",
        ))
    }

    fn delete_by_sid<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.observed(
            "delete_by_sid",
            self.delete_index("delete_by_sid", "sid", issuer, sid),
            |_| "ok",
        ))
    }

    fn delete_by_sub<'a>(
        &'a self,
        issuer: &'a str,
        sub: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.observed(
            "delete_by_sub",
            self.delete_index("delete_by_sub", "sub", issuer, sub),
            |_| "ok",
        ))
    }

    fn delete_hashed<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed("delete_hashed", self.delete_hashed_inner(hash), |_| "ok"))
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(self.observed("list", self.list_inner(filter, limit), |_| "ok"))
    }

    fn announce<'a>(&'a self, ended: &'a Ended) -> BoxFuture<'a, ()> {
        Box::pin(self.announce_inner(ended))
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }

    fn try_lock<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockToken>, StoreError>> {
        Box::pin(self.observed(
            "lock",
            async move {
                let token = LockToken::generate()?;
                let v = self
                    .query(
                        "lock",
                        redis::cmd("SET")
                            .arg(Self::lock_key(id))
                            .arg(token.as_str())
                            .arg("NX")
                            .arg("PX")
                            .arg(millis(ttl).max(1)),
                    )
                    .await?;
                if matches!(v, Value::Nil) {
                    self.metrics
                        .session_lock_contention
                        .with_label_values(&[BACKEND])
                        .inc();
                    Ok(None)
                } else {
                    Ok(Some(token))
                }
            },
            |t| if t.is_some() { "ok" } else { "busy" },
        ))
    }

    fn unlock<'a>(
        &'a self,
        id: &'a SessionId,
        token: &'a LockToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed(
            "unlock",
            async move {
                // EVALSHA first, EVAL when the script is not loaded (after a restart/failover).
                let mut evalsha = redis::cmd("EVALSHA");
                evalsha
                    .arg(self.unlock.get_hash())
                    .arg(1)
                    .arg(Self::lock_key(id))
                    .arg(token.as_str());
                let v = match self.query("unlock", &evalsha).await {
                    Err(StoreError::Redis { source, .. }) if source.code() == Some("NOSCRIPT") => {
                        let mut eval = redis::cmd("EVAL");
                        eval.arg(UNLOCK_SCRIPT)
                            .arg(1)
                            .arg(Self::lock_key(id))
                            .arg(token.as_str());
                        self.query("unlock", &eval).await?
                    }
                    other => other?,
                };
                Ok(matches!(v, Value::Int(1)))
            },
            |_| "ok",
        ))
    }

    fn mark_used<'a>(
        &'a self,
        kind: OneTime,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.observed(
            "mark_used",
            async move {
                let hash = crypto::sha256(value);
                let key = format!("pc:u:{}:{}", kind.prefix(), hex(&hash[..16]));
                let v = self
                    .query(
                        "mark_used",
                        redis::cmd("SET")
                            .arg(key)
                            .arg(1)
                            .arg("NX")
                            .arg("PX")
                            .arg(millis(ttl).max(1)),
                    )
                    .await?;
                Ok(!matches!(v, Value::Nil))
            },
            |first| if *first { "ok" } else { "replay" },
        ))
    }
}

fn index_input(kind: &str, issuer: &str, value: &str) -> String {
    format!("{kind}\0{issuer}\0{value}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
