//! Listeners: bind every socket before serving (so a bad address fails startup), accept with a
//! connection limit on the request workers, serve each connection on its own task, and drain
//! on shutdown ([`Workers`]). What is built and in which order lives in `crate::server`.
//!
//! Over `server.max_connections`, a new connection is closed at once (and counted) rather
//! than left waiting in the backlog, so clients fail fast and the proxy keeps serving the
//! connections it has.

mod conn;
mod framing;
pub mod tls;
pub mod upgrade;
pub mod worker;
mod woken;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use conn::{ConnContext, ConnGuards};
use tls::{Tls, TlsError};

/// Why a proxy listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
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
}

/// One configured listener, bound: a socket per request worker, and its TLS, if any.
pub(crate) struct Bound {
    name: Arc<str>,
    /// One socket per request worker, all on the same address.
    listeners: Vec<std::net::TcpListener>,
    tls: Option<Arc<Tls>>,
}

/// Binds every configured listener (`workers` sockets each) and loads its certificate; the
/// first failure stops start-up.
pub(crate) fn bind(config: &Config, metrics: &Metrics) -> Result<Vec<Bound>, ListenError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(t) => Some(Arc::new(Tls::try_new(t).map_err(|source| {
                ListenError::Tls {
                    name: l.name.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        let listeners =
            worker::bind(l.address, config.server.workers).map_err(|source| ListenError::Bind {
                name: format!("listeners.{}", l.name),
                address: l.address,
                source,
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
    Ok(bound)
}

impl Bound {
    /// Its name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The bound address (useful with port 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners.first()?.local_addr().ok()
    }
}

/// The request workers serving the bound listeners, and the signals of their shutdown.
pub(crate) struct Workers {
    drain: watch::Sender<bool>,
    /// Turns true when the grace is over: upgraded tunnels still open are closed.
    close: watch::Sender<bool>,
    /// Every connection task holds a sender; `recv()` returns `None` when the last one ends.
    done: mpsc::Receiver<()>,
    /// Stops the workers when sent, or when dropped.
    stop: watch::Sender<bool>,
    exited: mpsc::Receiver<()>,
}

// === impl Workers ===

impl Workers {
    /// Starts `limits.workers` request workers serving `bound` with `proxy`. The TLS
    /// listeners' certificate watchers go into `background`; the returned notifiers reload
    /// their certificates (one per TLS listener).
    pub(crate) fn start(
        bound: Vec<Bound>,
        proxy: Arc<ArcSwap<Proxy>>,
        limits: &ServerConfig,
        metrics: &Metrics,
        background: &mut tokio::task::JoinSet<()>,
    ) -> (Self, Vec<Arc<Notify>>) {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (drain_tx, drain_rx) = watch::channel(false);
        let (close_tx, close_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel::<()>(1);
        let builder = conn::builder(limits);
        // One reload request reaches every TLS listener: each has its own Notify, and
        // notify_one() keeps a permit for a watcher that is busy, so no SIGHUP is lost.
        let mut tls_reload = Vec::new();
        let mut per_worker: Vec<Vec<_>> = (0..limits.workers).map(|_| Vec::new()).collect();
        for b in bound {
            if let Some(tls) = &b.tls {
                let own = Arc::new(Notify::new());
                tls_reload.push(own.clone());
                background.spawn(tls.clone().watch(own, metrics.clone()));
            }
            // Present from the start (0), not from the first parked connection.
            metrics.connections_parked.with_label_values(&[&*b.name]);
            let ctx = Arc::new(ConnContext {
                proxy: proxy.clone(),
                builder: builder.clone(),
                http1: conn::http1_builder(limits),
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let (exited_tx, exited_rx) = mpsc::channel::<()>(1);
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
        let workers = Self {
            drain: drain_tx,
            close: close_tx,
            done: done_rx,
            stop: stop_tx,
            exited: exited_rx,
        };
        (workers, tls_reload)
    }

    /// Stops accepting; connections finish their requests.
    pub(crate) fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Waits until every connection ended or `grace` passed; false when the grace ran out.
    pub(crate) async fn wait_connections(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.done.recv()).await.is_ok()
    }

    /// Closes the upgraded tunnels still open.
    pub(crate) fn close_tunnels(&self) {
        let _ = self.close.send(true);
    }

    /// Stops the workers (each drops its runtime, closing what is left) and waits for them
    /// within `deadline`; false when they did not all stop.
    pub(crate) async fn stop(mut self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(deadline, self.exited.recv())
            .await
            .is_ok()
    }
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
        // Every poll of the connection reads the clock once (`clock::coarse_now`).
        tokio::spawn(crate::clock::Polled::new(conn::serve(
            ctx.clone(),
            stream,
            peer,
            drain.clone(),
            guards,
        )));
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
