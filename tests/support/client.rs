//! Small clients: HTTP/1.1 over plain TCP, HTTP/2 prior knowledge, HTTPS with a given root.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `content-type` header (panics when it is missing or not text).
    pub fn content_type(&self) -> &str {
        self.headers["content-type"].to_str().unwrap()
    }
}

/// A pooled HTTP/1.1 client.
pub fn http1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` with HTTP/1.1 and collects the response (10 s deadline).
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    try_send(req).await.expect("request failed")
}

/// Like [`send`], None on error.
pub async fn try_send(req: Request<Full<Bytes>>) -> Option<Resp> {
    let fut = async {
        let resp = http1().request(req).await.ok()?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
}

/// GET `url`.
pub async fn get(url: &str) -> Resp {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

/// GET `url`, None on error.
pub async fn try_get(url: &str) -> Option<Resp> {
    try_send(Request::get(url).body(Full::default()).unwrap()).await
}

/// Polls GET `url` until it answers `status` (panics once `deadline` passes).
pub async fn wait_status(deadline: std::time::Duration, url: &str, status: u16) {
    super::wait_for(
        deadline,
        &format!("GET {url} answering {status}"),
        || async {
            try_get(url)
                .await
                .is_some_and(|r| r.status == status)
                .then_some(())
        },
    )
    .await
}

/// A new HTTP/2 (prior knowledge) connection to `addr`, its connection task spawned.
pub async fn h2_sender<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `req` over HTTP/2 (prior knowledge) to `addr`.
pub async fn send_h2(
    addr: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> (http::Version, Resp) {
    let mut sender = h2_sender(addr).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let version = resp.version();
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        version,
        Resp {
            status,
            headers: parts.headers,
            body,
        },
    )
}

/// A rustls client config trusting only `root_der`, offering `alpn`.
pub fn tls_config(root_der: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    tls_config_trusting(&[root_der], alpn)
}

/// A rustls client config trusting every certificate in `roots_der`, offering `alpn`.
pub fn tls_config_trusting(roots_der: &[&[u8]], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in roots_der {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection to `addr` as `localhost`; returns the stream and the peer's
/// certificate common-name-bearing DER.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 GET over an established TLS stream.
pub async fn https_get(stream: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> Resp {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    Resp {
        status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// True when `status` is `code`.
pub fn is(status: u16, code: StatusCode) -> bool {
    status == code.as_u16()
}

/// GET `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::default()).unwrap()).await
}

/// GET `url` with `Authorization: Bearer <token>`.
pub async fn get_bearer(url: &str, token: &str) -> Resp {
    get_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Values of header `name` the echo upstream received (lowercase name).
pub fn echoed(resp: &Resp, name: &str) -> Vec<String> {
    super::upstream::seen(&resp.json(), name)
}

/// The `WWW-Authenticate` header ("" when absent).
pub fn challenge(resp: &Resp) -> String {
    resp.headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}
