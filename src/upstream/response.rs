//! What an upstream answers with, whichever client read it: the response body
//! ([`UpstreamBody`]) and, after a `101`, the upstream side of the tunnel
//! ([`UpstreamUpgrade`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;

use super::body::{BoxError, ClientBody};
use super::h1;
use super::pool::PooledBody;

/// A response body from an upstream: it returns its connection to the worker's pool at its
/// clean end.
pub enum UpstreamBody<B> {
    /// Read by hyper's client (`client: hyper`).
    Hyper(PooledBody<B>),
    /// Read by the codec (`client: codec`).
    Codec(h1::ResponseBody<B>),
}

/// The upstream side of a tunnel after its `101`.
pub enum UpstreamUpgrade {
    /// hyper's upgrade, resolved when its connection task hands the connection over.
    Hyper(OnUpgrade),
    /// The codec's connection, with the bytes read past the 101 (sent to the client first).
    Codec(h1::Upgraded),
}

// === impl UpstreamBody ===

impl<B: ClientBody> UpstreamBody<B> {
    /// The upstream side of the tunnel of a `101` response (once).
    pub fn upgrade(resp: &mut Response<UpstreamBody<B>>) -> UpstreamUpgrade {
        if let UpstreamBody::Codec(body) = resp.body_mut()
            && let Some(up) = body.take_upgrade()
        {
            return UpstreamUpgrade::Codec(up);
        }
        UpstreamUpgrade::Hyper(hyper::upgrade::on(resp))
    }
}

impl<B: ClientBody> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Codec(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Codec(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Codec(b) => b.size_hint(),
        }
    }
}
