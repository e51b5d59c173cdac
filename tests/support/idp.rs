//! A mock OpenID Connect IdP on 127.0.0.1:0 (real HTTP, hyper).
//!
//! - `/.well-known/openid-configuration`: `{issuer: <base URL>, jwks_uri: <base>/jwks}`
//! - `/jwks`: the published keys (optionally with `Cache-Control: max-age=N`)
//!
//! Keys are generated per test with rcgen (RS256, PS256, ES256, EdDSA) and published as JWKs
//! (`Jwk::from_encoding_key` plus a `kid`); tests rotate them with `add_key`/`remove_key`.
//! Every request is logged (path, and the time on the test's `ManualClock` when one is given),
//! so tests can count calls per path and check when they happened.
//!
//! It can be told to fail ([`Failure`]): a status (500), 429 with `Retry-After` in seconds or
//! as an HTTP-date, 503 with `Retry-After`, hang (never answer), malformed JSON, an empty key set, or a connection
//! reset (RST). Connections are never kept alive, so a failure mode applies from the next
//! request on, and a reset can be decided per request.
//!
//! OpenID Connect endpoints (advertised in discovery): `/authorize` (auto-approves for the
//! configured user and redirects with `code` and `state`, or shows a tiny HTML login form),
//! `/token` (`authorization_code` with the PKCE check, `refresh_token` with rotation: a used
//! refresh token gets `invalid_grant`), `/end_session`; logout tokens are minted with
//! [`MockIdp::logout_token`]. [`TokenFault`] fails only the token endpoint (down, hang, 500,
//! 429 with `Retry-After`, `invalid_grant`); [`MockIdp::token_requests`] shows what it got.
//!
//! [`TokenBuilder`] mints tokens with sensible defaults and lets a test override any claim or
//! header (alg, kid, `none`, `crit`, `jku`, ...) or sign with the wrong key.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::idp::{Clock, ManualClock};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The discovery path.
pub const DISCOVERY: &str = "/.well-known/openid-configuration";
/// The JWKS path.
pub const JWKS: &str = "/jwks";
/// The audience tokens carry by default.
pub const AUDIENCE: &str = "api";

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// The algorithm it signs with (and declares in its JWK).
    pub alg: Algorithm,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public JWK (with `kid` and `alg`).
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), e.g. for algorithm-confusion tokens.
    pub public_pem: String,
}

impl SigningKey {
    /// A fresh key for `alg` (RS*/PS* use RSA 2048, ES256 P-256, EdDSA Ed25519).
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let (rcgen_alg, from_pem): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg
        {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            other => panic!("no key generation for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let encoding = if alg == Algorithm::EdDSA {
            // aws-lc writes PKCS#8 v2 (with the public key); `Jwk::from_encoding_key` wants
            // the 48-byte v1 form, so rebuild it from the seed.
            let der = pair.serialized_der();
            let at = der
                .windows(4)
                .position(|w| w == [0x04, 0x22, 0x04, 0x20])
                .unwrap()
                + 4;
            let mut v1 = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            v1.extend_from_slice(&der[at..at + 32]);
            EncodingKey::from_ed_der(&v1)
        } else {
            from_pem(pair.serialize_pem().as_bytes()).unwrap()
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        Self {
            kid: kid.to_string(),
            alg,
            jwk: serde_json::to_value(&jwk).unwrap(),
            encoding,
            public_pem: pair.public_key_pem(),
        }
    }

    /// The same key under another `kid`.
    pub fn with_kid(&self, kid: &str) -> Self {
        let mut k = self.clone();
        k.kid = kid.to_string();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// The same key with no `alg` in its JWK (usable with every algorithm of its family).
    pub fn without_jwk_alg(&self) -> Self {
        let mut k = self.clone();
        if let Some(o) = k.jwk.as_object_mut() {
            o.remove("alg");
        }
        k
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

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

struct Failing {
    what: Failure,
    /// Requests left to fail; None: until `recover`.
    remaining: Option<usize>,
}

struct State {
    base: String,
    keys: Mutex<Vec<SigningKey>>,
    failing: Mutex<Option<Failing>>,
    max_age: Mutex<Option<u64>>,
    hits: Mutex<Vec<Hit>>,
    clock: Option<ManualClock>,
    oidc: Mutex<Oidc>,
}

/// A running mock IdP.
pub struct MockIdp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    closed: watch::Sender<bool>,
}

impl MockIdp {
    /// Starts an IdP with no keys, stamping requests with real time.
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// Starts an IdP that stamps requests (and computes `Retry-After` dates) with `clock`.
    pub async fn start_with_clock(clock: ManualClock) -> Self {
        Self::spawn(Some(clock)).await
    }

    async fn spawn(clock: Option<ManualClock>) -> Self {
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
    fn now(&self) -> (tokio::time::Instant, SystemTime) {
        match &self.clock {
            Some(c) => (c.now(), c.wall()),
            None => (tokio::time::Instant::now(), SystemTime::now()),
        }
    }

    /// Logs a request and says which failure (if any) answers it.
    fn record(&self, path: &str) -> Option<Failure> {
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

    fn jwks(&self) -> Value {
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
async fn connection(mut stream: TcpStream, state: Arc<State>, mut closed: watch::Receiver<bool>) {
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

fn respond(
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
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
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

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

enum Signer {
    Key(EncodingKey),
    Hmac(Vec<u8>),
    /// `alg: none`: empty signature.
    Unsigned,
}

/// Builds a compact JWS. Defaults: `iss`, `aud: api`, `sub: alice`, `email`, `groups`,
/// `scope`, `iat` now, `exp` now + 300 s; header `typ: JWT`, `alg` and `kid` from the key.
pub struct TokenBuilder {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signer: Signer,
    sign_alg: Algorithm,
}

/// Seconds since the Unix epoch, real time.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TokenBuilder {
    /// Default claims for issuer `iss`, unsigned until a signer is chosen.
    pub fn new(iss: &str) -> Self {
        let now = now_unix();
        let claims = json!({
            "iss": iss,
            "aud": AUDIENCE,
            "sub": "alice",
            "email": "alice@example.com",
            "groups": ["staff", "dev"],
            "scope": "api:read profile",
            "iat": now,
            "exp": now + 300,
        });
        let header = json!({ "typ": "JWT", "alg": "none" });
        Self {
            header: header.as_object().cloned().unwrap(),
            claims: claims.as_object().cloned().unwrap(),
            signer: Signer::Unsigned,
            sign_alg: Algorithm::RS256,
        }
    }

    /// Signs with `key` (sets `alg` and `kid` from it).
    pub fn sign_with(mut self, key: &SigningKey) -> Self {
        self.signer = Signer::Key(key.encoding.clone());
        self.sign_alg = key.alg;
        self.header.insert("alg".into(), json!(alg_name(key.alg)));
        self.header.insert("kid".into(), json!(key.kid));
        self
    }

    /// Signs with HMAC over `secret` (`alg` HS256, no `kid`).
    pub fn hmac(mut self, secret: &[u8]) -> Self {
        self.signer = Signer::Hmac(secret.to_vec());
        self.sign_alg = Algorithm::HS256;
        self.header.insert("alg".into(), json!("HS256"));
        self.header.remove("kid");
        self
    }

    /// `alg: none` and an empty signature.
    pub fn unsigned(mut self) -> Self {
        self.signer = Signer::Unsigned;
        self.header.insert("alg".into(), json!("none"));
        self
    }

    /// Signs with `alg` (same key) and says so in the header.
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.sign_alg = alg;
        self.header.insert("alg".into(), json!(alg_name(alg)));
        self
    }

    /// Sets a header field (after the signer was chosen: overrides it).
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.into(), value.into());
        self
    }

    /// Removes a header field.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Sets the `kid` header.
    pub fn kid(self, kid: &str) -> Self {
        self.header("kid", kid)
    }

    /// Sets a claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Removes a claim.
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// `exp` this many seconds from now (negative: in the past).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", now_unix() + secs)
    }

    /// `nbf` this many seconds from now.
    pub fn nbf_in(self, secs: i64) -> Self {
        self.claim("nbf", now_unix() + secs)
    }

    /// `iat` this many seconds from now.
    pub fn iat_in(self, secs: i64) -> Self {
        self.claim("iat", now_unix() + secs)
    }

    /// The compact token.
    pub fn build(self) -> String {
        // The ordinary path goes through `jsonwebtoken::encode` when the header is one it can
        // represent and agrees with the signer; crafted headers are signed by hand.
        if let Signer::Key(key) = &self.signer
            && let Ok(header) = serde_json::from_value::<Header>(Value::Object(self.header.clone()))
            && header.alg == self.sign_alg
        {
            return jsonwebtoken::encode(&header, &self.claims, key).unwrap();
        }
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.header).unwrap());
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.claims).unwrap());
        let message = format!("{h}.{p}");
        let sig = match &self.signer {
            Signer::Key(key) => {
                jsonwebtoken::crypto::sign(message.as_bytes(), key, self.sign_alg).unwrap()
            }
            Signer::Hmac(secret) => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap(),
            Signer::Unsigned => String::new(),
        };
        format!("{message}.{sig}")
    }
}

/// The JOSE name of `alg`.
pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// The claims of a token, decoded without verification (for assertions).
pub fn claims_of(token: &str) -> Map<String, Value> {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// Counts requests per path (convenience for tests comparing before/after).
pub fn counts(hits: &[Hit]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for h in hits {
        *m.entry(h.path.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Proxy configuration and requests
// ---------------------------------------------------------------------------------------------

/// `issuers.<name>` YAML for `idp` (audience `api`), with `extra` settings (`key: value`).
pub fn issuer_yaml(name: &str, idp: &MockIdp, extra: &[&str]) -> String {
    let mut s = format!(
        "  {name}:\n    issuer: \"{}\"\n    audiences: [{AUDIENCE}]\n",
        idp.issuer()
    );
    for e in extra {
        s.push_str(&format!("    {e}\n"));
    }
    s
}

/// A whole proxy config: one plain listener, upstream `app` at `upstream`, `state_dir`,
/// `issuers` (from [`issuer_yaml`]), `routes` (YAML list items) and `extra` top-level YAML.
pub fn auth_yaml(
    upstream: &str,
    state_dir: &std::path::Path,
    issuers: &str,
    routes: &str,
    extra: &str,
) -> String {
    super::simple_config(
        &[upstream.to_string()],
        routes,
        &format!(
            "state_dir: \"{}\"\nissuers:\n{issuers}\n{extra}",
            state_dir.display()
        ),
    )
}

/// GET `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> super::client::Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    super::client::send(b.body(Full::default()).unwrap()).await
}

/// GET `url` with `Authorization: Bearer <token>`.
pub async fn get_bearer(url: &str, token: &str) -> super::client::Resp {
    get_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Values of header `name` the echo upstream received (lowercase name).
pub fn echoed(resp: &super::client::Resp, name: &str) -> Vec<String> {
    super::upstream::seen(&resp.json(), name)
}

/// The `WWW-Authenticate` header ("" when absent).
pub fn challenge(resp: &super::client::Resp) -> String {
    resp.headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// OpenID Connect: authorization, token and end-session endpoints
// ---------------------------------------------------------------------------------------------

/// The authorization endpoint path.
pub const AUTHORIZE: &str = "/authorize";
/// The token endpoint path.
pub const TOKEN: &str = "/token";
/// The end-session endpoint path.
pub const END_SESSION: &str = "/end_session";
/// The client the mock knows by default.
pub const CLIENT_ID: &str = "portcullis";
/// Its secret.
pub const CLIENT_SECRET: &str = "s3cret: with & odd=chars";

/// How the token endpoint misbehaves (the other endpoints are unaffected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFault {
    /// Read the request, then reset the connection (it reached the IdP, no answer).
    Down,
    /// Read the request and never answer.
    Hang,
    /// 500 with an OAuth `server_error` body.
    Status500,
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// 400 `invalid_grant` for every grant.
    InvalidGrant,
}

/// One request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The form.
    pub form: Vec<(String, String)>,
    /// Client id and secret from `Authorization: Basic`, when sent.
    pub basic: Option<(String, String)>,
}

impl TokenRequest {
    /// The form value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        portcullis::authn::oidc::form::get(&self.form, name)
    }
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    scope: String,
    sub: String,
}

struct RefreshGrant {
    sub: String,
    scope: String,
    used: bool,
}

struct Oidc {
    client_id: String,
    client_secret: String,
    user: String,
    login_form: bool,
    access_ttl: i64,
    rotate_refresh: bool,
    codes: HashMap<String, CodeGrant>,
    refresh: HashMap<String, RefreshGrant>,
    fault: Option<(TokenFault, Option<usize>)>,
    token_requests: Vec<TokenRequest>,
    end_sessions: Vec<Vec<(String, String)>>,
    counter: u64,
    /// The `sid` of issued ID tokens (`None`: no `sid` claim).
    sid: Option<String>,
}

impl Default for Oidc {
    fn default() -> Self {
        Self {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            user: "alice".into(),
            login_form: false,
            access_ttl: 300,
            rotate_refresh: true,
            codes: HashMap::new(),
            refresh: HashMap::new(),
            fault: None,
            token_requests: Vec::new(),
            end_sessions: Vec::new(),
            counter: 0,
            sid: Some("sid-1".into()),
        }
    }
}

impl Oidc {
    fn random(&mut self, kind: &str) -> String {
        self.counter += 1;
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        format!("{kind}-{}-{}", self.counter, URL_SAFE_NO_PAD.encode(b))
    }
}

impl MockIdp {
    /// The client the token endpoint accepts (default [`CLIENT_ID`] / [`CLIENT_SECRET`]).
    pub fn set_client(&self, client_id: &str, client_secret: &str) {
        let mut o = self.state.oidc.lock().unwrap();
        o.client_id = client_id.into();
        o.client_secret = client_secret.into();
    }

    /// The user the authorization endpoint signs in (default `alice`).
    pub fn set_user(&self, sub: &str) {
        self.state.oidc.lock().unwrap().user = sub.into();
    }

    /// Answer authorization requests with a small HTML login form instead of auto-approving.
    pub fn use_login_form(&self, on: bool) {
        self.state.oidc.lock().unwrap().login_form = on;
    }

    /// Lifetime of issued access and ID tokens (default 300 s).
    pub fn set_access_ttl(&self, secs: i64) {
        self.state.oidc.lock().unwrap().access_ttl = secs;
    }

    /// The `sid` claim of the ID tokens issued from now on (default `sid-1`; `None`: none).
    pub fn set_sid(&self, sid: Option<&str>) {
        self.state.oidc.lock().unwrap().sid = sid.map(str::to_string);
    }

    /// Whether a refresh issues a new refresh token (default: yes, rotation). Off: the
    /// response carries none and the old one stays valid.
    pub fn set_rotate_refresh(&self, on: bool) {
        self.state.oidc.lock().unwrap().rotate_refresh = on;
    }

    /// Fails every token request with `fault` until [`MockIdp::recover_token`].
    pub fn fail_token(&self, fault: TokenFault) {
        self.state.oidc.lock().unwrap().fault = Some((fault, None));
    }

    /// Fails the next `n` token requests with `fault`.
    pub fn fail_token_next(&self, fault: TokenFault, n: usize) {
        self.state.oidc.lock().unwrap().fault = Some((fault, Some(n)));
    }

    /// The token endpoint serves normally again.
    pub fn recover_token(&self) {
        self.state.oidc.lock().unwrap().fault = None;
    }

    /// Every request the token endpoint answered (not those failed by a fault that drops or
    /// hangs the connection), in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.oidc.lock().unwrap().token_requests.clone()
    }

    /// How many refresh-token grants the token endpoint answered.
    pub fn refreshes(&self) -> usize {
        self.token_requests()
            .iter()
            .filter(|r| r.get("grant_type") == Some("refresh_token"))
            .count()
    }

    /// The query of every end-session request.
    pub fn end_sessions(&self) -> Vec<Vec<(String, String)>> {
        self.state.oidc.lock().unwrap().end_sessions.clone()
    }

    /// Issues a code directly (what the authorization endpoint does after sign-in).
    pub fn issue_code(
        &self,
        redirect_uri: &str,
        challenge: &str,
        nonce: Option<&str>,
        scope: &str,
    ) -> String {
        let mut o = self.state.oidc.lock().unwrap();
        let code = o.random("code");
        let grant = CodeGrant {
            client_id: o.client_id.clone(),
            redirect_uri: redirect_uri.into(),
            challenge: challenge.into(),
            nonce: nonce.map(str::to_string),
            scope: scope.into(),
            sub: o.user.clone(),
        };
        o.codes.insert(code.clone(), grant);
        code
    }

    /// A back-channel logout token for this issuer, audience `client_id`, signed by `key`:
    /// `events`, `jti`, `iat`, `sid` and `sub` set (remove or change them with the builder).
    pub fn logout_token(&self, key: &SigningKey, client_id: &str, sid: &str) -> TokenBuilder {
        let mut b = [0u8; 12];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        TokenBuilder::new(&self.issuer())
            .sign_with(key)
            .header("typ", "logout+jwt")
            .claim("aud", client_id)
            .claim("sid", sid)
            .claim("jti", URL_SAFE_NO_PAD.encode(b))
            .claim(
                "events",
                json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
            )
            .without("exp")
            .without("scope")
            .without("groups")
            .without("email")
    }

    /// An ID token for this issuer as the token endpoint issues it (aud and azp `client_id`).
    pub fn id_token(&self, key: &SigningKey, client_id: &str, nonce: &str) -> TokenBuilder {
        TokenBuilder::new(&self.issuer())
            .sign_with(key)
            .claim("aud", client_id)
            .claim("azp", client_id)
            .claim("nonce", nonce)
            .claim("sid", "sid-1")
            .without("scope")
    }
}

impl State {
    /// The fault for a token endpoint request, as a connection-level [`Failure`] (invalid_grant
    /// is answered by the endpoint itself).
    fn token_fault(&self, path: &str) -> Option<Failure> {
        if path != TOKEN {
            return None;
        }
        let mut o = self.oidc.lock().unwrap();
        let (fault, remaining) = o.fault.as_mut()?;
        if *fault == TokenFault::InvalidGrant {
            // Answered by the endpoint itself, after reading the request.
            return None;
        }
        let fault = fault.clone();
        if let Some(n) = remaining {
            *n -= 1;
            if *n == 0 {
                o.fault = None;
            }
        }
        match fault {
            TokenFault::Down => Some(Failure::Reset),
            TokenFault::Hang => Some(Failure::Hang),
            TokenFault::Status500 => Some(Failure::Status(500)),
            TokenFault::RetryAfter(s) => Some(Failure::RetryAfterSecs(s)),
            TokenFault::InvalidGrant => None,
        }
    }

    fn signing_key(&self) -> Option<SigningKey> {
        self.keys.lock().unwrap().first().cloned()
    }
}

fn is_oidc_path(path: &str) -> bool {
    matches!(path, AUTHORIZE | TOKEN | END_SESSION)
}

fn text_resp(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    r
}

fn oauth_error(status: u16, error: &str) -> Response<Full<Bytes>> {
    text_resp(
        status,
        "application/json",
        json!({ "error": error, "error_description": "mock IdP says no" }).to_string(),
    )
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut r = text_resp(302, "text/plain", String::new());
    r.headers_mut()
        .insert("location", location.parse().unwrap());
    r
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}{}",
        portcullis::authn::oidc::form::encode_pairs(pairs.iter().copied())
    )
}

async fn oidc_respond(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    use portcullis::authn::oidc::form;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = form::parse(req.uri().query().unwrap_or_default());
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(i, p)| (form::decode(i), form::decode(p)))
        });
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    match (method, path.as_str()) {
        (http::Method::GET, AUTHORIZE) => authorize(state, &query, None),
        (http::Method::POST, AUTHORIZE) => {
            let form = form::parse(&body);
            let user = form::get(&form, "username").unwrap_or("alice").to_string();
            authorize(state, &form, Some(&user))
        }
        (http::Method::POST, TOKEN) => token(state, form::parse(&body), basic),
        (http::Method::GET, END_SESSION) => {
            state.oidc.lock().unwrap().end_sessions.push(query.clone());
            match form::get(&query, "post_logout_redirect_uri") {
                Some(uri) => {
                    let st = form::get(&query, "state").unwrap_or_default();
                    if st.is_empty() {
                        redirect(uri)
                    } else {
                        redirect(&with_query(uri, &[("state", st)]))
                    }
                }
                None => text_resp(200, "text/html", "<p>Signed out.</p>".into()),
            }
        }
        _ => oauth_error(405, "invalid_request"),
    }
}

/// GET: auto-approve (or show the form); POST (the form): approve as `user`.
fn authorize(state: &State, q: &[(String, String)], user: Option<&str>) -> Response<Full<Bytes>> {
    use portcullis::authn::oidc::form;
    let get = |k: &str| form::get(q, k).unwrap_or_default().to_string();
    let (client_id, login_form) = {
        let o = state.oidc.lock().unwrap();
        (o.client_id.clone(), o.login_form)
    };
    let redirect_uri = get("redirect_uri");
    if get("client_id") != client_id || redirect_uri.is_empty() {
        return oauth_error(400, "invalid_request");
    }
    if get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
    {
        let st = get("state");
        return redirect(&with_query(
            &redirect_uri,
            &[("error", "invalid_request"), ("state", &st)],
        ));
    }
    if user.is_none() && login_form {
        let hidden: String = q
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    html_escape(k),
                    html_escape(v)
                )
            })
            .collect();
        return text_resp(
            200,
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><title>Mock IdP sign-in</title><form method=\"post\" action=\"{AUTHORIZE}\">{hidden}<label>User <input id=\"username\" name=\"username\" value=\"alice\"></label><button id=\"sign-in\" type=\"submit\">Sign in</button></form>"
            ),
        );
    }
    if let Some(u) = user {
        state.oidc.lock().unwrap().user = u.to_string();
    }
    let nonce = get("nonce");
    let code = {
        let mut o = state.oidc.lock().unwrap();
        let code = o.random("code");
        let grant = CodeGrant {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: get("code_challenge"),
            nonce: (!nonce.is_empty()).then_some(nonce),
            scope: get("scope"),
            sub: o.user.clone(),
        };
        o.codes.insert(code.clone(), grant);
        code
    };
    redirect(&with_query(
        &redirect_uri,
        &[("code", &code), ("state", &get("state"))],
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn token(
    state: &State,
    form: Vec<(String, String)>,
    basic: Option<(String, String)>,
) -> Response<Full<Bytes>> {
    use portcullis::authn::oidc::form as f;
    let req = TokenRequest {
        form: form.clone(),
        basic: basic.clone(),
    };
    let mut o = state.oidc.lock().unwrap();
    o.token_requests.push(req);
    if let Some((TokenFault::InvalidGrant, remaining)) = &mut o.fault {
        if let Some(n) = remaining {
            *n -= 1;
            if *n == 0 {
                o.fault = None;
            }
        }
        return oauth_error(400, "invalid_grant");
    }
    let get = |k: &str| f::get(&form, k).unwrap_or_default().to_string();
    let (id, secret) = match basic {
        Some(b) => b,
        None => (get("client_id"), get("client_secret")),
    };
    if id != o.client_id || secret != o.client_secret {
        return oauth_error(401, "invalid_client");
    }
    let (sub, scope, nonce) = match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(g) = o.codes.remove(&get("code")) else {
                return oauth_error(400, "invalid_grant");
            };
            let challenge = portcullis::authn::oidc::login::s256_challenge(&get("code_verifier"));
            if g.client_id != id
                || g.redirect_uri != get("redirect_uri")
                || g.challenge != challenge
            {
                return oauth_error(400, "invalid_grant");
            }
            (g.sub, g.scope, g.nonce)
        }
        "refresh_token" => {
            let Some(g) = o.refresh.get_mut(&get("refresh_token")) else {
                return oauth_error(400, "invalid_grant");
            };
            if g.used {
                return oauth_error(400, "invalid_grant");
            }
            let asked = get("scope");
            if !asked.is_empty()
                && asked
                    .split(' ')
                    .any(|s| !g.scope.split(' ').any(|x| x == s))
            {
                return oauth_error(400, "invalid_scope");
            }
            let rotate = o.rotate_refresh;
            let g = o.refresh.get_mut(&get("refresh_token")).unwrap();
            if rotate {
                g.used = true;
            }
            (g.sub.clone(), g.scope.clone(), None)
        }
        _ => return oauth_error(400, "unsupported_grant_type"),
    };
    let Some(key) = state.signing_key() else {
        return oauth_error(500, "server_error");
    };
    let ttl = o.access_ttl;
    let access = TokenBuilder::new(&state.base)
        .sign_with(&key)
        .header("typ", "at+jwt")
        .claim("sub", sub.as_str())
        .claim("scope", scope.as_str())
        .claim("client_id", id.as_str())
        .exp_in(ttl)
        .build();
    let mut id_token = TokenBuilder::new(&state.base)
        .sign_with(&key)
        .claim("aud", id.as_str())
        .claim("azp", id.as_str())
        .claim("sub", sub.as_str())
        .without("scope")
        .exp_in(ttl);
    id_token = match &o.sid {
        Some(sid) => id_token.claim("sid", sid.as_str()),
        None => id_token.without("sid"),
    };
    if let Some(n) = &nonce {
        id_token = id_token.claim("nonce", n.as_str());
    }
    let mut resp = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "id_token": id_token.build(),
        "scope": scope,
    });
    let refresh_grant = get("grant_type") == "refresh_token";
    if !refresh_grant || o.rotate_refresh {
        let rt = o.random("rt");
        o.refresh.insert(
            rt.clone(),
            RefreshGrant {
                sub,
                scope,
                used: false,
            },
        );
        resp["refresh_token"] = json!(rt);
    }
    text_resp(200, "application/json", resp.to_string())
}
