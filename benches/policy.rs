//! CEL authorize rules per request. Run with `cargo bench --bench policy`.
//!
//! `three_clauses/*`: one `allow_if` of three clauses over a claim, a request header and the
//! method — `claims.email.endsWith('@corp.com') && request.headers['x-tenant'] == 'blue' &&
//! request.method == 'GET'` — evaluated the way the proxy does for each request on the route:
//! `cached_identity` is the common case (a cached token or session, whose claims were converted
//! to CEL values on its first request), `fresh_identity` converts a typical token's kept claims
//! too. `claims_only` is a rule that reads no request field (no request map is built).
//! Target: under 1 µs per request (issue 18).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use portcullis::authz::Policy;
use portcullis::authz::cel::{CelRule, Facts, Kind, Limits, Mode};
use portcullis::authz::{Match, Thoroughness};
use portcullis::claims::Identity;
use serde_json::json;

const THREE: &str = "claims.email.endsWith('@corp.com') && request.headers['x-tenant'] == 'blue' && request.method == 'GET'";

fn policy(src: &str) -> Policy {
    let rule = CelRule::compile(
        Arc::from("allow_if[0]"),
        Kind::AllowIf,
        Mode::Enforce,
        src,
        Limits::default(),
    )
    .unwrap();
    Policy {
        mode: Match::All,
        rules: Vec::new(),
        cel: Arc::from(vec![rule]),
    }
}

fn identity() -> Identity {
    // The claims an identity keeps are the ones rules and headers read: here three.
    let claims = json!({
        "email": "alice@corp.com",
        "groups": ["staff", "dev", "ops"],
        "sub": "alice",
    });
    Identity {
        issuer: Arc::from("corp"),
        subject: Some("alice".into()),
        scopes: vec!["api:read".into()],
        groups: vec!["staff".into()],
        roles: Vec::new(),
        expires: None,
        claims: claims.as_object().cloned().unwrap(),
        headers: Default::default(),
        cel: Default::default(),
    }
}

/// A browser-like request's headers (12).
fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        ("accept", "application/json"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
        ("x-tenant", "blue"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-request-id", "abc-123"),
        ("connection", "keep-alive"),
        ("cache-control", "no-cache"),
        ("sec-fetch-mode", "cors"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let h = headers();
    let facts = Facts {
        method: "GET",
        host: "app.example.com",
        path: "/api/v1/items",
        query: "page=2",
        headers: &h,
        client_ip: IpAddr::from([10, 0, 0, 1]),
        now: 1_700_000_000,
    };
    let three = policy(THREE);
    let claims_only = policy(
        "claims.email.endsWith('@corp.com') && 'ops' in claims.groups && claims.sub != 'mallory'",
    );
    let mut g = c.benchmark_group("three_clauses");
    let cached = identity();
    g.bench_function("cached_identity", |b| {
        b.iter(|| {
            let d = three.decide(
                black_box(&cached),
                black_box(&facts),
                "api",
                Thoroughness::Serve,
                &mut |_, _, _| {},
            );
            black_box(d)
        })
    });
    g.bench_function("fresh_identity", |b| {
        b.iter_batched(
            identity,
            |id| {
                let d = three.decide(&id, &facts, "api", Thoroughness::Serve, &mut |_, _, _| {});
                black_box(d)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("claims_only", |b| {
        b.iter(|| {
            let d = claims_only.decide(
                black_box(&cached),
                black_box(&facts),
                "api",
                Thoroughness::Serve,
                &mut |_, _, _| {},
            );
            black_box(d)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
