//! `portcullis_tls_certificate_not_after_seconds{cert}`: the leaf certificate's notAfter as
//! Unix time, from start-up, and again after a certificate reload (what the chart's
//! certificate-expiry alert reads). UTCTime (before 2050) and GeneralizedTime (from 2050)
//! encodings both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::scenario::Scenario;
use support::{assert_metric, metric_value, temp_dir, upstream, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// Writes a self-signed certificate for localhost valid until `y-m-d` to `dir/tls.{crt,key}`.
fn write_cert(dir: &Path, y: i32, m: u8, d: u8) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    // Key first, then the certificate: the watcher must never pair a new cert with an old key.
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_exported_and_follows_reloads() {
    let up = upstream::start("a").await;
    let dir = temp_dir("tls-expiry");
    write_cert(&dir, 2031, 5, 17);
    let cert = dir.join("tls.crt");
    let proxy = Scenario::new()
        .without_plain()
        .tls_listener(
            "public",
            "127.0.0.1:0",
            &cert,
            &dir.join("tls.key"),
            &["reload_interval: 1h"],
        )
        .upstream_exact("app", &[up.url()], &[])
        .routes_yaml("  - { path: /, upstream: app }")
        .start()
        .await;
    let series = format!(
        "portcullis_tls_certificate_not_after_seconds{{cert=\"{}\"}}",
        cert.display()
    );

    // 2031-05-17T00:00:00Z (UTCTime).
    wait_until(DEADLINE, || async {
        support::has_series(&proxy.metrics().await, &series)
    })
    .await;
    assert_eq!(
        metric_value(&proxy.metrics().await, &series),
        1_936_742_400.0
    );

    // A new certificate (2051-01-01T00:00:00Z, GeneralizedTime) after a reload.
    write_cert(&dir, 2051, 1, 1);
    proxy.reload.notify_one();
    wait_until(DEADLINE, || async {
        metric_value(&proxy.metrics().await, &series) == 2_556_144_000.0
    })
    .await;
    let m = proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_reloads_total{kind=\"certificate\",result=\"success\"}",
        1.0,
    );
    // One series per certificate file, nothing else.
    let n = m
        .lines()
        .filter(|l| l.starts_with("portcullis_tls_certificate_not_after_seconds"))
        .count();
    assert_eq!(n, 1, "{m}");
    proxy.shutdown().await;
}
