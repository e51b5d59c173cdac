//! Session administration on the Redis store: listings (by subject or `sid` through the index
//! sets, all sessions through a bounded `SCAN`), a delete by id hash, and the announcement of
//! ended sessions to the other replicas.
//!
//! Bounds: a listing reads at most `limit` records past the filter; a `SCAN` stops after
//! [`MAX_SCAN_ROUNDS`] rounds of `COUNT` [`SCAN_COUNT`] or [`MAX_SCAN_KEYS`] keys, and says the
//! listing is truncated when it did not reach the end. `KEYS` is never used. A Redis Cluster
//! has no single keyspace to `SCAN`: there, a listing must name a subject or a `sid`.

use redis::Value;

use super::{Conn, RedisStore, notices};
use crate::session::{Ended, ListFilter, Listing, SessionSummary, StoreError};

/// Keys asked for per `SCAN` round.
const SCAN_COUNT: u64 = 500;
/// Most `SCAN` rounds per listing.
const MAX_SCAN_ROUNDS: usize = 200;
/// Most record keys a listing collects from `SCAN` before reading them.
const MAX_SCAN_KEYS: usize = 20_000;

// === impl RedisStore ===

impl RedisStore {
    /// Sessions matching `filter`, at most `limit`.
    pub(super) async fn list_inner(
        &self,
        filter: &ListFilter,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        const OP: &str = "list";
        let (hashes, mut truncated) = match (&filter.issuer, &filter.sid, &filter.sub) {
            (Some(i), Some(sid), _) => (self.index_members(OP, "sid", i, sid).await?, false),
            (Some(i), None, Some(sub)) => (self.index_members(OP, "sub", i, sub).await?, false),
            (_, None, None) if matches!(self.conn, Conn::Cluster { .. }) => {
                return Err(StoreError::Unsupported(
                    "listing every session of a Redis Cluster; filter by sub or sid",
                ));
            }
            (_, None, None) => self.scan(OP, limit).await?,
            _ => {
                return Err(StoreError::Unsupported(
                    "a listing by sub or sid without the issuer",
                ));
            }
        };
        let now = self.clock.wall();
        let mut out = Listing::default();
        for h in hashes {
            let key = format!("pc:s:{{{h}}}");
            let Value::BulkString(sealed) = self.query(OP, redis::cmd("GET").arg(&key)).await?
            else {
                continue;
            };
            let Some(s) = self.open_hashed(&key, &h, &sealed) else {
                continue;
            };
            if !filter.matches(&s) || !s.is_live(now, self.options.idle_timeout) {
                continue;
            }
            if out.sessions.len() >= limit {
                truncated = true;
                break;
            }
            out.sessions.push(SessionSummary::of(&s));
        }
        out.truncated |= truncated;
        Ok(out)
    }

    /// A record opened without its id (a listing knows only the hash of it).
    fn open_hashed(&self, key: &str, hash: &str, sealed: &[u8]) -> Option<crate::session::Session> {
        let json = self
            .sealer
            .open(
                crate::session::Purpose::StoreRecord,
                key.as_bytes(),
                sealed,
            )
            .ok()?;
        let s: crate::session::Session = serde_json::from_slice(&json).ok()?;
        (s.id.hashed() == hash).then_some(s)
    }

    /// The session hashes in the index set(s) of (`kind`, `issuer`, `value`).
    pub(super) async fn index_members(
        &self,
        op: &'static str,
        kind: &str,
        issuer: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for key in self.index_keys(kind, issuer, value) {
            if let Value::Array(v) | Value::Set(v) =
                self.query(op, redis::cmd("SMEMBERS").arg(&key)).await?
            {
                out.extend(v.into_iter().filter_map(|m| match m {
                    Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                }));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Record hashes from a bounded `SCAN`; `true` when it stopped before the end.
    async fn scan(&self, op: &'static str, limit: usize) -> Result<(Vec<String>, bool), StoreError> {
        let mut cursor = String::from("0");
        let mut hashes = Vec::new();
        for _ in 0..MAX_SCAN_ROUNDS {
            let reply = self
                .query(
                    op,
                    redis::cmd("SCAN")
                        .arg(&cursor)
                        .arg("MATCH")
                        .arg("pc:s:*")
                        .arg("COUNT")
                        .arg(SCAN_COUNT),
                )
                .await?;
            let Value::Array(mut parts) = reply else {
                return Ok((hashes, true));
            };
            let (Some(Value::Array(keys)), Some(Value::BulkString(next))) =
                (parts.pop(), parts.pop())
            else {
                return Ok((hashes, true));
            };
            hashes.extend(keys.into_iter().filter_map(|k| match k {
                Value::BulkString(b) => String::from_utf8(b)
                    .ok()
                    .and_then(|k| hash_of_record_key(&k).map(str::to_string)),
                _ => None,
            }));
            cursor = String::from_utf8_lossy(&next).into_owned();
            if cursor == "0" {
                return Ok((hashes, false));
            }
            // Enough to fill the listing (past a filter on the issuer, with some to spare).
            if hashes.len() > limit.saturating_mul(4) || hashes.len() >= MAX_SCAN_KEYS {
                return Ok((hashes, true));
            }
        }
        Ok((hashes, true))
    }

    /// Deletes the record whose id hashes to `hash`.
    pub(super) async fn delete_hashed_inner(&self, hash: &str) -> Result<bool, StoreError> {
        if !is_hash(hash) {
            return Ok(false);
        }
        self.l1.invalidate(hash);
        self.recent.insert(hash.to_string(), ());
        let v = self
            .query(
                "delete_hashed",
                redis::cmd("DEL").arg(format!("pc:s:{{{hash}}}")),
            )
            .await?;
        Ok(matches!(v, Value::Int(1)))
    }

    /// Publishes `ended` to the other replicas; failures are logged and counted (their L1
    /// entries then expire within `cache_ttl`).
    pub(super) async fn announce_inner(&self, ended: &Ended) {
        for message in notices::messages(&self.origin, ended) {
            let sent = self
                .query(
                    "publish",
                    redis::cmd("PUBLISH").arg(notices::CHANNEL).arg(message),
                )
                .await;
            let event = match sent {
                Ok(_) => "published",
                Err(e) => {
                    tracing::warn!(error = %e, "session announcement not published");
                    "publish_failed"
                }
            };
            self.metrics
                .session_notices
                .with_label_values(&[event])
                .inc();
        }
    }
}

/// `H` of a record key `pc:s:{H}`.
fn hash_of_record_key(key: &str) -> Option<&str> {
    key.strip_prefix("pc:s:{")?.strip_suffix('}')
}

/// Whether `s` has the shape of a session hash (unpadded base64url, as `hashed` writes).
fn is_hash(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
