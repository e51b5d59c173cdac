//! What the upstream can trust: identity headers in every spelling are removed from the
//! client's request, a client's `Connection` can't remove a header Portcullis sets, headers
//! that frameworks take as routing or client input are removed unless forwarded headers are
//! trusted, and claim values reach the upstream unambiguously encoded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::client::Resp;
use support::client::{echoed, get_with};
use support::scenario::{Env, Scenario};
use support::upstream;

const ROUTES: &str = "  - { name: public, path: /public, upstream: app, auth: none }\n  - { name: api, path: /, upstream: app, auth: bearer }";

async fn env(extra: &str) -> Env {
    Env::start("rsa-1", None, &[], |s| s.routes_yaml(ROUTES).yaml(extra)).await
}

/// GET `/x` with `headers` through a pass-through proxy with `server` settings (if any), in
/// front of the echo upstream; the answer must be 200 (the echo of what the upstream saw).
async fn passed_through(server: &[&str], headers: &[(&str, &str)]) -> Resp {
    let up = upstream::start("app").await;
    let mut scenario = Scenario::pass_through(&up);
    if !server.is_empty() {
        scenario = scenario.server(server);
    }
    let proxy = scenario.start().await;
    let r = get_with(&proxy.url("/x"), headers).await;
    assert_eq!(r.status, 200);
    r
}

/// Every header name the upstream saw, normalised as CGI does (lowercase, `_` as `-`), with
/// its value.
fn normalised(resp: &Resp) -> Vec<(String, String)> {
    resp.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().replace('_', "-"),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The values of every header the upstream saw that CGI would call `name`.
fn cgi(resp: &Resp, name: &str) -> Vec<String> {
    normalised(resp)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

const SPOOFED: [(&str, &str); 7] = [
    ("X_Auth_Request_User", "mallory"),
    ("x-auth_request-user", "mallory2"),
    ("X_AUTH_REQUEST_EMAIL", "mallory@evil.example"),
    ("x_auth_request_groups", "admins"),
    ("X_Auth_Request_Access_Token", "stolen"),
    ("X_Forwarded_User", "mallory"),
    ("x-forwarded_email", "mallory@evil.example"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_headers_are_stripped_in_every_spelling() {
    let e = env("").await;
    let owned = |r: &Resp| -> Vec<(String, String)> {
        normalised(r)
            .into_iter()
            .filter(|(n, _)| n.starts_with("x-auth-request-") || n.starts_with("x-forwarded-"))
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
                )
            })
            .collect()
    };

    // auth: none strips them too.
    let r = get_with(&e.proxy.url("/public/page"), &SPOOFED).await;
    assert_eq!(r.status, 200);
    assert_eq!(owned(&r), vec![], "{}", r.json());

    // Bearer: exactly the token's values, one copy each.
    let token = e.idp.token(&e.key).build();
    let auth = format!("Bearer {token}");
    let mut headers = SPOOFED.to_vec();
    headers.push(("authorization", &auth));
    let r = get_with(&e.proxy.url("/api"), &headers).await;
    assert_eq!(r.status, 200);
    let mut seen = owned(&r);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "x-auth-request-email".to_string(),
                "alice@example.com".to_string()
            ),
            ("x-auth-request-groups".to_string(), "staff,dev".to_string()),
            ("x-auth-request-user".to_string(), "alice".to_string()),
        ],
        "{}",
        r.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_headers_portcullis_sets() {
    let e = env("").await;
    let token = e.idp.token(&e.key).build();
    let auth = format!("Bearer {token}");
    let r = get_with(
        &e.proxy.url("/api"),
        &[
            ("authorization", &auth),
            (
                "connection",
                "X-Auth-Request-User, x_auth_request_groups, Authorization, X-Forwarded-For, x-forwarded-proto, host, x-debug",
            ),
            ("x-debug", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-auth-request-user"), vec!["alice"]);
    assert_eq!(echoed(&r, "x-auth-request-groups"), vec!["staff,dev"]);
    assert_eq!(echoed(&r, "authorization"), vec![auth.clone()]);
    assert_eq!(echoed(&r, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echoed(&r, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(echoed(&r, "host").len(), 1);
    // Ordinary hop-by-hop semantics still hold for other headers.
    assert!(echoed(&r, "x-debug").is_empty());
    assert!(echoed(&r, "connection").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_trusted_forwarded_chain() {
    let r = passed_through(
        &["trust_forwarded_headers: true"],
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("connection", "x-forwarded-for, X-Real-IP"),
        ],
    )
    .await;
    assert_eq!(
        echoed(&r, "x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(echoed(&r, "x-real-ip"), vec!["203.0.113.9"]);
}

/// Routing or client-identity input that legacy frameworks act on.
const LEGACY: [(&str, &str); 12] = [
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Real-IP", "10.0.0.1"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "internal"),
    ("Forwarded", "for=10.0.0.1;proto=https"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("True-Client-IP", "10.0.0.1"),
    ("X-Host", "internal.example"),
    ("X_Real_IP", "10.0.0.2"),
    ("x_original_url", "/admin2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_forwarded_headers_are_stripped_unless_trusted() {
    let names = [
        "x-original-url",
        "x-rewrite-url",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "forwarded",
        "x-http-method-override",
        "true-client-ip",
        "x-host",
    ];

    let r = passed_through(&[], &LEGACY).await;
    for name in names {
        assert_eq!(cgi(&r, name), Vec::<String>::new(), "{name}");
    }

    // Trusted: the `-` spellings pass, the `_` copies never do.
    let r = passed_through(&["trust_forwarded_headers: true"], &LEGACY).await;
    assert_eq!(cgi(&r, "x-real-ip"), vec!["10.0.0.1"]);
    assert_eq!(cgi(&r, "x-original-url"), vec!["/admin"]);
    assert_eq!(cgi(&r, "forwarded"), vec!["for=10.0.0.1;proto=https"]);
    assert_eq!(cgi(&r, "x-forwarded-prefix"), vec!["/admin"]);
    for underscored in ["x_real_ip", "x_original_url"] {
        assert!(echoed(&r, underscored).is_empty(), "{underscored}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarded_list_is_configurable() {
    let r = passed_through(
        &["untrusted_forwarded_headers: [X-Route-To, \"X-Internal-*\"]"],
        &[
            ("x-route-to", "admin"),
            ("X_Route_To", "admin"),
            ("x-internal-user", "root"),
            ("x_internal_role", "root"),
            ("x-real-ip", "10.0.0.1"),
        ],
    )
    .await;
    assert!(cgi(&r, "x-route-to").is_empty());
    assert!(cgi(&r, "x-internal-user").is_empty());
    assert!(cgi(&r, "x-internal-role").is_empty());
    // Not in the replaced list: passes.
    assert_eq!(cgi(&r, "x-real-ip"), vec!["10.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_values_are_unambiguous_and_cannot_inject() {
    let e = env("").await;
    let groups = json!([
        "a,b",
        "c\"d",
        "e\\f",
        "é",
        "x\r\nX-Evil: 1",
        "nul\u{0}",
        " pad ",
        "50%",
        7
    ]);
    let token = e
        .idp
        .token(&e.key)
        .claim("groups", groups)
        .claim("sub", "mallory\r\nX-Auth-Request-Email: admin@corp.example")
        .claim("email", "josé@exämple.com")
        .build();
    let r = support::client::get_bearer(&e.proxy.url("/api"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r, "x-auth-request-groups"),
        vec!["a%2Cb,c\"d,e\\f,%C3%A9,x%0D%0AX-Evil: 1,nul%00,%20pad%20,50%25,7"]
    );
    assert_eq!(
        echoed(&r, "x-auth-request-user"),
        vec!["mallory%0D%0AX-Auth-Request-Email: admin@corp.example"]
    );
    assert_eq!(
        echoed(&r, "x-auth-request-email"),
        vec!["jos%C3%A9@ex%C3%A4mple.com"]
    );
    assert!(echoed(&r, "x-evil").is_empty());
}
