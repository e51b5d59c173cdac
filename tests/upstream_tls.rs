//! HTTPS upstreams: verified against `ca_file` when set, and against the system roots
//! otherwise (so a self-signed upstream certificate is refused with 502).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use support::scenario::Scenario;
use support::{Proxy, assert_metric, certs, client, temp_dir};
use tokio::net::TcpListener;

/// A TLS upstream answering "secure hello" with the given certificate.
async fn tls_upstream(cert: &certs::TestCert) -> SocketAddr {
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from(cert.der.clone())];
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"secure hello",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TLS upstream with a fresh certificate for `upstream.test` (files under a temporary
/// directory tagged `tag`), and the proxy routing `/` to it as `https://localhost:PORT`,
/// verifying it against that certificate (`ca_file`) when `trust_it`, else against the system
/// roots, which do not include it.
async fn proxy_to_tls_upstream(tag: &str, trust_it: bool) -> Proxy {
    let dir = temp_dir(tag);
    let cert = certs::generate(&dir, "upstream", "upstream.test");
    let addr = tls_upstream(&cert).await;
    let url = format!("https://localhost:{}", addr.port());
    let ca_file = format!("ca_file: \"{}\"", cert.cert.display());
    let extra: &[&str] = if trust_it { &[&ca_file] } else { &[] };
    Scenario::new()
        .upstream_at("app", &[url], extra)
        .routes_yaml("  - { path: /, upstream: app }")
        .start()
        .await
}

#[tokio::test]
async fn https_upstream_verified_with_configured_ca() {
    let proxy = proxy_to_tls_upstream("upstream-tls", true).await;
    let r = client::get(&proxy.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"secure hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_untrusted_certificate_is_refused() {
    // No ca_file: system roots, which do not include the test certificate.
    let proxy = proxy_to_tls_upstream("upstream-tls-untrusted", false).await;
    let r = client::get(&proxy.url("/")).await;
    assert_eq!(r.status, 502);
    assert_metric(
        &proxy.metrics().await,
        "portcullis_upstream_errors_total{kind=\"connect\",upstream=\"app\"}",
        1.0,
    );
    proxy.shutdown().await;
}
