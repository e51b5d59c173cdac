//! The codec's decoder and encoder on bytes (no sockets but a duplex pipe for the writer).

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body_util::Full;
use proptest::prelude::*;
use tokio::io::AsyncReadExt;

use super::Error;
use super::decode::{Chunked, Framing, ReqInfo, Step};
use super::encode::Writer;
use crate::upstream::body::RequestBody;

/// A response fed in pieces, decoded as the response body decodes it (`super::fuzz`, which
/// the fuzz target runs too).
use super::fuzz::{Framed, decode_framed as decode};

fn whole(bytes: &[u8]) -> Result<Framed, String> {
    decode(&[bytes], ReqInfo::default())
}

fn get() -> ReqInfo {
    ReqInfo::default()
}

#[test]
fn content_length_body_and_leftover() {
    let d = whole(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhelloEXTRA").unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.framing, Framing::Length(5));
    assert_eq!(d.body, b"hello");
    assert_eq!(d.leftover, 5);
    assert_eq!(d.headers["x-a"], "1");
}

#[test]
fn interim_responses_are_skipped_but_101_only_on_upgrade() {
    let d = whole(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
    assert_eq!(d.status, 204);
    assert!(d.headers.get("link").is_none());
    let up = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes";
    assert_eq!(whole(up).unwrap_err(), Error::UnexpectedUpgrade.to_string());
    let upgrade = ReqInfo {
        upgrade: true,
        ..ReqInfo::default()
    };
    let d = decode(&[up], upgrade).unwrap();
    assert_eq!(d.framing, Framing::Upgrade);
    assert_eq!(d.leftover, 6);
}

#[test]
fn no_body_for_head_204_304() {
    let head = ReqInfo {
        head: true,
        ..ReqInfo::default()
    };
    let d = decode(
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
        head,
    )
    .unwrap();
    assert_eq!((d.framing, d.leftover), (Framing::Empty, 5));
    for s in ["204 No Content", "304 Not Modified"] {
        let r = format!("HTTP/1.1 {s}\r\nContent-Length: 3\r\n\r\nabc");
        let d = whole(r.as_bytes()).unwrap();
        assert_eq!((d.framing, d.leftover), (Framing::Empty, 3), "{s}");
    }
}

#[test]
fn transfer_encoding_decides_and_must_end_in_chunked() {
    let d = whole(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!(d.framing, Framing::Chunked);
    assert_eq!(d.body, b"abc");
    let d =
        whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .unwrap();
    assert_eq!(d.framing, Framing::Close);
    // The last line decides, as in hyper.
    let d = whole(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\nxyz",
    )
    .unwrap();
    assert_eq!(
        (d.framing, d.body.as_slice()),
        (Framing::Close, &b"xyz"[..])
    );
    assert_eq!(
        whole(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").unwrap_err(),
        Error::TransferEncodingHttp10.to_string()
    );
}

#[test]
fn content_length_must_be_digits_and_agree() {
    let ok =
        whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nhi").unwrap();
    assert_eq!(ok.body, b"hi");
    for bad in ["+2", "-1", "", "2, 3", "0x2", "2 2", "18446744073709551616"] {
        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\nhi");
        assert_eq!(
            whole(r.as_bytes()).unwrap_err(),
            Error::ContentLength.to_string(),
            "{bad:?}"
        );
    }
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!";
    assert_eq!(whole(r).unwrap_err(), Error::ContentLength.to_string());
}

#[test]
fn no_length_reads_to_close() {
    let d = whole(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nall of it").unwrap();
    assert_eq!(
        (d.framing, d.body.as_slice()),
        (Framing::Close, &b"all of it"[..])
    );
}

#[test]
fn head_syntax_is_strict() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nX-Bad : v\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    ] {
        assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
    assert!(whole(r.as_bytes()).is_err());
    let big = format!(
        "HTTP/1.1 200 OK\r\nX: {}",
        "a".repeat(super::decode::MAX_HEAD)
    );
    assert_eq!(
        whole(big.as_bytes()).unwrap_err(),
        Error::HeadTooLarge.to_string()
    );
}

#[test]
fn chunked_rules() {
    let r = |body: &str| {
        let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        whole(r.as_bytes())
    };
    let d =
        r("5;name=\"v\"\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n").unwrap();
    assert_eq!(d.body, b"hello0123456789");
    let t = d.trailers.unwrap();
    assert_eq!(
        (t["x-t"].as_bytes(), t["x-u"].as_bytes()),
        (&b"1"[..], &b"2"[..])
    );
    assert_eq!(d.leftover, 0);
    for bad in [
        "5\nhello\r\n0\r\n\r\n",        // bare LF after the size
        "5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside an extension
        "5\r\nhello\n0\r\n\r\n",        // bare LF after data
        "5\r\nhelloX\r\n0\r\n\r\n",     // data longer than its size
        "x\r\n",                        // no size digit
        "10000000000000000\r\n",        // overflow
        "5 5\r\nhello\r\n0\r\n\r\n",    // digits after whitespace
        "0\r\nX-T: 1\n\r\n",            // trailer line without CR
    ] {
        assert!(r(bad).is_err(), "{bad:?}");
    }
    // Cut short: incomplete, never a clean end.
    assert_eq!(
        r("5\r\nhel").unwrap_err(),
        Error::IncompleteBody.to_string()
    );
    assert_eq!(r("0\r\n\r").unwrap_err(), Error::IncompleteBody.to_string());
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(16 * 1024));
    assert!(r(&long_ext).is_err());
}

#[test]
fn settle_sees_the_end_with_the_last_data() {
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
    let mut c = Chunked::new();
    assert!(matches!(c.step(&mut buf).unwrap(), Step::Data(d) if &d[..] == b"abc"));
    c.settle(&mut buf).unwrap();
    assert!(c.is_end());
    assert!(buf.is_empty());
    // Trailers are not taken by settle: the next step returns them.
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\nX: 1\r\n\r\n"[..]);
    let mut c = Chunked::new();
    assert!(matches!(c.step(&mut buf).unwrap(), Step::Data(_)));
    c.settle(&mut buf).unwrap();
    assert!(!c.is_end());
    assert!(matches!(c.step(&mut buf).unwrap(), Step::Trailers(_)));
    assert!(c.is_end());
}

// --- the writer ---

/// Writes one request through the writer into a pipe and returns the bytes (or the error).
async fn write(
    method: Method,
    headers: &[(&str, &str)],
    body: Full<Bytes>,
) -> Result<Vec<u8>, String> {
    let map = header_map(headers);
    let counter = prometheus::IntCounter::new("t", "t").unwrap();
    let mut buf = BytesMut::new();
    let mut w = Writer::new(
        method,
        http::uri::PathAndQuery::from_static("/p?q=1"),
        map,
        RequestBody::new(body, &counter),
        &mut buf,
        false,
    );
    let (mut a, mut b) = tokio::io::duplex(1 << 20);
    let r = std::future::poll_fn(|cx| w.poll_write(cx, &mut a)).await;
    drop(a);
    match r {
        Ok(()) => {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            Ok(out)
        }
        Err(super::encode::WriteError::Body(e)) => Err(e.to_string()),
        Err(super::encode::WriteError::Io(e)) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn writer_frames_like_hyper() {
    let out = write(Method::GET, &[("host", "u")], Full::new(Bytes::new()))
        .await
        .unwrap();
    assert_eq!(out, b"GET /p?q=1 HTTP/1.1\r\nhost: u\r\n\r\n");
    // Known length without the header: hyper sets it.
    let out = write(Method::POST, &[], Full::new(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    assert_eq!(out, b"POST /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");
    // Transfer-Encoding set by the proxy: chunked, Content-Length dropped.
    let out = write(
        Method::GET,
        &[("transfer-encoding", "chunked")],
        Full::new(Bytes::from_static(b"hello")),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        b"GET /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn writer_refuses_a_body_that_does_not_match_its_length() {
    let long = write(
        Method::POST,
        &[("content-length", "2")],
        Full::new(Bytes::from_static(b"abc")),
    )
    .await;
    assert_eq!(long.unwrap_err(), Error::BodyTooLong.to_string());
    let short = write(
        Method::POST,
        &[("content-length", "5")],
        Full::new(Bytes::from_static(b"abc")),
    )
    .await;
    assert_eq!(short.unwrap_err(), Error::BodyTooShort.to_string());
}

/// The head a bodiless request to an HTTP/1.0 peer (`http10`) or not encodes to.
fn head_for(headers: &[(&str, &str)], http10: bool) -> Bytes {
    let map = header_map(headers);
    let counter = prometheus::IntCounter::new("t", "t").unwrap();
    let mut buf = BytesMut::new();
    let body = RequestBody::new(Full::new(Bytes::new()), &counter);
    let w = Writer::new(
        Method::GET,
        http::uri::PathAndQuery::from_static("/"),
        map,
        body,
        &mut buf,
        http10,
    );
    super::encode::head_of(&w).clone()
}

#[test]
fn an_http10_peer_gets_http10_requests_that_ask_for_keep_alive() {
    // hyper's `enforce_version` + `fix_keep_alive`: HTTP/1.0, and `keep-alive` appended to
    // the request's `Connection` values unless it says `close` (or keep-alive already).
    assert_eq!(
        head_for(&[("host", "u")], true),
        &b"GET / HTTP/1.0\r\nhost: u\r\nconnection: keep-alive\r\n\r\n"[..]
    );
    assert_eq!(
        head_for(&[("connection", "upgrade"), ("upgrade", "x")], true),
        &b"GET / HTTP/1.0\r\nconnection: upgrade\r\nconnection: keep-alive\r\nupgrade: x\r\n\r\n"[..]
    );
    assert_eq!(
        head_for(&[("connection", "close")], true),
        &b"GET / HTTP/1.0\r\nconnection: close\r\n\r\n"[..]
    );
    assert_eq!(
        head_for(&[("connection", "Keep-Alive")], true),
        &b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n"[..]
    );
    assert_eq!(
        head_for(&[("host", "u")], false),
        &b"GET / HTTP/1.1\r\nhost: u\r\n\r\n"[..]
    );
}

#[test]
fn keep_alive_follows_hyper_for_both_versions() {
    let h = |lines: &[&str]| {
        let mut map = HeaderMap::new();
        for l in lines {
            map.append("connection", http::HeaderValue::from_str(l).unwrap());
        }
        map
    };
    let v10 = http::Version::HTTP_10;
    let v11 = http::Version::HTTP_11;
    use super::response_keep_alive as ka;
    assert!(ka(v11, &h(&[])));
    assert!(!ka(v11, &h(&["close"])));
    assert!(!ka(v11, &h(&["keep-alive", "Close"])));
    assert!(!ka(v10, &h(&[])));
    assert!(ka(v10, &h(&["keep-alive"])));
    assert!(ka(v10, &h(&["x-foo, Keep-Alive"])));
    assert!(!ka(v10, &h(&["keep-alive, close"])));
    assert!(!ka(v10, &h(&["close", "keep-alive"])));
    assert!(!ka(v10, &h(&["keep-alive", "close"])));
    assert!(!ka(v10, &h(&["keep-alived"])));
}

#[test]
fn writer_writes_head_and_ready_body_in_one_write() {
    // A sink that records each write call.
    struct Calls(Vec<usize>);
    impl tokio::io::AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            d: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(d.len());
            Poll::Ready(Ok(d.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.0.push(n);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    let counter = prometheus::IntCounter::new("t", "t").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "transfer-encoding",
        http::HeaderValue::from_static("chunked"),
    );
    let body = RequestBody::new(Full::new(Bytes::from_static(b"hello")), &counter);
    let mut buf = BytesMut::new();
    let mut w = Writer::new(
        Method::POST,
        http::uri::PathAndQuery::from_static("/"),
        headers,
        body,
        &mut buf,
        false,
    );
    let mut sink = Calls(Vec::new());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(w.poll_write(&mut cx, &mut sink).is_ready());
    let head = super::encode::head_of(&w).len();
    // Head, size line, data and the last chunk together.
    assert_eq!(sink.0, vec![head + 3 + 5 + 7]);
}

// --- split anywhere ---

/// Response bytes of many shapes: interim responses, headers, each framing.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let interim = prop::collection::vec(
        prop::sample::select(vec![
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        ]),
        0..2,
    );
    let status = prop::sample::select(vec![
        "200 OK",
        "201 Created",
        "404 Nope",
        "500 ",
        "204 No Content",
    ]);
    let headers = prop::collection::vec(
        prop::sample::select(vec!["X-A: 1", "Set-Cookie: a=b", "X-Empty:", "X-Tab: a\tb"]),
        0..4,
    );
    let body = prop::collection::vec(any::<u8>(), 0..64);
    let chunks = prop::collection::vec((1usize..20, prop::bool::ANY), 0..4);
    let framing = 0u8..5;
    (
        interim,
        status,
        headers,
        body,
        chunks,
        framing,
        prop::bool::ANY,
    )
        .prop_map(
            |(interim, status, headers, body, chunks, framing, trailers)| {
                let mut r = interim.concat().into_bytes();
                r.extend_from_slice(format!("HTTP/1.1 {status}\r\n").as_bytes());
                for h in headers {
                    r.extend_from_slice(h.as_bytes());
                    r.extend_from_slice(b"\r\n");
                }
                match framing {
                    0 | 1 => {
                        r.extend_from_slice(
                            format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                        );
                        r.extend_from_slice(&body);
                        if framing == 1 {
                            r.extend_from_slice(b"junk");
                        }
                    }
                    2 | 3 => {
                        r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        let mut at = 0;
                        for (n, ext) in chunks {
                            let n = n.min(body.len() - at);
                            if n == 0 {
                                break;
                            }
                            let e = if ext { ";k=\"v w\"" } else { "" };
                            r.extend_from_slice(format!("{n:X}{e}\r\n").as_bytes());
                            r.extend_from_slice(&body[at..at + n]);
                            r.extend_from_slice(b"\r\n");
                            at += n;
                        }
                        r.extend_from_slice(b"0\r\n");
                        if trailers {
                            r.extend_from_slice(b"X-Trailer: t\r\n");
                        }
                        if framing == 2 {
                            r.extend_from_slice(b"\r\n");
                        }
                    }
                    _ => {
                        r.extend_from_slice(b"\r\n");
                        r.extend_from_slice(&body);
                    }
                }
                r
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The bytes split at every position (two pieces), and at random boundaries, decode as
    /// they do in one piece.
    #[test]
    fn split_anywhere_decodes_the_same(r in response(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let one = decode(&[&r], get());
        for at in 0..=r.len() {
            let two = decode(&[&r[..at], &r[at..]], get());
            prop_assert_eq!(&one, &two, "split at {}", at);
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(r.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for a in at {
            pieces.push(&r[from..a]);
            from = a;
        }
        pieces.push(&r[from..]);
        prop_assert_eq!(&one, &decode(&pieces, get()));
        // Every byte on its own.
        let bytes: Vec<&[u8]> = r.chunks(1).collect();
        prop_assert_eq!(&one, &decode(&bytes, get()));
    }
}

#[test]
fn reencode_only_while_nothing_was_written() {
    // Takes 5 bytes, then nothing more.
    struct Five(usize);
    impl tokio::io::AsyncWrite for Five {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            d: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = d.len().min(5 - self.0);
            if n == 0 {
                return Poll::Pending;
            }
            self.0 += n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    let counter = prometheus::IntCounter::new("t", "t").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", http::HeaderValue::from_static("a"));
    let body = RequestBody::new(Full::new(Bytes::from_static(b"body")), &counter);
    let mut buf = BytesMut::new();
    let mut w = Writer::new(
        Method::POST,
        http::uri::PathAndQuery::from_static("/"),
        headers,
        body,
        &mut buf,
        false,
    );
    // Nothing written: another Host, and the HTTP/1.0 line, encode the head again.
    assert!(w.reencode(Some(http::HeaderValue::from_static("b")), true));
    assert_eq!(
        super::encode::head_of(&w),
        &b"POST / HTTP/1.0\r\nhost: b\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\n"[..]
    );
    assert!(w.reencode(None, false));
    assert_eq!(
        super::encode::head_of(&w),
        &b"POST / HTTP/1.1\r\nhost: b\r\ncontent-length: 4\r\n\r\n"[..]
    );
    // Part of it written: refused, nothing changes (it is never sent again).
    let mut cx = Context::from_waker(Waker::noop());
    assert!(w.poll_write(&mut cx, &mut Five(0)).is_pending());
    assert!(!w.nothing_written());
    assert!(!w.reencode(Some(http::HeaderValue::from_static("c")), false));
    assert!(!w.rewind(), "a request with a body is never rewound");
    assert_eq!(
        super::encode::head_of(&w),
        &b"POST / HTTP/1.1\r\nhost: b\r\ncontent-length: 4\r\n\r\n"[..]
    );
}

// --- request trailers, against hyper's client ---

/// A body that yields `frames` in order, one per poll.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// `data` in one frame, then `trailers` (if any).
fn frames(data: &'static [u8], trailers: &[(&str, &str)]) -> Frames {
    let mut f = std::collections::VecDeque::new();
    f.push_back(http_body::Frame::data(Bytes::from_static(data)));
    if !trailers.is_empty() {
        let map = header_map(trailers);
        f.push_back(http_body::Frame::trailers(map));
    }
    Frames(f)
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// The bytes of a POST with `headers` and `body` as the codec's writer writes them.
async fn codec_bytes(headers: &[(&str, &str)], body: Frames) -> Vec<u8> {
    let counter = prometheus::IntCounter::new("t", "t").unwrap();
    let mut buf = BytesMut::new();
    let mut w = Writer::new(
        Method::POST,
        http::uri::PathAndQuery::from_static("/t"),
        header_map(headers),
        RequestBody::new(body, &counter),
        &mut buf,
        false,
    );
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let r = std::future::poll_fn(|cx| w.poll_write(cx, &mut a)).await;
    assert!(r.is_ok());
    drop(a);
    let mut out = Vec::new();
    b.read_to_end(&mut out).await.unwrap();
    out
}

/// The bytes of the same request as hyper's HTTP/1 client writes them (read until the
/// message's end: the empty line after the last chunk, or the Content-Length).
async fn hyper_bytes(headers: &[(&str, &str)], body: Frames) -> Vec<u8> {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Frames>(
        hyper_util::rt::TokioIo::new(a),
    )
    .await
    .unwrap();
    let task = tokio::spawn(conn);
    let mut req = http::Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = http::Uri::from_static("/t");
    *req.headers_mut() = header_map(headers);
    let sent = tokio::spawn(async move { tx.send_request(req).await.map(|_| ()) });
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = b.read(&mut chunk).await.unwrap();
            assert!(n > 0, "hyper closed: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let rest = &out[end + 4..];
            if let Some(len) = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                if rest.len() >= len {
                    return;
                }
            } else if rest.ends_with(b"\r\n\r\n") {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("hyper did not write the whole request");
    sent.abort();
    task.abort();
    out
}

#[tokio::test]
async fn request_trailers_are_sent_as_hyper_sends_them() {
    let chunked = ("transfer-encoding", "chunked");
    let trailers = [
        ("x-t", "1"),
        ("x-undeclared", "2"),
        ("authorization", "secret"),
        ("x-t", "3"),
        ("x-v", "4"),
    ];
    type Fields<'a> = &'a [(&'a str, &'a str)];
    let cases: Vec<(Vec<(&str, &str)>, Fields)> = vec![
        // Declared ones only (any case, lists and lines), never a forbidden field.
        (
            vec![chunked, ("trailer", "X-T, Authorization"), ("trailer", "x-v")],
            &trailers,
        ),
        // No `Trailer` header: none.
        (vec![chunked], &trailers),
        // Declared, but only forbidden or undeclared ones present: the plain last chunk.
        (
            vec![chunked, ("trailer", "authorization, content-type, x-w")],
            &trailers,
        ),
        // A body of known length has no trailers.
        (
            vec![("content-length", "5"), ("trailer", "x-t")],
            &trailers,
        ),
        // No trailers frame at all.
        (vec![chunked, ("trailer", "x-t")], &[]),
    ];
    for (headers, t) in cases {
        let hyper = hyper_bytes(&headers, frames(b"hello", t)).await;
        let codec = codec_bytes(&headers, frames(b"hello", t)).await;
        assert_eq!(
            String::from_utf8_lossy(&codec),
            String::from_utf8_lossy(&hyper),
            "{headers:?}"
        );
    }
    // The first case, spelled out: what is sent.
    let codec = codec_bytes(
        &[chunked, ("trailer", "X-T, Authorization"), ("trailer", "x-v")],
        frames(b"hello", &trailers),
    )
    .await;
    assert!(
        codec.ends_with(b"\r\n5\r\nhello\r\n0\r\nx-t: 1\r\nx-t: 3\r\nx-v: 4\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&codec)
    );
}

// --- the fuzz target's check (regressions go here) ---

#[test]
fn fuzz_check_holds_on_each_framing() {
    for r in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA"[..],
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nnext",
        b"HTTP/1.0 200 OK\r\n\r\nto the end",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\ntunnel",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
        b"HTTP/1.1 200",
        b"",
    ] {
        for flags in [0u8, 1, 2, 3, 4, 0xff] {
            let mut data = vec![flags];
            data.extend_from_slice(r);
            super::fuzz::check(&data);
        }
    }
    super::fuzz::check(&[]);
    let d = super::fuzz::decode(
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nnext"],
        false,
        false,
    )
    .unwrap();
    assert_eq!((d.body.as_slice(), d.leftover), (&b"abc"[..], 4));
}
