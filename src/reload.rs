//! Configuration reload while running (SIGHUP): the file is read and validated again, and if it
//! is good, the routes, upstreams, forwarding policy and issuers are swapped in at once.
//! Requests in flight finish on the configuration they started with. Issuer settings
//! (audiences, algorithms, claims, secrets) apply to the next request; an issuer whose key
//! source (issuer URL, `jwks_uri`, `ca_file`) did not change keeps its fetched keys; added
//! issuers start fetching, removed ones stop; cached tokens are verified again under the new
//! settings. Listeners, the admin address and connection limits are bound at start: a change
//! to them is logged and needs a restart. A bad file changes nothing, is logged and counts
//! `portcullis_reloads_total{kind="config",result="failure"}`.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::authn::Authenticator;
use std::time::Duration;

use crate::config::{AdminConfig, Config, ListenerConfig, SessionsConfig};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Applies new configurations to a running server.
#[derive(Clone)]
pub struct Reloader {
    proxy: Arc<ArcSwap<Proxy>>,
    metrics: Metrics,
    auth: Arc<Authenticator>,
    browser: Arc<crate::authn::browser::Browser>,
    keys: Arc<crate::assertion::Keys>,
    /// What needs a restart, as started: for the warning.
    fixed: Arc<RestartOnly>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An upstream could not be built.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::BuildError),
    /// An issuer could not be set up (TLS).
    #[error(transparent)]
    Issuer(#[from] crate::authn::BuildError),
    /// An assertion key could not be loaded.
    #[error(transparent)]
    AssertionKey(#[from] crate::assertion::KeyError),
}

// === impl Reloader ===

impl Reloader {
    pub(crate) fn new(
        proxy: Arc<ArcSwap<Proxy>>,
        metrics: Metrics,
        auth: Arc<Authenticator>,
        browser: Arc<crate::authn::browser::Browser>,
        keys: Arc<crate::assertion::Keys>,
        config: &Config,
    ) -> Self {
        Self {
            proxy,
            metrics,
            auth,
            browser,
            keys,
            fixed: Arc::new(RestartOnly::of(config)),
        }
    }

    /// Loads `path` (with `env` overrides) and applies it; logs and counts the result.
    pub fn reload_file(
        &self,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ReloadError> {
        let result = Config::load(path, env)
            .map_err(ReloadError::from)
            .and_then(|c| self.swap(&c));
        self.count(&result);
        if let Err(e) = &result {
            tracing::error!(error = %e, file = %path.display(), "configuration reload failed; keeping the running configuration");
        }
        result
    }

    /// Applies a validated configuration's routes, upstreams and forwarding policy; counts
    /// the result.
    pub fn apply(&self, config: &Config) -> Result<(), ReloadError> {
        let result = self.swap(config);
        self.count(&result);
        result
    }

    fn swap(&self, config: &Config) -> Result<(), ReloadError> {
        // Build everything first: a failure leaves the running issuers and routes untouched.
        let issuers = self.auth.prepare(config)?;
        let key_set = self.keys.load(config)?;
        let proxy = Proxy::build(config, &self.metrics, &self.auth, &self.browser, key_set)?;
        issuers.apply();
        // The admin listener publishes the new keys before the new handler signs with them.
        self.keys.publish(proxy.assertion_keys());
        self.proxy.store(Arc::new(proxy));
        let changed = RestartOnly::of(config).changed(&self.fixed);
        if !changed.is_empty() {
            tracing::warn!(
                changed = %changed.join(", "),
                "listeners, admin, server or sessions settings changed: they take effect after a restart"
            );
        }
        tracing::info!(
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            issuers = config.issuers.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    fn count(&self, result: &Result<(), ReloadError>) {
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .reloads
            .with_label_values(&["config", outcome])
            .inc();
    }
}

/// What takes effect only at start, compared by value after a reload (for the warning). A
/// derived `PartialEq`, so a new field cannot drop out of the comparison. Issuer settings,
/// secrets included, are not here: a reload applies them.
#[derive(Debug, PartialEq)]
struct RestartOnly {
    listeners: Vec<ListenerConfig>,
    admin: AdminConfig,
    sessions: SessionsConfig,
    token_cache_bytes: u64,
    /// `server`'s connection limits, timeouts and workers (its forwarding settings reload).
    server: (
        usize,
        usize,
        Duration,
        Duration,
        Duration,
        Duration,
        Duration,
        usize,
    ),
}

// === impl RestartOnly ===

impl RestartOnly {
    fn of(c: &Config) -> Self {
        let s = &c.server;
        Self {
            listeners: c.listeners.clone(),
            admin: c.admin.clone(),
            sessions: c.sessions.clone(),
            token_cache_bytes: c.auth.token_cache_bytes,
            server: (
                s.max_connections,
                s.max_header_bytes,
                s.idle_timeout,
                s.header_read_timeout,
                s.tls_handshake_timeout,
                s.shutdown_grace,
                s.upgraded_idle_timeout,
                s.workers,
            ),
        }
    }

    /// The names of the sections that differ from `other`.
    fn changed(&self, other: &Self) -> Vec<&'static str> {
        [
            ("listeners", self.listeners != other.listeners),
            ("admin", self.admin != other.admin),
            ("sessions", self.sessions != other.sessions),
            (
                "auth.token_cache_bytes",
                self.token_cache_bytes != other.token_cache_bytes,
            ),
            ("server", self.server != other.server),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(client_secret: &str, admin: &str, cookie_key: &str) -> Config {
        let yaml = format!(
            "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
             admin: {{ address: \"{admin}\" }}\n\
             upstreams: {{ a: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
             issuers:\n  corp: {{ issuer: \"https://idp.example\", audiences: [x], client_id: p, client_secret: \"{client_secret}\" }}\n\
             sessions: {{ cookie: {{ keys: [\"{cookie_key}\"] }} }}\n\
             routes:\n  - {{ path: /, upstream: a, auth: session }}\n"
        );
        Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("{e}"))
    }

    const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";

    #[test]
    fn a_new_client_secret_needs_no_restart() {
        let running = RestartOnly::of(&config("one", "127.0.0.1:9090", KEY_A));
        let next = RestartOnly::of(&config("two", "127.0.0.1:9090", KEY_A));
        assert_eq!(next.changed(&running), Vec::<&str>::new());
    }

    #[test]
    fn restart_only_changes_are_named_by_section() {
        let running = RestartOnly::of(&config("one", "127.0.0.1:9090", KEY_A));
        let admin = RestartOnly::of(&config("one", "127.0.0.1:9091", KEY_A));
        assert_eq!(admin.changed(&running), vec!["admin"]);
        // Cookie keys are compared by value (their Debug text is redacted, so the old text
        // comparison could not see a new key).
        let keys = RestartOnly::of(&config("one", "127.0.0.1:9090", KEY_B));
        assert_eq!(keys.changed(&running), vec!["sessions"]);
    }
}
