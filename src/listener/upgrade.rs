//! Upgraded connections (WebSocket and other `101 Switching Protocols` tunnels): bytes are
//! copied both ways until either side closes, bounded like every other connection.
//!
//! - The tunnel keeps its client connection's `server.max_connections` slot and drain token
//!   until it ends (hyper hands the socket over after the 101, which ends the HTTP
//!   connection task), so tunnels count against the limit and shutdown waits for them.
//! - A tunnel with no byte in either direction for `server.upgraded_idle_timeout` is closed
//!   (separate from `server.idle_timeout`: a quiet WebSocket is normal, a quiet keep-alive
//!   HTTP connection is not).
//! - At the end of `server.shutdown_grace` every tunnel still open is closed.
//! - A tunnel opened on a session closes when the session ends on this replica (sign-out,
//!   back-channel logout, a refused refresh, a new sign-in) or its lifetime does
//!   (`authn::browser::tunnels`).
//!
//! Security notes: the bytes are never inspected or logged.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::ConnGuards;
use crate::authn::browser::{EndReason, TunnelTicket};
use crate::upstream::UpstreamUpgrade;

/// What a tunnel started on a connection needs from it; cheap to clone.
#[derive(Clone)]
pub struct Upgrades {
    /// The connection's slot and drain token, shared with its HTTP task.
    guards: Arc<ConnGuards>,
    /// `server.upgraded_idle_timeout`.
    idle: Duration,
    /// Turns true at the end of the shutdown grace.
    close: watch::Receiver<bool>,
}

/// Why a tunnel ended (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// One side closed (or failed).
    Closed,
    /// No bytes for `upgraded_idle_timeout`.
    Idle,
    /// The shutdown grace ended.
    Shutdown,
    /// The session it was opened with ended.
    SessionEnded(EndReason),
}

/// An IO that records when it last moved a byte.
struct Tracked<T> {
    inner: T,
    last: Arc<LastActivity>,
}

struct LastActivity {
    epoch: Instant,
    ms: AtomicU64,
}

impl crate::proxy::Tunnels for Upgrades {
    fn spawn(&self, client: OnUpgrade, upstream: UpstreamUpgrade, session: Option<TunnelTicket>) {
        self.start(client, upstream, session);
    }
}

// === impl Upgrades ===

impl Upgrades {
    pub(crate) fn new(
        guards: Arc<ConnGuards>,
        idle: Duration,
        close: watch::Receiver<bool>,
    ) -> Self {
        Self {
            guards,
            idle,
            close,
        }
    }

    /// Spawns the tunnel between the client's and the upstream's upgraded connections;
    /// `session`: the session it was opened with, whose end closes it.
    fn start(&self, client: OnUpgrade, upstream: UpstreamUpgrade, session: Option<TunnelTicket>) {
        let this = self.clone();
        tokio::spawn(async move {
            let end = this.tunnel(client, upstream, session).await;
            tracing::debug!(end = ?end, "upgraded connection ended");
        });
    }

    async fn tunnel(
        self,
        client: OnUpgrade,
        upstream: UpstreamUpgrade,
        mut session: Option<TunnelTicket>,
    ) -> TunnelEnd {
        let mut close = self.close.clone();
        if *close.borrow() {
            return TunnelEnd::Shutdown;
        }
        let (c, u) = tokio::select! {
            reason = session_end(&mut session) => return TunnelEnd::SessionEnded(reason),
            r = async { tokio::try_join!(client, upstream_io(upstream)) } => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return TunnelEnd::Closed;
                }
            },
            _ = close.changed() => return TunnelEnd::Shutdown,
        };
        let last = Arc::new(LastActivity {
            epoch: Instant::now(),
            ms: AtomicU64::new(0),
        });
        // Both sides are dropped (sockets closed) at the end of this block; then the slot and
        // drain token go.
        let end = {
            let mut c = Tracked {
                inner: TokioIo::new(c),
                last: last.clone(),
            };
            let mut u = Tracked {
                inner: u,
                last: last.clone(),
            };
            let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
            tokio::pin!(copy);
            loop {
                let deadline = last.at() + self.idle;
                tokio::select! {
                    r = &mut copy => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                        break TunnelEnd::Closed;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        if last.at() + self.idle <= Instant::now() {
                            break TunnelEnd::Idle;
                        }
                    }
                    changed = close.changed() => {
                        if changed.is_err() || *close.borrow() {
                            break TunnelEnd::Shutdown;
                        }
                    }
                    reason = session_end(&mut session) => break TunnelEnd::SessionEnded(reason),
                }
            }
        };
        drop(self.guards);
        end
    }
}

/// A byte stream both ways (either upstream side of a tunnel).
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// The upstream side of a tunnel as a byte stream (boxed once per tunnel): hyper's once its
/// connection task hands it over; the codec's at once (it reads the bytes that came past the
/// 101 first, so they reach the client before anything else the upstream sends).
async fn upstream_io(upstream: UpstreamUpgrade) -> Result<Box<dyn Duplex>, hyper::Error> {
    Ok(match upstream {
        UpstreamUpgrade::Hyper(on) => Box::new(TokioIo::new(on.await?)),
        UpstreamUpgrade::Codec(up) => Box::new(up),
    })
}

/// The end of the tunnel's session; pending forever for a tunnel without one.
async fn session_end(session: &mut Option<TunnelTicket>) -> EndReason {
    match session {
        Some(t) => t.ended().await,
        None => std::future::pending().await,
    }
}

// === impl LastActivity ===

impl LastActivity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

// === impl Tracked ===

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
