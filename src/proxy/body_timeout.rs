//! The request-body read timeout (`server.body_read_timeout`): the longest wait for the next
//! piece of a request body, as nginx's `client_body_timeout`.
//!
//! The timer runs only while the body waits on the client: it starts when a read finds
//! nothing, and stops when a frame arrives. Time the reader (the upstream connection, or an
//! own path) spends before asking for more does not count, so a slow upstream is not blamed
//! on the client. When it fires, the body ends with [`BodyTimeout`], the timeout is counted
//! (`portcullis_request_body_timeouts_total{route}`) and logged, and the request ends: 408
//! when the response has not started, an aborted request otherwise. The client's body is
//! then dropped unfinished, which makes hyper close an HTTP/1 connection after the response
//! and reset an HTTP/2 stream, so a stalled body never keeps a connection slot.
//!
//! Security notes: without it, a request head announcing a body that never comes held its
//! connection (and its `max_connections` slot) for as long as the client liked: neither the
//! header-read nor the idle timeout applies while a request is in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounterVec;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::upstream::ClientBody;

/// The error a request body ends with when the client sent nothing more within
/// `server.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no request body data within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// What a timed body needs to time out: the limit, and where to count and log it.
#[derive(Clone)]
pub struct BodyTimer {
    /// `server.body_read_timeout`.
    pub timeout: Duration,
    /// `portcullis_request_body_timeouts_total` (the label is resolved only when it fires).
    pub counter: IntCounterVec,
    /// The request's `route` label.
    pub route: Arc<str>,
    /// The client, for the log line.
    pub peer: SocketAddr,
}

/// A request body whose reads are bounded by [`BodyTimer::timeout`].
pub struct TimedBody<B> {
    inner: B,
    /// `None` for a body that is already complete (most requests): nothing to time.
    timer: Option<Box<Armed>>,
}

struct Armed {
    timer: BodyTimer,
    /// Created at the first wait; reset at each later one.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether the last read found nothing (the sleep's deadline is for this wait).
    waiting: bool,
    fired: bool,
}

// === impl BodyTimeout ===

impl BodyTimeout {
    /// Whether `e`, or an error it was caused by, is a [`BodyTimeout`].
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if err.is::<BodyTimeout>() {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

// === impl TimedBody ===

impl<B: ClientBody> TimedBody<B> {
    /// Wraps `body`; a body that is already complete gets no timer (and `timer` is not
    /// called: most requests have no body, and pay nothing here).
    pub fn new(body: B, timer: impl FnOnce() -> BodyTimer) -> Self {
        let timer = (!body.is_end_stream()).then(|| {
            Box::new(Armed {
                timer: timer(),
                sleep: None,
                waiting: false,
                fired: false,
            })
        });
        Self { inner: body, timer }
    }
}

impl<B: ClientBody> Body for TimedBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.timer.as_ref().is_some_and(|a| a.fired) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(a) = &mut this.timer {
                    a.waiting = false;
                }
                return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let Some(a) = &mut this.timer else {
            // Not reached (a complete body does not wait), but never leave a wait untimed.
            return Poll::Pending;
        };
        let deadline = Instant::now() + a.timer.timeout;
        let sleep = match &mut a.sleep {
            Some(s) => {
                if !a.waiting {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => a.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        a.waiting = true;
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                a.fired = true;
                let t = &a.timer;
                t.counter.with_label_values(&[&*t.route]).inc();
                tracing::info!(
                    client = %t.peer,
                    route = %t.route,
                    timeout = ?t.timeout,
                    "request body timed out: nothing more of it arrived within server.body_read_timeout"
                );
                Poll::Ready(Some(Err(Box::new(BodyTimeout(t.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timer.as_ref().is_some_and(|a| a.fired) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    type Piece = Result<Frame<Bytes>, std::io::Error>;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("t", "t"), &["route"]).unwrap()
    }

    /// A body of 2 s timeout fed from a channel: pieces arrive when the test sends them.
    fn timed(c: &IntCounterVec) -> (mpsc::Sender<Piece>, TimedBody<impl ClientBody>) {
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let stream = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let timer = BodyTimer {
            timeout: Duration::from_secs(2),
            counter: c.clone(),
            route: Arc::from("r"),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        (
            tx,
            TimedBody::new(http_body_util::StreamBody::new(stream), || timer),
        )
    }

    fn piece() -> Piece {
        Ok(Frame::data(Bytes::from_static(b"x")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_and_is_counted() {
        let c = counter();
        let (_tx, mut b) = timed(&c);
        let start = Instant::now();
        let Some(Err(e)) = b.frame().await else {
            panic!("expected a timeout error");
        };
        assert!(BodyTimeout::caused(&*e));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(c.with_label_values(&["r"]).get(), 1);
        assert!(b.frame().await.is_none());
        assert!(b.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn each_piece_restarts_the_wait() {
        let c = counter();
        let (tx, mut b) = timed(&c);
        let feed = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tx.send(piece()).await.unwrap();
            }
        });
        // 7.5 s in all, never 2 s between pieces: no timeout.
        for _ in 0..5 {
            assert!(matches!(b.frame().await, Some(Ok(_))));
        }
        assert_eq!(c.with_label_values(&["r"]).get(), 0);
        feed.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let c = counter();
        let (tx, mut b) = timed(&c);
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(piece()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
            tx.send(piece()).await.unwrap();
        });
        // Waited 1 s for the first piece (the timer ran, then stopped).
        assert!(matches!(b.frame().await, Some(Ok(_))));
        // The reader is busy for 5 s; the next wait starts when it asks again (at 6 s), so
        // the piece at 7 s is in time although the first wait's deadline (3 s) has passed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(b.frame().await, Some(Ok(_))));
        assert_eq!(c.with_label_values(&["r"]).get(), 0);
        feed.await.unwrap();
    }

    #[test]
    fn a_complete_body_gets_no_timer() {
        let b = TimedBody::new(http_body_util::Empty::<Bytes>::new(), || {
            unreachable!("no timer for a complete body")
        });
        assert!(b.timer.is_none());
        assert!(b.is_end_stream());
    }
}
