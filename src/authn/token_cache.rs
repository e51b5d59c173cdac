//! The verified-token cache: a token verified once is answered from memory until its `exp`.
//!
//! Entries are keyed by the token's SHA-256, weighed by an estimate of the bytes they hold
//! (the cache is bounded by `auth.token_cache_bytes`, not by a count) and expire at the
//! token's `exp` ([`ExpireAtExp`]).
//!
//! Security notes:
//! - The token itself is never stored or logged; only its SHA-256 is.
//! - A cached token is served only under the issuer set (configuration generation) it was
//!   verified under, only while the key that verified it is still in its issuer's key set
//!   and the keys are usable ([`cached_still_valid`]), and never past its `exp`: a reload
//!   that removes an audience, or a key rotated out, is never outlived by the cache.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::issuers::IssuerSet;
use super::keys::VerifyKey;
use crate::claims::{ClaimPath, Identity};
use crate::metrics::Metrics;

/// A verified token, cached by its hash.
pub(super) struct Cached {
    pub(super) identity: Arc<Identity>,
    /// The issuer's slot (see `Authenticator::issuer_index`).
    pub(super) issuer: usize,
    /// The key that verified it (None: the issuer's shared secret).
    pub(super) key: Option<Arc<VerifyKey>>,
    pub(super) exp: u64,
    /// The [`IssuerSet`] generation it was verified under: after a reload it is verified
    /// again, so a token the new settings refuse (audience removed, ...) is never served.
    pub(super) generation: u64,
}

/// Verified tokens by SHA-256, bounded by estimated bytes, each expiring at its `exp`.
pub(super) struct TokenCache {
    cache: moka::sync::Cache<[u8; 32], Arc<Cached>>,
    /// `portcullis_token_cache_requests_total{result="hit"}` and `{result="miss"}`, resolved once.
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

/// Expires an entry at its token's `exp` (wall clock).
struct ExpireAtExp;

// === impl TokenCache ===

impl TokenCache {
    /// A cache of at most `max_bytes` (by [`cached_weight`]); `mapped` are the claims identity
    /// headers are built from (their values are kept with a cached identity); `extra` is
    /// counted for every entry on top (the signed assertion kept with an identity).
    pub(super) fn new(
        max_bytes: u64,
        mapped: Arc<[ClaimPath]>,
        extra: u32,
        metrics: &Metrics,
    ) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_k, v: &Arc<Cached>| cached_weight(v, &mapped).saturating_add(extra))
            .expire_after(ExpireAtExp)
            .build();
        Self {
            cache,
            hits: metrics.token_cache.with_label_values(&["hit"]),
            misses: metrics.token_cache.with_label_values(&["miss"]),
        }
    }

    /// The entry for `hash` if `valid` accepts it (a hit); an entry it refuses is removed.
    /// Counts a hit or a miss.
    pub(super) fn get(
        &self,
        hash: &[u8; 32],
        valid: impl FnOnce(&Cached) -> bool,
    ) -> Option<Arc<Cached>> {
        if let Some(c) = self.cache.get(hash) {
            if valid(&c) {
                self.hits.inc();
                return Some(c);
            }
            self.cache.invalidate(hash);
        }
        self.misses.inc();
        None
    }

    /// Keeps `cached` under `hash`, unless its `exp` has passed already.
    pub(super) fn insert(&self, hash: [u8; 32], cached: Cached) {
        if cached.exp > now_unix() {
            self.cache.insert(hash, Arc::new(cached));
        }
    }

    /// Drops every entry (a new issuer set never serves the old one's).
    pub(super) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// The estimated size in bytes (see [`cached_weight`]), after pending maintenance.
    pub(super) fn bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Tokens held, after pending maintenance.
    pub(super) fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

// === impl ExpireAtExp ===

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

/// Whether `c` may still be served under `set` (its generation is checked by the caller):
/// not expired, its issuer still configured, and the key that verified it still in the
/// issuer's usable key set.
pub(super) fn cached_still_valid(set: &IssuerSet, c: &Cached) -> bool {
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

/// The cache key of `token`.
pub(super) fn sha256(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Seconds since the epoch (wall clock: `exp` is wall-clock time).
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
fn cached_weight(c: &Arc<Cached>, mapped: &[ClaimPath]) -> u32 {
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
fn header_bytes(claims: &Map<String, Value>, mapped: &[ClaimPath]) -> usize {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use moka::Expiry;
    use serde_json::json;

    use super::*;

    fn cached(claims: Value, exp: u64) -> Arc<Cached> {
        Arc::new(entry(claims, exp))
    }

    fn entry(claims: Value, exp: u64) -> Cached {
        Cached {
            identity: Arc::new(Identity {
                issuer: Arc::from("corp"),
                subject: Some("alice".to_string()),
                claims: claims.as_object().cloned().unwrap_or_default(),
                scopes: vec!["read".to_string()],
                groups: vec![],
                roles: vec![],
                expires: None,
                headers: Default::default(),
                cel: Default::default(),
            }),
            issuer: 0,
            key: None,
            exp,
            generation: 0,
        }
    }

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).unwrap_or(ClaimPath(vec![]))
    }

    fn metrics() -> Metrics {
        Metrics::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    fn empty_set() -> IssuerSet {
        IssuerSet {
            generation: 0,
            issuers: Vec::new(),
            by_iss: HashMap::new(),
            max_token_bytes: 8192,
            kept_claims: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn an_entry_expires_at_its_exp() {
        let now = now_unix();
        let e = ExpireAtExp;
        let ttl = |exp| {
            e.expire_after_create(&[0; 32], &cached(json!({}), exp), std::time::Instant::now())
        };
        let in_a_minute = ttl(now + 60).unwrap_or_default();
        assert!(
            in_a_minute <= Duration::from_secs(60) && in_a_minute >= Duration::from_secs(58),
            "{in_a_minute:?}"
        );
        // Past or at exp: gone at once, never an underflow.
        assert_eq!(ttl(now.saturating_sub(10)), Some(Duration::ZERO));
        assert_eq!(ttl(0), Some(Duration::ZERO));
    }

    #[test]
    fn the_weight_counts_what_the_identity_holds() {
        let none: [ClaimPath; 0] = [];
        let bare = cached_weight(&cached(json!({}), 1), &none) as usize;
        assert!(bare >= ENTRY_OVERHEAD + size_of::<Identity>(), "{bare}");
        let long = "x".repeat(10_000);
        let big = cached_weight(&cached(json!({ "email": long }), 1), &none) as usize;
        assert!(big >= bare + 10_000, "{bare} -> {big}");
        // A mapped claim is counted again: its header value is kept with the identity.
        let mapped = [path("email")];
        let with_header = cached_weight(&cached(json!({ "email": long }), 1), &mapped) as usize;
        assert!(with_header >= big + 10_000, "{big} -> {with_header}");
        // Null and object claims send no header, so they add nothing for it.
        let obj = cached(json!({ "email": { "a": 1 } }), 1);
        assert_eq!(cached_weight(&obj, &mapped), cached_weight(&obj, &none));
    }

    #[test]
    fn nested_values_are_weighed_whole() {
        assert_eq!(value_bytes(&json!(42)), 0);
        assert_eq!(map_bytes(&Map::new()), 0);
        let nested = json!({"a": {"b": ["xxxxxxxx", "yyyyyyyy"]}});
        let m = nested.as_object().cloned().unwrap_or_default();
        assert!(map_bytes(&m) > 2 * MAP_NODE + 16, "{}", map_bytes(&m));
    }

    #[test]
    fn expired_or_orphaned_entries_are_not_valid() {
        let set = empty_set();
        // exp passed.
        assert!(!cached_still_valid(&set, &cached(json!({}), now_unix())));
        // Not expired, but its issuer's slot is not in the set.
        assert!(!cached_still_valid(
            &set,
            &cached(json!({}), now_unix() + 60)
        ));
    }

    #[test]
    fn hits_and_misses_are_counted_and_refused_entries_removed() {
        let m = metrics();
        let cache = TokenCache::new(1 << 20, Arc::from(Vec::new()), 0, &m);
        let hash = sha256("a.b.c");
        assert!(cache.get(&hash, |_| true).is_none());
        cache.insert(hash, entry(json!({}), now_unix() + 60));
        assert!(cache.get(&hash, |_| true).is_some());
        assert_eq!(cache.entries(), 1);
        assert!(cache.bytes() > 0);
        // Refused: counted as a miss and removed.
        assert!(cache.get(&hash, |_| false).is_none());
        assert_eq!(cache.entries(), 0);
        let counts = |r: &str| m.token_cache.with_label_values(&[r]).get();
        assert_eq!((counts("hit"), counts("miss")), (1, 2));
        // An entry already past its exp is not kept.
        cache.insert(hash, entry(json!({}), now_unix()));
        assert_eq!(cache.entries(), 0);
        cache.insert(hash, entry(json!({}), now_unix() + 60));
        cache.clear();
        assert_eq!(cache.entries(), 0);
    }

    #[test]
    fn the_key_is_the_tokens_sha256() {
        assert_ne!(sha256("a"), sha256("b"));
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(sha256("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
