//! Upstream failures: refused connections, slow responses, a dead address among live ones,
//! and no retry once a request may have been sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::client::Resp;
use support::scenario::Scenario;
use support::upstream::MockUpstream;
use support::{Proxy, assert_metric, client, closed_port, metric_value, upstream, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy with upstream `app` over `addresses`, with exactly these upstream settings, and
/// one route to it.
async fn proxied(addresses: &[String], upstream_settings: &[&str]) -> Proxy {
    Scenario::new()
        .upstream_exact("app", addresses, upstream_settings)
        .routes_yaml("  - { path: /, upstream: app }")
        .start()
        .await
}

fn errors_series(kind: &str) -> String {
    format!("portcullis_upstream_errors_total{{kind=\"{kind}\",upstream=\"app\"}}")
}

fn errors(metrics: &str, kind: &str) -> f64 {
    metric_value(metrics, &errors_series(kind))
}

/// Asserts that `proxy` counted `want` upstream errors of `kind`.
async fn assert_errors(proxy: &Proxy, kind: &str, want: f64) {
    assert_metric(&proxy.metrics().await, &errors_series(kind), want);
}

/// A proxy over a dead address (first, so the very first pick tries it) and the live
/// upstream, with the dead address's `unhealthy_cooldown`.
async fn dead_then_live(cooldown: &str) -> (MockUpstream, Proxy) {
    let live = upstream::start("live").await;
    let dead = format!("http://{}", closed_port());
    let cooldown = format!("unhealthy_cooldown: {cooldown}");
    let proxy = proxied(&[dead, live.url()], &["connect_timeout: 5s", &cooldown]).await;
    (live, proxy)
}

#[tokio::test]
async fn refused_connection_gives_502_without_waiting_for_the_connect_timeout() {
    let dead = format!("http://{}", closed_port());
    let proxy = proxied(&[dead], &["connect_timeout: 10s"]).await;
    let start = Instant::now();
    let r = client::get(&proxy.url("/x")).await;
    let elapsed = start.elapsed();
    assert_eq!(r.status, 502, "{:?}", r.body);
    // Sanity bound only: a refusal is reported at once, not after connect_timeout.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // The body says what happened without internal details.
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("upstream unavailable"), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
    assert_errors(&proxy, "connect", 1.0).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_at_the_response_timeout() {
    let up = upstream::start("slow").await;
    let proxy = proxied(&[up.url()], &["response_timeout: 300ms"]).await;
    let start = Instant::now();
    let r = client::get(&proxy.url("/slow?ms=3000")).await;
    let elapsed = start.elapsed();
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}: the 300ms timeout did not apply"
    );
    assert_errors(&proxy, "response_timeout", 1.0).await;
    // A fast request on the same upstream still works.
    assert_eq!(client::get(&proxy.url("/slow?ms=10")).await.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn dead_address_is_skipped_during_its_cooldown() {
    let (live, proxy) = dead_then_live("1m").await;
    for i in 0..20 {
        let r = client::get(&proxy.url(&format!("/n/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.json()["id"], "live");
    }
    assert_eq!(live.hits(), 20);
    // Tried once, then skipped: not every other request.
    assert_errors(&proxy, "connect", 1.0).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn dead_address_is_tried_again_after_its_cooldown() {
    let (_live, proxy) = dead_then_live("300ms").await;
    assert_eq!(client::get(&proxy.url("/first")).await.status, 200);
    assert_errors(&proxy, "connect", 1.0).await;
    // Once the cool-down is over the dead address is tried again (and every request still
    // succeeds on the live one).
    wait_until(Duration::from_secs(10), || async {
        let r = client::get(&proxy.url("/again")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        errors(&proxy.metrics().await, "connect") >= 2.0
    })
    .await;
    proxy.shutdown().await;
}

/// An upstream on 127.0.0.1:0 that runs `serve` on every connection it accepts; returns its
/// address and the count of connections.
async fn counting_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

/// An upstream that accepts, reads a whole request (head and `body`), then closes without
/// answering. Counts connections.
async fn hang_up_after_reading(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    counting_upstream(move |mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains(body) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        drop(s);
    })
    .await
}

/// An upstream that answers every request with bytes that are not HTTP.
async fn garbage_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    counting_upstream(|mut s| async move {
        let mut chunk = [0u8; 4096];
        let _ = s.read(&mut chunk).await;
        let _ = s.write_all(b"this is not http\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await
}

/// Sends four requests (`send(i)`) through a proxy whose upstream `app` has a bad address (its
/// connections counted by `bad_accepts`) and `live`, round-robin: each must reach one address
/// only. A 502 is one connection to the bad address and no request to `live` (no retry); a
/// 200 is one request to `live` and no connection to the bad address. Returns the 200
/// answers and the number of 502s.
async fn each_reaches_one_address<F, Fut>(
    live: &MockUpstream,
    bad_accepts: &AtomicUsize,
    send: F,
) -> (Vec<Resp>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Resp>,
{
    let mut answered = Vec::new();
    let mut failures = 0;
    for i in 0..4 {
        let (bad_before, live_before) = (bad_accepts.load(Ordering::SeqCst), live.hits());
        let r = send(i).await;
        let (bad_after, live_after) = (bad_accepts.load(Ordering::SeqCst), live.hits());
        match r.status {
            502 => {
                failures += 1;
                assert_eq!(bad_after, bad_before + 1);
                assert_eq!(live_after, live_before, "request {i} was retried");
            }
            200 => {
                assert_eq!(live_after, live_before + 1);
                assert_eq!(bad_after, bad_before, "request {i} went to both addresses");
                answered.push(r);
            }
            s => panic!("request {i}: unexpected status {s}: {:?}", r.body),
        }
    }
    (answered, failures)
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn request_already_sent_is_not_retried_on_another_address() {
    const BODY: &str = "the-request-body-was-sent";
    let live = upstream::start("live").await;
    let (bad, bad_accepts) = hang_up_after_reading(BODY).await;
    let proxy = proxied(
        &[format!("http://{bad}"), live.url()],
        &["connect_timeout: 5s", "response_timeout: 5s"],
    )
    .await;
    // Round-robin alternates; whichever address a request lands on, it must be the only one
    // that sees it.
    let (answered, failures) = each_reaches_one_address(&live, &bad_accepts, |i| {
        client::send(post(&proxy.url(&format!("/p/{i}")), BODY))
    })
    .await;
    for r in answered {
        assert_eq!(r.json()["body"], BODY);
    }
    assert_eq!(
        failures, 2,
        "round-robin should have sent half to the bad address"
    );
    let m = proxy.metrics().await;
    assert_eq!(errors(&m, "protocol"), 2.0, "{m}");
    // Hanging up after the request is not a refusal: the address is not put in cool-down.
    assert_eq!(errors(&m, "connect"), 0.0, "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn garbage_response_gives_one_502_and_no_retry() {
    // A GET has no body to give away, so only the rule itself keeps it from being retried.
    let live = upstream::start("live").await;
    let (bad, bad_accepts) = garbage_upstream().await;
    let proxy = proxied(&[format!("http://{bad}"), live.url()], &[]).await;
    let (_, failures) = each_reaches_one_address(&live, &bad_accepts, |i| {
        let url = proxy.url(&format!("/g/{i}"));
        async move { client::get(&url).await }
    })
    .await;
    assert_eq!(failures, 2);
    assert_errors(&proxy, "protocol", 2.0).await;
    proxy.shutdown().await;
}
