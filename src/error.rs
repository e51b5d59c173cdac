//! The one place that turns an error into an HTTP response: status, a short safe body (JSON
//! when the client accepts JSON), and who caused it.
//!
//! No usable signing keys for an issuer is an outage, not a bad token: 503 with `Retry-After`
//! and no `invalid_token` challenge, so clients keep their tokens and retry instead of sending
//! users to sign in again (the storm the key handling exists to prevent).
//!
//! Security notes: bodies never include internal details (addresses, causes); those go to the
//! log and metrics.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::authn::AuthnError;
use crate::routing::normalize::PathError;
use crate::routing::target::TargetError;
use crate::upstream::{ProxyBody, UpstreamError, body};

/// `Retry-After` (seconds) on a 503 for unavailable signing keys: a failed background refresh
/// is retried within seconds at first, so clients come back soon, without a tight loop.
pub const KEYS_UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Why a request was answered by Portcullis itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches host and path.
    #[error("no route matches")]
    NoRoute,
    /// Host and path select a route, but not for this method (405); `allow` lists the methods
    /// the selected routes accept (`Allow`). CONNECT is refused this way on every route.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The `Allow` header's value.
        allow: HeaderValue,
    },
    /// Both Content-Length and Transfer-Encoding: a request-smuggling risk, never forwarded.
    #[error("request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// The request target or `Host` is not acceptable (400).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// No valid credentials (401, or 400 for a malformed request).
    #[error("not authenticated: {0}")]
    Unauthenticated(#[from] AuthnError),
    /// Authenticated, but the route's rules refuse this identity (403).
    #[error("forbidden")]
    Forbidden {
        /// The scopes the route asks for, for `WWW-Authenticate`.
        scope: Option<String>,
    },
    /// The session store could not answer (503, `Retry-After`): not the client's fault, so
    /// no challenge that would send it to sign in again.
    #[error("session store unavailable")]
    SessionStore,
    /// The request body of an own path (back-channel logout) is too large or broken.
    #[error("request body unreadable or too large")]
    BadBody,
    /// The client sent no more of the request body within `server.body_read_timeout` (408).
    #[error("request body timed out")]
    BodyTimeout,
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

// === impl ProxyError ===

impl From<crate::authn::Refusal> for ProxyError {
    fn from(r: crate::authn::Refusal) -> Self {
        match r {
            crate::authn::Refusal::Unauthenticated(e) => Self::Unauthenticated(e),
            crate::authn::Refusal::Forbidden { scope } => Self::Forbidden { scope },
            crate::authn::Refusal::SessionStore => Self::SessionStore,
        }
    }
}

impl ProxyError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::AmbiguousFraming | Self::Target(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(AuthnError::InvalidRequest) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(AuthnError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::SessionStore => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadBody => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short, safe description for the response body.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::NoRoute => "no route for this request",
            Self::MethodNotAllowed { .. } => "method not allowed",
            Self::AmbiguousFraming => "conflicting Content-Length and Transfer-Encoding",
            Self::Target(t) => target_message(t),
            Self::Unauthenticated(AuthnError::Missing) => "authentication required",
            Self::Unauthenticated(AuthnError::InvalidRequest) => "malformed Authorization header",
            Self::Unauthenticated(AuthnError::KeysUnavailable) => {
                "token cannot be checked now: the identity provider's signing keys are unavailable; retry later"
            }
            Self::Unauthenticated(_) => "invalid token",
            Self::Forbidden { .. } => "insufficient scope",
            Self::SessionStore => "sessions are temporarily unavailable; retry later",
            Self::BadBody => "request body unreadable or too large",
            Self::BodyTimeout => "request body timed out",
            Self::Upstream(UpstreamError::Timeout { .. }) => "upstream timed out",
            Self::Upstream(_) => "upstream unavailable",
        }
    }

    /// The response, JSON when `json` (the client accepts JSON). Authentication failures carry
    /// `WWW-Authenticate` as RFC 6750 describes, with `realm`.
    pub fn into_response(&self, json: bool, realm: &str) -> Response<ProxyBody> {
        let mut resp = error_response(self.status(), self.public_message(), json);
        if let Self::MethodNotAllowed { allow } = self {
            resp.headers_mut().insert(header::ALLOW, allow.clone());
        }
        let challenge = match self {
            Self::Unauthenticated(AuthnError::Missing) => Some(format!("Bearer realm=\"{realm}\"")),
            Self::Unauthenticated(AuthnError::InvalidRequest) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\""
            )),
            // Not the token's fault: no challenge, so the client keeps it and retries.
            Self::Unauthenticated(AuthnError::KeysUnavailable) | Self::SessionStore => {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(KEYS_UNAVAILABLE_RETRY_AFTER_SECS),
                );
                None
            }
            Self::Unauthenticated(e) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{e}\""
            )),
            Self::Forbidden { scope } => Some(match scope {
                Some(s) => {
                    format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{s}\"")
                }
                None => format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\""),
            }),
            _ => None,
        };
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

/// The public message for a refused target or `Host`.
fn target_message(e: &TargetError) -> &'static str {
    match e {
        TargetError::Path(p) => match p {
            PathError::NotAbsolute => "path must start with /",
            PathError::DotSegments => "path must not contain . or .. segments",
            PathError::EscapedSlash => "path must not contain %2F or %5C",
            PathError::Backslash => "path must not contain a backslash",
            PathError::PathParameters => "path must not contain ; parameters",
            PathError::DoubleEncoding => "path must not contain double-encoded escapes",
            PathError::BadEscape => "path has a malformed percent escape",
            PathError::ControlChar => "path must not contain escaped control characters",
            PathError::InvalidUtf8 => "path escapes must be UTF-8",
            PathError::BadChar => "path has a character that must be percent-encoded",
        },
        TargetError::MissingHost => "Host header required",
        TargetError::MultipleHosts => "more than one Host header",
        TargetError::InvalidHost => "invalid Host",
        TargetError::HostConflict => "Host does not match :authority",
        TargetError::BadMethod => "method must be upper-case letters, - or _",
        TargetError::Unsupported => "unsupported request target",
    }
}

/// A small error response: `{"error": "...", "status": N}` for JSON clients, text otherwise.
pub fn error_response(status: StatusCode, message: &str, json: bool) -> Response<ProxyBody> {
    let (body, content_type) = if json {
        (
            serde_json::json!({ "error": message, "status": status.as_u16() }).to_string(),
            "application/json",
        )
    } else {
        (
            format!("{} {message}\n", status.as_u16()),
            "text/plain; charset=utf-8",
        )
    };
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// True when the client's `Accept` asks for JSON.
pub fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") || v.contains("+json"))
}
