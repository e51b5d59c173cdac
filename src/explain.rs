//! `portcullis explain`: how the proxy would decide one request, step by step, without
//! serving it: the canonical host and path (the proxy's own canonicalisation), the route (or
//! 400 / 404 / 405 as the proxy would answer), the authentication result and every
//! `authorize` rule with its result, in the words of the access log and the rule metric.
//!
//! Nothing is fetched: a `--token` is decoded WITHOUT checking its signature (the output says
//! so on its own line), then its issuer, audience and times are checked against the config
//! as the proxy would; `--claims` are taken as given. Every rule is evaluated (the proxy
//! stops at the first enforced refusal), so each one's result is shown.
//!
//! Security notes: the token is never printed; claims are printed only as the identity's
//! issuer and subject.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use serde_json::{Map, Value};

use crate::authz::cel::{Facts, Mode};
use crate::authz::{Decision, Thoroughness};
use crate::claims::{ClaimSources, Identity};
use crate::config::{AuthMode, Config};
use crate::proxy::authorize::result_label;
use crate::routing::target::canonicalize;
use crate::routing::{Miss, Route, Router};

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Question {
    /// An absolute `http(s)://host/path?query` URL.
    pub url: String,
    /// The method (`GET` when not given).
    pub method: String,
    /// `Name: value` headers.
    pub headers: Vec<String>,
    /// The caller's credential.
    pub credential: Credential,
    /// `client.ip` (loopback when not given).
    pub client_ip: Option<IpAddr>,
}

/// What the caller presents.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Nothing.
    None,
    /// A bearer JWT (decoded, not verified).
    Token(String),
    /// Claims as JSON, taken as verified.
    Claims(String),
}

/// A question that cannot be asked (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// `--url` is not an absolute http(s) URL.
    #[error("--url must be an absolute http:// or https:// URL")]
    Url,
    /// A `--method` that is not a method.
    #[error("--method is not an HTTP method")]
    Method,
    /// A `--header` that is not `Name: value`.
    #[error("--header {0:?} is not `Name: value`")]
    Header(String),
    /// `--claims` is not a JSON object.
    #[error("--claims must be a JSON object")]
    Claims,
}

/// Explains `q` under `config` at `now`: the report, one step a line.
pub fn explain(config: &Config, q: &Question, now: SystemTime) -> Result<String, ExplainError> {
    let mut head = request_head(q)?;
    let mut out = String::new();
    let _ = writeln!(out, "request: {} {}", head.method, q.url);
    let target = match canonicalize(&mut head, &config.server.path_normalization) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "decision: 400 reason=bad_target ({e})");
            return Ok(out);
        }
    };
    let _ = writeln!(out, "canonical host: {}", target.host());
    let _ = writeln!(out, "canonical path: {}", target.path());
    let router = Router::new(&config.routes);
    let route = match router.find(target.host(), target.path(), &head.method) {
        Ok(r) => r.clone(),
        Err(Miss::NoRoute) => {
            let _ = writeln!(out, "route: none\ndecision: 404 reason=no_route");
            return Ok(out);
        }
        Err(Miss::Method { allow }) => {
            let allow = allow.to_str().unwrap_or("");
            let _ = writeln!(
                out,
                "route: none for this method (Allow: {allow})\ndecision: 405 reason=method_not_allowed"
            );
            return Ok(out);
        }
    };
    let _ = writeln!(out, "route: {} (routes[{}])", route.name, route.index);
    let Some(identity) = authenticate(config, &route, q, now, &mut out)? else {
        return Ok(out);
    };
    let _ = writeln!(
        out,
        "identity: issuer={} subject={}",
        identity.issuer,
        identity.subject.as_deref().unwrap_or("-")
    );
    let facts = Facts {
        method: head.method.as_str(),
        host: target.host(),
        path: target.path(),
        query: target.path_and_query().query().unwrap_or(""),
        headers: &head.headers,
        client_ip: q.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        now: unix(now),
    };
    authorize(&route, &identity, &facts, &mut out);
    Ok(out)
}

/// The request head the URL, method and headers describe.
fn request_head(q: &Question) -> Result<http::request::Parts, ExplainError> {
    let uri: Uri = q.url.parse().map_err(|_| ExplainError::Url)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ExplainError::Url);
    };
    if scheme != "http" && scheme != "https" {
        return Err(ExplainError::Url);
    }
    let method = Method::from_bytes(q.method.as_bytes()).map_err(|_| ExplainError::Method)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .map_err(|_| ExplainError::Url)?
        .into_parts()
        .0;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ExplainError::Url)?;
    head.headers.insert(http::header::HOST, host);
    for h in &q.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ExplainError::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError::Header(h.clone()))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
        head.headers.append(name, value);
    }
    Ok(head)
}

/// The authentication step: the identity, or `None` with the refusal written.
fn authenticate(
    config: &Config,
    route: &Route,
    q: &Question,
    now: SystemTime,
    out: &mut String,
) -> Result<Option<Identity>, ExplainError> {
    let mode = match route.auth {
        AuthMode::None => {
            let _ = writeln!(
                out,
                "authentication: none (a public route)\ndecision: forward"
            );
            return Ok(None);
        }
        AuthMode::Bearer => "bearer",
        AuthMode::Session => "session",
        AuthMode::Either => "either",
    };
    let claims = match &q.credential {
        Credential::None => {
            let answer = if route.auth == AuthMode::Bearer {
                "401"
            } else {
                "401, or 302 to sign in for a browser navigation"
            };
            let _ = writeln!(
                out,
                "authentication: {mode}: no credentials\ndecision: {answer} reason=missing"
            );
            return Ok(None);
        }
        Credential::Claims(json) => {
            let _ = writeln!(
                out,
                "authentication: {mode}: claims given (taken as verified)"
            );
            match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(m)) => m,
                _ => return Err(ExplainError::Claims),
            }
        }
        Credential::Token(token) => {
            let _ = writeln!(
                out,
                "authentication: {mode}: token decoded WITHOUT verifying its signature (explain fetches no keys)"
            );
            match decode(token) {
                Some(m) => m,
                None => {
                    let _ = writeln!(out, "decision: 401 reason=malformed");
                    return Ok(None);
                }
            }
        }
    };
    Ok(identity(config, route, claims, now, out))
}

/// The identity of `claims` under the issuer they name, or `None` with the refusal written
/// (unknown issuer, wrong audience, expired, not yet valid), as the proxy would refuse.
fn identity(
    config: &Config,
    route: &Route,
    claims: Map<String, Value>,
    now: SystemTime,
    out: &mut String,
) -> Option<Identity> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let issuer = config
        .issuers
        .iter()
        .enumerate()
        .find(|(i, ic)| ic.issuer == iss && route.issuer.is_none_or(|r| r == *i));
    let Some((_, ic)) = issuer else {
        let _ = writeln!(
            out,
            "decision: 401 reason=unknown_issuer (iss {iss:?} is not an issuer this route accepts)"
        );
        return None;
    };
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => ic.audiences.contains(a),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .any(|a| ic.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    let skew = i64::try_from(ic.clock_skew.as_secs()).unwrap_or(0);
    let now = unix(now);
    let time = |k: &str| claims.get(k).and_then(Value::as_i64);
    let refusal = if !aud_ok {
        Some("bad_audience")
    } else if time("exp").is_none_or(|exp| exp + skew <= now) {
        Some("expired")
    } else if time("nbf").is_some_and(|nbf| nbf - skew > now) {
        Some("not_yet_valid")
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = writeln!(out, "decision: 401 reason={reason}");
        return None;
    }
    let sources = ClaimSources {
        scopes: &ic.scope_claims,
        groups: &ic.groups_claim,
        roles: &ic.roles_claim,
    };
    let kept: Vec<String> = claims.keys().cloned().collect();
    Some(Identity::from_claims(
        &Arc::from(ic.name.as_str()),
        claims,
        sources,
        &kept,
    ))
}

/// Every rule of the route and the decision.
fn authorize(route: &Route, identity: &Identity, facts: &Facts<'_>, out: &mut String) {
    let policy = &route.policy;
    if policy.is_empty() {
        let _ = writeln!(out, "authorization: no rules\ndecision: forward");
        return;
    }
    let _ = writeln!(out, "authorization: match={:?}", policy.mode);
    for r in &policy.rules {
        let result = if r.holds(identity) { "allow" } else { "deny" };
        let _ = writeln!(out, "  rule={} result={result}", r.label());
    }
    let mut lines = Vec::new();
    let decision = policy.decide(
        identity,
        facts,
        &route.name,
        Thoroughness::Explain,
        &mut |_, rule, result| {
            let mode = match rule.mode {
                Mode::Enforce => "enforce",
                Mode::Shadow => "shadow",
            };
            let mut line = format!(
                "  rule={} mode={mode} result={}",
                rule.name,
                result_label(rule.mode, result)
            );
            if let crate::authz::cel::RuleResult::Error(reason) = result {
                let _ = write!(line, " reason={reason:?}");
            }
            if rule.mode == Mode::Shadow && result != crate::authz::cel::RuleResult::Allow {
                line.push_str(" (would deny; not enforced)");
            }
            lines.push(line);
        },
    );
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    match decision {
        Decision::Allow => {
            let _ = writeln!(out, "decision: forward");
        }
        Decision::Deny { rule, .. } => {
            let _ = writeln!(out, "decision: 403 reason=forbidden rule={}", rule.name());
        }
    }
}

/// A JWT's payload, decoded without verification.
fn decode(token: &str) -> Option<Map<String, Value>> {
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
