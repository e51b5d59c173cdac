//! Keys per issuer, kept usable through IdP trouble.
//!
//! - Fetched at start, then refreshed in the background (every `refresh_interval` ±10%, or
//!   the JWKS `Cache-Control: max-age` within `refresh_min..refresh_max`). Requests never wait
//!   for a scheduled refresh.
//! - A token with an unknown `kid` triggers one refresh, single-flight per issuer, at most one
//!   per `unknown_kid_cooldown`; unknown kids are negative-cached in between, so garbage kids
//!   cannot be turned against the IdP.
//! - A failed or unusable refresh never replaces keys that worked; they stay usable for
//!   `max_stale` after the last good refresh.
//! - The last good discovery document and JWKS are persisted under `state_dir` (temp file,
//!   fsync, rename) and loaded at start, so a restart during an IdP outage still validates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::Uri;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::keys::{JwksError, KeySet, VerifyKey};
use crate::config::IssuerConfig;
use crate::config::issuer::idp_url_allowed;
use crate::idp::{IdpClient, IdpError, SharedClock};
use crate::metrics::Metrics;

/// Why a refresh failed (the keys in use stay).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The IdP call failed.
    #[error("{endpoint}: {source}")]
    Idp {
        endpoint: &'static str,
        #[source]
        source: IdpError,
    },
    /// The discovery document is unusable.
    #[error("discovery document unusable: {0}")]
    Discovery(String),
    /// The JWKS is unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// What a key lookup found.
pub enum Lookup {
    /// Keys to try, most likely first.
    Keys(Vec<Arc<VerifyKey>>),
    /// The kid is not in the current set.
    UnknownKid,
    /// No usable keys (none yet, or older than `max_stale`).
    Unavailable,
}

/// The state file, one per issuer.
#[derive(Serialize, Deserialize)]
struct Persisted {
    issuer: String,
    fetched_at_unix: u64,
    jwks_uri: String,
    discovery: Option<serde_json::Value>,
    jwks: serde_json::Value,
}

/// One issuer's keys.
pub struct IssuerKeys {
    /// The issuer's configuration.
    pub config: Arc<IssuerConfig>,
    idp: IdpClient,
    clock: SharedClock,
    metrics: Metrics,
    current: ArcSwapOption<KeySet>,
    jwks_uri: ArcSwapOption<Uri>,
    discovery: ArcSwapOption<serde_json::Value>,
    /// Last successful refresh's `max-age`, for the schedule.
    max_age: ArcSwap<Option<Duration>>,
    /// Single flight for unknown-kid refreshes; holds when the last one started.
    forced: tokio::sync::Mutex<Option<Instant>>,
    negative: moka::sync::Cache<String, ()>,
    state_file: Option<PathBuf>,
    /// Refreshes started, and the newest whose keys were applied.
    started: AtomicU64,
    applied: AtomicU64,
}

// === impl IssuerKeys ===

impl IssuerKeys {
    /// Keys for `config`, fetched through `idp`, persisted under `state_dir` when given.
    pub fn new(
        config: Arc<IssuerConfig>,
        idp: IdpClient,
        clock: SharedClock,
        metrics: Metrics,
        state_dir: Option<&Path>,
    ) -> Self {
        let negative = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(config.unknown_kid_cooldown)
            .build();
        Self {
            state_file: state_dir.map(|d| d.join("issuers").join(format!("{}.json", config.name))),
            jwks_uri: ArcSwapOption::new(config.jwks_uri.clone().map(Arc::new)),
            config,
            idp,
            clock,
            metrics,
            current: ArcSwapOption::empty(),
            discovery: ArcSwapOption::empty(),
            max_age: ArcSwap::from_pointee(None),
            forced: tokio::sync::Mutex::new(None),
            negative,
            started: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    /// The current key set, if any (fresh, stale or loaded from disk).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// The discovery document, when discovery was used.
    pub fn discovery(&self) -> Option<Arc<serde_json::Value>> {
        self.discovery.load_full()
    }

    /// Age of the current keys (since they were fetched, even by an earlier process).
    pub fn age(&self) -> Option<Duration> {
        self.current()
            .map(|k| self.clock.now().saturating_duration_since(k.fetched_at))
    }

    /// Usable: present and not older than `max_stale`.
    pub fn usable(&self) -> bool {
        self.age().is_some_and(|a| a <= self.config.max_stale)
    }

    /// Keys for a token's `kid` and algorithm.
    pub fn lookup(&self, kid: Option<&str>, alg: jsonwebtoken::Algorithm) -> Lookup {
        let Some(set) = self.current() else {
            return Lookup::Unavailable;
        };
        if self.clock.now().saturating_duration_since(set.fetched_at) > self.config.max_stale {
            return Lookup::Unavailable;
        }
        match kid {
            Some(kid) => match set.by_kid.get(kid) {
                Some(k) => Lookup::Keys(vec![k.clone()]),
                None => Lookup::UnknownKid,
            },
            // No kid: try this issuer's keys of the right type, a bounded number.
            None => Lookup::Keys(
                set.all
                    .iter()
                    .filter(|k| k.allows(alg))
                    .take(4)
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Whether `key` is still in the current set.
    pub fn still_has(&self, key: &Arc<VerifyKey>) -> bool {
        self.current().is_some_and(|s| s.contains(key))
    }

    /// Called for a token whose `kid` is unknown: refreshes once (single flight, rate limited)
    /// and says whether the kid is now known.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        if self.negative.contains_key(kid) {
            return false;
        }
        let mut last = self.forced.lock().await;
        // Another request may have refreshed while this one waited.
        if self.current().is_some_and(|s| s.by_kid.contains_key(kid)) {
            return true;
        }
        let now = self.clock.now();
        let cooling = last
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.unknown_kid_cooldown);
        if cooling {
            self.negative.insert(kid.to_string(), ());
            self.metrics
                .jwks_forced_refreshes
                .with_label_values(&[self.name(), "cooldown"])
                .inc();
            return false;
        }
        *last = Some(now);
        let result = self.refresh().await;
        self.metrics
            .jwks_forced_refreshes
            .with_label_values(&[
                self.name(),
                if result.is_ok() { "fetched" } else { "failed" },
            ])
            .inc();
        let known = self.current().is_some_and(|s| s.by_kid.contains_key(kid));
        if !known {
            self.negative.insert(kid.to_string(), ());
        }
        known
    }

    /// Fetches discovery (when configured) and the JWKS; swaps keys in only if usable.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        let result = self.fetch().await;
        match &result {
            Ok(n) => {
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&[self.name(), "success"])
                    .inc();
                tracing::debug!(issuer = self.name(), keys = n, "JWKS refreshed");
            }
            Err(e) => {
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&[self.name(), "failure"])
                    .inc();
                let age = self.age();
                tracing::warn!(issuer = self.name(), error = %e, key_age = ?age, usable = self.usable(), "JWKS refresh failed; keeping the last good keys");
            }
        }
        result.map(|_| ())
    }

    async fn fetch(&self) -> Result<usize, RefreshError> {
        // Refreshes may overlap (scheduled and forced); one that started earlier but finished
        // later must not replace newer keys.
        let generation = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (jwks_uri, discovery) = match self.config.jwks_uri.clone() {
            Some(u) => (u, None),
            None => match self.fetch_discovery().await {
                Ok((u, doc)) => (u, Some(doc)),
                // Discovery down but the JWKS location known: still refresh keys.
                Err(e) => match self.jwks_uri.load_full() {
                    Some(u) => {
                        tracing::warn!(issuer = self.name(), error = %e, "discovery failed; using the known jwks_uri");
                        ((*u).clone(), None)
                    }
                    None => return Err(e),
                },
            },
        };
        let fetched =
            self.idp
                .get(&jwks_uri, "jwks")
                .await
                .map_err(|source| RefreshError::Idp {
                    endpoint: "jwks",
                    source,
                })?;
        let previous = self.current();
        let set = KeySet::parse(
            &fetched.body,
            previous.as_deref(),
            self.clock.now(),
            self.clock.wall(),
        )?;
        let n = set.all.len();
        if self.applied.fetch_max(generation, Ordering::SeqCst) > generation {
            return Ok(n);
        }
        if let Some(doc) = &discovery {
            self.discovery.store(Some(Arc::new(doc.clone())));
        }
        self.jwks_uri.store(Some(Arc::new(jwks_uri.clone())));
        self.max_age.store(Arc::new(fetched.max_age));
        self.current.store(Some(Arc::new(set)));
        // The gauge follows the keys in use at once, not after the (fsync'ed) write below.
        self.metrics
            .jwks_keys
            .with_label_values(&[self.name()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        self.negative.invalidate_all();
        self.persist(&jwks_uri, discovery, &fetched.body).await;
        Ok(n)
    }

    async fn fetch_discovery(&self) -> Result<(Uri, serde_json::Value), RefreshError> {
        let fetched = self
            .idp
            .get(&self.config.discovery_uri, "discovery")
            .await
            .map_err(|source| RefreshError::Idp {
                endpoint: "discovery",
                source,
            })?;
        let doc: serde_json::Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| RefreshError::Discovery(format!("not JSON: {e}")))?;
        let issuer = doc
            .get("issuer")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if issuer != self.config.issuer {
            return Err(RefreshError::Discovery(format!(
                "issuer is \"{issuer}\", expected \"{}\"",
                self.config.issuer
            )));
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Uri>().ok())
            .filter(idp_url_allowed)
            .ok_or_else(|| RefreshError::Discovery("no usable jwks_uri".into()))?;
        Ok((uri, doc))
    }

    /// When the next scheduled refresh is due, after a success.
    pub fn next_interval(&self) -> Duration {
        let base = match **self.max_age.load() {
            Some(age) => age.clamp(self.config.refresh_min, self.config.refresh_max),
            None => self.config.refresh_interval,
        };
        jitter(base)
    }

    /// Refreshes on schedule forever; after a failure retries sooner (doubling from 1 s, at
    /// most the normal interval), never sooner than a `Retry-After` the IdP gave.
    pub async fn run(self: Arc<Self>, first_delay: Duration) {
        let mut delay = first_delay;
        let mut failures: u32 = 0;
        loop {
            tokio::time::sleep(delay).await;
            delay = match self.refresh().await {
                Ok(()) => {
                    failures = 0;
                    self.next_interval()
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // 2 s, 4 s, ... at most ~4 min (and the normal interval): an IdP that was
                    // down at start is picked up soon after it returns.
                    let backoff = Duration::from_secs(1u64 << failures.min(8))
                        .min(self.config.refresh_interval);
                    let retry_after = match &e {
                        RefreshError::Idp { source, .. } => source.retry_after(),
                        _ => None,
                    };
                    // Jitter the backoff only: never sooner than the IdP's Retry-After.
                    jitter(backoff).max(retry_after.unwrap_or_default())
                }
            };
        }
    }

    /// Loads the persisted state, if present and for this issuer. Returns whether keys loaded.
    pub async fn load_persisted(&self) -> bool {
        let Some(path) = self.state_file.clone() else {
            return false;
        };
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Ok(Err(e)) => {
                self.metrics
                    .state_loads
                    .with_label_values(&[self.name(), "failure"])
                    .inc();
                tracing::warn!(issuer = self.name(), error = %e, "cannot read persisted IdP state");
                return false;
            }
            Err(_) => return false,
        };
        match self.apply_persisted(&bytes) {
            Ok(()) => {
                self.metrics
                    .state_loads
                    .with_label_values(&[self.name(), "success"])
                    .inc();
                tracing::info!(issuer = self.name(), age = ?self.age(), "loaded persisted IdP keys");
                true
            }
            Err(problem) => {
                self.metrics
                    .state_loads
                    .with_label_values(&[self.name(), "failure"])
                    .inc();
                tracing::warn!(
                    issuer = self.name(),
                    problem,
                    "ignoring persisted IdP state"
                );
                false
            }
        }
    }

    fn apply_persisted(&self, bytes: &[u8]) -> Result<(), String> {
        let p: Persisted = serde_json::from_slice(bytes).map_err(|e| format!("not valid: {e}"))?;
        if p.issuer != self.config.issuer {
            return Err(format!("it is for issuer \"{}\"", p.issuer));
        }
        let wall = UNIX_EPOCH + Duration::from_secs(p.fetched_at_unix);
        let age = self
            .clock
            .wall()
            .duration_since(wall)
            .unwrap_or(Duration::ZERO);
        let now = self.clock.now();
        let fetched_at = now.checked_sub(age).unwrap_or(now);
        let jwks = serde_json::to_vec(&p.jwks).map_err(|e| e.to_string())?;
        let mut set = KeySet::parse(&jwks, None, fetched_at, wall).map_err(|e| e.to_string())?;
        set.from_disk = true;
        if self.config.jwks_uri.is_none() {
            if let Ok(u) = p.jwks_uri.parse::<Uri>() {
                self.jwks_uri.store(Some(Arc::new(u)));
            }
        }
        if let Some(d) = p.discovery {
            self.discovery.store(Some(Arc::new(d)));
        }
        self.metrics
            .jwks_keys
            .with_label_values(&[self.name()])
            .set(i64::try_from(set.all.len()).unwrap_or(i64::MAX));
        self.current.store(Some(Arc::new(set)));
        Ok(())
    }

    async fn persist(&self, jwks_uri: &Uri, discovery: Option<serde_json::Value>, jwks: &Bytes) {
        let Some(path) = self.state_file.clone() else {
            return;
        };
        let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(jwks) else {
            return;
        };
        let state = Persisted {
            issuer: self.config.issuer.clone(),
            fetched_at_unix: self
                .clock
                .wall()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            jwks_uri: jwks_uri.to_string(),
            discovery: discovery.or_else(|| self.discovery().map(|d| (*d).clone())),
            jwks,
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&state) else {
            return;
        };
        let name = self.config.name.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(issuer = name, error = %e, "cannot persist IdP state");
        }
    }
}

/// Writes `bytes` to `path` so a reader sees the old or the new file, never a torn one:
/// temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `d` ±10%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

/// Seconds since the Unix epoch of a wall time (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
