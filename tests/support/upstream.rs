//! A mock upstream on 127.0.0.1:0. What it does depends on the path:
//!
//! - `/slow?ms=N`: waits N ms, then answers `slow done`
//! - `/source?bytes=N`: streams N bytes (64 KiB chunks) without holding them
//! - `/sink`: reads the request body, answers `{"bytes": N}`
//! - `/stream-echo`: streams the request body back as it arrives
//! - `/ws`: WebSocket echo (text and binary)
//! - `/status?code=N`: answers with that status
//! - anything else: JSON `{id, method, path, query, version, headers: [[name, value]...], body}`
//!
//! Every response has `x-upstream-id: <id>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running mock upstream.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub id: String,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a mock upstream named `id`.
pub async fn start(id: &str) -> MockUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (id2, hits2) = (id.to_string(), hits.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (id, hits) = (id2.clone(), hits2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    handle(req, id.clone())
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    MockUpstream {
        addr,
        id: id.to_string(),
        hits,
        task,
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(req: Request<Incoming>, id: String) -> Result<Response<Body>, Infallible> {
    let mut resp = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            Response::new(full("slow done"))
        }
        "/source" => {
            let total = query_num(&req, "bytes");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                            chunk.slice(..n as usize),
                        )),
                        left - n,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert("content-length", total.into());
            r
        }
        "/sink" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(serde_json::json!({ "bytes": n }).to_string()))
        }
        "/stream-echo" => Response::new(req.into_body().map_err(Into::into).boxed()),
        "/ws" => return Ok(websocket(req, &id)),
        "/status" => {
            let mut r = Response::new(full("status"));
            *r.status_mut() =
                StatusCode::from_u16(query_num(&req, "code") as u16).unwrap_or(StatusCode::OK);
            r
        }
        _ => {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "id": id,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            with_headers(
                Response::new(full(json.to_string())),
                &[
                    ("content-type", "application/json"),
                    // Hop-by-hop headers the proxy must drop on the way back.
                    ("connection", "x-upstream-hop"),
                    ("x-upstream-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("x-response-custom", "kept"),
                ],
            )
        }
    };
    resp.headers_mut()
        .insert("x-upstream-id", id.parse().unwrap());
    Ok(resp)
}

fn websocket(mut req: Request<Incoming>, id: &str) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() || msg.is_binary() {
                if tx.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut r = with_headers(
        Response::new(full(Bytes::new())),
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", accept.as_str()),
            ("x-upstream-id", id),
        ],
    );
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r
}

/// `r` with the `headers` (name, value) added.
fn with_headers(mut r: Response<Body>, headers: &[(&'static str, &str)]) -> Response<Body> {
    for (name, value) in headers {
        r.headers_mut().insert(*name, value.parse().unwrap());
    }
    r
}

/// Every value the echoing upstream saw for header `name` (lowercase), in order.
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo has a headers array")
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect()
}
