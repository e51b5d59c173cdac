//! The mock IdP: authorization, token and end-session endpoints.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::keys::*;
use super::server::*;
use super::tokens::*;

/// The authorization endpoint path.
pub const AUTHORIZE: &str = "/authorize";
/// The token endpoint path.
pub const TOKEN: &str = "/token";
/// The end-session endpoint path.
pub const END_SESSION: &str = "/end_session";
/// The client the mock knows by default.
pub const CLIENT_ID: &str = "portcullis";
/// Its secret.
pub const CLIENT_SECRET: &str = "s3cret: with & odd=chars";

/// How the token endpoint misbehaves (the other endpoints are unaffected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFault {
    /// Read the request, then reset the connection (it reached the IdP, no answer).
    Down,
    /// Read the request and never answer.
    Hang,
    /// 500 with an OAuth `server_error` body.
    Status500,
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// 400 `invalid_grant` for every grant.
    InvalidGrant,
}

/// One request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The form.
    pub form: Vec<(String, String)>,
    /// Client id and secret from `Authorization: Basic`, when sent.
    pub basic: Option<(String, String)>,
}

impl TokenRequest {
    /// The form value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        portcullis::authn::oidc::form::get(&self.form, name)
    }
}

pub(super) struct CodeGrant {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) challenge: String,
    pub(super) nonce: Option<String>,
    pub(super) scope: String,
    pub(super) sub: String,
    pub(super) auth_time: Option<i64>,
}

pub(super) struct RefreshGrant {
    pub(super) sub: String,
    pub(super) scope: String,
    pub(super) used: bool,
}

pub(super) struct Oidc {
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) user: String,
    pub(super) login_form: bool,
    pub(super) access_ttl: i64,
    pub(super) rotate_refresh: bool,
    pub(super) codes: HashMap<String, CodeGrant>,
    pub(super) refresh: HashMap<String, RefreshGrant>,
    pub(super) fault: Option<(TokenFault, Option<usize>)>,
    pub(super) token_requests: Vec<TokenRequest>,
    pub(super) end_sessions: Vec<Vec<(String, String)>>,
    pub(super) counter: u64,
    /// The `sid` of issued ID tokens (`None`: no `sid` claim).
    pub(super) sid: Option<String>,
    /// When the user last authenticated (Unix s): the ID tokens' `auth_time` (`None`: none).
    pub(super) auth_time: Option<i64>,
    /// Whether an authorization request's `max_age` makes the user authenticate again.
    pub(super) honor_max_age: bool,
    /// The `max_age` of each authorization request (`None`: not sent).
    pub(super) max_ages: Vec<Option<String>>,
}

impl Default for Oidc {
    fn default() -> Self {
        Self {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            user: "alice".into(),
            login_form: false,
            access_ttl: 300,
            rotate_refresh: true,
            codes: HashMap::new(),
            refresh: HashMap::new(),
            fault: None,
            token_requests: Vec::new(),
            end_sessions: Vec::new(),
            counter: 0,
            sid: Some("sid-1".into()),
            auth_time: None,
            honor_max_age: true,
            max_ages: Vec::new(),
        }
    }
}

impl Oidc {
    pub(super) fn random(&mut self, kind: &str) -> String {
        self.counter += 1;
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        format!("{kind}-{}-{}", self.counter, URL_SAFE_NO_PAD.encode(b))
    }
}

impl MockIdp {
    /// The client the token endpoint accepts (default [`CLIENT_ID`] / [`CLIENT_SECRET`]).
    pub fn set_client(&self, client_id: &str, client_secret: &str) {
        let mut o = self.state.oidc.lock().unwrap();
        o.client_id = client_id.into();
        o.client_secret = client_secret.into();
    }

    /// The user the authorization endpoint signs in (default `alice`).
    pub fn set_user(&self, sub: &str) {
        self.state.oidc.lock().unwrap().user = sub.into();
    }

    /// Answer authorization requests with a small HTML login form instead of auto-approving.
    pub fn use_login_form(&self, on: bool) {
        self.state.oidc.lock().unwrap().login_form = on;
    }

    /// Lifetime of issued access and ID tokens (default 300 s).
    pub fn set_access_ttl(&self, secs: i64) {
        self.state.oidc.lock().unwrap().access_ttl = secs;
    }

    /// When the user last authenticated (Unix seconds): ID tokens carry it as `auth_time`
    /// (default `None`: no `auth_time`). An authorization request whose `max_age` it exceeds
    /// (or any `max_age` while it is `None`) authenticates the user again: now.
    pub fn set_auth_time(&self, unix: Option<i64>) {
        self.state.oidc.lock().unwrap().auth_time = unix;
    }

    /// Whether `max_age` makes the user authenticate again (default yes; no: an IdP that
    /// ignores it and answers with the old `auth_time`).
    pub fn set_honor_max_age(&self, honor: bool) {
        self.state.oidc.lock().unwrap().honor_max_age = honor;
    }

    /// The `max_age` of every authorization request so far (`None`: not sent).
    pub fn max_age_requests(&self) -> Vec<Option<String>> {
        self.state.oidc.lock().unwrap().max_ages.clone()
    }

    /// The `sid` claim of the ID tokens issued from now on (default `sid-1`; `None`: none).
    pub fn set_sid(&self, sid: Option<&str>) {
        self.state.oidc.lock().unwrap().sid = sid.map(str::to_string);
    }

    /// Whether a refresh issues a new refresh token (default: yes, rotation). Off: the
    /// response carries none and the old one stays valid.
    pub fn set_rotate_refresh(&self, on: bool) {
        self.state.oidc.lock().unwrap().rotate_refresh = on;
    }

    /// Fails every token request with `fault` until [`MockIdp::recover_token`].
    pub fn fail_token(&self, fault: TokenFault) {
        self.state.oidc.lock().unwrap().fault = Some((fault, None));
    }

    /// Fails the next `n` token requests with `fault`.
    pub fn fail_token_next(&self, fault: TokenFault, n: usize) {
        self.state.oidc.lock().unwrap().fault = Some((fault, Some(n)));
    }

    /// The token endpoint serves normally again.
    pub fn recover_token(&self) {
        self.state.oidc.lock().unwrap().fault = None;
    }

    /// Every request the token endpoint answered (not those failed by a fault that drops or
    /// hangs the connection), in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.oidc.lock().unwrap().token_requests.clone()
    }

    /// How many refresh-token grants the token endpoint answered.
    pub fn refreshes(&self) -> usize {
        self.token_requests()
            .iter()
            .filter(|r| r.get("grant_type") == Some("refresh_token"))
            .count()
    }

    /// The query of every end-session request.
    pub fn end_sessions(&self) -> Vec<Vec<(String, String)>> {
        self.state.oidc.lock().unwrap().end_sessions.clone()
    }

    /// Issues a code directly (what the authorization endpoint does after sign-in).
    pub fn issue_code(
        &self,
        redirect_uri: &str,
        challenge: &str,
        nonce: Option<&str>,
        scope: &str,
    ) -> String {
        let mut o = self.state.oidc.lock().unwrap();
        let code = o.random("code");
        let grant = CodeGrant {
            client_id: o.client_id.clone(),
            redirect_uri: redirect_uri.into(),
            challenge: challenge.into(),
            nonce: nonce.map(str::to_string),
            scope: scope.into(),
            sub: o.user.clone(),
            auth_time: o.auth_time,
        };
        o.codes.insert(code.clone(), grant);
        code
    }

    /// A back-channel logout token for this issuer, audience `client_id`, signed by `key`:
    /// `events`, `jti`, `iat`, `sid` and `sub` set (remove or change them with the builder).
    pub fn logout_token(&self, key: &SigningKey, client_id: &str, sid: &str) -> TokenBuilder {
        let mut b = [0u8; 12];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        TokenBuilder::new(&self.issuer())
            .sign_with(key)
            .header("typ", "logout+jwt")
            .claim("aud", client_id)
            .claim("sid", sid)
            .claim("jti", URL_SAFE_NO_PAD.encode(b))
            .claim(
                "events",
                json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
            )
            .without("exp")
            .without("scope")
            .without("groups")
            .without("email")
    }

    /// An ID token for this issuer as the token endpoint issues it (aud and azp `client_id`).
    pub fn id_token(&self, key: &SigningKey, client_id: &str, nonce: &str) -> TokenBuilder {
        TokenBuilder::new(&self.issuer())
            .sign_with(key)
            .claim("aud", client_id)
            .claim("azp", client_id)
            .claim("nonce", nonce)
            .claim("sid", "sid-1")
            .without("scope")
    }
}

impl State {
    /// The fault for a token endpoint request, as a connection-level [`Failure`] (invalid_grant
    /// is answered by the endpoint itself).
    pub(super) fn token_fault(&self, path: &str) -> Option<Failure> {
        if path != TOKEN {
            return None;
        }
        let mut o = self.oidc.lock().unwrap();
        let (fault, remaining) = o.fault.as_mut()?;
        if *fault == TokenFault::InvalidGrant {
            // Answered by the endpoint itself, after reading the request.
            return None;
        }
        let fault = fault.clone();
        if let Some(n) = remaining {
            *n -= 1;
            if *n == 0 {
                o.fault = None;
            }
        }
        match fault {
            TokenFault::Down => Some(Failure::Reset),
            TokenFault::Hang => Some(Failure::Hang),
            TokenFault::Status500 => Some(Failure::Status(500)),
            TokenFault::RetryAfter(s) => Some(Failure::RetryAfterSecs(s)),
            TokenFault::InvalidGrant => None,
        }
    }

    pub(super) fn signing_key(&self) -> Option<SigningKey> {
        self.keys.lock().unwrap().first().cloned()
    }
}

pub(super) fn is_oidc_path(path: &str) -> bool {
    matches!(path, AUTHORIZE | TOKEN | END_SESSION)
}

pub(super) fn text_resp(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    r
}

pub(super) fn oauth_error(status: u16, error: &str) -> Response<Full<Bytes>> {
    text_resp(
        status,
        "application/json",
        json!({ "error": error, "error_description": "mock IdP says no" }).to_string(),
    )
}

pub(super) fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut r = text_resp(302, "text/plain", String::new());
    r.headers_mut()
        .insert("location", location.parse().unwrap());
    r
}

pub(super) fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}{}",
        portcullis::authn::oidc::form::encode_pairs(pairs.iter().copied())
    )
}

pub(super) async fn oidc_respond(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    use portcullis::authn::oidc::form;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = form::parse(req.uri().query().unwrap_or_default());
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(i, p)| (form::decode(i), form::decode(p)))
        });
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    match (method, path.as_str()) {
        (http::Method::GET, AUTHORIZE) => authorize(state, &query, None),
        (http::Method::POST, AUTHORIZE) => {
            let form = form::parse(&body);
            let user = form::get(&form, "username").unwrap_or("alice").to_string();
            authorize(state, &form, Some(&user))
        }
        (http::Method::POST, TOKEN) => token(state, form::parse(&body), basic),
        (http::Method::GET, END_SESSION) => {
            state.oidc.lock().unwrap().end_sessions.push(query.clone());
            match form::get(&query, "post_logout_redirect_uri") {
                Some(uri) => {
                    let st = form::get(&query, "state").unwrap_or_default();
                    if st.is_empty() {
                        redirect(uri)
                    } else {
                        redirect(&with_query(uri, &[("state", st)]))
                    }
                }
                None => text_resp(200, "text/html", "<p>Signed out.</p>".into()),
            }
        }
        _ => oauth_error(405, "invalid_request"),
    }
}

/// GET: auto-approve (or show the form); POST (the form): approve as `user`.
pub(super) fn authorize(
    state: &State,
    q: &[(String, String)],
    user: Option<&str>,
) -> Response<Full<Bytes>> {
    use portcullis::authn::oidc::form;
    let get = |k: &str| form::get(q, k).unwrap_or_default().to_string();
    let (client_id, login_form) = {
        let o = state.oidc.lock().unwrap();
        (o.client_id.clone(), o.login_form)
    };
    let redirect_uri = get("redirect_uri");
    if get("client_id") != client_id || redirect_uri.is_empty() {
        return oauth_error(400, "invalid_request");
    }
    if get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
    {
        let st = get("state");
        return redirect(&with_query(
            &redirect_uri,
            &[("error", "invalid_request"), ("state", &st)],
        ));
    }
    if user.is_none() && login_form {
        let hidden: String = q
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    html_escape(k),
                    html_escape(v)
                )
            })
            .collect();
        return text_resp(
            200,
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><title>Mock IdP sign-in</title><form method=\"post\" action=\"{AUTHORIZE}\">{hidden}<label>User <input id=\"username\" name=\"username\" value=\"alice\"></label><button id=\"sign-in\" type=\"submit\">Sign in</button></form>"
            ),
        );
    }
    if let Some(u) = user {
        state.oidc.lock().unwrap().user = u.to_string();
    }
    let nonce = get("nonce");
    let max_age = get("max_age");
    let code = {
        let mut o = state.oidc.lock().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        o.max_ages
            .push((!max_age.is_empty()).then(|| max_age.clone()));
        if let Ok(m) = max_age.parse::<i64>()
            && o.honor_max_age
            && o.auth_time.is_none_or(|t| now - t > m)
        {
            o.auth_time = Some(now);
        }
        let auth_time = o.auth_time;
        let code = o.random("code");
        let grant = CodeGrant {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: get("code_challenge"),
            nonce: (!nonce.is_empty()).then_some(nonce),
            scope: get("scope"),
            sub: o.user.clone(),
            auth_time,
        };
        o.codes.insert(code.clone(), grant);
        code
    };
    redirect(&with_query(
        &redirect_uri,
        &[("code", &code), ("state", &get("state"))],
    ))
}

pub(super) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn token(
    state: &State,
    form: Vec<(String, String)>,
    basic: Option<(String, String)>,
) -> Response<Full<Bytes>> {
    use portcullis::authn::oidc::form as f;
    let req = TokenRequest {
        form: form.clone(),
        basic: basic.clone(),
    };
    let mut o = state.oidc.lock().unwrap();
    o.token_requests.push(req);
    if let Some((TokenFault::InvalidGrant, remaining)) = &mut o.fault {
        if let Some(n) = remaining {
            *n -= 1;
            if *n == 0 {
                o.fault = None;
            }
        }
        return oauth_error(400, "invalid_grant");
    }
    let get = |k: &str| f::get(&form, k).unwrap_or_default().to_string();
    let (id, secret) = match basic {
        Some(b) => b,
        None => (get("client_id"), get("client_secret")),
    };
    if id != o.client_id || secret != o.client_secret {
        return oauth_error(401, "invalid_client");
    }
    let (sub, scope, nonce, auth_time) = match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(g) = o.codes.remove(&get("code")) else {
                return oauth_error(400, "invalid_grant");
            };
            let challenge = portcullis::authn::oidc::login::s256_challenge(&get("code_verifier"));
            if g.client_id != id
                || g.redirect_uri != get("redirect_uri")
                || g.challenge != challenge
            {
                return oauth_error(400, "invalid_grant");
            }
            (g.sub, g.scope, g.nonce, g.auth_time)
        }
        "refresh_token" => {
            let Some(g) = o.refresh.get_mut(&get("refresh_token")) else {
                return oauth_error(400, "invalid_grant");
            };
            if g.used {
                return oauth_error(400, "invalid_grant");
            }
            let asked = get("scope");
            if !asked.is_empty()
                && asked
                    .split(' ')
                    .any(|s| !g.scope.split(' ').any(|x| x == s))
            {
                return oauth_error(400, "invalid_scope");
            }
            let rotate = o.rotate_refresh;
            let g = o.refresh.get_mut(&get("refresh_token")).unwrap();
            if rotate {
                g.used = true;
            }
            (g.sub.clone(), g.scope.clone(), None, None)
        }
        _ => return oauth_error(400, "unsupported_grant_type"),
    };
    let Some(key) = state.signing_key() else {
        return oauth_error(500, "server_error");
    };
    let ttl = o.access_ttl;
    let access = TokenBuilder::new(&state.base)
        .sign_with(&key)
        .header("typ", "at+jwt")
        .claim("sub", sub.as_str())
        .claim("scope", scope.as_str())
        .claim("client_id", id.as_str())
        .exp_in(ttl)
        .build();
    let mut id_token = TokenBuilder::new(&state.base)
        .sign_with(&key)
        .claim("aud", id.as_str())
        .claim("azp", id.as_str())
        .claim("sub", sub.as_str())
        .without("scope")
        .exp_in(ttl);
    id_token = match &o.sid {
        Some(sid) => id_token.claim("sid", sid.as_str()),
        None => id_token.without("sid"),
    };
    if let Some(n) = &nonce {
        id_token = id_token.claim("nonce", n.as_str());
    }
    if let Some(t) = auth_time {
        id_token = id_token.claim("auth_time", t);
    }
    let mut resp = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "id_token": id_token.build(),
        "scope": scope,
    });
    let refresh_grant = get("grant_type") == "refresh_token";
    if !refresh_grant || o.rotate_refresh {
        let rt = o.random("rt");
        o.refresh.insert(
            rt.clone(),
            RefreshGrant {
                sub,
                scope,
                used: false,
            },
        );
        resp["refresh_token"] = json!(rt);
    }
    text_resp(200, "application/json", resp.to_string())
}
