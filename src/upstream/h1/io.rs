//! The codec's connections: TCP or TLS over TCP, opened like the hyper path's connector
//! (`hyper_rustls` over `HttpConnector`: the same TLS client configuration and verification,
//! SNI from the address's host, ALPN `http/1.1` only, `connect_timeout` for the TCP connect,
//! split evenly over the resolved addresses, `TCP_NODELAY`), and the per-thread free list of
//! buffers that requests borrow while they run.
//!
//! Security notes: the server name checked against the certificate is the configured
//! address's host; nothing the client sent takes part in it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use http::Uri;
use http::uri::Scheme;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::BoxError;

/// A buffer's size when it is made; reads ask for at least [`READ_MIN`] free bytes.
const BUF_SIZE: usize = 8 * 1024;
/// The fewest free bytes a read offers.
pub(crate) const READ_MIN: usize = 4 * 1024;
/// Buffers kept per thread between requests.
const FREE_MAX: usize = 32;

thread_local! {
    /// Buffers no request holds, most recently returned last: idle pooled connections hold
    /// none, so a worker's memory for buffers follows its requests in flight, not its
    /// connections.
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// One upstream connection's byte stream.
pub enum Io {
    /// `http://`.
    Plain(TcpStream),
    /// `https://` (boxed: the TLS state is large, and a pooled connection is moved around).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens codec connections to one upstream's addresses.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
}

// === impl Connector ===

impl Connector {
    /// `tls` with ALPN `http/1.1` only (as the hyper path's connector sets it).
    pub(crate) fn new(mut tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
        }
    }

    /// TCP to `uri`'s host and port (each resolved address in turn, the timeout split over
    /// them), then TLS for `https`.
    pub(crate) async fn connect(&self, uri: &Uri) -> Result<Io, BoxError> {
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address without host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addrs: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((bare, port)).await?.collect();
        if addrs.is_empty() {
            return Err(
                io::Error::new(io::ErrorKind::NotFound, "host resolved to no address").into(),
            );
        }
        let each = self.connect_timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX);
        let mut last: Option<io::Error> = None;
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(each, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
                }
            }
        }
        let Some(tcp) = tcp else {
            return Err(last
                .unwrap_or_else(|| io::Error::other("no address could be connected"))
                .into());
        };
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Io::Plain(tcp));
        }
        let name = ServerName::try_from(bare.to_string())?;
        let stream = self.tls.connect(name, tcp).await?;
        Ok(Io::Tls(Box::new(stream)))
    }
}

// === impl Io ===

impl Io {
    /// Whether an idle connection can carry a request: it must not be readable. Readable
    /// while idle means the upstream closed it (or reset it), or sent bytes nobody asked for;
    /// either way it is dropped. Polled with a no-op waker, so for a plain connection whose
    /// last read drained the socket this reads tokio's readiness bits only (no system call).
    pub(crate) fn idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Reads what is there into `buf`'s free space (at least [`READ_MIN`] bytes of it); 0
    /// bytes is the end of the stream.
    pub(crate) fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(READ_MIN);
        // tokio's read_buf fills the uninitialised tail without zeroing it (this crate
        // forbids the unsafe code that would take).
        let read = std::pin::pin!(self.read_buf(buf));
        read.poll(cx)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A buffer for one request: the most recently returned one of this thread, or a new one.
pub(crate) fn take_buf() -> BytesMut {
    let buf = FREE.with(|f| f.borrow_mut().pop());
    match buf {
        Some(mut b) => {
            // Reclaims the whole allocation when nothing else points into it any more.
            b.reserve(BUF_SIZE);
            b
        }
        None => BytesMut::with_capacity(BUF_SIZE),
    }
}

/// Gives a request's buffer back to this thread's free list (emptied; a small remainder of
/// an allocation still shared with response bytes is not worth keeping).
pub(crate) fn give_buf(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() < READ_MIN {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < FREE_MAX {
            f.push(buf);
        }
    });
}
