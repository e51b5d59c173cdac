//! Keys per issuer, kept usable through IdP trouble.
//!
//! - Fetched at start, then refreshed in the background (every `refresh_interval` ±10%, or
//!   the JWKS `Cache-Control: max-age` within `refresh_min..refresh_max`). Requests never wait
//!   for a scheduled refresh.
//! - A token with an unknown `kid` triggers one refresh, single-flight per issuer, at most one
//!   per `unknown_kid_cooldown`; unknown kids are negative-cached in between (on the injected
//!   clock), so garbage kids cannot be turned against the IdP. The refresh runs on its own
//!   task: requests wait for it at most `unknown_kid_wait`, and no lock is held across the IdP
//!   call, so a hanging IdP never queues requests.
//! - A failed or unusable refresh never replaces keys that worked; they stay usable for
//!   `max_stale` after the last good refresh. Failed scheduled refreshes are retried with
//!   backoff, never sooner than the IdP's `Retry-After` (capped at `max_retry_after`).
//! - The last good discovery document and JWKS are persisted under `state_dir` and loaded at
//!   start, so a restart during an IdP outage still validates (see `state.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::Uri;
use tokio::sync::watch;
use tokio::time::Instant;

use super::keys::{JwksError, KeySet, VerifyKey};
use super::state::{Persisted, StateError, state_file, write_atomic};
use crate::clock::SharedClock;
use crate::config::IssuerConfig;
use crate::config::issuer::idp_url_allowed;
use crate::idp::{IdpClient, IdpError};
use crate::metrics::Metrics;

/// Why a refresh failed (the keys in use stay).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The IdP call failed.
    #[error("{endpoint}")]
    Idp {
        endpoint: &'static str,
        #[source]
        source: IdpError,
    },
    /// The discovery document is unusable.
    #[error("discovery document unusable")]
    Discovery(#[source] DiscoveryError),
    /// The JWKS is unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Why a discovery document is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Not JSON.
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    /// It names another issuer than the one configured.
    #[error("issuer is \"{found}\", expected \"{expected}\"")]
    IssuerMismatch {
        /// What the document says.
        found: String,
        /// What the configuration says.
        expected: String,
    },
    /// No `jwks_uri`, or one Portcullis may not fetch.
    #[error("no usable jwks_uri")]
    NoJwksUri,
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
    /// Single flight for unknown-kid refreshes (never locked across an await).
    forced: Mutex<Forced>,
    /// Unknown kids, until when (on `clock`) they are answered without a refresh.
    negative: Mutex<Negative>,
    state_file: Option<PathBuf>,
    /// Refreshes started, and the newest whose keys were applied.
    started: AtomicU64,
    applied: AtomicU64,
    /// The newest generation written to the state file (writes never go backwards).
    persisted: Arc<Mutex<u64>>,
    /// Whether usable keys were ever in place (fetched or loaded): the readiness latch.
    had_usable: AtomicBool,
}

/// The unknown-kid refresh state.
#[derive(Default)]
struct Forced {
    /// When the last one started (the cool-down runs from here).
    last: Option<Instant>,
    /// The one running now, if any: turns true when it ends.
    running: Option<watch::Receiver<bool>>,
}

/// Unknown kids with their expiry, bounded.
#[derive(Default)]
struct Negative {
    until: HashMap<String, Instant>,
}

/// Ends the running unknown-kid refresh, also if its task is dropped (runtime shutdown).
struct RunningGuard {
    keys: Arc<IssuerKeys>,
    /// Taken when the refresh is released.
    done: Option<watch::Sender<bool>>,
}

/// A refresh's state file write, done after its keys are in use.
struct StateWrite {
    generation: u64,
    jwks_uri: Uri,
    discovery: Option<serde_json::Value>,
    jwks: Bytes,
}

/// At most this many unknown kids are remembered; beyond that the cool-down alone protects
/// the IdP.
const NEGATIVE_MAX: usize = 10_000;

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
        metrics
            .issuer_keys_usable
            .with_label_values(&[&config.name])
            .set(0);
        Self {
            state_file: state_dir.map(|d| state_file(d, &config.name)),
            jwks_uri: ArcSwapOption::new(config.jwks_uri.clone().map(Arc::new)),
            config,
            idp,
            clock,
            metrics,
            current: ArcSwapOption::empty(),
            discovery: ArcSwapOption::empty(),
            max_age: ArcSwap::from_pointee(None),
            forced: Mutex::default(),
            negative: Mutex::default(),
            started: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            persisted: Arc::default(),
            had_usable: AtomicBool::new(false),
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

    /// Whether usable keys were ever in place since start (fetched, or loaded from the state
    /// directory within `max_stale`). Readiness latches on this: keys going stale later make
    /// this issuer's requests 503, not the whole process unready.
    pub fn had_usable_keys(&self) -> bool {
        self.had_usable.load(Ordering::Relaxed)
    }

    /// Sets `portcullis_issuer_keys_usable` from [`IssuerKeys::usable`] (it changes with time,
    /// so this also runs before `/metrics` renders).
    pub fn publish_usable(&self) {
        let usable = self.usable();
        if usable {
            self.had_usable.store(true, Ordering::Relaxed);
        }
        self.metrics
            .issuer_keys_usable
            .with_label_values(&[self.name()])
            .set(i64::from(usable));
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

    /// Called for a token whose `kid` is unknown: starts one refresh (single flight, rate
    /// limited) on its own task, or joins the one running, waits for it at most
    /// `unknown_kid_wait`, and says whether the kid is now known. The refresh goes on when the
    /// wait ends or the request goes away.
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>, kid: &str) -> bool {
        let now = self.clock.now();
        if self.negative().contains(kid, now) {
            return false;
        }
        let mut done = {
            let mut forced = self.forced.lock().unwrap_or_else(PoisonError::into_inner);
            // A refresh may have brought it since the lookup.
            if self.has_kid(kid) {
                return true;
            }
            match &forced.running {
                Some(running) => {
                    self.count_forced("joined");
                    running.clone()
                }
                None => {
                    let cooling = forced.last.is_some_and(|t| {
                        now.saturating_duration_since(t) < self.config.unknown_kid_cooldown
                    });
                    if cooling {
                        drop(forced);
                        self.remember_unknown(kid, now);
                        self.count_forced("cooldown");
                        return false;
                    }
                    forced.last = Some(now);
                    let (tx, rx) = watch::channel(false);
                    forced.running = Some(rx.clone());
                    let guard = RunningGuard {
                        keys: self.clone(),
                        done: Some(tx),
                    };
                    tokio::spawn(guard.run());
                    rx
                }
            }
        };
        // Bounded: a hanging IdP costs this request `unknown_kid_wait`, not the IdP timeout.
        let _ = tokio::time::timeout(self.config.unknown_kid_wait, done.wait_for(|d| *d)).await;
        let known = self.has_kid(kid);
        if !known {
            self.remember_unknown(kid, self.clock.now());
        }
        known
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.current().is_some_and(|s| s.by_kid.contains_key(kid))
    }

    fn negative(&self) -> MutexGuard<'_, Negative> {
        self.negative.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember_unknown(&self, kid: &str, now: Instant) {
        self.negative()
            .insert(kid, now + self.config.unknown_kid_cooldown, now);
    }

    fn count_forced(&self, result: &str) {
        self.metrics
            .jwks_forced_refreshes
            .with_label_values(&[self.name(), result])
            .inc();
    }

    /// Fetches discovery (when configured) and the JWKS; swaps keys in only if usable, then
    /// writes them to the state file.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        let (result, write) = self.refresh_keys().await;
        if let Some(write) = write {
            self.persist(write).await;
        }
        result
    }

    /// The in-memory half of [`Self::refresh`]: the keys are in use when this returns; the
    /// state file write (fsync'ed, so slow under I/O load) is handed back for the caller.
    async fn refresh_keys(&self) -> (Result<(), RefreshError>, Option<StateWrite>) {
        let (result, write) = match self.fetch().await {
            Ok((n, write)) => (Ok(n), write),
            Err(e) => (Err(e), None),
        };
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
                tracing::warn!(issuer = self.name(), error = %crate::upstream::error_chain(e), key_age = ?age, usable = self.usable(), "JWKS refresh failed; keeping the last good keys");
            }
        }
        (result.map(|_| ()), write)
    }

    async fn fetch(&self) -> Result<(usize, Option<StateWrite>), RefreshError> {
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
                        tracing::warn!(issuer = self.name(), error = %crate::upstream::error_chain(&e), "discovery failed; using the known jwks_uri");
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
            return Ok((n, None));
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
        self.negative().until.clear();
        self.publish_usable();
        let write = StateWrite {
            generation,
            jwks_uri,
            discovery,
            jwks: fetched.body,
        };
        Ok((n, Some(write)))
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
            .map_err(|e| RefreshError::Discovery(DiscoveryError::NotJson(e)))?;
        let issuer = doc
            .get("issuer")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if issuer != self.config.issuer {
            return Err(RefreshError::Discovery(DiscoveryError::IssuerMismatch {
                found: issuer.to_string(),
                expected: self.config.issuer.clone(),
            }));
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Uri>().ok())
            .filter(idp_url_allowed)
            .ok_or(RefreshError::Discovery(DiscoveryError::NoJwksUri))?;
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
    /// most the normal interval), never sooner than a `Retry-After` the IdP gave, capped at
    /// `max_retry_after` like every other IdP call.
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
                    let retry_after = match &e {
                        RefreshError::Idp { source, .. } => source.retry_after(),
                        _ => None,
                    };
                    retry_delay(
                        failures,
                        self.config.refresh_interval,
                        retry_after,
                        self.config.idp.max_retry_after,
                    )
                }
            };
        }
    }

    /// Loads the persisted state, if present and sound for this issuer's configuration.
    /// Returns whether keys loaded.
    pub async fn load_persisted(&self) -> bool {
        let Some(path) = self.state_file.clone() else {
            return false;
        };
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        let loaded = match read {
            Ok(Ok(bytes)) => self.apply_persisted(&bytes),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Ok(Err(e)) => Err(StateError::Read(e)),
            Err(_) => return false,
        };
        let result = if loaded.is_ok() { "success" } else { "failure" };
        self.metrics
            .state_loads
            .with_label_values(&[self.name(), result])
            .inc();
        match loaded {
            Ok(()) => {
                tracing::info!(issuer = self.name(), age = ?self.age(), usable = self.usable(), "loaded persisted IdP keys");
                true
            }
            Err(e) => {
                let problem = crate::upstream::error_chain(&e);
                tracing::warn!(
                    issuer = self.name(),
                    problem,
                    "ignoring persisted IdP state"
                );
                false
            }
        }
    }

    fn apply_persisted(&self, bytes: &[u8]) -> Result<(), StateError> {
        let (p, jwks_uri) = Persisted::parse_for(bytes, &self.config)?;
        let wall = UNIX_EPOCH + Duration::from_secs(p.fetched_at_unix);
        let age = self
            .clock
            .wall()
            .duration_since(wall)
            .unwrap_or(Duration::ZERO);
        let now = self.clock.now();
        let fetched_at = now.checked_sub(age).unwrap_or(now);
        let jwks = serde_json::to_vec(&p.jwks).map_err(StateError::NotValid)?;
        let mut set = KeySet::parse(&jwks, None, fetched_at, wall)?;
        set.from_disk = true;
        if self.config.jwks_uri.is_none() {
            self.jwks_uri.store(Some(Arc::new(jwks_uri)));
        }
        if let Some(d) = p.discovery {
            self.discovery.store(Some(Arc::new(d)));
        }
        self.metrics
            .jwks_keys
            .with_label_values(&[self.name()])
            .set(i64::try_from(set.all.len()).unwrap_or(i64::MAX));
        self.current.store(Some(Arc::new(set)));
        self.publish_usable();
        Ok(())
    }

    async fn persist(&self, write: StateWrite) {
        let StateWrite {
            generation,
            jwks_uri,
            discovery,
            jwks,
        } = write;
        let Some(path) = self.state_file.clone() else {
            return;
        };
        let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(&jwks) else {
            return;
        };
        let state = Persisted {
            issuer: self.config.issuer.clone(),
            fetched_at_unix: unix_secs(self.clock.wall()),
            jwks_uri: jwks_uri.to_string(),
            discovery: discovery.or_else(|| self.discovery().map(|d| (*d).clone())),
            jwks,
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&state) else {
            return;
        };
        let name = self.config.name.clone();
        let newest = self.persisted.clone();
        let written = tokio::task::spawn_blocking(move || {
            // One writer at a time per issuer, and an older refresh never overwrites the
            // state of a newer one (on a blocking thread: never held across an await).
            let mut newest = newest.lock().unwrap_or_else(PoisonError::into_inner);
            if *newest > generation {
                return Ok(());
            }
            write_atomic(&path, &bytes)?;
            *newest = generation;
            Ok::<_, std::io::Error>(())
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(issuer = name, error = %e, "cannot persist IdP state");
        }
    }
}

// === impl RunningGuard ===

impl RunningGuard {
    /// Runs the unknown-kid refresh and counts it; waiters are released as soon as the keys
    /// are in use, before the state file is written (an fsync must not hold them, nor make a
    /// later unknown kid join a refresh whose fetch is long over).
    async fn run(mut self) {
        let keys = self.keys.clone();
        let (result, write) = keys.refresh_keys().await;
        keys.count_forced(if result.is_ok() { "fetched" } else { "failed" });
        self.release();
        if let Some(write) = write {
            keys.persist(write).await;
        }
    }

    /// Ends the running refresh once: a later one may already be running when this guard
    /// is dropped, and must not be cleared.
    fn release(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        self.keys
            .forced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running = None;
        let _ = done.send(true);
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.release();
    }
}

// === impl Negative ===

impl Negative {
    fn contains(&self, kid: &str, now: Instant) -> bool {
        self.until.get(kid).is_some_and(|until| now < *until)
    }

    fn insert(&mut self, kid: &str, until: Instant, now: Instant) {
        if self.until.len() >= NEGATIVE_MAX && !self.until.contains_key(kid) {
            self.until.retain(|_, u| now < *u);
            if self.until.len() >= NEGATIVE_MAX {
                // All still live (a storm of distinct kids): start over rather than scan on
                // every insert; the cool-down still keeps them from the IdP.
                self.until.clear();
            }
        }
        self.until.insert(kid.to_string(), until);
    }
}

/// The wait before the next scheduled attempt after `failures` failures in a row: 2 s, 4 s,
/// ... at most ~4 min and `refresh_interval` (so an IdP that was down at start is picked up
/// soon after it returns), ±10%, and never sooner than the IdP's `Retry-After`, which counts
/// up to `max_retry_after`.
pub fn retry_delay(
    failures: u32,
    refresh_interval: Duration,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Duration {
    let backoff = Duration::from_secs(1u64 << failures.clamp(1, 8)).min(refresh_interval);
    // Jitter the backoff only: never sooner than the (capped) Retry-After.
    jitter(backoff).max(retry_after.unwrap_or_default().min(max_retry_after))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_obeys_retry_after_capped_at_max_retry_after() {
        let hour = Duration::from_secs(3600);
        let max = Duration::from_secs(60);
        for failures in 1..12 {
            let d = retry_delay(failures, hour, None, max);
            assert!(d <= Duration::from_secs(256).mul_f64(1.1), "{d:?}");
            assert!(d >= Duration::from_secs(2).mul_f64(0.9), "{d:?}");
        }
        // Within the cap: never sooner than Retry-After.
        let d = retry_delay(1, hour, Some(Duration::from_secs(45)), max);
        assert!(d >= Duration::from_secs(45), "{d:?}");
        assert!(d < Duration::from_secs(46), "{d:?}");
        // Beyond the cap: max_retry_after, not the IdP's hour.
        let d = retry_delay(1, hour, Some(hour), max);
        assert!(d >= max && d < max + Duration::from_secs(3), "{d:?}");
        // The normal interval bounds the backoff.
        let d = retry_delay(8, Duration::from_secs(10), None, max);
        assert!(d <= Duration::from_secs(11), "{d:?}");
    }

    #[test]
    fn negative_cache_expires_on_the_given_clock_and_is_bounded() {
        let t0 = Instant::now();
        let mut n = Negative::default();
        n.insert("a", t0 + Duration::from_secs(30), t0);
        assert!(n.contains("a", t0 + Duration::from_secs(29)));
        assert!(!n.contains("a", t0 + Duration::from_secs(30)));
        for i in 0..NEGATIVE_MAX + 10 {
            n.insert(&format!("k{i}"), t0 + Duration::from_secs(30), t0);
        }
        assert!(n.until.len() <= NEGATIVE_MAX);
    }
}
