//! The signed identity assertion, verified by independent libraries (PyJWT + cryptography,
//! Node's jose, Go's standard library where installed) that fetch the JWKS from the running
//! Portcullis: valid ones verify, a wrong audience, an expired one and one signed by a key
//! removed from the configuration are refused, and keys rotate with an overlap. The JWKS
//! own path on the proxy and admin listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::Config;
use serde_json::Value;
use support::client::{echoed, get_bearer, get_with, send};
use support::idp::{MockIdp, SigningKey};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use support::verifiers::{assert_refused, assert_valid, available};
use support::{Proxy, metric_value, temp_dir};

const ISS: &str = "https://portcullis.test";
const JWKS: &str = "/.well-known/portcullis/jwks.json";
const HEADER: &str = "x-portcullis-assertion";

/// A PEM file with a new private key: P-256 (`ES256`) or Ed25519 (`EdDSA`).
pub fn key_file(dir: &Path, name: &str, alg: &str) -> PathBuf {
    let sig = match alg {
        "ES256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        _ => &rcgen::PKCS_ED25519,
    };
    let key = rcgen::KeyPair::generate_for(sig).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, key.serialize_pem()).unwrap();
    path
}

struct Setup {
    idp: MockIdp,
    key: SigningKey,
    up: MockUpstream,
    dir: PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let idp = MockIdp::start().await;
        let key = idp.new_key(Algorithm::RS256, "rsa-1");
        Self {
            idp,
            key,
            up: upstream::start("app").await,
            dir: temp_dir("assertion"),
        }
    }

    /// Routes: `/api` (bearer, `aud` the request's host), `/aud` (bearer, its own `aud`),
    /// `/off` (bearer, no assertion), `/` (no authentication); `auth.assertion` with `keys`
    /// and `extra` settings.
    fn scenario(&self, keys: &[&Path], extra: &str) -> Scenario {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{}\"", k.display()))
            .collect();
        Scenario::new()
            .upstream("app", &self.up)
            .issuer("corp", &self.idp, &[])
            .state_dir(self.dir.join("state"))
            .route(Route::bearer("/api").name("api"))
            .route(
                Route::bearer("/aud")
                    .name("aud")
                    .raw("assertion", "{ audience: \"https://app.test\" }"),
            )
            .route(
                Route::bearer("/off")
                    .name("unsigned")
                    .raw("assertion", "off"),
            )
            .route(Route::open("/").name("open"))
            .auth(&[&format!(
                "assertion: {{ issuer: \"{ISS}\", keys: [{}] {extra} }}",
                keys.join(", ")
            )])
    }

    fn token(&self) -> String {
        self.idp.token(&self.key).build()
    }
}

/// The one assertion the upstream got for GET `path` with a fresh token.
async fn assertion_of(proxy: &Proxy, token: &str, path: &str) -> String {
    let r = get_bearer(&proxy.url(path), token).await;
    assert_eq!(r.status, 200, "{path}");
    let values = echoed(&r, HEADER);
    assert_eq!(values.len(), 1, "{path}: {values:?}");
    values[0].clone()
}

fn part(jwt: &str, i: usize) -> Value {
    let p = jwt.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn kid(jwt: &str) -> String {
    part(jwt, 0)["kid"].as_str().unwrap().to_string()
}

async fn jwks_kids(url: &str) -> Vec<String> {
    let r = support::client::get(url).await;
    assert_eq!(r.status, 200);
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

async fn reload(proxy: &Proxy, scenario: &Scenario) {
    let config = Config::from_yaml(&scenario.to_yaml(), Vec::<(String, String)>::new()).unwrap();
    proxy.reloader.apply(&config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_verifies_in_independent_libraries_and_a_wrong_audience_does_not() {
    let s = Setup::new().await;
    let k = key_file(&s.dir, "a.pem", "ES256");
    let proxy = s.scenario(&[&k], "").start().await;
    let jwks = proxy.url(JWKS);
    let token = s.token();

    let a = assertion_of(&proxy, &token, "/api").await;
    assert!(!a.contains('='), "unpadded base64url");
    assert_eq!(part(&a, 0)["alg"], "ES256");
    for claims in assert_valid(&jwks, "127.0.0.1", ISS, &a).await {
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["groups"], serde_json::json!(["staff", "dev"]));
        assert_eq!(claims["aud"], "127.0.0.1");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 120, "the default lifetime is 2 minutes");
    }
    // The admin listener publishes the same keys.
    let admin_jwks = format!("http://{}{JWKS}", proxy.admin);
    assert_valid(&admin_jwks, "127.0.0.1", ISS, &a).await;

    // Another audience, and a wrong issuer, are refused by every library.
    assert_refused(&jwks, "https://other.test", ISS, &a, &["aud"]).await;
    assert_refused(&jwks, "127.0.0.1", "https://evil.test", &a, &["iss"]).await;
    // A tampered payload fails the signature.
    let mut parts: Vec<String> = a.split('.').map(str::to_string).collect();
    let mut claims = part(&a, 1);
    claims["sub"] = "mallory".into();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let forged = parts.join(".");
    assert_refused(&jwks, "127.0.0.1", ISS, &forged, &["signature", "verif"]).await;

    // A route's own audience.
    let b = assertion_of(&proxy, &token, "/aud").await;
    assert_valid(&jwks, "https://app.test", ISS, &b).await;
    assert_refused(&jwks, "127.0.0.1", ISS, &b, &["aud"]).await;

    // Off on one route, and none without authentication.
    let r = get_bearer(&proxy.url("/off"), &token).await;
    assert!(echoed(&r, HEADER).is_empty());
    let r = get_with(&proxy.url("/open"), &[]).await;
    assert!(echoed(&r, HEADER).is_empty());

    // Not signed per request: the same token gets the same assertion, and only two were
    // signed (one per audience).
    assert_eq!(assertion_of(&proxy, &token, "/api").await, a);
    let m = proxy.metrics().await;
    assert_eq!(metric_value(&m, "portcullis_assertions_signed_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_assertion_is_refused() {
    let s = Setup::new().await;
    let k = key_file(&s.dir, "a.pem", "ES256");
    let proxy = s.scenario(&[&k], ", lifetime: 1s").start().await;
    let jwks = proxy.url(JWKS);
    let token = s.token();
    let a = assertion_of(&proxy, &token, "/api").await;
    let exp = part(&a, 1)["exp"].as_u64().unwrap();
    assert!(exp <= part(&a, 1)["iat"].as_u64().unwrap() + 1);
    if available().is_empty() {
        return;
    }
    // Wait (bounded) for `exp` to pass in real time, then every library refuses it.
    support::wait_until(Duration::from_secs(10), || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now > exp
    })
    .await;
    assert_refused(&jwks, "127.0.0.1", ISS, &a, &["expired", "\"exp\""]).await;
    // The next request gets a new one (with a one-second lifetime it expires again before a
    // verifier process could start: its signature was checked by the other tests).
    let fresh = assertion_of(&proxy, &token, "/api").await;
    assert!(part(&fresh, 1)["exp"].as_u64().unwrap() > exp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_an_overlap_and_a_key_removed_from_the_config_is_refused() {
    let s = Setup::new().await;
    let old = key_file(&s.dir, "old.pem", "ES256");
    let new = key_file(&s.dir, "new.pem", "EdDSA");
    let jwks_of = |p: &Proxy| (p.url(JWKS), format!("http://{}{JWKS}", p.admin));
    // Step 1: the new key is published, the old one signs.
    let proxy = s.scenario(&[&old, &new], "").start().await;
    let (jwks, admin) = jwks_of(&proxy);
    let token = s.token();
    let by_old = assertion_of(&proxy, &token, "/api").await;
    let published = jwks_kids(&jwks).await;
    assert_eq!(published.len(), 2);
    assert_eq!(kid(&by_old), published[0]);
    assert_valid(&jwks, "127.0.0.1", ISS, &by_old).await;

    // Step 2: the new key signs; the old one is still published, so what it signed before
    // the reload still verifies.
    reload(&proxy, &s.scenario(&[&new, &old], "")).await;
    assert_eq!(
        jwks_kids(&admin).await,
        [published[1].clone(), published[0].clone()]
    );
    let by_new = assertion_of(&proxy, &token, "/api").await;
    assert_eq!(kid(&by_new), published[1]);
    assert_eq!(part(&by_new, 0)["alg"], "EdDSA");
    assert_valid(&jwks, "127.0.0.1", ISS, &by_new).await;
    assert_valid(&jwks, "127.0.0.1", ISS, &by_old).await;

    // Step 3: the old key is removed from the config: what it signed is refused.
    reload(&proxy, &s.scenario(&[&new], "")).await;
    assert_eq!(jwks_kids(&jwks).await, [published[1].clone()]);
    assert_eq!(jwks_kids(&admin).await, [published[1].clone()]);
    assert_refused(&jwks, "127.0.0.1", ISS, &by_old, &["key"]).await;
    assert_valid(&jwks, "127.0.0.1", ISS, &by_new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_one_is_generated_and_kept_across_reloads() {
    let s = Setup::new().await;
    let proxy = s.scenario(&[], "").start().await;
    let jwks = proxy.url(JWKS);
    let kids = jwks_kids(&jwks).await;
    assert_eq!(kids.len(), 1);
    let a = assertion_of(&proxy, &s.token(), "/api").await;
    assert_eq!(kid(&a), kids[0]);
    assert_valid(&jwks, "127.0.0.1", ISS, &a).await;
    reload(&proxy, &s.scenario(&[], ", lifetime: 5m")).await;
    assert_eq!(jwks_kids(&jwks).await, kids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_an_own_path_on_any_host_for_get_and_head_only() {
    let s = Setup::new().await;
    let k = key_file(&s.dir, "a.pem", "ES256");
    let proxy = s.scenario(&[&k], ", jwks_max_age: 10m").start().await;
    let hits = s.up.hits();
    let r = get_with(&proxy.url(JWKS), &[("host", "anything.example")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "application/json");
    assert_eq!(
        r.headers.get("cache-control").unwrap(),
        "public, max-age=600"
    );
    let body = r.body.clone();
    assert_eq!(r.json()["keys"][0]["kty"], "EC");
    assert_eq!(r.json()["keys"][0]["use"], "sig");
    let head = send(
        Request::head(proxy.url(JWKS))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = send(
        Request::post(proxy.url(JWKS))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers.get("allow").unwrap(), "GET, HEAD");
    // Never routed: the `/` route's upstream saw none of them.
    assert_eq!(s.up.hits(), hits);
    // The admin listener serves the same document.
    let admin = support::client::get(&format!("http://{}{JWKS}", proxy.admin)).await;
    assert_eq!(admin.status, 200);
    assert_eq!(admin.body, body);
    assert_eq!(
        admin.headers.get("cache-control").unwrap(),
        "public, max-age=600"
    );
}

#[test]
fn the_readme_carries_the_verifier_snippets_the_tests_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for f in ["verify.py", "verify.mjs", "verify.go"] {
        let snippet = std::fs::read_to_string(root.join("docs/verify").join(f)).unwrap();
        assert!(
            readme.contains(&snippet),
            "README.md lacks docs/verify/{f} as it is"
        );
    }
    // The Node verifier the tests run is that file.
    let link = std::fs::read_link(root.join("tests/verifiers/verify.mjs")).unwrap();
    assert_eq!(link, Path::new("../../docs/verify/verify.mjs"));
}
