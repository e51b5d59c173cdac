//! WebSocket tunnels opened through a signed-in session close when the session ends on this
//! replica: sign-out, back-channel logout, and the end of the session's lifetime. Tunnels of
//! other sessions stay open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use portcullis::clock::ManualClock;
use support::browser::{CookieClient, backchannel_logout};
use support::idp::{CLIENT_ID, CLIENT_SECRET, MockIdp};
use support::scenario::{Env, Route};
use support::ws::{self, Ws, closed_within, echo};
use support::{metric_value, wait_for};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The IdP on real time, the proxy on a ManualClock, one session route.
async fn env(sessions_extra: &[&str]) -> Env {
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let mut sessions = vec!["cookie: { secure: false }"];
    sessions.extend_from_slice(sessions_extra);
    let idp = MockIdp::start().await;
    let issuer_extra = ["client_id: portcullis", secret.as_str(), "timeout: 1s"];
    Env::with_idp(idp, "k1", Some(ManualClock::new()), &issuer_extra, |s| {
        s.route(Route::session("/").name("app")).sessions(&sessions)
    })
    .await
}

async fn sign_in(e: &Env) -> CookieClient {
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url("/app")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    b
}

/// Opens a WebSocket to `/ws` through the proxy with `b`'s cookies.
async fn open_ws(e: &Env, b: &CookieClient) -> Ws {
    let addr = e.proxy.addr.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", b.cookie_header().parse().unwrap());
    ws::open(stream, req).await
}

/// Waits (bounded) until the tunnel is closed under the client.
async fn closed_count(e: &Env, reason: &str) -> f64 {
    let m = e.proxy.metrics().await;
    metric_value(
        &m,
        &format!("portcullis_session_tunnels_closed_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_closes_the_sessions_tunnels_only() {
    let e = env(&[]).await;
    let mut a = sign_in(&e).await;
    let b = sign_in(&e).await;
    let mut ws_a = open_ws(&e, &a).await;
    let mut ws_a2 = open_ws(&e, &a).await;
    let mut ws_b = open_ws(&e, &b).await;
    echo(&mut ws_a, "a").await;
    echo(&mut ws_b, "b").await;
    assert_eq!(closed_count(&e, "sign_out").await, 0.0);
    let r = a.same_origin_get(&e.proxy.url("/oauth2/sign_out")).await;
    assert_eq!(r.status, 302);
    closed_within(&mut ws_a, Duration::from_secs(10)).await;
    closed_within(&mut ws_a2, Duration::from_secs(10)).await;
    // The other session's tunnel is untouched.
    echo(&mut ws_b, "still here").await;
    wait_for(Duration::from_secs(5), "closures counted", || async {
        (closed_count(&e, "sign_out").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(closed_count(&e, "backchannel").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logout_closes_the_sessions_tunnels() {
    let e = env(&[]).await;
    let a = sign_in(&e).await;
    let mut ws = open_ws(&e, &a).await;
    echo(&mut ws, "a").await;
    let token = e.idp.logout_token(&e.key, CLIENT_ID, "sid-1").build();
    let r = backchannel_logout(&e.proxy.url("/oauth2/backchannel_logout"), &token).await;
    assert_eq!(r.status, 200);
    closed_within(&mut ws, Duration::from_secs(10)).await;
    wait_for(Duration::from_secs(5), "closure counted", || async {
        (closed_count(&e, "backchannel").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_lifetime_closes_its_tunnels() {
    // Far from the idle timeouts (session 8 h, tunnel default): the lifetime ends it.
    let e = env(&["lifetime: 2s"]).await;
    let a = sign_in(&e).await;
    let mut ws = open_ws(&e, &a).await;
    echo(&mut ws, "a").await;
    closed_within(&mut ws, Duration::from_secs(15)).await;
    wait_for(Duration::from_secs(5), "closure counted", || async {
        (closed_count(&e, "expired").await == 1.0).then_some(())
    })
    .await;
}
