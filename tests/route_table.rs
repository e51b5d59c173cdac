//! A request never falls through to a weaker route (issue 15, item 1), end to end over raw
//! HTTP/1 sockets and HTTP/2: a protected route and a public catch-all on one upstream, in the
//! shape config/portcullis.yaml ships (both name the host). Every way a request can be steered
//! to another route (method, another host, no Host, an absolute-form target, a port, host
//! spellings) is tried without a token: none reaches the upstream except through the public
//! route for its own paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::scenario::Env;
use support::{client, raw};

const ROUTES: &str = "  - { name: api, host: app.example.com, path: /api, methods: [GET, POST], upstream: app, auth: bearer }\n\
\x20 - { name: public, host: app.example.com, path: /, upstream: app }";

fn request(head: &str) -> Vec<u8> {
    format!("{head}\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_method_host_or_target_spelling_reaches_the_protected_paths_unauthenticated() {
    let Env {
        idp,
        key,
        up,
        proxy,
        ..
    } = Env::start("rsa-1", None, &[], |s| s.routes_yaml(ROUTES)).await;
    let addr = proxy.addr.unwrap();

    // (what is tried, raw request head, expected status, expected Allow)
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        (
            "a method the route does not list",
            "DELETE /api/users/1 HTTP/1.1\r\nHost: app.example.com",
            405,
            Some("GET, POST"),
        ),
        (
            "another unlisted method, the prefix itself",
            "PUT /api HTTP/1.1\r\nHost: app.example.com",
            405,
            Some("GET, POST"),
        ),
        (
            "OPTIONS on the protected path",
            "OPTIONS /api/x HTTP/1.1\r\nHost: app.example.com",
            405,
            Some("GET, POST"),
        ),
        (
            "a listed method without a token",
            "GET /api/users/1 HTTP/1.1\r\nHost: app.example.com",
            401,
            None,
        ),
        (
            "another Host",
            "GET /api/users/1 HTTP/1.1\r\nHost: other.example",
            404,
            None,
        ),
        (
            "a Host that only ends like the route's",
            "GET /api/x HTTP/1.1\r\nHost: evil-app.example.com",
            404,
            None,
        ),
        (
            "a Host under the route's",
            "GET /api/x HTTP/1.1\r\nHost: x.app.example.com",
            404,
            None,
        ),
        (
            "no Host on HTTP/1.0",
            "GET /api/users/1 HTTP/1.0",
            404,
            None,
        ),
        (
            "absolute form naming another host",
            "GET http://other.example/api/x HTTP/1.1\r\nHost: app.example.com",
            404,
            None,
        ),
        (
            "absolute form naming the host, another Host header",
            "GET http://app.example.com/api/x HTTP/1.1\r\nHost: other.example",
            401,
            None,
        ),
        (
            "absolute form, unlisted method",
            "DELETE http://app.example.com/api/x HTTP/1.1\r\nHost: app.example.com",
            405,
            Some("GET, POST"),
        ),
        (
            "a port on Host",
            "GET /api/x HTTP/1.1\r\nHost: app.example.com:8443",
            401,
            None,
        ),
        (
            "a port and an unlisted method",
            "DELETE /api/x HTTP/1.1\r\nHost: app.example.com:1",
            405,
            Some("GET, POST"),
        ),
        (
            "Host in another case with a trailing dot",
            "GET /api/x HTTP/1.1\r\nHost: APP.Example.COM.",
            401,
            None,
        ),
        (
            "Host in another case, unlisted method",
            "DELETE /api/x HTTP/1.1\r\nHost: APP.example.com.",
            405,
            Some("GET, POST"),
        ),
        (
            "the path in another spelling",
            "DELETE //api/./x HTTP/1.1\r\nHost: app.example.com",
            400,
            None,
        ),
        (
            "escaped prefix, unlisted method",
            "DELETE /%61pi/x HTTP/1.1\r\nHost: app.example.com",
            405,
            Some("GET, POST"),
        ),
    ];
    for (what, head, status, allow) in cases {
        let r = raw::exchange(addr, &request(head)).await;
        assert_eq!(r.status, *status, "{what}: {head:?}\n{}", r.text());
        assert_eq!(r.header("allow"), *allow, "{what}");
    }
    assert_eq!(up.hits(), 0, "a refused request reached the upstream");

    // The public route serves its own paths; a token opens the protected ones.
    let r = raw::exchange(
        addr,
        &request("GET /public/page HTTP/1.1\r\nHost: app.example.com"),
    )
    .await;
    assert_eq!(r.status, 200);
    let token = idp.token(&key).build();
    let r = raw::exchange(
        addr,
        &request(&format!(
            "GET /api/users/1 HTTP/1.1\r\nHost: app.example.com:8443\r\nAuthorization: Bearer {token}"
        )),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 2);

    // HTTP/2: :authority decides the host; the same refusals.
    let h2 = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for (what, req, status, allow) in [
        (
            "h2 unlisted method",
            h2("DELETE", "http://app.example.com/api/users/1"),
            405,
            Some("GET, POST"),
        ),
        (
            "h2 another :authority",
            h2("GET", "http://other.example/api/users/1"),
            404,
            None,
        ),
        (
            "h2 a port on :authority",
            h2("GET", "http://app.example.com:8443/api/x"),
            401,
            None,
        ),
        (
            "h2 listed method, no token",
            h2("POST", "http://app.example.com/api/x"),
            401,
            None,
        ),
    ] {
        let (_, r) = client::send_h2(addr, req).await;
        assert_eq!(r.status, status, "{what}");
        assert_eq!(
            r.headers.get("allow").map(|v| v.to_str().unwrap()),
            allow,
            "{what}"
        );
    }
    assert_eq!(
        up.hits(),
        2,
        "a refused HTTP/2 request reached the upstream"
    );
}
