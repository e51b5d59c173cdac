//! External authorization: Portcullis as the authentication service of an ingress or gateway
//! (`external_auth.*`). A decision request describes an original request; it is decided
//! exactly as the proxy would decide that request, by the same steps: the same canonical
//! host and path (a spelling the proxy refuses with 400 is denied, never allowed), the same
//! route table, the same bearer / session authentication, `authorize` rules and outage rules.
//!
//! Dialects (how the original request is described, and how the answer must look):
//! - `nginx` (nginx `auth_request`, ingress-nginx `auth-url`): `X-Original-URL` (absolute)
//!   and `X-Original-Method`; nginx takes only 2xx, 401 and 403 (anything else becomes its
//!   500), so a sign-in redirect answers 401 (ingress-nginx's `auth-signin` sends the browser
//!   to sign in) and a refused request spelling, an unknown route or a refused method 403.
//! - `forward_auth` (Traefik ForwardAuth, Caddy `forward_auth`): `X-Forwarded-Method`,
//!   `-Proto`, `-Host`, `-Uri`; any non-2xx answer goes to the client as is, so a browser
//!   navigation gets the 302 to the IdP (with its login cookie) directly.
//! - `envoy` (Envoy's HTTP ext_authz, `path_prefix`; the Gateway API's ExternalAuth in HTTP
//!   form): the original path follows the prefix; method, `Host` and headers are the
//!   decision request's own; 200 allows, any other answer is the client's.
//! - `envoy_grpc` (Envoy's ext_authz over gRPC): see `proxy::grpc`, which translates a
//!   `CheckRequest` in and the verdict out to a `CheckResponse`.
//!
//! Every dialect goes through one engine, `Proxy::judge` (trusted peer, then the described
//! request decided as the proxy would, counted); the dialects only translate in (`describe`)
//! and out (`http_answer`, `grpc`'s `CheckResponse`).
//!
//! An allow is 200 with the identity headers (the configured ones, from the identity only),
//! `Authorization` when the route forwards a session's access token, the degraded marker in
//! outage grace, and a refreshed session cookie as `Set-Cookie`.
//!
//! Security notes: only `external_auth.trusted_peers` may describe a request (403 for anyone
//! else, logged and counted). The describing headers are required and must agree with one
//! another (a missing or malformed one is 400, never an allow); they are removed before the
//! original request is decided, and so are hop-by-hop headers. The original request's own
//! copies of identity headers cannot matter: identity comes from its credentials only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Response, StatusCode, Uri, request};

use super::{ConnInfo, Forwarding, Outcome, Proxy, ProxyError};
use crate::authn::browser::Origin;
use crate::body::{self, ProxyBody};
use crate::config::ExternalAuthConfig;
use crate::request_id;
use crate::routing::Miss;
use crate::routing::normalize::PathError;
use crate::routing::target::canonicalize;
use crate::upstream::ClientBody;
use crate::upstream::headers::remove_hop_by_hop;

/// Longest description of an original request's target accepted (`X-Original-URL`,
/// `X-Forwarded-Uri`): longer ones are refused (400), as the proxy's header limits would.
pub const MAX_ORIGINAL_URI: usize = 8 * 1024;

/// nginx's own caching time for a response, read before `Cache-Control`.
pub const X_ACCEL_EXPIRES: header::HeaderName = header::HeaderName::from_static("x-accel-expires");

/// Envoy's HTTP ext_authz answer header listing request headers to remove (comma-separated).
pub const ENVOY_HEADERS_TO_REMOVE: header::HeaderName =
    header::HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// How a decision request describes its original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// nginx `auth_request`, ingress-nginx `auth-url`.
    Nginx,
    /// Traefik ForwardAuth, Caddy `forward_auth`.
    ForwardAuth,
    /// Envoy's HTTP ext_authz service.
    Envoy,
}

// === impl Dialect ===

impl Dialect {
    /// The `dialect` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::ForwardAuth => "forward_auth",
            Self::Envoy => "envoy",
        }
    }

    /// The headers that describe the original request in this dialect (removed before the
    /// original request is decided).
    fn describing(self) -> &'static [&'static str] {
        match self {
            Self::Nginx => &["x-original-url", "x-original-method"],
            Self::ForwardAuth => &[
                "x-forwarded-method",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-uri",
            ],
            Self::Envoy => &[],
        }
    }
}

/// Whether `uri` is the start-sign-in path.
pub fn is_start(cfg: &ExternalAuthConfig, uri: &Uri) -> bool {
    cfg.start_path.as_deref() == Some(uri.path())
}

/// Which decision path a request's (raw) path is, if any: the dialect, and for Envoy the
/// original path and query that follow the prefix.
pub fn dialect_of<'p>(cfg: &ExternalAuthConfig, uri: &'p Uri) -> Option<(Dialect, Option<&'p str>)> {
    let path = uri.path();
    if cfg.nginx_path.as_deref() == Some(path) {
        return Some((Dialect::Nginx, None));
    }
    if cfg.forward_auth_path.as_deref() == Some(path) {
        return Some((Dialect::ForwardAuth, None));
    }
    let prefix = cfg.envoy_path_prefix.as_deref()?;
    let pq = uri.path_and_query().map_or(path, PathAndQuery::as_str);
    let rest = pq.strip_prefix(prefix)?;
    rest.starts_with('/').then_some((Dialect::Envoy, Some(rest)))
}

/// Why a decision request could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DescribeError {
    /// A describing header is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A describing header is repeated, too long, or not what it must be.
    #[error("{0} is malformed")]
    Malformed(&'static str),
    /// The original target has a byte no path may hold (raw non-ASCII, a control): the
    /// client's spelling, which the proxy itself refuses, not a broken description.
    #[error("the original target has a byte that is never valid in a path")]
    BadTarget,
}

/// What the engine decided about an original request (see `Proxy::judge`).
pub enum Verdict {
    /// Allowed: forward as this.
    Allow(Forwarding),
    /// A browser without a session: the sign-in redirect (302 to the IdP, login cookie).
    SignIn(Response<ProxyBody>),
    /// Refused: 401, 403, 404, 405, 400 for a refused spelling, 503 in an outage; 403 for a
    /// peer not trusted to describe requests.
    Deny(ProxyError),
    /// The decision request does not describe a request (400).
    Undescribed,
}

/// The answer to a decision request that does not describe a request: 400.
pub fn undescribed(json: bool) -> Response<ProxyBody> {
    crate::error::error_response(
        StatusCode::BAD_REQUEST,
        "the decision request does not describe a request",
        json,
    )
}

/// The one value of header `name`: none, several or a non-text one is an error.
fn one<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, DescribeError> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Err(DescribeError::Missing(name)),
        (Some(v), None) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= MAX_ORIGINAL_URI)
            .ok_or(DescribeError::Malformed(name)),
        _ => Err(DescribeError::Malformed(name)),
    }
}

/// The one value of the target header `name`, as [`one`]; a value that is not visible ASCII
/// is the client's target (nginx passes `$request_uri` raw), not a broken description.
fn one_target<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, DescribeError> {
    one(headers, name).map_err(|e| {
        let single = headers.get_all(name).iter().count() == 1;
        match headers.get(name) {
            Some(v) if single && v.len() <= MAX_ORIGINAL_URI && v.to_str().is_err() => {
                DescribeError::BadTarget
            }
            _ => e,
        }
    })
}

/// The original client's address as the front proxy says it: `X-Real-IP` (nginx,
/// ingress-nginx), else the last `X-Forwarded-For` entry (the one the calling proxy appended:
/// Traefik, Caddy, Envoy). Only for the log: identity never depends on it.
pub fn client_of(headers: &HeaderMap) -> Option<IpAddr> {
    let parse = |v: &str| v.trim().parse::<IpAddr>().ok();
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
    {
        return Some(ip);
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(parse)
}

fn method(name: &'static str, v: &str) -> Result<Method, DescribeError> {
    Method::from_bytes(v.as_bytes()).map_err(|_| DescribeError::Malformed(name))
}

fn scheme(name: &'static str, v: &str) -> Result<&'static str, DescribeError> {
    match v.trim() {
        p if p.eq_ignore_ascii_case("https") => Ok("https"),
        p if p.eq_ignore_ascii_case("http") => Ok("http"),
        _ => Err(DescribeError::Malformed(name)),
    }
}

/// The original request a decision request describes: its head (method, origin-form target,
/// headers with `Host` set to the original host) and its scheme.
pub fn describe(
    dialect: Dialect,
    decision: &request::Parts,
    envoy_rest: Option<&str>,
    listener_scheme: &'static str,
) -> Result<(request::Parts, &'static str), DescribeError> {
    let h = &decision.headers;
    let (method, scheme, host, target) = match dialect {
        Dialect::Nginx => {
            let url = one_target(h, "x-original-url")?;
            if url.contains('#') {
                return Err(DescribeError::Malformed("x-original-url"));
            }
            let uri: Uri = url
                .parse()
                .map_err(|_| DescribeError::Malformed("x-original-url"))?;
            let scheme = match uri.scheme() {
                Some(s) if *s == Scheme::HTTPS => "https",
                Some(s) if *s == Scheme::HTTP => "http",
                _ => return Err(DescribeError::Malformed("x-original-url")),
            };
            let authority = uri
                .authority()
                .filter(|a| !a.as_str().contains('@'))
                .ok_or(DescribeError::Malformed("x-original-url"))?;
            let m = method("x-original-method", one(h, "x-original-method")?)?;
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            (m, scheme, authority.as_str().to_string(), pq.to_string())
        }
        Dialect::ForwardAuth => {
            let m = method("x-forwarded-method", one(h, "x-forwarded-method")?)?;
            let scheme = scheme("x-forwarded-proto", one(h, "x-forwarded-proto")?)?;
            let host = one(h, "x-forwarded-host")?.to_string();
            let uri = one_target(h, "x-forwarded-uri")?;
            if !uri.starts_with('/') {
                return Err(DescribeError::Malformed("x-forwarded-uri"));
            }
            (m, scheme, host, uri.to_string())
        }
        Dialect::Envoy => {
            let rest = envoy_rest.ok_or(DescribeError::Malformed(":path"))?;
            let host = match (decision.uri.authority(), h.get(header::HOST)) {
                (Some(a), _) => a.as_str().to_string(),
                (None, Some(v)) => v
                    .to_str()
                    .map_err(|_| DescribeError::Malformed("host"))?
                    .to_string(),
                (None, None) => return Err(DescribeError::Missing("host")),
            };
            let scheme = match h.get("x-forwarded-proto").map(HeaderValue::to_str) {
                Some(Ok(p)) => scheme("x-forwarded-proto", p)?,
                Some(Err(_)) => return Err(DescribeError::Malformed("x-forwarded-proto")),
                None => listener_scheme,
            };
            (decision.method.clone(), scheme, host, rest.to_string())
        }
    };
    // http's parsers drop a fragment: `/public#/../admin` would be decided as `/public`
    // while the front proxy forwards all of it. No client sends one; refused.
    if target.contains('#') {
        return Err(DescribeError::Malformed("the original path"));
    }
    let uri: Uri = target
        .parse::<PathAndQuery>()
        .map(Uri::from)
        .map_err(|_| DescribeError::Malformed("the original path"))?;
    let host = HeaderValue::from_str(&host).map_err(|_| DescribeError::Malformed("host"))?;
    let mut headers = decision.headers.clone();
    remove_hop_by_hop(&mut headers, false);
    for name in dialect.describing() {
        headers.remove(*name);
    }
    headers.insert(header::HOST, host);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers = headers;
    Ok((parts, scheme))
}

impl<B: ClientBody> Proxy<B> {
    /// The start-sign-in path (ingress-nginx `auth-signin`): `rd` (a path on this host, or an
    /// absolute URL on a host of `auth.allowed_redirect_domains`) names the page; the sign-in
    /// is for the issuer of its session route, and comes back to it. Anything else is 400.
    pub(super) async fn start_sign_in(
        &self,
        head: &request::Parts,
        origin: &Origin,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if head.method != Method::GET && head.method != Method::HEAD {
            return Err(ProxyError::MethodNotAllowed {
                allow: HeaderValue::from_static("GET, HEAD"),
            });
        }
        let redirects = self.authn.redirects();
        let pairs = crate::authn::oidc::form::parse(head.uri.query().unwrap_or_default());
        let rd = crate::authn::oidc::form::get(&pairs, "rd").unwrap_or("/");
        let rd = crate::authn::oidc::login_return_target(rd, redirects);
        let refused = || ProxyError::Target(crate::routing::target::TargetError::Unsupported);
        // The page's host and path, in the proxy's canonical form.
        let (host, pq) = match rd.parse::<Uri>() {
            Ok(u) if u.scheme().is_some() => (
                u.authority().map(|a| a.as_str().to_string()).ok_or_else(refused)?,
                u.path_and_query().map_or("/", PathAndQuery::as_str).to_string(),
            ),
            _ => (origin.authority().to_string(), rd.clone()),
        };
        let mut page = http::Request::get(pq)
            .header(header::HOST, host)
            .body(())
            .map_err(|_| refused())?
            .into_parts()
            .0;
        let target = canonicalize(&mut page, &self.path_normalization)?;
        let route = self
            .router
            .find(target.host(), target.path(), &Method::GET)
            .map_err(|_| ProxyError::NoRoute)?;
        let (Some(browser), Some(slot), true) = (
            &self.sessions,
            route.issuer,
            matches!(
                route.auth,
                crate::config::AuthMode::Session | crate::config::AuthMode::Either
            ),
        ) else {
            return Err(ProxyError::NoRoute);
        };
        Ok(browser.start_login(slot, head, &rd, origin, redirects, None)?)
    }

    /// Decides the original request `decision` describes, and answers in `dialect`'s form.
    pub(super) async fn decide(
        &self,
        dialect: Dialect,
        decision: &request::Parts,
        envoy_rest: Option<&str>,
        conn: &ConnInfo,
        json: bool,
    ) -> Response<ProxyBody> {
        let described = describe(dialect, decision, envoy_rest, conn.proto);
        // The client's own copies of owned headers, for Envoy's removals.
        let copies = match (&described, dialect) {
            (Ok((head, _)), Dialect::Envoy) => self.identity.client_copies(&head.headers),
            _ => Vec::new(),
        };
        let client = client_of(&decision.headers);
        let (verdict, id) = self.judge(dialect.label(), conn.peer, client, described).await;
        let mut answer = self.http_answer(dialect, verdict, &copies, (json, &id));
        answer.headers_mut().insert(request_id::HEADER, id);
        answer
    }

    /// The engine of every dialect (the HTTP ones and `grpc`): only a peer of
    /// `external_auth.trusted_peers` may describe a request; the request it described is
    /// decided as the proxy would decide it (`decide_original`); the decision is counted under
    /// `dialect`. The dialects only translate their decision requests in (`described`) and
    /// the [`Verdict`] out. `client` (the original client's address, when the dialect says)
    /// is for the log.
    pub(super) async fn judge(
        &self,
        dialect: &'static str,
        peer: SocketAddr,
        client: Option<IpAddr>,
        described: Result<(request::Parts, &'static str), DescribeError>,
    ) -> (Verdict, HeaderValue) {
        let started = Instant::now();
        let trusted = self
            .external
            .trusted_peers
            .iter()
            .any(|c| c.contains(peer.ip()));
        // The described request's id (Envoy sends one) from a trusted peer, else a new one.
        let sent = described
            .as_ref()
            .ok()
            .and_then(|(head, _)| head.headers.get(request_id::HEADER));
        let id = request_id::for_request(sent, trusted);
        let (route, result, verdict) = match described {
            _ if !trusted => {
                tracing::warn!(%peer, ?client, dialect, "external auth: decision request from a peer not in external_auth.trusted_peers refused");
                let e = ProxyError::Forbidden {
                    scope: None,
                    rule: None,
                };
                (None, "untrusted_peer", Verdict::Deny(e))
            }
            Err(DescribeError::BadTarget) => {
                // Refused as the proxy refuses that path itself: 400 (nginx: 403, not its 500).
                let e = ProxyError::Target(PathError::BadChar.into());
                (None, "bad_request", Verdict::Deny(e))
            }
            Err(e) => {
                tracing::info!(%peer, ?client, dialect, error = %e, "external auth: the decision request does not describe a request");
                (None, "bad_request", Verdict::Undescribed)
            }
            Ok((head, scheme)) => {
                let client_ip = client.unwrap_or(peer.ip());
                self.decide_original(head, scheme, client_ip, &id).await
            }
        };
        let route = route.as_deref().unwrap_or("");
        self.external_decisions
            .with_label_values(&[dialect, route, result])
            .inc();
        self.external_decision_seconds
            .with_label_values(&[dialect])
            .observe(started.elapsed().as_secs_f64());
        (verdict, id)
    }

    /// Decides an original request as the proxy would: canonical host and path (a refused
    /// spelling is denied), route, authentication and authorization. The route's name, the
    /// result label and the verdict.
    async fn decide_original(
        &self,
        mut head: request::Parts,
        scheme: &'static str,
        client_ip: IpAddr,
        id: &HeaderValue,
    ) -> (Option<Arc<str>>, &'static str, Verdict) {
        let target = match canonicalize(&mut head, &self.path_normalization) {
            Ok(t) => t,
            Err(e) => return (None, "bad_request", Verdict::Deny(ProxyError::Target(e))),
        };
        let route = match self.router.find(target.host(), target.path(), &head.method) {
            Ok(r) => r.clone(),
            Err(miss) => {
                let e = match miss {
                    Miss::NoRoute => ProxyError::NoRoute,
                    Miss::Method { allow } => ProxyError::MethodNotAllowed { allow },
                };
                return (None, "no_route", Verdict::Deny(e));
            }
        };
        let origin = Origin::of(scheme, &target);
        let name = Some(route.name.clone());
        let view = super::RequestView {
            target: &target,
            client_ip,
            request_id: id,
        };
        match self.authn.run(&route, &head, &view, &origin).await {
            Ok(Outcome::Forward(mut f)) => {
                f.audience = self.audience(&route, &target).map(Arc::from);
                (name, "allow", Verdict::Allow(f))
            }
            Ok(Outcome::Respond(resp)) => (name, "sign_in", Verdict::SignIn(resp)),
            Err(e) => {
                let result = match e.status() {
                    StatusCode::UNAUTHORIZED => "unauthenticated",
                    StatusCode::FORBIDDEN => "forbidden",
                    s if s.is_server_error() => "unavailable",
                    _ => "denied",
                };
                (name, result, Verdict::Deny(e))
            }
        }
    }

    /// How long the caller may keep this allow (`external_auth.cache_max_age`): only an allow
    /// for a bearer token (a session's can be revoked or refreshed; a degraded one is
    /// temporary), never past the token's `exp`, nor past half an assertion's lifetime (an
    /// assertion is at most half its lifetime old when sent); `None`: `no-store`.
    fn cacheable_for(&self, f: &Forwarding) -> Option<u64> {
        let mut max = self.external.cache_max_age?.as_secs();
        if let (Some(a), Some(_)) = (&self.assertions, &f.audience) {
            max = max.min(a.lifetime() / 2);
        }
        match (&f.identity, &f.session) {
            (Some(identity), None) if !f.degraded && f.response_headers.is_empty() => {
                Some(max.min(self.authn.lifetime_left(identity))).filter(|s| *s > 0)
            }
            _ => None,
        }
    }

    /// The headers an allowed request goes on with: the identity headers (from the identity
    /// only) and the signed assertion, `Authorization` when the route forwards a session's
    /// access token (and the profile's access-token headers with it), and the degraded
    /// marker in outage grace.
    pub(super) fn upstream_headers(&self, f: &Forwarding) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = &f.authorization {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        self.send_identity(&mut h, f, f.audience.as_deref());
        if f.degraded
            && let Some(name) = self.sessions.as_ref().and_then(|b| b.degraded_header())
        {
            h.insert(name.clone(), HeaderValue::from_static("1"));
        }
        h
    }

    /// A verdict as an HTTP dialect's answer: an allow is 200 with the upstream headers and a
    /// refreshed session cookie; nginx gets 401 instead of a sign-in redirect.
    /// `copies`: the client's own copies of owned headers (Envoy's removals).
    fn http_answer(
        &self,
        dialect: Dialect,
        verdict: Verdict,
        copies: &[HeaderName],
        (json, id): (bool, &HeaderValue),
    ) -> Response<ProxyBody> {
        match verdict {
            Verdict::Allow(f) => {
                let mut resp = Response::new(body::empty());
                let h = resp.headers_mut();
                match self.cacheable_for(&f) {
                    Some(secs) => {
                        // X-Accel-Expires first: nginx reads it before Cache-Control and then
                        // caches a `private` answer (its proxy_cache skips `private` otherwise).
                        h.insert(X_ACCEL_EXPIRES, HeaderValue::from(secs));
                        if let Ok(v) = HeaderValue::try_from(format!("private, max-age={secs}")) {
                            h.insert(header::CACHE_CONTROL, v);
                        }
                        h.insert(header::VARY, HeaderValue::from_static("Authorization"));
                    }
                    None => {
                        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    }
                }
                h.extend(self.upstream_headers(&f));
                if dialect == Dialect::Envoy {
                    // Envoy removes what this lists from the request it forwards: the
                    // client's copies of the owned headers the answer does not set (and its
                    // Authorization, where the route does not forward it).
                    let mut remove = self.identity.to_remove(copies, h);
                    if f.strip_authorization && !h.contains_key(header::AUTHORIZATION) {
                        remove.push(header::AUTHORIZATION.as_str());
                    }
                    if let Ok(v) = HeaderValue::try_from(remove.join(", ")) {
                        h.insert(ENVOY_HEADERS_TO_REMOVE, v);
                    }
                }
                h.extend(f.response_headers);
                resp
            }
            Verdict::SignIn(resp) if dialect == Dialect::Nginx => {
                // nginx cannot pass a redirect on: 401, and `auth-signin` starts the sign-in.
                let mut deny = ProxyError::Unauthenticated(crate::authn::AuthnError::Missing)
                    .to_response(json, &self.realm);
                drop(resp);
                deny.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                deny
            }
            Verdict::SignIn(resp) => resp,
            Verdict::Deny(e) => self.deny(dialect, e, json, id),
            Verdict::Undescribed => undescribed(json),
        }
    }

    /// A refusal in `dialect`'s form: nginx takes only 401 and 403 as denials (a 5xx stays a
    /// 5xx: nginx answers it with 500, not a challenge that would send users to sign in).
    fn deny(
        &self,
        dialect: Dialect,
        e: ProxyError,
        json: bool,
        id: &HeaderValue,
    ) -> Response<ProxyBody> {
        let mut resp = e.respond(json, &self.realm, Some(id));
        if dialect == Dialect::Nginx {
            let s = resp.status();
            if s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN && !s.is_server_error()
            {
                *resp.status_mut() = StatusCode::FORBIDDEN;
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ExternalAuthConfig {
        ExternalAuthConfig {
            nginx_path: Some("/_auth/nginx".into()),
            forward_auth_path: Some("/_auth/forward".into()),
            envoy_path_prefix: Some("/_auth/envoy".into()),
            envoy_grpc: false,
            start_path: None,
            trusted_peers: Vec::new(),
            cache_max_age: None,
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_else(|e| panic!("{e}")).into_parts().0
    }

    #[test]
    fn decision_paths_are_found_by_their_exact_path_or_the_envoy_prefix() {
        let c = cfg();
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dialect_of(&c, &uri("/_auth/nginx")), Some((Dialect::Nginx, None)));
        assert_eq!(dialect_of(&c, &uri("/_auth/nginx?x=1")), Some((Dialect::Nginx, None)));
        assert_eq!(dialect_of(&c, &uri("/_auth/nginx/")), None);
        assert_eq!(dialect_of(&c, &uri("/_auth/forward")), Some((Dialect::ForwardAuth, None)));
        assert_eq!(
            dialect_of(&c, &uri("/_auth/envoy/app/x?y=1")),
            Some((Dialect::Envoy, Some("/app/x?y=1")))
        );
        assert_eq!(dialect_of(&c, &uri("/_auth/envoyx/app")), None);
        assert_eq!(dialect_of(&c, &uri("/_auth/envoy")), None);
        assert_eq!(dialect_of(&c, &uri("/app")), None);
    }

    #[test]
    fn nginx_describes_the_original_request_by_url_and_method() {
        let d = req(
            "/_auth/nginx",
            &[
                ("x-original-url", "https://app.example.com/a/b?c=1"),
                ("x-original-method", "POST"),
                ("authorization", "Bearer t"),
                ("host", "portcullis.auth.svc"),
                ("connection", "authorization"),
            ],
        );
        let (o, scheme) = describe(Dialect::Nginx, &d, None, "http").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scheme, "https");
        assert_eq!(o.method, Method::POST);
        assert_eq!(o.uri, "/a/b?c=1");
        assert_eq!(o.headers[header::HOST], "app.example.com");
        assert!(o.headers.get("x-original-url").is_none());
        assert!(o.headers.get("x-original-method").is_none());
        // Hop-by-hop out first: a Connection header cannot name the credentials away, and
        // does not itself reach the decision.
        assert!(o.headers.get(header::CONNECTION).is_none());
    }

    #[test]
    fn forward_auth_describes_the_original_request_by_its_four_headers() {
        let d = req(
            "/_auth/forward",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com"),
                ("x-forwarded-uri", "/x/%2e%2e/admin"),
            ],
        );
        let (o, scheme) =
            describe(Dialect::ForwardAuth, &d, None, "http").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((scheme, o.method.as_str()), ("https", "GET"));
        // Passed on as sent: the canonical form (here: a refusal) is the proxy's.
        assert_eq!(o.uri, "/x/%2e%2e/admin");
        assert_eq!(o.headers[header::HOST], "app.example.com");
    }

    #[test]
    fn a_missing_repeated_or_malformed_description_is_refused() {
        type Case<'a> = (Dialect, &'a [(&'a str, &'a str)], DescribeError);
        let cases: [Case<'_>; 10] = [
            (Dialect::Nginx, &[("x-original-method", "GET")], DescribeError::Missing("x-original-url")),
            (Dialect::Nginx, &[("x-original-url", "https://a/")], DescribeError::Missing("x-original-method")),
            (Dialect::Nginx, &[("x-original-url", "/relative"), ("x-original-method", "GET")], DescribeError::Malformed("x-original-url")),
            (Dialect::Nginx, &[("x-original-url", "https://u@evil/"), ("x-original-method", "GET")], DescribeError::Malformed("x-original-url")),
            (Dialect::Nginx, &[("x-original-url", "ftp://a/"), ("x-original-method", "GET")], DescribeError::Malformed("x-original-url")),
            (Dialect::Nginx, &[("x-original-url", "https://a/public#/../api"), ("x-original-method", "GET")], DescribeError::Malformed("x-original-url")),
            (
                Dialect::ForwardAuth,
                &[("x-forwarded-method", "GET"), ("x-forwarded-method", "POST"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "a"), ("x-forwarded-uri", "/")],
                DescribeError::Malformed("x-forwarded-method"),
            ),
            (
                Dialect::ForwardAuth,
                &[("x-forwarded-method", "GET"), ("x-forwarded-proto", "gopher"), ("x-forwarded-host", "a"), ("x-forwarded-uri", "/")],
                DescribeError::Malformed("x-forwarded-proto"),
            ),
            (
                Dialect::ForwardAuth,
                &[("x-forwarded-method", "GET"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "a"), ("x-forwarded-uri", "x")],
                DescribeError::Malformed("x-forwarded-uri"),
            ),
            (
                Dialect::ForwardAuth,
                &[("x-forwarded-method", "GET"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "a"), ("x-forwarded-uri", "/public#/../api")],
                DescribeError::Malformed("the original path"),
            ),
        ];
        for (dialect, headers, want) in cases {
            let d = req("/_auth", headers);
            assert_eq!(describe(dialect, &d, None, "http").err(), Some(want.clone()), "{headers:?}");
        }
        let huge = format!("https://a/{}", "x".repeat(MAX_ORIGINAL_URI));
        let d = req("/_auth", &[("x-original-url", &huge), ("x-original-method", "GET")]);
        assert_eq!(
            describe(Dialect::Nginx, &d, None, "http").err(),
            Some(DescribeError::Malformed("x-original-url"))
        );
    }

    #[test]
    fn the_client_is_x_real_ip_else_the_last_forwarded_for_entry() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let d = req("/", &[("x-real-ip", "192.0.2.7"), ("x-forwarded-for", "10.0.0.1")]);
        assert_eq!(client_of(&d.headers), ip("192.0.2.7"));
        let d = req(
            "/",
            &[("x-forwarded-for", "203.0.113.9, 10.0.0.1"), ("x-forwarded-for", "198.51.100.2, 2001:db8::5")],
        );
        assert_eq!(client_of(&d.headers), ip("2001:db8::5"));
        let d = req("/", &[("x-real-ip", "not an address"), ("x-forwarded-for", "garbage")]);
        assert_eq!(client_of(&d.headers), None);
        assert_eq!(client_of(&req("/", &[]).headers), None);
    }

    #[test]
    fn envoy_describes_the_original_request_by_the_path_after_its_prefix() {
        let d = req("/_auth/envoy/app?q=1", &[("host", "app.example.com")]);
        let (o, scheme) =
            describe(Dialect::Envoy, &d, Some("/app?q=1"), "http").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((scheme, o.uri.to_string().as_str()), ("http", "/app?q=1"));
        assert_eq!(o.headers[header::HOST], "app.example.com");
    }
}
