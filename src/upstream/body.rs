//! Body types.
//!
//! [`RequestBody`] streams the client's body to the upstream and counts its bytes. The retry
//! rule rests on ownership: the forwarder hands the request (and its body) to hyper only once
//! a connection is open, and hyper hands it back untouched when it could not start sending it
//! (`TrySendError::take_message`: the request never left the channel to the connection, so
//! its body was never polled). Only then is another connection or address tried; once hyper
//! has taken the request, never.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub use crate::body::BoxError;
use hyper::body::Incoming;
use prometheus::IntCounter;

/// A request body Portcullis can forward: hyper's [`Incoming`] when serving, any in-memory
/// body in service tests.
pub trait ClientBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<T> ClientBody for T
where
    T: Body<Data = Bytes> + Send + Unpin + 'static,
    T::Error: Into<BoxError>,
{
}

/// The client's request body, handed to the upstream connection.
pub struct RequestBody<B = Incoming> {
    inner: B,
    /// `None` for a request without a body (most): nothing to count, no handle cloned.
    bytes: Option<IntCounter>,
    /// Where the body stands, for the upstream's response clock (`None` without a body).
    progress: Option<Arc<BodyProgress>>,
}

/// How far a request body is, shared with the wait for the upstream's answer: the upstream's
/// clock (`response_timeout`) runs from the body's last piece and stands still while the body
/// waits on the client (that wait is `server.body_read_timeout`'s).
#[derive(Debug)]
pub struct BodyProgress {
    state: Mutex<Progress>,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The last time a piece was handed on (or the body ended, or the request started).
    last: tokio::time::Instant,
    /// The client owes the next piece.
    waiting_on_client: bool,
}

// === impl BodyProgress ===

impl BodyProgress {
    fn new() -> Self {
        Self {
            state: Mutex::new(Progress {
                last: tokio::time::Instant::now(),
                waiting_on_client: false,
            }),
        }
    }

    fn set(&self, waiting_on_client: bool) {
        if let Ok(mut p) = self.state.lock() {
            if !waiting_on_client || !p.waiting_on_client {
                p.last = tokio::time::Instant::now();
            }
            p.waiting_on_client = waiting_on_client;
        }
    }

    /// When the upstream's clock of `timeout` runs out: `None` while the client owes the
    /// next piece of the body.
    pub fn deadline(&self, timeout: std::time::Duration) -> Option<tokio::time::Instant> {
        let p = *self.state.lock().ok()?;
        (!p.waiting_on_client).then(|| p.last + timeout)
    }
}

// === impl RequestBody ===

impl<B: ClientBody> RequestBody<B> {
    /// Wraps `body`; `bytes` counts what is forwarded.
    pub fn new(body: B, bytes: &IntCounter) -> Self {
        let has_body = !body.is_end_stream();
        Self {
            inner: body,
            bytes: has_body.then(|| bytes.clone()),
            progress: has_body.then(|| Arc::new(BodyProgress::new())),
        }
    }

    /// The body's progress, when it has a body.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }
}

impl<B: ClientBody> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = &this.progress {
            p.set(polled.is_pending());
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(bytes)) = (frame.data_ref(), &this.bytes) {
                    bytes.inc_by(d.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
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
