//! `routes[i].max_auth_age`: a session whose sign-in (the ID token's `auth_time`, else the
//! session's creation) is older than the route allows is sent to sign in again with
//! `max_age` (a browser navigation: 302) or refused (an API call: 401). The new sign-in's
//! fresh `auth_time` passes, with no loop; an ID token without `auth_time`, or with one older
//! than `max_age`, after `max_age` was asked for, is refused (OpenID Connect Core 3.1.2.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::clock::ManualClock;
use support::browser::{CookieClient, query_param};
use support::idp::{CLIENT_SECRET, MockIdp};
use support::scenario::{Env, Route};
use support::{metric_value, wait_for};

/// Routes: `/app` (no limit) and `/admin` (`max_auth_age: 10m`); the proxy on a ManualClock.
async fn env() -> Env {
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let idp = MockIdp::start().await;
    let issuer_extra = ["client_id: portcullis", secret.as_str(), "timeout: 1s"];
    Env::with_idp(idp, "k1", Some(ManualClock::new()), &issuer_extra, |s| {
        s.route(Route::session("/").name("app"))
            .route(
                Route::session("/admin")
                    .name("admin")
                    .raw("max_auth_age", "10m"),
            )
            .sessions(&["cookie: { secure: false }"])
    })
    .await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn signed_in(e: &Env, url: &str) -> CookieClient {
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url(url)).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_sign_in_steps_up_with_max_age_and_the_fresh_one_passes() {
    let e = env().await;
    // The user authenticated at the IdP an hour ago (an SSO session reused).
    e.idp.set_auth_time(Some(now() - 3600));
    let mut b = signed_in(&e, "/app").await;
    assert_eq!(e.idp.max_age_requests(), [None]);
    // Fine where no limit applies; too old for /admin.
    assert_eq!(b.api(&e.proxy.url("/app/x")).await.status, 200);
    assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 401);
    let r = b.navigate(&e.proxy.url("/admin/page")).await;
    assert_eq!(r.status, 302);
    let location = r.headers["location"].to_str().unwrap().to_string();
    assert_eq!(query_param(&location, "max_age").as_deref(), Some("600"));
    // Following it: the IdP authenticates again (auth_time now), the new session passes and
    // stays passing: no loop.
    let (resp, hops) = b.follow(&location).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    assert!(
        hops.last().unwrap().url.ends_with("/admin/page"),
        "{hops:?}"
    );
    assert_eq!(e.idp.max_age_requests()[1].as_deref(), Some("600"));
    for _ in 0..3 {
        assert_eq!(b.navigate(&e.proxy.url("/admin/page")).await.status, 200);
        assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 200);
    }
    // Ten minutes on, the same session is too old again for /admin, still fine for /app.
    e.clock().advance(Duration::from_secs(601));
    assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 401);
    assert_eq!(b.api(&e.proxy.url("/app/x")).await.status, 200);
    let m = e.proxy.metrics().await;
    assert!(
        metric_value(
            &m,
            "portcullis_auth_results_total{issuer=\"corp\",result=\"auth_too_old\",route=\"admin\"}"
        ) >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_time_the_sessions_creation_counts() {
    let e = env().await;
    e.idp.set_honor_max_age(false);
    let mut b = signed_in(&e, "/app").await;
    assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 200);
    e.clock().advance(Duration::from_secs(601));
    assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_that_ignores_max_age_gets_no_session() {
    let e = env().await;
    e.idp.set_auth_time(Some(now() - 3600));
    e.idp.set_honor_max_age(false);
    let mut b = signed_in(&e, "/app").await;
    let (resp, hops) = b.follow(&e.proxy.url("/admin/page")).await;
    // The callback refuses the stale auth_time: the sign-in error page, no redirect loop.
    assert_ne!(resp.status, 200, "{hops:?}");
    assert!(hops.len() <= 4, "{hops:?}");
    assert_eq!(b.api(&e.proxy.url("/admin/x")).await.status, 401);
    // And an ID token without auth_time after max_age was asked for is refused too (a first
    // sign-in on the route asks for max_age as well).
    e.idp.set_auth_time(None);
    let mut c = CookieClient::new();
    let (resp, hops) = c.follow(&e.proxy.url("/admin/page")).await;
    assert_ne!(resp.status, 200, "{hops:?}");
    assert_eq!(
        e.idp.max_age_requests().last().unwrap().as_deref(),
        Some("600")
    );
    wait_for(Duration::from_secs(5), "failures counted", || async {
        let m = e.proxy.metrics().await;
        (metric_value(
            &m,
            "portcullis_login_failures_total{issuer=\"corp\",reason=\"id_token_invalid\"}",
        ) >= 2.0)
            .then_some(())
    })
    .await;
}
