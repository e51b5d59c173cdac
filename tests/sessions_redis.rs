//! Browser sessions shared by several Portcullis instances through one Redis (each test starts
//! its own `redis-server`): one refresh across replicas, back-channel logout on one replica
//! ending the session on the other, cookie key rotation, and Redis dying and coming back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::clock::ManualClock;
use portcullis::secret::KeyMaterial;
use support::browser::{CookieClient, backchannel_logout};
use support::idp::{CLIENT_ID, CLIENT_SECRET, MockIdp, SigningKey};
use support::redis::{RedisServer, free_port, require_redis};
use support::scenario::{Route, Scenario};
use support::upstream::{MockUpstream, seen};
use support::{Proxy, assert_metric, metric_value, temp_dir, wait_for};

const COOKIE: &str = "portcullis_session";

struct Shared {
    idp: MockIdp,
    key: SigningKey,
    upstream: MockUpstream,
    redis: RedisServer,
    clock: ManualClock,
}

async fn shared() -> Shared {
    require_redis();
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let upstream = support::upstream::start("app").await;
    let dir = temp_dir("sessions-redis");
    let redis = RedisServer::tcp(&dir, free_port(false), &[]).await;
    Shared {
        idp,
        key,
        upstream,
        redis,
        clock: ManualClock::new(),
    }
}

fn key(n: u8) -> String {
    KeyMaterial::from_bytes(&[n; 32]).unwrap().to_base64()
}

impl Shared {
    /// An instance on the shared Redis with cookie `keys` (base64).
    async fn instance(&self, keys: &[String], cache_ttl: &str) -> Proxy {
        let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
        let settings = [
            "client_id: portcullis",
            secret.as_str(),
            "timeout: 1s",
            "retries: 1",
            "backoff_min: 10ms",
            "backoff_max: 20ms",
        ];
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let redis = format!(
            "redis: {{ url: \"{}\", timeout: 250ms, cache_ttl: {cache_ttl} }}",
            self.redis.url()
        );
        let cookie = format!("cookie: {{ secure: false, keys: [{}] }}", keys.join(", "));
        Scenario::new()
            .upstream("app", &self.upstream)
            .issuer("corp", &self.idp, &settings)
            .route(Route::session("/").name("app"))
            .sessions(&[
                "store: redis",
                &redis,
                &cookie,
                "refresh_fraction: 0.5",
                "outage_grace: 10m",
            ])
            .clock(self.clock.clone())
            .start()
            .await
    }
}

async fn sign_in(p: &Proxy) -> CookieClient {
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&p.url("/page")).await;
    assert_eq!(
        resp.status,
        200,
        "{hops:?} {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert!(b.cookies.contains_key(COOKIE));
    b
}

/// Waits (5 s at most, then panics naming `what`) until `browser`'s session is refused (401)
/// at `p`.
async fn session_ends_at(browser: &CookieClient, p: &Proxy, what: &str) {
    wait_for(Duration::from_secs(5), what, || async {
        (at(browser).api(&p.url("/x")).await.status == 401).then_some(())
    })
    .await;
}

/// `b`'s session cookie presented to another instance (same host name, other port).
fn at(b: &CookieClient) -> CookieClient {
    let mut c = CookieClient::new();
    c.cookies.insert(COOKIE.into(), b.cookies[COOKIE].clone());
    c
}

#[tokio::test]
async fn two_instances_refresh_once_and_never_reuse_a_rotated_refresh_token() {
    let s = shared().await;
    s.idp.set_access_ttl(100);
    let keys = [key(1)];
    let a = s.instance(&keys, "5s").await;
    let b = s.instance(&keys, "5s").await;
    let browser = sign_in(&a).await;
    // The session is shared: the other instance knows it.
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    // Past expiry, both instances get a burst of requests on the same session at once.
    s.clock.advance(Duration::from_secs(101));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = at(&browser);
        let url = if i % 2 == 0 { a.url("/x") } else { b.url("/x") };
        tasks.push(tokio::spawn(async move {
            let r = c.api(&url).await;
            (r.status, seen(&r.json(), "x-auth-degraded").is_empty())
        }));
    }
    for t in tasks {
        let (status, _fresh) = t.await.unwrap();
        assert_eq!(status, 200);
    }
    // Exactly one refresh reached the IdP (rotation: a second use would be invalid_grant).
    assert_eq!(s.idp.refreshes(), 1, "{:?}", s.idp.token_requests().len());
    for p in [&a, &b] {
        let m = p.metrics().await;
        assert_metric(
            &m,
            "portcullis_session_refreshes_total{issuer=\"corp\",result=\"definitive\"}",
            0.0,
        );
    }
    // Both serve the refreshed session (the loser read the winner's result), unmarked.
    for p in [&a, &b] {
        let r = wait_for(Duration::from_secs(10), "fresh session on both", || async {
            let r = at(&browser).api(&p.url("/x")).await;
            (r.status == 200 && seen(&r.json(), "x-auth-degraded").is_empty()).then_some(r)
        })
        .await;
        assert_eq!(r.status, 200);
    }
    // The next refresh (of the rotated token) also happens once, and succeeds.
    s.clock.advance(Duration::from_secs(60));
    for p in [&a, &b, &a, &b] {
        assert_eq!(at(&browser).api(&p.url("/x")).await.status, 200);
    }
    wait_for(Duration::from_secs(10), "second refresh", || async {
        (s.idp.refreshes() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.idp.refreshes(), 2);
    let oks: f64 = {
        let (ma, mb) = (a.metrics().await, b.metrics().await);
        ["ok", "definitive"]
            .iter()
            .map(|r| {
                let series =
                    format!("portcullis_session_refreshes_total{{issuer=\"corp\",result=\"{r}\"}}");
                if *r == "definitive" {
                    assert_eq!(metric_value(&ma, &series) + metric_value(&mb, &series), 0.0);
                    0.0
                } else {
                    metric_value(&ma, &series) + metric_value(&mb, &series)
                }
            })
            .sum()
    };
    assert_eq!(oks, 2.0);
}

#[tokio::test]
async fn back_channel_logout_on_one_instance_ends_the_session_on_the_other() {
    let s = shared().await;
    let keys = [key(1)];
    let a = s.instance(&keys, "300ms").await;
    let b = s.instance(&keys, "300ms").await;
    let browser = sign_in(&a).await;
    assert_eq!(at(&browser).api(&a.url("/x")).await.status, 200);
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    let token = s.idp.logout_token(&s.key, CLIENT_ID, "sid-1").build();
    let r = backchannel_logout(&b.url("/oauth2/backchannel_logout"), &token).await;
    assert_eq!(r.status, 200);
    // b dropped it at once; a stops within its cache TTL.
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 401);
    session_ends_at(&browser, &a, "session ended on the other instance").await;
    // A replay at the other instance is refused too (the jti is recorded in Redis).
    let r = backchannel_logout(&a.url("/oauth2/backchannel_logout"), &token).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn cookie_key_rotation_keeps_sessions_and_a_dropped_key_ends_them() {
    let s = shared().await;
    let old = s.instance(&[key(1)], "1s").await;
    let browser = sign_in(&old).await;
    // New key first, old key still listed: existing cookies and records still open.
    let rotated = s.instance(&[key(2), key(1)], "1s").await;
    assert_eq!(at(&browser).api(&rotated.url("/x")).await.status, 200);
    // New sessions are sealed with the new key and open where it is known.
    let fresh = sign_in(&rotated).await;
    assert_eq!(at(&fresh).api(&rotated.url("/x")).await.status, 200);
    assert_eq!(
        at(&fresh).api(&old.url("/x")).await.status,
        401,
        "old instance lacks the new key"
    );
    // Only the new key: the old cookie is no session (sign in again).
    let only_new = s.instance(&[key(2)], "1s").await;
    assert_eq!(at(&browser).api(&only_new.url("/x")).await.status, 401);
    let r = at(&browser).navigate(&only_new.url("/x")).await;
    assert_eq!(r.status, 302);
    assert_eq!(at(&fresh).api(&only_new.url("/x")).await.status, 200);
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_run() {
    let mut s = shared().await;
    let p = s.instance(&[key(1)], "30s").await;
    let browser = sign_in(&p).await;
    assert_eq!(at(&browser).api(&p.url("/x")).await.status, 200);
    s.redis.kill().await;
    // The cached session keeps working while Redis is down.
    for _ in 0..5 {
        assert_eq!(at(&browser).api(&p.url("/x")).await.status, 200);
    }
    // A new sign-in gets a clear 503 page, not a 500 and not a redirect loop.
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&p.url("/new")).await;
    assert_eq!(resp.status, 503, "{hops:?}");
    assert!(String::from_utf8_lossy(&resp.body).contains("temporarily unavailable"));
    assert!(hops.len() <= 4, "{hops:?}");
    // An unknown cookie while Redis is down: 503 for an API call (not 401: the session may
    // well exist), the 503 page for a navigation.
    let mut stranger = CookieClient::new();
    stranger
        .cookies
        .insert(COOKIE.into(), at(&browser).cookies[COOKIE].clone());
    let other_instance = s.instance(&[key(1)], "30s").await;
    let r = stranger.api(&other_instance.url("/x")).await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    // Redis comes back: new sign-ins work again without a restart.
    s.redis.start().await;
    let r = wait_for(
        Duration::from_secs(10),
        "sign-in after Redis returned",
        || async {
            let mut b = CookieClient::new();
            let (resp, _) = b.follow(&p.url("/again")).await;
            (resp.status == 200).then_some(b)
        },
    )
    .await;
    assert_eq!(at(&r).api(&other_instance.url("/x")).await.status, 200);
    let m = p.metrics().await;
    assert!(
        metric_value(
            &m,
            "portcullis_login_failures_total{issuer=\"corp\",reason=\"store_unavailable\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn back_channel_logout_follows_a_sid_brought_by_a_refresh() {
    let s = shared().await;
    s.idp.set_access_ttl(100);
    s.idp.set_sid(Some("sid-a"));
    let keys = [key(1)];
    let a = s.instance(&keys, "300ms").await;
    let b = s.instance(&keys, "300ms").await;
    let browser = sign_in(&a).await;
    // A refresh on one instance brings a new sid.
    s.idp.set_sid(Some("sid-b"));
    s.clock.advance(Duration::from_secs(60));
    assert_eq!(at(&browser).api(&a.url("/x")).await.status, 200);
    a.wait_metric(
        Duration::from_secs(10),
        "refresh stored",
        "portcullis_session_refreshes_total{issuer=\"corp\",result=\"ok\"}",
        1.0,
    )
    .await;
    // A logout token for the new sid, received by the other instance, ends it everywhere.
    let token = s.idp.logout_token(&s.key, CLIENT_ID, "sid-b").build();
    let r = backchannel_logout(&b.url("/oauth2/backchannel_logout"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 401);
    session_ends_at(&browser, &a, "ended on the refreshing instance").await;
}
