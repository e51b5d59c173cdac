//! Request bodies on methods that rarely carry one (GET, DELETE, OPTIONS): whatever the client
//! sends reaches the upstream, over HTTP/1 (Content-Length and chunked) and HTTP/2 (with and
//! without `content-length`). hyper's HTTP/1 client sends no body for a GET whose length it
//! does not know, so the proxy has to frame it itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use support::raw;
use support::scenario::Scenario;
use support::upstream::{self, seen};
use tokio::net::TcpStream;

const METHODS: [&str; 3] = ["GET", "DELETE", "OPTIONS"];
/// The body the tests send with each of [`METHODS`].
const BODY: &str = "q=1&filter=name";

async fn proxy(up: &upstream::MockUpstream) -> support::Proxy {
    Scenario::pass_through(up).start().await
}

/// What the echo upstream saw, checked for method and body.
fn assert_echo(j: &Value, method: &str, body: &str, how: &str) {
    assert_eq!(j["method"], method, "{how}: {j}");
    assert_eq!(j["body"], body, "{how}: the upstream got another body: {j}");
    assert!(
        seen(j, "transfer-encoding").is_empty() || seen(j, "content-length").is_empty(),
        "{how}: both framing headers reached the upstream: {j}"
    );
}

#[tokio::test]
async fn bodies_on_get_delete_options_reach_the_upstream_over_http1() {
    let up = upstream::start("u").await;
    let proxy = proxy(&up).await;
    let addr = proxy.addr.unwrap();
    for method in METHODS {
        let cl = format!(
            "{method} /search HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let r = raw::exchange(addr, cl.as_bytes()).await;
        assert_eq!(r.status, 200, "{method} with Content-Length: {}", r.text());
        let j = r.json();
        assert_echo(&j, method, BODY, &format!("{method} with Content-Length"));
        assert_eq!(seen(&j, "content-length"), [BODY.len().to_string()]);

        let chunked = format!(
            "{method} /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             4\r\nq=1&\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            BODY.len() - 4,
            &BODY[4..]
        );
        let r = raw::exchange(addr, chunked.as_bytes()).await;
        assert_eq!(r.status, 200, "{method} chunked: {}", r.text());
        assert_echo(&r.json(), method, BODY, &format!("{method} chunked"));
    }
    // Without a body nothing changes: no framing header appears.
    let r = raw::exchange(addr, &raw::get("/plain", "a", &[])).await;
    let j = r.json();
    assert_echo(&j, "GET", "", "GET without a body");
    assert!(seen(&j, "transfer-encoding").is_empty(), "{j}");
    assert!(seen(&j, "content-length").is_empty(), "{j}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_chunked_get_body_is_followed_by_the_next_request() {
    // Two chunked GETs on one keep-alive connection: each body reaches the upstream whole,
    // and the second request is read where the first body ended.
    let up = upstream::start("u").await;
    let proxy = proxy(&up).await;
    let mut s = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    for (i, body) in ["first", "second body"].iter().enumerate() {
        let req = format!(
            "GET /n{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), raw::read_response(&mut s))
            .await
            .expect("no response in time");
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["path"], format!("/n{i}"));
        assert_echo(&j, "GET", body, "keep-alive chunked GET");
    }
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

/// `method http://a:PORT/search` to the proxy at `addr`, with `body`.
fn search<B>(addr: SocketAddr, method: &str, body: B) -> Request<B> {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("http://a:{}/search", addr.port()))
        .body(body)
        .unwrap()
}

/// Sends `req` over one HTTP/2 connection and returns the echo.
async fn h2_echo<B>(addr: SocketAddr, req: Request<B>) -> Value
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = support::client::h2_sender(addr).await;
    let fut = async {
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no HTTP/2 response in time");
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_on_get_delete_options_reach_the_upstream_over_http2() {
    let up = upstream::start("u").await;
    let proxy = proxy(&up).await;
    let addr = proxy.addr.unwrap();
    for method in METHODS {
        // hyper's client sends `content-length` for a body of known size.
        let j = h2_echo(addr, search(addr, method, Full::new(Bytes::from(BODY)))).await;
        assert_echo(
            &j,
            method,
            BODY,
            &format!("HTTP/2 {method} with content-length"),
        );
        // DATA frames without any content-length.
        let frames = futures_util::stream::iter(
            [&BODY[..4], &BODY[4..]].map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from(p)))),
        );
        let j = h2_echo(addr, search(addr, method, StreamBody::new(frames))).await;
        assert_echo(
            &j,
            method,
            BODY,
            &format!("HTTP/2 {method} without content-length"),
        );
    }
    proxy.shutdown().await;
}
