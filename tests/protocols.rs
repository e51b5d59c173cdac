//! Protocols through the proxy: an HTTP/2 client in front of an HTTP/1.1 upstream, and a
//! WebSocket upgrade tunnelled end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::scenario::Scenario;
use support::upstream::seen;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::Full;
use support::{client, upstream, ws};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_reaches_http1_upstream() {
    let up = upstream::start("h1").await;
    let proxy = Scenario::pass_through(&up).start().await;
    let addr = proxy.addr.unwrap();

    // GET: :authority becomes the upstream's Host.
    let req = Request::get(format!(
        "http://app.example.com:{}/h2/path?x=1",
        addr.port()
    ))
    .header("x-h2-header", "yes")
    .body(Full::<Bytes>::default())
    .unwrap();
    let (version, r) = client::send_h2(addr, req).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(
        j["version"], "HTTP/1.1",
        "upstream must be spoken to in HTTP/1.1"
    );
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/h2/path");
    assert_eq!(j["query"], "x=1");
    let host = format!("app.example.com:{}", addr.port());
    assert_eq!(seen(&j, "host"), [host.as_str()]);
    assert_eq!(seen(&j, "x-forwarded-host"), [host.as_str()]);
    assert_eq!(seen(&j, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&j, "x-h2-header"), ["yes"]);
    // The upstream's HTTP/1.1 response headers come back, its hop-by-hop ones don't.
    assert_eq!(r.headers["x-upstream-id"], "h1");
    assert_eq!(r.headers["x-response-custom"], "kept");
    assert!(!r.headers.contains_key("x-upstream-hop"));

    // POST with a body over HTTP/2.
    let body = "h2 body ".repeat(10_000);
    let req = Request::post(format!("http://localhost:{}/upload", addr.port()))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (version, r) = client::send_h2(addr, req).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body"], body);
    assert_eq!(seen(&j, "host"), [format!("localhost:{}", addr.port())]);

    // An upstream status passes through to the HTTP/2 client.
    let req = Request::get(format!("http://localhost:{}/status?code=418", addr.port()))
        .body(Full::<Bytes>::default())
        .unwrap();
    let (_, r) = client::send_h2(addr, req).await;
    assert_eq!(r.status, 418);
    assert_eq!(&r.body[..], b"status");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let up = upstream::start("ws").await;
    let proxy = Scenario::pass_through(&up).start().await;
    let addr = proxy.addr.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = ws::open_with_response(stream, format!("ws://{addr}/ws")).await;
    assert_eq!(resp.headers()["x-upstream-id"], "ws");
    assert!(
        resp.headers()["upgrade"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let messages = vec![
        Message::text("hello through the proxy"),
        Message::binary(vec![0u8, 1, 2, 255, 254]),
        Message::text("ünïcødé ✓"),
        Message::binary(big),
        Message::text(""),
    ];
    for msg in messages {
        ws::echo_message(&mut ws, msg).await;
    }

    // Several messages in flight before reading any echo.
    for i in 0..20 {
        ws.send(Message::text(format!("burst {i}"))).await.unwrap();
    }
    for i in 0..20 {
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(format!("burst {i}")));
    }
    ws.close(None).await.unwrap();
    // The tunnel holds its connection until the client's socket closes too; shutdown waits
    // for it (up to the grace).
    drop(ws);

    // The upgraded connection does not stop the proxy serving ordinary requests.
    let r = client::get(&proxy.url("/after")).await;
    assert_eq!(r.status, 200);
    proxy.shutdown().await;
}
