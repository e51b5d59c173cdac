//! The IdP client and one issuer's keys, driven directly against the mock IdP (no proxy):
//! timeouts, bounded retries, `Retry-After` beyond `max_retry_after`, failure kinds, the
//! circuit breaker's probe when its caller goes away, the `Cache-Control: max-age` schedule,
//! discovery checks and persisted state (sound documents only, private files, whole files
//! under concurrent writes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::authn::jwks::{DiscoveryError, IssuerKeys, RefreshError};
use portcullis::authn::keys::JwksError;
use portcullis::clock::ManualClock;
use portcullis::config::IssuerConfig;
use portcullis::idp::{BreakerState, IdpClient, IdpError};
use portcullis::metrics::Metrics;
use support::idp::{Failure, JWKS, MockIdp};
use support::scenario::Scenario;
use support::{assert_metric, metric_value, temp_dir};

/// `issuers.corp` for `idp` with `extra` settings, validated through the real config code.
fn issuer_config(idp: &MockIdp, extra: &[&str]) -> Arc<IssuerConfig> {
    let yaml = Scenario::new()
        .upstream_at("app", &["http://127.0.0.1:9".into()], &[])
        .issuer("corp", idp, extra)
        .routes_yaml("  - { path: /, upstream: app, auth: bearer }")
        .to_yaml();
    portcullis::Config::from_yaml(&yaml, []).unwrap().issuers[0].clone()
}

fn client(cfg: &IssuerConfig, clock: &ManualClock, metrics: &Metrics) -> IdpClient {
    IdpClient::new(
        "corp",
        portcullis::tls_client::config(None).unwrap(),
        cfg.idp.clone(),
        Arc::new(clock.clone()),
        metrics.clone(),
    )
}

/// A mock IdP whose requests are stamped by a ManualClock (the one returned).
async fn idp_on_clock() -> (ManualClock, MockIdp) {
    let clock = ManualClock::new();
    let idp = MockIdp::start_with_clock(clock.clone()).await;
    (clock, idp)
}

/// An IdP client for issuer `corp` at `idp` with `settings`, its metrics, and the URI of the
/// IdP's JWKS.
fn jwks_caller(
    idp: &MockIdp,
    clock: &ManualClock,
    settings: &[&str],
) -> (Metrics, IdpClient, http::Uri) {
    let cfg = issuer_config(idp, settings);
    let metrics = Metrics::try_new().unwrap();
    let c = client(&cfg, clock, &metrics);
    (metrics, c, idp.url(JWKS).parse().unwrap())
}

fn keys(
    cfg: &Arc<IssuerConfig>,
    clock: &ManualClock,
    metrics: &Metrics,
    state_dir: Option<&Path>,
) -> IssuerKeys {
    IssuerKeys::new(
        cfg.clone(),
        client(cfg, clock, metrics),
        Arc::new(clock.clone()),
        metrics.clone(),
        state_dir,
    )
}

fn rendered(m: &Metrics) -> String {
    String::from_utf8(m.render()).unwrap()
}

#[tokio::test]
async fn retry_after_beyond_max_retry_after_ends_the_call_without_waiting() {
    let (clock, idp) = idp_on_clock().await;
    idp.fail(Failure::RetryAfterSecs(120));
    let (_metrics, c, uri) = jwks_caller(&idp, &clock, &["retries: 3", "max_retry_after: 60s"]);

    let err = c.get(&uri, "jwks").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err}");
    assert_eq!(clock.slept(), Duration::ZERO, "no waiting in the call");
    assert_eq!(idp.hits(JWKS), 1, "no retry");

    // The next call, inside the wait (capped at max_retry_after), sends nothing.
    clock.advance(Duration::from_secs(30));
    let err = c.get(&uri, "jwks").await.unwrap_err();
    let left = err.retry_after().unwrap();
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(29),
        "{left:?}"
    );
    assert_eq!(idp.hits(JWKS), 1);

    clock.advance(Duration::from_secs(31));
    idp.recover();
    c.get(&uri, "jwks").await.unwrap();
    assert_eq!(idp.hits(JWKS), 2);
}

#[tokio::test]
async fn retry_after_within_max_is_waited_before_each_retry() {
    let (clock, idp) = idp_on_clock().await;
    idp.fail(Failure::RetryAfterSecs(5));
    let (metrics, c, uri) = jwks_caller(
        &idp,
        &clock,
        &[
            "retries: 2",
            "backoff_min: 10ms",
            "backoff_max: 20ms",
            "breaker_threshold: 10",
        ],
    );

    let err = c.get(&uri, "jwks").await.unwrap_err();
    assert!(matches!(err, IdpError::RetryAfter { .. }), "{err}");
    let log = idp.hit_log();
    assert_eq!(log.len(), 3, "first attempt + 2 retries");
    for w in log.windows(2) {
        assert!(w[1].at.duration_since(w[0].at) >= Duration::from_secs(5));
    }
    assert_eq!(clock.slept(), Duration::from_secs(10));
    let m = rendered(&metrics);
    assert_metric(
        &m,
        "portcullis_idp_retries_total{endpoint=\"jwks\",issuer=\"corp\"}",
        2.0,
    );
    assert_metric(
        &m,
        "portcullis_idp_request_duration_seconds_count{endpoint=\"jwks\",issuer=\"corp\",outcome=\"4xx\"}",
        3.0,
    );
}

#[tokio::test]
async fn failures_are_retried_a_bounded_number_of_times() {
    let (clock, idp) = idp_on_clock().await;
    let (_metrics, c, uri) = jwks_caller(
        &idp,
        &clock,
        &[
            "retries: 2",
            "timeout: 300ms",
            "backoff_min: 100ms",
            "backoff_max: 1s",
            "breaker_threshold: 100",
        ],
    );

    type Expect = fn(&IdpError) -> bool;
    let cases: [(Failure, Expect); 3] = [
        (
            Failure::Status(500),
            |e| matches!(e, IdpError::Status { status, .. } if status.as_u16() == 500),
        ),
        (Failure::Reset, |e| matches!(e, IdpError::Network(_))),
        (Failure::Hang, |e| matches!(e, IdpError::Timeout(_))),
    ];
    for (failure, expected) in cases {
        idp.fail(failure.clone());
        let hits = idp.total_hits();
        let slept = clock.slept();
        let started = tokio::time::Instant::now();
        let err = c.get(&uri, "jwks").await.unwrap_err();
        assert!(expected(&err), "{failure:?}: {err:?}");
        assert!(err.is_retryable());
        assert_eq!(idp.total_hits() - hits, 3, "{failure:?}: 1 + 2 retries");
        // Full jitter below the ceilings 100 ms and 200 ms.
        assert!(
            clock.slept() - slept <= Duration::from_millis(300),
            "{failure:?}"
        );
        // Each attempt is bounded by the timeout (real time, generous bound).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{failure:?}: {:?}",
            started.elapsed()
        );
    }
    // A 4xx is not retried.
    idp.fail(Failure::Status(404));
    let hits = idp.total_hits();
    let err = c.get(&uri, "jwks").await.unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(idp.total_hits() - hits, 1);
}

#[tokio::test]
async fn unusable_documents_fail_the_refresh_and_keep_the_keys() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::ES256, "k1");
    let cfg = issuer_config(&idp, &["retries: 0", "breaker_threshold: 100"]);
    let metrics = Metrics::try_new().unwrap();
    let k = keys(&cfg, &clock, &metrics, None);
    assert!(!k.usable());
    k.refresh().await.unwrap();
    assert!(k.usable());
    assert_eq!(k.current().unwrap().all.len(), 1);

    idp.fail(Failure::MalformedJson);
    let err = k.refresh().await.unwrap_err();
    // The cause is kept as a source (serde's error), not flattened into text.
    assert!(
        matches!(&err, RefreshError::Jwks(JwksError::Malformed(e)) if e.is_syntax() || e.is_eof() || e.is_data()),
        "{err}"
    );
    let chain = portcullis::upstream::error_chain(&err);
    assert!(chain.starts_with("malformed JWKS: "), "{chain}");
    idp.fail(Failure::EmptyKeys);
    assert!(matches!(
        k.refresh().await,
        Err(RefreshError::Jwks(JwksError::Empty))
    ));
    idp.fail(Failure::Status(503));
    assert!(matches!(k.refresh().await, Err(RefreshError::Idp { .. })));
    assert!(k.usable());
    assert!(k.current().unwrap().by_kid.contains_key("k1"));
    let m = rendered(&metrics);
    assert_metric(
        &m,
        "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"failure\"}",
        3.0,
    );
    assert_metric(&m, "portcullis_jwks_keys{issuer=\"corp\"}", 1.0);

    // Keys of unsupported kinds are skipped; a set with only those is unusable.
    idp.recover();
    idp.remove_key("k1");
    idp.add_key({
        let mut k = support::idp::SigningKey::generate(Algorithm::ES256, "enc");
        k.jwk["use"] = serde_json::json!("enc");
        k
    });
    assert!(matches!(k.refresh().await, Err(RefreshError::Jwks(_))));
    assert!(k.current().unwrap().by_kid.contains_key("k1"));
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::RS256, "k1");
    // Configured with a trailing slash; the IdP says it is the URL without one.
    let yaml = Scenario::new()
        .upstream_at("app", &["http://127.0.0.1:9".into()], &[])
        .issuer_at("corp", &format!("{}/", idp.issuer()), &[])
        .routes_yaml("  - { path: /, upstream: app, auth: bearer }")
        .to_yaml();
    let cfg = portcullis::Config::from_yaml(&yaml, []).unwrap().issuers[0].clone();
    let metrics = Metrics::try_new().unwrap();
    let k = keys(&cfg, &clock, &metrics, None);
    let err = k.refresh().await.unwrap_err();
    match &err {
        RefreshError::Discovery(DiscoveryError::IssuerMismatch { found, expected }) => {
            assert_eq!(found, &idp.issuer());
            assert_eq!(expected, &format!("{}/", idp.issuer()));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        portcullis::upstream::error_chain(&err),
        format!(
            "discovery document unusable: issuer is \"{}\", expected \"{}/\"",
            idp.issuer(),
            idp.issuer()
        )
    );
    assert_eq!(
        idp.hits(JWKS),
        0,
        "the JWKS of an unverified discovery document is not used"
    );
    assert!(!k.usable());
}

#[tokio::test]
async fn cache_control_max_age_sets_the_next_refresh_within_bounds() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::RS256, "k1");
    let cfg = issuer_config(
        &idp,
        &[
            "refresh_interval: 20m",
            "refresh_min: 5m",
            "refresh_max: 1h",
        ],
    );
    let metrics = Metrics::try_new().unwrap();
    let k = keys(&cfg, &clock, &metrics, None);
    let cases = [
        (None, Duration::from_secs(20 * 60)),
        (Some(600), Duration::from_secs(600)),
        (Some(10), Duration::from_secs(300)),
        (Some(7 * 86_400), Duration::from_secs(3600)),
    ];
    for (max_age, expected) in cases {
        idp.set_max_age(max_age);
        k.refresh().await.unwrap();
        for _ in 0..20 {
            let next = k.next_interval();
            assert!(
                next >= expected.mul_f64(0.9) && next <= expected.mul_f64(1.1),
                "max-age {max_age:?}: next refresh in {next:?}, expected {expected:?} ±10%"
            );
        }
    }
}

#[tokio::test]
async fn persisted_state_is_loaded_only_when_sound() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::EdDSA, "k1");
    let dir = temp_dir("state");
    let cfg = issuer_config(&idp, &["max_stale: 1h"]);
    let file = dir.join("issuers").join("corp.json");

    // No file: nothing loaded, nothing counted.
    let metrics = Metrics::try_new().unwrap();
    assert!(
        !keys(&cfg, &clock, &metrics, Some(&dir))
            .load_persisted()
            .await
    );

    // A refresh writes the state; a new instance loads it.
    let writer = keys(&cfg, &clock, &metrics, Some(&dir));
    writer.refresh().await.unwrap();
    assert!(file.exists());
    let good = std::fs::read(&file).unwrap();
    let metrics = Metrics::try_new().unwrap();
    let reader = keys(&cfg, &clock, &metrics, Some(&dir));
    assert!(reader.load_persisted().await);
    assert!(reader.usable());
    assert!(reader.current().unwrap().from_disk);
    assert_eq!(
        metric_value(
            &rendered(&metrics),
            "portcullis_state_loads_total{issuer=\"corp\",result=\"success\"}"
        ),
        1.0
    );

    // Corrupt, or another issuer's: ignored and counted as failures.
    let metrics = Metrics::try_new().unwrap();
    std::fs::write(&file, b"{ not json").unwrap();
    assert!(
        !keys(&cfg, &clock, &metrics, Some(&dir))
            .load_persisted()
            .await
    );
    let mut other: serde_json::Value = serde_json::from_slice(&good).unwrap();
    other["issuer"] = serde_json::json!("https://someone-else.example.com");
    std::fs::write(&file, serde_json::to_vec(&other).unwrap()).unwrap();
    let k = keys(&cfg, &clock, &metrics, Some(&dir));
    assert!(!k.load_persisted().await);
    assert!(k.current().is_none());
    assert_eq!(
        metric_value(
            &rendered(&metrics),
            "portcullis_state_loads_total{issuer=\"corp\",result=\"failure\"}"
        ),
        2.0
    );

    // Sound but older than max_stale: loaded, not usable.
    std::fs::write(&file, &good).unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let metrics = Metrics::try_new().unwrap();
    let k = keys(&cfg, &clock, &metrics, Some(&dir));
    assert!(k.load_persisted().await);
    assert!(!k.usable());
    assert!(k.age().unwrap() >= Duration::from_secs(2 * 3600));
}

#[tokio::test]
async fn a_probe_dropped_mid_call_does_not_leave_the_breaker_half_open() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::RS256, "k1");
    let (metrics, c, uri) = jwks_caller(
        &idp,
        &clock,
        &[
            "retries: 0",
            "timeout: 10s",
            "breaker_threshold: 1",
            "breaker_open_for: 30s",
        ],
    );
    let gauge = "portcullis_idp_breaker_state{issuer=\"corp\"}";

    idp.fail(Failure::Status(500));
    assert!(c.get(&uri, "jwks").await.is_err());
    assert_eq!(c.breaker_state(), BreakerState::Open);

    // After the open time the next call is the probe; the IdP hangs and the caller goes away
    // (client gone, HTTP/2 reset): its future is dropped mid-call.
    idp.fail(Failure::Hang);
    clock.advance(Duration::from_secs(31));
    let probe = tokio::time::timeout(Duration::from_millis(300), c.get(&uri, "jwks")).await;
    assert!(probe.is_err(), "the probe was cut off");
    assert_eq!(idp.hits(JWKS), 2, "the probe reached the IdP");
    assert_eq!(
        c.breaker_state(),
        BreakerState::Open,
        "a dropped probe counts as failed"
    );
    assert_eq!(metric_value(&rendered(&metrics), gauge), 1.0);
    assert!(matches!(
        c.get(&uri, "jwks").await,
        Err(IdpError::BreakerOpen)
    ));

    // After another open time, a new probe goes out and closes it.
    idp.recover();
    clock.advance(Duration::from_secs(31));
    c.get(&uri, "jwks").await.unwrap();
    assert_eq!(c.breaker_state(), BreakerState::Closed);
    assert_eq!(metric_value(&rendered(&metrics), gauge), 0.0);
}

#[tokio::test]
async fn persisted_state_from_a_disallowed_jwks_uri_is_ignored() {
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::ES256, "k1");
    let dir = temp_dir("state-uri");
    let file = dir.join("issuers").join("corp.json");
    let cfg = issuer_config(&idp, &[]);
    let metrics = Metrics::try_new().unwrap();
    keys(&cfg, &clock, &metrics, Some(&dir))
        .refresh()
        .await
        .unwrap();
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let failures = "portcullis_state_loads_total{issuer=\"corp\",result=\"failure\"}";

    // A jwks_uri the config would refuse (plain http off loopback, not http at all, no host).
    let bad = [
        "http://idp.example.com/jwks",
        "ftp://127.0.0.1/jwks",
        "/jwks",
    ];
    let metrics = Metrics::try_new().unwrap();
    for (i, uri) in bad.iter().enumerate() {
        let mut doc = good.clone();
        doc["jwks_uri"] = serde_json::json!(uri);
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
        let k = keys(&cfg, &clock, &metrics, Some(&dir));
        assert!(!k.load_persisted().await, "{uri}");
        assert!(k.current().is_none(), "{uri}");
        assert_eq!(metric_value(&rendered(&metrics), failures), (i + 1) as f64);
    }

    // With a fixed jwks_uri, a document fetched from anywhere else is not used either.
    let fixed = issuer_config(&idp, &[&format!("jwks_uri: \"{}\"", idp.url(JWKS))]);
    let mut doc = good.clone();
    doc["jwks_uri"] = serde_json::json!("https://other.example.com/keys");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    assert!(
        !keys(&fixed, &clock, &metrics, Some(&dir))
            .load_persisted()
            .await
    );

    // The sound document loads, for both.
    std::fs::write(&file, serde_json::to_vec(&good).unwrap()).unwrap();
    assert!(
        keys(&cfg, &clock, &metrics, Some(&dir))
            .load_persisted()
            .await
    );
    assert!(
        keys(&fixed, &clock, &metrics, Some(&dir))
            .load_persisted()
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persisted_state_is_private_and_whole_after_concurrent_refreshes() {
    use std::os::unix::fs::PermissionsExt;
    let (clock, idp) = idp_on_clock().await;
    idp.new_key(Algorithm::RS256, "k1");
    idp.new_key(Algorithm::ES256, "k2");
    // A state_dir that does not exist yet: Portcullis creates it.
    let dir = temp_dir("state-private").join("state");
    let cfg = issuer_config(&idp, &["breaker_threshold: 100"]);
    let metrics = Metrics::try_new().unwrap();
    let k = Arc::new(keys(&cfg, &clock, &metrics, Some(&dir)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let k = k.clone();
        tasks.spawn(async move { k.refresh().await.map_err(|e| e.to_string()) });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let file = dir.join("issuers").join("corp.json");
    assert_eq!(mode(&dir), 0o700, "state_dir");
    assert_eq!(mode(&dir.join("issuers")), 0o700);
    assert_eq!(mode(&file), 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.join("issuers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("corp.json")],
        "no temp files left"
    );

    let reader = keys(&cfg, &clock, &Metrics::try_new().unwrap(), Some(&dir));
    assert!(reader.load_persisted().await);
    assert_eq!(reader.current().unwrap().all.len(), 2);
}
