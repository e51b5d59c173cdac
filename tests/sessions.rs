//! Browser sessions through the proxy: sign-in with the code flow, the session cookie, the
//! 302-versus-401 decision, callback attacks, refresh (early, single-flight, outage grace,
//! invalid_grant), sign-out and back-channel logout. Memory store here; Redis in
//! tests/sessions_redis.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::clock::ManualClock;
use support::browser::{CookieClient, backchannel_logout, query_param};
use support::idp::{CLIENT_ID, CLIENT_SECRET, MockIdp, TokenFault};
use support::scenario::{Env, Scenario};
use support::upstream::{MockUpstream, seen};
use support::{assert_metric, metric_value, wait_for, wait_until};

const COOKIE: &str = "portcullis_session";
/// Refreshes that brought new tokens.
const REFRESHES_OK: &str = "portcullis_session_refreshes_total{issuer=\"corp\",result=\"ok\"}";

/// The scenario of these tests: upstream `app`, `routes`, issuer `corp` as a sign-in client
/// with short IdP timeouts (`issuer_extra` replaces a default of the same key), and sessions
/// with `secure: false` cookies (plain http in tests) plus `sessions_extra` (likewise).
fn scenario(
    idp: &MockIdp,
    upstream: &MockUpstream,
    routes: &str,
    sessions_extra: &[&str],
    issuer_extra: &[&str],
) -> Scenario {
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let settings = with_defaults(
        &[
            "client_id: portcullis",
            secret.as_str(),
            "timeout: 500ms",
            "retries: 1",
            "backoff_min: 10ms",
            "backoff_max: 20ms",
            "breaker_threshold: 100",
        ],
        issuer_extra,
    );
    let sessions = with_defaults(
        &[
            "cookie: { secure: false }",
            "refresh_fraction: 0.5",
            "outage_grace: 10m",
        ],
        sessions_extra,
    );
    Scenario::new()
        .upstream("app", upstream)
        .routes_yaml(routes)
        .issuer("corp", idp, &settings)
        .sessions(&sessions)
}

/// `defaults` without those whose key `extra` sets, then `extra`.
fn with_defaults<'a>(defaults: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let key = |s: &str| s.split(':').next().unwrap().to_string();
    let mut v: Vec<&str> = defaults
        .iter()
        .copied()
        .filter(|d| !extra.iter().any(|x| key(x) == key(d)))
        .collect();
    v.extend_from_slice(extra);
    v
}

const ROUTES: &str = "  - { name: app, path: /app, upstream: app, auth: session }\n  \
     - { name: api, path: /api, upstream: app, auth: either, forward_access_token: true }\n  \
     - { name: open, path: /, upstream: app, auth: none }";

async fn env_with(routes: &str, sessions_extra: &[&str], issuer_extra: &[&str]) -> Env {
    env_and(routes, sessions_extra, issuer_extra, |s| s).await
}

/// [`env_with`], the scenario changed by `more` before it starts.
async fn env_and(
    routes: &str,
    sessions_extra: &[&str],
    issuer_extra: &[&str],
    more: impl FnOnce(Scenario) -> Scenario,
) -> Env {
    // The IdP runs on real time, the proxy on a ManualClock.
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let up = support::upstream::start("app").await;
    let clock = ManualClock::new();
    let proxy = more(scenario(&idp, &up, routes, sessions_extra, issuer_extra))
        .clock(clock.clone())
        .start()
        .await;
    Env {
        idp,
        key,
        up,
        proxy,
        clock: Some(clock),
    }
}

async fn env() -> Env {
    env_with(ROUTES, &[], &[]).await
}

/// Signs in by following redirects from `path`; returns the browser and the final page.
async fn sign_in(e: &Env, path: &str) -> (CookieClient, support::client::Resp) {
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url(path)).await;
    assert_eq!(
        resp.status,
        200,
        "{hops:?} {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert!(
        b.cookies.contains_key(COOKIE),
        "no session cookie: {:?}",
        b.cookies
    );
    (b, resp)
}

#[tokio::test]
async fn full_sign_in_with_a_cookie_client() {
    let e = env().await;
    let mut b = CookieClient::new();
    b.extra.push(("theme".into(), "dark".into()));
    let (resp, hops) = b.follow(&e.proxy.url("/app/page?x=1&y=%2F")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    // proxy -> IdP authorize -> callback -> back to the original URL.
    assert_eq!(hops.len(), 4, "{hops:?}");
    assert!(
        hops[1].url.starts_with(&e.idp.url("/authorize")),
        "{hops:?}"
    );
    let auth_url = &hops[1].url;
    assert_eq!(
        query_param(auth_url, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(auth_url, "scope").as_deref(),
        Some("openid profile email")
    );
    assert!(query_param(auth_url, "nonce").is_some_and(|n| n.len() >= 43));
    assert_eq!(
        query_param(auth_url, "redirect_uri").unwrap(),
        e.proxy.url("/oauth2/callback")
    );
    assert!(hops[2].url.starts_with(&e.proxy.url("/oauth2/callback?")));
    assert_eq!(hops[3].url, e.proxy.url("/app/page?x=1&y=%2F"));
    // The session cookie: opaque, small, HttpOnly, SameSite=Lax, Path=/; login cookies gone.
    let attrs = &b.attributes[COOKIE];
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax") && attrs.contains("Path=/"),
        "{attrs}"
    );
    assert!(b.cookies[COOKIE].len() < 200);
    assert!(
        b.cookies
            .keys()
            .all(|k| !k.starts_with("portcullis_login_")),
        "{:?}",
        b.cookies
    );
    // The upstream got the identity from the ID token, and none of our cookies.
    let echo = resp.json();
    assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    assert_eq!(seen(&echo, "x-auth-request-email"), ["alice@example.com"]);
    assert_eq!(seen(&echo, "cookie"), ["theme=dark"]);
    assert!(seen(&echo, "authorization").is_empty());
    // A second request needs no IdP.
    let before = e.idp.token_requests().len();
    let again = b.navigate(&e.proxy.url("/app/other")).await;
    assert_eq!(again.status, 200);
    assert_eq!(e.idp.token_requests().len(), before);
    // forward_access_token: the upstream API gets the session's access token.
    let api = b.api(&e.proxy.url("/api/data")).await;
    assert_eq!(api.status, 200);
    let auth = seen(&api.json(), "authorization");
    assert_eq!(auth.len(), 1);
    assert!(auth[0].starts_with("Bearer ey"), "{auth:?}");
    let m = e.proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_logins_total{issuer=\"corp\",result=\"started\"}",
        1.0,
    );
    assert_metric(
        &m,
        "portcullis_logins_total{issuer=\"corp\",result=\"completed\"}",
        1.0,
    );
    assert_metric(
        &m,
        "portcullis_token_requests_total{grant=\"authorization_code\",issuer=\"corp\",result=\"ok\"}",
        1.0,
    );
}

#[tokio::test]
async fn the_401_versus_302_decision_table() {
    let e = env().await;
    let url = e.proxy.url("/app/x");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("GET", &[("accept", "text/html")], 302),
        ("HEAD", &[("accept", "text/html")], 302),
        (
            "GET",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
            302,
        ),
        (
            "GET",
            &[("accept", "text/html"), ("sec-fetch-mode", "cors")],
            401,
        ),
        (
            "GET",
            &[("accept", "text/html"), ("sec-fetch-mode", "no-cors")],
            401,
        ),
        (
            "GET",
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
            401,
        ),
        ("GET", &[("accept", "application/json")], 401),
        ("GET", &[("accept", "*/*")], 401),
        ("GET", &[], 401),
        ("POST", &[("accept", "text/html")], 401),
        ("PUT", &[("accept", "text/html")], 401),
    ];
    for (method, headers, want) in cases {
        let mut b = CookieClient::new();
        let r = b.request(method, &url, headers, "").await;
        assert_eq!(r.status, *want, "{method} {headers:?}");
        if *want == 401 {
            assert!(
                r.headers.contains_key("www-authenticate"),
                "{method} {headers:?}"
            );
            assert!(!r.headers.contains_key("location"));
        } else {
            assert!(
                r.headers["location"]
                    .to_str()
                    .unwrap()
                    .starts_with(&e.idp.url("/authorize"))
            );
        }
    }
    // `either` with an Authorization header is a bearer route: a bad token is 401, no redirect.
    let mut b = CookieClient::new();
    let r = b
        .request(
            "GET",
            &e.proxy.url("/api/x"),
            &[("accept", "text/html"), ("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(r.status, 401);
    // A valid bearer token on `either` works without a session.
    let token = e.idp.token(&e.key).build();
    let r = b
        .request(
            "GET",
            &e.proxy.url("/api/x"),
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        e.up.hits(),
        1,
        "only the valid bearer request reached the upstream"
    );
}

#[tokio::test]
async fn callback_attacks_are_refused_before_any_token_call() {
    let e = env().await;
    let callback = |q: &str| e.proxy.url(&format!("/oauth2/callback?{q}"));
    // No login cookie at all (a forged or cross-browser callback).
    let mut b = CookieClient::new();
    let r = b.navigate(&callback("code=abc&state=s1")).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Sign in again"));
    // Start a real login, then answer with another state, a duplicated state, no state.
    let mut b = CookieClient::new();
    let start = b.navigate(&e.proxy.url("/app")).await;
    assert_eq!(start.status, 302);
    let loc = start.headers["location"].to_str().unwrap().to_string();
    let state = query_param(&loc, "state").unwrap();
    for q in [
        format!("code=abc&state={}x", state),
        format!("code=abc&state={state}&state={state}"),
        "code=abc".to_string(),
        format!("code=abc&state={}", &state[..20]),
    ] {
        let r = b.clone().navigate(&callback(&q)).await;
        assert_eq!(r.status, 400, "{q}");
    }
    // A tampered login cookie is no login.
    let mut tampered = b.clone();
    for v in tampered.cookies.values_mut() {
        v.replace_range(10..12, "AA");
    }
    let idp_resp = support::client::get(&loc).await;
    let cb = idp_resp.headers["location"].to_str().unwrap().to_string();
    assert_eq!(tampered.navigate(&cb).await.status, 400);
    // The genuine callback works once ...
    let ok = b.clone().navigate(&cb).await;
    assert_eq!(ok.status, 302, "{:?}", String::from_utf8_lossy(&ok.body));
    // ... and a replay of it (same cookie, same state) is refused without a token call.
    let calls = e.idp.token_requests().len();
    let replay = b.clone().navigate(&cb).await;
    assert_eq!(replay.status, 400);
    assert_eq!(e.idp.token_requests().len(), calls);
    let m = e.proxy.metrics().await;
    assert!(metric_value(&m, "portcullis_callback_errors_total{reason=\"no_login\"}") >= 2.0);
    assert!(metric_value(&m, "portcullis_callback_errors_total{reason=\"malformed\"}") >= 2.0);
    assert_metric(
        &m,
        "portcullis_callback_errors_total{reason=\"replayed_state\"}",
        1.0,
    );
    assert_metric(
        &m,
        "portcullis_callback_errors_total{reason=\"bad_state\"}",
        2.0,
    );
    // Exactly one code exchange happened: the genuine one.
    assert_eq!(e.idp.token_requests().len(), 1);
}

#[tokio::test]
async fn idp_errors_and_bad_codes_give_a_page_with_a_way_back_not_a_loop() {
    let e = env().await;
    // error=access_denied from the IdP.
    let mut b = CookieClient::new();
    let start = b.navigate(&e.proxy.url("/app/deep")).await;
    let state = query_param(start.headers["location"].to_str().unwrap(), "state").unwrap();
    let r = b
        .navigate(&e.proxy.url(&format!(
            "/oauth2/callback?error=access_denied&error_description=%3Cscript%3E&state={state}"
        )))
        .await;
    assert_eq!(r.status, 403);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("access_denied") && body.contains("href=\"/app/deep\""),
        "{body}"
    );
    assert!(!body.contains("<script>"));
    assert!(!r.headers.contains_key("location"));
    // A code the IdP refuses (expired or replayed): a page, the login cookie cleared.
    let mut b = CookieClient::new();
    let start = b.navigate(&e.proxy.url("/app")).await;
    let state = query_param(start.headers["location"].to_str().unwrap(), "state").unwrap();
    let r = b
        .navigate(
            &e.proxy
                .url(&format!("/oauth2/callback?code=not-a-code&state={state}")),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        b.cookies
            .keys()
            .all(|k| !k.starts_with("portcullis_login_"))
    );
    // Wrong PKCE verifier: a code issued for another challenge is refused by the IdP.
    let mut b = CookieClient::new();
    let start = b.navigate(&e.proxy.url("/app")).await;
    let loc = start.headers["location"].to_str().unwrap().to_string();
    let state = query_param(&loc, "state").unwrap();
    let redirect = query_param(&loc, "redirect_uri").unwrap();
    let nonce = query_param(&loc, "nonce").unwrap();
    let code = e
        .idp
        .issue_code(&redirect, "another-challenge", Some(&nonce), "openid");
    let r = b
        .navigate(
            &e.proxy
                .url(&format!("/oauth2/callback?code={code}&state={state}")),
        )
        .await;
    assert_eq!(r.status, 400);
    // Wrong nonce: the ID token is refused.
    let mut b = CookieClient::new();
    let start = b.navigate(&e.proxy.url("/app")).await;
    let loc = start.headers["location"].to_str().unwrap().to_string();
    let state = query_param(&loc, "state").unwrap();
    let challenge = query_param(&loc, "code_challenge").unwrap();
    let code = e
        .idp
        .issue_code(&redirect, &challenge, Some("other-nonce"), "openid");
    let r = b
        .navigate(
            &e.proxy
                .url(&format!("/oauth2/callback?code={code}&state={state}")),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(!b.cookies.contains_key(COOKIE));
    let m = e.proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_login_failures_total{issuer=\"corp\",reason=\"idp_error\"}",
        1.0,
    );
    assert_metric(
        &m,
        "portcullis_login_failures_total{issuer=\"corp\",reason=\"token_definitive\"}",
        2.0,
    );
    assert_metric(
        &m,
        "portcullis_login_failures_total{issuer=\"corp\",reason=\"id_token_invalid\"}",
        1.0,
    );
}

#[tokio::test]
async fn return_targets_stay_on_this_origin() {
    let e = env_with(
        "  - { name: all, path: /, upstream: app, auth: session }",
        &[],
        &[],
    )
    .await;
    for (path, want) in [
        ("/a/b?c=d", "/a/b?c=d"),
        ("//evil.example/x", "/evil.example/x"),
        ("/%2F%2Fevil.example", ""),
        ("/%5Cevil.example", ""),
    ] {
        let mut b = CookieClient::new();
        let (resp, hops) = b.follow(&e.proxy.url(path)).await;
        if want.is_empty() {
            // The path itself is refused (400) before any sign-in.
            assert_eq!(resp.status, 400, "{path} {hops:?}");
            continue;
        }
        assert_eq!(resp.status, 200, "{path} {hops:?}");
        assert_eq!(hops.last().unwrap().url, e.proxy.url(want), "{path}");
    }
    // Sign-out's rd is a same-origin path or nothing.
    let (mut b, _) = sign_in(&e, "/").await;
    let r = b
        .same_origin_get(&e.proxy.url("/oauth2/sign_out?rd=https://evil.example/"))
        .await;
    let loc = r.headers["location"].to_str().unwrap();
    let after = query_param(loc, "post_logout_redirect_uri").unwrap();
    assert_eq!(after, e.proxy.url("/"));
}

/// [`env_with`] for `routes` with `auth.allowed_redirect_domains: domains`.
async fn env_allowing(routes: &str, domains: &[&str]) -> Env {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let up = support::upstream::start("app").await;
    let clock = ManualClock::new();
    let proxy = scenario(&idp, &up, routes, &[], &[])
        .allowed_redirect_domains(domains)
        .clock(clock.clone())
        .start()
        .await;
    Env {
        idp,
        key,
        up,
        proxy,
        clock: Some(clock),
    }
}

/// Where a same-origin sign-out with `rd` sends the browser after the IdP: its
/// `post_logout_redirect_uri`.
async fn after_sign_out(e: &Env, rd: &str) -> String {
    let (mut b, _) = sign_in(e, "/").await;
    let r = b
        .same_origin_get(&e.proxy.url(&format!("/oauth2/sign_out?rd={rd}")))
        .await;
    assert_eq!(r.status, 302, "{rd}");
    let loc = r.headers["location"].to_str().unwrap();
    assert!(loc.starts_with(&e.idp.url("/end_session")), "{loc}");
    query_param(loc, "post_logout_redirect_uri").unwrap()
}

#[tokio::test]
async fn sign_out_returns_to_allowed_hosts_only() {
    let routes = "  - { name: all, path: /, upstream: app, auth: session }";
    let e = env_allowing(routes, &[".example.com"]).await;
    assert_eq!(
        after_sign_out(&e, "https://app.example.com/x?y=1").await,
        "https://app.example.com/x?y=1"
    );
    assert_eq!(
        after_sign_out(&e, "https%3A%2F%2Fdeep.app.example.com%2F").await,
        "https://deep.app.example.com/"
    );
    for rd in [
        "https://evil.example/",
        "https://example.com/",
        "https://app.example.com.evil.example/",
        "https://evil.example%23@app.example.com/",
        "https://app.example.com%40evil.example/",
        "//app.example.com/x",
        "javascript:alert(1)",
    ] {
        assert_eq!(after_sign_out(&e, rd).await, e.proxy.url("/"), "{rd}");
    }
    // Same-origin paths as before.
    assert_eq!(after_sign_out(&e, "/bye").await, e.proxy.url("/bye"));
    // Without a session: the "signed out" page links there.
    let mut b = CookieClient::new();
    let r = b
        .same_origin_get(&e.proxy.url("/oauth2/sign_out?rd=https://app.example.com/x"))
        .await;
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body);
    assert!(
        page.contains("href=\"https://app.example.com/x\""),
        "{page}"
    );
    // A sign-in started for a navigation still comes back to this origin's path.
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url("/a/b?c=d")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    assert_eq!(hops.last().unwrap().url, e.proxy.url("/a/b?c=d"));
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url("//app.example.com/x")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    assert_eq!(hops.last().unwrap().url, e.proxy.url("/app.example.com/x"));
}

#[tokio::test]
async fn sign_out_to_another_host_needs_the_setting_and_a_reload_applies_it() {
    let routes = "  - { name: all, path: /, upstream: app, auth: session }";
    let e = env_with(routes, &[], &[]).await;
    assert_eq!(
        after_sign_out(&e, "https://app.example.com/x").await,
        e.proxy.url("/")
    );
    // A reload that lists the domain applies to the next sign-out.
    let yaml = scenario(&e.idp, &e.up, routes, &[], &[])
        .allowed_redirect_domains(&["app.example.com"])
        .to_yaml();
    let config = portcullis::Config::from_yaml(&yaml, []).unwrap();
    e.proxy.reloader.apply(&config).unwrap();
    assert_eq!(
        after_sign_out(&e, "https://app.example.com/x").await,
        "https://app.example.com/x"
    );
    assert_eq!(
        after_sign_out(&e, "https://other.example.com/x").await,
        e.proxy.url("/")
    );
}

#[tokio::test]
async fn tampered_cookies_and_unknown_keys_are_no_session() {
    let e = env().await;
    let (b, _) = sign_in(&e, "/app").await;
    let good = b.cookies[COOKIE].clone();
    let mut variants = vec![
        format!("{}A", good),
        good[..good.len() - 2].to_string(),
        "garbage".to_string(),
        String::new(),
    ];
    let mut flipped = good.clone().into_bytes();
    flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
    variants.push(String::from_utf8(flipped).unwrap());
    for v in variants {
        let mut c = CookieClient::new();
        c.cookies.insert(COOKIE.into(), v.clone());
        assert_eq!(c.api(&e.proxy.url("/app")).await.status, 401, "{v}");
    }
    // The genuine one still works.
    let mut c = CookieClient::new();
    c.cookies.insert(COOKIE.into(), good);
    assert_eq!(c.api(&e.proxy.url("/app")).await.status, 200);
    assert_eq!(
        e.up.hits(),
        2,
        "sign-in page load and the genuine cookie only"
    );
}

#[tokio::test]
async fn spoofed_grace_marker_and_portcullis_cookies_never_reach_the_upstream() {
    let e = env().await;
    let (mut b, _) = sign_in(&e, "/app").await;
    let r = b
        .request(
            "GET",
            &e.proxy.url("/app"),
            &[
                ("x-auth-degraded", "0"),
                ("X_Auth_Degraded", "1"),
                (
                    "cookie",
                    "PORTCULLIS_SESSION=x; portcullis_login_abc=y; keep=1",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert!(seen(&echo, "x-auth-degraded").is_empty(), "{echo}");
    assert!(seen(&echo, "x_auth_degraded").is_empty(), "{echo}");
    assert_eq!(seen(&echo, "cookie"), ["keep=1"]);
    // Also on an `auth: none` route.
    let r = b
        .request(
            "GET",
            &e.proxy.url("/public"),
            &[("x-auth-degraded", "1")],
            "",
        )
        .await;
    let echo = r.json();
    assert!(seen(&echo, "x-auth-degraded").is_empty());
    assert!(seen(&echo, "cookie").is_empty(), "{echo}");
}

#[tokio::test]
async fn early_refresh_happens_once_at_the_fraction() {
    let e = env().await;
    e.idp.set_access_ttl(100);
    let (mut b, _) = sign_in(&e, "/app").await;
    assert_eq!(e.idp.refreshes(), 0);
    // Before half the lifetime: no refresh.
    e.clock().advance(Duration::from_secs(40));
    assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 200);
    tokio::task::yield_now().await;
    assert_eq!(e.idp.refreshes(), 0);
    // Past half: one background refresh; the request itself is served at once.
    e.clock().advance(Duration::from_secs(15));
    assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 200);
    wait_until(Duration::from_secs(5), || async { e.idp.refreshes() == 1 }).await;
    let m = e
        .proxy
        .wait_metric(Duration::from_secs(5), "refresh counted", REFRESHES_OK, 1.0)
        .await;
    assert_metric(
        &m,
        "portcullis_session_refreshes_total{issuer=\"corp\",result=\"transient\"}",
        0.0,
    );
    // The new token's schedule starts over: more requests, no more refreshes.
    for _ in 0..5 {
        assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 200);
    }
    e.clock().advance(Duration::from_secs(30));
    assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(e.idp.refreshes(), 1);
    // The refresh sent no scope, and the rotated refresh token is used next time.
    let req = e
        .idp
        .token_requests()
        .into_iter()
        .find(|r| r.get("grant_type") == Some("refresh_token"))
        .unwrap();
    assert_eq!(req.get("scope"), None);
    e.clock().advance(Duration::from_secs(30));
    assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 200);
    wait_until(Duration::from_secs(5), || async { e.idp.refreshes() == 2 }).await;
    let m = e
        .proxy
        .wait_metric(
            Duration::from_secs(5),
            "second refresh ok",
            REFRESHES_OK,
            2.0,
        )
        .await;
    assert_metric(
        &m,
        "portcullis_session_refreshes_total{issuer=\"corp\",result=\"definitive\"}",
        0.0,
    );
}

#[tokio::test]
async fn two_hundred_concurrent_requests_cause_one_refresh() {
    let e = env().await;
    e.idp.set_access_ttl(100);
    let (b, _) = sign_in(&e, "/app").await;
    // Past expiry: every request needs the refresh; they all join one.
    e.clock().advance(Duration::from_secs(101));
    let url = e.proxy.url("/app");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut b = b.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { b.api(&url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(e.idp.refreshes(), 1);
    // After it, the session is fresh: no grace marker.
    let mut b = b.clone();
    let r = b.api(&url).await;
    assert!(seen(&r.json(), "x-auth-degraded").is_empty());
}

#[tokio::test]
async fn token_endpoint_down_or_hanging_keeps_requests_fast_until_grace_ends() {
    for fault in [TokenFault::Down, TokenFault::Hang, TokenFault::Status500] {
        let e = env_with(ROUTES, &[], &["timeout: 2s"]).await;
        e.idp.set_access_ttl(100);
        let (mut b, _) = sign_in(&e, "/app").await;
        e.idp.fail_token(fault.clone());
        // Due for refresh, not expired: served at once, unmarked, while the refresh fails.
        e.clock().advance(Duration::from_secs(60));
        let r = tokio::time::timeout(Duration::from_millis(1500), b.api(&e.proxy.url("/app")))
            .await
            .expect("a request waited on the token endpoint");
        assert_eq!(r.status, 200);
        assert!(seen(&r.json(), "x-auth-degraded").is_empty());
        // Expired: served in grace, marked, never waiting on the token endpoint.
        e.clock().advance(Duration::from_secs(60));
        for _ in 0..20 {
            let r = tokio::time::timeout(Duration::from_millis(1500), b.api(&e.proxy.url("/app")))
                .await
                .expect("a request waited on the token endpoint");
            assert_eq!(r.status, 200, "{fault:?}");
            assert_eq!(seen(&r.json(), "x-auth-degraded"), ["1"], "{fault:?}");
        }
        // Backoff: far fewer token calls than requests.
        let m = e.proxy.metrics().await;
        let attempts = metric_value(
            &m,
            "portcullis_session_refreshes_total{issuer=\"corp\",result=\"transient\"}",
        );
        assert!(
            attempts <= 3.0,
            "{fault:?}: {attempts} refresh runs for 21 requests"
        );
        assert!(metric_value(&m, "portcullis_session_grace_requests_total{route=\"app\"}") >= 20.0);
        // Past the grace: no session; a browser signs in again (the IdP still down for tokens).
        e.clock().advance(Duration::from_secs(600));
        assert_eq!(b.api(&e.proxy.url("/app")).await.status, 401, "{fault:?}");
        let r = b.navigate(&e.proxy.url("/app")).await;
        assert_eq!(r.status, 302);
        assert!(
            r.headers["location"]
                .to_str()
                .unwrap()
                .starts_with(&e.idp.url("/authorize"))
        );
    }
}

#[tokio::test]
async fn the_idp_coming_back_ends_the_grace() {
    let e = env().await;
    e.idp.set_access_ttl(100);
    let (mut b, _) = sign_in(&e, "/app").await;
    e.idp.fail_token(TokenFault::Down);
    e.clock().advance(Duration::from_secs(120));
    let r = b.api(&e.proxy.url("/app")).await;
    assert_eq!(seen(&r.json(), "x-auth-degraded"), ["1"]);
    e.idp.recover_token();
    // The next attempt after the backoff refreshes; requests are unmarked again.
    let r = wait_for(
        Duration::from_secs(10),
        "refreshed after recovery",
        || async {
            let mut b = b.clone();
            let r = b.api(&e.proxy.url("/app")).await;
            seen(&r.json(), "x-auth-degraded").is_empty().then_some(r)
        },
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn invalid_grant_ends_the_session() {
    let e = env().await;
    e.idp.set_access_ttl(100);
    let (mut b, _) = sign_in(&e, "/app").await;
    e.idp.fail_token(TokenFault::InvalidGrant);
    e.clock().advance(Duration::from_secs(60));
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    wait_for(Duration::from_secs(5), "session deleted", || async {
        let mut b = b.clone();
        (b.api(&e.proxy.url("/app")).await.status == 401).then_some(())
    })
    .await;
    let r = b.navigate(&e.proxy.url("/app")).await;
    assert_eq!(r.status, 302);
    let m = e.proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_session_refreshes_total{issuer=\"corp\",result=\"definitive\"}",
        1.0,
    );
    // Expired with invalid_grant: the request itself is refused, never served degraded.
    e.idp.recover_token();
    let (mut b, _) = sign_in(&e, "/app").await;
    e.idp.fail_token(TokenFault::InvalidGrant);
    e.clock().advance(Duration::from_secs(200));
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 401);
}

#[tokio::test]
async fn sign_out_ends_the_session_and_redirects_to_the_idp() {
    let e = env().await;
    let (mut b, _) = sign_in(&e, "/app").await;
    let cookie = b.cookies[COOKIE].clone();
    // A link on the app's own pages (same-origin fetch metadata) signs out at once.
    let r = b
        .follow_link(&e.proxy.url("/oauth2/sign_out?rd=/bye"))
        .await;
    assert_eq!(r.status, 302);
    let loc = r.headers["location"].to_str().unwrap();
    assert!(loc.starts_with(&e.idp.url("/end_session")), "{loc}");
    assert!(query_param(loc, "id_token_hint").is_some_and(|t| t.starts_with("ey")));
    assert_eq!(
        query_param(loc, "post_logout_redirect_uri").unwrap(),
        e.proxy.url("/bye")
    );
    assert_eq!(query_param(loc, "client_id").as_deref(), Some(CLIENT_ID));
    assert!(!b.cookies.contains_key(COOKIE), "cookie cleared");
    // The old cookie no longer works anywhere.
    let mut old = CookieClient::new();
    old.cookies.insert(COOKIE.into(), cookie);
    assert_eq!(old.api(&e.proxy.url("/app")).await.status, 401);
    let m = e.proxy.metrics().await;
    assert_metric(&m, "portcullis_logouts_total{kind=\"sign_out\"}", 1.0);
}

#[tokio::test]
async fn back_channel_logout_ends_the_sessions_of_the_sid() {
    let e = env().await;
    let (mut b, _) = sign_in(&e, "/app").await;
    let (mut other, _) = sign_in(&e, "/app").await;
    let post = |body: String| {
        let mut c = CookieClient::new();
        let url = e.proxy.url("/oauth2/backchannel_logout");
        async move {
            c.request(
                "POST",
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                &body,
            )
            .await
        }
    };
    // Refused: not a logout token, wrong audience, with a nonce, no events.
    let id_token = e.idp.id_token(&e.key, CLIENT_ID, "n").build();
    let bad = [
        id_token,
        e.idp.logout_token(&e.key, "someone-else", "sid-1").build(),
        e.idp
            .logout_token(&e.key, CLIENT_ID, "sid-1")
            .claim("nonce", "n")
            .build(),
        e.idp
            .logout_token(&e.key, CLIENT_ID, "sid-1")
            .without("events")
            .build(),
        e.idp
            .logout_token(&e.key, CLIENT_ID, "sid-1")
            .header("typ", "JWT")
            .without("jti")
            .build(),
    ];
    for t in bad {
        let r = post(format!("logout_token={t}")).await;
        assert_eq!(r.status, 400);
    }
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    let token = e.idp.logout_token(&e.key, CLIENT_ID, "sid-1").build();
    let r = post(format!("logout_token={token}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "no-store");
    // Both sessions of sid-1 are gone; a replay is refused.
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 401);
    assert_eq!(other.api(&e.proxy.url("/app")).await.status, 401);
    assert_eq!(post(format!("logout_token={token}")).await.status, 400);
    // Wrong method and content type.
    let mut c = CookieClient::new();
    assert_eq!(
        c.api(&e.proxy.url("/oauth2/backchannel_logout"))
            .await
            .status,
        405
    );
    let r = c
        .request(
            "POST",
            &e.proxy.url("/oauth2/backchannel_logout"),
            &[("content-type", "text/plain")],
            &format!("logout_token={token}"),
        )
        .await;
    assert_eq!(r.status, 400);
    let m = e.proxy.metrics().await;
    assert_metric(&m, "portcullis_logouts_total{kind=\"backchannel\"}", 1.0);
}

#[tokio::test]
async fn sign_in_in_several_tabs_at_once() {
    let e = env().await;
    let mut b = CookieClient::new();
    // Three tabs start a sign-in before any comes back.
    let mut idp_urls = Vec::new();
    for p in ["/app/one", "/app/two", "/app/three"] {
        let r = b.navigate(&e.proxy.url(p)).await;
        assert_eq!(r.status, 302);
        idp_urls.push(r.headers["location"].to_str().unwrap().to_string());
    }
    // They come back in another order, each to its own page.
    for (i, want) in [(2, "/app/three"), (0, "/app/one"), (1, "/app/two")] {
        let idp = support::client::get(&idp_urls[i]).await;
        let cb = idp.headers["location"].to_str().unwrap().to_string();
        let r = b.navigate(&cb).await;
        assert_eq!(r.status, 302, "{want}");
        assert_eq!(r.headers["location"], want);
    }
    // Many abandoned sign-ins do not pile up cookies.
    let mut b = CookieClient::new();
    for _ in 0..10 {
        assert_eq!(b.navigate(&e.proxy.url("/app")).await.status, 302);
    }
    let pending = b
        .cookies
        .keys()
        .filter(|k| k.starts_with("portcullis_login_"))
        .count();
    assert!(pending <= 3, "{pending} login cookies kept");
}

#[tokio::test]
async fn use_keeps_a_session_alive_until_the_idle_timeout() {
    let e = env_with(ROUTES, &["idle_timeout: 10m", "lifetime: 1h"], &[]).await;
    e.idp.set_access_ttl(7200);
    let (mut b, _) = sign_in(&e, "/app").await;
    // Used every 9 minutes: last use is written back, the session lives on.
    for _ in 0..3 {
        e.clock().advance(Duration::from_secs(9 * 60));
        assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
        // The write-back runs in the background.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unused for more than the idle timeout: gone.
    e.clock().advance(Duration::from_secs(11 * 60));
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 401);
    // The absolute lifetime ends a session however it is used.
    let (mut b, _) = sign_in(&e, "/app").await;
    for _ in 0..7 {
        e.clock().advance(Duration::from_secs(9 * 60));
        let _ = b.api(&e.proxy.url("/app")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.api(&e.proxy.url("/app")).await.status,
        401,
        "past the 1h lifetime"
    );
}

/// A navigation with fetch metadata `site` (or none) and extra headers.
async fn sign_out_request(
    b: &mut CookieClient,
    e: &Env,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> support::client::Resp {
    let mut h = vec![("accept", "text/html")];
    h.extend_from_slice(headers);
    b.request(method, &e.proxy.url(path), &h, "").await
}

/// The form action of a sign-out confirmation page.
fn confirm_action(resp: &support::client::Resp) -> String {
    let body = String::from_utf8_lossy(&resp.body).to_string();
    let start = body.find("action=\"").expect("a form") + "action=\"".len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end].replace("&amp;", "&")
}

#[tokio::test]
async fn sign_out_cannot_be_forced_cross_site() {
    let e = env().await;
    let (mut b, _) = sign_in(&e, "/app").await;
    let evil = [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("sec-fetch-site", "none")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
        // No fetch metadata, no Origin: curl, an old browser, an <img> in some mail.
        vec![],
    ];
    for method in ["GET", "POST"] {
        for headers in &evil {
            let r = sign_out_request(&mut b, &e, method, "/oauth2/sign_out?rd=/bye", headers).await;
            // A confirmation page: no redirect to the IdP, no cookie cleared, session alive.
            assert_eq!(r.status, 200, "{method} {headers:?}");
            assert!(r.headers.get("location").is_none(), "{method} {headers:?}");
            assert!(
                r.headers.get("set-cookie").is_none(),
                "{method} {headers:?}"
            );
            assert_eq!(r.headers["x-frame-options"], "DENY");
            assert_eq!(r.headers["cache-control"], "no-store");
            let body = String::from_utf8_lossy(&r.body);
            assert!(body.contains("<form method=\"post\""), "{body}");
            assert!(
                confirm_action(&r).starts_with("/oauth2/sign_out?rd=%2Fbye&confirm="),
                "{body}"
            );
            assert_eq!(
                b.api(&e.proxy.url("/app")).await.status,
                200,
                "{method} {headers:?}"
            );
        }
    }
    let page = sign_out_request(&mut b, &e, "GET", "/oauth2/sign_out?rd=/bye", &[]).await;
    let action = confirm_action(&page);
    let token = query_param(&action, "confirm").unwrap();
    // The token alone is not enough where the request names another site, nor a wrong or
    // another session's token without any header.
    let (mut other, _) = sign_in(&e, "/app").await;
    let other_page = sign_out_request(&mut other, &e, "GET", "/oauth2/sign_out", &[]).await;
    let other_token = query_param(&confirm_action(&other_page), "confirm").unwrap();
    assert_ne!(token, other_token);
    for (path, headers) in [
        (action.clone(), vec![("sec-fetch-site", "cross-site")]),
        (action.clone(), vec![("origin", "https://evil.example")]),
        (
            "/oauth2/sign_out?rd=/bye&confirm=AAAAAAAAAAAAAAAAAAAAAA".to_string(),
            vec![],
        ),
        (format!("/oauth2/sign_out?confirm={other_token}"), vec![]),
        (format!("{action}&confirm={token}"), vec![]),
    ] {
        let r = sign_out_request(&mut b, &e, "POST", &path, &headers).await;
        assert_eq!(r.status, 200, "{path} {headers:?}");
        assert!(r.headers.get("location").is_none());
        assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    }
    // A GET with the token is still only the page.
    let r = sign_out_request(&mut b, &e, "GET", &action, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    let m = e.proxy.metrics().await;
    assert_metric(&m, "portcullis_logouts_total{kind=\"sign_out\"}", 0.0);
    // The confirmation form's POST (no headers: an old browser) ends the session, and only
    // it sends id_token_hint to the IdP.
    let r = sign_out_request(&mut b, &e, "POST", &action, &[]).await;
    assert_eq!(r.status, 302);
    let loc = r.headers["location"].to_str().unwrap();
    assert!(loc.starts_with(&e.idp.url("/end_session")), "{loc}");
    assert!(query_param(loc, "id_token_hint").is_some_and(|t| t.starts_with("ey")));
    assert_eq!(
        query_param(loc, "post_logout_redirect_uri").unwrap(),
        e.proxy.url("/bye")
    );
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 401);
    // A POST whose Origin is this origin, and one with same-origin fetch metadata, end theirs.
    let origin = e.proxy.url("");
    let origin = origin.trim_end_matches('/');
    let r = sign_out_request(
        &mut other,
        &e,
        "POST",
        "/oauth2/sign_out",
        &[("origin", origin)],
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(other.api(&e.proxy.url("/app")).await.status, 401);
    let (mut third, _) = sign_in(&e, "/app").await;
    let r = sign_out_request(
        &mut third,
        &e,
        "POST",
        "/oauth2/sign_out",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(third.api(&e.proxy.url("/app")).await.status, 401);
    // Without a session there is nothing to confirm: signed out, cookie cleared.
    let r = sign_out_request(
        &mut CookieClient::new(),
        &e,
        "GET",
        "/oauth2/sign_out",
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("You are signed out."));
    let m = e.proxy.metrics().await;
    assert_metric(&m, "portcullis_logouts_total{kind=\"sign_out\"}", 3.0);
}

#[tokio::test]
async fn back_channel_logout_follows_a_sid_brought_by_a_refresh() {
    let e = env().await;
    e.idp.set_access_ttl(100);
    let logout = |sid: &str| {
        let token = e.idp.logout_token(&e.key, CLIENT_ID, sid).build();
        let url = e.proxy.url("/oauth2/backchannel_logout");
        async move { backchannel_logout(&url, &token).await.status }
    };
    // Signed in without a sid; a refresh brings the first one.
    e.idp.set_sid(None);
    let (mut b, _) = sign_in(&e, "/app").await;
    e.idp.set_sid(Some("sid-first"));
    e.clock().advance(Duration::from_secs(60));
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    wait_until(Duration::from_secs(5), || async { e.idp.refreshes() == 1 }).await;
    e.proxy
        .wait_metric(Duration::from_secs(5), "refresh stored", REFRESHES_OK, 1.0)
        .await;
    assert_eq!(logout("sid-first").await, 200);
    assert_eq!(
        b.api(&e.proxy.url("/app")).await.status,
        401,
        "the first sid ended the session"
    );
    // Signed in with one sid; a refresh brings another.
    e.idp.set_sid(Some("sid-a"));
    let (mut b, _) = sign_in(&e, "/app").await;
    e.idp.set_sid(Some("sid-b"));
    e.clock().advance(Duration::from_secs(60));
    assert_eq!(b.api(&e.proxy.url("/app")).await.status, 200);
    wait_until(Duration::from_secs(5), || async { e.idp.refreshes() == 2 }).await;
    e.proxy
        .wait_metric(
            Duration::from_secs(5),
            "second refresh stored",
            REFRESHES_OK,
            2.0,
        )
        .await;
    assert_eq!(logout("sid-b").await, 200);
    assert_eq!(
        b.api(&e.proxy.url("/app")).await.status,
        401,
        "the new sid ended the session"
    );
}

#[tokio::test]
async fn login_cookies_have_the_host_prefix_when_the_session_cookie_does() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(Algorithm::RS256, "k1");
    let upstream = support::upstream::start("app").await;
    let proxy = scenario(&idp, &upstream, ROUTES, &["cookie: { secure: true }"], &[])
        .start()
        .await;
    // The attacker starts a sign-in of their own and gets its login cookie and IdP URL.
    let mut attacker = CookieClient::new();
    let r = attacker.navigate(&proxy.url("/app")).await;
    assert_eq!(r.status, 302);
    let (name, value) = attacker
        .cookies
        .iter()
        .find(|(k, _)| k.contains("portcullis_login_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert!(name.starts_with("__Host-portcullis_login_"), "{name}");
    let attrs = &attacker.attributes[&name];
    assert!(
        attrs.contains("Secure") && attrs.contains("Path=/") && !attrs.contains("Domain"),
        "{attrs}"
    );
    let idp_resp = support::client::get(r.headers["location"].to_str().unwrap()).await;
    let callback = idp_resp.headers["location"].to_str().unwrap().to_string();
    // From a sibling subdomain they can only toss the unprefixed name into the victim's
    // browser; the callback does not take it (login CSRF refused).
    let mut victim = CookieClient::new();
    let tossed = name.trim_start_matches("__Host-").to_string();
    victim.extra.push((tossed, value.clone()));
    let r = victim.navigate(&callback).await;
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!victim.cookies.contains_key("__Host-portcullis_session"));
    // The attacker's own browser (holding the prefixed cookie) completes it.
    let r = attacker.navigate(&callback).await;
    assert_eq!(r.status, 302);
    assert!(attacker.cookies.contains_key("__Host-portcullis_session"));
    assert!(
        attacker
            .cookies
            .keys()
            .all(|k| !k.contains("portcullis_login_")),
        "{:?}",
        attacker.cookies
    );
}

#[tokio::test]
async fn starting_a_sign_in_clears_few_login_cookies_and_keeps_them_small() {
    let e = env().await;
    // A 10 KB Cookie header of login cookies that do not open (hundreds of them).
    let mut b = CookieClient::new();
    for i in 0..380 {
        b.extra
            .push((format!("portcullis_login_junk{i:06}x"), "x".into()));
    }
    assert!(b.cookie_header().len() > 10_000);
    let r = b.navigate(&e.proxy.url("/app")).await;
    assert_eq!(r.status, 302);
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(set.len() <= 9, "{} Set-Cookie headers", set.len());
    assert!(set.len() >= 2, "some junk is cleared: {set:?}");
    let bytes: usize = set.iter().map(|v| v.len()).sum();
    assert!(bytes < 4096, "{bytes} bytes of Set-Cookie");
    // Long return targets: three pending sign-ins stay far below 8 KB of cookies.
    let mut b = CookieClient::new();
    let long = format!("/app/report?q={}", "a".repeat(1900));
    for _ in 0..3 {
        assert_eq!(b.navigate(&e.proxy.url(&long)).await.status, 302);
    }
    let login_bytes: usize = b
        .cookies
        .iter()
        .filter(|(k, _)| k.starts_with("portcullis_login_"))
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    assert_eq!(
        b.cookies
            .keys()
            .filter(|k| k.starts_with("portcullis_login_"))
            .count(),
        3
    );
    assert!(login_bytes < 4096, "{login_bytes} bytes of login cookies");
    // Such a sign-in comes back to the page's path (never elsewhere).
    let (resp, hops) = b.follow(&e.proxy.url(&long)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        hops.last().unwrap().url,
        e.proxy.url("/app/report"),
        "{hops:?}"
    );
}

/// External authorization decides a session as the proxy does: a fresh one allowed with its
/// identity, one in outage grace allowed and marked, one past the grace refused. A refresh
/// is server-side (the cookie names the session, not its tokens), so no allow carries a new
/// cookie for the front proxy to pass on.
#[tokio::test]
async fn an_external_decision_allows_a_session_in_grace_and_marks_it() {
    let e = env_and(ROUTES, &[], &[], |s| {
        s.section("external_auth", &["forward_auth_path: /_auth"])
    })
    .await;
    e.idp.set_access_ttl(100);
    let (b, _) = sign_in(&e, "/app").await;
    let cookie = format!("{COOKIE}={}", b.cookies[COOKIE]);
    let url = e.proxy.url("/_auth");
    let describing = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
        ("x-forwarded-uri", "/app/page"),
        ("cookie", cookie.as_str()),
    ];
    let ask = || support::client::get_with(&url, &describing);
    let header = |r: &support::client::Resp, name: &str| {
        r.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    };
    let r = ask().await;
    assert_eq!(r.status, 200);
    assert!(header(&r, "x-auth-request-user").is_some());
    assert_eq!(header(&r, "x-auth-degraded"), None);
    // Refreshed in the background past half the lifetime: still allowed, same cookie.
    e.clock().advance(Duration::from_secs(60));
    assert_eq!(ask().await.status, 200);
    wait_until(Duration::from_secs(5), || async { e.idp.refreshes() == 1 }).await;
    let r = ask().await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("set-cookie").is_none());
    // The token endpoint down and the access token expired: allowed in grace, marked.
    e.idp.fail_token(TokenFault::Down);
    e.clock().advance(Duration::from_secs(120));
    let r = ask().await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-degraded").as_deref(), Some("1"));
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    // Past the grace: no session.
    e.clock().advance(Duration::from_secs(600));
    assert_eq!(ask().await.status, 401);
    assert_eq!(
        e.up.hits(),
        1,
        "only the sign-in's own page reached the app"
    );
}
