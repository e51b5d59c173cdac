//! An HTTP/1.1 client codec on the pooled connection, driven from the request's own task
//! (`upstreams.<name>.client: codec`, the default): no `SendRequest` channel, no oneshot, no
//! connection task, no body channel. The request task encodes the head, writes it with the
//! body (one vectored write when the body is already there), and reads the response head;
//! the response body ([`ResponseBody`]) owns the connection and reads it when the server
//! polls it, returning it to the worker's pool at a clean end.
//!
//! Retry rule (the request must provably not have been acted on; see `super` for the
//! address loop). On a connection taken from the pool, and only there:
//! - the first write fails before the connection accepted a single byte: nothing was sent
//!   (what the body had given is still queued here), so another connection gets it whole;
//! - the connection ends (EOF or reset) before a single byte of the response, the request
//!   has no body and its method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE,
//!   PUT, DELETE): the keep-alive race where the upstream closed an idle connection as the
//!   request went out. RFC 9112 §9.3.1 allows a client to retry such a request; a request
//!   with a body, or a non-idempotent one, is never sent twice. (hyper's `take_message`
//!   only covers a request that never left its channel; this is the same proof for the
//!   write, plus the idempotent case that its pooled client also retries.)
//! - A new connection never retries. A connect failure goes to the next address (`super`),
//!   with the request as it is: whole, or already encoded when a pooled connection failed
//!   as above first (`Unsent::Encoded`; its head is encoded again there, and `Writer::
//!   reencode` refuses a request anything of which was written and not rewound, so nothing
//!   the rule forbids is ever sent twice).
//!
//! Keep-alive (hyper's client's rule, `response_keep_alive`): an HTTP/1.1 response without
//! `Connection: close`, or an HTTP/1.0 response with a `keep-alive` token and no `close`
//! token on any `Connection` line; its body must be delimited (Content-Length, or none by
//! status or HEAD: a close-delimited body never leaves a reusable connection). A pooled
//! connection remembers that its peer answered in HTTP/1.0 (`Conn::http10`): the next request
//! on it is encoded as HTTP/1.0 with `Connection: keep-alive` appended unless it says
//! `close` (hyper's `enforce_version`/`fix_keep_alive`), and a request with a chunked body
//! never goes to it (HTTP/1.0 has no chunked coding; hyper would drop such a body): that
//! idle connection closes and another one is taken.
//!
//! Security notes: see `decode` (framing rules) and `body` (when a connection is reused).
//! A connection is pooled only after a complete, unambiguous exchange; a connection readable
//! while idle is dropped at checkout (`Io::idle_usable`). That check reads the readiness the
//! worker's event loop last saw, so bytes that reach the socket after its last turn are not
//! seen at checkout: the window every HTTP/1 keep-alive client has (hyper's pooled client
//! too); they are then read as the answer's first bytes only if they arrive before the
//! answer, and an upstream that sends unasked-for bytes is broken anyway.

mod body;
mod decode;
mod encode;
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub mod fuzz;
mod io;
#[cfg(test)]
mod tests;
mod timer;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use body::ResponseBody;
pub use io::Io;

pub(crate) use body::Home;
pub(crate) use io::Connector;
pub(crate) use timer::Deadline;

use decode::{Framing, Head, ReqInfo};
use encode::{WriteError, Writer};
use timer::Timer;

use super::body::{BoxError, ClientBody, RequestBody};
use super::pool::{Poolable, WorkerPool};

/// Why a codec exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The response head is not valid HTTP/1 (httparse's verdict).
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head is larger than the limit.
    #[error("response head larger than {} bytes", decode::MAX_HEAD)]
    HeadTooLarge,
    /// A header name or value `http` does not accept.
    #[error("invalid response header")]
    Header,
    /// A status code outside 100-999.
    #[error("invalid status code")]
    Status,
    /// Content-Length invalid, or several that differ.
    #[error("invalid or differing Content-Length")]
    ContentLength,
    /// Transfer-Encoding on an HTTP/1.0 response.
    #[error("Transfer-Encoding on an HTTP/1.0 response")]
    TransferEncodingHttp10,
    /// `101 Switching Protocols` to a request that did not ask to upgrade.
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
    /// A chunked body broke its framing.
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    /// The trailers are not valid header lines.
    #[error("invalid trailers")]
    Trailers,
    /// The connection ended before any byte of a response.
    #[error("connection closed before a response")]
    Closed,
    /// The connection ended inside the response head.
    #[error("connection closed inside the response head")]
    IncompleteHead,
    /// The connection ended inside the response body.
    #[error("connection closed before the response body was complete")]
    IncompleteBody,
    /// No response head within `response_timeout`.
    #[error("no response within the response timeout")]
    Timeout,
    /// Reading or writing the connection failed.
    #[error("upstream connection failed")]
    Io(#[source] std::io::Error),
    /// The client's request body failed (not the upstream's fault).
    #[error("request body failed")]
    RequestBody(#[source] BoxError),
    /// The request body ran past its Content-Length.
    #[error("request body longer than its Content-Length")]
    BodyTooLong,
    /// The request body ended before its Content-Length.
    #[error("request body shorter than its Content-Length")]
    BodyTooShort,
}

/// An idle pooled connection of the codec: the byte stream (no buffers while idle) and its
/// response timer (`timer`: armed once, moved only when it fires).
pub struct Conn {
    io: Io,
    /// The peer's last response was HTTP/1.0 (with `Connection: keep-alive`): the next
    /// request on it is sent as HTTP/1.0, as hyper's client does.
    http10: bool,
    timer: Option<Timer>,
}

/// A request encoded for a connection: the writer (head and body), the buffer that reads
/// the response, and what the response's framing depends on.
pub(crate) struct Encoded<B> {
    writer: Writer<B>,
    buf: BytesMut,
    info: ReqInfo,
}

/// A connection after `101 Switching Protocols`, with the bytes already read past the 101's
/// head: they are read first.
pub struct Upgraded {
    io: Io,
    leftover: Bytes,
}

/// What the exchange got: the final response head and its framing.
struct Answer {
    head: Head,
    framing: Framing,
    /// Writing the request failed (an early response came anyway).
    write_failed: bool,
}

/// Why an exchange failed, and what that says about a retry.
struct Failed {
    error: Error,
    /// A byte of the response arrived.
    read_any: bool,
}

// === impl Error ===

impl Error {
    /// The client's side failed (its request body), not the upstream.
    pub fn is_user(&self) -> bool {
        matches!(
            self,
            Error::RequestBody(_) | Error::BodyTooLong | Error::BodyTooShort
        )
    }
}

// === impl Conn ===

impl Conn {
    pub(crate) fn new(io: Io, http10: bool, timer: Option<Timer>) -> Self {
        Self { io, http10, timer }
    }
}

impl Poolable for Conn {
    fn usable(&mut self) -> bool {
        self.io.idle_usable()
    }
}

// === impl Upgraded ===

impl Upgraded {
    pub(crate) fn new(io: Io, leftover: Bytes) -> Self {
        Self { io, leftover }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why one try on one address failed (see `super::TryError`).
pub(crate) enum TryFailed<B> {
    /// No connection could be opened; no upstream took anything of the request, which comes
    /// back for the next address.
    Connect(BoxError, Box<Unsent<B>>),
    /// No response head within the deadline (`Error::Timeout`).
    Timeout,
    /// The exchange failed.
    Protocol(Error),
}

/// A request no upstream has acted on, for the next address: whole, or already encoded.
pub(crate) enum Unsent<B> {
    /// Not encoded yet.
    Request(Request<RequestBody<B>>),
    /// Encoded for a pooled connection that then failed as the retry rule allows (nothing of
    /// it written, or a bodiless idempotent request rewound), after which no new connection
    /// to that address could be opened: the next address gets it (its head encoded again,
    /// the body's frames taken so far still queued).
    Encoded(Encoded<B>),
}

// === impl Unsent ===

impl<B: ClientBody> Unsent<B> {
    /// Sets `Host` (another address's authority). An encoded request's head is encoded
    /// again (nothing of it was written; if something were, the head stays and the next
    /// try refuses it, see `try_address`).
    pub(crate) fn set_host(&mut self, host: http::HeaderValue) {
        match self {
            Unsent::Request(r) => {
                r.headers_mut().insert(http::header::HOST, host);
            }
            Unsent::Encoded(e) => {
                let http10 = e.writer.is_http10();
                let _ = e.writer.reencode(Some(host), http10);
            }
        }
    }
}

/// One address: a pooled connection that is still idle-clean (the most recent), or a new
/// one; another connection only as the retry rule in the module docs allows. The response
/// head must come by `deadline` (connecting included).
pub(crate) async fn try_address<B: ClientBody>(
    connector: &Connector,
    pool: &Arc<WorkerPool<Conn>>,
    address: usize,
    uri: &http::Uri,
    unsent: Unsent<B>,
    deadline: &Deadline<'_>,
) -> Result<Response<ResponseBody<B>>, TryFailed<B>> {
    let (mut req, mut encoded) = match unsent {
        Unsent::Request(r) => (Some(r), None),
        Unsent::Encoded(e) => (None, Some(e)),
    };
    loop {
        let (mut io, mut timer, reused, http10) = match pool.checkout(address) {
            Some(c) => (c.io, c.timer, true, c.http10),
            // Boxed: the connect future is large and only needed for a new connection.
            None => match tokio::time::timeout_at(
                deadline.at(tokio::time::Instant::now()),
                Box::pin(connector.connect(uri)),
            )
            .await
            {
                Err(_) => return Err(TryFailed::Timeout),
                Ok(Ok(io)) => (io, None, false, false),
                Ok(Err(e)) => {
                    let back = match (req.take(), encoded.take()) {
                        (Some(r), _) => Unsent::Request(r),
                        (None, Some(enc)) => Unsent::Encoded(enc),
                        (None, None) => return Err(TryFailed::Protocol(Error::Closed)),
                    };
                    return Err(TryFailed::Connect(e, Box::new(back)));
                }
            },
        };
        if http10 && chunked(req.as_ref(), encoded.as_ref()) {
            // An HTTP/1.0 peer has no chunked coding (hyper's client would send such a
            // request without its body): this idle connection closes, another one gets it.
            continue;
        }
        if encoded.is_none()
            && let Some(r) = req.take()
        {
            encoded = Some(encode(r, http10));
        }
        let Some(e) = encoded.as_mut() else {
            return Err(TryFailed::Protocol(Error::Closed));
        };
        // A retry (here, or from another address): nothing of it was written, or it was
        // rewound (the retry rule), so its head can be encoded again for this connection's
        // peer. Anything else is never sent again.
        if !e.writer.reencode(None, http10) {
            return Err(TryFailed::Protocol(Error::Closed));
        }
        let armed = Timer::arm(&mut timer, deadline);
        match exchange(&mut io, &mut e.buf, &mut e.writer, e.info, armed, deadline).await {
            Ok(answer) => {
                let Some(e) = encoded else {
                    return Err(TryFailed::Protocol(Error::Closed));
                };
                let home = Home {
                    pool: pool.clone(),
                    address,
                    http10: false,
                    timer,
                };
                return Ok(respond(answer, io, e, home));
            }
            Err(f) if matches!(f.error, Error::Timeout) => return Err(TryFailed::Timeout),
            Err(f) => {
                if reused && may_retry(&f, &mut e.writer) {
                    tracing::debug!(error = %f.error, "pooled upstream connection failed unsent; retrying on another");
                    e.buf.clear();
                    continue;
                }
                return Err(TryFailed::Protocol(f.error));
            }
        }
    }
}

/// Whether the request (whole, or already encoded) has a chunked body.
fn chunked<B: ClientBody>(req: Option<&Request<RequestBody<B>>>, e: Option<&Encoded<B>>) -> bool {
    match (e, req) {
        (Some(e), _) => e.writer.is_chunked(),
        (None, Some(r)) => encode::would_chunk(r.headers(), r.body()),
        (None, None) => false,
    }
}

/// The request's head into a fresh buffer (whose rest then reads the response), for a
/// connection whose peer spoke HTTP/1.0 (`http10`) or not.
fn encode<B: ClientBody>(req: Request<RequestBody<B>>, http10: bool) -> Encoded<B> {
    let (parts, body) = req.into_parts();
    let info = ReqInfo {
        head: parts.method == Method::HEAD,
        upgrade: crate::upstream::headers::wants_upgrade(&parts.headers),
    };
    let target = parts
        .uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut buf = io::take_buf();
    let writer = Writer::new(parts.method, target, parts.headers, body, &mut buf, http10);
    Encoded { writer, buf, info }
}

/// Whether a failed exchange on a pooled connection may go to another (module docs).
fn may_retry<B: ClientBody>(f: &Failed, writer: &mut Writer<B>) -> bool {
    if f.read_any {
        return false;
    }
    let ended = match &f.error {
        Error::Closed => true,
        Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    };
    if !ended {
        return false;
    }
    if writer.nothing_written() {
        return true;
    }
    let idempotent = matches!(
        *writer.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && writer.rewind()
}

/// Writes the request and reads until the final response head, both at once: a response
/// that comes while the body is still being written is taken as it is. `Error::Timeout`
/// when the head has not come by `deadline` (watched with the connection's `timer`).
async fn exchange<B: ClientBody>(
    io: &mut Io,
    buf: &mut BytesMut,
    writer: &mut Writer<B>,
    info: ReqInfo,
    timer: &mut Timer,
    deadline: &Deadline<'_>,
) -> Result<Answer, Failed> {
    let mut write_error: Option<std::io::Error> = None;
    let mut read_any = false;
    std::future::poll_fn(|cx| {
        loop {
            if write_error.is_none() && !writer.is_done() {
                match writer.poll_write(cx, io) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(WriteError::Body(error))) => {
                        return Poll::Ready(Err(Failed { error, read_any }));
                    }
                    Poll::Ready(Err(WriteError::Io(e))) => write_error = Some(e),
                }
            }
            match decode::read_head(buf, info) {
                Ok(Some((head, framing))) => {
                    return Poll::Ready(Ok(Answer {
                        head,
                        framing,
                        write_failed: write_error.is_some(),
                    }));
                }
                Ok(None) => {}
                Err(error) => return Poll::Ready(Err(Failed { error, read_any })),
            }
            match io.poll_read_buf(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    let error = match write_error.take() {
                        _ if read_any => Error::IncompleteHead,
                        Some(e) => Error::Io(e),
                        None => Error::Closed,
                    };
                    return Poll::Ready(Err(Failed { error, read_any }));
                }
                Poll::Ready(Ok(_)) => read_any = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Failed {
                        error: Error::Io(e),
                        read_any,
                    }));
                }
                Poll::Pending => {
                    if timer.poll_expired(cx, deadline).is_ready() {
                        return Poll::Ready(Err(Failed {
                            error: Error::Timeout,
                            read_any,
                        }));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

/// The response, its body owning the connection; it goes `home` only when the exchange left
/// the connection reusable.
fn respond<B: ClientBody>(
    answer: Answer,
    io: Io,
    encoded: Encoded<B>,
    home: Home,
) -> Response<ResponseBody<B>> {
    let Answer {
        head,
        framing,
        write_failed,
    } = answer;
    let Encoded { writer, buf, .. } = encoded;
    let keep_alive = response_keep_alive(head.version, &head.headers)
        && request_keep_alive(writer.headers())
        && !write_failed
        && writer.is_done();
    let home = keep_alive.then(|| Home {
        http10: head.version == http::Version::HTTP_10,
        ..home
    });
    // A request body still being written goes on with the response body.
    let writer = (!write_failed && !writer.is_done()).then(|| Box::new(writer));
    let body = ResponseBody::new(framing, io, buf, writer, home);
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    if let Some(reason) = head
        .reason
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok())
    {
        resp.extensions_mut().insert(reason);
    }
    resp
}

/// Whether the response lets the connection stay open (hyper's client's rule): HTTP/1.1
/// unless a `Connection` line has `close`; HTTP/1.0 only with a `keep-alive` token and no
/// `close` on any line. (The body's framing decides too: a close-delimited body never
/// leaves a reusable connection, see `body`.)
fn response_keep_alive(version: http::Version, headers: &HeaderMap) -> bool {
    if connection_has(headers, "close") {
        return false;
    }
    version == http::Version::HTTP_11 || connection_has(headers, "keep-alive")
}

/// Whether the request lets the connection stay open: not with `Connection: close` (to a
/// peer that answered with HTTP/1.0 the request said `Connection: keep-alive` otherwise,
/// see `encode`).
fn request_keep_alive(headers: &HeaderMap) -> bool {
    !connection_has(headers, "close")
}

/// Whether any `Connection` line has the token `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
