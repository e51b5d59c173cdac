//! Hostile and misbehaving clients, over raw TCP: ambiguous framing, oversized and slow
//! headers, too many connections, idle keep-alive connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::assert_metric;
use support::scenario::Scenario;
use support::upstream::{self, MockUpstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous upper bound for "the proxy reacted": far above every timeout configured here.
const DEADLINE: Duration = Duration::from_secs(5);
/// Sanity bound for "closed at about the configured timeout" (the timeouts here are 500 ms).
const CLOSE_BOUND: Duration = Duration::from_secs(3);

async fn proxy_for(up: &MockUpstream, server: &str) -> support::Proxy {
    Scenario::pass_through(up).yaml(server).start().await
}

/// Reads one HTTP/1.1 response; returns the status and the headers and body as text (for
/// messages and checks). Panics when nothing complete arrives within [`DEADLINE`].
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let r = tokio::time::timeout(DEADLINE, support::raw::read_response(s))
        .await
        .expect("no response in time");
    (r.status, format!("{:?}\n{}", r.headers, r.text()))
}

/// Waits until the peer closes `s` (read returns 0 or an error), discarding anything it sends
/// first. Returns how long that took; panics after `deadline`.
async fn wait_closed<R: AsyncRead + Unpin>(s: &mut R, deadline: Duration) -> Duration {
    let start = Instant::now();
    let fut = async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, fut)
        .await
        .expect("the proxy did not close the connection in time");
    start.elapsed()
}

/// Waits until the proxy closes `s` at one of this file's 500 ms timeouts (`which`): not
/// before about 400 ms, and within [`CLOSE_BOUND`].
async fn closed_at_the_timeout<R: AsyncRead + Unpin>(s: &mut R, which: &str) {
    let elapsed = wait_closed(s, CLOSE_BOUND).await;
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the {which} timeout"
    );
}

/// Sends `raw`, returns the response status, and checks the upstream was never reached.
async fn refused_before_upstream(raw: &str) -> (u16, String) {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "").await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let (status, text) = read_response(&mut s).await;
    // The connection must not be reused for whatever bytes follow.
    wait_closed(&mut s, DEADLINE).await;
    assert_eq!(up.hits(), 0, "the upstream saw the request: {text}");
    proxy.shutdown().await;
    (status, text)
}

#[tokio::test]
async fn content_length_then_transfer_encoding_is_refused() {
    let (status, text) = refused_before_upstream(
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn transfer_encoding_then_content_length_is_refused() {
    let (status, text) = refused_before_upstream(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn conflicting_framing_after_a_chunked_request_is_refused() {
    // A first, well-formed chunked request on the connection is forwarded; the second one, on
    // the same keep-alive connection, has both headers and must not be.
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "").await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(
        b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;ext=1\r\nbody\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"body\":\"body\""), "{text}");
    assert_eq!(up.hits(), 1);
    s.write_all(
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 400, "{text}");
    wait_closed(&mut s, DEADLINE).await;
    assert_eq!(up.hits(), 1, "the conflicting request reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn conflicting_framing_after_a_refused_upgrade_is_refused() {
    // Asking for an upgrade the upstream refuses leaves the connection HTTP/1: the framing
    // check must go on watching it (it used to stop at any Upgrade header).
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "").await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "the mock upstream does not upgrade: {text}");
    assert_eq!(up.hits(), 1);
    s.write_all(
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 400, "{text}");
    wait_closed(&mut s, DEADLINE).await;
    assert_eq!(up.hits(), 1, "the conflicting request reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_that_looks_like_headers_is_not_mistaken_for_framing() {
    // Body bytes that read like a conflicting head must not trip the framing check.
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "").await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    let body = "x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let req = format!(
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}\
         GET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"path\":\"/b\""), "{text}");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let (status, text) = refused_before_upstream(
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "server: { max_header_bytes: 16384 }").await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let req = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    // The proxy may stop reading (and reset) before taking all of it; that is fine.
    let _ = s.write_all(req.as_bytes()).await;
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 431, "{text}");
    assert_eq!(up.hits(), 0);
    // A head just under the limit still works.
    let ok = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(ok.as_bytes()).await.unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "server: { header_read_timeout: 500ms }").await;
    let s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    let (mut rd, wr) = s.into_split();
    // One byte every 50 ms, never finishing the head.
    let writer = trickle(wr, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ");
    closed_at_the_timeout(&mut rd, "header").await;
    writer.abort();
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

/// Sends `head` one byte every 50 ms, then `a` forever, never finishing a head.
fn trickle(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    head: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_off_at_the_header_read_timeout() {
    let up = upstream::start("u").await;
    // The idle timeout is far longer: the first head's clock runs from the connection's start.
    let proxy = proxy_for(
        &up,
        "server: { header_read_timeout: 500ms, idle_timeout: 30s }",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    closed_at_the_timeout(&mut s, "header").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slow_second_head_on_a_keep_alive_connection_is_cut_off() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(
        &up,
        "server: { header_read_timeout: 500ms, idle_timeout: 30s }",
    )
    .await;
    let s = keep_alive_connection(proxy.addr.unwrap()).await;
    let (mut rd, wr) = s.into_split();
    let writer = trickle(wr, b"GET /second HTTP/1.1\r\nHost: a\r\nX-Slow: ");
    closed_at_the_timeout(&mut rd, "header").await;
    writer.abort();
    assert_eq!(up.hits(), 1, "only the first request reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_quiet_keep_alive_connection_outlives_the_header_read_timeout() {
    let up = upstream::start("u").await;
    // Between requests the idle timeout rules, not the header timeout (as nginx's
    // keepalive_timeout and client_header_timeout).
    let proxy = proxy_for(
        &up,
        "server: { header_read_timeout: 300ms, idle_timeout: 30s }",
    )
    .await;
    let mut s = keep_alive_connection(proxy.addr.unwrap()).await;
    let mut chunk = [0u8; 64];
    let quiet = tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await;
    assert!(
        quiet.is_err(),
        "the connection was closed or sent {quiet:?} while quiet"
    );
    s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_head_behind_a_slow_request_gets_its_own_header_timeout() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(
        &up,
        "server: { header_read_timeout: 300ms, idle_timeout: 30s }",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    // The second head starts arriving at once but the first request takes longer than the
    // header timeout; the second head's clock starts when it is waited for.
    s.write_all(b"GET /slow?ms=800 HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\n")
        .await
        .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    s.write_all(b"Host: a\r\n\r\n").await.unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

/// One GET on a fresh keep-alive connection; returns the open connection.
async fn keep_alive_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    s
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "server: { max_connections: 4 }").await;
    let addr = proxy.addr.unwrap();
    let rejected = "portcullis_connections_rejected_total{listener=\"plain\"}";
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(keep_alive_connection(addr).await);
    }
    assert_metric(&proxy.metrics().await, rejected, 0.0);

    // The fifth is accepted by the kernel, then closed by the proxy without an answer.
    support::raw::closed_without_answer(
        addr,
        b"GET /over HTTP/1.1\r\nHost: a\r\n\r\n",
        DEADLINE,
        "the fifth connection",
    )
    .await;
    assert_metric(&proxy.metrics().await, rejected, 1.0);

    // The admin listener is not counted and stays responsive.
    let health = support::client::get(&format!("http://{}/healthz", proxy.admin)).await;
    assert_eq!(health.status, 200);

    // The held connections still work.
    for s in &mut held {
        s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(s).await.0, 200);
    }
    assert_eq!(up.hits(), 8);

    // Once they close, their slots are free again.
    drop(held);
    support::client::wait_status(DEADLINE, &proxy.url("/after"), 200).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up, "server: { idle_timeout: 500ms }").await;
    let mut s = keep_alive_connection(proxy.addr.unwrap()).await;
    closed_at_the_timeout(&mut s, "idle").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn connection_that_never_sends_a_request_is_closed_when_idle() {
    let up = upstream::start("u").await;
    // The header timeout is far longer, so only the idle timeout can close it in time.
    let proxy = proxy_for(
        &up,
        "server: { idle_timeout: 500ms, header_read_timeout: 30s }",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    closed_at_the_timeout(&mut s, "idle").await;
    proxy.shutdown().await;
}
