//! Request-framing guard for HTTP/1 client connections.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` itself
//! (Transfer-Encoding wins, Content-Length is dropped, the connection closes after the
//! response), so the handler never sees both headers. Portcullis refuses such a request
//! outright (a request-smuggling probe is never forwarded). This wrapper reads along with
//! hyper, follows HTTP/1 message boundaries far enough to find each request head, and when a
//! head has both headers it marks the connection ([`Activity::set_ambiguous_framing`]), so the
//! handler answers 400 instead of forwarding.
//!
//! It stops watching, leaving hyper's handling, on anything it cannot follow: HTTP/2, an
//! upgrade once it happened ([`Activity::set_upgraded`]: a request that only asks for one
//! is followed like any other, since the upstream may refuse it and the connection go on as
//! HTTP/1), a head over the size limit, or framing hyper itself will refuse. A CONNECT is
//! followed like any other request: Portcullis never opens a tunnel (the handler answers 405
//! and closes the connection), so the bytes after it are still HTTP/1 as far as hyper is
//! concerned, and must still be checked should hyper ever read them.
//!
//! It also enforces `server.header_read_timeout`, since it knows where heads begin and end
//! (hyper's own header timer is re-armed for every keep-alive request, a timer entry and a
//! boxed sleep per request). The clock runs for the first head from the connection's start
//! and for a later one from its first byte (a quiet keep-alive connection is the idle
//! timeout's business); a timer exists only while a head is incomplete and the read is
//! waiting, so a head that arrives in one read costs nothing. When it fires, the read fails
//! and hyper closes the connection, as its own timer did. A partial head that arrives while a
//! request is still in flight (pipelining) is timed from that request's end.
//!
//! Since it sees every read and write, it also tells the connection task when hyper is
//! between requests (`Activity::parkable`: its last read found nothing after whole
//! requests, every written byte flushed, no shutdown begun), so the task can park the
//! connection (`conn.rs`). The guard outlives each hyper connection of a parked one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::Activity;

/// An I/O stream whose incoming bytes are checked for ambiguous request framing, and whose
/// request heads must arrive within the header read timeout.
pub struct FramingGuard<I> {
    inner: I,
    scan: Scanner,
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// When the head being waited for began, while one is.
    head_since: Option<Instant>,
    /// Armed only while a read waits on an incomplete head.
    timer: Option<Pin<Box<Sleep>>>,
    /// hyper began closing the stream (it is never parked after that).
    closing: bool,
}

impl<I> FramingGuard<I> {
    /// Wraps `inner` at the connection's start; heads longer than `max_head` are left to
    /// hyper (it refuses them); each head must be complete within `header_timeout`.
    pub fn new(
        inner: I,
        activity: Arc<Activity>,
        max_head: usize,
        header_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            scan: Scanner::new(max_head),
            activity,
            header_timeout,
            head_since: Some(Instant::now()),
            timer: None,
            closing: false,
        }
    }

    /// The stream (whether it has anything of its own to send before a park: `conn.rs`).
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Whether the stream is between requests: still followed as HTTP/1, no byte of a next
    /// head or body received, and hyper not closing it.
    fn at_rest(&self) -> bool {
        !self.closing && self.scan.state == State::Head && self.scan.head.is_empty()
    }

    /// After a read that returned bytes: where the head clock stands.
    fn after_bytes(&mut self) {
        if self.scan.waiting_head() {
            if self.head_since.is_none() {
                self.head_since = Some(crate::clock::coarse_now());
            }
        } else if self.head_since.is_some() {
            self.head_since = None;
            self.timer = None;
            // An HTTP/1 request head; or HTTP/2's preface, or a head the scan cannot follow.
            self.activity.set_http1(self.scan.state != State::Off);
        }
    }

    /// When the head being waited for is due: from its first byte, or from the end of the
    /// request before it if that came later (a pipelined head). `None` while no head is
    /// waited for, or a request is in flight (hyper reads the next head once it is answered).
    fn head_deadline(&self) -> Option<Instant> {
        let since = self.head_since?;
        if self.activity.busy() {
            return None;
        }
        Some(since.max(self.activity.last_change()) + self.header_timeout)
    }

    /// Whether the head being waited for is overdue; arms the timer so the task wakes when it
    /// will be.
    fn head_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.head_deadline() else {
            self.timer = None;
            return false;
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.scan.state != State::Off && this.activity.upgraded() {
            // A tunnel now: its bytes are neither requests nor timed as heads.
            this.scan.stop();
            this.head_since = None;
            this.timer = None;
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match res {
            Poll::Ready(Ok(())) => {
                this.activity.set_io_idle(false);
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    return res;
                }
                if this.scan.feed(got) {
                    this.activity.set_ambiguous_framing();
                }
                this.after_bytes();
                // A trickle of bytes never leaves the read waiting: check on every one.
                if this
                    .head_deadline()
                    .is_some_and(|deadline| deadline <= crate::clock::coarse_now())
                {
                    return Poll::Ready(Err(head_timed_out()));
                }
                res
            }
            Poll::Pending if this.head_overdue(cx) => Poll::Ready(Err(head_timed_out())),
            Poll::Pending => {
                // hyper read all it was sent, and what it was sent ends with a whole request:
                // once no request is in flight and the responses are flushed, the connection
                // can be parked (`conn.rs`).
                this.activity.set_io_idle(this.at_rest());
                res
            }
            Poll::Ready(Err(_)) => {
                this.activity.set_io_idle(false);
                res
            }
        }
    }
}

impl<I> FramingGuard<I> {
    /// Before a write: the connection is not at rest until the bytes are flushed.
    fn wrote(&mut self) {
        self.activity.set_unflushed(true);
    }
}

fn head_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head not complete within server.header_read_timeout",
    )
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(res, Poll::Ready(Ok(()))) {
            self.activity.set_unflushed(false);
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // hyper closes the connection (a `Connection: close`, a refused request, the drain):
        // it must not be parked and served again.
        self.closing = true;
        self.activity.set_io_idle(false);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the client's byte stream is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// In a request head (collected in `Scanner::head`).
    Head,
    /// In a Content-Length body, this many bytes left.
    Body(u64),
    /// In a chunk-size line.
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// In chunk data, this many bytes left.
    ChunkData(u64),
    /// After chunk data, before its line end.
    ChunkDataEnd,
    /// In the trailer section; the length of the current line.
    Trailers(usize),
    /// Not watching any more.
    Off,
}

/// Follows HTTP/1 requests in a byte stream.
struct Scanner {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    /// Whether a whole head was seen (the first one is waited for from the start).
    seen_head: bool,
}

impl Scanner {
    fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            max_head,
            seen_head: false,
        }
    }

    /// Stops watching.
    fn stop(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
    }

    /// Whether a request head is awaited and not complete: the first one, or a later one of
    /// which some bytes came.
    fn waiting_head(&self) -> bool {
        self.state == State::Head && (!self.seen_head || !self.head.is_empty())
    }

    /// Takes the next bytes; true when a head with both framing headers was just seen.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while let Some((&b, rest)) = data.split_first() {
            match &mut self.state {
                State::Off => return false,
                State::Body(n) | State::ChunkData(n) => {
                    let k = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                    *n -= k as u64;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head,
                            _ => State::ChunkDataEnd,
                        };
                    }
                    continue;
                }
                State::Head => {
                    match self.feed_head(data) {
                        Some((used, conflict)) => {
                            data = &data[used..];
                            if conflict {
                                return true;
                            }
                        }
                        None => return false,
                    }
                    continue;
                }
                State::ChunkSize { size, digits, ext } => match b {
                    b'\n' if *digits && *size == 0 => self.state = State::Trailers(0),
                    b'\n' if *digits => self.state = State::ChunkData(*size),
                    b'\n' => self.state = State::Off,
                    _ if *ext => {}
                    b';' | b' ' | b'\t' | b'\r' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) => match size.checked_mul(16) {
                            Some(s) => {
                                *size = s + u64::from(d);
                                *digits = true;
                            }
                            None => self.state = State::Off,
                        },
                        None => self.state = State::Off,
                    },
                },
                State::ChunkDataEnd => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.state = State::ChunkSize {
                            size: 0,
                            digits: false,
                            ext: false,
                        }
                    }
                    _ => self.state = State::Off,
                },
                State::Trailers(len) => match b {
                    b'\r' => {}
                    b'\n' if *len == 0 => self.state = State::Head,
                    b'\n' => *len = 0,
                    _ => *len += 1,
                },
            }
            data = rest;
        }
        false
    }
}

impl Scanner {
    /// In a head: takes bytes from `data` up to the end of the head. Returns how many were
    /// used and whether the head had both framing headers, or `None` when all of `data` was
    /// taken (kept for the next read, or the head is over the limit: not watching any more).
    /// Works on slices: the head is copied only when it spans reads.
    fn feed_head(&mut self, data: &[u8]) -> Option<(usize, bool)> {
        let mut start = 0;
        if self.head.is_empty() {
            // Empty lines before a request line are ignored (RFC 9112 section 2.2).
            start = data.iter().position(|&b| b != b'\r' && b != b'\n')?;
        }
        let body = &data[start..];
        let kept = self.head.len();
        // The byte `back` places before `body[i]`, in the head so far and then `body`.
        let before = |i: usize, back: usize| -> Option<u8> {
            match i.checked_sub(back) {
                Some(j) => body.get(j).copied(),
                None => kept
                    .checked_sub(back - i)
                    .and_then(|j| self.head.get(j).copied()),
            }
        };
        let end = memchr::memchr_iter(b'\n', body).find(|&i| {
            before(i, 1) == Some(b'\n')
                || (before(i, 1) == Some(b'\r') && before(i, 2) == Some(b'\n'))
        });
        let Some(end) = end else {
            if kept + body.len() > self.max_head {
                self.stop();
            } else {
                self.head.extend_from_slice(body);
            }
            return None;
        };
        // As byte by byte: over the limit before its last byte, the head is not watched.
        if kept + end > self.max_head {
            self.stop();
            return None;
        }
        let (next, conflict) = if kept == 0 {
            after_head(&body[..=end])
        } else {
            self.head.extend_from_slice(&body[..=end]);
            let head = std::mem::take(&mut self.head);
            after_head(&head)
        };
        self.state = next;
        self.seen_head = true;
        Some((start + end + 1, conflict))
    }
}

/// What follows a complete head, and whether it had both Content-Length and Transfer-Encoding.
///
/// Lines are found with `memchr`, and only a line that starts like one of the two framing
/// headers is looked into: a head's long values (a bearer token, cookies) are passed over
/// without a byte-by-byte scan. `tests::after_head_lines` is the plain reading it must agree
/// with.
fn after_head(head: &[u8]) -> (State, bool) {
    let request_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let request_line = &head[..request_end];
    let mut said = Said::after(request_line.strip_suffix(b"\r").unwrap_or(request_line));
    let mut start = request_end + 1;
    while start < head.len() {
        let end = memchr::memchr(b'\n', &head[start..]).map_or(head.len(), |i| start + i);
        let line = &head[start..end];
        start = end + 1;
        // Both names start with `c` or `t`, in either case; no other line can match them.
        if matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            said.header_line(line.strip_suffix(b"\r").unwrap_or(line));
        }
    }
    said.state()
}

/// What a head said about its framing, line by line.
#[derive(Default)]
struct Said {
    /// The request line was HTTP/2's preface.
    leaves_http1: bool,
    /// Content-Length was present; the first one's value, if it was a number.
    has_cl: bool,
    content_length: Option<u64>,
    /// Transfer-Encoding was present; the last one ended with `chunked`.
    has_te: bool,
    chunked: bool,
}

impl Said {
    /// Nothing said yet after `request_line` (without its line end).
    fn after(request_line: &[u8]) -> Self {
        // HTTP/2's preface looks like a request line; nothing after it is HTTP/1. (CONNECT is
        // not such a case: it is refused, never tunnelled, so the connection stays HTTP/1.)
        Self {
            leaves_http1: request_line.ends_with(b"HTTP/2.0"),
            ..Self::default()
        }
    }

    /// One header line (without its line end).
    fn header_line(&mut self, line: &[u8]) {
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            if !self.has_cl {
                self.content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            }
            self.has_cl = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.has_te = true;
            // As hyper: chunked when it is the last coding of the last header.
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }

    /// The state after the head, and whether it had both framing headers.
    fn state(self) -> (State, bool) {
        if self.has_cl && self.has_te {
            return (State::Off, true);
        }
        let next = if self.leaves_http1 {
            State::Off
        } else if self.has_te {
            if self.chunked {
                State::ChunkSize {
                    size: 0,
                    digits: false,
                    ext: false,
                }
            } else {
                State::Off
            }
        } else if self.has_cl {
            match self.content_length {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            }
        } else {
            State::Head
        };
        (next, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `after_head`'s lines as first found: every line split off and read, none skipped.
    fn after_head_lines(head: &[u8]) -> (State, bool) {
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut said = Said::after(lines.next().unwrap_or_default());
        for line in lines {
            said.header_line(line);
        }
        said.state()
    }

    /// The scanner's head handling as first written, one byte at a time: the reference the
    /// slice-based [`Scanner::feed_head`] must agree with.
    fn feed_bytewise(s: &mut Scanner, data: &[u8]) -> bool {
        for &b in data {
            if s.state != State::Head {
                // Bodies and chunks as the scanner follows them, one byte at a time too.
                if s.feed(&[b]) {
                    return true;
                }
                continue;
            }
            if !(s.head.is_empty() && (b == b'\r' || b == b'\n')) {
                s.head.push(b);
            }
            if b == b'\n' && (s.head.ends_with(b"\n\n") || s.head.ends_with(b"\n\r\n")) {
                let head = std::mem::take(&mut s.head);
                let (next, conflict) = after_head(&head);
                s.state = next;
                if conflict {
                    return true;
                }
            } else if s.head.len() > s.max_head {
                s.state = State::Off;
            }
        }
        false
    }

    /// Pieces requests are made of, smuggling spellings included.
    const PIECES: [&str; 16] = [
        "GET / HTTP/1.1\r\n",
        "POST /a HTTP/1.1\r\n",
        "Content-Length: 3\r\n",
        "content-length:0\r\n",
        "Transfer-Encoding: chunked\r\n",
        "transfer-encoding: gzip, chunked\n",
        "Host: a\r\n",
        "\r\n",
        "\n",
        "\r",
        "abc",
        "3\r\nabc\r\n0\r\n\r\n",
        "X: \r\n\r",
        "Upgrade: websocket\r\n",
        "PRI * HTTP/2.0\r\n",
        "Authorization: Bearer aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Slice-based and byte-by-byte scanning agree on every input, cut anywhere, with
        /// any head limit: the same flags, and the same state after every read.
        #[test]
        fn slices_agree_with_bytes(
            picks in proptest::collection::vec(0..PIECES.len(), 0..24),
            cuts in proptest::collection::vec(1usize..40, 1..12),
            max_head in prop_oneof![Just(16 * 1024), 8usize..120],
        ) {
            let input: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].bytes()).collect();
            let (mut fast, mut slow) = (Scanner::new(max_head), Scanner::new(max_head));
            let mut rest = &input[..];
            let mut k = 0;
            while !rest.is_empty() {
                let n = cuts[k % cuts.len()].min(rest.len());
                k += 1;
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                prop_assert_eq!(fast.feed(piece), feed_bytewise(&mut slow, piece));
                prop_assert_eq!(&fast.state, &slow.state);
                if fast.state != State::Off {
                    prop_assert_eq!(&fast.head, &slow.head);
                }
            }
        }
    }

    /// Lines for `after_head_agrees`: spellings the memchr reading skips or looks into.
    const LINES: [&str; 10] = [
        "CONTENT-LENGTH: 12\r\n",
        "tRaNsFeR-eNcOdInG:chunked\r\n",
        " Content-Length: 1\r\n",
        "Content-Length : 1\r\n",
        "\tTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Content-Length: 1\r\r\n",
        "TE: trailers\r\n",
        "Connection: close\r\n",
        "Content-Type: text/plain\r\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// The memchr reading of a head gives what the plain line-by-line reading gives, for
        /// heads of the pieces above, known spellings and arbitrary bytes.
        #[test]
        fn after_head_agrees(
            parts in proptest::collection::vec(
                prop_oneof![
                    (0..PIECES.len()).prop_map(|i| PIECES[i].as_bytes().to_vec()),
                    (0..LINES.len()).prop_map(|i| LINES[i].as_bytes().to_vec()),
                    proptest::collection::vec(
                        prop_oneof![
                            Just(b':'), Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'c'),
                            Just(b'T'), Just(b'0'), Just(b'7'), Just(b','), any::<u8>(),
                        ],
                        0..12,
                    ),
                ],
                0..16,
            ),
        ) {
            let head: Vec<u8> = parts.concat();
            prop_assert_eq!(after_head(&head), after_head_lines(&head));
        }
    }

    /// Feeds `input` in pieces of `step` bytes; true if a conflict was flagged.
    fn flagged(input: &str, step: usize) -> bool {
        let mut s = Scanner::new(16 * 1024);
        let mut any = false;
        for piece in input.as_bytes().chunks(step) {
            any |= s.feed(piece);
        }
        any
    }

    fn both_ways(input: &str) -> bool {
        let whole = flagged(input, input.len().max(1));
        assert_eq!(whole, flagged(input, 1), "byte-by-byte differs: {input:?}");
        whole
    }

    #[test]
    fn flags_both_headers_in_either_order() {
        assert!(both_ways(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(both_ways(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let cl = "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                       a;x=y\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        let bad = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!both_ways(cl));
        assert!(!both_ways(chunked));
        assert!(both_ways(&format!("{cl}{bad}")));
        assert!(both_ways(&format!("{chunked}\r\n{bad}")));
        assert!(both_ways(&format!("GET / HTTP/1.1\r\n\r\n{bad}")));
    }

    #[test]
    fn body_bytes_are_not_headers() {
        let body = "\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let req = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert!(!both_ways(&req));
        let chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        assert!(!both_ways(&chunked));
    }

    #[test]
    fn a_request_asking_for_an_upgrade_is_followed_like_any_other() {
        // The upstream may refuse it; only the guard's upgraded check ends the watch.
        let bad = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let ask = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(both_ways(&format!("{ask}{bad}")));
    }

    #[test]
    fn a_connect_is_followed_like_any_other_request() {
        // It is never tunnelled (405, connection closed): whatever follows is still checked,
        // its body included.
        let bad = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for connect in [
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "connect a:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(both_ways(&format!("{connect}{bad}")), "{connect:?}");
        }
        let mut s = Scanner::new(16 * 1024);
        assert!(!s.feed(b"CONNECT a:443 HTTP/1.1\r\n\r\n"));
        assert_eq!(s.state, State::Head);
    }

    #[test]
    fn stops_watching_what_it_cannot_follow() {
        let bad = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        ] {
            assert!(!both_ways(&format!("{first}{bad}")), "{first:?}");
        }
        let mut s = Scanner::new(64);
        assert!(!s.feed(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100)).as_bytes()));
        assert_eq!(s.state, State::Off);
    }
}
