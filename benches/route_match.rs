//! Route matching on a realistic table: 40 routes over exact hosts, `*.suffix` wildcards and
//! any-host prefixes, some method-restricted. Run with `cargo bench --bench route_match`.
//!
//! Cases: an exact host with a deep path (the common API call), a wildcard host, an any-host
//! fallback, a method refused by the most specific route (405), and a miss (no route: every
//! route is checked). `request/*` adds what the handler
//! does around `find` (strip the port, refuse dot segments). `path_normalize/*` is the path
//! normalisation every request goes through: a clean path (the fast path: no allocation,
//! should stay well under 1 µs) and one that needs rewriting; `target/*` is the whole
//! target + Host canonicalisation of a request head.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use portcullis::Config;
use portcullis::config::PathNormalization;
use portcullis::routing::Router;
use portcullis::routing::normalize::normalize;
use portcullis::routing::target::canonicalize;

/// 40 routes: 5 exact hosts x 5 prefixes, 3 wildcards x 3 prefixes, 6 any-host prefixes.
/// No catch-all `/`, so a request for an unknown host and path misses.
fn config_yaml() -> String {
    let mut y = String::from(
        "listeners:\n  plain: { address: \"127.0.0.1:0\" }\n\
         admin: { address: \"127.0.0.1:0\" }\n\
         upstreams:\n  app: { addresses: [\"http://127.0.0.1:1\"] }\n  api: { addresses: [\"http://127.0.0.1:2\"] }\n\
         routes:\n",
    );
    let mut route = |host: &str, path: &str, methods: Option<&str>, up: &str| {
        let _ = writeln!(
            y,
            "  - host: \"{host}\"\n    path: \"{path}\"\n    upstream: {up}"
        );
        if let Some(m) = methods {
            let _ = writeln!(y, "    methods: [{m}]");
        }
    };
    for host in [
        "www.example.com",
        "app.example.com",
        "api.example.com",
        "admin.example.com",
        "auth.example.com",
    ] {
        route(host, "/", None, "app");
        route(host, "/api", None, "api");
        route(host, "/api/v2", None, "api");
        route(host, "/api/v2/users", Some("GET, HEAD"), "api");
        route(host, "/static/", None, "app");
    }
    for host in [
        "*.apps.example.com",
        "*.tenants.example.net",
        "*.example.org",
    ] {
        route(host, "/", None, "app");
        route(host, "/dashboard", None, "app");
        route(host, "/api", Some("GET, POST"), "api");
    }
    for path in [
        "/.well-known/acme-challenge",
        "/healthz",
        "/static",
        "/assets",
        "/oauth2/callback",
        "/favicon.ico",
    ] {
        route("*", path, None, "app");
    }
    y
}

fn router() -> Router {
    let config = Config::from_yaml(&config_yaml(), []).expect("bench config is valid");
    assert_eq!(config.routes.len(), 40);
    Router::new(&config.routes)
}

/// (name, host, path, method, expected to match)
const CASES: [(&str, &str, &str, Method, bool); 5] = [
    (
        "exact_host_deep_path",
        "api.example.com",
        "/api/v2/users/12345/orders/67890/items",
        Method::GET,
        true,
    ),
    (
        "wildcard_host",
        "tenant-42.apps.example.com",
        "/dashboard/reports/2024/q3",
        Method::GET,
        true,
    ),
    (
        "any_host_fallback",
        "unknown.example.io",
        "/static/js/app.4f3c2b1a.js",
        Method::GET,
        true,
    ),
    // The wildcard's /api is GET/POST only: DELETE is refused (405), it never falls through
    // to the wildcard's `/`.
    (
        "wildcard_method_refused",
        "tenant-7.example.org",
        "/api/items",
        Method::DELETE,
        false,
    ),
    (
        "miss",
        "unknown.example.io",
        "/nothing/here",
        Method::GET,
        false,
    ),
];

fn bench_find(c: &mut Criterion) {
    let router = router();
    let mut g = c.benchmark_group("route_find");
    for (name, host, path, method, hit) in CASES {
        assert_eq!(router.find(host, path, &method).is_ok(), hit, "case {name}");
        g.bench_function(name, |b| {
            b.iter(|| {
                router
                    .find(black_box(host), black_box(path), black_box(&method))
                    .is_ok()
            })
        });
    }
    g.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let opts = PathNormalization::default();
    let mut g = c.benchmark_group("path_normalize");
    for (name, path) in [
        ("clean", "/api/v2/users/12345/orders/67890/items"),
        ("rewritten", "/api//v2/%75sers/12345/orders/%c3%a9/items"),
    ] {
        let n = normalize(path, &opts).expect("bench path is accepted");
        assert_eq!(n.unchanged(), name == "clean", "case {name}");
        g.bench_function(name, |b| {
            b.iter(|| normalize(black_box(path), &opts).is_ok())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("target");
    let head = http::Request::get("/api/v2/users/12345/orders/67890/items?page=2")
        .header("host", "api.example.com:8443")
        .header("accept", "application/json")
        .body(())
        .expect("bench request")
        .into_parts()
        .0;
    g.bench_function("canonicalize_clean", |b| {
        b.iter_batched_ref(
            || head.clone(),
            |parts| canonicalize(parts, &opts).is_ok(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_find, bench_normalize);
criterion_main!(benches);
