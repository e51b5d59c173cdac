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
