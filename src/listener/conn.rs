//! One client connection: TLS handshake (bounded), then hyper-util's auto HTTP/1.1 + HTTP/2
//! server, closed gracefully when idle too long or when the process drains.
//!
//! An HTTP/1 connection is parked between requests: once it has been quiet for
//! [`PARK_AFTER`] with no request in flight, hyper's whole connection is dropped (its 8 KiB
//! read and write buffers, its state, the boxed service future) and the task waits for the
//! client's next bytes reading into the stack, as nginx frees a keep-alive connection's
//! buffers. The bytes it reads go to a new hyper connection first, then the stream. The
//! stream itself (with the framing guard, `framing.rs`, which follows every byte either way)
//! is lent to each hyper connection in turn ([`Lease`]) and comes back when hyper drops it.
//! Whether hyper is between requests is what the framing guard saw last: a read that found
//! nothing after whole requests, every response byte flushed, no request in flight
//! ([`Activity::parkable`]); a connection hyper began to close is never parked. HTTP/2
//! connections, and an HTTP/1 connection the guard stopped following, are never parked.
//! A connection parks from its start too, until its first bytes come.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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
    /// The same HTTP/1 settings, for a connection that was parked between requests.
    pub http1: hyper::server::conn::http1::Builder,
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
    // for every keep-alive request. Keep these in step with `http1_builder`.
    b.http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// [`builder`]'s HTTP/1 settings, for the turns of a connection after it was parked (hyper's
/// server, without the HTTP/2 detection only a connection's start needs).
pub fn http1_builder(limits: &ServerConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
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
        // Boxed: the handshake and a TLS stream make the future several KiB, which every
        // plain connection's task would carry too (a parked one holds little else).
        Some(acceptor) => Box::pin(serve_tls(&ctx, acceptor, stream, peer, drain, upgrades)).await,
    }
    open.dec();
    drop(guards);
}

/// The TLS handshake (bounded), then [`serve_io`] over the TLS stream.
async fn serve_tls(
    ctx: &ConnContext,
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
    upgrades: Upgrades,
) {
    match tokio::time::timeout(ctx.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_io(ctx, tls, peer, "https", drain, upgrades).await,
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

async fn serve_io<I>(
    ctx: &ConnContext,
    io: I,
    peer: SocketAddr,
    proto: &'static str,
    mut drain: watch::Receiver<bool>,
    upgrades: Upgrades,
) where
    I: AsyncRead + AsyncWrite + Parkable + Unpin + Send + 'static,
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
    let mut guard = super::framing::FramingGuard::new(
        io,
        activity.clone(),
        ctx.limits.max_header_bytes,
        ctx.limits.header_read_timeout,
    );
    // Where the stream comes back to when hyper's connection is dropped to park.
    let home: Arc<Home<I>> = Arc::new(Mutex::new(None));
    let mut turns = Turns {
        activity: &activity,
        idle: ctx.limits.idle_timeout,
        drain: &mut drain,
        signal: super::woken::signal(),
        closing: false,
        parked: ctx
            .metrics
            .connections_parked
            .with_label_values(&[&*ctx.listener]),
    };
    turns.closing = *turns.drain.borrow();
    let mut first = true;
    loop {
        // Parked: no request in flight or begun, and hyper's connection (with its buffers)
        // dropped until the client sends again.
        let sent = match turns.parked(&mut guard).await {
            Wait::Resume(sent) => sent,
            Wait::Close(why) => {
                tracing::debug!(client = %peer, "{why}");
                let _ = tokio::time::timeout(PARKED_SHUTDOWN, guard.shutdown()).await;
                break;
            }
        };
        activity.set_io_idle(false);
        let io = TokioIo::new(Lease {
            io: Some(guard),
            home: home.clone(),
            sent,
            taken: 0,
        });
        // The first request may be HTTP/2 (hyper-util's auto server tells); a connection
        // parked after an HTTP/1 exchange stays HTTP/1.
        let end = if std::mem::take(&mut first) {
            turns
                .serve(Box::pin(ctx.builder.serve_connection_with_upgrades(io, &svc)))
                .await
        } else {
            turns
                .serve(Box::pin(ctx.http1.serve_connection(io, &svc).with_upgrades()))
                .await
        };
        match end {
            Served::Ended(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                break;
            }
            Served::Ended(Ok(())) => break,
            Served::Park => {}
        }
        // hyper's connection is dropped: its lease put the stream back home.
        // Only a connection that sent a whole HTTP/1 head is parked (`Activity::http1`), so
        // the next turns need no version detection (`first` stays false).
        match home.lock().ok().and_then(|mut slot| slot.take()) {
            Some(g) => guard = g,
            None => break,
        }
    }
}

/// How long an HTTP/1 connection stays quiet between requests before it is parked: hyper's
/// connection (its 8 KiB read and write buffers and its state) is dropped and built again
/// when the client sends its next request. A client that keeps it busier keeps it; the
/// rebuild costs about a microsecond, which a request every few milliseconds would feel.
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// The most a parked connection reads at once when its client sends again (into the stack;
/// hyper reads the rest).
const PARKED_READ: usize = 4096;

/// How long closing a parked connection may take (a TLS close_notify on a full socket).
const PARKED_SHUTDOWN: Duration = Duration::from_secs(1);

/// Where a connection's stream waits while hyper's connection holds it.
type Home<I> = Mutex<Option<super::framing::FramingGuard<I>>>;

/// A stream a connection can park on.
pub trait Parkable {
    /// Whether the stream has nothing of its own to send (TLS: no record queued), so
    /// waiting on a read alone is safe.
    fn quiet(&self) -> bool {
        true
    }
}

impl Parkable for TcpStream {}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    fn quiet(&self) -> bool {
        !self.get_ref().1.wants_write()
    }
}

/// The stream while a hyper connection serves it; back `home` when hyper drops it (an
/// upgraded tunnel keeps it to its end).
struct Lease<I> {
    io: Option<super::framing::FramingGuard<I>>,
    home: Arc<Home<I>>,
    /// What the parked wait read (already through the framing guard), hyper's first.
    sent: Vec<u8>,
    /// How much of `sent` hyper took.
    taken: usize,
}

impl<I> Drop for Lease<I> {
    fn drop(&mut self) {
        if let (Some(io), Ok(mut slot)) = (self.io.take(), self.home.lock()) {
            *slot = Some(io);
        }
    }
}

impl<I> Lease<I> {
    fn io(&mut self) -> std::io::Result<Pin<&mut super::framing::FramingGuard<I>>>
    where
        I: Unpin,
    {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(std::io::Error::other("connection stream already returned")),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Lease<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(rest) = self.sent.get(self.taken..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.taken += n;
            if self.taken == self.sent.len() {
                self.sent = Vec::new();
                self.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match self.io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Lease<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// How a hyper connection's turn ended.
enum Served {
    /// It finished (closed, failed, or upgraded into a tunnel).
    Ended(Result<(), BoxError>),
    /// Between requests with nothing in flight: drop it and park.
    Park,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a parked wait ended.
enum Wait {
    /// The client sent these bytes: serve them (and what follows).
    Resume(Vec<u8>),
    /// Close the connection, for this reason.
    Close(&'static str),
}

/// A hyper connection this task drives: either server's.
trait HyperConn: Future<Output = Result<(), Self::Error>> {
    type Error: Into<BoxError>;
    fn shut(self: Pin<&mut Self>);
}

impl<I, S, B> HyperConn for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    Self: Future<Output = Result<(), BoxError>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    type Error = BoxError;
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> HyperConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = hyper::Result<()>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    type Error = hyper::Error;
    fn shut(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What drives a connection's turns (each hyper connection it lends the stream to, and the
/// parked waits between them): the drain, the idle timeout, parking.
struct Turns<'a> {
    activity: &'a Activity,
    idle: Duration,
    drain: &'a mut watch::Receiver<bool>,
    signal: (Arc<super::woken::Signal>, std::task::Waker),
    /// The drain began: finish what is in flight, then close.
    closing: bool,
    /// `portcullis_connections_parked` of the connection's listener.
    parked: prometheus::IntGauge,
}

impl Turns<'_> {
    /// Drives `conn` until it ends or is idle enough to park.
    async fn serve<C: HyperConn>(&mut self, mut conn: Pin<Box<C>>) -> Served {
        if self.closing {
            conn.as_mut().shut();
        }
        let activity = self.activity;
        loop {
            // Each turn begins after the connection was polled (first, or in the pass that
            // woke the timer below), so `parkable` is what hyper left.
            let now = crate::clock::coarse_now();
            let mut wake = activity
                .idle_deadline(self.idle)
                .unwrap_or_else(|| now + self.idle.min(Duration::from_secs(1)));
            if !self.closing && !activity.busy() {
                match activity.http1() {
                    Some(true) if activity.parkable() => {
                        let park_at = activity.last_change() + PARK_AFTER;
                        if park_at <= now {
                            return Served::Park;
                        }
                        wake = wake.min(park_at);
                    }
                    // Not yet: hyper has not read to the end of what came, or not flushed; or
                    // the first request is still to come (its end starts no new turn).
                    Some(true) | None => wake = wake.min(now + PARK_AFTER),
                    // HTTP/2 (or a head the framing guard stopped following): never parked.
                    Some(false) => {}
                }
            }
            let closing = self.closing;
            tokio::select! {
                // A drain seen together with new request bytes closes the connection first,
                // so a request that arrives after the drain began is not served.
                biased;
                changed = Woken::new(self.drain.changed(), &self.signal.0, &self.signal.1), if !closing => {
                    if changed.is_err() || *self.drain.borrow() {
                        self.closing = true;
                        conn.as_mut().shut();
                    }
                }
                res = conn.as_mut() => return Served::Ended(res.map_err(Into::into)),
                _ = tokio::time::sleep_until(wake), if !closing => {
                    if activity.idle_deadline(self.idle).is_some_and(|d| d <= crate::clock::coarse_now()) {
                        self.closing = true;
                        conn.as_mut().shut();
                    }
                }
            }
        }
    }

    /// Waits, holding no buffer, until the parked connection's client sends again (what it
    /// sent, read into the stack and kept for hyper's connection), or says why to close it
    /// (the drain, the idle timeout, the client closed, a first head not sent in time).
    async fn parked<I>(&mut self, guard: &mut super::framing::FramingGuard<I>) -> Wait
    where
        I: AsyncRead + Parkable + Unpin,
    {
        if self.closing {
            return Wait::Close("closing a connection while draining");
        }
        if !guard.get_ref().quiet() {
            return Wait::Resume(Vec::new());
        }
        self.parked.inc();
        let wait = self.park_wait(guard).await;
        self.parked.dec();
        wait
    }

    async fn park_wait<I>(&mut self, guard: &mut super::framing::FramingGuard<I>) -> Wait
    where
        I: AsyncRead + Unpin,
    {
        loop {
            // The header read timeout is the guard's: its read fails when the head is late.
            let (deadline, why) = match self.activity.idle_deadline(self.idle) {
                Some(at) => (at, "closing idle connection"),
                None => (crate::clock::coarse_now() + Duration::from_secs(1), ""),
            };
            tokio::select! {
                biased;
                changed = Woken::new(self.drain.changed(), &self.signal.0, &self.signal.1) => {
                    if changed.is_err() || *self.drain.borrow() {
                        self.closing = true;
                        return Wait::Close("closing a connection while draining");
                    }
                }
                got = std::future::poll_fn(|cx| {
                    // On the stack: a parked connection's task holds no buffer.
                    let mut stack = [0u8; PARKED_READ];
                    let mut buf = tokio::io::ReadBuf::new(&mut stack);
                    Pin::new(&mut *guard)
                        .poll_read(cx, &mut buf)
                        .map_ok(|()| buf.filled().to_vec())
                }) => return match got {
                    Ok(bytes) if bytes.is_empty() => Wait::Close("client closed the connection"),
                    Ok(bytes) => Wait::Resume(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        Wait::Close("request head not complete within server.header_read_timeout")
                    }
                    Err(_) => Wait::Close("connection read failed"),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if !why.is_empty() {
                        return Wait::Close(why);
                    }
                }
            }
        }
    }
}
