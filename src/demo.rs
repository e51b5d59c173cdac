//! `portcullis demo`: everything on loopback for a first look. An echo upstream (it answers
//! with the method, path and headers it received, as JSON) and Portcullis in front of it,
//! configured from the embedded `config/demo.yaml`.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::upstream::{ProxyBody, body};

/// The demo's configuration; the echo upstream's address is set through an override.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Binds the echo upstream on `addr` and serves it in the background.
pub async fn spawn_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });
    Ok(local)
}

async fn echo(req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_len,
    });
    let mut resp = Response::new(body::full(format!("{json:#}\n")));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
