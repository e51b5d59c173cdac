//! External authorization mode: decision requests in each dialect (nginx `auth_request`,
//! Traefik/Caddy forward auth, Envoy's HTTP ext_authz) decided as the proxy decides the
//! request they describe; and real nginx (`auth_request`), Traefik, Caddy (forward auth) and
//! Envoy (gRPC ext_authz: `tests/ext_authz_grpc.rs` has the protocol's own tests) in front of
//! the echo upstream, with Portcullis as their authentication service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::client::{Resp, echoed, get_with};
use support::front::{self, Front};
use support::idp::MockIdp;
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};

const NGINX: &str = "/_portcullis/auth/nginx";
const FORWARD: &str = "/_portcullis/auth/forward";
const ENVOY: &str = "/_portcullis/auth/envoy";

/// Portcullis with a bearer route `/api` (scope `read` required), an open route `/public`,
/// and every decision path; `trusted` overrides `external_auth.trusted_peers`.
async fn portcullis(idp: &MockIdp, up: &MockUpstream, trusted: Option<&str>) -> support::Proxy {
    let mut lines = vec![
        format!("nginx_path: {NGINX}"),
        format!("forward_auth_path: {FORWARD}"),
        format!("envoy_path_prefix: {ENVOY}"),
        "envoy_grpc: true".to_string(),
    ];
    if let Some(t) = trusted {
        lines.push(format!("trusted_peers: [\"{t}\"]"));
    }
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    Scenario::new()
        .upstream("app", up)
        .issuer("corp", idp, &[])
        .route(Route::bearer("/api").name("api").scopes(["read"]))
        .route(Route::open("/public").name("public"))
        .section("external_auth", &lines)
        .start()
        .await
}

fn forward(method: &str, host: &str, uri: &str) -> Vec<(String, String)> {
    vec![
        ("x-forwarded-method".into(), method.into()),
        ("x-forwarded-proto".into(), "https".into()),
        ("x-forwarded-host".into(), host.into()),
        ("x-forwarded-uri".into(), uri.into()),
    ]
}

async fn ask(url: &str, describing: &[(String, String)], extra: &[(&str, &str)]) -> Resp {
    let mut all: Vec<(&str, &str)> = describing
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend_from_slice(extra);
    get_with(url, &all).await
}

fn header<'r>(r: &'r Resp, name: &str) -> Option<&'r str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_decides_as_the_proxy_would() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = portcullis(&idp, &up, None).await;
    let url = proxy.url(FORWARD);
    let good = idp.token(&key).claim("scope", "read").build();
    let bearer = format!("Bearer {good}");

    // No credentials: 401 with the challenge, as the proxy answers.
    let r = ask(&url, &forward("GET", "app.example.com", "/api/items"), &[]).await;
    assert_eq!(r.status, 401);
    assert!(header(&r, "www-authenticate").is_some_and(|c| c.starts_with("Bearer")));

    // A valid token: 200 with the identity headers, and the client's own copies of them
    // (any spelling) cannot change what is answered.
    let r = ask(
        &url,
        &forward("GET", "app.example.com", "/api/items?x=1"),
        &[
            ("authorization", &bearer),
            ("x-auth-request-user", "mallory"),
            ("X-Auth-Request-User", "mallory"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(header(&r, "x-auth-request-user"), Some("alice"));
    assert_eq!(
        header(&r, "x-auth-request-email"),
        Some("alice@example.com")
    );

    // A token without the scope: 403.
    let weak = idp.token(&key).claim("scope", "other").build();
    let r = ask(
        &url,
        &forward("GET", "app.example.com", "/api/items"),
        &[("authorization", &format!("Bearer {weak}"))],
    )
    .await;
    assert_eq!(r.status, 403);

    // An open route allows without credentials and sends no identity.
    let r = ask(&url, &forward("GET", "app.example.com", "/public/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user"), None);

    // Spellings the proxy refuses are refused here too, never allowed (and never the open
    // route's answer for a protected path).
    for uri in [
        "/public/../api/items",
        "/public/%2e%2e/api/items",
        "/public/..%2fapi/items",
        "/public%2f..%2fapi/items",
        "/public/..\\api/items",
        "/public/.;/api/items",
        // A fragment: http's parsers drop it, so it must not be read as /public.
        "/public#/../api/items",
    ] {
        let r = ask(&url, &forward("GET", "app.example.com", uri), &[]).await;
        assert_ne!(r.status / 100, 2, "{uri}: {}", r.status);
    }
    // No route: refused.
    let r = ask(&url, &forward("GET", "app.example.com", "/nothing"), &[]).await;
    assert_eq!(r.status, 404);

    // A decision request that does not describe a request: 400, never an allow.
    let r = get_with(&url, &[("x-forwarded-method", "GET")]).await;
    assert_eq!(r.status, 400);
    let mut two = forward("GET", "app.example.com", "/public/x");
    two.push(("x-forwarded-uri".into(), "/api/items".into()));
    let r = ask(&url, &two, &[]).await;
    assert_eq!(r.status, 400, "a repeated x-forwarded-uri");

    // Decisions are counted by dialect, route and result; the upstream was never called.
    let m = proxy.metrics().await;
    for series in [
        "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"allow\",route=\"api\"} 1",
        "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"unauthenticated\",route=\"api\"} 1",
        "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"forbidden\",route=\"api\"} 1",
        "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"bad_request\",route=\"\"} 9",
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
    assert!(m.contains(
        "portcullis_external_auth_decision_duration_seconds_count{dialect=\"forward_auth\"}"
    ));
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_envoy_dialects_decide_the_same_way() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = portcullis(&idp, &up, None).await;
    let good = format!("Bearer {}", idp.token(&key).claim("scope", "read").build());
    let nginx = |method: &str, url: &str| {
        vec![
            ("x-original-method".to_string(), method.to_string()),
            ("x-original-url".to_string(), url.to_string()),
        ]
    };
    let n = proxy.url(NGINX);
    let r = ask(&n, &nginx("GET", "https://app.example.com/api/x"), &[]).await;
    assert_eq!(r.status, 401);
    let r = ask(
        &n,
        &nginx("GET", "https://app.example.com/api/x"),
        &[("authorization", &good)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user"), Some("alice"));
    // nginx takes only 2xx, 401 and 403: a refused spelling or an unknown route is 403.
    let r = ask(
        &n,
        &nginx("GET", "https://app.example.com/public/%2e%2e/api"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = ask(&n, &nginx("GET", "https://app.example.com/nothing"), &[]).await;
    assert_eq!(r.status, 403);
    let r = ask(
        &n,
        &nginx("GET", "https://user@app.example.com/public/x"),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);

    // Envoy: the original path after the prefix, the request's own method and Host.
    let e = proxy.url(&format!("{ENVOY}/api/x"));
    let r = get_with(&e, &[("host", "app.example.com")]).await;
    assert_eq!(r.status, 401);
    let r = get_with(&e, &[("host", "app.example.com"), ("authorization", &good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user"), Some("alice"));
    // Envoy removes the client's copies of the owned headers: every one named exactly (both
    // spellings), and any other spelling the request came with; not the ones the answer
    // sets (Envoy overwrites those with the answer's value).
    let r = get_with(
        &e,
        &[
            ("host", "app.example.com"),
            ("authorization", &good),
            ("x_auth_request_user", "mallory"),
            ("x-auth_request-groups", "admins"),
            ("x-auth-request-user", "mallory"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user"), Some("alice"));
    let removed: Vec<&str> = header(&r, "x-envoy-auth-headers-to-remove")
        .unwrap_or_default()
        .split(", ")
        .collect();
    for name in [
        "x_auth_request_user",
        "x-auth_request-groups",
        "x-forwarded-user",
        "x_forwarded_user",
    ] {
        assert!(removed.contains(&name), "{name} not in {removed:?}");
    }
    assert!(!removed.contains(&"x-auth-request-user"), "{removed:?}");
    let r = get_with(&proxy.url(&format!("{ENVOY}/public/%2e%2e/api/x")), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_peers_may_describe_a_request() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    // The test client is on loopback, which this list does not name.
    let proxy = portcullis(&idp, &up, Some("10.0.0.0/8")).await;
    let r = ask(
        &proxy.url(FORWARD),
        &forward("GET", "app.example.com", "/public/x"),
        &[],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "an open route is not allowed for an untrusted peer"
    );
    let m = proxy.metrics().await;
    let series = "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"untrusted_peer\",route=\"\"} 1";
    assert!(m.contains(series), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_an_upstream_is_decided_but_never_proxied() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    // No upstream at all: Portcullis only decides, for an ingress that routes to the app.
    let proxy = Scenario::new()
        .issuer("corp", &idp, &[])
        .route(
            Route::bearer("/")
                .name("app")
                .host("app.example.com")
                .decisions_only(),
        )
        .section("external_auth", &[&format!("envoy_path_prefix: {ENVOY}")])
        .start()
        .await;
    let good = format!("Bearer {}", idp.token(&key).build());
    let decide = proxy.url(&format!("{ENVOY}/x"));
    let r = get_with(
        &decide,
        &[("host", "app.example.com"), ("authorization", &good)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-auth-request-user"), Some("alice"));
    let r = get_with(&decide, &[("host", "app.example.com")]).await;
    assert_eq!(r.status, 401);
    // Asked as a proxy, the route does not exist: 404, with or without credentials (no
    // challenge, no sign-in).
    for auth in [None, Some(good.as_str())] {
        let mut h = vec![("host", "app.example.com")];
        h.extend(auth.map(|a| ("authorization", a)));
        let r = get_with(&proxy.url("/x"), &h).await;
        assert_eq!(r.status, 404, "{auth:?}");
        assert!(header(&r, "www-authenticate").is_none());
    }
}

/// Portcullis with `external_auth.cache_max_age` (and the routes of [`portcullis`]).
async fn caching_portcullis(idp: &MockIdp, up: &MockUpstream) -> support::Proxy {
    Scenario::new()
        .upstream("app", up)
        .issuer("corp", idp, &[])
        .route(Route::bearer("/api").name("api").scopes(["read"]))
        .route(Route::open("/public").name("public"))
        .section(
            "external_auth",
            &[
                &format!("nginx_path: {NGINX}"),
                &format!("forward_auth_path: {FORWARD}"),
                "cache_max_age: 60s",
            ],
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_bearer_allow_is_cacheable_and_never_past_the_token() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = caching_portcullis(&idp, &up).await;
    let url = proxy.url(FORWARD);
    let describe = forward("GET", "app.example.com", "/api/x");
    let max_age = |r: &Resp| -> u64 {
        let cc = header(r, "cache-control").unwrap_or_default();
        let secs = cc
            .strip_prefix("private, max-age=")
            .unwrap_or_else(|| panic!("{cc}"));
        assert_eq!(header(r, "x-accel-expires"), Some(secs));
        assert_eq!(header(r, "vary"), Some("Authorization"));
        secs.parse().unwrap()
    };
    // A long-lived token: the setting.
    let long = format!(
        "Bearer {}",
        idp.token(&key).claim("scope", "read").exp_in(3600).build()
    );
    let r = ask(&url, &describe, &[("authorization", &long)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(max_age(&r), 60);
    // A token about to expire: its lifetime left, never more.
    let short = format!(
        "Bearer {}",
        idp.token(&key).claim("scope", "read").exp_in(20).build()
    );
    let r = ask(&url, &describe, &[("authorization", &short)]).await;
    assert_eq!(r.status, 200);
    let secs = max_age(&r);
    assert!((1..=20).contains(&secs), "{secs}");
    // Denials and allows without a token are never cacheable.
    let no_scope = format!("Bearer {}", idp.token(&key).build());
    for (describe, auth) in [
        (forward("GET", "app.example.com", "/api/x"), None),
        (
            forward("GET", "app.example.com", "/api/x"),
            Some(no_scope.as_str()),
        ),
        (forward("GET", "app.example.com", "/public/x"), None),
    ] {
        let extra: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = ask(&url, &describe, &extra).await;
        assert_eq!(
            header(&r, "cache-control"),
            Some("no-store"),
            "{}",
            r.status
        );
        assert!(header(&r, "x-accel-expires").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_proxy_cache_keeps_bearer_allows_and_asks_again_for_everything_else() {
    let Some(bin) = front::binary("nginx", &["/usr/sbin/nginx"]) else {
        return;
    };
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = caching_portcullis(&idp, &up).await;
    let front = front::nginx_caching(&bin, &up.url(), &proxy.url(NGINX)).await;
    let series = |result: &str| {
        format!(
            "portcullis_external_auth_decisions_total{{dialect=\"nginx\",result=\"{result}\",route=\"api\"}}"
        )
    };
    let a = format!("Bearer {}", idp.token(&key).claim("scope", "read").build());
    let b = format!(
        "Bearer {}",
        idp.token(&key)
            .claim("scope", "read")
            .claim("sub", "bob")
            .build()
    );
    let app = format!("{}/api/items", front.base);
    for _ in 0..3 {
        let r = get_with(&app, &[("authorization", &a)]).await;
        assert_eq!(r.status, 200, "{}", front.log());
    }
    let m = proxy.metrics().await;
    assert_eq!(
        support::metric_value(&m, &series("allow")),
        1.0,
        "asked once for token a"
    );
    // Another token is another entry, with its own identity.
    let r = get_with(&app, &[("authorization", &b)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-auth-request-user"), ["bob"]);
    let r = get_with(&app, &[("authorization", &a)]).await;
    assert_eq!(echoed(&r, "x-auth-request-user"), ["alice"]);
    let m = proxy.metrics().await;
    assert_eq!(support::metric_value(&m, &series("allow")), 2.0);
    // Refusals are asked every time.
    for _ in 0..2 {
        let r = get_with(&app, &[]).await;
        assert_eq!(r.status, 401);
    }
    let m = proxy.metrics().await;
    assert_eq!(support::metric_value(&m, &series("unauthenticated")), 2.0);
}

/// What every front proxy must do with Portcullis behind it: nothing unauthenticated reaches
/// the app, the identity comes from the token only (the client's copy never passes), a
/// refused scope is 403, and no path spelling gets a protected path through unauthenticated.
async fn front_proxy_lets_only_authenticated_requests_through(
    name: &str,
    start: impl AsyncFnOnce(&MockUpstream, &support::Proxy) -> Front,
) {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = portcullis(&idp, &up, None).await;
    let front = start(&up, &proxy).await;
    let base = front.base.clone();
    let good = format!("Bearer {}", idp.token(&key).claim("scope", "read").build());

    let r = get_with(&format!("{base}/api/items"), &[]).await;
    assert_eq!(r.status, 401, "{name}: {}", front.log());
    assert_eq!(
        up.hits(),
        0,
        "{name}: nothing unauthenticated reaches the app"
    );

    let r = get_with(
        &format!("{base}/api/items"),
        &[
            ("authorization", &good),
            ("x-auth-request-user", "mallory"),
            ("x_auth_request_user", "mallory"),
        ],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{name}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(echoed(&r, "x-auth-request-user"), vec!["alice"], "{name}");
    assert!(echoed(&r, "x_auth_request_user").is_empty(), "{name}");

    let weak = format!("Bearer {}", idp.token(&key).claim("scope", "x").build());
    let r = get_with(&format!("{base}/api/items"), &[("authorization", &weak)]).await;
    assert_eq!(r.status, 403, "{name}");

    // Path spellings: whatever the front proxy does with them, none reaches the app without
    // authentication.
    let hits = up.hits();
    for path in [
        "/public/%2e%2e/api/items",
        "/public/..%2fapi/items",
        "/public%2f..%2fapi/items",
        "/public/.;/api/items",
        "/public/%2e%2e%2fapi/items",
        "/PUBLIC/../api/items",
        "/api%2fitems",
        "/%61pi/items",
    ] {
        let r = get_with(&format!("{base}{path}"), &[]).await;
        assert_ne!(r.status / 100, 2, "{name} {path}: {}", r.status);
    }
    assert_eq!(
        up.hits(),
        hits,
        "{name}: no spelling reached the app unauthenticated"
    );

    // The open route: through, with no identity, and the client's copy does not pass.
    let r = get_with(
        &format!("{base}/public/x"),
        &[("x-auth-request-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200, "{name}");
    assert!(
        echoed(&r, "x-auth-request-user").is_empty(),
        "{name}: {:?}",
        echoed(&r, "x-auth-request-user")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nginx_with_auth_request_lets_only_authenticated_requests_through() {
    let Some(bin) = front::binary("nginx", &["/usr/sbin/nginx"]) else {
        return;
    };
    front_proxy_lets_only_authenticated_requests_through("nginx", async |up, proxy| {
        front::nginx(&bin, &up.url(), &proxy.url(NGINX)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_traefik_with_forward_auth_lets_only_authenticated_requests_through() {
    let Some(bin) = front::binary("traefik", &[]) else {
        return;
    };
    front_proxy_lets_only_authenticated_requests_through("traefik", async |up, proxy| {
        front::traefik(&bin, &up.url(), &proxy.url(FORWARD)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_caddy_with_forward_auth_lets_only_authenticated_requests_through() {
    let Some(bin) = front::binary("caddy", &[]) else {
        return;
    };
    front_proxy_lets_only_authenticated_requests_through("caddy", async |up, proxy| {
        let app = up.url().trim_start_matches("http://").to_string();
        let auth = proxy.url("").trim_start_matches("http://").to_string();
        front::caddy(&bin, &app, &auth, FORWARD).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_with_grpc_ext_authz_lets_only_authenticated_requests_through() {
    let Some(bin) = front::binary("envoy", &[]) else {
        return;
    };
    front_proxy_lets_only_authenticated_requests_through("envoy", async |up, proxy| {
        let app = up.url().trim_start_matches("http://").to_string();
        let auth = proxy.url("").trim_start_matches("http://").to_string();
        front::envoy(&bin, &app, &auth).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_with_http_ext_authz_lets_only_authenticated_requests_through() {
    let Some(bin) = front::binary("envoy", &[]) else {
        return;
    };
    front_proxy_lets_only_authenticated_requests_through("envoy-http", async |up, proxy| {
        let app = up.url().trim_start_matches("http://").to_string();
        let auth = proxy.url("").trim_start_matches("http://").to_string();
        front::envoy_http(&bin, &app, &auth, ENVOY).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_without_a_session_is_sent_to_sign_in_in_each_dialects_form() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/app").name("app").issuer("corp"))
        .section(
            "external_auth",
            &[
                &format!("nginx_path: {NGINX}"),
                &format!("forward_auth_path: {FORWARD}"),
                "start_path: /_portcullis/start",
            ],
        )
        .start()
        .await;
    let navigation = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];

    // nginx cannot pass a redirect on: 401, and its auth-signin URL starts the sign-in.
    let r = ask(
        &proxy.url(NGINX),
        &[
            ("x-original-method".into(), "GET".into()),
            (
                "x-original-url".into(),
                "https://app.example.com/app/page?x=1".into(),
            ),
        ],
        &navigation,
    )
    .await;
    assert_eq!(r.status, 401);

    // Traefik and Caddy pass the 302 to the IdP (with its login cookie) to the browser.
    let r = ask(
        &proxy.url(FORWARD),
        &forward("GET", "app.example.com", "/app/page?x=1"),
        &navigation,
    )
    .await;
    assert_eq!(r.status, 302);
    let location = header(&r, "location").unwrap_or_default();
    assert!(location.starts_with(&idp.url("/authorize")), "{location}");
    // The IdP sends the browser back to the app's host, where the ingress routes the callback.
    assert!(
        location.contains("redirect_uri=https%3A%2F%2Fapp.example.com%2Foauth2%2Fcallback"),
        "{location}"
    );
    assert!(r.headers.get("set-cookie").is_some(), "a login cookie");

    // The start path: the sign-in for rd's session route.
    let r = get_with(
        &proxy.url("/_portcullis/start?rd=%2Fapp%2Fpage%3Fx%3D1"),
        &[("host", "app.example.com")],
    )
    .await;
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    assert!(header(&r, "location").is_some_and(|l| l.starts_with(&idp.url("/authorize"))));
    // An rd that names no session route, or another site, is not signed in for.
    let r = get_with(
        &proxy.url("/_portcullis/start?rd=%2Fnothing"),
        &[("host", "app.example.com")],
    )
    .await;
    assert_eq!(r.status, 404);
    let r = get_with(
        &proxy.url("/_portcullis/start?rd=https%3A%2F%2Fevil.example.net%2Fapp"),
        &[("host", "app.example.com")],
    )
    .await;
    assert_eq!(
        r.status, 404,
        "another site falls back to /, which is no session route"
    );
    let m = proxy.metrics().await;
    for series in [
        "portcullis_external_auth_decisions_total{dialect=\"nginx\",result=\"sign_in\",route=\"app\"} 1",
        "portcullis_external_auth_decisions_total{dialect=\"forward_auth\",result=\"sign_in\",route=\"app\"} 1",
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
    assert_eq!(up.hits(), 0);
}

/// Decision requests that cannot be decided as one request: describing headers that
/// contradict each other (repeated with different values, or joined into one as a proxy
/// merging them would), an original target over the limit, raw bytes no path may hold; each
/// is a clear 400 (nginx: 403 for the client's own target), never an allow, even with a valid
/// token; and an untrusted peer gets 403 in every dialect, whatever it presents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictory_oversized_or_untrusted_descriptions_are_never_allowed() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = portcullis(&idp, &up, None).await;
    let good = format!("Bearer {}", idp.token(&key).claim("scope", "read").build());
    let auth = [("authorization", good.as_str())];
    let nginx = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (n, f) = (proxy.url(NGINX), proxy.url(FORWARD));
    let api = "https://app.example.com/api/items";
    let public = "https://app.example.com/public/x";
    let huge = format!(
        "/public/{}",
        "x".repeat(portcullis::proxy::external::MAX_ORIGINAL_URI)
    );
    let huge_url = format!("https://app.example.com{huge}");
    /// What is wrong, the decision URL, the describing headers.
    type Case<'a> = (&'a str, &'a str, Vec<(String, String)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "two X-Original-URL",
            &n,
            nginx(&[
                ("x-original-url", public),
                ("x-original-url", api),
                ("x-original-method", "GET"),
            ]),
        ),
        (
            "two X-Original-Method",
            &n,
            nginx(&[
                ("x-original-url", public),
                ("x-original-method", "GET"),
                ("x-original-method", "DELETE"),
            ]),
        ),
        (
            "X-Original-Method joined",
            &n,
            nginx(&[
                ("x-original-url", public),
                ("x-original-method", "GET, POST"),
            ]),
        ),
        (
            "huge X-Original-URL",
            &n,
            nginx(&[("x-original-url", &huge_url), ("x-original-method", "GET")]),
        ),
        (
            "two X-Forwarded-Host",
            &f,
            [
                forward("GET", "app.example.com", "/public/x"),
                vec![("x-forwarded-host".into(), "admin.example.com".into())],
            ]
            .concat(),
        ),
        (
            "X-Forwarded-Uri joined",
            &f,
            forward("GET", "app.example.com", "/public/x, /api/items"),
        ),
        (
            "X-Forwarded-Proto joined",
            &f,
            [
                forward("GET", "app.example.com", "/public/x")[..1].to_vec(),
                vec![("x-forwarded-proto".into(), "https, http".into())],
                forward("GET", "app.example.com", "/public/x")[2..].to_vec(),
            ]
            .concat(),
        ),
        (
            "huge X-Forwarded-Uri",
            &f,
            forward("GET", "app.example.com", &huge),
        ),
    ];
    for (what, url, describing) in &cases {
        for extra in [&[][..], &auth[..]] {
            let r = ask(url, describing, extra).await;
            assert_eq!(r.status, 400, "{what} (token: {})", !extra.is_empty());
            assert_eq!(header(&r, "x-auth-request-user"), None, "{what}");
        }
    }
    let m = proxy.metrics().await;
    for dialect in ["nginx", "forward_auth"] {
        let series = format!(
            "portcullis_external_auth_decisions_total{{dialect=\"{dialect}\",result=\"bad_request\",route=\"\"}} 8"
        );
        assert!(m.contains(&series), "{series}\n{m}");
    }

    // Raw UTF-8 in the original target (nginx passes $request_uri as the client sent it):
    // the client's spelling, refused as the proxy refuses it (nginx's form: 403).
    let addr = proxy.addr.unwrap();
    for (path, head, want) in [
        (
            NGINX,
            &b"X-Original-URL: https://app.example.com/api\xc3\xa9\r\nX-Original-Method: GET"[..],
            403,
        ),
        (
            FORWARD,
            &b"X-Forwarded-Method: GET\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\nX-Forwarded-Uri: /public/\xc3\xa9"[..],
            400,
        ),
    ] {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: portcullis\r\n").into_bytes();
        request.extend_from_slice(head);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let r = support::raw::exchange(addr, &request).await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
    }

    // An untrusted peer: 403 in every dialect, with a valid token on the protected route too.
    let untrusted = portcullis(&idp, &up, Some("10.0.0.0/8")).await;
    let describe_api = [
        ("x-original-url".to_string(), api.to_string()),
        ("x-original-method".into(), "GET".into()),
    ];
    for (url, describing) in [
        (untrusted.url(NGINX), describe_api.to_vec()),
        (
            untrusted.url(FORWARD),
            forward("GET", "app.example.com", "/api/items"),
        ),
        (
            untrusted.url(&format!("{ENVOY}/api/items")),
            vec![("host".into(), "app.example.com".into())],
        ),
    ] {
        let r = ask(&url, &describing, &auth).await;
        assert_eq!(r.status, 403, "{url}");
        assert_eq!(header(&r, "x-auth-request-user"), None, "{url}");
    }
    let m = untrusted.metrics().await;
    for dialect in ["nginx", "forward_auth", "envoy"] {
        let series = format!(
            "portcullis_external_auth_decisions_total{{dialect=\"{dialect}\",result=\"untrusted_peer\",route=\"\"}} 1"
        );
        assert!(m.contains(&series), "{series}\n{m}");
    }
    assert_eq!(up.hits(), 0);
}
