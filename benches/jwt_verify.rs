//! JWT verification cost: uncached per algorithm (signature + claims), and the cached path
//! (`Authenticator::authenticate` with the token already verified: one SHA-256 and one lookup).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis::authn::Authenticator;
use portcullis::clock::TokioClock;
use portcullis::metrics::Metrics;

struct Signer {
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Jwk,
}

fn signer(alg: Algorithm, kid: &str) -> Signer {
    let rcgen_alg = match alg {
        Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::EdDSA => &rcgen::PKCS_ED25519,
        _ => unreachable!(),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let pem = pair.serialize_pem();
    let enc = match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        // rcgen writes Ed25519 as PKCS#8 v2, which jsonwebtoken's JWK export refuses; use
        // aws-lc-rs's v1 form instead.
        _ => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
            EncodingKey::from_ed_der(pair.to_pkcs8v1().unwrap().as_ref())
        }
    };
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    Signer { alg, enc, jwk }
}

const ISS: &str = "http://127.0.0.1:9/bench";

fn token(s: &Signer, kid: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISS, "aud": "api://bench", "sub": "alice", "email": "alice@example.com",
        "groups": ["staff"], "scope": "api:read", "iat": now, "exp": now + 3600,
    });
    let mut h = Header::new(s.alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, &claims, &s.enc).unwrap()
}

fn uncached(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt_verify_uncached");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let s = signer(alg, "k1");
        let t = token(&s, "k1");
        let key = DecodingKey::from_jwk(&s.jwk).unwrap();
        let mut v = Validation::new(alg);
        v.set_audience(&["api://bench"]);
        v.set_issuer(&[ISS]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        g.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| portcullis::authn::jwt::verify(std::hint::black_box(&t), &key, &v).unwrap())
        });
    }
    g.finish();
}

fn cached(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = signer(Algorithm::RS256, "k1");
    let t = token(&s, "k1");
    // Keys come from a state file, as after a restart: no IdP is contacted.
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("issuers")).unwrap();
    let state = serde_json::json!({
        "issuer": ISS, "fetched_at_unix": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
        "jwks_uri": format!("{ISS}/jwks"), "discovery": null, "jwks": { "keys": [s.jwk] },
    });
    std::fs::write(dir.join("issuers/bench.json"), state.to_string()).unwrap();
    let yaml = format!(
        "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\nstate_dir: \"{}\"\n\
         upstreams: {{ a: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
         issuers: {{ bench: {{ issuer: \"{ISS}\", audiences: [\"api://bench\"] }} }}\n\
         routes: [ {{ path: /, upstream: a, auth: bearer }} ]\n",
        dir.display()
    );
    let config = portcullis::Config::from_yaml(&yaml, []).unwrap();
    let auth = Arc::new(
        Authenticator::try_new(&config, Metrics::try_new().unwrap(), Arc::new(TokioClock)).unwrap(),
    );
    rt.block_on(async {
        for i in auth.issuers() {
            assert!(i.load_persisted().await);
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {t}").parse().unwrap(),
    );
    rt.block_on(auth.authenticate(&headers, None)).unwrap();
    c.bench_function("jwt_verify_cached/RS256", |b| {
        b.to_async(&rt).iter(|| async {
            auth.authenticate(std::hint::black_box(&headers), None)
                .await
                .unwrap()
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, uncached, cached);
criterion_main!(benches);
