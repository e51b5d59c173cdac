//! Forwarding through a real proxy to a real mock upstream: what the upstream receives and
//! what the client gets back, hop-by-hop headers in both directions, `X-Forwarded-*`, `Host`,
//! routing, 404 bodies and dot-segment refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::upstream::seen;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::Proxy;
use support::client::{self, Resp};
use support::raw::{self, RawResp};
use support::scenario::Scenario;
use support::upstream::{self, MockUpstream};

// --- helpers ---

/// Sends `method url` with `headers` and `body` through the pooled HTTP/1.1 client.
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    client::send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

/// The single value the upstream saw for `name`; panics if absent or repeated.
fn seen_one(echo: &Value, name: &str) -> String {
    let v = seen(echo, name);
    assert_eq!(v.len(), 1, "upstream saw {name}: {v:?} in {echo}");
    v.into_iter().next().unwrap()
}

/// The names of every header the upstream saw.
fn seen_names(echo: &Value) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_string())
        .collect()
}

/// Writes `request` verbatim (it must ask for `Connection: close`) and reads the response, so
/// nothing between the test and the proxy normalises the request line or headers.
async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResp {
    raw::exchange(addr, request.as_bytes()).await
}

/// The one route most tests here use: everything to upstream `app`.
const CATCH_ALL: &str = "  - { path: /, upstream: app }";

/// The echo upstream `id` as upstream `app`, behind a proxy with `routes` (YAML list items)
/// and `server` settings.
async fn proxied(id: &str, routes: &str, server: &[&str]) -> (MockUpstream, Proxy) {
    let up = upstream::start(id).await;
    let mut scenario = Scenario::new().upstream("app", &up).routes_yaml(routes);
    if !server.is_empty() {
        scenario = scenario.server(server);
    }
    (up, scenario.start().await)
}

/// A proxy with one upstream per `(name, mock)`, plus `routes`.
async fn proxied_multi(upstreams: &[(&str, &MockUpstream)], routes: &str) -> Proxy {
    let mut scenario = Scenario::new();
    for (name, up) in upstreams {
        scenario = scenario.upstream(name, up);
    }
    scenario.routes_yaml(routes).start().await
}

// --- request and response forwarding ---

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let (_up, proxy) = proxied("fwd", CATCH_ALL, &[]).await;

    let cases: [(&str, &str, &str); 6] = [
        ("GET", "", "/items/42?sort=asc&page=2"),
        ("POST", "{\"name\":\"widget\"}", "/items?create=1"),
        ("PUT", "replacement body\nline 2", "/items/42"),
        ("PATCH", "patch-body", "/items/42?op=merge"),
        ("DELETE", "", "/items/42"),
        ("OPTIONS", "", "/items"),
    ];
    for (method, body, path_query) in cases {
        let r = send(
            method,
            &proxy.url(path_query),
            &[
                ("x-custom-request", "value-1"),
                ("x-multi", "a"),
                ("accept", "application/json"),
                ("authorization", "Bearer abc"),
            ],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{method} {path_query}");
        let j = r.json();
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Value::from(q)),
            None => (path_query, Value::Null),
        };
        assert_eq!(j["method"], method);
        assert_eq!(j["path"], path);
        assert_eq!(j["query"], query, "{method} {path_query}");
        assert_eq!(j["body"], body, "{method} {path_query}");
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(seen_one(&j, "x-custom-request"), "value-1");
        assert_eq!(seen_one(&j, "x-multi"), "a");
        assert_eq!(seen_one(&j, "accept"), "application/json");
        assert_eq!(seen_one(&j, "authorization"), "Bearer abc");
        if !body.is_empty() {
            assert_eq!(seen_one(&j, "content-length"), body.len().to_string());
        }
        // Response status, headers and body come back unchanged.
        assert_eq!(r.headers["x-upstream-id"], "fwd");
        assert_eq!(r.headers["x-response-custom"], "kept");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.headers["content-length"],
            r.body.len().to_string(),
            "{method}"
        );
    }

    // Repeated request headers are all forwarded, in order.
    let mut req = Request::get(proxy.url("/multi"));
    for v in ["one", "two", "three"] {
        req = req.header("x-repeat", v);
    }
    let r = client::send(req.body(Full::default()).unwrap()).await;
    assert_eq!(seen(&r.json(), "x-repeat"), ["one", "two", "three"]);

    // The path and query are forwarded as received (percent-encoding kept).
    let r = client::get(&proxy.url("/a%20b/%C3%A9t%C3%A9?q=a%2Fb&x=%20&empty=")).await;
    let j = r.json();
    assert_eq!(j["path"], "/a%20b/%C3%A9t%C3%A9");
    assert_eq!(j["query"], "q=a%2Fb&x=%20&empty=");

    // HEAD: the upstream sees HEAD, the client gets the headers and no body.
    let r = send("HEAD", &proxy.url("/head"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-response-custom"], "kept");
    assert!(r.body.is_empty());

    // Upstream statuses pass through, with their bodies.
    for code in [201u16, 302, 404, 418, 503] {
        let r = client::get(&proxy.url(&format!("/status?code={code}"))).await;
        assert_eq!(r.status, code);
        assert_eq!(&r.body[..], b"status", "status {code}");
        assert_eq!(r.headers["x-upstream-id"], "fwd");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn streams_a_chunked_request_body_and_echoes_it() {
    let (_up, proxy) = proxied("echo", CATCH_ALL, &[]).await;
    let addr = proxy.addr.unwrap();
    // A chunked upload (no Content-Length) is forwarded whole.
    let r = raw_exchange(
        addr,
        "POST /stream-echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, world");
    // And a sink sees every byte of a larger fixed-length body.
    let big = "z".repeat(3 * 1024 * 1024 + 7);
    let r = send("PUT", &proxy.url("/sink"), &[], &big).await;
    assert_eq!(r.json()["bytes"], big.len());
    proxy.shutdown().await;
}

// --- hop-by-hop headers ---

#[tokio::test]
async fn removes_hop_by_hop_request_headers() {
    let (_up, proxy) = proxied("hop", CATCH_ALL, &[]).await;
    let r = raw_exchange(
        proxy.addr.unwrap(),
        "GET /hop?x=1 HTTP/1.1\r\n\
         Host: app.example.com\r\n\
         Connection: close, X-Named-Hop, x-other-named\r\n\
         X-Named-Hop: secret\r\n\
         X-Other-Named: secret2\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Custom: yes\r\n\
         Upgrade: websocket\r\n\
         X-End-To-End: kept\r\n\
         \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let names = seen_names(&j);
    for gone in [
        "connection",
        "x-named-hop",
        "x-other-named",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "proxy-custom",
        "upgrade",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "upstream saw hop-by-hop header {gone}: {names:?}"
        );
    }
    assert_eq!(seen_one(&j, "x-end-to-end"), "kept");
    assert_eq!(seen_one(&j, "host"), "app.example.com");
    assert_eq!(j["path"], "/hop");
    assert_eq!(j["query"], "x=1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn removes_hop_by_hop_response_headers() {
    let (_up, proxy) = proxied("hop", CATCH_ALL, &[]).await;
    // The mock answers `connection: x-upstream-hop`, `x-upstream-hop: 1`,
    // `keep-alive: timeout=5` and `x-response-custom: kept`. Read the bytes off the wire so
    // that no client can hide what the proxy sent.
    let r = raw_exchange(
        proxy.addr.unwrap(),
        "GET /resp HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-response-custom"), Some("kept"));
    assert_eq!(r.header("x-upstream-id"), Some("hop"));
    assert_eq!(r.header("x-upstream-hop"), None, "{:?}", r.headers);
    assert_eq!(r.header("keep-alive"), None, "{:?}", r.headers);
    // hyper may add its own `connection: close` (the client asked for it), but the
    // upstream's value must not reach the client.
    for (k, v) in &r.headers {
        if k == "connection" {
            assert!(
                !v.to_ascii_lowercase().contains("x-upstream-hop"),
                "upstream Connection leaked: {v}"
            );
        }
    }
    assert_eq!(r.json()["path"], "/resp");

    // The same through a keep-alive client.
    let r = client::get(&proxy.url("/resp")).await;
    assert_eq!(r.headers["x-response-custom"], "kept");
    assert!(!r.headers.contains_key("x-upstream-hop"));
    assert!(!r.headers.contains_key("keep-alive"));
    assert!(!r.headers.contains_key("connection"), "{:?}", r.headers);
    proxy.shutdown().await;
}

// --- X-Forwarded-* ---

#[tokio::test]
async fn sets_forwarded_headers_and_replaces_spoofed_ones_by_default() {
    let (_up, proxy) = proxied("xf", CATCH_ALL, &[]).await;

    // No incoming values: all three are set.
    let r = send(
        "GET",
        &proxy.url("/xf"),
        &[("host", "app.example.com:8443")],
        "",
    )
    .await;
    let j = r.json();
    assert_eq!(seen_one(&j, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen_one(&j, "x-forwarded-proto"), "http");
    assert_eq!(seen_one(&j, "x-forwarded-host"), "app.example.com:8443");

    // Spoofed values are replaced, not appended to; Forwarded is dropped.
    let r = send(
        "GET",
        &proxy.url("/xf"),
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ],
        "",
    )
    .await;
    let j = r.json();
    assert_eq!(seen_one(&j, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen_one(&j, "x-forwarded-proto"), "http");
    assert_eq!(seen_one(&j, "x-forwarded-host"), "app.example.com");
    assert!(seen(&j, "forwarded").is_empty(), "Forwarded leaked: {j}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn trusted_forwarded_headers_are_appended_and_kept() {
    let (_up, proxy) = proxied("xf", CATCH_ALL, &["trust_forwarded_headers: true"]).await;

    let r = send(
        "GET",
        &proxy.url("/xf"),
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7, 8.8.8.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
        ],
        "",
    )
    .await;
    let j = r.json();
    assert_eq!(
        seen_one(&j, "x-forwarded-for"),
        "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"
    );
    assert_eq!(seen_one(&j, "x-forwarded-proto"), "https");
    assert_eq!(seen_one(&j, "x-forwarded-host"), "public.example");

    // Still set when the client sent none.
    let r = send("GET", &proxy.url("/xf"), &[("host", "app.example.com")], "").await;
    let j = r.json();
    assert_eq!(seen_one(&j, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen_one(&j, "x-forwarded-proto"), "http");
    assert_eq!(seen_one(&j, "x-forwarded-host"), "app.example.com");
    proxy.shutdown().await;
}

// --- Host ---

#[tokio::test]
async fn host_is_kept_by_default_and_rewritten_per_route() {
    let (up, proxy) = proxied(
        "host",
        "  - { name: keep, path: /keep, upstream: app }\n\
         \x20 - { name: up, path: /up, upstream: app, rewrite_host: upstream }\n\
         \x20 - { name: lit, path: /lit, upstream: app, rewrite_host: literal.example }",
        &[],
    )
    .await;
    let host = ("host", "client.example:8080");

    let j = send("GET", &proxy.url("/keep/x"), &[host], "").await.json();
    assert_eq!(seen_one(&j, "host"), "client.example:8080");

    let j = send("GET", &proxy.url("/up/x"), &[host], "").await.json();
    assert_eq!(seen_one(&j, "host"), up.addr.to_string());
    assert_eq!(seen_one(&j, "x-forwarded-host"), "client.example:8080");

    let j = send("GET", &proxy.url("/lit/x"), &[host], "").await.json();
    assert_eq!(seen_one(&j, "host"), "literal.example");
    assert_eq!(seen_one(&j, "x-forwarded-host"), "client.example:8080");
    proxy.shutdown().await;
}

// --- routing ---

#[tokio::test]
async fn routes_by_exact_wildcard_and_any_host() {
    let exact = upstream::start("exact").await;
    let wild = upstream::start("wild").await;
    let deep = upstream::start("deep").await;
    let any = upstream::start("any").await;
    let proxy = proxied_multi(
        &[
            ("exact", &exact),
            ("wild", &wild),
            ("deep", &deep),
            ("any", &any),
        ],
        // File order is deliberately least specific first: precedence must not depend on it.
        "  - { path: /, upstream: any }\n\
         \x20 - { host: \"*.example.com\", path: /, upstream: wild }\n\
         \x20 - { host: \"*.eu.example.com\", path: /, upstream: deep }\n\
         \x20 - { host: api.example.com, path: /, upstream: exact }",
    )
    .await;
    let cases = [
        ("api.example.com", "exact"),
        ("API.Example.COM:8080", "exact"),
        ("www.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("shop.eu.example.com", "deep"),
        ("eu.example.com", "wild"),
        ("example.com", "any"),
        ("notexample.com", "any"),
        ("other.org", "any"),
        ("127.0.0.1", "any"),
    ];
    for (host, want) in cases {
        let r = send("GET", &proxy.url("/r"), &[("host", host)], "").await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.headers["x-upstream-id"], want, "host {host}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn routes_by_longest_whole_segment_prefix_then_methods() {
    let root = upstream::start("root").await;
    let api = upstream::start("api").await;
    let v2 = upstream::start("v2").await;
    let writer = upstream::start("writer").await;
    let getter = upstream::start("getter").await;
    let proxy = proxied_multi(
        &[
            ("root", &root),
            ("api", &api),
            ("v2", &v2),
            ("writer", &writer),
            ("getter", &getter),
        ],
        "  - { path: /, upstream: root }\n\
         \x20 - { path: /api, upstream: api }\n\
         \x20 - { path: /api/v2, upstream: v2 }\n\
         \x20 - { path: /api/write, methods: [POST, put], upstream: writer }\n\
         \x20 - { path: /m, upstream: api }\n\
         \x20 - { path: /m, methods: [GET], upstream: getter }\n\
         \x20 - { path: /dir/, upstream: v2 }",
    )
    .await;
    let cases = [
        ("GET", "/", "root"),
        ("GET", "/other", "root"),
        ("GET", "/api", "api"),
        ("GET", "/api/", "api"),
        ("GET", "/api/x/y", "api"),
        ("GET", "/api?q=1", "api"),
        ("GET", "/apix", "root"),
        ("GET", "/api-v2", "root"),
        ("GET", "/api/v2", "v2"),
        ("GET", "/api/v2/users", "v2"),
        ("GET", "/api/v20", "api"),
        ("GET", "/API", "root"),
        // Method filters choose among the most specific routes only (a method none of them
        // takes is 405, below).
        ("POST", "/api/write", "writer"),
        ("PUT", "/api/write/1", "writer"),
        // Same prefix: the route listing methods wins for those methods.
        ("GET", "/m/x", "getter"),
        ("POST", "/m/x", "api"),
        // A prefix ending in / matches below it, not the bare name.
        ("GET", "/dir/a", "v2"),
        ("GET", "/dir", "root"),
    ];
    for (method, path, want) in cases {
        let r = send(method, &proxy.url(path), &[], "").await;
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(r.headers["x-upstream-id"], want, "{method} {path}");
        // The path is forwarded whole, not stripped of the prefix.
        let j = r.json();
        assert_eq!(
            j["path"],
            path.split('?').next().unwrap(),
            "{method} {path}"
        );
    }
    // A method the most specific route does not take never falls back to a shorter prefix.
    for (method, path) in [("GET", "/api/write"), ("DELETE", "/api/write/1")] {
        let r = send(method, &proxy.url(path), &[], "").await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.headers["allow"], "POST, PUT", "{method} {path}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn no_matching_route_is_404_json_or_text() {
    let (up, proxy) = proxied(
        "only",
        "  - { host: only.example.com, path: /api, methods: [GET], upstream: app }",
        &[],
    )
    .await;
    // Sanity: the route works.
    let r = send(
        "GET",
        &proxy.url("/api"),
        &[("host", "only.example.com")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let hits = up.hits();

    let misses: [(&str, &str, &str); 3] = [
        ("GET", "/api", "other.example.com"), // host
        ("GET", "/apix", "only.example.com"), // path (not a whole segment)
        ("GET", "/", "only.example.com"),     // path
    ];
    for (method, path, host) in misses {
        let r = send(
            method,
            &proxy.url(path),
            &[
                ("host", host),
                ("accept", "text/html, application/json;q=0.9"),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, 404, "{method} {host}{path}");
        assert_eq!(r.headers["content-type"], "application/json");
        let j = r.json();
        assert_eq!(j["status"], 404);
        assert!(
            j["error"].as_str().is_some_and(|s| !s.is_empty()),
            "error message: {j}"
        );
        assert_eq!(j.as_object().unwrap().len(), 2, "{j}");

        let r = send(method, &proxy.url(path), &[("host", host)], "").await;
        assert_eq!(r.status, 404);
        assert!(
            r.content_type().starts_with("text/plain"),
            "{:?}",
            r.headers
        );
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(text.starts_with("404"), "{text:?}");
        assert!(serde_json::from_str::<Value>(&text).is_err());
    }
    // A method the route does not list: 405 with Allow, in the same error shapes.
    let r = send(
        "POST",
        &proxy.url("/api"),
        &[("host", "only.example.com"), ("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    assert_eq!(r.json()["status"], 405);
    assert_eq!(up.hits(), hits, "a 404 or 405 must not reach the upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn dot_segment_paths_are_refused_with_400() {
    let (up, proxy) = proxied("dots", "  - { path: /public, upstream: app }", &[]).await;
    let addr = proxy.addr.unwrap();
    let raw = |path: &str, accept: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
    };
    for path in [
        "/public/../admin",
        "/public/..",
        "/public/./x",
        "/public/.",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/public/%2e/admin",
        "/public/a/../../admin?x=1",
    ] {
        let r = raw_exchange(addr, &raw(path, "application/json")).await;
        assert_eq!(r.status, 400, "{path}");
        let j = r.json();
        assert_eq!(j["status"], 400, "{path}");
        let r = raw_exchange(addr, &raw(path, "*/*")).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.starts_with(b"400"), "{path}");
    }
    assert_eq!(up.hits(), 0, "a dot-segment path reached the upstream");

    // Dots inside a segment are ordinary characters.
    for path in [
        "/public/..hidden",
        "/public/a..b",
        "/public/...",
        "/public/%2e%2e%2e",
    ] {
        let r = raw_exchange(addr, &raw(path, "*/*")).await;
        assert_eq!(r.status, 200, "{path}");
        // Escaped unreserved characters are forwarded decoded (`routing::normalize`).
        assert_eq!(r.json()["path"], path.replace("%2e", "."));
    }
    assert_eq!(up.hits(), 4);
    proxy.shutdown().await;
}
