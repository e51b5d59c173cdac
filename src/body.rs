//! The body every response Portcullis sends has ([`ProxyBody`]), and the small in-memory
//! ones it makes itself. A leaf: the request path, the browser pages, the admin listener and
//! the error map all answer with it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

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
