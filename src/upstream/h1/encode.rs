//! The request side of the codec: the head in one buffer, and the body written after it,
//! as few writes as it takes (the head and a body that is already there go in one
//! vectored write).
//!
//! Framing (what hyper's client would send for the same request, with the proxy's
//! `frame_unknown_length` already applied): no body → nothing after the head (and no
//! `Transfer-Encoding`); `Transfer-Encoding` → chunked (any `Content-Length` removed);
//! `Content-Length` → exactly that many bytes, a body that runs long or ends short is an
//! error (and the connection is never reused); a body of known length without either →
//! `Content-Length` set from it.
//!
//! Request trailers (a body's trailers frame) go out as hyper's client sends them: only on a
//! chunked body, only the fields the request's `Trailer` header names, and never a field
//! that must not be a trailer (hyper's `is_valid_trailer_field`: Authorization,
//! Cache-Control, Content-Encoding, Content-Length, Content-Range, Content-Type, Host,
//! Max-Forwards, Set-Cookie, Trailer, Transfer-Encoding, TE); with none left, the body ends
//! with the plain last chunk. The body is not polled after its trailers. (The proxy
//! removes `Trailer` from forwarded requests as hop-by-hop, so through it neither client
//! sends any.)
//!
//! To a peer that answered in HTTP/1.0 the request line says `HTTP/1.0` and `Connection:
//! keep-alive` is appended unless the request says `close` (hyper's `enforce_version`); the
//! caller never sends a chunked body to such a peer.

use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body::Body;
use smallvec::SmallVec;
use tokio::io::AsyncWrite;

use super::Error;
use crate::upstream::body::{ClientBody, RequestBody};

/// Writes one request: its head, then its body.
pub(crate) struct Writer<B> {
    /// What is still to write, in order.
    out: SmallVec<[Bytes; 4]>,
    /// The head, kept to write it again on another connection (bodiless requests only).
    head: Bytes,
    /// What the head is made of (the framing headers already set), kept so that a request
    /// nothing of which was written can be encoded again for another connection: another
    /// address's `Host`, or an HTTP/1.0 peer's request line.
    method: Method,
    target: PathAndQuery,
    headers: HeaderMap,
    /// The request line says `HTTP/1.0` (the connection's peer answered with HTTP/1.0).
    http10: bool,
    body: Option<RequestBody<B>>,
    framing: BodyFraming,
    /// The fields the `Trailer` header declares (chunked bodies only; usually none).
    trailer_fields: Vec<HeaderName>,
    /// Bytes the connection accepted.
    written: u64,
    /// The body ended (and its framing's end is queued).
    body_done: bool,
    /// Everything was written and flushed.
    done: bool,
}

/// A write failure: the client's body (its fault, or a length that does not match), or the
/// connection.
#[derive(Debug)]
pub(crate) enum WriteError {
    Body(Error),
    Io(io::Error),
}

#[derive(Debug, Clone, Copy)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

const CRLF: &[u8] = b"\r\n";
const CRLF_LAST: &[u8] = b"\r\n0\r\n\r\n";
const LAST: &[u8] = b"0\r\n\r\n";
/// The last chunk's line, before trailer fields.
const LAST_CHUNK_LINE: &[u8] = b"0\r\n";

// === impl Writer ===

impl<B: ClientBody> Writer<B> {
    /// Encodes the head (origin-form `target`, HTTP/1.1, or HTTP/1.0 when `http10`,
    /// `headers` in order) into `buf`'s front and sets the body's framing.
    pub(crate) fn new(
        method: Method,
        target: PathAndQuery,
        mut headers: HeaderMap,
        body: RequestBody<B>,
        buf: &mut BytesMut,
        http10: bool,
    ) -> Self {
        let framing = framing_of(&headers, &body);
        match framing {
            BodyFraming::None => {
                headers.remove(http::header::TRANSFER_ENCODING);
            }
            BodyFraming::Chunked => {
                headers.remove(http::header::CONTENT_LENGTH);
                if !headers.contains_key(http::header::TRANSFER_ENCODING) {
                    // Not reached through the proxy (`frame_unknown_length` said chunked).
                    headers.insert(
                        http::header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                }
            }
            BodyFraming::Length(n) => {
                // A known length without a valid Content-Length: set from the body.
                if super::decode::content_length(&headers) != Some(n) {
                    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
                }
            }
        }
        let head = encode_head(&method, target.as_str(), &headers, http10, buf);
        let trailer_fields = match framing {
            BodyFraming::Chunked => declared_trailers(&headers),
            _ => Vec::new(),
        };
        let body_done = matches!(framing, BodyFraming::None);
        let mut out = SmallVec::new();
        out.push(head.clone());
        Self {
            out,
            head,
            method,
            target,
            headers,
            http10,
            body: (!body_done).then_some(body),
            framing,
            trailer_fields,
            written: 0,
            body_done,
            done: false,
        }
    }

    /// The request's method.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// The request's headers as encoded.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether the head was encoded for an HTTP/1.0 peer.
    pub(crate) fn is_http10(&self) -> bool {
        self.http10
    }

    /// Whether the body is sent chunked (which an HTTP/1.0 peer does not understand).
    pub(crate) fn is_chunked(&self) -> bool {
        matches!(self.framing, BodyFraming::Chunked)
    }

    /// Encodes the head again with `host` as `Host` (when given) and the request line's
    /// version for an HTTP/1.0 peer or not; only while nothing of the request was written
    /// (`false` otherwise, and nothing changes).
    pub(crate) fn reencode(&mut self, host: Option<HeaderValue>, http10: bool) -> bool {
        if !self.nothing_written() {
            return false;
        }
        let same_host = host
            .as_ref()
            .is_none_or(|h| self.headers.get(http::header::HOST) == Some(h));
        if same_host && http10 == self.http10 {
            return true;
        }
        if let Some(h) = host {
            self.headers.insert(http::header::HOST, h);
        }
        self.http10 = http10;
        let mut buf = BytesMut::new();
        self.head = encode_head(
            &self.method,
            self.target.as_str(),
            &self.headers,
            http10,
            &mut buf,
        );
        match self.out.first_mut() {
            Some(first) => *first = self.head.clone(),
            None => self.out.push(self.head.clone()),
        }
        true
    }

    /// Whether the whole request was written.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Whether nothing of the request reached the connection.
    pub(crate) fn nothing_written(&self) -> bool {
        self.written == 0
    }

    /// Whether the request has a body.
    pub(crate) fn has_body(&self) -> bool {
        !matches!(self.framing, BodyFraming::None)
    }

    /// Starts over with the head, for another connection: only for a request without a body
    /// (its body's bytes, once taken from the client, are not kept).
    pub(crate) fn rewind(&mut self) -> bool {
        if self.has_body() {
            return false;
        }
        self.out.clear();
        self.out.push(self.head.clone());
        self.written = 0;
        self.done = false;
        true
    }

    /// Writes as much as the connection takes and the body has; ready when all of it is
    /// written and flushed.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<Result<(), WriteError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Room for one more chunk (size line, data, CRLF): take what the body has now, so
            // it goes out in the same write as what is queued.
            while self.out.len() <= 1 && !self.body_done {
                match self.poll_body(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Pending => break,
                }
            }
            if self.out.is_empty() {
                if !self.body_done {
                    return Poll::Pending;
                }
                return match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(WriteError::Io(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
            let written = {
                let slices: SmallVec<[IoSlice<'_>; 4]> =
                    self.out.iter().map(|b| IoSlice::new(b)).collect();
                Pin::new(&mut *io).poll_write_vectored(cx, &slices)
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => self.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Takes `n` written bytes off the front of what is queued.
    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        let mut spent = 0;
        for b in self.out.iter_mut() {
            if n == 0 {
                break;
            }
            if n >= b.len() {
                n -= b.len();
                spent += 1;
            } else {
                let _ = b.split_to(n);
                n = 0;
            }
        }
        self.out.drain(..spent);
    }

    /// Polls the body once and queues what it gave (framed).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(body) = self.body.as_mut() else {
            self.body_done = true;
            return Poll::Ready(Ok(()));
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(Error::RequestBody(e))),
            Poll::Ready(Some(Ok(frame))) => {
                let end = body.is_end_stream();
                match frame.into_data() {
                    Ok(data) => {
                        self.queue(data)?;
                        if end {
                            self.finish()?;
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body (hyper polls no further either).
                        match frame.into_trailers() {
                            Ok(trailers) => {
                                if !self.queue_trailers(&trailers) {
                                    self.finish()?;
                                }
                            }
                            Err(_) if end => self.finish()?,
                            // Another kind of frame: skipped, as hyper does.
                            Err(_) => {}
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(self.finish()),
        }
    }

    fn queue(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            BodyFraming::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(Error::BodyTooLong);
                }
                *left -= n;
                self.out.push(data);
            }
            BodyFraming::Chunked => {
                let mut size = BytesMut::with_capacity(18);
                // Writing into a BytesMut cannot fail.
                let _ = write!(size, "{:x}\r\n", data.len());
                self.out.push(size.freeze());
                self.out.push(data);
                self.out.push(Bytes::from_static(CRLF));
            }
            BodyFraming::None => return Err(Error::BodyTooLong),
        }
        Ok(())
    }

    /// Queues the last chunk with the declared, allowed fields of `trailers` and ends the
    /// body; `false` (nothing queued) when none of them may go, or the body is not chunked.
    fn queue_trailers(&mut self, trailers: &HeaderMap) -> bool {
        if !matches!(self.framing, BodyFraming::Chunked) || self.body_done {
            return false;
        }
        let mut lines = BytesMut::new();
        for (name, value) in trailers.iter() {
            if self.trailer_fields.contains(name) && is_valid_trailer_field(name) {
                lines.put_slice(name.as_str().as_bytes());
                lines.put_slice(b": ");
                lines.put_slice(value.as_bytes());
                lines.put_slice(CRLF);
            }
        }
        if lines.is_empty() {
            return false;
        }
        self.out.push(Bytes::from_static(LAST_CHUNK_LINE));
        lines.put_slice(CRLF);
        self.out.push(lines.freeze());
        self.body_done = true;
        self.body = None;
        true
    }

    /// The body ended: its length must be complete; chunked gets its last chunk.
    fn finish(&mut self) -> Result<(), Error> {
        if self.body_done {
            return Ok(());
        }
        self.body_done = true;
        self.body = None;
        match self.framing {
            BodyFraming::Length(0) | BodyFraming::None => Ok(()),
            BodyFraming::Length(_) => Err(Error::BodyTooShort),
            BodyFraming::Chunked => {
                // Folded into the last data's CRLF when that is still queued.
                match self.out.last() {
                    Some(b) if b.as_ref() == CRLF => {
                        if let Some(last) = self.out.last_mut() {
                            *last = Bytes::from_static(CRLF_LAST);
                        }
                    }
                    _ => self.out.push(Bytes::from_static(LAST)),
                }
                Ok(())
            }
        }
    }
}

/// How the body is framed, as hyper's client decides it (with the proxy's
/// `frame_unknown_length` already applied): no body → none; `Transfer-Encoding` → chunked;
/// a valid `Content-Length` → that; a body of known length → its length; else chunked.
fn framing_of<B: ClientBody>(headers: &HeaderMap, body: &RequestBody<B>) -> BodyFraming {
    if body.is_end_stream() {
        BodyFraming::None
    } else if headers.contains_key(http::header::TRANSFER_ENCODING) {
        BodyFraming::Chunked
    } else if let Some(n) = super::decode::content_length(headers) {
        BodyFraming::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        BodyFraming::Length(n)
    } else {
        BodyFraming::Chunked
    }
}

/// The field names the `Trailer` header lines list (comma-separated; names that are not
/// valid header names are skipped), as hyper's client reads them.
fn declared_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Whether `name` may be sent as a trailer (hyper's `is_valid_trailer_field`).
fn is_valid_trailer_field(name: &HeaderName) -> bool {
    use http::header::*;
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TRAILER
            | TRANSFER_ENCODING
            | TE
    )
}

/// Whether a request with `headers` and `body` would be sent chunked.
pub(crate) fn would_chunk<B: ClientBody>(headers: &HeaderMap, body: &RequestBody<B>) -> bool {
    matches!(framing_of(headers, body), BodyFraming::Chunked)
}

/// `METHOD target HTTP/1.1` (or `HTTP/1.0`), the headers, the empty line: into `buf`,
/// returned frozen (the rest of `buf`'s allocation stays for reading the response).
///
/// For an HTTP/1.0 peer a request that does not say `Connection: close` gets
/// `Connection: keep-alive` (appended to its `Connection` values), as hyper's client's
/// `fix_keep_alive` adds it: HTTP/1.0 closes after each exchange without it.
fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    http10: bool,
    buf: &mut BytesMut,
) -> Bytes {
    let with_keep_alive;
    let headers = if http10
        && !super::connection_has(headers, "close")
        && !super::connection_has(headers, "keep-alive")
    {
        let mut h = headers.clone();
        h.append(http::header::CONNECTION, HeaderValue::from_static("keep-alive"));
        with_keep_alive = h;
        &with_keep_alive
    } else {
        headers
    };
    let size = 16
        + method.as_str().len()
        + target.len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    buf.reserve(size);
    buf.put_slice(method.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(target.as_bytes());
    buf.put_slice(if http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in headers {
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(CRLF);
    }
    buf.put_slice(CRLF);
    buf.split().freeze()
}

/// The body's framing and the head's bytes, for tests.
#[cfg(test)]
pub(crate) fn head_of<B: ClientBody>(w: &Writer<B>) -> &Bytes {
    &w.head
}
