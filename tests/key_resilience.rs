//! Signing keys through rollover and IdP trouble, end to end: key rollover, unknown-kid storms,
//! unknown kids against a hanging IdP (bounded by `unknown_kid_wait`), IdP outages (500, hang,
//! reset), restart from persisted state, `Retry-After` (also capped for the schedule), the
//! circuit breaker, no usable keys (503, never 401; readiness as a start-up latch),
//! `max_stale`, the verified-token cache across rotation, and the metrics for all of it.
//!
//! Time that must pass for the code under test (cool-downs, breaker open time, staleness,
//! Retry-After) is moved on the injected `ManualClock`; only the scheduled-refresh tests use a
//! short real `refresh_interval`, and they wait with `wait_until` deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::clock::ManualClock;
use support::client::{challenge, get_bearer};
use support::idp::{DISCOVERY, Failure, JWKS, MockIdp, SigningKey};
use support::scenario::{Env, Route, Scenario, auth_series};
use support::upstream;
use support::{Proxy, assert_metric, client, metric_value, temp_dir, wait_until};

const API_ROUTE: &str = "  - { name: api, path: /, upstream: app, auth: bearer }";

/// An IdP with one RS256 key `k1`, the echo upstream, and Portcullis with issuer `corp`
/// configured with `issuer_extra`, on a ManualClock the IdP stamps requests with too.
async fn env(issuer_extra: &[&str]) -> Env {
    Env::start("k1", Some(ManualClock::new()), issuer_extra, |s| {
        s.routes_yaml(API_ROUTE)
    })
    .await
}

async fn metric(proxy: &Proxy, series: &str) -> f64 {
    metric_value(&proxy.metrics().await, series)
}

const REFRESH_OK: &str = "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"success\"}";
const REFRESH_FAILED: &str = "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"failure\"}";
const FORCED_FETCHED: &str =
    "portcullis_jwks_forced_refreshes_total{issuer=\"corp\",result=\"fetched\"}";
const FORCED_FAILED: &str =
    "portcullis_jwks_forced_refreshes_total{issuer=\"corp\",result=\"failed\"}";
const FORCED_COOLDOWN: &str =
    "portcullis_jwks_forced_refreshes_total{issuer=\"corp\",result=\"cooldown\"}";
const FORCED_JOINED: &str =
    "portcullis_jwks_forced_refreshes_total{issuer=\"corp\",result=\"joined\"}";
const KEYS_USABLE: &str = "portcullis_issuer_keys_usable{issuer=\"corp\"}";
const KEYS: &str = "portcullis_jwks_keys{issuer=\"corp\"}";
const BREAKER: &str = "portcullis_idp_breaker_state{issuer=\"corp\"}";
const CACHE_HIT: &str = "portcullis_token_cache_requests_total{result=\"hit\"}";

fn auth_result(reason: &str) -> String {
    auth_series("api", "corp", reason)
}

/// A distinct (so not cached) valid token for `key`.
fn fresh(idp: &MockIdp, key: &SigningKey) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    idp.token(key).claim("jti", format!("t-{n}")).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rollover_is_accepted_with_exactly_one_extra_jwks_fetch() {
    let e = env(&[]).await;
    let url = e.proxy.url("/r");
    let old = fresh(&e.idp, &e.key);
    assert_eq!(get_bearer(&url, &old).await.status, 200);
    let jwks = e.idp.hits(JWKS);
    assert_eq!(jwks, 1);

    // The IdP starts signing with a new key (a different type, too).
    // Fifty requests with it arrive at once: one fetch serves them all.
    let k2 = e.idp.new_key(Algorithm::ES256, "k2");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (url, token) = (url.clone(), fresh(&e.idp, &k2));
        tasks.spawn(async move { get_bearer(&url, &token).await });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(e.idp.hits(JWKS), jwks + 1, "one fetch for the new kid");
    // More tokens of the new key, and the old key's, need no fetch.
    for _ in 0..5 {
        assert_eq!(get_bearer(&url, &fresh(&e.idp, &k2)).await.status, 200);
        assert_eq!(get_bearer(&url, &fresh(&e.idp, &e.key)).await.status, 200);
    }
    assert_eq!(get_bearer(&url, &old).await.status, 200);
    assert_eq!(e.idp.hits(JWKS), jwks + 1);

    assert_eq!(metric(&e.proxy, FORCED_FETCHED).await, 1.0);
    assert_eq!(metric(&e.proxy, KEYS).await, 2.0);
    wait_until(Duration::from_secs(10), || async {
        metric(&e.proxy, REFRESH_OK).await == 2.0
    })
    .await;
    assert_eq!(e.up.hits(), 62);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_storm_fetches_at_most_once_per_cooldown() {
    let e = env(&["unknown_kid_cooldown: 30s"]).await;
    let url = e.proxy.url("/storm");
    let evil = SigningKey::generate(Algorithm::EdDSA, "evil");
    let http = client::http1();
    let jwks = e.idp.hits(JWKS);

    let storm = |round: usize| {
        let tokens: Vec<String> = (0..1000)
            .map(|i| {
                e.idp
                    .token(&evil)
                    .kid(&format!("storm-{round}-{i}"))
                    .build()
            })
            .collect();
        let http = http.clone();
        let url = url.clone();
        async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(100));
            let mut tasks = tokio::task::JoinSet::new();
            for t in tokens {
                let (http, url, permits) = (http.clone(), url.clone(), permits.clone());
                tasks.spawn(async move {
                    let _p = permits.acquire_owned().await.unwrap();
                    let req = Request::get(url.as_str())
                        .header("authorization", format!("Bearer {t}"))
                        .body(Full::<Bytes>::default())
                        .unwrap();
                    let resp = http.request(req).await.unwrap();
                    let status = resp.status().as_u16();
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    (status, challenge)
                });
            }
            let mut n = 0;
            while let Some(r) = tasks.join_next().await {
                let (status, challenge) = r.unwrap();
                assert_eq!(status, 401);
                assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
                n += 1;
            }
            n
        }
    };

    let n = tokio::time::timeout(Duration::from_secs(120), storm(0))
        .await
        .expect("storm took too long");
    assert_eq!(n, 1000);
    assert!(
        e.idp.hits(JWKS) <= jwks + 1,
        "{} JWKS fetches for one storm",
        e.idp.hits(JWKS) - jwks
    );
    assert_eq!(metric(&e.proxy, FORCED_FETCHED).await, 1.0);
    // The others either waited for that refresh (joined) or came after it (cooldown).
    let refused = |m: &str| metric_value(m, FORCED_COOLDOWN) + metric_value(m, FORCED_JOINED);
    assert_eq!(refused(&e.proxy.metrics().await), 999.0);
    assert_eq!(metric(&e.proxy, &auth_result("unknown_kid")).await, 1000.0);
    // Valid tokens were never affected.
    assert_eq!(get_bearer(&url, &fresh(&e.idp, &e.key)).await.status, 200);

    // After the cool-down, one more fetch for the next storm — not one per token.
    e.clock().advance(Duration::from_secs(31));
    let jwks = e.idp.hits(JWKS);
    let n = tokio::time::timeout(Duration::from_secs(120), storm(1))
        .await
        .expect("storm took too long");
    assert_eq!(n, 1000);
    assert_eq!(e.idp.hits(JWKS), jwks + 1);
    assert_eq!(metric(&e.proxy, FORCED_FETCHED).await, 2.0);
    assert_eq!(refused(&e.proxy.metrics().await), 1998.0);
    assert_eq!(e.up.hits(), 1);
}

/// The IdP fails from now on; valid tokens keep working and no request waits on it.
async fn outage(failure: Failure) {
    // A real (short) refresh schedule so background refreshes hit the broken IdP while
    // requests are served; the IdP timeout is long compared to what a request may take.
    let e = env(&[
        "refresh_interval: 1s",
        "timeout: 4s",
        "retries: 1",
        "backoff_min: 10ms",
        "backoff_max: 20ms",
    ])
    .await;
    let url = e.proxy.url("/o");
    let cached = fresh(&e.idp, &e.key);
    assert_eq!(get_bearer(&url, &cached).await.status, 200);

    e.idp.fail(failure.clone());
    // A scheduled refresh reaches the broken IdP (for a hang: is waiting on it right now).
    wait_until(Duration::from_secs(10), || async {
        e.idp.hit_log().iter().any(|h| h.failure.is_some())
    })
    .await;
    let bound = Duration::from_secs(2);
    for i in 0..20 {
        let token = if i % 2 == 0 {
            cached.clone()
        } else {
            fresh(&e.idp, &e.key)
        };
        let started = tokio::time::Instant::now();
        let r = get_bearer(&url, &token).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{failure:?} request {i}");
        assert!(
            took < bound,
            "{failure:?}: request {i} took {took:?} (IdP timeout 4s)"
        );
    }
    let ready = client::get(&format!("http://{}/readyz", e.proxy.admin)).await;
    assert_eq!(ready.status, 200, "stale-but-usable keys keep /readyz up");
    if failure != Failure::Hang {
        wait_until(Duration::from_secs(10), || async {
            metric(&e.proxy, REFRESH_FAILED).await >= 1.0
        })
        .await;
        // An unknown kid during the outage: the forced refresh fails fast, the token is refused.
        let evil = SigningKey::generate(Algorithm::ES256, "unknown");
        let started = tokio::time::Instant::now();
        let r = get_bearer(&url, &e.idp.token(&evil).build()).await;
        assert_eq!(r.status, 401);
        assert!(started.elapsed() < bound);
    }
    assert_eq!(metric(&e.proxy, KEYS).await, 1.0);
    assert_eq!(metric(&e.proxy, &auth_result("ok")).await, 21.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_answering_500_does_not_affect_valid_tokens() {
    outage(Failure::Status(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_hanging_does_not_affect_valid_tokens() {
    outage(Failure::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_resetting_connections_does_not_affect_valid_tokens() {
    outage(Failure::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_idp_outage_is_ready_from_persisted_state() {
    let dir = temp_dir("restart");
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::ES256, "k1");
    let up = upstream::start("app").await;
    let scenario = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &["timeout: 2s", "retries: 0"])
        .routes_yaml(API_ROUTE)
        .state_dir(&dir);
    let first = scenario.clone().start().await;
    assert_eq!(
        get_bearer(&first.url("/a"), &fresh(&idp, &key))
            .await
            .status,
        200
    );
    let state = dir.join("issuers").join("corp.json");
    wait_until(Duration::from_secs(10), || async { state.exists() }).await;
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["issuer"], idp.issuer());
    assert_eq!(saved["jwks"]["keys"][0]["kid"], "k1");
    let m = first.metrics().await;
    assert_metric(
        &m,
        "portcullis_state_loads_total{issuer=\"corp\",result=\"success\"}",
        0.0,
    );
    first.shutdown().await;

    // The IdP goes down (it hangs: startup must not wait for it), and Portcullis restarts.
    idp.fail(Failure::Hang);
    let hits = idp.total_hits();
    let second = scenario.start().await; // waits for /readyz 200
    for _ in 0..3 {
        let r = get_bearer(&second.url("/a"), &fresh(&idp, &key)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let m = second.metrics().await;
    assert_metric(
        &m,
        "portcullis_state_loads_total{issuer=\"corp\",result=\"success\"}",
        1.0,
    );
    assert_metric(&m, KEYS, 1.0);
    // Invalid tokens are still refused with the persisted keys.
    let evil = SigningKey::generate(Algorithm::ES256, "k1");
    assert_eq!(
        get_bearer(&second.url("/a"), &idp.token(&evil).build())
            .await
            .status,
        401
    );
    // It did try the IdP in the background.
    wait_until(Duration::from_secs(10), || async {
        idp.total_hits() > hits
    })
    .await;
}

async fn retry_after(failure: Failure, wait: Duration) {
    let clock = ManualClock::new();
    let idp = MockIdp::start_with_clock(clock.clone()).await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    idp.fail_next(failure.clone(), 1);
    let up = upstream::start("app").await;
    let scenario = Scenario::new().upstream("app", &up).issuer(
        "corp",
        &idp,
        &[
            "retries: 2",
            "backoff_min: 10ms",
            "backoff_max: 20ms",
            "max_retry_after: 60s",
        ],
    );
    let scenario = scenario.routes_yaml(API_ROUTE);
    // Ready only after the 429, the wait, and a successful retry.
    let proxy = scenario.clock(clock.clone()).start().await;

    let log = idp.hit_log();
    assert_eq!(log[0].failure, Some(failure.clone()));
    assert_eq!(log[1].failure, None);
    assert_eq!(log[0].path, log[1].path, "the same call retried");
    assert!(
        log[1].at.duration_since(log[0].at) >= wait,
        "{failure:?}: retried after {:?}",
        log[1].at.duration_since(log[0].at)
    );
    assert!(log[1].wall >= log[0].wall + wait);
    assert!(
        clock.slept() >= wait,
        "{failure:?}: slept {:?}",
        clock.slept()
    );
    assert!(clock.slept() < wait + Duration::from_secs(2));
    assert_metric(
        &proxy.metrics().await,
        "portcullis_idp_retries_total{endpoint=\"discovery\",issuer=\"corp\"}",
        1.0,
    );
    assert_eq!(
        get_bearer(&proxy.url("/"), &fresh(&idp, &key)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_seconds_is_respected() {
    retry_after(Failure::RetryAfterSecs(7), Duration::from_secs(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_is_respected() {
    retry_after(
        Failure::RetryAfterDate(Duration::from_secs(10)),
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_remembered_across_calls() {
    // No retries within a call: the 429 ends the refresh. The next calls (the JWKS fallback in
    // the same refresh, and forced refreshes after the cool-down) must still wait it out.
    let e = env(&[
        "retries: 0",
        "unknown_kid_cooldown: 5s",
        "breaker_threshold: 100",
    ])
    .await;
    let url = e.proxy.url("/ra");
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger");
    e.idp.fail_next(Failure::RetryAfterSecs(30), 1);
    let before = e.idp.total_hits();

    e.clock().advance(Duration::from_secs(6));
    let r = get_bearer(&url, &e.idp.token(&stranger).kid("s-1").build()).await;
    assert_eq!(r.status, 401);
    let log = e.idp.hit_log();
    assert_eq!(log.len(), before + 1, "nothing after the 429: {log:?}");
    let limited = log[before].clone();
    assert_eq!(limited.failure, Some(Failure::RetryAfterSecs(30)));

    // Past the cool-down, inside Retry-After: refused without calling the IdP.
    e.clock().advance(Duration::from_secs(6));
    let r = get_bearer(&url, &e.idp.token(&stranger).kid("s-2").build()).await;
    assert_eq!(r.status, 401);
    assert_eq!(e.idp.total_hits(), before + 1);
    // Valid tokens are not affected.
    assert_eq!(get_bearer(&url, &fresh(&e.idp, &e.key)).await.status, 200);

    // After Retry-After: the next new kid is fetched.
    let k2 = e.idp.new_key(Algorithm::EdDSA, "k2");
    e.clock().advance(Duration::from_secs(19));
    let r = get_bearer(&url, &e.idp.token(&stranger).kid("s-3").build()).await;
    assert_eq!(r.status, 401, "29 s after the 429: still waiting");
    assert_eq!(e.idp.total_hits(), before + 1);
    // After Retry-After (and the cool-down of that last attempt).
    e.clock().advance(Duration::from_secs(6));
    let r = get_bearer(&url, &fresh(&e.idp, &k2)).await;
    assert_eq!(r.status, 200);
    let log = e.idp.hit_log();
    assert!(log.len() > before + 1);
    assert!(log[before + 1].at.duration_since(limited.at) >= Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_refresh_waits_for_retry_after() {
    // Real time: the background schedule (refresh_interval 1s) meets a 429 with
    // Retry-After: 2 on every call; consecutive calls must be at least 2 s apart.
    let idp = MockIdp::start().await;
    idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let scenario = Scenario::new().upstream("app", &up).issuer(
        "corp",
        &idp,
        &[
            &format!("jwks_uri: \"{}\"", idp.url(JWKS)),
            "refresh_interval: 1s",
            "retries: 0",
            "breaker_threshold: 100",
        ],
    );
    let proxy = scenario.routes_yaml(API_ROUTE).start().await;
    idp.fail(Failure::RetryAfterSecs(2));
    let limited = || {
        idp.hit_log()
            .into_iter()
            .filter(|h| h.failure.is_some())
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(20), || async { limited().len() >= 4 }).await;
    let log = limited();
    for w in log.windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= Duration::from_secs(2),
            "IdP called again after {gap:?}"
        );
    }
    assert!(metric(&proxy, REFRESH_FAILED).await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_threshold_and_recovers_after_open_time() {
    let clock = ManualClock::new();
    let idp = MockIdp::start_with_clock(clock.clone()).await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let scenario = Scenario::new().upstream("app", &up).issuer(
        "corp",
        &idp,
        &[
            &format!("jwks_uri: \"{}\"", idp.url(JWKS)),
            "retries: 0",
            "breaker_threshold: 3",
            "breaker_open_for: 30s",
            "unknown_kid_cooldown: 5s",
        ],
    );
    let scenario = scenario.routes_yaml(API_ROUTE);
    let proxy = scenario.clock(clock.clone()).start().await;
    let url = proxy.url("/b");
    assert_eq!(metric(&proxy, BREAKER).await, 0.0);
    assert_eq!(
        idp.hits(DISCOVERY),
        0,
        "a fixed jwks_uri needs no discovery"
    );
    let evil = SigningKey::generate(Algorithm::EdDSA, "evil");

    idp.fail(Failure::Status(500));
    // Three forced refreshes (one per cool-down) fail: the breaker opens.
    for i in 0..3 {
        clock.advance(Duration::from_secs(6));
        let r = get_bearer(&url, &idp.token(&evil).kid(&format!("new-{i}")).build()).await;
        assert_eq!(r.status, 401);
        assert_eq!(idp.hits(JWKS), 2 + i);
    }
    assert_eq!(metric(&proxy, BREAKER).await, 1.0);

    // While open: no IdP request at all.
    clock.advance(Duration::from_secs(6));
    let r = get_bearer(&url, &idp.token(&evil).kid("new-3").build()).await;
    assert_eq!(r.status, 401);
    assert_eq!(idp.hits(JWKS), 4, "no request while the breaker is open");
    let m = proxy.metrics().await;
    assert_metric(&m, FORCED_FAILED, 4.0);
    assert_metric(
        &m,
        "portcullis_idp_request_duration_seconds_count{endpoint=\"jwks\",issuer=\"corp\",outcome=\"breaker_open\"}",
        1.0,
    );
    // Valid tokens don't need the IdP.
    assert_eq!(get_bearer(&url, &fresh(&idp, &key)).await.status, 200);

    // The IdP is back with a new key; after breaker_open_for a probe goes through and closes it.
    idp.recover();
    let k2 = idp.new_key(Algorithm::ES256, "k2");
    clock.advance(Duration::from_secs(31));
    let r = get_bearer(&url, &fresh(&idp, &k2)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(idp.hits(JWKS), 5);
    assert_eq!(metric(&proxy, BREAKER).await, 0.0);
    assert_eq!(metric(&proxy, FORCED_FETCHED).await, 1.0);
}

/// The answer to a token that cannot be checked because the issuer has no usable keys: 503
/// with `Retry-After` and a body that says so, never a 401 `invalid_token` challenge.
fn assert_keys_unavailable(r: &client::Resp) {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_eq!(
        challenge(r),
        "",
        "no invalid_token: the client keeps its token"
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("signing keys are unavailable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_older_than_max_stale_are_refused_until_a_refresh_succeeds() {
    let e = env(&[
        "max_stale: 1h",
        "refresh_interval: 1s",
        "timeout: 2s",
        "retries: 0",
        "breaker_threshold: 1000",
    ])
    .await;
    let url = e.proxy.url("/s");
    let readyz = format!("http://{}/readyz", e.proxy.admin);
    let token = fresh(&e.idp, &e.key);
    assert_eq!(get_bearer(&url, &token).await.status, 200);

    e.idp.fail(Failure::Status(500));
    // Once a refresh has failed, no earlier (successful) one can still land.
    wait_until(Duration::from_secs(10), || async {
        metric(&e.proxy, REFRESH_FAILED).await >= 1.0
    })
    .await;
    // Still inside max_stale: fine.
    e.clock().advance(Duration::from_secs(50 * 60));
    assert_eq!(get_bearer(&url, &token).await.status, 200);
    assert_eq!(client::get(&readyz).await.status, 200);

    assert_metric(&e.proxy.metrics().await, KEYS_USABLE, 1.0);

    // Past max_stale: an outage, not a bad token. The cached token and a new one get 503
    // with Retry-After (clients keep their tokens), counted as keys_unavailable.
    e.clock().advance(Duration::from_secs(20 * 60));
    for t in [token.clone(), fresh(&e.idp, &e.key)] {
        assert_keys_unavailable(&get_bearer(&url, &t).await);
    }
    // /readyz stays up (a start-up latch: one IdP outage must not take every replica out of
    // the load balancer) and names the issuer; the gauge is the alert.
    let r = client::get(&readyz).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains("issuer corp: no usable keys"), "{body}");
    let m = e.proxy.metrics().await;
    assert_metric(&m, KEYS_USABLE, 0.0);
    assert_eq!(
        metric_value(&m, &auth_result("keys_unavailable")),
        2.0,
        "{m}"
    );
    assert!(
        metric_value(&m, "portcullis_jwks_age_seconds{issuer=\"corp\"}") >= 3600.0,
        "{m}"
    );

    // The IdP comes back: the next scheduled refresh makes the keys usable again.
    e.idp.recover();
    wait_until(Duration::from_secs(15), || async {
        metric_value(&e.proxy.metrics().await, KEYS_USABLE) == 1.0
    })
    .await;
    assert_eq!(get_bearer(&url, &token).await.status, 200);
    assert_eq!(client::get(&readyz).await.status, 200);
    assert!(metric(&e.proxy, "portcullis_jwks_age_seconds{issuer=\"corp\"}").await < 60.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_once_its_key_is_rotated_out_by_a_forced_refresh() {
    let e = env(&[]).await;
    let url = e.proxy.url("/c");
    let t1 = fresh(&e.idp, &e.key);
    let hits = metric(&e.proxy, CACHE_HIT).await;
    assert_eq!(get_bearer(&url, &t1).await.status, 200);
    assert_eq!(get_bearer(&url, &t1).await.status, 200);
    assert_eq!(
        metric(&e.proxy, CACHE_HIT).await,
        hits + 1.0,
        "second use is a cache hit"
    );

    // Rotation: k2 in, k1 out. A k2 token forces the refresh that drops k1.
    let k2 = e.idp.new_key(Algorithm::RS256, "k2");
    e.idp.remove_key("k1");
    let jwks = e.idp.hits(JWKS);
    assert_eq!(get_bearer(&url, &fresh(&e.idp, &k2)).await.status, 200);
    assert_eq!(e.idp.hits(JWKS), jwks + 1);
    assert_eq!(metric(&e.proxy, KEYS).await, 1.0);

    let r = get_bearer(&url, &t1).await;
    assert_eq!(r.status, 401, "a cached token outlives its key");
    assert!(challenge(&r).contains("error=\"invalid_token\""));
    assert_eq!(
        e.idp.hits(JWKS),
        jwks + 1,
        "within the cool-down: no second fetch"
    );
    assert_eq!(metric(&e.proxy, &auth_result("unknown_kid")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_once_its_key_is_rotated_out_by_a_scheduled_refresh() {
    let e = env(&["refresh_interval: 1s"]).await;
    let url = e.proxy.url("/c");
    let t1 = fresh(&e.idp, &e.key);
    assert_eq!(get_bearer(&url, &t1).await.status, 200);
    let hits = metric(&e.proxy, CACHE_HIT).await;

    // A refresh that changes nothing keeps the cached verification valid.
    let ok = metric(&e.proxy, REFRESH_OK).await;
    wait_until(Duration::from_secs(10), || async {
        metric(&e.proxy, REFRESH_OK).await >= ok + 1.0
    })
    .await;
    assert_eq!(get_bearer(&url, &t1).await.status, 200);
    assert_eq!(metric(&e.proxy, CACHE_HIT).await, hits + 1.0);

    let k2 = e.idp.new_key(Algorithm::EdDSA, "k2");
    e.idp.remove_key("k1");
    let ok = metric(&e.proxy, REFRESH_OK).await;
    // Two more successes: at least one refresh started after the rotation.
    wait_until(Duration::from_secs(10), || async {
        metric(&e.proxy, REFRESH_OK).await >= ok + 2.0
    })
    .await;
    // The new key came with the schedule: no forced refresh needed.
    assert_eq!(get_bearer(&url, &fresh(&e.idp, &k2)).await.status, 200);
    assert_eq!(
        metric(&e.proxy, FORCED_FETCHED).await,
        0.0,
        "the schedule did it"
    );
    // The old key is gone: its cached token is verified again and refused.
    assert_eq!(get_bearer(&url, &t1).await.status, 401);
    assert_eq!(metric(&e.proxy, &auth_result("unknown_kid")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_jwks_never_replaces_good_keys() {
    let e = env(&[
        "retries: 0",
        "unknown_kid_cooldown: 5s",
        "breaker_threshold: 100",
    ])
    .await;
    let url = e.proxy.url("/u");
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger");
    let cases = [
        Failure::MalformedJson,
        Failure::EmptyKeys,
        Failure::Status(500),
        Failure::Status(404),
    ];
    for (i, failure) in cases.iter().enumerate() {
        e.idp.fail(failure.clone());
        e.clock().advance(Duration::from_secs(6));
        // An unknown kid forces a refresh, which fails: the token is refused, keys stay.
        let r = get_bearer(&url, &e.idp.token(&stranger).kid(&format!("s-{i}")).build()).await;
        assert_eq!(r.status, 401, "{failure:?}");
        let r = get_bearer(&url, &fresh(&e.idp, &e.key)).await;
        assert_eq!(r.status, 200, "{failure:?}");
        assert_eq!(metric(&e.proxy, KEYS).await, 1.0, "{failure:?}");
    }
    let m = e.proxy.metrics().await;
    assert_eq!(metric_value(&m, FORCED_FAILED), cases.len() as f64, "{m}");
    assert_eq!(metric_value(&m, REFRESH_FAILED), cases.len() as f64, "{m}");
    let ready = client::get(&format!("http://{}/readyz", e.proxy.admin)).await;
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kids_never_queue_behind_a_hanging_idp() {
    // The IdP timeout (10 s) is far longer than the wait a request may spend on an
    // unknown-kid refresh (`unknown_kid_wait`, default 1 s).
    let e = env(&["timeout: 10s", "retries: 0"]).await;
    let url = e.proxy.url("/hang");
    let known = fresh(&e.idp, &e.key);
    assert_eq!(get_bearer(&url, &known).await.status, 200);
    e.idp.fail(Failure::Hang);
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger");

    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (url, token) = (
            url.clone(),
            e.idp.token(&stranger).kid(&format!("new-{i}")).build(),
        );
        tasks.spawn(async move {
            let t = tokio::time::Instant::now();
            let r = get_bearer(&url, &token).await;
            (r, t.elapsed())
        });
    }
    // While they wait, a token with a known kid is answered at once.
    wait_until(Duration::from_secs(5), || async {
        e.idp
            .hit_log()
            .iter()
            .any(|h| h.failure == Some(Failure::Hang))
    })
    .await;
    let t = tokio::time::Instant::now();
    assert_eq!(get_bearer(&url, &fresh(&e.idp, &e.key)).await.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "known kid took {:?}",
        t.elapsed()
    );

    let bound = Duration::from_millis(2500); // unknown_kid_wait 1 s + margin for a busy machine
    while let Some(r) = tasks.join_next().await {
        let (r, took) = r.unwrap();
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            challenge(&r).contains("error=\"invalid_token\""),
            "{}",
            challenge(&r)
        );
        assert!(took < bound, "an unknown-kid request took {took:?}");
    }
    assert!(started.elapsed() < bound + Duration::from_secs(1));
    // One refresh for all of them; it is still waiting on the IdP.
    assert_eq!(e.idp.hits(JWKS) + e.idp.hits(DISCOVERY), 2 + 1);
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, FORCED_JOINED) + metric_value(&m, FORCED_COOLDOWN),
        49.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, &auth_result("unknown_kid")), 50.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_token_passes_on_its_first_request_with_one_fetch() {
    let e = env(&[]).await;
    let url = e.proxy.url("/first");
    let jwks = e.idp.hits(JWKS);
    let k2 = e.idp.new_key(Algorithm::PS256, "k2");
    let r = get_bearer(&url, &fresh(&e.idp, &k2)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(e.idp.hits(JWKS), jwks + 1);
    assert_metric(&e.proxy.metrics().await, FORCED_FETCHED, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_memory_follows_the_injected_clock() {
    let e = env(&["unknown_kid_cooldown: 30s"]).await;
    let url = e.proxy.url("/neg");
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger");
    let token = e.idp.token(&stranger).kid("gone").build();
    let jwks = e.idp.hits(JWKS);
    assert_eq!(get_bearer(&url, &token).await.status, 401);
    assert_eq!(e.idp.hits(JWKS), jwks + 1);
    // Remembered within the cool-down: no fetch.
    e.clock().advance(Duration::from_secs(20));
    assert_eq!(get_bearer(&url, &token).await.status, 401);
    assert_eq!(e.idp.hits(JWKS), jwks + 1);
    // Past it (on the clock the cool-down uses too), the kid may be looked for once more.
    e.clock().advance(Duration::from_secs(11));
    assert_eq!(get_bearer(&url, &token).await.status, 401);
    assert_eq!(e.idp.hits(JWKS), jwks + 2, "the unknown kid was forgotten");
    assert_metric(&e.proxy.metrics().await, FORCED_FETCHED, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keys_at_start_is_unready_and_503_not_401() {
    let clock = ManualClock::new();
    let idp = MockIdp::start_with_clock(clock.clone()).await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    idp.fail(Failure::Status(500));
    let up = upstream::start("app").await;
    let scenario = Scenario::new().upstream("app", &up).issuer(
        "corp",
        &idp,
        &[
            "retries: 0",
            "breaker_threshold: 100",
            "refresh_interval: 1s",
        ],
    );
    let scenario = scenario
        .routes_yaml(API_ROUTE)
        .route(Route::open("/open").name("open"));
    let proxy = scenario.clock(clock.clone()).start_unready().await;
    let readyz = format!("http://{}/readyz", proxy.admin);
    wait_until(Duration::from_secs(10), || async {
        metric_value(&proxy.metrics().await, REFRESH_FAILED) >= 1.0
    })
    .await;

    // Never had keys: not ready, and a token is not judged at all.
    let r = client::get(&readyz).await;
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        body.contains("issuer corp: no usable keys (none)"),
        "{body}"
    );
    assert_keys_unavailable(&get_bearer(&proxy.url("/api"), &fresh(&idp, &key)).await);
    let json = support::client::get_with(
        &proxy.url("/api"),
        &[
            ("authorization", &format!("Bearer {}", fresh(&idp, &key))),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(json.status, 503);
    assert_eq!(json.json()["status"], 503);
    let m = proxy.metrics().await;
    assert_metric(&m, KEYS_USABLE, 0.0);
    assert_eq!(
        metric_value(&m, &auth_result("keys_unavailable")),
        2.0,
        "{m}"
    );

    // The IdP answers: keys arrive, the latch closes, tokens pass.
    idp.recover();
    client::wait_status(Duration::from_secs(15), &readyz, 200).await;
    assert_eq!(
        get_bearer(&proxy.url("/api"), &fresh(&idp, &key))
            .await
            .status,
        200
    );
    assert_metric(&proxy.metrics().await, KEYS_USABLE, 1.0);

    // Later the keys go stale: only the issuer's routes answer 503; the replica stays ready
    // and `auth: none` routes keep working.
    idp.fail(Failure::Status(500));
    clock.advance(Duration::from_secs(2 * 86_400));
    assert_keys_unavailable(&get_bearer(&proxy.url("/api"), &fresh(&idp, &key)).await);
    assert_eq!(client::get(&proxy.url("/open")).await.status, 200);
    assert_eq!(client::get(&readyz).await.status, 200);
    assert_metric(&proxy.metrics().await, KEYS_USABLE, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_refresh_retry_after_is_capped_at_max_retry_after() {
    // Real time: the JWKS answers 503 with Retry-After: 30 on every call; the schedule waits
    // for it, but no longer than max_retry_after (2 s), like every other IdP call.
    let idp = MockIdp::start().await;
    idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let scenario = Scenario::new().upstream("app", &up).issuer(
        "corp",
        &idp,
        &[
            &format!("jwks_uri: \"{}\"", idp.url(JWKS)),
            "refresh_interval: 1s",
            "retries: 0",
            "breaker_threshold: 100",
            "max_retry_after: 2s",
        ],
    );
    let proxy = scenario.routes_yaml(API_ROUTE).start().await;
    idp.fail(Failure::UnavailableRetryAfterSecs(30));
    let limited = || {
        idp.hit_log()
            .into_iter()
            .filter(|h| h.failure.is_some())
            .collect::<Vec<_>>()
    };
    // Three attempts within 12 s: impossible if the schedule waited the full 30 s.
    wait_until(Duration::from_secs(12), || async { limited().len() >= 3 }).await;
    let log = limited();
    for w in log.windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= Duration::from_secs(2),
            "IdP called again after {gap:?}, before the capped Retry-After"
        );
    }
    assert!(metric_value(&proxy.metrics().await, REFRESH_FAILED) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_makes_readyz_503() {
    let mut e = env(&[]).await;
    let readyz = format!("http://{}/readyz", e.proxy.admin);
    assert_eq!(client::get(&readyz).await.status, 200);
    // A request that keeps the drain going for a while.
    let (url, token) = (e.proxy.url("/slow?ms=3500"), fresh(&e.idp, &e.key));
    let slow = tokio::spawn(async move { get_bearer(&url, &token).await });
    wait_until(Duration::from_secs(5), || async { e.up.hits() >= 1 }).await;
    let done = e.proxy.begin_shutdown();
    // While draining, the admin listener still answers, and /readyz says 503.
    client::wait_status(Duration::from_secs(3), &readyz, 503).await;
    let r = client::get(&readyz).await;
    assert!(String::from_utf8_lossy(&r.body).contains("draining"));
    assert_eq!(slow.await.unwrap().status, 200);
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
}
