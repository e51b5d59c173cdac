//! Envoy's external authorization over gRPC (`external_auth.envoy_grpc`): Portcullis serves
//! `envoy.service.auth.v3.Authorization/Check` on the proxy listeners, over HTTP/2 (h2c with
//! prior knowledge on a plain listener, ALPN `h2` on a TLS one), for Envoy's `ext_authz`
//! filter with a `grpc_service`, Envoy Gateway's `SecurityPolicy` `extAuth.grpc` and Istio's
//! `envoyExtAuthzGrpc` provider.
//!
//! A dialect of `external`: this module only translates. In: the `CheckRequest`'s
//! `attributes.request.http` (method, scheme, host, path with query, headers or raw
//! `header_map`) becomes the original request's head, as the HTTP dialects' `describe` makes
//! it; the engine (`Proxy::judge`) decides it as the proxy would. Out: the verdict becomes a
//! `CheckResponse`:
//! - allow: status OK with an `OkHttpResponse`: `headers` (overwrite) are the identity
//!   headers, `Authorization` when the route forwards a session's access token, the degraded
//!   marker; `headers_to_remove` are the owned header names (identity headers,
//!   `auth.strip_headers`, the degraded marker, and any client header that spells one of
//!   them) that are not set, and `authorization` where the proxy would drop the client's;
//!   `Cookie` loses Portcullis's own cookies, as on the proxy path;
//!   `response_headers_to_add` carries a refreshed session cookie.
//! - deny: UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT or UNAVAILABLE
//!   with a `DeniedHttpResponse` that is the proxy's own answer (status, `WWW-Authenticate`,
//!   `Retry-After`, body); a browser without a session gets the 302 to the IdP with its login
//!   cookie the same way.
//!
//! The gRPC framing is tonic's (`tonic::server::Grpc` with the prost codec over the message
//! types `envoy-types` generates from Envoy's API): the same call the generated
//! `AuthorizationServer` makes, without its `Arc`'d `'static` implementor, since the handler
//! is borrowed for one request.
//!
//! Security notes: only `external_auth.trusted_peers` (the connection's peer: Envoy) may ask;
//! anyone else gets PERMISSION_DENIED, never an allow. A check request that is missing a
//! field, contradicts itself (`:path` against `path`, two header forms) or is too large is
//! denied with 400 (INVALID_ARGUMENT) and logged; a message over [`MAX_CHECK_BYTES`] is a gRPC
//! error, which Envoy turns into a denial unless `failure_mode_allow` is set (never set it).
//! The body of the check request is read under `server.body_read_timeout`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::address::Address as PbAddress;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as PbHeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, request};
use http_body_util::BodyExt;
use tonic::Code;

use super::body_timeout::TimedBody;
use super::external::{DescribeError, MAX_ORIGINAL_URI, Verdict, undescribed};
use super::{ConnInfo, OWN_ROUTE, Proxy};
use crate::body::{BoxError, ProxyBody};
use crate::config::ExternalAuthConfig;
use crate::upstream::ClientBody;
use crate::upstream::headers::remove_hop_by_hop_except;

/// The path of the one method served.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `dialect` metric label.
pub const DIALECT: &str = "envoy_grpc";

/// Largest check request read (the encoded message). Envoy sends the request's headers
/// (60 KiB at most by default) and, only with `with_request_body`, its body, which no
/// decision here needs.
pub const MAX_CHECK_BYTES: usize = 256 * 1024;

/// Most headers a described request may have (the proxy's own limit for a request is in
/// bytes; this bounds the work on a message within [`MAX_CHECK_BYTES`]).
pub const MAX_CHECK_HEADERS: usize = 256;

/// Longest `host` accepted.
const MAX_HOST: usize = 1024;

/// One Check call, decided by a borrowed handler (tonic's unary service).
struct Check<'a, B> {
    proxy: &'a Proxy<B>,
    conn: &'a ConnInfo,
}

/// Whether `req` is a Check call to serve: the dialect is on, and it is an HTTP/2 `POST` of
/// `application/grpc` to [`CHECK_PATH`].
pub fn is_check<T>(cfg: &ExternalAuthConfig, req: &Request<T>) -> bool {
    cfg.envoy_grpc
        && req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && req.uri().path() == CHECK_PATH
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"))
}

/// The original request a check request describes: its head (as the HTTP dialects'
/// `describe` makes it: method, origin-form target, headers with `Host` set, hop-by-hop
/// headers out) and its scheme. Envoy's pseudo-headers are checked against the fields and
/// left out.
pub fn describe_check(check: &CheckRequest) -> Result<(request::Parts, &'static str), DescribeError> {
    let http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or(DescribeError::Missing("attributes.request.http"))?;
    let method = field(&http.method, "method", 32)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| DescribeError::Malformed("method"))?;
    let scheme = match field(&http.scheme, "scheme", 8)? {
        s if s.eq_ignore_ascii_case("https") => "https",
        s if s.eq_ignore_ascii_case("http") => "http",
        _ => return Err(DescribeError::Malformed("scheme")),
    };
    let host = field(&http.host, "host", MAX_HOST)?;
    let path = field(&http.path, "path", MAX_ORIGINAL_URI)?;
    // Always empty (the query is in `path`; a fragment is never sent): anything else is a
    // description this code does not understand.
    if !http.query.is_empty() {
        return Err(DescribeError::Malformed("query"));
    }
    if !http.fragment.is_empty() {
        return Err(DescribeError::Malformed("fragment"));
    }
    // `http` drops a fragment when it parses a target: a `#` would describe another target
    // than the one sent (no client sends one; Envoy refuses them by default).
    if !path.starts_with('/') || path.contains('#') {
        return Err(DescribeError::Malformed("path"));
    }
    let uri: Uri = path
        .parse::<PathAndQuery>()
        .map(Uri::from)
        .map_err(|_| DescribeError::Malformed("path"))?;
    let mut headers = headers(http)?;
    // Pseudo-headers and Host, when sent, must agree with the fields (they are not kept).
    for (pseudo, want) in [(":method", method.as_str()), (":path", path), (":authority", host)] {
        if let Some(v) = pseudo_value(http, pseudo)
            && v != want
        {
            return Err(DescribeError::Malformed(pseudo));
        }
    }
    if headers
        .get_all(header::HOST)
        .iter()
        .any(|v| v.as_bytes() != host.as_bytes())
    {
        return Err(DescribeError::Malformed("host"));
    }
    let host = HeaderValue::from_str(host).map_err(|_| DescribeError::Malformed("host"))?;
    // Hop-by-hop headers out; a `Connection` token removes nothing: what Envoy forwards is
    // what it described (Envoy already dealt with `Connection`), and a token naming the
    // credentials must not make them disappear from the decision.
    remove_hop_by_hop_except(&mut headers, false, |_| true);
    headers.insert(header::HOST, host);
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok((parts, scheme))
}

/// A required text field: present and at most `max` bytes.
fn field<'s>(v: &'s str, name: &'static str, max: usize) -> Result<&'s str, DescribeError> {
    match v {
        "" => Err(DescribeError::Missing(name)),
        v if v.len() > max => Err(DescribeError::Malformed(name)),
        v => Ok(v),
    }
}

/// The original request's headers, from `headers` (merged values) or `header_map` (raw, with
/// `encode_raw_headers`), never both; pseudo-headers left out.
fn headers(http: &HttpRequest) -> Result<HeaderMap, DescribeError> {
    let raw = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
    if !raw.is_empty() && !http.headers.is_empty() {
        return Err(DescribeError::Malformed("headers"));
    }
    if raw.len().max(http.headers.len()) > MAX_CHECK_HEADERS {
        return Err(DescribeError::Malformed("headers"));
    }
    let mut out = HeaderMap::with_capacity(raw.len().max(http.headers.len()));
    let mut add = |name: &str, value: &[u8]| -> Result<(), DescribeError> {
        if name.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| DescribeError::Malformed("headers"))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| DescribeError::Malformed("headers"))?;
        out.append(name, value);
        Ok(())
    };
    for (k, v) in &http.headers {
        add(k, v.as_bytes())?;
    }
    for h in raw {
        // `raw_value` with `encode_raw_headers`; `value` from older senders.
        let value = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        add(&h.key, value)?;
    }
    Ok(out)
}

/// A pseudo-header's value in either header form.
fn pseudo_value<'h>(http: &'h HttpRequest, name: &str) -> Option<&'h str> {
    if let Some(v) = http.headers.get(name) {
        return Some(v);
    }
    http.header_map.as_ref().and_then(|m| {
        m.headers.iter().find(|h| h.key == name).map(|h| {
            if h.raw_value.is_empty() {
                h.value.as_str()
            } else {
                std::str::from_utf8(&h.raw_value).unwrap_or("")
            }
        })
    })
}

/// The client's address (`attributes.source.address.socket_address`), for the log.
pub fn client_address(check: &CheckRequest) -> Option<IpAddr> {
    let address = check
        .attributes
        .as_ref()?
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?;
    match address {
        PbAddress::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

/// A header as Envoy's `HeaderValueOption`: `Set-Cookie` is added (one line each), anything
/// else replaces what the request or response has.
fn option(name: &HeaderName, value: &HeaderValue) -> HeaderValueOption {
    let action = if name == header::SET_COOKIE {
        HeaderAppendAction::AppendIfExistsOrAdd
    } else {
        HeaderAppendAction::OverwriteIfExistsOrAdd
    };
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ..PbHeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

/// An allow: `set` goes on the request (overwriting), every name of `remove` not in `set` is
/// removed, `client` goes on the response.
pub fn allowed(set: &HeaderMap, remove: &[String], client: &HeaderMap) -> CheckResponse {
    let mut headers_to_remove: Vec<String> = remove
        .iter()
        .filter(|n| !set.contains_key(n.as_str()))
        .cloned()
        .collect();
    headers_to_remove.sort_unstable();
    headers_to_remove.dedup();
    CheckResponse {
        status: Some(RpcStatus {
            code: Code::Ok as i32,
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set.iter().map(|(n, v)| option(n, v)).collect(),
            headers_to_remove,
            response_headers_to_add: client.iter().map(|(n, v)| option(n, v)).collect(),
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

/// A denial carrying the proxy's answer `resp` (its status, headers and body) for Envoy to
/// send the client; the gRPC code says why.
pub async fn denied(resp: Response<ProxyBody>) -> CheckResponse {
    let (parts, body) = resp.into_parts();
    // An in-memory body (an error page or a redirect's): collecting it does not wait.
    let body = match body.collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let code = code_for(parts.status);
    CheckResponse {
        status: Some(RpcStatus {
            code: code as i32,
            message: parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .to_string(),
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers: parts.headers.iter().map(|(n, v)| option(n, v)).collect(),
            body,
        })),
        ..CheckResponse::default()
    }
}

/// The gRPC code of a denial answered with `status`.
pub fn code_for(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        // A sign-in redirect, or a challenge.
        s if s.is_redirection() || s == StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        s if s.is_server_error() => Code::Unavailable,
        _ => Code::PermissionDenied,
    }
}

// === impl Check ===

impl<'a, B: ClientBody> tower_service::Service<tonic::Request<CheckRequest>> for Check<'a, B> {
    type Response = tonic::Response<CheckResponse>;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, tonic::Status>> + Send + 'a>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<CheckRequest>) -> Self::Future {
        let (proxy, conn) = (self.proxy, self.conn);
        Box::pin(async move {
            let check = req.into_inner();
            Ok(tonic::Response::new(proxy.check(&check, conn).await))
        })
    }
}

// === impl Proxy ===

impl<B: ClientBody> Proxy<B> {
    /// Serves one Check call: tonic reads the message (at most [`MAX_CHECK_BYTES`], each read
    /// within `server.body_read_timeout`) and writes the answer with its gRPC status.
    pub(super) async fn serve_check(&self, req: Request<B>, conn: &ConnInfo) -> Response<ProxyBody> {
        let (head, body) = req.into_parts();
        let body = TimedBody::new(body, || self.body_timer(Arc::from(OWN_ROUTE), conn));
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
            .apply_max_message_size_config(Some(MAX_CHECK_BYTES), None);
        let resp = grpc
            .unary(Check { proxy: self, conn }, Request::from_parts(head, body))
            .await;
        resp.map(|b| b.map_err(BoxError::from).boxed_unsync())
    }

    /// Decides a check request (the engine: `judge`) and answers it as Envoy reads it.
    async fn check(&self, check: &CheckRequest, conn: &ConnInfo) -> CheckResponse {
        let described = describe_check(check);
        let (json, copies) = match &described {
            Ok((head, _)) => (
                crate::error::accepts_json(&head.headers),
                // The client's own spellings of owned headers (`X_Auth_Request_User`).
                self.identity.client_copies(&head.headers),
            ),
            Err(_) => (false, Vec::new()),
        };
        let cookie = match &described {
            Ok((head, _)) => self.forwarded_cookie(&head.headers),
            Err(_) => None,
        };
        let client = client_address(check);
        let (verdict, id) = self.judge(DIALECT, conn.peer, client, described).await;
        match verdict {
            Verdict::Allow(f) => {
                let mut set = self.upstream_headers(&f);
                let mut remove: Vec<String> = self
                    .identity
                    .to_remove(&copies, &set)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if f.strip_authorization {
                    remove.push(header::AUTHORIZATION.as_str().to_string());
                }
                match cookie {
                    Some(Some(v)) => {
                        set.insert(header::COOKIE, v);
                    }
                    Some(None) => remove.push(header::COOKIE.as_str().to_string()),
                    None => {}
                }
                allowed(&set, &remove, &f.response_headers)
            }
            Verdict::SignIn(resp) => denied(resp).await,
            Verdict::Deny(e) => denied(e.respond(json, &self.realm, Some(&id))).await,
            Verdict::Undescribed => denied(undescribed(json)).await,
        }
    }

    /// The client's `Cookie` as the proxy forwards it (Portcullis's session and login cookies
    /// out), when that differs from what was sent: `Some(None)` when nothing is left.
    fn forwarded_cookie(&self, headers: &HeaderMap) -> Option<Option<HeaderValue>> {
        let browser = self.sessions.as_ref()?;
        let mut cookies = HeaderMap::new();
        for v in headers.get_all(header::COOKIE) {
            cookies.append(header::COOKIE, v.clone());
        }
        if cookies.is_empty() {
            return None;
        }
        let sent = cookies.clone();
        browser.strip_cookies(&mut cookies);
        (cookies != sent).then(|| cookies.remove(header::COOKIE))
    }
}

#[cfg(test)]
mod tests;
