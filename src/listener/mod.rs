//! Listeners: bind every socket before serving (so a bad address fails startup), accept with a
//! connection limit, serve each connection on its own task, and drain on shutdown.
//!
//! Over `server.max_connections`, a new connection is closed at once (and counted) rather
//! than left waiting in the backlog, so clients fail fast and the proxy keeps serving the
//! connections it has.

mod activity;
mod conn;
mod framing;
pub mod tls;
pub mod upgrade;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::authn::Authenticator;
use crate::config::Config;
use crate::health::{self, Readiness};
use crate::idp::{SharedClock, TokioClock};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::upstream::BuildError;
use conn::{ConnContext, ConnGuards};
use tls::{Tls, TlsError};

pub use activity::Activity;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot listen on {address} ({name}): {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A listener's certificate or key is unusable.
    #[error("listeners.{name}.tls: {source}")]
    Tls {
        name: String,
        #[source]
        source: TlsError,
    },
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
}

struct Bound {
    name: Arc<str>,
    /// One socket per request worker, all on the same address.
    listeners: Vec<std::net::TcpListener>,
    tls: Option<Arc<Tls>>,
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
    browser: Arc<crate::authn::browser::Browser>,
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
        let browser = Arc::new(
            crate::authn::browser::Browser::new(&config, auth.clone(), metrics.clone(), clock)
                .await?,
        );
        let proxy = Arc::new(ArcSwap::from_pointee(
            Proxy::try_new(&config, metrics.clone(), auth.clone())?
                .with_browser(Some(browser.clone())),
        ));
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(Arc::new(Tls::try_new(t).map_err(|source| {
                    StartError::Tls {
                        name: l.name.clone(),
                        source,
                    }
                })?)),
                None => None,
            };
            let listeners = worker::bind(l.address, config.server.workers).map_err(|source| {
                StartError::Bind {
                    name: format!("listeners.{}", l.name),
                    address: l.address,
                    source,
                }
            })?;
            // The bound address, not the configured one: with port 0 this is how operators
            // and tests learn it.
            if let Some(addr) = listeners.first().and_then(|l| l.local_addr().ok()) {
                tracing::info!(listener = %l.name, address = %addr, workers = listeners.len(), "listening");
            }
            metrics.init_listener(&l.name, tls.is_some());
            bound.push(Bound {
                name: Arc::from(l.name.as_str()),
                listeners,
                tls,
            });
        }
        let admin = TcpListener::bind(config.admin.address)
            .await
            .map_err(|source| StartError::Bind {
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
            reload: Arc::new(Notify::new()),
        })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| &*b.name == name)
            .and_then(|b| b.listeners.first()?.local_addr().ok())
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
            &self.config,
        )
    }

    /// The browser sessions (store, cookie): tests and the demo look inside.
    pub fn browser(&self) -> &Arc<crate::authn::browser::Browser> {
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
            browser: _,
            reload,
        } = self;
        // Persisted keys load before serving; fetching and refreshing go on in the background.
        let _key_tasks = auth.start().await;
        let limits = config.server.clone();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (drain_tx, drain_rx) = watch::channel(false);
        // Turns true when the grace is over: upgraded tunnels still open are closed.
        let (close_tx, close_rx) = watch::channel(false);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut background = tokio::task::JoinSet::new();
        // The admin listener keeps answering through the drain (/readyz 503, /metrics) and
        // stops with the other background tasks at its end: its stop signal never fires.
        let (_admin_stop, admin_rx) = watch::channel(false);
        background.spawn(health::serve(
            admin,
            config.admin.max_connections,
            metrics.clone(),
            readiness.clone(),
            auth.clone(),
            admin_rx,
        ));
        let builder = conn::builder(&limits);
        // One reload request reaches every TLS listener: each has its own Notify, and
        // notify_one() keeps a permit for a watcher that is busy, so no SIGHUP is lost.
        let mut per_listener = Vec::new();
        let mut per_worker: Vec<Vec<_>> = (0..limits.workers).map(|_| Vec::new()).collect();
        for b in bound {
            if let Some(tls) = &b.tls {
                let own = Arc::new(Notify::new());
                per_listener.push(own.clone());
                background.spawn(tls.clone().watch(own, metrics.clone()));
            }
            let ctx = Arc::new(ConnContext {
                proxy: proxy.clone(),
                builder: builder.clone(),
                limits: limits.clone(),
                metrics: metrics.clone(),
                listener: b.name.clone(),
                close: close_rx.clone(),
                tls: b
                    .tls
                    .as_ref()
                    .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config.clone())),
            });
            for (w, listener) in per_worker.iter_mut().zip(b.listeners) {
                w.push((listener, ctx.clone()));
            }
        }
        // Stops the workers when this future ends, or is dropped before it ends.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (exited_tx, mut exited_rx) = mpsc::channel::<()>(1);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let w = worker::Worker {
                index,
                listeners,
                slots: slots.clone(),
                drain: drain_rx.clone(),
                done: done_tx.clone(),
                stop: stop_rx.clone(),
                exited: exited_tx.clone(),
            };
            if let Err(e) = w.spawn() {
                tracing::error!(worker = index, error = %e, "cannot start a request worker thread");
            }
        }
        drop((done_tx, exited_tx));
        background.spawn(async move {
            loop {
                reload.notified().await;
                for n in &per_listener {
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
        let _ = drain_tx.send(true);
        readiness.set_serving(false);
        // Every connection task holds a sender; recv() returns None when the last one ends.
        if tokio::time::timeout(limits.shutdown_grace, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        let _ = close_tx.send(true);
        background.shutdown().await;
        let _ = stop_tx.send(true);
        // Each worker drops its runtime (closing what is left) and then its sender.
        if tokio::time::timeout(Duration::from_secs(10), exited_rx.recv())
            .await
            .is_err()
        {
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
    Ok(())
}

/// Something that accepts connections: a `TcpListener`, or a fake in tests.
pub(crate) trait Accept {
    /// The accepted connection.
    type Conn;
    /// Accepts one connection.
    fn accept_conn(&self)
    -> impl Future<Output = std::io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Conn = tokio::net::TcpStream;

    fn accept_conn(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Conn, SocketAddr)>> + Send {
        self.accept()
    }
}

/// First and longest wait after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Accepts the next connection. A failed accept (usually EMFILE: out of file descriptors)
/// fails again at once, so it waits, 50 ms doubling up to 1 s, instead of spinning a core and
/// flooding the log. Every accept loop (proxy listeners and admin) goes through this.
pub(crate) async fn accept_with_backoff<A: Accept>(
    listener: &A,
    name: &str,
) -> (A::Conn, SocketAddr) {
    let mut wait = ACCEPT_BACKOFF.0;
    loop {
        match listener.accept_conn().await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, retry_in = ?wait, "accept failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// A connection slot for a connection just accepted on `listener`, held until the connection
/// ends; `None` when every slot is taken: the caller closes the connection at once (counted in
/// `portcullis_connections_rejected_total{listener}`). Every accept loop goes through this:
/// the proxy listeners share the `server.max_connections` slots, the admin listener has its
/// own `admin.max_connections`.
pub(crate) fn take_slot(
    slots: &Arc<Semaphore>,
    metrics: &Metrics,
    listener: &str,
) -> Option<OwnedSemaphorePermit> {
    let permit = slots.clone().try_acquire_owned().ok();
    if permit.is_none() {
        metrics
            .connections_rejected
            .with_label_values(&[listener])
            .inc();
    }
    permit
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    slots: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            // The drain wins over a connection that is ready at the same time.
            biased;
            _ = drain.changed() => break,
            a = accept_with_backoff(&listener, &ctx.listener) => a,
        };
        // The drain may have begun on another thread while this accept completed: a
        // connection accepted after it is closed unserved.
        if *drain.borrow() {
            drop(stream);
            break;
        }
        let Some(permit) = take_slot(&slots, &ctx.metrics, &ctx.listener) else {
            drop(stream);
            continue;
        };
        let guards = ConnGuards {
            _permit: permit,
            _done: done.clone(),
        };
        tokio::spawn(conn::serve(
            ctx.clone(),
            stream,
            peer,
            drain.clone(),
            guards,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails the first `fail` accepts (as EMFILE does), then accepts.
    struct Flaky {
        calls: AtomicUsize,
        fail: usize,
    }

    impl Accept for Flaky {
        type Conn = ();

        fn accept_conn(&self) -> impl Future<Output = std::io::Result<((), SocketAddr)>> + Send {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            // A loop without backoff would spin here forever; stop it so the test fails.
            assert!(n < 1000, "accept retried without backing off");
            let ok = n >= self.fail;
            async move {
                if ok {
                    Ok(((), SocketAddr::from(([127, 0, 0, 1], 1))))
                } else {
                    Err(std::io::Error::from_raw_os_error(24))
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_up_to_a_second() {
        let l = Flaky {
            calls: AtomicUsize::new(0),
            fail: usize::MAX,
        };
        let start = tokio::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), accept_with_backoff(&l, "t")).await;
        assert!(r.is_err());
        // 50 + 100 + 200 + 400 + 800 ms, then every second: 14 tries in 10 s.
        assert_eq!(l.calls.load(Ordering::Relaxed), 14);
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        let l = Flaky {
            calls: AtomicUsize::new(0),
            fail: 3,
        };
        let start = tokio::time::Instant::now();
        accept_with_backoff(&l, "t").await;
        assert_eq!(start.elapsed(), Duration::from_millis(350));
    }
}
