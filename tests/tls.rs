//! TLS termination on the `public` listener: HTTP/1.1 and h2 by ALPN, untrusted clients
//! refused, certificate reload (on notify, on file change, refused when broken), and the
//! handshake timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::certs::{self, TestCert};
use support::client::{self, https_get, tls_connect};
use support::scenario::Scenario;
use support::upstream::{self, MockUpstream};
use support::{Proxy, metric_value, temp_dir, wait_until};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// A proxy with a TLS listener `public` using `cert`, and `extra` top-level YAML.
async fn tls_proxy(
    up: &MockUpstream,
    cert: &TestCert,
    reload_interval: &str,
    extra: &str,
) -> Proxy {
    let reload = format!("reload_interval: {reload_interval}");
    Scenario::new()
        .without_plain()
        .tls_listener("public", "127.0.0.1:0", &cert.cert, &cert.key, &[&reload])
        .upstream_exact("app", &[up.url()], &[])
        .routes_yaml("  - { path: /, upstream: app }")
        .yaml(extra)
        .start()
        .await
}

/// A client config trusting every certificate in `roots`, offering `alpn`.
fn trusting(roots: &[&TestCert], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let ders: Vec<&[u8]> = roots.iter().map(|c| c.der.as_slice()).collect();
    support::client::tls_config_trusting(&ders, alpn)
}

/// The DER of the certificate a new handshake presents.
async fn presented(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let stream = tokio::time::timeout(DEADLINE, tls_connect(addr, cfg))
        .await
        .expect("handshake hung")
        .expect("handshake failed");
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn tls_failures(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!(
            "portcullis_tls_handshake_failures_total{{listener=\"public\",reason=\"{reason}\"}}"
        ),
    )
}

fn cert_reloads(metrics: &str, result: &str) -> f64 {
    metric_value(
        metrics,
        &format!("portcullis_reloads_total{{kind=\"certificate\",result=\"{result}\"}}"),
    )
}

/// Replaces the certificate and key files `current` points at with a new certificate, whose
/// files get a modification time different from the old ones (file timestamps are coarse).
async fn replace(current: &TestCert, cn: &str) -> TestCert {
    let dir = current.cert.parent().unwrap();
    let old = std::fs::metadata(&current.cert)
        .unwrap()
        .modified()
        .unwrap();
    wait_until(DEADLINE, || {
        let probe = dir.join("probe");
        std::fs::write(&probe, b"x").unwrap();
        let now = std::fs::metadata(&probe).unwrap().modified().unwrap();
        std::future::ready(now > old)
    })
    .await;
    let fresh = certs::generate(dir, "next", cn);
    std::fs::write(&current.key, std::fs::read(&fresh.key).unwrap()).unwrap();
    std::fs::write(&current.cert, std::fs::read(&fresh.cert).unwrap()).unwrap();
    TestCert {
        cert: current.cert.clone(),
        key: current.key.clone(),
        der: fresh.der,
    }
}

/// The echo upstream, a new certificate (under a temporary directory tagged `tag`),
/// [`tls_proxy`] with it, and the address of its TLS listener.
async fn tls_env(
    tag: &str,
    reload_interval: &str,
    extra: &str,
) -> (MockUpstream, TestCert, Proxy, SocketAddr) {
    let up = upstream::start("u").await;
    let cert = new_cert(&temp_dir(tag));
    let proxy = tls_proxy(&up, &cert, reload_interval, extra).await;
    let addr = proxy.tls_addr.unwrap();
    (up, cert, proxy, addr)
}

/// Waits until a new handshake with `cfg` is presented the certificate `der`.
async fn presents_soon(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, der: &[u8]) {
    wait_until(DEADLINE, || async {
        presented(addr, cfg.clone()).await == der
    })
    .await;
}

fn new_cert(dir: &Path) -> TestCert {
    certs::generate(dir, "tls", "first.portcullis.test")
}

#[tokio::test]
async fn https_over_http1_and_h2() {
    let (up, cert, proxy, addr) = tls_env("tls-alpn", "1h", "").await;

    // HTTP/1.1
    let stream = tls_connect(addr, client::tls_config(&cert.der, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = https_get(stream, "/one").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/one");
    let headers = j["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["x-forwarded-proto", "https"])),
        "{j}"
    );

    // h2, chosen by ALPN when the client prefers it.
    let stream = tls_connect(addr, client::tls_config(&cert.der, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/two")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["path"], "/two");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_that_does_not_trust_the_certificate_fails() {
    let up = upstream::start("u").await;
    let dir = temp_dir("tls-untrusted");
    let cert = new_cert(&dir);
    let other = certs::generate(&dir, "other", "other.portcullis.test");
    let proxy = tls_proxy(&up, &cert, "1h", "").await;
    let addr = proxy.tls_addr.unwrap();
    let err = tls_connect(addr, client::tls_config(&other.der, &[b"http/1.1"]))
        .await
        .expect_err("a client with other roots completed the handshake");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    wait_until(DEADLINE, || async {
        tls_failures(&proxy.metrics().await, "error") >= 1.0
    })
    .await;
    // Plain HTTP on the TLS port is not served either.
    let plain = client::try_get(&format!("http://{addr}/x")).await;
    assert!(plain.is_none(), "{plain:?}");
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn certificate_reloads_on_notify() {
    // Files are not polled during the test: only the notification can reload.
    let (_up, cert, proxy, addr) = tls_env("tls-notify", "1h", "").await;
    let before = presented(addr, trusting(&[&cert], &[])).await;
    assert_eq!(before, cert.der);

    let next = replace(&cert, "second.portcullis.test").await;
    assert_ne!(next.der, cert.der);
    let both = trusting(&[&cert, &next], &[]);
    // Nothing changes until the reload is asked for.
    assert_eq!(presented(addr, both.clone()).await, cert.der);
    proxy.reload.notify_one();
    presents_soon(addr, &both, &next.der).await;
    let m = proxy.metrics().await;
    assert_eq!(cert_reloads(&m, "success"), 1.0, "{m}");
    assert_eq!(cert_reloads(&m, "failure"), 0.0, "{m}");
    // And traffic still flows with the new certificate.
    let stream = tls_connect(addr, trusting(&[&next], &[])).await.unwrap();
    assert_eq!(https_get(stream, "/after").await.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn certificate_reloads_when_the_files_change() {
    let (_up, cert, proxy, addr) = tls_env("tls-poll", "200ms", "").await;
    assert_eq!(presented(addr, trusting(&[&cert], &[])).await, cert.der);

    let next = replace(&cert, "second.portcullis.test").await;
    let both = trusting(&[&cert, &next], &[]);
    presents_soon(addr, &both, &next.der).await;
    assert!(cert_reloads(&proxy.metrics().await, "success") >= 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn broken_replacement_keeps_the_old_certificate() {
    let (_up, cert, proxy, addr) = tls_env("tls-broken", "1h", "").await;
    let cfg = trusting(&[&cert], &[b"http/1.1"]);
    assert_eq!(presented(addr, cfg.clone()).await, cert.der);

    std::fs::write(
        &cert.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&cert.key, "garbage\n").unwrap();
    proxy.reload.notify_one();
    wait_until(DEADLINE, || async {
        cert_reloads(&proxy.metrics().await, "failure") >= 1.0
    })
    .await;
    assert_eq!(cert_reloads(&proxy.metrics().await, "success"), 0.0);

    // The old certificate is still served, and requests still work.
    assert_eq!(presented(addr, cfg.clone()).await, cert.der);
    let stream = tls_connect(addr, cfg).await.unwrap();
    assert_eq!(https_get(stream, "/still").await.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn silent_client_is_cut_off_at_the_handshake_timeout() {
    let (_up, _cert, proxy, addr) = tls_env(
        "tls-timeout",
        "1h",
        "server: { tls_handshake_timeout: 300ms }",
    )
    .await;
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("connection still open long after the handshake timeout")
        .unwrap_or(0);
    let elapsed = start.elapsed();
    assert_eq!(n, 0);
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}, before the handshake timeout"
    );
    wait_until(DEADLINE, || async {
        tls_failures(&proxy.metrics().await, "timeout") == 1.0
    })
    .await;
    assert_eq!(tls_failures(&proxy.metrics().await, "error"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_quiet_https_connection_parks_and_serves_its_next_request() {
    let (up, cert, proxy, addr) = tls_env("tls-park", "1h", "").await;
    let stream = tls_connect(addr, client::tls_config(&cert.der, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(path)
            .header("host", "localhost")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for (i, path) in ["/one", "/two"].into_iter().enumerate() {
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(get(path)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["path"], path);
        if i == 0 {
            // Quiet: hyper's connection is dropped; the TLS stream waits in the task.
            proxy
                .wait_metric(
                    DEADLINE,
                    "the quiet TLS connection parked",
                    "portcullis_connections_parked{listener=\"public\"}",
                    1.0,
                )
                .await;
        }
    }
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}
