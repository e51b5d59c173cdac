//! The sign-in redirect and Portcullis's own paths: the callback, sign-out and back-channel
//! logout.
//!
//! Security notes:
//! - Callback: the token endpoint is called only for a `state` that names a live login cookie
//!   which opens under our key, holds that same state (constant-time compare) and is younger
//!   than [`super::LOGIN_TTL`]; the state is then recorded as used in the store, so a second
//!   callback with it (a replay, a forged link) is refused before any token call. The login
//!   cookie is cleared on every outcome. An `iss` parameter (RFC 9207), when present, must be
//!   the issuer's. The ID token must carry the login's nonce. The return target was checked
//!   when the login started (`oidc::redirect`) and is checked again here.
//! - Failures answer with a page that links to start again, never with a redirect, so a
//!   failing IdP cannot cause a redirect loop.
//! - Back-channel logout: a valid logout token (signature, `iss`, `aud`, `iat`, `events`, no
//!   `nonce`, `jti` not seen before) ends every session of its `sid` (or `sub`) through the
//!   store, so every replica stops serving them (after at most their cache's TTL).
//! - Sign-out: `sign_out.rs`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, request};

use super::pages;
use super::{
    Browser, LOGIN_TTL, MAX_LOGIN_COOKIES_CLEARED, MAX_LOGIN_COOKIES_OPENED, MAX_PENDING_LOGINS,
    Origin, unix,
};
use crate::authn::oidc::id_token::{Expected, validate_id_token, validate_logout_token};
use crate::authn::oidc::login::{LoginRequest, LoginState};
use crate::authn::oidc::{TokenResponse, form, login_return_target, return_target};
use crate::session::{Claims, OneTime, Purpose, Session, Token, Tokens};
use crate::upstream::{ProxyBody, body};

/// Portcullis's own paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPath {
    /// `auth.callback_path`
    Callback,
    /// `auth.sign_out_path`
    SignOut,
    /// `auth.backchannel_logout_path`
    BackchannelLogout,
}

// === impl OwnPath ===

impl OwnPath {
    /// Whether this path answers `method` (anything else gets 405 before any body is read).
    pub fn allows(self, method: &Method) -> bool {
        match self {
            Self::Callback => method == Method::GET || method == Method::HEAD,
            Self::SignOut => method == Method::GET || method == Method::POST,
            Self::BackchannelLogout => method == Method::POST,
        }
    }

    /// The `Allow` header of a 405 from this path.
    pub fn allow(self) -> &'static str {
        match self {
            Self::Callback => "GET, HEAD",
            Self::SignOut => "GET, POST",
            Self::BackchannelLogout => "POST",
        }
    }

    /// Whether serving it needs the request body: only the back-channel logout (its logout
    /// token); a sign-out POST carries nothing that is used, so its body is never read.
    pub fn reads_body(self) -> bool {
        matches!(self, Self::BackchannelLogout)
    }
}

/// Lifetime of an access token when the token response gives none (and no ID token `exp`).
const DEFAULT_ACCESS_LIFETIME: Duration = Duration::from_secs(300);

/// When an access token from `resp`, received at `now`, expires.
pub(super) fn access_expiry(resp: &TokenResponse, now: SystemTime) -> SystemTime {
    let secs = resp
        .expires_in
        .map(|s| Duration::from_secs(s.min(365 * 86_400)))
        .unwrap_or(DEFAULT_ACCESS_LIFETIME);
    now.checked_add(secs).unwrap_or(now)
}

/// 302 to the authorization endpoint, with a new login cookie.
pub(super) fn start_login(
    b: &Browser,
    slot: usize,
    head: &request::Parts,
    return_to: &str,
    origin: &Origin,
) -> Response<ProxyBody> {
    let client = match b.client(slot) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in cannot start");
            return pages::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in temporarily unavailable",
                "The identity provider cannot be reached right now. Please try again in a moment.",
                Some((return_to, "Try again")),
            );
        }
    };
    let now = unix(b.clock.wall());
    let Ok(mut login) = LoginState::generate(&login_return_target(return_to), now) else {
        return pages::unavailable(return_to);
    };
    login.issuer = client.config.name.clone();
    login.redirect_uri = client.config.redirect_url.clone().unwrap_or_else(|| {
        format!(
            "{}://{}{}",
            origin.scheme, origin.authority, b.settings.paths.callback
        )
    });
    let name = b.jar.login_name(&login.state);
    let Ok(sealed) = b
        .sealer
        .seal_text(Purpose::LoginState, name.as_bytes(), &login.to_bytes())
    else {
        return pages::unavailable(return_to);
    };
    let request = LoginRequest {
        authorization_endpoint: client.metadata.authorization_endpoint.clone(),
        client_id: client.config.client_id.clone().unwrap_or_default(),
        redirect_uri: login.redirect_uri.clone(),
        scopes: client.config.scopes.clone(),
    };
    let mut resp = pages::redirect(&request.authorization_url(&login));
    let h = resp.headers_mut();
    if let Some(c) = b.jar.set(&name, &sealed, "/", LOGIN_TTL.as_secs()) {
        h.append(header::SET_COOKIE, c);
    }
    for n in stale_logins(b, &head.headers, now) {
        if let Some(c) = b.jar.clear(n, "/") {
            h.append(header::SET_COOKIE, c);
        }
    }
    b.metrics
        .logins
        .with_label_values(&[&client.config.name, "started"])
        .inc();
    resp
}

/// The login cookies to clear when one more starts: the oldest live ones beyond
/// [`MAX_PENDING_LOGINS`] (tabs that never came back), then expired or unopenable ones. Only the
/// first [`MAX_LOGIN_COOKIES_OPENED`] login cookies of the request are looked at and at most
/// [`MAX_LOGIN_COOKIES_CLEARED`] are cleared, so a `Cookie` header full of junk login cookies
/// (tossed, or piled up) costs a bounded amount of work and response size; a later sign-in
/// clears more.
fn stale_logins<'h>(b: &Browser, headers: &'h http::HeaderMap, now: u64) -> Vec<&'h str> {
    let mut live: Vec<(u64, &str)> = Vec::new();
    let mut stale: Vec<&str> = Vec::new();
    for n in super::cookies::names_with_prefix(headers, &b.jar.login_prefix)
        .into_iter()
        .take(MAX_LOGIN_COOKIES_OPENED)
    {
        match open_login(b, headers, n) {
            Some(l) if !l.is_expired(now, LOGIN_TTL.as_secs()) => live.push((l.created, n)),
            _ => stale.push(n),
        }
    }
    live.sort_unstable();
    // The new login makes one more.
    let extra = (live.len() + 1).saturating_sub(MAX_PENDING_LOGINS);
    live.into_iter()
        .take(extra)
        .map(|(_, n)| n)
        .chain(stale)
        .take(MAX_LOGIN_COOKIES_CLEARED)
        .collect()
}

/// The login in cookie `name`, if it opens and is one.
fn open_login(b: &Browser, headers: &http::HeaderMap, name: &str) -> Option<LoginState> {
    super::cookies::values(headers, name).find_map(|v| {
        let bytes = b
            .sealer
            .open_text(Purpose::LoginState, name.as_bytes(), v)
            .ok()?;
        LoginState::from_bytes(&bytes)
    })
}

/// Serves an own path; `None` when it does not take the request's method (the caller answers
/// 405 with [`OwnPath::allow`], and checks [`OwnPath::allows`] before reading any body).
pub(super) async fn serve(
    b: &Browser,
    path: OwnPath,
    head: &request::Parts,
    body: Bytes,
    origin: &Origin,
) -> Option<Response<ProxyBody>> {
    if !path.allows(&head.method) {
        return None;
    }
    Some(match path {
        OwnPath::Callback => callback(b, head).await,
        OwnPath::SignOut => super::sign_out::sign_out(b, head, origin).await,
        OwnPath::BackchannelLogout => backchannel(b, head, &body).await,
    })
}

/// A callback refused before any token call.
fn refuse_callback(b: &Browser, reason: &'static str, clear: Option<&str>) -> Response<ProxyBody> {
    b.metrics.callback_errors.with_label_values(&[reason]).inc();
    tracing::info!(reason, "sign-in callback refused");
    let message = match reason {
        "expired_login" => "The sign-in took too long. Please sign in again.",
        "replayed_state" => "This sign-in link was already used. Please sign in again.",
        _ => {
            "This sign-in response does not belong to a sign-in started here. Please sign in again."
        }
    };
    let mut resp = pages::sign_in_failed(StatusCode::BAD_REQUEST, message, "/");
    if let Some(c) = clear.and_then(|n| b.jar.clear(n, "/")) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The callback: the IdP sent the browser back with a code (or an error).
async fn callback(b: &Browser, head: &request::Parts) -> Response<ProxyBody> {
    let query = form::parse(head.uri.query().unwrap_or_default());
    let single = |name: &str| -> Result<Option<&str>, ()> {
        let mut it = query.iter().filter(|(k, _)| k == name);
        match (it.next(), it.next()) {
            (None, _) => Ok(None),
            (Some((_, v)), None) => Ok(Some(v.as_str())),
            _ => Err(()),
        }
    };
    let (Ok(state), Ok(code), Ok(error), Ok(iss)) = (
        single("state"),
        single("code"),
        single("error"),
        single("iss"),
    ) else {
        return refuse_callback(b, "malformed", None);
    };
    let Some(state) = state.filter(|s| !s.is_empty() && s.len() <= 256) else {
        return refuse_callback(b, "malformed", None);
    };
    let name = b.jar.login_name(state);
    let Some(login) = open_login(b, &head.headers, &name) else {
        return refuse_callback(b, "no_login", None);
    };
    if !constant_time_eq(login.state.as_bytes(), state.as_bytes()) {
        return refuse_callback(b, "bad_state", Some(&name));
    }
    if login.is_expired(unix(b.clock.wall()), LOGIN_TTL.as_secs()) {
        return refuse_callback(b, "expired_login", Some(&name));
    }
    let again = return_target(Some(&login.return_to));
    // A failed sign-in: counted, a page with a way back, the login cookie cleared.
    let failed = |reason: &str, status: StatusCode, message: &str| {
        fail(b, &login.issuer, reason);
        with_cleared(b, pages::sign_in_failed(status, message, &again), &name)
    };
    match b
        .store
        .mark_used(OneTime::LoginState, login.state.as_bytes(), LOGIN_TTL)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse_callback(b, "replayed_state", Some(&name)),
        Err(e) => {
            tracing::warn!(error = %e, "sign-in: the session store is unavailable");
            fail(b, &login.issuer, "store_unavailable");
            return with_cleared(b, pages::unavailable(&again), &name);
        }
    }
    let Some(slot) = b
        .auth
        .slot_names()
        .iter()
        .position(|n| **n == *login.issuer)
    else {
        return refuse_callback(b, "no_login", Some(&name));
    };
    let client = match b.client(slot) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in callback: issuer unavailable");
            return failed(
                "token_transient",
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider cannot be reached right now.",
            );
        }
    };
    if iss.is_some_and(|i| i != client.config.issuer) {
        return failed(
            "idp_error",
            StatusCode::BAD_REQUEST,
            "The sign-in response came from another identity provider.",
        );
    }
    if let Some(err) = error {
        // Only a short token of safe characters is shown; the IdP's description is not.
        let code: String = err
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(issuer = %login.issuer, error = %code, "the identity provider refused the sign-in");
        let status = if code == "access_denied" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        return failed(
            "idp_error",
            status,
            &format!("The identity provider did not sign you in ({code})."),
        );
    }
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        return refuse_callback(b, "malformed", Some(&name));
    };
    let tokens = match client
        .tokens
        .exchange_code(code, &login.verifier, &login.redirect_uri)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(issuer = %login.issuer, error = %e, "sign-in: code exchange failed");
            return if e.is_definitive() {
                failed(
                    "token_definitive",
                    StatusCode::BAD_REQUEST,
                    "The sign-in code was refused (it may have expired or been used already).",
                )
            } else {
                failed(
                    "token_transient",
                    StatusCode::BAD_GATEWAY,
                    "The identity provider cannot be reached right now.",
                )
            };
        }
    };
    let Some(id_token) = tokens.id_token.clone() else {
        return failed(
            "id_token_invalid",
            StatusCode::BAD_GATEWAY,
            "The identity provider sent no ID token.",
        );
    };
    let client_id = client.config.client_id.as_deref().unwrap_or_default();
    let expected = Expected {
        client_id,
        nonce: Some(&login.nonce),
        subject: None,
    };
    let validated = match validate_id_token(&b.auth, slot, &id_token, expected).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(issuer = %login.issuer, error = %e, "sign-in: ID token refused");
            return failed(
                "id_token_invalid",
                StatusCode::BAD_REQUEST,
                "The identity provider's answer could not be verified.",
            );
        }
    };
    let now = b.clock.wall();
    let session_tokens = Tokens {
        access: Token::new(tokens.access_token.clone()),
        refresh: tokens.refresh_token.clone().map(Token::new),
        id_token: Some(Token::new(id_token)),
    };
    let Ok(mut session) = Session::new(
        login.issuer.clone(),
        validated.subject.clone(),
        session_tokens,
        access_expiry(&tokens, now),
        now,
        b.settings.lifetime,
    ) else {
        return with_cleared(b, pages::unavailable(&again), &name);
    };
    session.sid = validated.sid.clone();
    session.claims = Claims::from_map(&b.auth.session_claims(slot, validated.claims));
    if let Some(scope) = &tokens.scope {
        session
            .claims
            .insert("scope".into(), serde_json::Value::String(scope.clone()));
    }
    if let Err(e) = b.store.put(&session).await {
        tracing::warn!(error = %e, "sign-in: the session could not be stored");
        fail(b, &login.issuer, "store_unavailable");
        return with_cleared(b, pages::unavailable(&again), &name);
    }
    // The session this browser had before (if any) is replaced, not kept alive beside it.
    if let Some(old) = b.session_id(&head.headers) {
        let _ = b.store.delete(&old).await;
        b.tunnels.end(&old, super::EndReason::Replaced);
    }
    b.metrics
        .logins
        .with_label_values(&[&login.issuer, "completed"])
        .inc();
    tracing::info!(issuer = %login.issuer, "signed in");
    let mut resp = pages::redirect(&again);
    if let Some(c) = b.session_cookie(&session.id) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    with_cleared(b, resp, &name)
}

fn fail(b: &Browser, issuer: &str, reason: &str) {
    b.metrics
        .logins
        .with_label_values(&[issuer, "failed"])
        .inc();
    b.metrics
        .login_failures
        .with_label_values(&[issuer, reason])
        .inc();
}

fn with_cleared(b: &Browser, mut resp: Response<ProxyBody>, name: &str) -> Response<ProxyBody> {
    if let Some(c) = b.jar.clear(name, "/") {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Back-channel logout (OpenID Connect Back-Channel Logout 1.0).
async fn backchannel(b: &Browser, head: &request::Parts, body: &[u8]) -> Response<ProxyBody> {
    let answer = |status: StatusCode, error: Option<&str>| {
        let text = error
            .map(|e| serde_json::json!({ "error": e }).to_string())
            .unwrap_or_default();
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if error.is_some() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        resp
    };
    let form_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let Ok(text) = std::str::from_utf8(body) else {
        return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    };
    let pairs = form::parse(text);
    let tokens: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.as_str())
        .collect();
    let (true, [token]) = (form_type, tokens.as_slice()) else {
        return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    };
    let Some(slot) = b.auth.slot_for_token(token) else {
        return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    };
    let Some(config) = b.auth.issuer_config(slot) else {
        return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    };
    let Some(client_id) = config.client_id.as_deref() else {
        return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
    };
    let claims = match validate_logout_token(&b.auth, slot, token, client_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(issuer = %config.name, error = %e, "back-channel logout token refused");
            return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
    };
    let ttl = Duration::from_secs(
        claims
            .replay_until(config.clock_skew)
            .saturating_sub(unix(b.clock.wall()))
            .max(60),
    );
    match b
        .store
        .mark_used(OneTime::LogoutJti, claims.replay_key().as_bytes(), ttl)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(issuer = %config.name, "back-channel logout token replayed");
            return answer(StatusCode::BAD_REQUEST, Some("invalid_request"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout: the session store is unavailable");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
            );
        }
    }
    let deleted = match (&claims.sid, &claims.sub) {
        (Some(sid), _) => b.store.delete_by_sid(&config.name, sid).await,
        (None, Some(sub)) => b.store.delete_by_sub(&config.name, sub).await,
        (None, None) => Ok(0),
    };
    match deleted {
        Ok(n) => {
            b.tunnels
                .end_matching(&config.name, claims.sid.as_deref(), claims.sub.as_deref());
            b.metrics.logouts.with_label_values(&["backchannel"]).inc();
            tracing::info!(issuer = %config.name, sessions = n, "back-channel logout");
            answer(StatusCode::OK, None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout: sessions could not be deleted");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
            )
        }
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
