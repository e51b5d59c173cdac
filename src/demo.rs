//! `portcullis demo`: everything on loopback for a first look. A small development IdP
//! (discovery + JWKS, one ES256 key generated at start; `GET /token` mints bearer tokens, and
//! the code flow: `/authorize` with a login form that accepts any user name, `POST /token`
//! with PKCE and rotating refresh tokens, `/end_session` — for the demo only), an echo
//! upstream (it answers with the method, path and headers it received, as JSON) and
//! Portcullis in front of them, configured from the embedded `config/demo.yaml`. Every run
//! gets a `state_dir` of its own ([`StateDir`]): the IdP's port and key are new each run.
//!
//! Security notes: the development IdP hands a signed token to anyone who asks and signs in
//! anyone. It exists only inside `portcullis demo`, binds loopback, and redirects only to
//! loopback URLs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{self, ProxyBody};

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

/// The audience the demo's tokens carry.
pub const DEMO_AUDIENCE: &str = "portcullis-demo";

/// The demo's OAuth client (a public client: PKCE, no secret).
pub const DEMO_CLIENT_ID: &str = "portcullis-demo";

/// Lifetime of the development IdP's code-flow access tokens: short, so the demo shows a
/// refresh within minutes.
pub const DEMO_ACCESS_TTL: u64 = 120;

/// A development IdP: one ES256 key, discovery, JWKS, a token minting endpoint and the code
/// flow.
pub struct DevIdp {
    /// `http://127.0.0.1:port`, also the `iss` of its tokens.
    pub issuer: String,
    key: jsonwebtoken::EncodingKey,
    grants: Mutex<Grants>,
    /// Sign this user in at once instead of showing the form (benchmarks).
    auto_approve: Option<String>,
}

/// Codes and refresh tokens issued, by value.
#[derive(Default)]
struct Grants {
    codes: HashMap<String, Code>,
    refresh: HashMap<String, String>,
}

/// An authorization code waiting for its exchange.
struct Code {
    sub: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    expires: u64,
}

/// Why the development IdP could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    /// Binding failed.
    #[error("cannot bind the development IdP: {0}")]
    Bind(#[from] std::io::Error),
    /// Key generation failed.
    #[error("cannot generate the development IdP key")]
    Key,
}

// === impl DevIdp ===

impl DevIdp {
    /// Generates a key, binds `addr` and serves in the background.
    pub async fn spawn(addr: SocketAddr) -> Result<std::sync::Arc<Self>, DevIdpError> {
        Self::spawn_with(addr, None).await
    }

    /// Like [`DevIdp::spawn`]; with `auto_approve`, `/authorize` signs that user in without
    /// the form (for `benches/load.sh`, which signs in with curl).
    pub async fn spawn_with(
        addr: SocketAddr,
        auto_approve: Option<String>,
    ) -> Result<std::sync::Arc<Self>, DevIdpError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| DevIdpError::Key)?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| DevIdpError::Key)?;
        let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .map_err(|_| DevIdpError::Key)?;
        jwk.common.key_id = Some("demo-1".into());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let listener = TcpListener::bind(addr).await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let this = std::sync::Arc::new(Self {
            issuer: issuer.clone(),
            key,
            grants: Mutex::new(Grants::default()),
            auto_approve,
        });
        let discovery = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "end_session_endpoint": format!("{issuer}/end_session"),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        let idp = this.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (idp, discovery, jwks) = (idp.clone(), discovery.clone(), jwks.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (idp, discovery, jwks) = (idp.clone(), discovery.clone(), jwks.clone());
                        async move {
                            let resp = match (req.method().clone(), req.uri().path()) {
                                (_, "/.well-known/openid-configuration") => {
                                    json_response(Some(discovery))
                                }
                                (_, "/jwks") => json_response(Some(jwks)),
                                (http::Method::GET, "/token") => json_response(
                                    idp.token_from_query(req.uri().query().unwrap_or("")),
                                ),
                                (http::Method::POST, "/token") => idp.oauth_token(req).await,
                                (http::Method::GET, "/authorize") => match &idp.auto_approve {
                                    Some(user) => {
                                        let mut q = form::parse(req.uri().query().unwrap_or(""));
                                        q.push(("username".into(), user.clone()));
                                        idp.approve(&q)
                                    }
                                    None => login_form(req.uri().query().unwrap_or("")),
                                },
                                (http::Method::POST, "/authorize") => idp.authorize(req).await,
                                (_, "/end_session") => end_session(req.uri().query().unwrap_or("")),
                                _ => json_response(None),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(this)
    }

    /// A token for `sub` with `scope` and `groups`, valid for an hour.
    pub fn token(&self, sub: &str, scope: &str, groups: &[&str]) -> Option<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": DEMO_AUDIENCE,
            "sub": sub,
            "email": format!("{sub}@example.com"),
            "preferred_username": sub,
            "groups": groups,
            "scope": scope,
            "iat": now,
            "exp": now + 3600,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("demo-1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).ok()
    }

    /// `/token?sub=alice&scope=api:read&groups=admins,staff` (percent-encoding not needed for
    /// these simple values).
    fn token_from_query(&self, query: &str) -> Option<String> {
        let get = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("")
        };
        let sub = if get("sub").is_empty() {
            "alice"
        } else {
            get("sub")
        };
        let groups: Vec<&str> = get("groups").split(',').filter(|g| !g.is_empty()).collect();
        let token = self.token(sub, &get("scope").replace('+', " "), &groups)?;
        Some(serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }).to_string())
    }
}

impl DevIdp {
    /// `POST /authorize` (the login form): checks the request, issues a code for the user
    /// name typed, and sends the browser back to the (loopback) redirect URI.
    async fn authorize(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let form = read_form(req).await;
        self.approve(&form)
    }

    /// Issues a code for the authorization request (and user name) in `form`.
    fn approve(&self, form: &[(String, String)]) -> Response<ProxyBody> {
        let get = |k: &str| form::get(form, k).unwrap_or_default().to_string();
        let redirect_uri = get("redirect_uri");
        let loopback = is_loopback(&redirect_uri);
        if get("client_id") != DEMO_CLIENT_ID || !loopback {
            return text(400, "text/plain", "unknown client or redirect_uri\n".into());
        }
        if get("response_type") != "code" || get("code_challenge_method") != "S256" {
            return redirect(&with_query(
                &redirect_uri,
                &[("error", "invalid_request"), ("state", &get("state"))],
            ));
        }
        let user: String = get("username")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(64)
            .collect();
        let user = if user.is_empty() {
            "alice".to_string()
        } else {
            user
        };
        let Ok(code) = crate::authn::oidc::login::random_token() else {
            return text(500, "text/plain", "no randomness\n".into());
        };
        let nonce = get("nonce");
        if let Ok(mut g) = self.grants.lock() {
            g.codes.retain(|_, c| c.expires > now());
            g.codes.insert(
                code.clone(),
                Code {
                    sub: user,
                    redirect_uri: redirect_uri.clone(),
                    challenge: get("code_challenge"),
                    nonce: (!nonce.is_empty()).then_some(nonce),
                    expires: now() + 60,
                },
            );
        }
        redirect(&with_query(
            &redirect_uri,
            &[
                ("code", &code),
                ("state", &get("state")),
                ("iss", &self.issuer),
            ],
        ))
    }

    /// `POST /token`: the authorization-code grant (PKCE required) and the refresh-token
    /// grant (rotating: a used refresh token is refused).
    async fn oauth_token(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let form = read_form(req).await;
        let get = |k: &str| form::get(&form, k).unwrap_or_default().to_string();
        let error = |e: &str| {
            text(
                400,
                "application/json",
                serde_json::json!({ "error": e }).to_string(),
            )
        };
        let Ok(mut grants) = self.grants.lock() else {
            return error("server_error");
        };
        let (sub, nonce) = match get("grant_type").as_str() {
            "authorization_code" => {
                let Some(c) = grants.codes.remove(&get("code")) else {
                    return error("invalid_grant");
                };
                let challenge = crate::authn::oidc::login::s256_challenge(&get("code_verifier"));
                if c.expires <= now()
                    || c.redirect_uri != get("redirect_uri")
                    || c.challenge != challenge
                {
                    return error("invalid_grant");
                }
                (c.sub, c.nonce)
            }
            "refresh_token" => match grants.refresh.remove(&get("refresh_token")) {
                Some(sub) => (sub, None),
                None => return error("invalid_grant"),
            },
            _ => return error("unsupported_grant_type"),
        };
        let Ok(refresh) = crate::authn::oidc::login::random_token() else {
            return error("server_error");
        };
        grants.refresh.insert(refresh.clone(), sub.clone());
        drop(grants);
        let at = now();
        let groups = if sub == "root" {
            vec!["admins"]
        } else {
            vec!["staff"]
        };
        let access = serde_json::json!({
            "iss": self.issuer, "aud": DEMO_AUDIENCE, "sub": sub, "scope": "openid profile email api:read",
            "client_id": DEMO_CLIENT_ID, "iat": at, "exp": at + DEMO_ACCESS_TTL,
        });
        let mut id = serde_json::json!({
            "iss": self.issuer, "aud": DEMO_CLIENT_ID, "azp": DEMO_CLIENT_ID, "sub": sub,
            "email": format!("{sub}@example.com"), "preferred_username": sub, "groups": groups,
            "sid": format!("demo-{sub}"), "iat": at, "exp": at + DEMO_ACCESS_TTL,
        });
        if let Some(n) = nonce {
            id["nonce"] = serde_json::Value::String(n);
        }
        let mut at_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        at_header.kid = Some("demo-1".into());
        at_header.typ = Some("at+jwt".into());
        let mut id_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        id_header.kid = Some("demo-1".into());
        let (Ok(access), Ok(id)) = (
            jsonwebtoken::encode(&at_header, &access, &self.key),
            jsonwebtoken::encode(&id_header, &id, &self.key),
        ) else {
            return error("server_error");
        };
        text(
            200,
            "application/json",
            serde_json::json!({
                "access_token": access, "token_type": "Bearer", "expires_in": DEMO_ACCESS_TTL,
                "id_token": id, "refresh_token": refresh, "scope": "openid profile email api:read",
            })
            .to_string(),
        )
    }
}

use crate::authn::oidc::form;

/// Whether `url` is an http(s) URL on a loopback host.
fn is_loopback(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            })
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Reads a small form body (at most 64 KiB).
async fn read_form(req: Request<Incoming>) -> Vec<(String, String)> {
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    form::parse(&String::from_utf8_lossy(&body))
}

/// `GET /authorize`: the login form, carrying the authorization request along.
fn login_form(query: &str) -> Response<ProxyBody> {
    use crate::authn::browser::pages::escape;
    let hidden: String = form::parse(query)
        .iter()
        .filter(|(k, _)| k != "username")
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect();
    text(
        200,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Development IdP</title></head>\
             <body style=\"font-family:sans-serif;max-width:30em;margin:4em auto\"><h1>Development IdP</h1>\
             <p>Any user name signs in (\"root\" is in group admins). For the demo only.</p>\
             <form method=\"post\" action=\"/authorize\">{hidden}<label>User name \
             <input id=\"username\" name=\"username\" value=\"alice\" autofocus></label> \
             <button id=\"sign-in\" type=\"submit\">Sign in</button></form></body></html>\n"
        ),
    )
}

/// `/end_session`: back to `post_logout_redirect_uri` when it is a loopback URL.
fn end_session(query: &str) -> Response<ProxyBody> {
    let q = form::parse(query);
    match form::get(&q, "post_logout_redirect_uri").filter(|u| is_loopback(u)) {
        Some(uri) => redirect(uri),
        None => text(
            200,
            "text/html; charset=utf-8",
            "<p>Signed out of the development IdP.</p>\n".into(),
        ),
    }
}

fn text(status: u16, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

fn redirect(location: &str) -> Response<ProxyBody> {
    crate::authn::browser::pages::redirect(location)
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", form::encode_pairs(pairs.iter().copied()))
}

fn json_response(body: Option<String>) -> Response<ProxyBody> {
    match body {
        Some(b) => {
            let mut resp = Response::new(body::full(b));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        None => {
            let mut resp = Response::new(body::full("not found\n"));
            *resp.status_mut() = http::StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// A prepared demo: Portcullis's configuration, the text for the newcomer, and the state
/// directory of this run (keep it until Portcullis has stopped; dropping it removes it).
#[derive(Debug)]
pub struct Demo {
    /// The embedded configuration with the addresses and the state directory filled in.
    pub config: crate::Config,
    /// What to try, printed before Portcullis starts.
    pub intro: String,
    /// This run's `state_dir`.
    pub state: StateDir,
}

/// The demo's `state_dir`: a new private (0700) directory under the system's temporary
/// directory for every run, removed on drop. The development IdP gets a new port and a new
/// key on every run, so state kept from an earlier run could only be ignored, with a warning
/// on the first screen a newcomer sees.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The echo upstream could not bind.
    #[error("cannot start the demo echo upstream: {0}")]
    Echo(#[source] std::io::Error),
    /// The run's state directory could not be created.
    #[error("cannot create the demo's state directory under {dir}: {source}")]
    State {
        /// The temporary directory it was to be created in.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The development IdP could not start.
    #[error(transparent)]
    Idp(#[from] DevIdpError),
    /// The embedded configuration did not validate (a bug, or a bad PORTCULLIS_* override).
    #[error("embedded demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

// === impl StateDir ===

impl StateDir {
    /// Creates a new directory under [`std::env::temp_dir`] (`TMPDIR`).
    pub fn create() -> Result<Self, DemoError> {
        let dir = std::env::temp_dir();
        let mut last = None;
        // A name already taken (by anyone, a symlink included) is never reused: try another.
        for _ in 0..8 {
            let path = dir.join(format!(
                "portcullis-demo-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            match create_private_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => return Err(DemoError::State { dir, source }),
            }
        }
        let source = last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into());
        Err(DemoError::State { dir, source })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot remove the demo's state directory"
            );
        }
    }
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)
}

/// Starts the echo upstream and the development IdP on loopback, and returns Portcullis's
/// configuration (the embedded one with their addresses, `listen`, `admin` and a state
/// directory of this run's own), the text that tells a newcomer what to try, and that
/// directory.
pub async fn prepare(
    mut env: Vec<(String, String)>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<Demo, DemoError> {
    let state = StateDir::create()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let echo = spawn_echo(any).await.map_err(DemoError::Echo)?;
    let idp = DevIdp::spawn(any).await?;
    env.extend([
        (
            "PORTCULLIS_LISTENERS__PLAIN__ADDRESS".to_string(),
            listen.to_string(),
        ),
        ("PORTCULLIS_ADMIN__ADDRESS".to_string(), admin.to_string()),
        (
            "PORTCULLIS_UPSTREAMS__ECHO__ADDRESSES".to_string(),
            format!("[\"http://{echo}\"]"),
        ),
        (
            "PORTCULLIS_ISSUERS__DEMO__ISSUER".to_string(),
            idp.issuer.clone(),
        ),
        (
            "PORTCULLIS_STATE_DIR".to_string(),
            state.path().display().to_string(),
        ),
    ]);
    let config = crate::Config::from_yaml(DEMO_CONFIG, env)?;
    let reader = idp
        .token("alice", "api:read", &["staff"])
        .unwrap_or_default();
    let admin_token = idp
        .token("root", "api:read", &["admins"])
        .unwrap_or_default();
    let intro = format!(
        "Portcullis demo on http://{listen}/ (admin: http://{admin}/metrics)\n\
         echo upstream on {echo}, development IdP on {issuer}\n\n\
         A valid token (alice, scope api:read) is forwarded with identity headers:\n  \
         curl -s http://{listen}/api/orders -H 'Authorization: Bearer {reader}'\n\
         No token: 401 with WWW-Authenticate:\n  \
         curl -si http://{listen}/api/orders\n\
         Authenticated but not in group admins: 403:\n  \
         curl -si http://{listen}/admin -H 'Authorization: Bearer {reader}'\n\
         In group admins:\n  \
         curl -s http://{listen}/admin -H 'Authorization: Bearer {admin_token}'\n\
         Public route (spoofed identity headers are stripped):\n  \
         curl -s http://{listen}/hello -H 'X-Auth-Request-User: mallory'\n\
         Browser sign-in (code flow, session cookie): open http://{listen}/app in a browser,\n  \
         sign in with any user name; the page shows the identity headers the app received.\n  \
         Sign out: http://{listen}/oauth2/sign_out\n\
         More tokens: curl -s '{issuer}/token?sub=bob&scope=api:read&groups=admins'\n",
        issuer = idp.issuer,
    );
    Ok(Demo {
        config,
        intro,
        state,
    })
}
