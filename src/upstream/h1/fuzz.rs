//! The response decoder on arbitrary bytes, for the fuzz target (`fuzz/`, cargo-fuzz) and
//! its regression tests: the head (`decode::read_head`, interim responses included) and the
//! body by its framing (Content-Length, the chunked decoder with `settle` as the response
//! body uses it, or to the end), the end of the input being the upstream's close.
//!
//! [`check`] is what the fuzz target runs: decoding must not panic, and must give the same
//! result whether the bytes arrive in one piece or in pieces of any size (a split that
//! changes the outcome is how a framing bug that depends on read boundaries shows).

use bytes::BytesMut;
use http::HeaderMap;

use super::decode::{Chunked, Framing, ReqInfo, Step, read_head};

/// What a response decoded to.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// Status code.
    pub status: u16,
    /// Headers as parsed.
    pub headers: HeaderMap,
    /// The framing, in words (`Length(5)`, `Chunked`, ...).
    pub framing: String,
    /// The body's bytes.
    pub body: Vec<u8>,
    /// Trailers of a chunked body.
    pub trailers: Option<HeaderMap>,
    /// Bytes after the end of a delimited body.
    pub leftover: usize,
}

/// What a response decoded to, the framing as the decoder names it (the crate's tests).
#[derive(Debug, PartialEq)]
pub(crate) struct Framed {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) leftover: usize,
}

/// Decodes a response arriving in `pieces` to a `HEAD` request (`head`) or one that asked to
/// upgrade (`upgrade`); errors by their text.
pub fn decode(pieces: &[&[u8]], head: bool, upgrade: bool) -> Result<Decoded, String> {
    decode_framed(pieces, ReqInfo { head, upgrade }).map(|f| Decoded {
        status: f.status.as_u16(),
        headers: f.headers,
        framing: format!("{:?}", f.framing),
        body: f.body,
        trailers: f.trailers,
        leftover: f.leftover,
    })
}

/// Decodes a response arriving in `pieces` (the bytes as they would arrive, the end of the
/// input being the upstream's close) to the request `req`; errors by their text.
pub(crate) fn decode_framed(pieces: &[&[u8]], req: ReqInfo) -> Result<Framed, String> {
    let mut buf = BytesMut::new();
    let mut rest = pieces.iter();
    let (h, framing) = loop {
        if let Some(h) = read_head(&mut buf, req).map_err(|e| e.to_string())? {
            break h;
        }
        match rest.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Err(super::Error::IncompleteHead.to_string()),
        }
    };
    let mut body = Vec::new();
    let mut trailers = None;
    match framing {
        Framing::Empty | Framing::Upgrade => {}
        Framing::Length(mut n) => {
            while n > 0 {
                if buf.is_empty() {
                    match rest.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => return Err(super::Error::IncompleteBody.to_string()),
                    }
                    continue;
                }
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                body.extend_from_slice(&buf.split_to(take));
                n -= take as u64;
            }
        }
        Framing::Close => {
            body.extend_from_slice(&buf.split());
            for p in rest.by_ref() {
                body.extend_from_slice(p);
            }
        }
        Framing::Chunked => {
            let mut c = Chunked::new();
            loop {
                match c.step(&mut buf).map_err(|e| e.to_string())? {
                    Step::Data(d) => {
                        body.extend_from_slice(&d);
                        c.settle(&mut buf).map_err(|e| e.to_string())?;
                    }
                    Step::Trailers(t) => {
                        trailers = Some(t);
                        break;
                    }
                    Step::End => break,
                    Step::More => match rest.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => return Err(super::Error::IncompleteBody.to_string()),
                    },
                }
            }
        }
    }
    let leftover = buf.len() + rest.map(|p| p.len()).sum::<usize>();
    Ok(Framed {
        status: h.status,
        headers: h.headers,
        framing,
        body,
        trailers,
        leftover,
    })
}

/// The fuzz target's check on `data`: its first byte picks the request (bit 0: HEAD, bit 1:
/// upgrade) and a piece size (the other bits, 1-64); the rest is the response. Panics when
/// decoding it whole and in pieces of that size (and byte by byte) disagree.
pub fn check(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let (head, upgrade) = (flags & 1 != 0, flags & 2 != 0);
    let size = usize::from(flags >> 2) + 1;
    let whole = decode(&[data], head, upgrade);
    let pieces: Vec<&[u8]> = data.chunks(size).collect();
    assert_eq!(whole, decode(&pieces, head, upgrade), "in pieces of {size}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(whole, decode(&bytes, head, upgrade), "byte by byte");
}
