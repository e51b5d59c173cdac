//! Body types.
//!
//! [`RequestBody`] streams the client's body to the upstream and lets the forwarder prove that
//! nothing was sent: the body sits in a shared slot until hyper first polls it, so after a
//! connect failure the forwarder can take it back and try another address. Once polled, the
//! request is never retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use prometheus::IntCounter;

/// The error type of every body Portcullis sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response Portcullis sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A small in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body Portcullis can forward: hyper's [`Incoming`] when serving, any in-memory
/// body in service tests.
pub trait ClientBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<T> ClientBody for T
where
    T: Body<Data = Bytes> + Send + Unpin + 'static,
    T::Error: Into<BoxError>,
{
}

/// The client's request body, handed to the upstream client.
pub struct RequestBody<B = Incoming> {
    slot: Arc<Mutex<Option<B>>>,
    inner: Option<B>,
    hint: SizeHint,
    end: bool,
    bytes: IntCounter,
}

/// A handle that can take the body back if it was never polled.
#[derive(Clone)]
pub struct Unsent<B = Incoming> {
    slot: Arc<Mutex<Option<B>>>,
    bytes: IntCounter,
}

// === impl RequestBody ===

impl<B: ClientBody> RequestBody<B> {
    /// Wraps `body`; `bytes` counts what is forwarded.
    pub fn new(body: B, bytes: IntCounter) -> (Self, Unsent<B>) {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        let slot = Arc::new(Mutex::new(Some(body)));
        let unsent = Unsent {
            slot: slot.clone(),
            bytes: bytes.clone(),
        };
        (
            Self {
                slot,
                inner: None,
                hint,
                end,
                bytes,
            },
            unsent,
        )
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
        if this.inner.is_none() {
            // Never held across an await: the lock is taken and released within this poll.
            let taken = this.slot.lock().map(|mut s| s.take()).unwrap_or(None);
            match taken {
                Some(b) => this.inner = Some(b),
                None => return Poll::Ready(Some(Err("request body already taken".into()))),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes.inc_by(d.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

// === impl Unsent ===

impl<B: ClientBody> Unsent<B> {
    /// A new body over the same slot, if the body was never polled.
    pub fn retake(&self) -> Option<RequestBody<B>> {
        let (hint, end) = self
            .slot
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|b| (b.size_hint(), b.is_end_stream())))?;
        Some(RequestBody {
            slot: self.slot.clone(),
            inner: None,
            hint,
            end,
            bytes: self.bytes.clone(),
        })
    }
}
