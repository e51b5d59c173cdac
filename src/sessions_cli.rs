//! `portcullis sessions list|revoke`: calls the session administration endpoints of a running
//! Portcullis's admin listener (`GET /sessions`, `POST /sessions/revoke`) and prints what
//! they answer.
//!
//! Where: `--admin URL`, else `admin.address` of `--config FILE`, else `127.0.0.1:9090`.
//! The token: `--token-file FILE`, else the variable `PORTCULLIS_ADMIN__TOKEN` (the same one
//! that sets `admin.token` on the server, so it is already there inside the container), else
//! `admin.token`/`admin.token_file` of `--config FILE`. There is no flag that takes the token
//! itself: a command line is visible to every user of the machine (`ps`, `/proc/*/cmdline`).
//!
//! Security notes: the token is held in a [`Token`] (redacting `Debug`, zeroed on drop) and
//! sent only in the `Authorization` header (marked sensitive) to the URL given; it is never
//! printed, and errors do not echo it.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The variable the token is read from (the server's override of `admin.token`).
pub const TOKEN_VAR: &str = "PORTCULLIS_ADMIN__TOKEN";
/// Largest answer read.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// How to reach the admin listener.
pub struct Admin {
    base: String,
    token: Token,
    timeout: Duration,
}

/// The admin token.
pub struct Token(Vec<u8>);

/// What went wrong (exit 2 for usage, 1 for the rest).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),
    /// The call failed.
    #[error("{0}")]
    Call(String),
}

/// `sessions list` filters.
#[derive(Debug, Default)]
pub struct ListArgs {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub issuer: Option<String>,
    pub limit: Option<usize>,
    pub json: bool,
}

/// `sessions revoke` target.
#[derive(Debug, Default)]
pub struct RevokeArgs {
    pub id: Option<String>,
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub issuer: Option<String>,
}

// === impl Admin ===

impl Admin {
    /// From the flags, the environment and the configuration file, in that order.
    pub fn resolve(
        admin: Option<String>,
        token_file: Option<PathBuf>,
        config: Option<PathBuf>,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, CliError> {
        let from_env = env
            .iter()
            .find(|(k, _)| k == TOKEN_VAR)
            .map(|(_, v)| Token(v.trim_end().as_bytes().to_vec()));
        let loaded = match &config {
            Some(file) => Some(portcullis::Config::load(file, env).map_err(|e| {
                CliError::Usage(format!("invalid configuration {}: {e}", file.display()))
            })?),
            None => None,
        };
        let token = match (token_file, from_env) {
            (Some(path), _) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    CliError::Usage(format!("cannot read {}: {e}", path.display()))
                })?;
                let text = String::from_utf8_lossy(&bytes);
                Some(Token(text.trim_end().as_bytes().to_vec()))
            }
            (None, Some(t)) => Some(t),
            (None, None) => loaded
                .as_ref()
                .and_then(|c| c.admin.token.as_ref())
                .map(|t| Token(t.expose().to_vec())),
        }
        .filter(|t| !t.0.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no admin token: give --token-file FILE, set {TOKEN_VAR}, or --config FILE with admin.token"
            ))
        })?;
        let base = match (admin, &loaded) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(c)) => format!("http://{}", c.admin.address),
            (None, None) => "http://127.0.0.1:9090".to_string(),
        };
        Ok(Self {
            base,
            token,
            timeout,
        })
    }

    /// `GET /sessions`: a table (or the JSON with `json`).
    pub async fn list(&self, args: &ListArgs) -> Result<String, CliError> {
        let limit = args.limit.map(|l| l.to_string());
        let query = query(&[
            ("sub", args.sub.as_deref()),
            ("sid", args.sid.as_deref()),
            ("issuer", args.issuer.as_deref()),
            ("limit", limit.as_deref()),
        ]);
        let body = self.call(Method::GET, &format!("/sessions{query}")).await?;
        if args.json {
            return Ok(body);
        }
        table(&body)
    }

    /// `POST /sessions/revoke`: how many, and their ids.
    pub async fn revoke(&self, args: &RevokeArgs) -> Result<String, CliError> {
        let given = [&args.id, &args.sid, &args.sub]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given != 1 {
            return Err(CliError::Usage(
                "give exactly one of --id, --sid or --sub".into(),
            ));
        }
        let query = query(&[
            ("id", args.id.as_deref()),
            ("sid", args.sid.as_deref()),
            ("sub", args.sub.as_deref()),
            ("issuer", args.issuer.as_deref()),
        ]);
        let body = self
            .call(Method::POST, &format!("/sessions/revoke{query}"))
            .await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| CliError::Call(format!("unexpected answer: {e}")))?;
        let n = v["revoked"].as_u64().unwrap_or(0);
        let mut out = format!("revoked {n} session(s)\n");
        for id in v["ids"].as_array().into_iter().flatten() {
            out.push_str(id.as_str().unwrap_or_default());
            out.push('\n');
        }
        Ok(out)
    }

    /// One call within the timeout; the body of a 200, or an error naming the status.
    async fn call(&self, method: Method, path_and_query: &str) -> Result<String, CliError> {
        let url = format!("{}{path_and_query}", self.base);
        match tokio::time::timeout(self.timeout, self.exchange(method, &url)).await {
            Ok(r) => r,
            Err(_) => Err(CliError::Call(format!(
                "{}: no answer within {:?}",
                self.base, self.timeout
            ))),
        }
    }

    async fn exchange(&self, method: Method, url: &str) -> Result<String, CliError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| CliError::Usage(format!("bad --admin URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(CliError::Usage("--admin must be an http:// URL".into()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| CliError::Usage("--admin URL has no host".into()))?
            .clone();
        let addr = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| CliError::Call(format!("connect {addr}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::Call(format!("{addr}: {e}")))?;
        tokio::spawn(conn);
        let mut auth = b"Bearer ".to_vec();
        auth.extend_from_slice(&self.token.0);
        let mut auth = http::HeaderValue::from_bytes(&auth)
            .map_err(|_| CliError::Usage("the admin token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::USER_AGENT, "portcullis-sessions")
            .body(Empty::<Bytes>::new())
            .map_err(|e| CliError::Call(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CliError::Call(format!("{addr}: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CliError::Call(format!("{addr}: reading the answer: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        match status.as_u16() {
            200 => Ok(text),
            401 => Err(CliError::Call(format!(
                "{}: 401: the admin token was refused",
                self.base
            ))),
            404 => Err(CliError::Call(format!(
                "{}: 404: session administration is off there (no admin.token)",
                self.base
            ))),
            _ => Err(CliError::Call(format!("{}: {status}: {text}", self.base))),
        }
    }
}

// === impl Token ===

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// `?k=v&...` of the values given (empty when none).
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// A listing as a table, one session per line.
fn table(body: &str) -> Result<String, CliError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| CliError::Call(format!("unexpected answer: {e}")))?;
    let mut out = String::from("ID\tSUB\tSID\tISSUER\tCREATED\tLAST_SEEN\tEXPIRES\n");
    for s in v["sessions"].as_array().into_iter().flatten() {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
        let time = |k: &str| {
            s[k].as_u64()
                .map(|t| httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(t)))
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            text("id"),
            text("sub"),
            text("sid"),
            text("issuer"),
            time("created"),
            time("last_seen"),
            time("expires"),
        ));
    }
    if v["truncated"].as_bool() == Some(true) {
        out.push_str("(more sessions match: raise --limit or narrow the filter)\n");
    }
    Ok(out)
}
