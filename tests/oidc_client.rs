//! The OIDC protocol pieces against the mock IdP over real sockets: discovery metadata, the
//! authorization URL, the code exchange (PKCE, client authentication, never retried once it
//! may have reached the IdP), the refresh grant (rotation, no scope, retries, `Retry-After`),
//! transient versus definitive failures, and ID / logout token validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::authn::Authenticator;
use portcullis::authn::oidc::id_token::{
    Expected, IdTokenError, validate_id_token, validate_logout_token,
};
use portcullis::authn::oidc::login::{LoginRequest, LoginState};
use portcullis::authn::oidc::{ProviderMetadata, TokenClient, TokenError, form};
use portcullis::clock::ManualClock;
use portcullis::config::IssuerConfig;
use portcullis::idp::{IdpClient, IdpError};
use portcullis::metrics::Metrics;
use support::idp::{
    AUTHORIZE, CLIENT_ID, CLIENT_SECRET, MockIdp, SigningKey, TOKEN, TokenFault, now_unix,
};
use support::scenario::Scenario;
use support::{assert_metric, closed_port, wait_until};

const REDIRECT: &str = "http://app.test/oauth2/callback";

struct Setup {
    idp: MockIdp,
    key: SigningKey,
    authn: Authenticator,
    _tasks: tokio::task::JoinSet<()>,
    metrics: Metrics,
    clock: ManualClock,
    config: Arc<IssuerConfig>,
}

/// The series `portcullis_token_requests_total` of issuer `corp` for `grant` and `result`.
fn token_requests(grant: &str, result: &str) -> String {
    format!(
        "portcullis_token_requests_total{{grant=\"{grant}\",issuer=\"corp\",result=\"{result}\"}}"
    )
}

async fn setup(extra: &[&str]) -> Setup {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let mut settings = vec![
        "client_id: portcullis",
        secret.as_str(),
        "timeout: 500ms",
        "backoff_min: 10ms",
        "backoff_max: 20ms",
    ];
    settings.extend_from_slice(extra);
    let yaml = Scenario::new()
        .upstream_at("app", &["http://127.0.0.1:9".into()], &[])
        .issuer("corp", &idp, &settings)
        .routes_yaml("  - { path: /, upstream: app, auth: bearer }")
        .to_yaml();
    let config = portcullis::Config::from_yaml(&yaml, []).unwrap();
    let metrics = Metrics::try_new().unwrap();
    let clock = ManualClock::new();
    let authn = Authenticator::try_new(&config, metrics.clone(), Arc::new(clock.clone())).unwrap();
    let tasks = authn.start().await;
    wait_until(Duration::from_secs(10), || async { authn.ready() }).await;
    Setup {
        config: config.issuers[0].clone(),
        idp,
        key,
        authn,
        _tasks: tasks,
        metrics,
        clock,
    }
}

impl Setup {
    fn metadata(&self) -> ProviderMetadata {
        let doc = self
            .authn
            .issuers()
            .into_iter()
            .next()
            .unwrap()
            .discovery()
            .unwrap();
        ProviderMetadata::from_json(&doc, &self.idp.issuer()).unwrap()
    }

    fn client_for(&self, endpoint: http::Uri) -> TokenClient {
        let http = IdpClient::new(
            "corp",
            portcullis::tls_client::config(None).unwrap(),
            self.config.idp.clone(),
            Arc::new(self.clock.clone()),
            self.metrics.clone(),
        );
        TokenClient::new(
            "corp",
            Arc::new(http),
            endpoint,
            CLIENT_ID,
            Some(CLIENT_SECRET),
            self.config.token_endpoint_auth,
            self.metrics.clone(),
        )
    }

    fn client(&self) -> TokenClient {
        self.client_for(self.metadata().token_endpoint)
    }

    /// Signs in at the mock's authorization endpoint; returns the login and the code.
    async fn authorize(&self) -> (LoginState, String) {
        let login = LoginState::generate("/app", now_unix() as u64).unwrap();
        let req = LoginRequest {
            authorization_endpoint: self.metadata().authorization_endpoint,
            client_id: CLIENT_ID.into(),
            redirect_uri: REDIRECT.into(),
            scopes: vec!["openid".into(), "profile".into()],
        };
        let resp = support::client::get_with(&req.authorization_url(&login), &[]).await;
        assert_eq!(resp.status, 302, "{:?}", resp.body);
        let location = resp.headers["location"].to_str().unwrap().to_string();
        let (base, query) = location.split_once('?').unwrap();
        assert_eq!(base, REDIRECT);
        let q = form::parse(query);
        assert_eq!(form::get(&q, "state"), Some(login.state.as_str()));
        let code = form::get(&q, "code").unwrap().to_string();
        (login, code)
    }

    fn metrics_text(&self) -> String {
        String::from_utf8(self.metrics.render()).unwrap()
    }
}

#[tokio::test]
async fn discovery_metadata_lists_the_code_flow_endpoints() {
    let s = setup(&[]).await;
    let m = s.metadata();
    assert_eq!(m.authorization_endpoint, s.idp.url(AUTHORIZE).as_str());
    assert_eq!(m.token_endpoint, s.idp.url(TOKEN).as_str());
    assert!(m.end_session_endpoint.is_some());
    assert!(m.code_challenge_methods.iter().any(|c| c == "S256"));
}

#[tokio::test]
async fn code_exchange_with_pkce_and_basic_auth_yields_a_valid_id_token() {
    let s = setup(&[]).await;
    let (login, code) = s.authorize().await;
    let tokens = s
        .client()
        .exchange_code(&code, &login.verifier, REDIRECT)
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_some());
    let reqs = s.idp.token_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].basic,
        Some((CLIENT_ID.to_string(), CLIENT_SECRET.to_string()))
    );
    assert_eq!(
        reqs[0].get("client_secret"),
        None,
        "basic: no secret in the form"
    );
    assert_eq!(reqs[0].get("code_verifier"), Some(login.verifier.as_str()));
    let id_token = tokens.id_token.unwrap();
    let expected = Expected {
        client_id: CLIENT_ID,
        nonce: Some(&login.nonce),
        subject: None,
    };
    let v = validate_id_token(&s.authn, 0, &id_token, expected)
        .await
        .unwrap();
    assert_eq!(v.subject, "alice");
    assert_eq!(v.sid.as_deref(), Some("sid-1"));
    let wrong_nonce = Expected {
        nonce: Some("another"),
        ..expected
    };
    assert_eq!(
        validate_id_token(&s.authn, 0, &id_token, wrong_nonce)
            .await
            .unwrap_err(),
        IdTokenError::Nonce
    );
    // The same code again: the IdP refuses it, and that is definitive.
    let again = s
        .client()
        .exchange_code(&code, &login.verifier, REDIRECT)
        .await
        .unwrap_err();
    assert!(
        matches!(&again, TokenError::Definitive { error, .. } if error == "invalid_grant"),
        "{again:?}"
    );
    let text = s.metrics_text();
    assert_metric(&text, &token_requests("authorization_code", "ok"), 1.0);
    assert_metric(
        &text,
        &token_requests("authorization_code", "definitive"),
        1.0,
    );
}

#[tokio::test]
async fn wrong_verifier_is_refused_and_post_auth_sends_the_secret_in_the_form() {
    let s = setup(&["token_endpoint_auth: client_secret_post"]).await;
    let (_, code) = s.authorize().await;
    let err = s
        .client()
        .exchange_code(
            &code,
            "not-the-verifier-not-the-verifier-000000000",
            REDIRECT,
        )
        .await
        .unwrap_err();
    assert!(err.is_definitive(), "{err:?}");
    let reqs = s.idp.token_requests();
    assert_eq!(reqs[0].basic, None);
    assert_eq!(reqs[0].get("client_id"), Some(CLIENT_ID));
    assert_eq!(reqs[0].get("client_secret"), Some(CLIENT_SECRET));
}

#[tokio::test]
async fn refresh_rotates_sends_no_scope_and_a_used_token_is_definitive() {
    let s = setup(&[]).await;
    let (login, code) = s.authorize().await;
    let client = s.client();
    let first = client
        .exchange_code(&code, &login.verifier, REDIRECT)
        .await
        .unwrap();
    let rt1 = first.refresh_token.unwrap();
    let second = client.refresh(&rt1).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();
    assert_ne!(rt1, rt2, "rotated");
    let refresh_req = s.idp.token_requests().pop().unwrap();
    assert_eq!(refresh_req.get("grant_type"), Some("refresh_token"));
    assert_eq!(refresh_req.get("scope"), None, "no scope beyond the grant");
    // The refreshed ID token keeps the subject.
    let expected = Expected {
        client_id: CLIENT_ID,
        nonce: None,
        subject: Some("alice"),
    };
    validate_id_token(&s.authn, 0, second.id_token.as_deref().unwrap(), expected)
        .await
        .unwrap();
    let reused = client.refresh(&rt1).await.unwrap_err();
    assert!(
        matches!(&reused, TokenError::Definitive { error, .. } if error == "invalid_grant"),
        "{reused:?}"
    );
    // Without rotation the response has no refresh token: the old one is kept.
    s.idp.set_rotate_refresh(false);
    let third = client.refresh(&rt2).await.unwrap();
    assert_eq!(third.refresh_token.as_deref(), Some(rt2.as_str()));
}

#[tokio::test]
async fn code_exchange_is_not_retried_once_it_reached_the_idp() {
    let s = setup(&["retries: 3"]).await;
    for fault in [
        TokenFault::Down,
        TokenFault::Status500,
        TokenFault::RetryAfter(1),
    ] {
        let before = s.idp.hits(TOKEN);
        s.idp.fail_token(fault.clone());
        let err = s
            .client()
            .exchange_code("some-code", "v", REDIRECT)
            .await
            .unwrap_err();
        assert!(!err.is_definitive(), "{fault:?}: {err:?}");
        assert_eq!(
            s.idp.hits(TOKEN) - before,
            1,
            "{fault:?}: sent exactly once"
        );
    }
}

#[tokio::test]
async fn code_exchange_is_retried_when_the_connection_failed() {
    let s = setup(&["retries: 2"]).await;
    let dead: http::Uri = format!("http://{}/token", closed_port()).parse().unwrap();
    let err = s
        .client_for(dead)
        .exchange_code("c", "v", REDIRECT)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TokenError::Transient(IdpError::Network(_))),
        "{err:?}"
    );
    assert_metric(
        &s.metrics_text(),
        "portcullis_idp_retries_total{endpoint=\"token\",issuer=\"corp\"}",
        2.0,
    );
}

#[tokio::test]
async fn refresh_retries_transient_failures_and_honours_retry_after() {
    let s = setup(&["retries: 2"]).await;
    let (login, code) = s.authorize().await;
    let client = s.client();
    let rt = client
        .exchange_code(&code, &login.verifier, REDIRECT)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    // One 429 asking for 3 s: the retry waits for it (on the test clock), then succeeds.
    let slept = s.clock.slept();
    let before = s.idp.hits(TOKEN);
    s.idp.fail_token_next(TokenFault::RetryAfter(3), 1);
    let rt = client.refresh(&rt).await.unwrap().refresh_token.unwrap();
    assert_eq!(s.idp.hits(TOKEN) - before, 2);
    assert!(s.clock.slept() - slept >= Duration::from_secs(3));
    // 500s: every attempt of the budget, then transient.
    let before = s.idp.hits(TOKEN);
    s.idp.fail_token(TokenFault::Status500);
    let err = client.refresh(&rt).await.unwrap_err();
    assert!(!err.is_definitive(), "{err:?}");
    assert_eq!(s.idp.hits(TOKEN) - before, 3);
    assert_metric(
        &s.metrics_text(),
        &token_requests("refresh_token", "transient"),
        1.0,
    );
    // invalid_grant from the IdP: definitive, not retried.
    let before = s.idp.hits(TOKEN);
    s.idp.fail_token(TokenFault::InvalidGrant);
    let err = client.refresh(&rt).await.unwrap_err();
    assert!(err.is_definitive(), "{err:?}");
    assert_eq!(s.idp.hits(TOKEN) - before, 1);
}

#[tokio::test]
async fn a_hanging_token_endpoint_is_a_bounded_transient_failure() {
    let s = setup(&["retries: 0"]).await;
    s.idp.fail_token(TokenFault::Hang);
    let started = tokio::time::Instant::now();
    let err = s.client().refresh("rt").await.unwrap_err();
    assert!(
        matches!(&err, TokenError::Transient(IdpError::Timeout(_))),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn logout_tokens_are_validated() {
    let s = setup(&[]).await;
    let valid = s.idp.logout_token(&s.key, CLIENT_ID, "sid-1").build();
    let claims = validate_logout_token(&s.authn, 0, &valid, CLIENT_ID)
        .await
        .unwrap();
    assert_eq!(claims.sid.as_deref(), Some("sid-1"));
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    let refused = |b: support::idp::TokenBuilder| b.build();
    let cases = [
        (
            refused(
                s.idp
                    .logout_token(&s.key, CLIENT_ID, "s")
                    .claim("nonce", "n"),
            ),
            IdTokenError::LogoutNonce,
        ),
        (
            refused(s.idp.logout_token(&s.key, CLIENT_ID, "s").without("events")),
            IdTokenError::NotLogoutToken,
        ),
        (
            refused(s.idp.logout_token(&s.key, CLIENT_ID, "s").without("jti")),
            IdTokenError::LogoutClaims,
        ),
        (
            refused(
                s.idp
                    .logout_token(&s.key, CLIENT_ID, "s")
                    .without("sid")
                    .without("sub"),
            ),
            IdTokenError::LogoutClaims,
        ),
        (
            refused(s.idp.logout_token(&s.key, CLIENT_ID, "s").iat_in(-3600)),
            IdTokenError::LogoutTooOld,
        ),
        (
            refused(
                s.idp
                    .logout_token(&s.key, CLIENT_ID, "s")
                    .header("typ", "at+jwt"),
            ),
            IdTokenError::NotLogoutToken,
        ),
        (
            refused(s.idp.logout_token(&s.key, "someone-else", "s")),
            IdTokenError::Token(portcullis::authn::AuthnError::BadAudience),
        ),
        (
            // An ID token is not a logout token.
            refused(s.idp.id_token(&s.key, CLIENT_ID, "n")),
            IdTokenError::NotLogoutToken,
        ),
    ];
    for (token, want) in cases {
        assert_eq!(
            validate_logout_token(&s.authn, 0, &token, CLIENT_ID)
                .await
                .unwrap_err(),
            want
        );
    }
}

#[tokio::test]
async fn id_token_checks_audience_azp_and_expiry() {
    let s = setup(&[]).await;
    let expected = Expected {
        client_id: CLIENT_ID,
        nonce: Some("n"),
        subject: None,
    };
    let check = |t: String| {
        let authn = &s.authn;
        async move { validate_id_token(authn, 0, &t, expected).await }
    };
    assert!(
        check(s.idp.id_token(&s.key, CLIENT_ID, "n").build())
            .await
            .is_ok()
    );
    let other_key = SigningKey::generate(Algorithm::RS256, "k1");
    let id_token = || s.idp.id_token(&s.key, CLIENT_ID, "n");
    let cases = [
        (
            "another audience",
            s.idp.id_token(&s.key, "other", "n").build(),
            IdTokenError::Token(portcullis::authn::AuthnError::BadAudience),
        ),
        (
            "two audiences, no azp",
            id_token()
                .claim("aud", serde_json::json!([CLIENT_ID, "x"]))
                .without("azp")
                .build(),
            IdTokenError::Azp,
        ),
        (
            "azp of another client",
            id_token().claim("azp", "x").build(),
            IdTokenError::Azp,
        ),
        (
            "no nonce",
            id_token().without("nonce").build(),
            IdTokenError::Nonce,
        ),
        (
            "expired",
            id_token().exp_in(-3600).build(),
            IdTokenError::Token(portcullis::authn::AuthnError::Expired),
        ),
        (
            "issued in the future",
            id_token().iat_in(3600).build(),
            IdTokenError::Token(portcullis::authn::AuthnError::IssuedInFuture),
        ),
        (
            "signed by an unknown key with a known kid",
            s.idp.id_token(&other_key, CLIENT_ID, "n").build(),
            IdTokenError::Token(portcullis::authn::AuthnError::BadSignature),
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(check(token).await.unwrap_err(), want, "{what}");
    }
}

#[tokio::test]
async fn login_form_and_end_session_endpoints() {
    let s = setup(&[]).await;
    s.idp.use_login_form(true);
    let login = LoginState::generate("/", now_unix() as u64).unwrap();
    let req = LoginRequest {
        authorization_endpoint: s.metadata().authorization_endpoint,
        client_id: CLIENT_ID.into(),
        redirect_uri: REDIRECT.into(),
        scopes: vec!["openid".into()],
    };
    let page = support::client::get_with(&req.authorization_url(&login), &[]).await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(
        html.contains("<form method=\"post\" action=\"/authorize\">"),
        "{html}"
    );
    assert!(html.contains(&login.state), "the form carries the request");
    // Submit the form the way a browser would: every hidden field plus the user name.
    let url = req.authorization_url(&login);
    let query = url.split_once('?').unwrap().1;
    let body = format!("{query}&username=bob");
    let resp = support::client::send(
        http::Request::post(s.idp.url(AUTHORIZE))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status, 302);
    let location = resp.headers["location"].to_str().unwrap().to_string();
    let q = form::parse(location.split_once('?').unwrap().1);
    let code = form::get(&q, "code").unwrap();
    let tokens = s
        .client()
        .exchange_code(code, &login.verifier, REDIRECT)
        .await
        .unwrap();
    let expected = Expected {
        client_id: CLIENT_ID,
        nonce: Some(&login.nonce),
        subject: Some("bob"),
    };
    validate_id_token(&s.authn, 0, tokens.id_token.as_deref().unwrap(), expected)
        .await
        .unwrap();

    let end = s.metadata().end_session_endpoint.unwrap();
    let url = format!(
        "{end}?{}",
        form::encode_pairs([
            ("id_token_hint", "t"),
            ("post_logout_redirect_uri", "http://app.test/"),
            ("state", "xyz"),
        ])
    );
    let resp = support::client::get_with(&url, &[]).await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.headers["location"], "http://app.test/?state=xyz");
    assert_eq!(s.idp.end_sessions().len(), 1);
}
