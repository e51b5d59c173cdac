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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, request};

use super::error::{LogoutError, OwnPathError, SignInError, SignInFailure};
use super::pages;
use super::{
    Browser, IssuerClient, LOGIN_TTL, MAX_LOGIN_COOKIES_CLEARED, MAX_LOGIN_COOKIES_OPENED, MAX_PENDING_LOGINS,
    Origin, unix,
};
use crate::authn::oidc::id_token::{Expected, validate_id_token, validate_logout_token};
use crate::authn::oidc::login::{LoginRequest, LoginState};
use crate::authn::oidc::{RedirectPolicy, TokenResponse, form, login_return_target, return_target};
use crate::body::{self, ProxyBody};
use crate::session::{Claims, OneTime, Purpose, Session, Token, Tokens};

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
    redirects: &RedirectPolicy,
    max_age: Option<Duration>,
) -> Result<Response<ProxyBody>, SignInError> {
    let failed = |f: SignInFailure| SignInError::at(f, return_to);
    let client = b.client(slot).map_err(|e| {
        tracing::warn!(error = %e, "sign-in cannot start");
        failed(SignInFailure::Unreachable)
    })?;
    let now = unix(b.clock.wall());
    let mut login = LoginState::generate(&login_return_target(return_to, redirects), now)
        .map_err(|_| failed(SignInFailure::Internal))?;
    login.issuer = client.config.name.clone();
    login.max_age = max_age.map(|d| d.as_secs());
    login.redirect_uri = client.config.redirect_url.clone().unwrap_or_else(|| {
        format!(
            "{}://{}{}",
            origin.scheme, origin.authority(), b.settings.paths.callback
        )
    });
    let name = b.jar.login_name(&login.state);
    let sealed = b
        .sealer
        .seal_text(Purpose::LoginState, name.as_bytes(), &login.to_bytes())
        .map_err(|_| failed(SignInFailure::Internal))?;
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
    Ok(resp)
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

/// Serves an own path. The caller checks [`OwnPath::allows`] before reading any body; a
/// method the path does not take is refused here too.
pub(super) async fn serve(
    b: &Browser,
    path: OwnPath,
    head: &request::Parts,
    body: Bytes,
    origin: &Origin,
    redirects: &RedirectPolicy,
) -> Result<Response<ProxyBody>, OwnPathError> {
    if !path.allows(&head.method) {
        return Err(OwnPathError::MethodNotAllowed(path.allow()));
    }
    Ok(match path {
        OwnPath::Callback => callback(b, head, redirects).await?,
        OwnPath::SignOut => super::sign_out::sign_out(b, head, origin, redirects).await?,
        OwnPath::BackchannelLogout => backchannel(b, head, &body).await?,
    })
}

/// The callback: the IdP sent the browser back with a code (or an error). Every failure is
/// counted here, once, by its reason; the login cookie is cleared on every outcome.
async fn callback(
    b: &Browser,
    head: &request::Parts,
    redirects: &RedirectPolicy,
) -> Result<Response<ProxyBody>, SignInError> {
    let result = sign_in(b, head, redirects).await;
    match &result {
        Ok(_) => {}
        Err(e) if e.failure.before_token_call() => {
            b.metrics
                .callback_errors
                .with_label_values(&[e.failure.reason()])
                .inc();
            tracing::info!(reason = e.failure.reason(), "sign-in callback refused");
        }
        Err(e) => {
            let issuer = e.issuer.as_deref().unwrap_or_default();
            b.metrics
                .logins
                .with_label_values(&[issuer, "failed"])
                .inc();
            b.metrics
                .login_failures
                .with_label_values(&[issuer, e.failure.reason()])
                .inc();
        }
    }
    result
}

/// The callback's parameters: each at most once, `state` present and short.
struct CallbackQuery {
    state: String,
    code: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

// === impl CallbackQuery ===

impl CallbackQuery {
    fn parse(query: Option<&str>) -> Result<Self, SignInFailure> {
        let pairs = form::parse(query.unwrap_or_default());
        let single = |name: &str| -> Result<Option<String>, SignInFailure> {
            let mut it = pairs.iter().filter(|(k, _)| k == name);
            match (it.next(), it.next()) {
                (None, _) => Ok(None),
                (Some((_, v)), None) => Ok(Some(v.clone())),
                _ => Err(SignInFailure::Malformed),
            }
        };
        let state = single("state")?
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(SignInFailure::Malformed)?;
        Ok(Self {
            state,
            code: single("code")?,
            error: single("error")?,
            iss: single("iss")?,
        })
    }
}

/// The callback's steps; the first that fails ends it.
async fn sign_in(
    b: &Browser,
    head: &request::Parts,
    redirects: &RedirectPolicy,
) -> Result<Response<ProxyBody>, SignInError> {
    let query = CallbackQuery::parse(head.uri.query())?;
    let name = b.jar.login_name(&query.state);
    let login = open_login(b, &head.headers, &name).ok_or(SignInFailure::NoLogin)?;
    let clear = b.jar.clear(&name, "/");
    let again = return_target(Some(&login.return_to), redirects);
    let failed = |failure: SignInFailure| SignInError {
        failure,
        again: again.clone(),
        issuer: Some(Arc::from(login.issuer.as_str())),
        clear: clear.clone(),
    };
    let session = complete(b, &query, &login).await.map_err(failed)?;
    // The session this browser had before (if any) is replaced, not kept alive beside it.
    if let Some(old) = b.session_id(&head.headers) {
        let _ = b.store.delete(&old).await;
        b.tunnels.end(&old, super::EndReason::Replaced);
        b.announce(crate::session::Ended::ids(
            crate::session::admin::Cause::Replaced,
            [&old],
        ))
        .await;
    }
    b.metrics
        .logins
        .with_label_values(&[&login.issuer, "completed"])
        .inc();
    tracing::info!(issuer = %login.issuer, "signed in");
    let mut resp = pages::redirect(&again);
    let h = resp.headers_mut();
    if let Some(c) = b.session_cookie(&session.id) {
        h.append(header::SET_COOKIE, c);
    }
    if let Some(c) = clear {
        h.append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

/// From an opened login to a stored session: the state checked and used up, the IdP's answer
/// checked, the code exchanged, the ID token validated, the session stored.
async fn complete(
    b: &Browser,
    query: &CallbackQuery,
    login: &LoginState,
) -> Result<Session, SignInFailure> {
    use_state(b, query, login).await?;
    let (slot, client) = answering_issuer(b, query, login)?;
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(SignInFailure::Malformed)?;
    let tokens = client
        .tokens
        .exchange_code(code, &login.verifier, &login.redirect_uri)
        .await
        .map_err(|e| {
            tracing::info!(issuer = %login.issuer, error = %e, "sign-in: code exchange failed");
            if e.is_definitive() {
                SignInFailure::CodeRefused
            } else {
                SignInFailure::TokenTransient
            }
        })?;
    let session = new_session(b, slot, &client, login, &tokens).await?;
    b.store.put(&session).await.map_err(|e| {
        tracing::warn!(error = %e, "sign-in: the session could not be stored");
        SignInFailure::StoreUnavailable
    })?;
    Ok(session)
}

/// The login's state: the callback's, still fresh, and used now for the first time.
async fn use_state(
    b: &Browser,
    query: &CallbackQuery,
    login: &LoginState,
) -> Result<(), SignInFailure> {
    if !constant_time_eq(login.state.as_bytes(), query.state.as_bytes()) {
        return Err(SignInFailure::BadState);
    }
    if login.is_expired(unix(b.clock.wall()), LOGIN_TTL.as_secs()) {
        return Err(SignInFailure::ExpiredLogin);
    }
    let first = b
        .store
        .mark_used(OneTime::LoginState, login.state.as_bytes(), LOGIN_TTL)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "sign-in: the session store is unavailable");
            SignInFailure::StoreUnavailable
        })?;
    if first {
        Ok(())
    } else {
        Err(SignInFailure::ReplayedState)
    }
}

/// The login's issuer, when it is still configured and reachable, is the one that answered
/// (`iss`), and did not answer with an error.
fn answering_issuer(
    b: &Browser,
    query: &CallbackQuery,
    login: &LoginState,
) -> Result<(usize, Arc<IssuerClient>), SignInFailure> {
    let slot = b
        .auth
        .slot_names()
        .iter()
        .position(|n| **n == *login.issuer)
        .ok_or(SignInFailure::NoLogin)?;
    let client = b.client(slot).map_err(|e| {
        tracing::warn!(error = %e, "sign-in callback: issuer unavailable");
        SignInFailure::IssuerUnavailable
    })?;
    if query.iss.as_deref().is_some_and(|i| i != client.config.issuer) {
        return Err(SignInFailure::WrongIssuer);
    }
    if let Some(err) = &query.error {
        // Only a short token of safe characters is shown; the IdP's description is not.
        let code: String = err
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(issuer = %login.issuer, error = %code, "the identity provider refused the sign-in");
        return Err(SignInFailure::IdpRefused(code));
    }
    Ok((slot, client))
}

/// The session of a token response: its ID token validated (nonce, audience), its claims.
async fn new_session(
    b: &Browser,
    slot: usize,
    client: &IssuerClient,
    login: &LoginState,
    tokens: &TokenResponse,
) -> Result<Session, SignInFailure> {
    let id_token = tokens.id_token.clone().ok_or(SignInFailure::NoIdToken)?;
    let expected = Expected {
        client_id: client.config.client_id.as_deref().unwrap_or_default(),
        nonce: Some(&login.nonce),
        subject: None,
    };
    let validated = validate_id_token(&b.auth, slot, &id_token, expected)
        .await
        .map_err(|e| {
            tracing::warn!(issuer = %login.issuer, error = %e, "sign-in: ID token refused");
            SignInFailure::IdTokenInvalid
        })?;
    let now = b.clock.wall();
    let session_tokens = Tokens {
        access: Token::new(tokens.access_token.clone()),
        refresh: tokens.refresh_token.clone().map(Token::new),
        id_token: Some(Token::new(id_token)),
    };
    let mut session = Session::new(
        login.issuer.clone(),
        validated.subject.clone(),
        session_tokens,
        access_expiry(tokens, now),
        now,
        b.settings.lifetime,
    )
    .map_err(|_| SignInFailure::Internal)?;
    session.sid = validated.sid.clone();
    session.auth_time = auth_time(&validated.claims);
    check_auth_time(login, session.auth_time, now, client.config.clock_skew)?;
    session.claims = Claims::from_map(&b.auth.session_claims(slot, validated.claims));
    if let Some(scope) = &tokens.scope {
        session
            .claims
            .insert("scope".into(), serde_json::Value::String(scope.clone()));
    }
    Ok(session)
}

/// The ID token's `auth_time` (a JSON number of Unix seconds), if it has a usable one.
fn auth_time(claims: &serde_json::Map<String, serde_json::Value>) -> Option<std::time::SystemTime> {
    let secs = claims.get("auth_time")?.as_u64()?;
    std::time::SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// With `max_age` asked for, the ID token must say when the user authenticated, and that
/// must be within it (OpenID Connect Core 3.1.2.1 and 3.1.3.7); an IdP that ignored it does
/// not get a session that would be sent to sign in again at once.
fn check_auth_time(
    login: &LoginState,
    auth_time: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
    skew: Duration,
) -> Result<(), SignInFailure> {
    let Some(max_age) = login.max_age else {
        return Ok(());
    };
    let Some(at) = auth_time else {
        tracing::warn!(issuer = %login.issuer, "sign-in: max_age was asked for and the ID token has no auth_time");
        return Err(SignInFailure::IdTokenInvalid);
    };
    let age = now.duration_since(at).unwrap_or(Duration::ZERO);
    if age > Duration::from_secs(max_age) + skew {
        tracing::warn!(issuer = %login.issuer, age_secs = age.as_secs(), max_age, "sign-in: the IdP did not authenticate the user again within max_age");
        return Err(SignInFailure::IdTokenInvalid);
    }
    Ok(())
}

/// Back-channel logout (OpenID Connect Back-Channel Logout 1.0): 200 with no body once the
/// sessions are ended.
async fn backchannel(
    b: &Browser,
    head: &request::Parts,
    body: &[u8],
) -> Result<Response<ProxyBody>, LogoutError> {
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
    let text = std::str::from_utf8(body).map_err(|_| LogoutError::InvalidRequest)?;
    let pairs = form::parse(text);
    let tokens: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.as_str())
        .collect();
    let (true, [token]) = (form_type, tokens.as_slice()) else {
        return Err(LogoutError::InvalidRequest);
    };
    let slot = b
        .auth
        .slot_for_token(token)
        .ok_or(LogoutError::InvalidRequest)?;
    let config = b
        .auth
        .issuer_config(slot)
        .ok_or(LogoutError::InvalidRequest)?;
    let client_id = config
        .client_id
        .as_deref()
        .ok_or(LogoutError::InvalidRequest)?;
    let claims = validate_logout_token(&b.auth, slot, token, client_id)
        .await
        .map_err(|e| {
            tracing::info!(issuer = %config.name, error = %e, "back-channel logout token refused");
            LogoutError::InvalidRequest
        })?;
    let ttl = Duration::from_secs(
        claims
            .replay_until(config.clock_skew)
            .saturating_sub(unix(b.clock.wall()))
            .max(60),
    );
    let first = b
        .store
        .mark_used(OneTime::LogoutJti, claims.replay_key().as_bytes(), ttl)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "back-channel logout: the session store is unavailable");
            LogoutError::Unavailable
        })?;
    if !first {
        tracing::info!(issuer = %config.name, "back-channel logout token replayed");
        return Err(LogoutError::InvalidRequest);
    }
    let n = end_logged_out(b, &config.name, claims.sid.as_deref(), claims.sub.as_deref()).await?;
    b.metrics.logouts.with_label_values(&["backchannel"]).inc();
    tracing::info!(issuer = %config.name, sessions = n, "back-channel logout");
    let mut resp = Response::new(body::empty());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Ends every session of `issuer` with this `sid` (or, without one, this `sub`): the store,
/// the tunnels here, the other replicas. Returns how many the store held.
async fn end_logged_out(
    b: &Browser,
    issuer: &str,
    sid: Option<&str>,
    sub: Option<&str>,
) -> Result<usize, LogoutError> {
    let deleted = match (sid, sub) {
        (Some(sid), _) => b.store.delete_by_sid(issuer, sid).await,
        (None, Some(sub)) => b.store.delete_by_sub(issuer, sub).await,
        (None, None) => Ok(Vec::new()),
    };
    let hashes = deleted.map_err(|e| {
        tracing::warn!(error = %e, "back-channel logout: sessions could not be deleted");
        LogoutError::Unavailable
    })?;
    let n = hashes.len();
    b.tunnels.end_matching(issuer, sid, sub);
    b.announce(crate::session::Ended {
        cause: crate::session::admin::Cause::Backchannel,
        hashes,
    })
    .await;
    Ok(n)
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
