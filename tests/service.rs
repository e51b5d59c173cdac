//! Service tests: the whole request path (`Proxy::handle`) called directly with in-memory
//! requests, no client sockets. Refusals never reach an upstream, so most cases need none;
//! the forwarded case points at a closed loopback port and expects 502 (auth passed).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis::authn::Authenticator;
use portcullis::metrics::Metrics;
use portcullis::proxy::{ConnInfo, Proxy};
use portcullis::{Config, clock::TokioClock};
use support::idp::TokenBuilder;
use support::scenario::Scenario;

const ISS: &str = "http://127.0.0.1:1/realm";
const SECRET: &str = "service-test-shared-secret-of-32-bytes-or-more";

struct Stack {
    proxy: Proxy<Full<Bytes>>,
    metrics: Metrics,
    conn: ConnInfo,
}

fn stack() -> Stack {
    let up = support::closed_port();
    let secret = format!("shared_secret: \"{SECRET}\"");
    let yaml = Scenario::new()
        .upstream_exact("app", &[format!("http://{up}")], &[])
        .issuer_at(
            "corp",
            ISS,
            &[
                "jwks_uri: \"http://127.0.0.1:1/keys\"",
                "algorithms: [HS256]",
                &secret,
            ],
        )
        .routes_yaml("  - { path: /api, upstream: app, auth: bearer, authorize: { scopes: [\"api:read\"] } }")
        .routes_yaml("  - { path: /admin, upstream: app, auth: bearer, authorize: { groups: [admins] } }")
        .routes_yaml("  - { path: /public, upstream: app, auth: none }")
        .to_yaml();
    let config = Config::from_yaml(&yaml, Vec::new()).expect("config");
    let metrics = Metrics::try_new().expect("metrics");
    let auth = Arc::new(
        Authenticator::try_new(&config, metrics.clone(), Arc::new(TokioClock)).expect("auth"),
    );
    let proxy = Proxy::try_new(&config, metrics.clone(), auth).expect("proxy");
    let conn = ConnInfo::new("127.0.0.1:40000".parse().expect("addr"), "http");
    Stack {
        proxy,
        metrics,
        conn,
    }
}

fn token() -> TokenBuilder {
    TokenBuilder::new(ISS).hmac(SECRET.as_bytes())
}

async fn call(s: &Stack, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let resp = s.proxy.handle(req, &s.conn).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "app.example.com")
}

/// [`get`] with `Authorization: authorization`.
fn authorized_get(path: &str, authorization: String) -> Request<Full<Bytes>> {
    get(path)
        .header("authorization", authorization)
        .body(Full::default())
        .expect("request")
}

/// The `WWW-Authenticate` header of an answer.
fn challenge(h: &http::HeaderMap) -> &str {
    h["www-authenticate"].to_str().expect("ASCII challenge")
}

fn metrics_text(s: &Stack) -> String {
    String::from_utf8(s.metrics.render()).expect("utf-8")
}

#[tokio::test]
async fn refusals_without_sockets() {
    let s = stack();
    let (st, _, _) = call(&s, get("/nowhere").body(Full::default()).unwrap()).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, _, _) = call(&s, get("/public/../api").body(Full::default()).unwrap()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let req = Request::post("/public")
        .header("host", "app.example.com")
        .header("content-length", "3")
        .header("transfer-encoding", "chunked")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let (st, _, _) = call(&s, req).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (st, h, _) = call(&s, get("/api/x").body(Full::default()).unwrap()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], r#"Bearer realm="portcullis""#);

    let bad = format!("Bearer {}x", token().build());
    let (st, h, _) = call(&s, authorized_get("/api/x", bad)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&h).contains(r#"error="invalid_token""#),
        "{}",
        challenge(&h)
    );

    // A valid token without the group the route asks for.
    let (st, h, _) = call(
        &s,
        authorized_get("/admin", format!("Bearer {}", token().build())),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        challenge(&h).contains("insufficient_scope"),
        "{}",
        challenge(&h)
    );

    let text = metrics_text(&s);
    for (series, want) in [
        (
            r#"portcullis_auth_results_total{issuer="corp",result="missing",route="routes[0]"}"#,
            1.0,
        ),
        (
            r#"portcullis_auth_results_total{issuer="corp",result="bad_signature",route="routes[0]"}"#,
            1.0,
        ),
        (
            r#"portcullis_auth_results_total{issuer="corp",result="forbidden",route="routes[1]"}"#,
            1.0,
        ),
    ] {
        assert_eq!(support::metric_value(&text, series), want, "{series}");
    }
}

#[tokio::test]
async fn accepted_token_reaches_the_forwarder() {
    let s = stack();
    // The upstream port is closed: 502 proves authentication and authorization passed.
    let (st, _, _) = call(
        &s,
        authorized_get("/api/x", format!("Bearer {}", token().build())),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    let text = metrics_text(&s);
    assert_eq!(
        support::metric_value(
            &text,
            r#"portcullis_auth_results_total{issuer="corp",result="ok",route="routes[0]"}"#
        ),
        1.0
    );
    // auth: none routes forward without credentials.
    let (st, _, _) = call(&s, get("/public/x").body(Full::default()).unwrap()).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
}
