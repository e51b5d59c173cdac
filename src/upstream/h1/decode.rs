//! The response side of the codec: the head (httparse, with hyper's client defaults), how
//! long the body is (RFC 9112 §6.3, decided as hyper's client decides it), and the chunked
//! decoder.
//!
//! Security notes (each a known smuggling class):
//! - httparse's default configuration: no obs-fold, no whitespace before the colon, no bare
//!   CR, no NUL/CR/LF in values, one space between status-line parts; at most
//!   [`MAX_HEADERS`] header lines and [`MAX_HEAD`] bytes of head.
//! - Transfer-Encoding decides the framing whenever it is present (Content-Length is then
//!   ignored, as hyper does); chunked only when it is the final coding, otherwise the body
//!   runs until the connection closes (and the connection is never reused). Transfer-Encoding
//!   on an HTTP/1.0 response is refused.
//! - Content-Length: digits only (no sign, no empty value); several values (lines or a
//!   list) must all be equal, or the response is refused.
//! - Chunks: a hex size (overflow refused), optional whitespace, extensions that end at CR
//!   and never contain LF (at most 16 KiB of them per body), CRLF everywhere (no bare LF);
//!   trailers at most 100 lines and 16 KiB, parsed by httparse and passed on as a trailers
//!   frame (hyper does the same).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::Error;

/// Most header lines in a head (hyper's `DEFAULT_MAX_HEADERS`).
pub(crate) const MAX_HEADERS: usize = 100;
/// Most bytes of a head not yet complete (hyper's `DEFAULT_MAX_BUFFER_SIZE`).
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Most bytes of chunk extensions in one body (hyper's `CHUNKED_EXTENSIONS_LIMIT`).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Most bytes of trailers (hyper's `TRAILER_LIMIT`).
const TRAILER_LIMIT: usize = 16 * 1024;

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// The reason phrase when it is not the status's canonical one.
    pub(crate) reason: Option<Bytes>,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
    /// `101 Switching Protocols`: the connection is the tunnel's.
    Upgrade,
}

/// What the request said that the response's framing depends on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReqInfo {
    /// The request was `HEAD`.
    pub(crate) head: bool,
    /// The request asked to upgrade (`Upgrade` and `Connection: upgrade`).
    pub(crate) upgrade: bool,
}

/// The chunked decoder (the states and rules of hyper's `ChunkedState`).
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

/// What the chunked decoder found in the buffered bytes.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete (after its trailers, if any).
    End,
    /// More bytes are needed.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

/// The final response's head and framing from the front of `buf` (the head's bytes are
/// taken out of it), skipping interim 1xx responses; `None` until a whole head is there.
pub(crate) fn read_head(
    buf: &mut BytesMut,
    req: ReqInfo,
) -> Result<Option<(Head, Framing)>, Error> {
    loop {
        let Some(head) = parse_head(buf)? else {
            if buf.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            return Ok(None);
        };
        match head.status.as_u16() {
            101 if req.upgrade => return Ok(Some((head, Framing::Upgrade))),
            101 => return Err(Error::UnexpectedUpgrade),
            100..=199 => continue,
            _ => {}
        }
        let framing = framing(&head, req)?;
        return Ok(Some((head, framing)));
    }
}

/// One head from the front of `buf`; `None` if it is not complete yet.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Uninitialised, as hyper's: a head of a few lines does not pay for zeroing 100 slots.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| Error::Status)?;
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = res
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    // Offsets into the buffer, so the values can share the head's bytes once frozen.
    let base = buf.as_ptr() as usize;
    let mut spans: smallvec::SmallVec<[(usize, usize, usize, usize); 16]> =
        smallvec::SmallVec::new();
    for h in res.headers.iter() {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        spans.push((name, name + h.name.len(), value, value + h.value.len()));
    }
    let bytes = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(spans.len());
    for (n0, n1, v0, v1) in spans {
        let name = HeaderName::from_bytes(&bytes[n0..n1]).map_err(|_| Error::Header)?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(v0..v1)).map_err(|_| Error::Header)?;
        map.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers: map,
        reason,
    }))
}

/// RFC 9112 §6.3 for a response, in hyper's client's order.
fn framing(head: &Head, req: ReqInfo) -> Result<Framing, Error> {
    if matches!(head.status.as_u16(), 204 | 304) || req.head {
        return Ok(Framing::Empty);
    }
    let headers = &head.headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            return Err(Error::TransferEncodingHttp10);
        }
        return Ok(if chunked_final(headers) {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    if !headers.contains_key(http::header::CONTENT_LENGTH) {
        return Ok(Framing::Close);
    }
    match content_length(headers) {
        // hyper's largest length (`DecodedLength::MAX_LEN`).
        Some(n) if n <= u64::MAX - 2 => Ok(Framing::Length(n)),
        _ => Err(Error::ContentLength),
    }
}

/// Whether the last coding of the last `Transfer-Encoding` line is `chunked`.
fn chunked_final(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The one value of every `Content-Length` line and list item; `None` if any is not plain
/// digits or two differ.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut len: Option<u64> = None;
    for line in headers.get_all(http::header::CONTENT_LENGTH) {
        let line = line.to_str().ok()?;
        for item in line.split(',') {
            let n = digits(item.trim().as_bytes())?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    len
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

// === impl Chunked ===

impl Chunked {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Start,
            size: 0,
            extensions: 0,
            trailers: None,
            trailer_lines: 0,
        }
    }

    /// Decodes from the front of `buf` as far as it goes: the next data, the trailers, the
    /// end, or a need for more bytes.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match self.state {
                State::End => return Ok(Step::End),
                State::Body => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let data = buf.split_to(n).freeze();
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::BodyCr;
                    }
                    return Ok(Step::Data(data));
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.state = self.byte(b)?;
            if self.state == State::End {
                if let Some(t) = self.trailers.take() {
                    return decode_trailers(&t, self.trailer_lines).map(Step::Trailers);
                }
                return Ok(Step::End);
            }
        }
    }

    /// Consumes the framing that follows a chunk's data while it is buffered (its CRLF, the
    /// next size line, the last chunk and the final CRLF), stopping before data and before
    /// trailers: so the end of a body is seen with its last data when it came with it.
    pub(crate) fn settle(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        loop {
            match self.state {
                State::Body | State::End | State::Trailer | State::TrailerLf => return Ok(()),
                State::EndCr if buf.first() != Some(&b'\r') => return Ok(()),
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(());
            };
            buf.advance(1);
            self.state = self.byte(b)?;
        }
    }

    /// Whether the body is complete.
    pub(crate) fn is_end(&self) -> bool {
        self.state == State::End
    }

    /// One byte of framing: the next state.
    fn byte(&mut self, b: u8) -> Result<State, Error> {
        use State::*;
        Ok(match self.state {
            Start => {
                self.size = self.hex(b).ok_or(Error::Chunked("missing size digit"))?;
                Size
            }
            Size => match b {
                b'\t' | b' ' => SizeLws,
                b';' => Extension,
                b'\r' => SizeLf,
                _ => {
                    self.size = self.hex(b).ok_or(Error::Chunked("invalid size"))?;
                    Size
                }
            },
            SizeLws => match b {
                b'\t' | b' ' => SizeLws,
                b';' => Extension,
                b'\r' => SizeLf,
                _ => return Err(Error::Chunked("invalid whitespace after size")),
            },
            Extension => match b {
                b'\r' => SizeLf,
                b'\n' => return Err(Error::Chunked("extension contains a newline")),
                _ => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        return Err(Error::Chunked("extensions over limit"));
                    }
                    Extension
                }
            },
            SizeLf => match b {
                b'\n' if self.size == 0 => EndCr,
                b'\n' => Body,
                _ => return Err(Error::Chunked("size line without LF")),
            },
            BodyCr => match b {
                b'\r' => BodyLf,
                _ => return Err(Error::Chunked("data without CR")),
            },
            BodyLf => match b {
                b'\n' => Start,
                _ => return Err(Error::Chunked("data without LF")),
            },
            Trailer => {
                self.trailer_byte(b)?;
                if b == b'\r' { TrailerLf } else { Trailer }
            }
            TrailerLf => match b {
                b'\n' => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(Error::Chunked("too many trailers"));
                    }
                    self.trailer_lines += 1;
                    self.trailer_byte(b)?;
                    EndCr
                }
                _ => return Err(Error::Chunked("trailer without LF")),
            },
            EndCr => {
                if b == b'\r' {
                    if self.trailers.is_some() {
                        self.trailer_byte(b)?;
                    }
                    EndLf
                } else {
                    match &mut self.trailers {
                        None => {
                            let mut t = BytesMut::with_capacity(64);
                            t.extend_from_slice(&[b]);
                            self.trailers = Some(t);
                        }
                        Some(_) => self.trailer_byte(b)?,
                    }
                    Trailer
                }
            }
            EndLf => match b {
                b'\n' => {
                    if self.trailers.is_some() {
                        self.trailer_byte(b)?;
                    }
                    End
                }
                _ => return Err(Error::Chunked("last chunk without LF")),
            },
            Body | End => return Err(Error::Chunked("unexpected state")),
        })
    }

    /// `size * 16 + b`, for a hex digit `b` (`None`: not a digit, or overflow).
    fn hex(&self, b: u8) -> Option<u64> {
        let d = char::from(b).to_digit(16)?;
        self.size.checked_mul(16)?.checked_add(u64::from(d))
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), Error> {
        if let Some(t) = &mut self.trailers {
            t.extend_from_slice(&[b]);
            if t.len() >= TRAILER_LIMIT {
                return Err(Error::Chunked("trailers over limit"));
            }
        }
        Ok(())
    }
}

/// The trailer section, parsed as header lines.
fn decode_trailers(buf: &[u8], lines: usize) -> Result<HeaderMap, Error> {
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for h in parsed {
                let name =
                    HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Trailers)?;
                let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Trailers)?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(Error::Trailers),
    }
}
