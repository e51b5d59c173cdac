//! The signed identity assertion's cost per request: `Assertions::value` for an identity
//! that already has its assertion (a cache hit: what nearly every request pays, the
//! assertion being kept with the identity until half its lifetime has passed), and a fresh
//! signing (what the first request of an identity and audience pays, and one request per
//! identity every half lifetime): ES256 and EdDSA. Run with `cargo bench --bench assertion`.
//!
//! The identity is a typical one: `sub`, `email`, three groups, one configured claim; the
//! default lifetime (2 minutes) and budget (4096 bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::assertion::{Assertions, Keys};
use portcullis::claims::Identity;
use portcullis::clock::TokioClock;
use portcullis::metrics::Metrics;
use serde_json::json;

fn signer(algorithm: &str) -> Assertions {
    let config = portcullis::Config::from_yaml(
        &format!(
            "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
             upstreams: {{ app: {{ addresses: [\"http://127.0.0.1:9\"] }} }}\n\
             routes: [{{ path: /, upstream: app }}]\n\
             auth:\n  assertion: {{ issuer: \"https://portcullis.example.com\", \
             algorithm: {algorithm}, claims: {{ tenant: tid }} }}\n"
        ),
        [],
    )
    .unwrap();
    let keys = Keys::default().load(&config).unwrap().unwrap();
    let metrics = Metrics::try_new().unwrap();
    Assertions::new(
        config.auth.assertion.as_ref().unwrap(),
        keys,
        Arc::new(TokioClock),
        &metrics,
    )
}

fn identity() -> Identity {
    let claims = json!({
        "email": "alice.example@corp.example.com",
        "tid": "8f2d6c1e-0b7a-4c5e-9d3f-2a1b0c9d8e7f",
    });
    Identity {
        issuer: Arc::from("corp"),
        subject: Some("00u1a2b3c4d5e6f7g8h9".into()),
        claims: claims.as_object().cloned().unwrap(),
        scopes: vec!["api:read".into()],
        groups: vec!["staff".into(), "engineering".into(), "oncall".into()],
        roles: vec![],
        expires: None,
        headers: Default::default(),
        cel: Default::default(),
    }
}

fn bench_assertion(c: &mut Criterion) {
    let mut g = c.benchmark_group("assertion");
    for alg in ["ES256", "EdDSA"] {
        let s = signer(alg);
        let id = identity();
        // The first call signs and keeps it; the timed ones find it.
        let first = s.value(&id, "app.example.com").unwrap();
        g.bench_function(format!("cached/{alg}"), |b| {
            b.iter(|| s.value(black_box(&id), black_box("app.example.com")))
        });
        assert_eq!(s.value(&id, "app.example.com").unwrap(), first);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        g.bench_function(format!("fresh/{alg}"), |b| {
            b.iter(|| s.sign(black_box(&id), black_box("app.example.com"), now))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_assertion);
criterion_main!(benches);
