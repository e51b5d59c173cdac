//! The admin listener's own connection cap (`admin.max_connections`): past it, a new admin
//! connection is closed at once and counted; the proxy listeners' slots are separate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::scenario::Scenario;
use support::{client, metric_value, raw, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(5);

/// A keep-alive connection to the admin listener that got an answer (so it holds a slot);
/// `None` when the connection was closed unanswered.
async fn served_keep_alive(admin: std::net::SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let read = async {
        // The whole answer: its head and the 3-byte body `ok\n`.
        while !buf.ends_with(b"\r\n\r\nok\n") {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    let ok = tokio::time::timeout(DEADLINE, read).await.unwrap_or(false);
    (ok && buf.starts_with(b"HTTP/1.1 200")).then_some(s)
}

#[tokio::test]
async fn admin_connections_past_the_cap_are_closed_until_slots_free() {
    let up = upstream::start("u").await;
    let proxy = Scenario::pass_through(&up)
        .section("admin", &["address: \"127.0.0.1:0\"", "max_connections: 2"])
        .server(&["max_connections: 1"])
        .start()
        .await;
    let admin = proxy.admin;

    // Both admin slots held by keep-alive connections that were served (the readiness
    // checks' connections may still hold a slot for a moment: retried until two are served).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(support::wait_for(DEADLINE, "an admin slot", || served_keep_alive(admin)).await);
    }
    // Both slots are taken: a third connection is closed without an answer.
    raw::closed_without_answer(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        DEADLINE,
        "the connection past the admin cap",
    )
    .await;

    // The proxy listener has slots of its own: it still serves.
    assert_eq!(client::get(&proxy.url("/x")).await.status, 200);

    // The held connections still work; once they are gone, new ones are served again.
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let r = tokio::time::timeout(DEADLINE, raw::read_response(s))
            .await
            .expect("no response in time");
        assert_eq!(r.status, 200);
    }
    drop(held);
    client::wait_status(DEADLINE, &format!("http://{admin}/healthz"), 200).await;
    let m = proxy.metrics().await;
    let rejected = |listener: &str| {
        metric_value(
            &m,
            &format!("portcullis_connections_rejected_total{{listener=\"{listener}\"}}"),
        )
    };
    assert!(rejected("admin") >= 1.0);
    assert_eq!(rejected("plain"), 0.0);
    proxy.shutdown().await;
}
