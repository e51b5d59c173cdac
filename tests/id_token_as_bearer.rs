//! Enabling browser sign-in must not widen bearer access: an ID token (or a logout token) is
//! never accepted as an access token on an `auth: bearer` route, even when its audience is
//! one the route accepts. RFC 9068 `at+jwt` tokens and ordinary untyped access tokens pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::client::{challenge, get_bearer};
use support::idp::AUDIENCE;
use support::metric_value;
use support::scenario::Env;

const API_ROUTE: &str = "  - { name: api, path: /, upstream: app, auth: bearer }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_and_logout_tokens_are_refused_access_tokens_pass() {
    // `_up` keeps the echo upstream running (`..` would drop it at once).
    let Env {
        idp,
        key,
        up: _up,
        proxy,
        ..
    } = Env::start("rsa-1", None, &["client_id: api"], |s| {
        s.routes_yaml(API_ROUTE)
    })
    .await;
    let url = proxy.url("/x");

    let accepted = [
        ("at+jwt", idp.token(&key).header("typ", "at+jwt").build()),
        (
            "application/at+jwt",
            idp.token(&key).header("typ", "application/at+jwt").build(),
        ),
        ("typ JWT", idp.token(&key).build()),
        ("untyped", idp.token(&key).without_header("typ").build()),
        (
            "at+jwt with a nonce",
            idp.token(&key)
                .header("typ", "at+jwt")
                .claim("nonce", "n")
                .build(),
        ),
    ];
    for (what, token) in accepted {
        assert_eq!(get_bearer(&url, &token).await.status, 200, "{what}");
    }

    // The audience is one the route accepts (the ID token's aud is the client id, `api`).
    let refused = [
        ("ID token", idp.id_token(&key, AUDIENCE, "n").build()),
        (
            "untyped ID token",
            idp.id_token(&key, AUDIENCE, "n")
                .without_header("typ")
                .build(),
        ),
        (
            "ID token without nonce but with at_hash",
            idp.id_token(&key, AUDIENCE, "n")
                .without("nonce")
                .claim("at_hash", "x")
                .build(),
        ),
        (
            "logout token",
            idp.logout_token(&key, AUDIENCE, "s")
                .claim("exp", support::idp::now_unix() + 300)
                .build(),
        ),
        (
            "typ id_token+jwt",
            idp.token(&key).header("typ", "id_token+jwt").build(),
        ),
    ];
    let n = refused.len();
    for (what, token) in refused {
        let resp = get_bearer(&url, &token).await;
        assert_eq!(resp.status, 401, "{what}");
        assert!(
            challenge(&resp).contains("error=\"invalid_token\""),
            "{what}: {}",
            challenge(&resp)
        );
        assert!(
            challenge(&resp).contains("not an access token"),
            "{what}: {}",
            challenge(&resp)
        );
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_auth_results_total{issuer=\"corp\",result=\"not_access_token\",route=\"api\"}"
        ),
        n as f64
    );
}
