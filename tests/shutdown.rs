//! Graceful shutdown: in-flight requests finish, new connections are refused, and shutdown
//! completes; the real binary exits 0 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::scenario::Scenario;
use support::{client, metric_value, process, temp_dir, upstream, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let up = upstream::start("u").await;
    let mut proxy = Scenario::pass_through(&up)
        // Far longer than the test: shutdown must end because connections ended, not because
        // the grace period ran out.
        .server(&["shutdown_grace: 60s"])
        .start()
        .await;
    let addr = proxy.addr.unwrap();

    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(DEADLINE, idle.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let url = proxy.url("/slow?ms=800");
    let slow = tokio::spawn(async move { client::try_get(&url).await });
    // In flight: the upstream has it.
    wait_until(DEADLINE, || async { up.hits() >= 2 }).await;
    let upstream_has_it = std::time::Instant::now();
    let in_flight = metric_value(&proxy.metrics().await, "portcullis_http_requests_in_flight");
    assert_eq!(in_flight, 1.0);

    let done = proxy.begin_shutdown();
    // Shutdown has begun for the server once /readyz says so (the drain is signalled first).
    let admin = proxy.admin;
    client::wait_status(DEADLINE, &format!("http://{admin}/readyz"), 503).await;

    // New connections are refused once the listener has stopped accepting.
    wait_until(DEADLINE, || async {
        match TcpStream::connect(addr).await {
            Err(_) => true,
            // Accepted just before the listener closed: it must not be served.
            Ok(mut s) => {
                let _ = s.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n").await;
                let mut b = [0u8; 64];
                let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
                    .await
                    .map_or(0, |r| r.unwrap_or(0));
                assert_eq!(n, 0, "served after shutdown began");
                false
            }
        }
    })
    .await;

    // The upstream takes 800 ms: while it has not answered, shutdown cannot have completed.
    let mut done = done;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut done).await;
    assert!(
        early.is_err() || upstream_has_it.elapsed() >= Duration::from_millis(800),
        "shutdown completed with a request in flight"
    );

    // The idle connection is closed rather than waited for.
    let mut rest = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match idle.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("idle connection not closed on shutdown");

    // The in-flight request completes normally.
    let r = tokio::time::timeout(DEADLINE, slow)
        .await
        .unwrap()
        .unwrap()
        .expect("the in-flight request failed");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"slow done");

    tokio::time::timeout(DEADLINE, done)
        .await
        .expect("shutdown did not complete")
        .unwrap();
    assert_eq!(
        up.hits(),
        2,
        "a request after shutdown reached the upstream"
    );
}

#[tokio::test]
async fn binary_exits_zero_on_sigterm_after_in_flight_request() {
    let up = upstream::start("u").await;
    let dir = temp_dir("sigterm");
    let yaml = Scenario::binary_pass_through(&up.url(), &[])
        .server(&["shutdown_grace: 30s"])
        .to_yaml();
    let mut child = process::spawn(&dir, &yaml).await;
    let listen = child.addr;

    let url = format!("http://{listen}/slow?ms=800");
    let slow = tokio::spawn(async move { client::try_get(&url).await });
    wait_until(DEADLINE, || async { up.hits() >= 1 }).await;

    child.signal("TERM");

    let r = tokio::time::timeout(DEADLINE, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("in-flight request failed: {}", child.log()));
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"slow done");

    let code = child.wait_exit(DEADLINE).await;
    assert_eq!(code, Some(0), "{}", child.log());
    assert!(child.log().contains("SIGTERM"), "{}", child.log());
    // Nothing listens any more.
    assert!(TcpStream::connect(listen).await.is_err());
}
