//! Upgraded connections (WebSocket tunnels) are bounded like every other connection: they
//! hold a `server.max_connections` slot until they end, close after
//! `server.upgraded_idle_timeout` without traffic, and close at the end of the shutdown grace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use support::scenario::Scenario;
use support::upstream::{self, MockUpstream};
use support::ws::{self, Ws, closed_within, echo};
use support::{Proxy, assert_metric, client};
use tokio::net::TcpStream;

/// The WebSocket echo upstream behind a pass-through proxy with `server` settings.
async fn ws_proxy(server: &[&str]) -> (MockUpstream, Proxy) {
    let up = upstream::start("ws").await;
    let proxy = Scenario::pass_through(&up).server(server).start().await;
    (up, proxy)
}

async fn open_ws(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).await.unwrap();
    ws::open(stream, format!("ws://{addr}/ws")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_hold_a_connection_slot_until_they_end() {
    let (_up, proxy) = ws_proxy(&["max_connections: 2", "shutdown_grace: 1s"]).await;
    let addr = proxy.addr.unwrap();
    let mut a = open_ws(addr).await;
    let mut b = open_ws(addr).await;
    echo(&mut a, "a").await;
    echo(&mut b, "b").await;
    // Both slots are held by tunnels: a third connection is closed at once.
    assert!(client::try_get(&proxy.url("/x")).await.is_none());
    let m = proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_connections_rejected_total{listener=\"plain\"}",
        1.0,
    );
    // A tunnel that ends gives its slot back.
    a.close(None).await.unwrap();
    closed_within(&mut a, Duration::from_secs(10)).await;
    drop(a);
    client::wait_status(Duration::from_secs(10), &proxy.url("/x"), 200).await;
    echo(&mut b, "still there").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed_after_upgraded_idle_timeout() {
    let (_up, proxy) = ws_proxy(&["upgraded_idle_timeout: 400ms", "idle_timeout: 60s"]).await;
    let mut ws = open_ws(proxy.addr.unwrap()).await;
    // Traffic keeps it open well past the timeout.
    let start = tokio::time::Instant::now();
    for i in 0..8 {
        echo(&mut ws, &format!("tick {i}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(800));
    // Quiet: closed about 400 ms after the last echo (bounded wait).
    echo(&mut ws, "last").await;
    let quiet = tokio::time::Instant::now();
    closed_within(&mut ws, Duration::from_secs(10)).await;
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "{:?}",
        quiet.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_closed_at_the_end_of_the_shutdown_grace() {
    let (_up, mut proxy) = ws_proxy(&["shutdown_grace: 600ms"]).await;
    let mut ws = open_ws(proxy.addr.unwrap()).await;
    echo(&mut ws, "before").await;
    let started = tokio::time::Instant::now();
    let done = proxy.begin_shutdown();
    // During the grace the tunnel still works, and shutdown waits for it.
    echo(&mut ws, "during the grace").await;
    closed_within(&mut ws, Duration::from_secs(10)).await;
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("shutdown took too long")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "shutdown did not wait for the tunnel: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_bytes_are_not_timed_as_request_heads() {
    // After the 101 the client's bytes are WebSocket frames, never a complete HTTP head: were
    // they read as one, the header read timeout would cut the tunnel.
    let (_up, proxy) = ws_proxy(&[
        "header_read_timeout: 300ms",
        "upgraded_idle_timeout: 30s",
        "shutdown_grace: 1s",
    ])
    .await;
    let mut ws = open_ws(proxy.addr.unwrap()).await;
    echo(&mut ws, "first").await;
    // Quiet for longer than the header timeout (a bounded wait for a close that must not come).
    let quiet = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
    assert!(
        quiet.is_err(),
        "the tunnel ended or sent {quiet:?} while quiet"
    );
    echo(&mut ws, "second").await;
    proxy.shutdown().await;
}
