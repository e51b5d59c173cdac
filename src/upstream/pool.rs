//! Idle upstream HTTP/1 connections, kept per request worker and per address.
//!
//! Each worker (`listener::worker`) has its own [`WorkerPool`] for every upstream, so checkout
//! and return touch memory no other core uses: a small LIFO queue per address behind a mutex
//! that only its own thread locks. The most recently returned connection is reused first
//! (warm in caches, least likely to have been closed by the upstream's idle timeout).
//!
//! `pool_max_idle` bounds what stays idle once a burst is over, not a burst itself: when more
//! requests were in flight than the bound, their connections all come back within a
//! scheduler turn or two, and closing those past the bound at once only makes the next burst
//! open them again (a new TCP connection and a TIME_WAIT socket per request over the bound).
//! So a queue may hold more than the bound for a moment: a connection past it is closed only
//! once the oldest connection has been idle for [`BURST_GRACE`], at the next return or by
//! the reaper. The queue never holds more than the connections the burst had open at once.
//! A connection is returned when its response body
//! ends, and only if it is still usable ([`Poolable`]: hyper still considers it open, or the
//! codec's connection is not readable while idle); unusable ones are skipped at checkout.
//! The pool is generic over what it keeps: hyper's `SendRequest` or the codec's connection.
//! Connections idle longer than `pool_idle_timeout` are dropped at checkout, at return and by
//! a small reaper task per worker pool.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use super::body::{BoxError, RequestBody};

/// How long idle connections past `pool_max_idle` are kept in case the burst that opened them
/// comes back (module docs).
pub(crate) const BURST_GRACE: Duration = Duration::from_secs(1);

/// The sending half of one upstream connection.
pub(crate) type Sender<B> = SendRequest<RequestBody<B>>;

/// What a pool keeps: an idle connection that can tell whether it can still be used.
pub(crate) trait Poolable {
    /// Whether the idle connection can carry another request.
    fn usable(&mut self) -> bool;
}

/// One worker's idle connections to every address of one upstream.
pub(crate) struct WorkerPool<T> {
    /// Per address (the balancer's index), most recently returned last.
    idle: Box<[Mutex<VecDeque<Idle<T>>>]>,
    idle_timeout: Duration,
    max_idle: usize,
    reaper: AtomicBool,
}

struct Idle<T> {
    tx: T,
    since: Instant,
}

/// A response body from a pooled connection: returns the connection to its pool when the
/// body ends (or is dropped after its end).
pub struct PooledBody<B> {
    inner: Incoming,
    checkin: Option<Checkin<B>>,
}

/// Where a connection goes back to.
pub(crate) struct Checkin<B> {
    pub(crate) pool: Arc<WorkerPool<Sender<B>>>,
    pub(crate) address: usize,
    pub(crate) tx: Sender<B>,
}

// === impl Poolable ===

impl<B> Poolable for Sender<B> {
    fn usable(&mut self) -> bool {
        !self.is_closed()
    }
}

// === impl WorkerPool ===

impl<T: Poolable> WorkerPool<T> {
    /// An empty pool for `addresses` addresses.
    pub(crate) fn new(addresses: usize, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            idle: (0..addresses)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            idle_timeout,
            max_idle,
            reaper: AtomicBool::new(false),
        }
    }

    /// The most recently returned connection to `address` that is still open and not idle
    /// for too long.
    pub(crate) fn checkout(&self, address: usize) -> Option<T> {
        let queue = self.idle.get(address)?;
        let now = Instant::now();
        let mut dropped = Vec::new();
        let found = {
            let Ok(mut q) = queue.lock() else {
                return None;
            };
            loop {
                let Some(mut idle) = q.pop_back() else {
                    break None;
                };
                if idle.since + self.idle_timeout <= now || !idle.tx.usable() {
                    dropped.push(idle);
                } else {
                    break Some(idle.tx);
                }
            }
        };
        // Closing connections outside the lock.
        drop(dropped);
        found
    }
}

impl<T: Poolable + Send + 'static> WorkerPool<T> {
    /// Returns a connection after its response ended.
    pub(crate) fn checkin(self: &Arc<Self>, address: usize, tx: T) {
        if self.put(address, tx) {
            self.start_reaper();
        }
    }

    /// Starts, once, the task that drops connections idle for longer than the timeout, if
    /// there is a runtime here (there always is on a worker).
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.load(Ordering::Relaxed) || self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Relaxed);
            return;
        };
        // Often enough to trim a burst's overflow soon after its grace.
        let every = self
            .idle_timeout
            .min(BURST_GRACE)
            .max(Duration::from_millis(100));
        handle.spawn(reap(Arc::downgrade(self), every));
    }
}

impl<T: Poolable> WorkerPool<T> {
    /// Drops every connection idle for longer than the timeout, or closed, and the oldest past
    /// the bound once idle for the burst grace.
    fn prune(&self) {
        let now = Instant::now();
        for queue in &*self.idle {
            let dropped: Vec<Idle<T>> = match queue.lock() {
                Ok(mut q) => {
                    let mut dropped = Vec::new();
                    while q.len() > self.max_idle
                        && q.front().is_some_and(|i| i.since + BURST_GRACE <= now)
                    {
                        dropped.extend(q.pop_front());
                    }
                    let mut i = 0;
                    while let Some(idle) = q.get_mut(i) {
                        if idle.since + self.idle_timeout > now && idle.tx.usable() {
                            i += 1;
                        } else {
                            dropped.extend(q.remove(i));
                        }
                    }
                    dropped
                }
                Err(_) => Vec::new(),
            };
            drop(dropped);
        }
    }

    /// How many idle connections are kept for `address` (tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self, address: usize) -> usize {
        self.idle
            .get(address)
            .and_then(|q| q.lock().ok().map(|q| q.len()))
            .unwrap_or(0)
    }
}

/// Runs until the pool is gone (replaced by a reload and its last response ended).
async fn reap<T: Poolable + Send + 'static>(pool: Weak<WorkerPool<T>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.prune();
    }
}

// === impl PooledBody ===

impl<B: Send + 'static> PooledBody<B> {
    /// `inner`, returning the connection in `checkin` when it ends (`None`: never returned,
    /// as after an upgrade).
    pub(crate) fn new(inner: Incoming, checkin: Option<Checkin<B>>) -> Self {
        let mut body = Self { inner, checkin };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.checkin(c.address, c.tx);
        }
    }
}

impl<B> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // Not at its end: the connection still has unread bytes and cannot be reused; dropping
        // the sender closes it.
        if let Some(c) = self.checkin.take()
            && self.inner.is_end_stream()
        {
            c.pool.put(c.address, c.tx);
        }
    }
}

impl<T: Poolable> WorkerPool<T> {
    /// Queues `tx` as the most recent idle connection to `address` (dropping the oldest when
    /// the queue is at its bound and the oldest has been idle for the burst grace); false
    /// when it is not kept.
    fn put(&self, address: usize, mut tx: T) -> bool {
        if self.max_idle == 0 || !tx.usable() {
            return false;
        }
        let Some(queue) = self.idle.get(address) else {
            return false;
        };
        let since = Instant::now();
        let evicted = match queue.lock() {
            Ok(mut q) => {
                let evicted = if q.len() >= self.max_idle
                    && q.front().is_some_and(|i| i.since + BURST_GRACE <= since)
                {
                    q.pop_front()
                } else {
                    None
                };
                q.push_back(Idle { tx, since });
                evicted
            }
            Err(_) => return false,
        };
        // Closing the evicted connection outside the lock.
        drop(evicted);
        true
    }
}

impl<B: Send + 'static> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Returned as soon as the last bytes are read, before the final poll.
                if this.inner.is_end_stream() {
                    this.give_back();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.checkin = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.give_back();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use prometheus::IntCounter;
    use tokio::sync::oneshot;

    type B = Full<Bytes>;

    /// `body` on a connection that goes back to address 0 of `pool` when it ends.
    fn returning(
        body: Incoming,
        pool: &Arc<WorkerPool<Sender<B>>>,
        tx: Sender<B>,
    ) -> PooledBody<B> {
        PooledBody::new(
            body,
            Some(Checkin {
                pool: pool.clone(),
                address: 0,
                tx,
            }),
        )
    }

    /// A client connection to an in-memory server that answers every request with `id`;
    /// the server stops when the returned sender is used or dropped.
    async fn connection(id: &'static str) -> (Sender<B>, oneshot::Sender<()>) {
        let (client, server) = tokio::io::duplex(4096);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(id.as_bytes()))))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop_rx => {}
            }
        });
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (tx, stop_tx)
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").expect("counter")
    }

    async fn ask(tx: &mut Sender<B>) -> Response<Incoming> {
        tx.ready().await.expect("ready");
        let req = Request::new(RequestBody::new(Full::new(Bytes::new()), &counter()));
        tx.send_request(req).await.expect("response")
    }

    async fn text(resp: Response<Incoming>) -> String {
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_past_the_bound_is_kept_for_the_grace_then_trimmed_oldest_first() {
        let pool = Arc::new(WorkerPool::<Sender<B>>::new(1, Duration::from_secs(60), 2));
        let mut servers = Vec::new();
        for id in ["a", "b", "c", "d"] {
            let (tx, stop) = connection(id).await;
            servers.push(stop);
            pool.checkin(0, tx);
        }
        // The whole burst is kept, so the next one reuses it instead of connecting again.
        assert_eq!(pool.idle_count(0), 4);
        tokio::time::sleep(BURST_GRACE / 2).await;
        assert_eq!(pool.idle_count(0), 4);
        // Idle for the grace: the reaper trims back to the bound, the oldest first.
        tokio::time::sleep(BURST_GRACE * 2).await;
        assert_eq!(pool.idle_count(0), 2);
        let mut tx = pool.checkout(0).expect("d");
        assert_eq!(text(ask(&mut tx).await).await, "d");
        let mut tx = pool.checkout(0).expect("c");
        assert_eq!(text(ask(&mut tx).await).await, "c");
        assert!(pool.checkout(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_return_past_the_bound_closes_the_oldest_once_it_is_idle_for_the_grace() {
        // `put` alone (no reaper), to see the return's own trim.
        let pool = WorkerPool::<Sender<B>>::new(1, Duration::from_secs(60), 2);
        let mut servers = Vec::new();
        for id in ["a", "b", "c"] {
            let (tx, stop) = connection(id).await;
            servers.push(stop);
            assert!(pool.put(0, tx));
        }
        assert_eq!(pool.idle_count(0), 3, "within the grace nothing is closed");
        tokio::time::advance(BURST_GRACE).await;
        let (tx, stop) = connection("d").await;
        servers.push(stop);
        assert!(pool.put(0, tx));
        assert_eq!(pool.idle_count(0), 3, "the oldest (a) made room");
        for id in ["d", "c", "b"] {
            let mut tx = pool.checkout(0).expect(id);
            assert_eq!(text(ask(&mut tx).await).await, id);
        }
        assert!(pool.checkout(0).is_none());
    }

    #[tokio::test]
    async fn closed_connections_are_skipped() {
        let pool = Arc::new(WorkerPool::<Sender<B>>::new(1, Duration::from_secs(60), 8));
        let (a, _keep) = connection("a").await;
        let (b, stop_b) = connection("b").await;
        pool.checkin(0, a);
        pool.checkin(0, b);
        drop(stop_b);
        // Wait (bounded) until the client side has seen b's server go away.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let closed = pool.idle[0]
                .lock()
                .map(|q| q.back().is_some_and(|i| i.tx.is_closed()))
                .unwrap_or(false);
            if closed {
                break;
            }
            assert!(Instant::now() < deadline, "b never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut tx = pool.checkout(0).expect("a");
        assert_eq!(text(ask(&mut tx).await).await, "a");
        assert_eq!(pool.idle_count(0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_too_long_is_not_reused() {
        let pool = Arc::new(WorkerPool::<Sender<B>>::new(1, Duration::from_secs(30), 8));
        let (a, _keep) = connection("a").await;
        pool.checkin(0, a);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(pool.checkout(0).is_none());
        // And the reaper empties a queue nobody checks out from.
        let (b, _keep_b) = connection("b").await;
        pool.checkin(0, b);
        assert_eq!(pool.idle_count(0), 1);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(pool.idle_count(0), 0);
    }

    #[tokio::test]
    async fn returned_when_the_body_ends_not_before() {
        let pool = Arc::new(WorkerPool::<Sender<B>>::new(1, Duration::from_secs(60), 8));
        let (mut tx, _keep) = connection("abc").await;
        let resp = ask(&mut tx).await;
        let (_, body) = resp.into_parts();
        let body = returning(body, &pool, tx);
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(pool.idle_count(0), 1);
        // A response dropped unread keeps its connection out of the pool.
        let mut tx = pool.checkout(0).expect("pooled");
        let resp = ask(&mut tx).await;
        let (_, body) = resp.into_parts();
        // Only an empty body is at its end without a read; this one is not.
        let body = returning(body, &pool, tx);
        drop(body);
        assert_eq!(pool.idle_count(0), 0);
    }
}
