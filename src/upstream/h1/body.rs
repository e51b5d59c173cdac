//! The response body of a codec exchange: it owns the connection and reads from it when it
//! is polled (by the hyper server's connection task: no channel, no task of its own).
//!
//! At its clean end the connection goes back to the worker's pool, and only then: the
//! framing complete, keep-alive on both sides (decided when the head arrived, see `super`:
//! HTTP/1.1 or HTTP/1.0 with `Connection: keep-alive`, no `Connection: close` in the request
//! or the response, the request written whole before the response came), and no byte
//! buffered past the response. Anything else, a body
//! dropped before its end, an error, a close-delimited body, closes the connection.
//!
//! A response that arrives before the request body is written (an early 413, say) keeps
//! the rest of the body being written while the response is read (best effort: a write
//! that fails stops the writing, not the reading); that connection is never reused.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::Error;
use super::decode::{Chunked, Framing, Step};
use super::encode::{WriteError, Writer};
use super::io::{Io, give_buf};
use super::timer::Timer;
use super::{Conn, Upgraded};
use crate::upstream::body::{BoxError, ClientBody};
use crate::upstream::pool::WorkerPool;

/// The body of a response read by the codec.
pub struct ResponseBody<B> {
    decode: Decode,
    /// The connection while the body is read.
    live: Option<Live<B>>,
    /// Where the connection goes at a clean end (`None`: it closes).
    home: Option<Home>,
    /// An error for the next poll (found while looking ahead, or held back one poll).
    failed: Option<Error>,
    /// After a `101`: the connection, for the tunnel.
    upgrade: Option<Upgraded>,
}

/// Where a reusable connection goes back to, with its response timer.
pub(crate) struct Home {
    pub(crate) pool: Arc<WorkerPool<Conn>>,
    pub(crate) address: usize,
    /// The response was HTTP/1.0 (with `Connection: keep-alive`).
    pub(crate) http10: bool,
    /// The connection's response timer.
    pub(crate) timer: Option<Timer>,
}

struct Live<B> {
    io: Io,
    buf: BytesMut,
    /// A request body still being written (the response came early; boxed: rare, and the
    /// body lives as long as the response).
    writer: Option<Box<Writer<B>>>,
}

enum Decode {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// What one look at the buffered bytes gave.
enum Got {
    Frame(Frame<Bytes>),
    End,
    More,
    Failed(Error),
}

// === impl ResponseBody ===

impl<B: ClientBody> ResponseBody<B> {
    /// The body after a head with `framing`: `buf` holds the bytes read past the head;
    /// `writer` a request body still being written; `home` where a reusable connection
    /// goes (`None` if it must close).
    pub(crate) fn new(
        framing: Framing,
        io: Io,
        buf: BytesMut,
        writer: Option<Box<Writer<B>>>,
        home: Option<Home>,
    ) -> Self {
        let decode = match framing {
            Framing::Empty | Framing::Length(0) | Framing::Upgrade => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Chunked(Chunked::new()),
            Framing::Close => Decode::Close,
        };
        let mut body = Self {
            decode,
            live: Some(Live { io, buf, writer }),
            home: home.filter(|_| !matches!(framing, Framing::Close | Framing::Upgrade)),
            failed: None,
            upgrade: None,
        };
        if framing == Framing::Upgrade {
            if let Some(live) = body.live.take() {
                body.upgrade = Some(Upgraded::new(live.io, live.buf.freeze()));
            }
        } else if matches!(body.decode, Decode::Done) {
            body.end();
        }
        body
    }

    /// The upgraded connection after a `101` (once).
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        self.upgrade.take()
    }

    /// The body is complete: the connection goes back to its pool when it can be reused,
    /// and closes otherwise.
    fn end(&mut self) {
        self.decode = Decode::Done;
        let Some(live) = self.live.take() else {
            return;
        };
        let reusable = live.writer.is_none() && live.buf.is_empty();
        give_buf(live.buf);
        if let (true, Some(home)) = (reusable, self.home.take()) {
            home.pool
                .checkin(home.address, Conn::new(live.io, home.http10, home.timer));
        }
    }

    /// Fails the body: the connection closes.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.decode = Decode::Done;
        self.home = None;
        if let Some(live) = self.live.take() {
            give_buf(live.buf);
        }
        Poll::Ready(Some(Err(e.into())))
    }

    /// Fails the body at the next poll: one `Pending` first lets hyper's server flush the
    /// head and the data it already has (as it does with hyper's client, whose connection task
    /// reports the error later), so the client gets what arrived before the break.
    fn fail_next(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.home = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Decodes from what is buffered.
    fn decode_buffered(&mut self) -> Got {
        let Some(live) = self.live.as_mut() else {
            return Got::End;
        };
        let buf = &mut live.buf;
        match &mut self.decode {
            Decode::Done => Got::End,
            Decode::Length(left) => {
                if buf.is_empty() {
                    return Got::More;
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    self.end();
                }
                Got::Frame(Frame::data(data))
            }
            Decode::Close => {
                if buf.is_empty() {
                    return Got::More;
                }
                Got::Frame(Frame::data(buf.split().freeze()))
            }
            Decode::Chunked(c) => match c.step(buf) {
                Err(e) => Got::Failed(e),
                Ok(Step::More) => Got::More,
                Ok(Step::End) => {
                    self.end();
                    Got::End
                }
                Ok(Step::Trailers(t)) => {
                    self.end();
                    Got::Frame(Frame::trailers(t))
                }
                Ok(Step::Data(d)) => {
                    // The end may already be buffered: then the connection goes back now,
                    // before the server polls again (it will not, at the end).
                    match c.settle(buf) {
                        Err(e) => self.failed = Some(e),
                        Ok(()) if c.is_end() => self.end(),
                        Ok(()) => {}
                    }
                    Got::Frame(Frame::data(d))
                }
            },
        }
    }

    /// Keeps writing a request body the response came early for.
    fn drive_writer(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let Some(w) = live.writer.as_mut() else {
            return Ok(());
        };
        match w.poll_write(cx, &mut live.io) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(WriteError::Io(_))) => {
                // Written, or the upstream stopped taking it: either way the connection is
                // not reused (home was never set), and reading goes on.
                live.writer = None;
                self.home = None;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Body(e))) => Err(e),
            Poll::Pending => Ok(()),
        }
    }
}

impl<B: ClientBody> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return this.fail(e);
        }
        if let Err(e) = this.drive_writer(cx) {
            return this.fail(e);
        }
        loop {
            match this.decode_buffered() {
                Got::Frame(f) => return Poll::Ready(Some(Ok(f))),
                Got::End => return Poll::Ready(None),
                Got::Failed(e) => return this.fail_next(e, cx),
                Got::More => {}
            }
            let Some(live) = this.live.as_mut() else {
                return Poll::Ready(None);
            };
            match live.io.poll_read_buf(cx, &mut live.buf) {
                Poll::Ready(Ok(0)) => {
                    if matches!(this.decode, Decode::Close) {
                        this.end();
                        return Poll::Ready(None);
                    }
                    return this.fail_next(Error::IncompleteBody, cx);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail_next(Error::Io(e), cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done) && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        // Not at its end: the connection closes with it (the buffer is kept for reuse).
        if let Some(live) = self.live.take() {
            give_buf(live.buf);
        }
    }
}
