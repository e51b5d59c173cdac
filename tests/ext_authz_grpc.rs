//! Envoy's external authorization over gRPC (`external_auth.envoy_grpc`): a tonic client built
//! from Envoy's own API definitions (`envoy-types`) calls
//! `envoy.service.auth.v3.Authorization/Check` on Portcullis's proxy listener over h2c, as
//! Envoy does, and gets the decisions the proxy would make. A real Envoy in front is in
//! `tests/external_auth.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::idp::{Failure, MockIdp};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use support::{metric_value, wait_until};

const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

type Grpc = AuthorizationClient<Client<HttpConnector, tonic::body::Body>>;

/// A Check client on `proxy`'s plain listener: HTTP/2 with prior knowledge (h2c), as Envoy's
/// `grpc_service` cluster with `http2_protocol_options` talks.
fn client(proxy: &support::Proxy) -> Grpc {
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    AuthorizationClient::with_origin(http, proxy.url("").parse().unwrap())
}

/// The check request Envoy sends for `method host path` with `headers` (its pseudo-headers
/// included, as Envoy includes them).
fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut map: std::collections::HashMap<String, String> = [
        (":method", method),
        (":authority", host),
        (":path", path),
        (":scheme", "https"),
        ("x-forwarded-proto", "https"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect();
    for (k, v) in headers {
        map.insert((*k).to_string(), (*v).to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    scheme: "https".into(),
                    host: host.into(),
                    path: path.into(),
                    headers: map,
                    protocol: "HTTP/2".into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

async fn check(grpc: &mut Grpc, req: CheckRequest) -> CheckResponse {
    tokio::time::timeout(Duration::from_secs(10), grpc.check(req))
        .await
        .expect("Check answered in time")
        .unwrap_or_else(|s| panic!("Check failed: {s:?}"))
        .into_inner()
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map(|s| s.code).expect("a status")
}

fn ok(r: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(code(r), OK, "{r:?}");
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an OkHttpResponse: {other:?}"),
    }
}

fn denied(r: &CheckResponse) -> &DeniedHttpResponse {
    assert_ne!(code(r), OK, "{r:?}");
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        other => panic!("not a DeniedHttpResponse: {other:?}"),
    }
}

fn status(d: &DeniedHttpResponse) -> i32 {
    d.status.as_ref().map(|s| s.code).expect("an HTTP status")
}

/// The values of header `name` in `opts`.
fn values<'a>(opts: &'a [HeaderValueOption], name: &str) -> Vec<&'a str> {
    opts.iter()
        .filter_map(|o| o.header.as_ref())
        .filter(|h| h.key == name)
        .map(|h| h.value.as_str())
        .collect()
}

/// Portcullis with a bearer route `/api` (scope `read`, the client's Authorization not
/// forwarded), an open route `/public` and the gRPC dialect on; `trusted` overrides
/// `external_auth.trusted_peers`.
async fn portcullis(idp: &MockIdp, up: &MockUpstream, trusted: Option<&str>) -> support::Proxy {
    let mut lines = vec!["envoy_grpc: true".to_string()];
    if let Some(t) = trusted {
        lines.push(format!("trusted_peers: [\"{t}\"]"));
    }
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    Scenario::new()
        .upstream("app", up)
        .issuer("corp", idp, &[])
        .route(
            Route::bearer("/api")
                .name("api")
                .scopes(["read"])
                .raw("forward_authorization", "false"),
        )
        .route(Route::open("/public").name("public"))
        .section("external_auth", &lines)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_decides_as_the_proxy_would() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = portcullis(&idp, &up, None).await;
    let mut grpc = client(&proxy);
    let good = format!("Bearer {}", idp.token(&key).claim("scope", "read").build());
    let host = "app.example.com";

    // No credentials: UNAUTHENTICATED, and the proxy's 401 with its challenge for Envoy to
    // send.
    let r = check(&mut grpc, request("GET", host, "/api/items", &[])).await;
    assert_eq!(code(&r), UNAUTHENTICATED);
    let d = denied(&r);
    assert_eq!(status(d), 401);
    assert_eq!(values(&d.headers, "cache-control"), ["no-store"]);
    assert!(
        values(&d.headers, "www-authenticate")
            .first()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{d:?}"
    );

    // A valid token: OK, the identity headers set (overwriting), the client's copies of owned
    // headers (any spelling) and its Authorization removed.
    let r = check(
        &mut grpc,
        request(
            "GET",
            host,
            "/api/items?x=1",
            &[
                ("authorization", &good),
                ("x-auth-request-user", "mallory"),
                ("x_auth_request_user", "mallory"),
            ],
        ),
    )
    .await;
    let allow = ok(&r);
    assert_eq!(values(&allow.headers, "x-auth-request-user"), ["alice"]);
    assert_eq!(
        values(&allow.headers, "x-auth-request-email"),
        ["alice@example.com"]
    );
    let overwrite = envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert!(allow.headers.iter().all(|o| o.append_action == overwrite));
    for name in [
        "x_auth_request_user",
        "x-auth-request-preferred-username",
        "authorization",
    ] {
        assert!(
            allow.headers_to_remove.iter().any(|n| n == name),
            "{name}: {:?}",
            allow.headers_to_remove
        );
    }
    // Envoy removes after it sets: nothing set is removed.
    for set in allow.headers.iter().filter_map(|o| o.header.as_ref()) {
        assert!(!allow.headers_to_remove.contains(&set.key), "{}", set.key);
    }

    // A token without the scope: PERMISSION_DENIED, 403.
    let weak = format!("Bearer {}", idp.token(&key).claim("scope", "x").build());
    let r = check(
        &mut grpc,
        request("GET", host, "/api/items", &[("authorization", &weak)]),
    )
    .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    assert_eq!(status(denied(&r)), 403);

    // An open route: OK, no identity, and every owned header the client might send removed.
    let r = check(
        &mut grpc,
        request(
            "GET",
            host,
            "/public/x",
            &[("x-auth-request-user", "mallory")],
        ),
    )
    .await;
    let allow = ok(&r);
    assert!(allow.headers.is_empty(), "{allow:?}");
    assert!(
        allow
            .headers_to_remove
            .iter()
            .any(|n| n == "x-auth-request-user")
    );

    // Spellings the proxy refuses are never allowed (nor the open route's answer for a
    // protected path); no route: NOT_FOUND.
    for path in [
        "/public/%2e%2e/api/items",
        "/public/..%2fapi/items",
        "/public/../api/items",
        "/x/%2e%2e/admin",
        "//admin",
        "/public/.;/api/items",
    ] {
        let r = check(&mut grpc, request("GET", host, path, &[])).await;
        assert_ne!(code(&r), OK, "{path}");
        assert!(status(denied(&r)) >= 400, "{path}");
    }
    let r = check(&mut grpc, request("GET", host, "/nothing", &[])).await;
    assert_eq!(code(&r), NOT_FOUND);
    assert_eq!(status(denied(&r)), 404);

    // A check request that does not describe a request: INVALID_ARGUMENT, 400.
    let mut no_host = request("GET", host, "/public/x", &[]);
    if let Some(h) = no_host
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.host.clear();
    }
    let contradictory = request("GET", host, "/public/x", &[(":path", "/api/items")]);
    for bad in [no_host, contradictory, CheckRequest::default()] {
        let r = check(&mut grpc, bad).await;
        assert_eq!(code(&r), INVALID_ARGUMENT);
        assert_eq!(status(denied(&r)), 400);
    }

    // Counted under the envoy_grpc dialect (`//admin` is /admin, no route; the other five
    // spellings and the three bad requests are bad requests); the upstream was never called.
    let m = proxy.metrics().await;
    for (series, want) in [
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"allow\",route=\"api\"}",
            1.0,
        ),
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"allow\",route=\"public\"}",
            1.0,
        ),
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"unauthenticated\",route=\"api\"}",
            1.0,
        ),
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"forbidden\",route=\"api\"}",
            1.0,
        ),
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"no_route\",route=\"\"}",
            2.0,
        ),
        (
            "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"bad_request\",route=\"\"}",
            8.0,
        ),
        (
            "portcullis_external_auth_decision_duration_seconds_count{dialect=\"envoy_grpc\"}",
            14.0,
        ),
    ] {
        assert_eq!(metric_value(&m, series), want, "{series}\n{m}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_is_never_allowed() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    // The test client is on loopback, which this list does not name.
    let proxy = portcullis(&idp, &up, Some("10.0.0.0/8")).await;
    let r = check(
        &mut client(&proxy),
        request("GET", "app.example.com", "/public/x", &[]),
    )
    .await;
    assert_eq!(code(&r), PERMISSION_DENIED, "an open route is not allowed");
    assert_eq!(status(denied(&r)), 403);
    let m = proxy.metrics().await;
    let series = "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"untrusted_peer\",route=\"\"}";
    assert_eq!(metric_value(&m, series), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_without_a_session_gets_the_sign_in_redirect() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/app").name("app").issuer("corp"))
        .route(Route::open("/public").name("public"))
        .section("external_auth", &["envoy_grpc: true"])
        .start()
        .await;
    let mut grpc = client(&proxy);
    let r = check(
        &mut grpc,
        request(
            "GET",
            "app.example.com",
            "/app/page?x=1",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        ),
    )
    .await;
    assert_eq!(code(&r), UNAUTHENTICATED);
    let d = denied(&r);
    assert_eq!(status(d), 302);
    let location = values(&d.headers, "location");
    assert!(
        location
            .first()
            .is_some_and(|l| l.starts_with(&idp.url("/authorize"))),
        "{location:?}"
    );
    // Back to the app's host (https, as Envoy described it), where its callback is routed.
    assert!(
        location[0].contains("redirect_uri=https%3A%2F%2Fapp.example.com%2Foauth2%2Fcallback"),
        "{location:?}"
    );
    assert_eq!(values(&d.headers, "set-cookie").len(), 1, "a login cookie");

    // As the proxy does, Portcullis's own cookies never reach the app: the rest of Cookie is
    // set, or Cookie removed when nothing is left; a Cookie without them is left alone.
    let open = |cookie: &str| {
        let cookie = cookie.to_string();
        request(
            "GET",
            "app.example.com",
            "/public/x",
            &[("cookie", &cookie)],
        )
    };
    let r = check(&mut grpc, open("portcullis_session=x; theme=dark")).await;
    assert_eq!(values(&ok(&r).headers, "cookie"), ["theme=dark"]);
    let r = check(&mut grpc, open("portcullis_session=x")).await;
    assert!(values(&ok(&r).headers, "cookie").is_empty());
    assert!(ok(&r).headers_to_remove.iter().any(|n| n == "cookie"));
    let r = check(&mut grpc, open("theme=dark")).await;
    assert!(values(&ok(&r).headers, "cookie").is_empty());
    assert!(!ok(&r).headers_to_remove.iter().any(|n| n == "cookie"));

    let m = proxy.metrics().await;
    let series = "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"sign_in\",route=\"app\"}";
    assert_eq!(metric_value(&m, series), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_keys_is_unavailable_never_unauthenticated() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "k1");
    idp.fail(Failure::Status(500));
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer(
            "corp",
            &idp,
            &[
                "retries: 0",
                "breaker_threshold: 100",
                "refresh_interval: 1s",
            ],
        )
        .route(Route::bearer("/api").name("api"))
        .section("external_auth", &["envoy_grpc: true"])
        .start_unready()
        .await;
    let failed = "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"failure\"}";
    wait_until(Duration::from_secs(10), || async {
        metric_value(&proxy.metrics().await, failed) >= 1.0
    })
    .await;
    let bearer = format!("Bearer {}", idp.token(&key).build());
    let r = check(
        &mut client(&proxy),
        request(
            "GET",
            "app.example.com",
            "/api/x",
            &[("authorization", &bearer)],
        ),
    )
    .await;
    assert_eq!(code(&r), UNAVAILABLE, "{r:?}");
    let d = denied(&r);
    assert_eq!(status(d), 503);
    assert!(values(&d.headers, "www-authenticate").is_empty(), "{d:?}");
    assert_eq!(values(&d.headers, "retry-after"), ["5"]);
    let m = proxy.metrics().await;
    let series = "portcullis_external_auth_decisions_total{dialect=\"envoy_grpc\",result=\"unavailable\",route=\"api\"}";
    assert_eq!(metric_value(&m, series), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_served_only_when_enabled_and_a_reload_turns_it_on() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let scenario = || {
        Scenario::new()
            .upstream("app", &up)
            .issuer("corp", &idp, &[])
            .route(Route::open("/").name("all"))
    };
    let proxy = scenario().start().await;
    // The call is an ordinary request to the open route (the echo app answers it, not with
    // gRPC): never a CheckResponse.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client(&proxy).check(request("GET", "app.example.com", "/", &[])),
    )
    .await
    .expect("answered in time");
    assert!(r.is_err(), "{r:?}");
    let m = proxy.metrics().await;
    assert!(!m.contains("dialect=\"envoy_grpc\""), "{m}");

    // Reloadable: the same configuration with the dialect on serves Check.
    let file = support::temp_dir("grpc-reload").join("portcullis.yaml");
    let on = scenario()
        .section("external_auth", &["envoy_grpc: true"])
        .to_yaml();
    std::fs::write(&file, on).unwrap();
    proxy.reloader.reload_file(&file, []).unwrap();
    let r = check(
        &mut client(&proxy),
        request("GET", "app.example.com", "/", &[]),
    )
    .await;
    assert!(ok(&r).headers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_served_over_tls() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let dir = support::temp_dir("grpc-tls");
    let cert = support::certs::generate(&dir, "server", "localhost");
    let proxy = Scenario::new()
        .without_plain()
        .tls_listener("public", "127.0.0.1:0", &cert.cert, &cert.key, &[])
        .upstream("app", &up)
        .issuer("corp", &idp, &[])
        .route(Route::bearer("/api").name("api"))
        .section("external_auth", &["envoy_grpc: true"])
        .start()
        .await;
    // hyper-rustls offers h2 by ALPN itself (enable_http2).
    let tls = support::client::tls_config(&cert.der, &[]);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http2()
        .build();
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(https);
    let origin = format!("https://localhost:{}", proxy.tls_addr.unwrap().port());
    let mut grpc = AuthorizationClient::with_origin(http, origin.parse().unwrap());
    let bearer = format!("Bearer {}", idp.token(&key).build());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        grpc.check(request(
            "GET",
            "app.example.com",
            "/api/x",
            &[("authorization", &bearer)],
        )),
    )
    .await
    .expect("answered in time")
    .unwrap_or_else(|s| panic!("Check failed: {s:?}"))
    .into_inner();
    assert_eq!(values(&ok(&r).headers, "x-auth-request-user"), ["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_envoy_sends_a_browser_to_sign_in_with_the_login_cookie() {
    let Some(bin) = support::front::binary("envoy", &[]) else {
        return;
    };
    let idp = MockIdp::start().await;
    let _key = idp.new_key(jsonwebtoken::Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/app").name("app").issuer("corp"))
        .section("external_auth", &["envoy_grpc: true"])
        .start()
        .await;
    let app = up.url().trim_start_matches("http://").to_string();
    let auth = proxy.url("").trim_start_matches("http://").to_string();
    let envoy = support::front::envoy(&bin, &app, &auth).await;
    let r = support::client::get_with(
        &format!("{}/app/page?x=1", envoy.base),
        &[
            ("host", "app.example.com"),
            ("accept", "text/html"),
            ("sec-fetch-mode", "navigate"),
        ],
    )
    .await;
    assert_eq!(r.status, 302, "{}", envoy.log());
    let location = r
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(location.starts_with(&idp.url("/authorize")), "{location}");
    // Envoy's listener is plain http: the sign-in comes back to http://app.example.com.
    assert!(
        location.contains("redirect_uri=http%3A%2F%2Fapp.example.com%2Foauth2%2Fcallback"),
        "{location}"
    );
    assert_eq!(
        r.headers.get_all("set-cookie").iter().count(),
        1,
        "the login cookie reaches the browser"
    );
    assert_eq!(up.hits(), 0);
}
