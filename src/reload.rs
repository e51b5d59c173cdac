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
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::secret::Secret;

/// Applies new configurations to a running server.
#[derive(Clone)]
pub struct Reloader {
    proxy: Arc<ArcSwap<Proxy>>,
    metrics: Metrics,
    auth: Arc<Authenticator>,
    browser: Arc<crate::authn::browser::Browser>,
    /// What needs a restart, as started: for the warning.
    fixed: Fixed,
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
}

// === impl Reloader ===

impl Reloader {
    pub(crate) fn new(
        proxy: Arc<ArcSwap<Proxy>>,
        metrics: Metrics,
        auth: Arc<Authenticator>,
        browser: Arc<crate::authn::browser::Browser>,
        config: &Config,
    ) -> Self {
        Self {
            proxy,
            metrics,
            auth,
            browser,
            fixed: fixed_parts(config),
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
        let proxy = Proxy::try_new(config, self.metrics.clone(), self.auth.clone())?
            .with_browser(Some(self.browser.clone()));
        issuers.apply();
        self.proxy.store(Arc::new(proxy));
        if fixed_parts(config) != self.fixed {
            tracing::warn!(
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

/// What needs a restart: the settings' `Debug` text, plus the issuers' secrets (redacted
/// in `Debug`, so compared by value here; never printed).
type Fixed = (String, Vec<(Option<Secret>, Option<Secret>)>);

fn fixed_parts(c: &Config) -> Fixed {
    let secrets = c
        .issuers
        .iter()
        .map(|i| (i.shared_secret.clone(), i.client_secret.clone()))
        .collect();
    let text = format!(
        "{:?}{:?}{:?}{:?}{:?}",
        c.listeners,
        c.admin,
        c.sessions,
        c.auth.token_cache_bytes,
        (
            c.server.max_connections,
            c.server.max_header_bytes,
            c.server.idle_timeout,
            c.server.header_read_timeout,
            c.server.tls_handshake_timeout,
            c.server.shutdown_grace,
            c.server.upgraded_idle_timeout,
            c.server.workers
        )
    );
    (text, secrets)
}
