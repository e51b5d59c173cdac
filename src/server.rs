//! The wiring: a validated configuration in, a bound application out, then run it (the shape
//! of linkerd2-proxy's `app/src/lib.rs`). [`Server::bind`] builds every part — metrics, the
//! authenticator and its issuers, browser sessions, the request handler (`Proxy::build`, the
//! one place it is built, at start and on reload) — and binds every socket, so a bad address
//! or certificate fails start-up before anything is served. [`Server::run`] starts the key
//! tasks, the admin listener and the request workers, reports ready, and orders the
//! shutdown: drain, then not ready, then the grace, then close what is left.
//!
//! The parts: `listener` (accept, connections, TLS, framing, workers, tunnels), `health` (the
//! admin listener), `reload` (SIGHUP), `proxy` (the request handler). This module is the only
//! one that knows all of them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::authn::Authenticator;
use crate::authn::browser::Browser;
use crate::clock::{SharedClock, TokioClock};
use crate::config::Config;
use crate::health::{self, Readiness};
use crate::listener::tls::{self, TlsError};
use crate::listener::{self, Bound, ListenError, Workers};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::upstream::BuildError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound or its certificate loaded.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// An upstream could not be set up.
    #[error(transparent)]
    Upstream(#[from] BuildError),
    /// An issuer could not be set up.
    #[error(transparent)]
    Issuer(#[from] crate::authn::BuildError),
    /// The session store could not be set up.
    #[error("sessions: {0}")]
    Sessions(#[from] crate::session::StoreError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An assertion key could not be loaded or made.
    #[error(transparent)]
    AssertionKey(#[from] crate::assertion::KeyError),
}

/// A bound, not yet running, server.
pub struct Server {
    bound: Vec<Bound>,
    admin: TcpListener,
    config: Config,
    proxy: Arc<ArcSwap<Proxy>>,
    metrics: Metrics,
    readiness: Readiness,
    auth: Arc<Authenticator>,
    browser: Arc<Browser>,
    /// The assertion keys: published on the admin listener, kept across reloads.
    keys: Arc<crate::assertion::Keys>,
    reload: Arc<Notify>,
}

// === impl Server ===

impl Server {
    /// Builds everything and binds every socket; nothing is served yet.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::bind_with_clock(config, Arc::new(TokioClock)).await
    }

    /// Like [`Server::bind`], with the clock the IdP code uses (tests move it).
    pub async fn bind_with_clock(config: Config, clock: SharedClock) -> Result<Self, StartError> {
        let metrics = Metrics::try_new()?;
        let auth = Arc::new(Authenticator::try_new(
            &config,
            metrics.clone(),
            clock.clone(),
        )?);
        let browser = Arc::new(Browser::new(&config, auth.clone(), metrics.clone(), clock).await?);
        let keys = Arc::new(crate::assertion::Keys::default());
        let key_set = keys.load(&config)?;
        keys.publish(key_set.clone());
        let proxy = Arc::new(ArcSwap::from_pointee(Proxy::build(
            &config, &metrics, &auth, &browser, key_set,
        )?));
        let bound = listener::bind(&config, &metrics)?;
        let admin = TcpListener::bind(config.admin.address)
            .await
            .map_err(|source| ListenError::Bind {
                name: "admin".into(),
                address: config.admin.address,
                source,
            })?;
        if let Ok(addr) = admin.local_addr() {
            tracing::info!(listener = "admin", address = %addr, "listening");
        }
        Ok(Self {
            bound,
            admin,
            config,
            proxy,
            metrics,
            readiness: Readiness::new(auth.clone()),
            auth,
            browser,
            keys,
            reload: Arc::new(Notify::new()),
        })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| b.name() == name)
            .and_then(Bound::local_addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Notify it to reload certificates now (what SIGHUP does).
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    /// A handle that applies a new configuration's routes and upstreams while running.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.proxy.clone(),
            self.metrics.clone(),
            self.auth.clone(),
            self.browser.clone(),
            self.keys.clone(),
            &self.config,
        )
    }

    /// The browser sessions (store, cookie): tests and the demo look inside.
    pub fn browser(&self) -> &Arc<Browser> {
        &self.browser
    }

    /// The metrics this server records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// within `server.shutdown_grace`, and returns.
    ///
    /// Requests are served on `server.workers` threads of their own (`listener::worker`);
    /// the admin listener and the background tasks run on the caller's runtime. Dropping the
    /// returned future before it ends stops the workers too.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            bound,
            admin,
            config,
            proxy,
            metrics,
            readiness,
            auth,
            browser,
            keys,
            reload,
        } = self;
        // Persisted keys load before serving; fetching and refreshing go on in the background.
        let _key_tasks = auth.start().await;
        let limits = &config.server;
        let mut background = tokio::task::JoinSet::new();
        // The admin listener keeps answering through the drain (/readyz 503, /metrics) and
        // stops with the other background tasks at its end: its stop signal never fires.
        let (_admin_stop, admin_rx) = watch::channel(false);
        let sessions = config.admin.token.clone().map(|token| {
            let issuers = config.issuers.iter().map(|i| i.name.clone()).collect();
            health::SessionAdmin::new(token, browser, issuers, metrics.clone())
        });
        background.spawn(health::serve(
            admin,
            config.admin.max_connections,
            health::AdminParts {
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                auth: auth.clone(),
                keys,
                sessions,
            },
            admin_rx,
        ));
        let (mut workers, tls_reload) =
            Workers::start(bound, proxy, limits, &metrics, &mut background);
        background.spawn(async move {
            loop {
                reload.notified().await;
                for n in &tls_reload {
                    n.notify_one();
                }
            }
        });
        readiness.set_serving(true);
        tracing::info!("portcullis is serving");
        shutdown.await;
        tracing::info!(grace = ?limits.shutdown_grace, "shutting down: draining connections");
        // Drain first, then report not ready: once /readyz says 503, every worker's accept
        // loop and every connection can already see the drain.
        workers.drain();
        readiness.set_serving(false);
        if !workers.wait_connections(limits.shutdown_grace).await {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        workers.close_tunnels();
        background.shutdown().await;
        if !workers.stop(Duration::from_secs(10)).await {
            tracing::warn!("request workers did not stop within 10s");
        }
    }
}

/// Opens and parses every certificate, key and CA file that [`Server::bind`] would, so that
/// `check-config` (and `run`, before binding) fail on a missing or unparseable file with the
/// key that names it. Nothing is kept: `bind` loads them again.
pub fn check_files(config: &Config) -> Result<(), crate::config::ConfigError> {
    use crate::config::ConfigError;
    use crate::tls_client::TlsClientError;
    for l in &config.listeners {
        let Some(t) = &l.tls else { continue };
        if let Err(e) = tls::load_certified_key(&t.cert, &t.key) {
            let field = match &e {
                TlsError::Pem { path, .. } if *path == t.cert => "cert",
                _ => "key",
            };
            return Err(ConfigError::invalid(
                format!("listeners.{}.tls.{field}", l.name),
                e.to_string(),
            ));
        }
    }
    let ca = |key: String, path: &std::path::Path| match crate::tls_client::config(Some(path)) {
        Ok(_) => Ok(()),
        Err(TlsClientError::CaFile { path, problem }) => Err(ConfigError::invalid(
            key,
            format!("{}: {problem}", path.display()),
        )),
        Err(e) => Err(ConfigError::invalid(key, e.to_string())),
    };
    for u in &config.upstreams {
        if let Some(p) = &u.ca_file {
            ca(format!("upstreams.{}.ca_file", u.name), p)?;
        }
    }
    for i in &config.issuers {
        if let Some(p) = &i.ca_file {
            ca(format!("issuers.{}.ca_file", i.name), p)?;
        }
    }
    crate::assertion::keys::check_files(config)
}
