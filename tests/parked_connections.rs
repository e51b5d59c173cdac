//! Parked client connections: an HTTP/1 keep-alive connection quiet for `PARK_AFTER` drops
//! hyper's connection (its buffers and state) and waits for its client's next bytes with
//! nothing held; what the client sends then is served as on any connection: pipelined
//! requests in order, a head in pieces, an upgrade, the framing checks, the drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::scenario::Scenario;
use support::upstream::{self, MockUpstream};
use support::{Proxy, client, metric_value, raw, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);
const PARKED: &str = "portcullis_connections_parked{listener=\"plain\"}";

async fn proxy_for(up: &MockUpstream) -> Proxy {
    Scenario::pass_through(up)
        .server(&["idle_timeout: 60s", "shutdown_grace: 60s"])
        .start()
        .await
}

/// One GET on a fresh connection, then waits until the proxy parked it (the only one).
async fn parked_connection(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(&get("/first")).await.unwrap();
    let r = response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy
        .wait_metric(DEADLINE, "the quiet connection parked", PARKED, 1.0)
        .await;
    s
}

/// A keep-alive GET.
fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

async fn response(s: &mut TcpStream) -> raw::RawResp {
    tokio::time::timeout(DEADLINE, raw::read_response(s))
        .await
        .expect("no response in time")
}

#[tokio::test]
async fn a_parked_connection_serves_pipelined_requests_in_order_and_parks_again() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    assert_eq!(metric_value(&proxy.metrics().await, PARKED), 0.0);
    let mut s = parked_connection(&proxy).await;

    // Both heads in one write: the parked wait reads them (and a body) at once, hyper gets
    // all of it.
    let mut two = b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    two.extend_from_slice(&get("/third?x=1"));
    s.write_all(&two).await.unwrap();
    let second = response(&mut s).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["path"], "/second");
    assert_eq!(second.json()["body"], "hello");
    let third = response(&mut s).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(third.json()["path"], "/third");
    assert_eq!(third.json()["query"], "x=1");
    assert_eq!(up.hits(), 3);

    // Quiet again: parked again; the client's close ends it.
    proxy
        .wait_metric(DEADLINE, "parked again", PARKED, 1.0)
        .await;
    drop(s);
    proxy
        .wait_metric(DEADLINE, "the closed connection gone", PARKED, 0.0)
        .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_head_that_comes_in_pieces_after_a_park_is_served() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    let mut s = parked_connection(&proxy).await;
    s.write_all(b"GET /pie").await.unwrap();
    // The first bytes wake it; the rest reaches hyper's connection directly.
    proxy
        .wait_metric(DEADLINE, "woken by the first bytes", PARKED, 0.0)
        .await;
    s.write_all(b"ces HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/pieces");
    proxy.shutdown().await;
}

#[tokio::test]
async fn ambiguous_framing_after_a_park_is_refused_and_closes_the_connection() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    let mut s = parked_connection(&proxy).await;
    // Content-Length and Transfer-Encoding together, with a request hidden in the body.
    s.write_all(
        b"POST /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    let r = raw::parse_response(&rest).expect("an answer before the close");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        !String::from_utf8_lossy(&rest).contains("/hidden"),
        "the hidden request was answered"
    );
    assert_eq!(up.hits(), 1, "only the first request reached the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_websocket_upgrade_on_a_connection_that_was_parked() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    let addr = proxy.addr.unwrap();
    let s = parked_connection(&proxy).await;
    let mut socket = ws::open(s, format!("ws://{addr}/ws")).await;
    ws::echo(&mut socket, "after a park").await;
    // The tunnel outlives the HTTP connection; it ends with the client's close.
    drop(socket);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_drain_closes_a_parked_connection_at_once() {
    let up = upstream::start("u").await;
    let mut proxy = proxy_for(&up).await;
    let mut s = parked_connection(&proxy).await;
    let task = proxy.begin_shutdown();
    // shutdown_grace is 60s: the drain ends because the parked connection closed at once.
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    assert!(
        rest.is_empty(),
        "a parked connection got {rest:?} at the drain"
    );
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("shutdown waited on the parked connection")
        .unwrap();
}

#[tokio::test]
async fn the_idle_timeout_closes_a_parked_connection() {
    let up = upstream::start("u").await;
    let proxy = Scenario::pass_through(&up)
        .server(&["idle_timeout: 1500ms"])
        .start()
        .await;
    let mut s = parked_connection(&proxy).await;
    let started = tokio::time::Instant::now();
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    assert!(rest.is_empty(), "got {rest:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "closed after the idle timeout counted from the last request, not from the park"
    );
    proxy
        .wait_metric(DEADLINE, "the closed connection gone", PARKED, 0.0)
        .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_parked_until_its_header_timeout() {
    let up = upstream::start("u").await;
    let proxy = Scenario::pass_through(&up)
        .server(&["header_read_timeout: 700ms", "idle_timeout: 60s"])
        .start()
        .await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    // Parked from its start: nothing of hyper's exists until it sends.
    proxy
        .wait_metric(DEADLINE, "the new connection parked", PARKED, 1.0)
        .await;
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    assert!(rest.is_empty(), "got {rest:?}");
    proxy
        .wait_metric(DEADLINE, "the timed-out connection gone", PARKED, 0.0)
        .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_connection_is_never_parked() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    let addr: SocketAddr = proxy.addr.unwrap();
    let mut sender = client::h2_sender::<Full<Bytes>>(addr).await;
    let get = |path: &str| {
        Request::get(format!("http://a:{}{path}", addr.port()))
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let r = tokio::time::timeout(DEADLINE, sender.send_request(get("/h2")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Well past PARK_AFTER (500 ms): the quiet HTTP/2 connection stays as it is.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert_eq!(metric_value(&proxy.metrics().await, PARKED), 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = tokio::time::timeout(DEADLINE, sender.send_request(get("/h2/again")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connection_the_client_asked_to_close_is_closed_not_parked() {
    let up = upstream::start("u").await;
    let proxy = proxy_for(&up).await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    s.write_all(&raw::get("/bye", "a", &["Connection: close"]))
        .await
        .unwrap();
    let rest = raw::read_until_closed(&mut s, DEADLINE).await;
    assert_eq!(raw::parse_response(&rest).expect("an answer").status, 200);
    let mut more = [0u8; 1];
    assert_eq!(s.read(&mut more).await.unwrap_or(0), 0);
    assert_eq!(metric_value(&proxy.metrics().await, PARKED), 0.0);
    proxy.shutdown().await;
}
