//! Request bodies that never come (`server.body_read_timeout`): over raw HTTP/1 sockets and
//! HTTP/2 streams, on a proxied route and on Portcullis's own paths. A stalled body ends its
//! request with 408 and gives its connection slot back (HTTP/1: the connection is closed;
//! HTTP/2: the stream ends and the connection goes on); own paths refuse other methods with
//! 405 before reading any body; a request answered before its body is read does not keep its
//! connection either.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use support::idp::{MockIdp, SigningKey};
use support::raw::{self, RawResp};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use support::{Proxy, assert_metric, client, metric_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for "the proxy reacted". Shorter than the upstream's response timeout (5 s in
/// `support::scenario::Scenario::upstream`), so a stalled body cannot pass as a 504, and far shorter than
/// the 60 s body timeout of the tests that check nothing waits for a body.
const DEADLINE: Duration = Duration::from_secs(3);

/// The body timeout of the tests where it should fire.
const SHORT: &str = "body_read_timeout: 300ms";
/// The body timeout of the tests where nothing should wait for it.
const LONG: &str = "body_read_timeout: 60s";

/// Keeps the other timeouts out of the way: only the body timeout (or hyper's close) can end
/// a request here in time.
const QUIET: [&str; 2] = ["header_read_timeout: 30s", "idle_timeout: 30s"];

const BACKCHANNEL: &str = "/oauth2/backchannel_logout";

fn timeouts(m: &str, route: &str) -> f64 {
    metric_value(
        m,
        &format!("portcullis_request_body_timeouts_total{{route=\"{route}\"}}"),
    )
}

/// A proxy with one route `app` (`/`) to `up`, and `server` settings.
async fn proxied(up: &MockUpstream, server: &[&str]) -> Proxy {
    quiet(Scenario::new().upstream("app", up), server)
        .start()
        .await
}

/// `scenario` with the one route `app` (`/`, no auth) and `server` settings plus [`QUIET`].
fn quiet(scenario: Scenario, server: &[&str]) -> Scenario {
    scenario
        .routes_yaml("  - { name: app, path: /, upstream: app }")
        .server(&[server, &QUIET[..]].concat())
}

/// A proxy with browser sessions (own paths under `/oauth2/`) and `server` settings.
struct SessionEnv {
    _idp: MockIdp,
    _key: SigningKey,
    _up: MockUpstream,
    proxy: Proxy,
}

async fn with_sessions(server: &[&str]) -> SessionEnv {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/app").name("app"))
        .route(Route::either("/api").name("api"))
        .route(Route::open("/").name("open"))
        .sessions(&["cookie: { secure: false }"])
        .server(&[server, &QUIET[..]].concat())
        .start()
        .await;
    SessionEnv {
        _idp: idp,
        _key: key,
        _up: up,
        proxy,
    }
}

/// Opens a connection and sends a request head announcing a 100-byte body, then `sent` of
/// it (and nothing more).
async fn stalled(addr: SocketAddr, method: &str, target: &str, sent: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: a\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// The response on `s`, within [`DEADLINE`].
async fn response(s: &mut TcpStream) -> RawResp {
    tokio::time::timeout(DEADLINE, raw::read_response(s))
        .await
        .expect("no response in time")
}

/// Checks that each connection gets a 408 (with `Connection: close`) and is then closed.
async fn each_gets_408_and_is_closed(held: &mut [TcpStream]) {
    for s in held {
        let r = response(s).await;
        assert_eq!(r.status, 408, "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        raw::read_until_closed(s, DEADLINE).await;
    }
}

/// Waits until a new connection is served (the held ones gave their slots back).
async fn served_again(proxy: &Proxy) {
    client::wait_status(DEADLINE, &proxy.url("/after"), 200).await;
}

/// A request body that announces 100 bytes and never sends any.
struct Stalled;

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(100)
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<BoxBody<Bytes, Infallible>>;

/// POSTs 100 bytes to `/sink` in ten pieces 100 ms apart; the upstream must get them all.
async fn moving_upload_goes_through(addr: SocketAddr) {
    let mut s = stalled(addr, "POST", "/sink", b"").await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"0123456789").await.unwrap();
    }
    let r = response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], 100);
}

/// Sends `n` requests `method path` with stalled bodies on one HTTP/2 connection at once;
/// returns their statuses (each within [`DEADLINE`]).
async fn stalled_streams(sender: &H2Sender, method: &str, path: &str, n: usize) -> Vec<u16> {
    let sends = (0..n).map(|_| {
        let mut sender = sender.clone();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://a{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "100")
            .body(Stalled.boxed())
            .unwrap();
        async move {
            let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
                .await
                .expect("no response on the stream in time")
                .expect("stream failed before a response");
            resp.status().as_u16()
        }
    });
    futures_util::future::join_all(sends).await
}

/// Sends `n` requests `method path` with stalled bodies on `sender` at once: each must be
/// answered `want`, and the connection must serve a GET after them.
async fn stalled_streams_answered(
    sender: &H2Sender,
    method: &str,
    path: &str,
    n: usize,
    want: u16,
) {
    let statuses = stalled_streams(sender, method, path, n).await;
    assert!(
        statuses.iter().all(|s| *s == want),
        "{method} {path}: {statuses:?}"
    );
    assert_eq!(h2_get(sender, "/after").await, 200);
}

/// An HTTP/2 connection that has been served a GET: with a small `max_connections`, the slots
/// of connections the server just closed may still be held for a moment, and a connection
/// accepted then is closed at once.
async fn h2_served(addr: SocketAddr) -> H2Sender {
    support::wait_for(DEADLINE, "an HTTP/2 connection is served", || async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = Request::get("http://a/before")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        let ok = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .ok()?
            .ok()?
            .status()
            == 200;
        ok.then_some(sender)
    })
    .await
}

/// A GET on the HTTP/2 connection: the connection still serves.
async fn h2_get(sender: &H2Sender, path: &str) -> u16 {
    let req = Request::get(format!("http://a{path}"))
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let mut sender = sender.clone();
    tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("no response in time")
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn stalled_bodies_on_a_proxied_route_get_408_and_free_their_slots() {
    let up = upstream::start("u").await;
    let proxy = proxied(&up, &["max_connections: 4", SHORT]).await;
    let addr = proxy.addr.unwrap();
    // Every slot: two send nothing of the body, two a part of it and then nothing.
    let mut held = Vec::new();
    for sent in [&b""[..], b"", b"logout_token=", b"0123456789"] {
        held.push(stalled(addr, "POST", "/upload", sent).await);
    }
    each_gets_408_and_is_closed(&mut held).await;
    served_again(&proxy).await;
    let m = proxy.metrics().await;
    assert_eq!(timeouts(&m, "app"), 4.0);
    // The client's stall is not counted against the upstream.
    assert_metric(
        &m,
        "portcullis_upstream_errors_total{kind=\"protocol\",upstream=\"app\"}",
        0.0,
    );
    assert_metric(
        &m,
        "portcullis_http_requests_total{method=\"POST\",route=\"app\",status_class=\"4xx\"}",
        4.0,
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stalls_after_the_response_started_aborts_the_request() {
    // The upstream streams the body back as it arrives: its response has started when the
    // body stalls, so the request is aborted (the connection closed mid-response) instead of
    // answered with 408.
    let up = upstream::start("u").await;
    let proxy = proxied(&up, &[SHORT]).await;
    let mut s = stalled(proxy.addr.unwrap(), "POST", "/stream-echo", b"0123456789").await;
    let mut head = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                s.read(&mut byte).await.unwrap(),
                1,
                "closed before the head"
            );
            head.push(byte[0]);
        }
    })
    .await
    .expect("no response head in time");
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    raw::read_until_closed(&mut s, DEADLINE).await;
    assert_eq!(timeouts(&proxy.metrics().await, "app"), 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_that_keeps_coming_is_not_cut_off() {
    // Each piece comes well within the timeout, the whole body takes longer than it.
    let up = upstream::start("u").await;
    let proxy = proxied(&up, &["body_read_timeout: 400ms"]).await;
    moving_upload_goes_through(proxy.addr.unwrap()).await;
    assert_eq!(timeouts(&proxy.metrics().await, "app"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn stalled_http2_streams_get_408_and_the_connection_goes_on() {
    let up = upstream::start("u").await;
    let proxy = proxied(&up, &[SHORT]).await;
    stalled_streams_answered(
        &client::h2_sender(proxy.addr.unwrap()).await,
        "POST",
        "/upload",
        20,
        408,
    )
    .await;
    assert_eq!(timeouts(&proxy.metrics().await, "app"), 20.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn stalled_back_channel_logouts_get_408_and_free_their_slots() {
    let e = with_sessions(&["max_connections: 4", SHORT]).await;
    let addr = e.proxy.addr.unwrap();
    let mut held = Vec::new();
    for sent in [&b""[..], b"", b"", b"logout_token=eyJ"] {
        held.push(stalled(addr, "POST", BACKCHANNEL, sent).await);
    }
    each_gets_408_and_is_closed(&mut held).await;
    served_again(&e.proxy).await;
    assert_eq!(timeouts(&e.proxy.metrics().await, "portcullis"), 4.0);

    // HTTP/2: the streams end, the connection serves on.
    stalled_streams_answered(&client::h2_sender(addr).await, "POST", BACKCHANNEL, 10, 408).await;
    assert_eq!(timeouts(&e.proxy.metrics().await, "portcullis"), 14.0);
    e.proxy.shutdown().await;
}

#[tokio::test]
async fn own_paths_answer_other_methods_with_405_without_waiting_for_a_body() {
    // The body timeout is far longer than the deadline: an answer in time proves that no body
    // was waited for.
    let e = with_sessions(&[LONG]).await;
    let addr = e.proxy.addr.unwrap();
    for (method, path, allow) in [
        ("GET", BACKCHANNEL, "POST"),
        ("PUT", BACKCHANNEL, "POST"),
        ("PUT", "/oauth2/callback", "GET, HEAD"),
        ("POST", "/oauth2/callback", "GET, HEAD"),
        ("DELETE", "/oauth2/sign_out", "GET, POST"),
    ] {
        let mut s = stalled(addr, method, path, b"").await;
        let r = response(&mut s).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        // The announced body never came: the connection cannot carry another request.
        raw::read_until_closed(&mut s, DEADLINE).await;
    }
    // A sign-out POST is answered without its body being read.
    let mut s = stalled(addr, "POST", "/oauth2/sign_out", b"").await;
    let r = response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    raw::read_until_closed(&mut s, DEADLINE).await;

    // HTTP/2: the same, per stream.
    stalled_streams_answered(&client::h2_sender(addr).await, "GET", BACKCHANNEL, 5, 405).await;
    assert_eq!(timeouts(&e.proxy.metrics().await, "portcullis"), 0.0);
    e.proxy.shutdown().await;
}

#[tokio::test]
async fn requests_refused_before_their_body_do_not_hold_the_connection() {
    // 400, 401 and a sign-in redirect, each for a request announcing a body that never comes:
    // the body is never read, and the connection is closed after the answer instead of
    // waiting for the body (the body timeout here is far longer than the deadline).
    let e = with_sessions(&["max_connections: 2", LONG]).await;
    let addr = e.proxy.addr.unwrap();
    for (method, path, extra, want) in [
        ("POST", "/x/../y", "", 400),
        ("POST", "/api/x", "", 401),
        ("POST", "/app/x", "", 401),
        ("GET", "/app/x", "Accept: text/html\r\n", 302),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{extra}Content-Length: 100\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let r = response(&mut s).await;
        assert_eq!(r.status, want, "{method} {path}: {}", r.text());
        raw::read_until_closed(&mut s, DEADLINE).await;
    }
    served_again(&e.proxy).await;
    // HTTP/2: each stream is answered at once, and the connection serves on.
    stalled_streams_answered(&h2_served(addr).await, "POST", "/api/x", 5, 401).await;
    e.proxy.shutdown().await;
}

/// A proxy like [`proxied`] whose upstream answers within `response_timeout`.
async fn proxied_with_upstream_timeout(up: &MockUpstream, server: &[&str], timeout: &str) -> Proxy {
    let response_timeout = format!("response_timeout: {timeout}");
    let scenario = Scenario::new().upstream_at("app", &[up.url()], &[&response_timeout]);
    let scenario = quiet(scenario, server);
    assert!(scenario.to_yaml().contains(&response_timeout));
    scenario.start().await
}

fn upstream_timeouts(m: &str) -> f64 {
    metric_value(
        m,
        "portcullis_upstream_errors_total{kind=\"response_timeout\",upstream=\"app\"}",
    )
}

#[tokio::test]
async fn a_stalled_body_is_the_clients_408_even_when_the_upstream_timeout_is_shorter() {
    // The defaults have response_timeout (30s) below body_read_timeout (60s): the upstream's
    // clock stands still while the client owes the body, so the client gets 408, and the
    // upstream is not counted as timing out.
    let up = upstream::start("u").await;
    let proxy = proxied_with_upstream_timeout(&up, &["body_read_timeout: 800ms"], "200ms").await;
    let mut s = stalled(proxy.addr.unwrap(), "POST", "/sink", b"0123456789").await;
    let r = response(&mut s).await;
    assert_eq!(r.status, 408, "{}", r.text());
    let m = proxy.metrics().await;
    assert_eq!(timeouts(&m, "app"), 1.0);
    assert_eq!(upstream_timeouts(&m), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upload_longer_than_the_upstream_timeout_is_not_cut_while_it_moves() {
    // Pieces every 100 ms for about a second, against a 300 ms upstream timeout: the clock
    // runs from the last piece, so a moving upload is never the upstream's timeout.
    let up = upstream::start("u").await;
    let proxy = proxied_with_upstream_timeout(&up, &["body_read_timeout: 2s"], "300ms").await;
    moving_upload_goes_through(proxy.addr.unwrap()).await;
    assert_eq!(upstream_timeouts(&proxy.metrics().await), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_after_the_body_still_times_out() {
    let up = upstream::start("u").await;
    let proxy = proxied_with_upstream_timeout(&up, &["body_read_timeout: 2s"], "300ms").await;
    let body = "0123456789".repeat(10);
    let req = format!(
        "POST /slow?ms=5000 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{body}"
    );
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let r = response(&mut s).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(upstream_timeouts(&proxy.metrics().await), 1.0);
    proxy.shutdown().await;
}
