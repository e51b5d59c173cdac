//! One client connection: TLS handshake (bounded), then hyper-util's auto HTTP/1.1 + HTTP/2
//! server, closed gracefully when idle too long or when the process drains.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::upgrade::Upgrades;
use super::woken::Woken;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::proxy::Activity;
use crate::proxy::{ConnInfo, Proxy};

/// What every connection of a listener shares.
pub struct ConnContext {
    /// The handler; swapped whole on a config reload, read once per request.
    pub proxy: Arc<ArcSwap<Proxy>>,
    /// The HTTP server settings.
    pub builder: auto::Builder<TokioExecutor>,
    /// Limits.
    pub limits: ServerConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Listener name (metric label).
    pub listener: Arc<str>,
    /// TLS acceptor, when the listener terminates TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Turns true at the end of the shutdown grace (closes upgraded tunnels).
    pub close: watch::Receiver<bool>,
}

thread_local! {
    /// This worker's snapshot of the handler (see [`current`]).
    static SNAPSHOT: RefCell<Option<Snapshot>> = const { RefCell::new(None) };
}

/// The handler as this thread last saw it: `seen` is the shared `Proxy`, `local` an `Arc`
/// of this thread's own around it, so a request clones a reference count that no other core
/// touches (cloning the shared `Arc` per request bounces its cache line between workers).
struct Snapshot {
    source: *const ArcSwap<Proxy>,
    seen: Arc<Proxy>,
    local: Arc<Local>,
}

/// This thread's own reference-counted handle on a shared `Proxy`.
struct Local(Arc<Proxy>);

/// The handler for the next request on this thread: the worker's snapshot, refreshed when a
/// reload swapped in another one (checked per request with one pointer comparison).
fn current(source: &ArcSwap<Proxy>) -> Arc<Local> {
    SNAPSHOT.with(|cell| {
        let mut snap = cell.borrow_mut();
        let latest = source.load();
        match &*snap {
            Some(s) if std::ptr::eq(s.source, source) && Arc::ptr_eq(&s.seen, &latest) => {
                s.local.clone()
            }
            _ => {
                let seen = arc_swap::Guard::into_inner(latest);
                let local = Arc::new(Local(seen.clone()));
                *snap = Some(Snapshot {
                    source,
                    seen,
                    local: local.clone(),
                });
                local
            }
        }
    })
}

/// Holds a connection's slot and its drain token until it ends (and any tunnel upgraded from
/// it: see `upgrade.rs`); only dropping them matters.
pub struct ConnGuards {
    /// The `max_connections` slot.
    pub _permit: OwnedSemaphorePermit,
    /// Dropped when the connection ends, so shutdown can wait for all of them.
    pub _done: mpsc::Sender<()>,
}

/// The HTTP server settings for client connections.
pub fn builder(limits: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The header read timeout is the framing guard's (`framing.rs`): hyper's re-arms a timer
    // for every keep-alive request.
    b.http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Serves one accepted connection to its end.
pub async fn serve(
    ctx: Arc<ConnContext>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
    guards: ConnGuards,
) {
    let open = ctx
        .metrics
        .connections_open
        .with_label_values(&[&*ctx.listener]);
    open.inc();
    let _ = stream.set_nodelay(true);
    // Shared with tunnels upgraded from this connection, which outlive its HTTP task.
    let guards = Arc::new(guards);
    let upgrades = Upgrades::new(
        guards.clone(),
        ctx.limits.upgraded_idle_timeout,
        ctx.close.clone(),
    );
    match &ctx.tls {
        None => serve_io(&ctx, stream, peer, "http", drain, upgrades).await,
        Some(acceptor) => {
            match tokio::time::timeout(ctx.limits.tls_handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => serve_io(&ctx, tls, peer, "https", drain, upgrades).await,
                Ok(Err(e)) => {
                    ctx.metrics
                        .tls_handshake_failures
                        .with_label_values(&[&*ctx.listener, "error"])
                        .inc();
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    ctx.metrics
                        .tls_handshake_failures
                        .with_label_values(&[&*ctx.listener, "timeout"])
                        .inc();
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                }
            }
        }
    }
    open.dec();
    drop(guards);
}

async fn serve_io<I>(
    ctx: &ConnContext,
    io: I,
    peer: SocketAddr,
    proto: &'static str,
    mut drain: watch::Receiver<bool>,
    upgrades: Upgrades,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    // One per connection: a request clones one reference count, not each field.
    let info = Arc::new(ConnInfo {
        peer,
        proto,
        activity: activity.clone(),
        upgrades: Some(Arc::new(upgrades)),
        worker: super::worker::index(),
        forwarded_for: crate::upstream::headers::client_value(peer.ip()),
    });
    let proxy = ctx.proxy.clone();
    let svc = service_fn(move |req| {
        let proxy = current(&proxy);
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy.0.handle(req, &info).await) }
    });
    let conn = ctx.builder.serve_connection_with_upgrades(
        TokioIo::new(super::framing::FramingGuard::new(
            io,
            activity.clone(),
            ctx.limits.max_header_bytes,
            ctx.limits.header_read_timeout,
        )),
        svc,
    );
    tokio::pin!(conn);
    let idle = ctx.limits.idle_timeout;
    // The drain is polled only when it fired, not on every poll of the connection (`woken`).
    let (drain_signal, drain_waker) = super::woken::signal();
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let wake = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| crate::clock::coarse_now() + idle.min(Duration::from_secs(1)));
        tokio::select! {
            // A drain seen together with new request bytes closes the connection first, so a
            // request that arrives after the drain began is not served.
            biased;
            changed = Woken::new(drain.changed(), &drain_signal, &drain_waker), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep_until(wake), if !closing => {
                if activity.idle_deadline(idle).is_some_and(|d| d <= crate::clock::coarse_now()) {
                    tracing::debug!(client = %peer, "closing idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
