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
use crate::authn::browser::{LogoutError, OwnPathError, SignInError, SignInFailure, pages};
use crate::authz::Decider;
use crate::body::{self, ProxyBody};
use crate::routing::normalize::PathError;
use crate::routing::target::TargetError;
use crate::upstream::UpstreamError;

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
        /// The rule that refused (for the access log; never in the response).
        rule: Option<Decider>,
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
    /// Sign-in could not start or finish (a page with a way to start again; the login cookie
    /// cleared), or sessions are unavailable to a browser navigation.
    #[error("sign-in failed: {0}")]
    SignIn(#[from] SignInError),
    /// A back-channel logout was refused (a JSON `error`, as the specification asks).
    #[error("back-channel logout refused: {0}")]
    Logout(#[from] LogoutError),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

// === impl ProxyError ===

impl From<OwnPathError> for ProxyError {
    fn from(e: OwnPathError) -> Self {
        match e {
            OwnPathError::MethodNotAllowed(allow) => Self::MethodNotAllowed {
                allow: HeaderValue::from_static(allow),
            },
            OwnPathError::SignIn(e) => Self::SignIn(e),
            OwnPathError::Logout(e) => Self::Logout(e),
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
            Self::SignIn(e) => sign_in_status(&e.failure),
            Self::Logout(LogoutError::InvalidRequest) => StatusCode::BAD_REQUEST,
            Self::Logout(LogoutError::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::Forbidden { .. } => "forbidden",
            Self::SessionStore => "sessions are temporarily unavailable; retry later",
            Self::BadBody => "request body unreadable or too large",
            Self::BodyTimeout => "request body timed out",
            Self::SignIn(_) => "sign-in failed",
            Self::Logout(LogoutError::InvalidRequest) => "invalid_request",
            Self::Logout(LogoutError::Unavailable) => "temporarily_unavailable",
            Self::Upstream(UpstreamError::Timeout { .. }) => "upstream timed out",
            Self::Upstream(_) => "upstream unavailable",
        }
    }

    /// Why the request was refused, in the access log's words (a fixed word).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::Target(_) => "bad_target",
            Self::Unauthenticated(e) => e.reason(),
            Self::Forbidden { .. } => "forbidden",
            Self::SessionStore => "store_unavailable",
            Self::BadBody => "bad_body",
            Self::BodyTimeout => "body_timeout",
            Self::SignIn(_) => "sign_in_failed",
            Self::Logout(_) => "logout_refused",
            Self::Upstream(UpstreamError::Timeout { .. }) => "upstream_timeout",
            Self::Upstream(_) => "upstream_failed",
        }
    }

    /// The response, JSON when `json` (the client accepts JSON). Authentication failures carry
    /// `WWW-Authenticate` as RFC 6750 describes, with `realm`.
    pub fn to_response(&self, json: bool, realm: &str) -> Response<ProxyBody> {
        self.respond(json, realm, None)
    }

    /// [`Self::to_response`] for the request `id`: `X-Request-Id`, and on a 401, 403 or 503
    /// the id in the body too (so a user can quote it; nothing else about the policy is
    /// shown).
    pub fn respond(
        &self,
        json: bool,
        realm: &str,
        id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        // In the body of the refusals a user quotes (401, 403, 503); in the header always.
        let quoted = matches!(self.status().as_u16(), 401 | 403 | 503);
        let in_body = id.filter(|_| quoted).and_then(|v| v.to_str().ok());
        let mut resp = self.answer(json, realm, in_body);
        if let Some(id) = id {
            resp.headers_mut().insert(crate::request_id::HEADER, id.clone());
        }
        resp
    }

    fn answer(&self, json: bool, realm: &str, id: Option<&str>) -> Response<ProxyBody> {
        match self {
            Self::SignIn(e) => return sign_in_page(e),
            Self::Logout(_) => return logout_response(self.status(), self.public_message()),
            _ => {}
        }
        let mut resp = answer_with_id(self.status(), self.public_message(), json, id);
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
            Self::Forbidden { scope, .. } => Some(match scope {
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

/// The status of a failed sign-in.
fn sign_in_status(f: &SignInFailure) -> StatusCode {
    match f {
        SignInFailure::Malformed
        | SignInFailure::NoLogin
        | SignInFailure::BadState
        | SignInFailure::ExpiredLogin
        | SignInFailure::ReplayedState
        | SignInFailure::WrongIssuer
        | SignInFailure::CodeRefused
        | SignInFailure::IdTokenInvalid => StatusCode::BAD_REQUEST,
        SignInFailure::IdpRefused(code) if code == "access_denied" => StatusCode::FORBIDDEN,
        SignInFailure::IdpRefused(_) => StatusCode::BAD_REQUEST,
        SignInFailure::StoreUnavailable
        | SignInFailure::Internal
        | SignInFailure::Unreachable
        | SignInFailure::IssuerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        SignInFailure::TokenTransient | SignInFailure::NoIdToken => StatusCode::BAD_GATEWAY,
    }
}

/// The page of a failed sign-in: what happened and a link to start again (never a redirect,
/// so a failing IdP cannot cause a loop), with the login cookie cleared.
fn sign_in_page(e: &SignInError) -> Response<ProxyBody> {
    let status = sign_in_status(&e.failure);
    // Refused before a token call: the login may not be this browser's, so back to `/`.
    let again = if e.failure.before_token_call() {
        "/"
    } else {
        e.again.as_str()
    };
    let mut resp = match &e.failure {
        SignInFailure::StoreUnavailable | SignInFailure::Internal => pages::unavailable(again),
        SignInFailure::Unreachable => pages::page(
            status,
            "Sign-in temporarily unavailable",
            "The identity provider cannot be reached right now. Please try again in a moment.",
            Some((again, "Try again")),
        ),
        SignInFailure::IdpRefused(code) => pages::sign_in_failed(
            status,
            &format!("The identity provider did not sign you in ({code})."),
            again,
        ),
        f => pages::sign_in_failed(status, sign_in_message(f), again),
    };
    if let Some(c) = &e.clear {
        resp.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// What the sign-in failed page says.
fn sign_in_message(f: &SignInFailure) -> &'static str {
    match f {
        SignInFailure::ExpiredLogin => "The sign-in took too long. Please sign in again.",
        SignInFailure::ReplayedState => "This sign-in link was already used. Please sign in again.",
        SignInFailure::Malformed | SignInFailure::NoLogin | SignInFailure::BadState => {
            "This sign-in response does not belong to a sign-in started here. Please sign in again."
        }
        SignInFailure::IssuerUnavailable | SignInFailure::TokenTransient => {
            "The identity provider cannot be reached right now."
        }
        SignInFailure::WrongIssuer => "The sign-in response came from another identity provider.",
        SignInFailure::CodeRefused => {
            "The sign-in code was refused (it may have expired or been used already)."
        }
        SignInFailure::NoIdToken => "The identity provider sent no ID token.",
        SignInFailure::IdTokenInvalid => "The identity provider's answer could not be verified.",
        SignInFailure::IdpRefused(_)
        | SignInFailure::StoreUnavailable
        | SignInFailure::Internal
        | SignInFailure::Unreachable => "Sign-in is temporarily unavailable.",
    }
}

/// A refused back-channel logout: `{"error": "<code>"}` (the specification's error codes),
/// not cached.
fn logout_response(status: StatusCode, code: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(serde_json::json!({ "error": code }).to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
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
    answer_with_id(status, message, json, None)
}

/// [`error_response`] with the request id in the body (`"request_id"`, or a second line).
pub fn answer_with_id(
    status: StatusCode,
    message: &str,
    json: bool,
    id: Option<&str>,
) -> Response<ProxyBody> {
    let (body, content_type) = match (json, id) {
        (true, None) => (
            serde_json::json!({ "error": message, "status": status.as_u16() }).to_string(),
            "application/json",
        ),
        (true, Some(id)) => (
            serde_json::json!({ "error": message, "status": status.as_u16(), "request_id": id })
                .to_string(),
            "application/json",
        ),
        (false, None) => (
            format!("{} {message}\n", status.as_u16()),
            "text/plain; charset=utf-8",
        ),
        (false, Some(id)) => (
            format!("{} {message}\nrequest id: {id}\n", status.as_u16()),
            "text/plain; charset=utf-8",
        ),
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn text(resp: Response<ProxyBody>) -> String {
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes());
        String::from_utf8(bytes.unwrap_or_default().to_vec()).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_failed_callback_is_a_page_that_starts_again_and_clears_the_login_cookie() {
        let e = SignInError {
            failure: SignInFailure::CodeRefused,
            again: "/app?x=1".into(),
            issuer: Some("idp".into()),
            clear: Some(HeaderValue::from_static("__Host-login=; Max-Age=0")),
        };
        let resp = ProxyError::from(e).to_response(true, "r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.headers()[header::SET_COOKIE],
            "__Host-login=; Max-Age=0"
        );
        assert!(resp.headers().get(header::LOCATION).is_none());
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/html"))
        );
        let body = text(resp).await;
        assert!(body.contains("The sign-in code was refused"), "{body}");
        assert!(body.contains("href=\"/app?x=1\""), "{body}");
    }

    #[tokio::test]
    async fn a_refusal_before_the_token_call_links_to_the_root_whatever_the_login_said() {
        let mut e = SignInError::at(SignInFailure::ReplayedState, "/elsewhere");
        e.clear = Some(HeaderValue::from_static("l=; Max-Age=0"));
        let resp = ProxyError::SignIn(e).to_response(false, "r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = text(resp).await;
        assert!(body.contains("already used"), "{body}");
        assert!(body.contains("href=\"/\""), "{body}");
        assert!(!body.contains("elsewhere"), "{body}");
    }

    #[test]
    fn sign_in_statuses_follow_whose_fault_it_is() {
        let status = |f| ProxyError::SignIn(SignInFailure::into(f)).status();
        assert_eq!(
            status(SignInFailure::IdpRefused("access_denied".into())),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(SignInFailure::IdpRefused("server_error".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(SignInFailure::TokenTransient),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(status(SignInFailure::NoIdToken), StatusCode::BAD_GATEWAY);
        assert_eq!(
            status(SignInFailure::IssuerUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(SignInFailure::StoreUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(SignInFailure::IdTokenInvalid),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn sessions_unavailable_is_a_retry_later_page() {
        let e = SignInError::at(SignInFailure::StoreUnavailable, "/app");
        let resp = ProxyError::SignIn(e).to_response(true, "r");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        assert!(text(resp).await.contains("href=\"/app\""));
    }

    #[tokio::test]
    async fn a_refused_back_channel_logout_answers_the_specification_error_code() {
        let resp = ProxyError::Logout(LogoutError::InvalidRequest).to_response(false, "r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(text(resp).await, r#"{"error":"invalid_request"}"#);
        let resp = ProxyError::Logout(LogoutError::Unavailable).to_response(true, "r");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text(resp).await, r#"{"error":"temporarily_unavailable"}"#);
    }
}
