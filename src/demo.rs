//! `portcullis demo`: everything on loopback for a first look. A small development IdP
//! (discovery + JWKS, one ES256 key generated at start, and a `/token` endpoint that mints
//! tokens — for the demo only), an echo upstream (it answers with the method, path and headers
//! it received, as JSON) and Portcullis in front of them, configured from the embedded
//! `config/demo.yaml`.
//!
//! Security notes: the development IdP hands a signed token to anyone who asks. It exists
//! only inside `portcullis demo` and binds loopback.

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

/// The audience the demo's tokens carry.
pub const DEMO_AUDIENCE: &str = "portcullis-demo";

/// A development IdP: one ES256 key, discovery, JWKS, and a token minting endpoint.
pub struct DevIdp {
    /// `http://127.0.0.1:port`, also the `iss` of its tokens.
    pub issuer: String,
    key: jsonwebtoken::EncodingKey,
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
        });
        let discovery = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
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
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => Some(discovery.clone()),
                            "/jwks" => Some(jwks.clone()),
                            "/token" => idp.token_from_query(req.uri().query().unwrap_or("")),
                            _ => None,
                        };
                        async move { Ok::<_, Infallible>(json_response(body)) }
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

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The echo upstream could not bind.
    #[error("cannot start the demo echo upstream: {0}")]
    Echo(#[source] std::io::Error),
    /// The development IdP could not start.
    #[error(transparent)]
    Idp(#[from] DevIdpError),
    /// The embedded configuration did not validate (a bug, or a bad PORTCULLIS_* override).
    #[error("embedded demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Starts the echo upstream and the development IdP on loopback, and returns Portcullis's
/// configuration (the embedded one with their addresses, `listen` and `admin`) plus the text
/// that tells a newcomer what to try.
pub async fn prepare(
    mut env: Vec<(String, String)>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(crate::Config, String), DemoError> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let echo = spawn_echo(any).await.map_err(DemoError::Echo)?;
    let idp = DevIdp::spawn(any).await?;
    let state = std::env::temp_dir().join("portcullis-demo-state");
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
            state.display().to_string(),
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
         More tokens: curl -s '{issuer}/token?sub=bob&scope=api:read&groups=admins'\n",
        issuer = idp.issuer,
    );
    Ok((config, intro))
}
