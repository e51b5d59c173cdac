//! The mock IdP: the HTTP server, its failure modes and request log.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use portcullis::clock::{Clock, ManualClock};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keys::*;
use super::oidc::*;
use super::tokens::*;
use super::{DISCOVERY, JWKS};

/// How the IdP misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status (e.g. 500) and a small body.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RetryAfterSecs(u64),
    /// 429 with `Retry-After: <HTTP-date>` this far after the IdP's clock (rounded up to a second).
    RetryAfterDate(Duration),
    /// Read the request and never answer (until the client gives up).
    Hang,
    /// 503 with `Retry-After: <secs>`.
    UnavailableRetryAfterSecs(u64),
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// `/jwks` answers `{"keys": []}` (discovery is served normally).
    EmptyKeys,
    /// Read the request, then reset the connection (RST, no response).
    Reset,
}

/// One request the IdP received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Its path.
    pub path: String,
    /// When, on the IdP's clock (the test's ManualClock when given, else real time).
    pub at: tokio::time::Instant,
    /// When, on the IdP's wall clock.
    pub wall: SystemTime,
    /// The failure it was answered with, if any.
    pub failure: Option<Failure>,
}

pub(super) struct Failing {
    pub(super) what: Failure,
    /// Requests left to fail; None: until `recover`.
    pub(super) remaining: Option<usize>,
}

pub(super) struct State {
    pub(super) base: String,
    pub(super) keys: Mutex<Vec<SigningKey>>,
    pub(super) failing: Mutex<Option<Failing>>,
    pub(super) max_age: Mutex<Option<u64>>,
    pub(super) hits: Mutex<Vec<Hit>>,
    pub(super) clock: Option<ManualClock>,
    pub(super) oidc: Mutex<Oidc>,
}

/// A running mock IdP.
pub struct MockIdp {
    /// Where it listens.
    pub addr: SocketAddr,
    pub(super) state: Arc<State>,
    pub(super) task: JoinHandle<()>,
    pub(super) closed: watch::Sender<bool>,
}

impl MockIdp {
    /// Starts an IdP with no keys, stamping requests with real time.
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// Starts an IdP publishing one new key `kid` for `alg`; returns it with that key.
    pub async fn start_with_key(alg: Algorithm, kid: &str) -> (Self, SigningKey) {
        let idp = Self::start().await;
        let key = idp.new_key(alg, kid);
        (idp, key)
    }

    /// Starts an IdP that stamps requests (and computes `Retry-After` dates) with `clock`.
    pub async fn start_with_clock(clock: ManualClock) -> Self {
        Self::spawn(Some(clock)).await
    }

    pub(super) async fn spawn(clock: Option<ManualClock>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            base: format!("http://{addr}"),
            keys: Mutex::new(Vec::new()),
            failing: Mutex::new(None),
            max_age: Mutex::new(None),
            hits: Mutex::new(Vec::new()),
            clock,
            oidc: Mutex::new(Oidc::default()),
        });
        let (closed, closed_rx) = watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(connection(stream, st.clone(), closed_rx.clone()));
            }
        });
        Self {
            addr,
            state,
            task,
            closed,
        }
    }

    /// The issuer (base URL, no trailing slash).
    pub fn issuer(&self) -> String {
        self.state.base.clone()
    }

    /// `<base><path>`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.state.base)
    }

    /// Generates a key, publishes it and returns it.
    pub fn new_key(&self, alg: Algorithm, kid: &str) -> SigningKey {
        let k = SigningKey::generate(alg, kid);
        self.add_key(k.clone());
        k
    }

    /// Publishes `key` (after the keys already published).
    pub fn add_key(&self, key: SigningKey) {
        self.state.keys.lock().unwrap().push(key);
    }

    /// Stops publishing the key `kid`.
    pub fn remove_key(&self, kid: &str) {
        self.state.keys.lock().unwrap().retain(|k| k.kid != kid);
    }

    /// The kids published now.
    pub fn kids(&self) -> Vec<String> {
        self.state
            .keys
            .lock()
            .unwrap()
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// Sends `Cache-Control: max-age=<secs>` on `/jwks` (None: no Cache-Control).
    pub fn set_max_age(&self, secs: Option<u64>) {
        *self.state.max_age.lock().unwrap() = secs;
    }

    /// Fails every request the failure applies to, until [`MockIdp::recover`].
    pub fn fail(&self, what: Failure) {
        *self.state.failing.lock().unwrap() = Some(Failing {
            what,
            remaining: None,
        });
    }

    /// Fails the next `n` requests the failure applies to, then serves normally.
    pub fn fail_next(&self, what: Failure, n: usize) {
        *self.state.failing.lock().unwrap() = Some(Failing {
            what,
            remaining: Some(n),
        });
    }

    /// Serves normally again.
    pub fn recover(&self) {
        *self.state.failing.lock().unwrap() = None;
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .count()
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> usize {
        self.state.hits.lock().unwrap().len()
    }

    /// Every request received, in order.
    pub fn hit_log(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// A token signed by `key` with the default claims for this issuer.
    pub fn token(&self, key: &SigningKey) -> TokenBuilder {
        TokenBuilder::new(&self.issuer()).sign_with(key)
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
        self.task.abort();
    }
}

impl State {
    pub(super) fn now(&self) -> (tokio::time::Instant, SystemTime) {
        match &self.clock {
            Some(c) => (c.now(), c.wall()),
            None => (tokio::time::Instant::now(), SystemTime::now()),
        }
    }

    /// Logs a request and says which failure (if any) answers it.
    pub(super) fn record(&self, path: &str) -> Option<Failure> {
        let failure = {
            let mut f = self.failing.lock().unwrap();
            let applies = f.as_ref().is_some_and(|f| match f.what {
                Failure::EmptyKeys => path == JWKS,
                _ => true,
            });
            if applies {
                let failing = f.as_mut().unwrap();
                let what = failing.what.clone();
                if let Some(n) = &mut failing.remaining {
                    *n -= 1;
                    if *n == 0 {
                        *f = None;
                    }
                }
                Some(what)
            } else {
                None
            }
        };
        let (at, wall) = self.now();
        self.hits.lock().unwrap().push(Hit {
            path: path.to_string(),
            at,
            wall,
            failure: failure.clone(),
        });
        failure
    }

    pub(super) fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .lock()
            .unwrap()
            .iter()
            .map(|k| k.jwk.clone())
            .collect();
        json!({ "keys": keys })
    }
}

/// Reads the request head, decides, then answers through hyper (or resets / hangs).
pub(super) async fn connection(
    mut stream: TcpStream,
    state: Arc<State>,
    mut closed: watch::Receiver<bool>,
) {
    let mut head = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let target = String::from_utf8_lossy(line)
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let failure = state.record(&path).or_else(|| state.token_fault(&path));
    match failure {
        Some(Failure::Reset) => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Some(Failure::Hang) => {
            // Hold the connection until the client gives up or the IdP is dropped.
            let mut buf = [0u8; 1024];
            tokio::select! {
                _ = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        }
        other => {
            let io = Prefixed {
                prefix: Bytes::from(head),
                stream,
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let other = other.clone();
                async move {
                    let resp = if other.is_none() && is_oidc_path(req.uri().path()) {
                        oidc_respond(req, &state).await
                    } else {
                        respond(&req, &state, other)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(io), svc)
                .await;
        }
    }
}

pub(super) fn respond(
    req: &Request<Incoming>,
    state: &State,
    failure: Option<Failure>,
) -> Response<Full<Bytes>> {
    let json_resp = |status: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    match failure {
        Some(Failure::Status(code)) => {
            return json_resp(code, r#"{"error":"server_error"}"#.into());
        }
        Some(Failure::RetryAfterSecs(s)) => {
            let mut r = json_resp(429, r#"{"error":"slow_down"}"#.into());
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
            return r;
        }
        Some(Failure::RetryAfterDate(d)) => {
            let (_, wall) = state.now();
            // Round up to a whole second so the date is never earlier than wall + d.
            let when = UNIX_EPOCH
                + Duration::from_secs((wall + d).duration_since(UNIX_EPOCH).unwrap().as_secs() + 1);
            let mut r = json_resp(429, r#"{"error":"slow_down"}"#.into());
            r.headers_mut().insert(
                "retry-after",
                httpdate::fmt_http_date(when).parse().unwrap(),
            );
            return r;
        }
        Some(Failure::UnavailableRetryAfterSecs(s)) => {
            let mut r = json_resp(503, r#"{"error":"temporarily_unavailable"}"#.into());
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
            return r;
        }
        Some(Failure::MalformedJson) => return json_resp(200, r#"{"keys": [ {"kty": "#.into()),
        Some(Failure::EmptyKeys) => return json_resp(200, r#"{"keys": []}"#.into()),
        Some(Failure::Hang | Failure::Reset) | None => {}
    }
    match req.uri().path() {
        DISCOVERY => json_resp(
            200,
            json!({
                "issuer": state.base,
                "jwks_uri": format!("{}{JWKS}", state.base),
                "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
                "authorization_endpoint": format!("{}{AUTHORIZE}", state.base),
                "token_endpoint": format!("{}{TOKEN}", state.base),
                "end_session_endpoint": format!("{}{END_SESSION}", state.base),
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            })
            .to_string(),
        ),
        JWKS => {
            let mut r = json_resp(200, state.jwks().to_string());
            if let Some(age) = *state.max_age.lock().unwrap() {
                r.headers_mut().insert(
                    "cache-control",
                    format!("public, max-age={age}").parse().unwrap(),
                );
            }
            r
        }
        _ => json_resp(404, r#"{"error":"not_found"}"#.into()),
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Prefixed {
    pub(super) prefix: Bytes,
    pub(super) stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
