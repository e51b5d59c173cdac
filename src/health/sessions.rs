//! Session administration on the admin listener, present only when `admin.token` is set:
//!
//! - `GET /sessions?sub=S&sid=S&issuer=I&limit=N`: live sessions (each: the hash of its id,
//!   `sub`, `sid`, issuer, created, last seen, expiry, in Unix seconds) as JSON
//!   `{"sessions": [...], "truncated": bool}`; at most `limit` (default
//!   [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
//! - `POST /sessions/revoke?id=H` (a hash from a listing), `?sid=S` or `?sub=S`, with
//!   `&issuer=I` (default: every issuer): ends them in the store, closes their tunnels here,
//!   and announces it to the other replicas (Redis store); answers
//!   `{"revoked": n, "ids": [...]}`.
//!
//! Security notes: every call needs `Authorization: Bearer <admin.token>`, compared in
//! constant time ([`Secret`]'s equality); a refusal is a bare 401 that says nothing about why.
//! The token is never logged, and neither are subjects or `sid`s (the audit line has the
//! kind of revoke and the count). A listing names sessions by the hash of their id, never
//! the id (a bearer secret), and carries no token or claim beyond `sub` and `sid`.

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::authn::browser::{Browser, Revoke};
use crate::body::{self, ProxyBody};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::session::{ListFilter, Listing, StoreError};

/// Sessions listed when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most sessions one listing returns.
pub const MAX_LIMIT: usize = 1000;
/// Longest query parameter value accepted.
const MAX_VALUE: usize = 1024;

/// What the session endpoints need.
#[derive(Clone)]
pub struct SessionAdmin {
    token: Secret,
    browser: Arc<Browser>,
    issuers: Arc<[String]>,
    metrics: Metrics,
}

/// A refusal: status and a short message (never about the token).
struct Refusal(StatusCode, &'static str, String);

/// The parameters a call may carry.
#[derive(Default)]
struct Params {
    id: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    issuer: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
    ids: Vec<String>,
}

// === impl SessionAdmin ===

impl SessionAdmin {
    /// The endpoints over `browser`'s store, for the issuers named `issuers`.
    pub fn new(token: Secret, browser: Arc<Browser>, issuers: Vec<String>, metrics: Metrics) -> Self {
        for (endpoint, result) in [("list", "ok"), ("revoke", "ok"), ("list", "unauthorized")] {
            metrics
                .admin_requests
                .with_label_values(&[endpoint, result]);
        }
        Self {
            token,
            browser,
            issuers: issuers.into(),
            metrics,
        }
    }

    /// Whether `path` is one of these endpoints.
    pub fn handles(path: &str) -> bool {
        matches!(path, "/sessions" | "/sessions/revoke")
    }

    /// Answers a call to one of these endpoints.
    pub async fn handle<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let endpoint = if req.uri().path() == "/sessions" {
            "list"
        } else {
            "revoke"
        };
        let out = match self.authorized(req) {
            false => Err(Refusal(StatusCode::UNAUTHORIZED, "unauthorized", String::new())),
            true => self.serve(endpoint, req).await,
        };
        let (status, result, body) = match out {
            Ok(json) => (StatusCode::OK, "ok", json),
            Err(Refusal(status, result, msg)) => {
                (status, result, format!("{{\"error\":{}}}", json_string(&msg)))
            }
        };
        self.metrics
            .admin_requests
            .with_label_values(&[endpoint, result])
            .inc();
        let mut resp = Response::new(body::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }

    /// `Authorization: Bearer <token>`, compared in constant time.
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let v = v.as_bytes();
        let Some((scheme, token)) = v
            .iter()
            .position(|b| *b == b' ')
            .map(|i| (&v[..i], &v[i + 1..]))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer") && Secret::new(token.to_vec()) == self.token
    }

    async fn serve<B>(&self, endpoint: &str, req: &Request<B>) -> Result<String, Refusal> {
        let params = Params::parse(req.uri().query().unwrap_or_default())?;
        if let Some(i) = &params.issuer
            && !self.issuers.contains(i)
        {
            return Err(bad("unknown issuer"));
        }
        match (endpoint, req.method()) {
            ("list", &Method::GET) => self.list(params).await,
            ("revoke", &Method::POST) => self.revoke(params).await,
            _ => Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "GET /sessions or POST /sessions/revoke".into(),
            )),
        }
    }

    async fn list(&self, p: Params) -> Result<String, Refusal> {
        if p.id.is_some() {
            return Err(bad("list by sub, sid or issuer"));
        }
        let limit = match p.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad("limit must be a number from 1 to 1000"))?,
        };
        // The store's index needs the issuer with a subject or sid: ask each issuer in turn.
        let issuers: Vec<Option<String>> = match (&p.issuer, p.sub.is_some() || p.sid.is_some()) {
            (None, true) => self.issuers.iter().cloned().map(Some).collect(),
            (issuer, _) => vec![issuer.clone()],
        };
        let mut out = Listing::default();
        for issuer in issuers {
            let filter = ListFilter {
                issuer,
                sub: p.sub.clone(),
                sid: p.sid.clone(),
            };
            let left = limit.saturating_sub(out.sessions.len());
            if left == 0 {
                out.truncated = true;
                break;
            }
            let got = self.browser.store().list(&filter, left).await.map_err(store)?;
            out.truncated |= got.truncated;
            out.sessions.extend(got.sessions);
        }
        serde_json::to_string(&out).map_err(|_| bad("listing could not be encoded"))
    }

    async fn revoke(&self, p: Params) -> Result<String, Refusal> {
        if p.limit.is_some() {
            return Err(bad("limit applies to listings"));
        }
        let issuers: Vec<String> = match &p.issuer {
            Some(i) => vec![i.clone()],
            None => self.issuers.to_vec(),
        };
        let targets: Vec<Revoke> = match (p.id, p.sid, p.sub) {
            (Some(id), None, None) if p.issuer.is_none() => vec![Revoke::Id(id)],
            (None, Some(sid), None) => issuers
                .into_iter()
                .map(|issuer| Revoke::Sid {
                    issuer,
                    sid: sid.clone(),
                })
                .collect(),
            (None, None, Some(sub)) => issuers
                .into_iter()
                .map(|issuer| Revoke::Sub {
                    issuer,
                    sub: sub.clone(),
                })
                .collect(),
            _ => return Err(bad("revoke one of: id, sid or sub (issuer goes with sid or sub)")),
        };
        let kind = match targets.first() {
            Some(Revoke::Id(_)) => "id",
            Some(Revoke::Sid { .. }) => "sid",
            _ => "sub",
        };
        let mut ids = Vec::new();
        for t in &targets {
            ids.extend(self.browser.revoke(t).await.map_err(store)?);
        }
        tracing::info!(by = kind, sessions = ids.len(), "sessions revoked by an operator");
        let out = Revoked {
            revoked: ids.len(),
            ids,
        };
        serde_json::to_string(&out).map_err(|_| bad("answer could not be encoded"))
    }
}

impl std::fmt::Debug for SessionAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAdmin")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

// === impl Params ===

impl Params {
    fn parse(query: &str) -> Result<Self, Refusal> {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*k {
                "id" => &mut p.id,
                "sub" => &mut p.sub,
                "sid" => &mut p.sid,
                "issuer" => &mut p.issuer,
                "limit" => &mut p.limit,
                _ => return Err(bad("unknown parameter (id, sub, sid, issuer, limit)")),
            };
            if slot.is_some() || v.is_empty() || v.len() > MAX_VALUE {
                return Err(bad("each parameter at most once, not empty, at most 1024 bytes"));
            }
            *slot = Some(v.into_owned());
        }
        Ok(p)
    }
}

fn bad(msg: &str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "bad_request", msg.to_string())
}

/// A store error as an answer: what it cannot do is the caller's to change (400), the rest
/// is an outage (503).
fn store(e: StoreError) -> Refusal {
    match e {
        StoreError::Unsupported(what) => bad(what),
        e => {
            tracing::warn!(error = %e, "session administration: the store failed");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the session store is unavailable".into(),
            )
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
