//! The assertion's claims, its size budget, and when it is signed again.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::clock::ManualClock;
use crate::config::{AssertionAlgorithm, Config};

fn config(assertion: &str) -> Config {
    let yaml = format!(
        "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
         upstreams: {{ app: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
         routes: [{{ path: /, upstream: app }}]\n\
         auth:\n  assertion: {{ issuer: \"https://portcullis.test\", {assertion} }}\n"
    );
    Config::from_yaml(&yaml, Vec::<(String, String)>::new()).unwrap_or_else(|e| panic!("{e}"))
}

struct Fixture {
    signer: Assertions,
    clock: ManualClock,
    metrics: Metrics,
}

fn fixture(assertion: &str) -> Fixture {
    let c = config(assertion);
    let a = c.auth.assertion.clone().unwrap_or_else(|| panic!("assertion"));
    let keys = Keys::default()
        .load(&c)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("keys"));
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap_or_else(|e| panic!("{e}"));
    Fixture {
        signer: Assertions::new(&a, keys, Arc::new(clock.clone()), &metrics),
        clock,
        metrics,
    }
}

fn identity(claims: Value, groups: &[&str], expires: Option<u64>) -> Identity {
    Identity {
        issuer: Arc::from("corp"),
        subject: Some("alice".into()),
        claims: claims.as_object().cloned().unwrap_or_default(),
        scopes: vec![],
        groups: groups.iter().map(|g| g.to_string()).collect(),
        roles: vec![],
        expires,
        headers: Default::default(),
        cel: Default::default(),
    }
}

fn payload(v: &HeaderValue) -> Value {
    let s = v.to_str().unwrap_or("");
    let part = s.split('.').nth(1).unwrap_or("");
    let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn now(clock: &ManualClock) -> u64 {
    use crate::clock::Clock;
    clock
        .wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn claims_are_the_fixed_ones_email_groups_and_the_configured_ones() {
    let f = fixture("claims: { tenant: org.id }");
    let id = identity(
        json!({"email": "a@x", "org": {"id": "t1"}}),
        &["staff", "dev"],
        None,
    );
    let v = f.signer.value(&id, "app.example.com").unwrap_or_else(|| panic!("signed"));
    let p = payload(&v);
    let iat = p["iat"].as_u64().unwrap_or(0);
    assert_eq!(p["iss"], "https://portcullis.test");
    assert_eq!(p["sub"], "alice");
    assert_eq!(p["aud"], "app.example.com");
    assert_eq!(p["exp"].as_u64(), Some(iat + 120));
    assert_eq!(p["email"], "a@x");
    assert_eq!(p["tenant"], "t1");
    assert_eq!(p["groups"], json!(["staff", "dev"]));
    // The header names the signing key and the algorithm.
    let header = v.to_str().unwrap_or("").split('.').next().unwrap_or("");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap_or_default())
            .unwrap_or(Value::Null);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"].as_str(), f.signer.keys().kids().first().copied());
}

#[test]
fn an_assertion_is_kept_until_half_its_life_then_signed_again() {
    let f = fixture("lifetime: 60s");
    let id = identity(json!({}), &[], None);
    let first = f.signer.value(&id, "a").unwrap_or_else(|| panic!("signed"));
    assert_eq!(f.metrics.assertions_signed.get(), 1);
    // Another audience is another assertion; the first is still kept.
    let other = f.signer.value(&id, "b").unwrap_or_else(|| panic!("signed"));
    assert_ne!(first, other);
    assert_eq!(f.signer.value(&id, "a"), Some(first.clone()));
    assert_eq!(f.metrics.assertions_signed.get(), 2);
    f.clock.advance(Duration::from_secs(29));
    assert_eq!(f.signer.value(&id, "a"), Some(first.clone()));
    f.clock.advance(Duration::from_secs(2));
    let renewed = f.signer.value(&id, "a").unwrap_or_else(|| panic!("signed"));
    assert_ne!(renewed, first);
    assert_eq!(payload(&renewed)["iat"].as_u64(), Some(now(&f.clock)));
    assert_eq!(f.metrics.assertions_signed.get(), 3);
}

#[test]
fn an_assertion_never_outlives_the_bearer_token() {
    let f = fixture("lifetime: 10m");
    let soon = now(&f.clock) + 30;
    let id = identity(json!({}), &[], Some(soon));
    let v = f.signer.value(&id, "a").unwrap_or_else(|| panic!("signed"));
    assert_eq!(payload(&v)["exp"].as_u64(), Some(soon));
    let gone = identity(json!({}), &[], Some(now(&f.clock)));
    assert_eq!(f.signer.value(&gone, "a"), None);
}

#[test]
fn optional_claims_that_do_not_fit_are_dropped_and_counted() {
    let f = fixture("max_bytes: 1000");
    let many: Vec<String> = (0..100).map(|i| format!("group-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let id = identity(json!({"email": "a@x"}), &many, None);
    let v = f.signer.value(&id, "a").unwrap_or_else(|| panic!("signed"));
    assert!(v.len() <= 1000, "{}", v.len());
    let p = payload(&v);
    assert_eq!(p["email"], "a@x");
    assert!(p.get("groups").is_none());
    let dropped = f
        .metrics
        .assertion_claims_dropped
        .with_label_values(&["groups"])
        .get();
    assert_eq!(dropped, 1);
}

#[test]
fn eddsa_keys_sign_eddsa_assertions() {
    let f = fixture("algorithm: EdDSA");
    let id = identity(json!({}), &[], None);
    let v = f.signer.value(&id, "a").unwrap_or_else(|| panic!("signed"));
    let header = v.to_str().unwrap_or("").split('.').next().unwrap_or("");
    let header = String::from_utf8(URL_SAFE_NO_PAD.decode(header).unwrap_or_default())
        .unwrap_or_default();
    assert!(header.contains("\"alg\":\"EdDSA\""), "{header}");
}

#[test]
fn a_generated_key_is_kept_across_loads_of_the_same_algorithm() {
    let keys = Keys::default();
    let load = |c: &Config| {
        keys.load(c)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|s| s.kids().iter().map(|k| k.to_string()).collect::<Vec<_>>())
    };
    let es = config("lifetime: 1m");
    let first = load(&es);
    assert_eq!(load(&es), first);
    let ed = config("algorithm: EdDSA");
    assert_ne!(load(&ed), first);
    assert_eq!(
        ed.auth.assertion.map(|a| a.algorithm),
        Some(AssertionAlgorithm::EdDsa)
    );
}
