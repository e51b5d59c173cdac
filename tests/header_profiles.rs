//! `auth.header_profile`: the header names and value shapes of oauth2-proxy, Google IAP, AWS
//! ALB and Pomerium, checked by value at the upstream (the signed ones verified by PyJWT and
//! jose); access tokens only where the route forwards them; and the client's copies of
//! every header of the active profile stripped in every spelling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use jsonwebtoken::Algorithm;
use support::client::{Resp, echoed, get_bearer, get_with};
use support::idp::{MockIdp, SigningKey};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use support::verifiers::assert_valid;
use support::{Proxy, temp_dir};

const ISS: &str = "https://portcullis.test";
const JWKS: &str = "/.well-known/portcullis/jwks.json";

struct Env {
    idp: MockIdp,
    key: SigningKey,
    _up: MockUpstream,
    proxy: Proxy,
}

/// `profile` with an assertion (`assertion_extra` in `auth.assertion`); routes `/api`
/// (bearer, Authorization forwarded, `aud` "/projects/1/apps/x"), `/quiet` (bearer,
/// Authorization not forwarded) and `/` (no authentication).
async fn env(profile: &str, assertion_extra: &str) -> Env {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let dir = temp_dir("profiles");
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.join("k.pem"), pem.serialize_pem()).unwrap();
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &[])
        .route(
            Route::bearer("/api")
                .name("api")
                .raw("assertion", "{ audience: \"/projects/1/apps/x\" }"),
        )
        .route(
            Route::bearer("/quiet")
                .name("quiet")
                .raw("forward_authorization", "false"),
        )
        .route(Route::open("/").name("open"))
        .auth(&[
            &format!("header_profile: {profile}"),
            &format!(
                "assertion: {{ issuer: \"{ISS}\", keys: [\"{}\"] {assertion_extra} }}",
                dir.join("k.pem").display()
            ),
        ])
        .start()
        .await;
    Env {
        idp,
        key,
        _up: up,
        proxy,
    }
}

impl Env {
    fn token(&self) -> String {
        self.idp
            .token(&self.key)
            .claim("preferred_username", "alice.p")
            .claim("tid", "tenant-1")
            .build()
    }
}

/// The one value of `name` the upstream saw.
fn one(r: &Resp, name: &str) -> String {
    let v = echoed(r, name);
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_proxy_headers_and_the_access_token_only_where_forwarded() {
    let e = env("oauth2-proxy", "").await;
    let token = e.token();
    let r = get_bearer(&e.proxy.url("/api"), &token).await;
    assert_eq!(r.status, 200);
    for (name, want) in [
        ("x-auth-request-user", "alice"),
        ("x-auth-request-email", "alice@example.com"),
        ("x-auth-request-groups", "staff,dev"),
        ("x-auth-request-preferred-username", "alice.p"),
        ("x-auth-request-access-token", token.as_str()),
        ("x-forwarded-user", "alice"),
        ("x-forwarded-email", "alice@example.com"),
    ] {
        assert_eq!(one(&r, name), want, "{name}");
    }
    // The assertion goes in auth.assertion.header under this profile.
    let a = one(&r, "x-portcullis-assertion");
    assert_valid(&e.proxy.url(JWKS), "/projects/1/apps/x", ISS, &a).await;
    // A route that does not forward Authorization sends no access token either.
    let r = get_bearer(&e.proxy.url("/quiet"), &token).await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r, "x-auth-request-access-token").is_empty());
    assert!(echoed(&r, "authorization").is_empty());
    assert_eq!(one(&r, "x-auth-request-user"), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iap_headers_and_its_signed_assertion() {
    let e = env("iap", "").await;
    let r = get_bearer(&e.proxy.url("/api"), &e.token()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        one(&r, "x-goog-authenticated-user-email"),
        "accounts.google.com:alice@example.com"
    );
    assert_eq!(
        one(&r, "x-goog-authenticated-user-id"),
        "accounts.google.com:alice"
    );
    let a = one(&r, "x-goog-iap-jwt-assertion");
    let [h, _, _] = <[&str; 3]>::try_from(a.split('.').collect::<Vec<_>>()).unwrap();
    assert!(support::idp::claims_of(&a)["aud"] == "/projects/1/apps/x");
    assert!(!h.is_empty());
    assert_valid(&e.proxy.url(JWKS), "/projects/1/apps/x", ISS, &a).await;
    // The portcullis header names are not sent under another profile.
    assert!(echoed(&r, "x-portcullis-assertion").is_empty());
    assert!(echoed(&r, "x-auth-request-user").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alb_headers_with_a_standard_jwt() {
    let e = env("alb", "").await;
    let token = e.token();
    let r = get_bearer(&e.proxy.url("/api"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(one(&r, "x-amzn-oidc-identity"), "alice");
    assert_eq!(one(&r, "x-amzn-oidc-accesstoken"), token);
    let data = one(&r, "x-amzn-oidc-data");
    // A standard JWT: three unpadded base64url parts (ALB's own pads them).
    assert_eq!(data.split('.').count(), 3);
    assert!(!data.contains('='));
    assert_valid(&e.proxy.url(JWKS), "/projects/1/apps/x", ISS, &data).await;
    let r = get_bearer(&e.proxy.url("/quiet"), &token).await;
    assert!(echoed(&r, "x-amzn-oidc-accesstoken").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pomerium_headers_with_configured_claims() {
    let e = env("pomerium", ", claims: { tenant: tid }").await;
    let r = get_bearer(&e.proxy.url("/api"), &e.token()).await;
    assert_eq!(r.status, 200);
    for (name, want) in [
        ("x-pomerium-claim-user", "alice"),
        ("x-pomerium-claim-email", "alice@example.com"),
        ("x-pomerium-claim-groups", "staff,dev"),
        ("x-pomerium-claim-tenant", "tenant-1"),
    ] {
        assert_eq!(one(&r, name), want, "{name}");
    }
    let a = one(&r, "x-pomerium-jwt-assertion");
    for claims in assert_valid(&e.proxy.url(JWKS), "/projects/1/apps/x", ISS, &a).await {
        assert_eq!(claims["tenant"], "tenant-1");
    }
}

/// Headers every profile owns, spelled as clients (and CGI, WSGI, PHP) may spell them.
const SPOOFED: [(&str, &str); 16] = [
    ("X_Portcullis_Assertion", "forged"),
    ("x-portcullis-assertion", "forged"),
    ("X_Auth_Request_Access_Token", "stolen"),
    ("x-forwarded_user", "mallory"),
    ("X_Forwarded_Email", "mallory@evil.example"),
    ("x_goog_iap_jwt_assertion", "forged"),
    ("X-Goog-Iap-Jwt-Assertion", "forged"),
    (
        "x_goog_authenticated_user_email",
        "accounts.google.com:mallory@evil.example",
    ),
    (
        "X-Goog-Authenticated-User-Id",
        "accounts.google.com:mallory",
    ),
    ("x_amzn_oidc_data", "forged"),
    ("X-Amzn-Oidc-Identity", "mallory"),
    ("x-amzn_oidc-accesstoken", "stolen"),
    ("X_Pomerium_Jwt_Assertion", "forged"),
    ("x-pomerium-claim-email", "mallory@evil.example"),
    ("X_POMERIUM_CLAIM_GROUPS", "admins"),
    ("x-pomerium-claim-anything", "forged"),
];

/// The owned headers of `profile` among [`SPOOFED`] (CGI-normalised prefixes).
fn owned_by(profile: &str) -> &'static [&'static str] {
    match profile {
        "oauth2-proxy" => &[
            "x-auth-request-",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-portcullis-assertion",
        ],
        "iap" => &["x-goog-"],
        "alb" => &["x-amzn-oidc-"],
        "pomerium" => &["x-pomerium-"],
        _ => &[
            "x-portcullis-assertion",
            "x-auth-request-",
            "x-forwarded-user",
            "x-forwarded-email",
        ],
    }
}

/// Every header the upstream saw whose CGI name starts with one of `prefixes`.
fn seen_owned(r: &Resp, prefixes: &[&str]) -> Vec<(String, String)> {
    r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str()
                    .unwrap()
                    .to_ascii_lowercase()
                    .replace('_', "-"),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_profile_headers_are_stripped_in_every_spelling() {
    for profile in ["portcullis", "oauth2-proxy", "iap", "alb", "pomerium"] {
        let e = env(profile, "").await;
        let owned = owned_by(profile);
        // No authentication: none of the profile's headers reach the upstream.
        let r = get_with(&e.proxy.url("/open"), &SPOOFED).await;
        assert_eq!(r.status, 200);
        assert_eq!(seen_owned(&r, owned), [], "{profile}: open route");
        // Authenticated: only Portcullis's own values, one of each.
        let mut headers = SPOOFED.to_vec();
        let auth = format!("Bearer {}", e.token());
        headers.push(("authorization", &auth));
        let r = get_with(&e.proxy.url("/quiet"), &headers).await;
        assert_eq!(r.status, 200);
        let seen = seen_owned(&r, owned);
        assert!(!seen.is_empty(), "{profile}: sets its headers");
        for (name, value) in &seen {
            assert!(
                !value.contains("forged")
                    && !value.contains("mallory")
                    && !value.contains("stolen")
                    && value != "admins",
                "{profile}: {name}: {value}"
            );
            assert_eq!(
                seen.iter().filter(|(n, _)| n == name).count(),
                1,
                "{profile}: one {name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_authorization_allows_carry_the_profile_and_its_assertion() {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let dir = temp_dir("profiles-ext");
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.join("k.pem"), pem.serialize_pem()).unwrap();
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &[])
        .route(
            Route::bearer("/api")
                .name("api")
                .host("app.example.com")
                .raw("assertion", "{ audience: \"/projects/1/apps/x\" }"),
        )
        .section(
            "external_auth",
            &[
                "nginx_path: /_auth/nginx",
                "envoy_path_prefix: /_auth/envoy",
                "cache_max_age: 10m",
            ],
        )
        .auth(&[
            "header_profile: iap",
            &format!(
                "assertion: {{ issuer: \"{ISS}\", lifetime: 1m, keys: [\"{}\"] }}",
                dir.join("k.pem").display()
            ),
        ])
        .start()
        .await;
    let auth = format!("Bearer {}", idp.token(&key).build());
    let r = get_with(
        &proxy.url("/_auth/nginx"),
        &[
            ("x-original-url", "https://app.example.com/api/x"),
            ("x-original-method", "GET"),
            ("authorization", &auth),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        h("x-goog-authenticated-user-email").as_deref(),
        Some("accounts.google.com:alice@example.com")
    );
    let a = h("x-goog-iap-jwt-assertion").expect("the assertion in the allow");
    assert_valid(&proxy.url(JWKS), "/projects/1/apps/x", ISS, &a).await;
    // A cached allow never outlives its assertion: at most half the lifetime.
    assert_eq!(h("cache-control").as_deref(), Some("private, max-age=30"));
    // Envoy removes the client's copies of the profile's headers the answer does not set.
    let r = get_with(
        &proxy.url("/_auth/envoy/api/x"),
        &[
            ("host", "app.example.com"),
            ("authorization", &auth),
            ("X_Goog_Iap_Jwt_Assertion", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let removed = r.headers["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap();
    let removed: Vec<&str> = removed.split(", ").collect();
    for name in [
        "x_goog_iap_jwt_assertion",
        "x_goog_authenticated_user_email",
    ] {
        assert!(removed.contains(&name), "{name} not in {removed:?}");
    }
    assert!(
        !removed.contains(&"x-goog-iap-jwt-assertion"),
        "{removed:?}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gets_the_assertion_and_the_access_token_only_where_forwarded() {
    let idp = MockIdp::start().await;
    let _key = idp.new_key(Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .sessions(&["cookie: { secure: false }"])
        .route(Route::session("/app").name("app"))
        .route(
            Route::either("/api")
                .name("api")
                .flag("forward_access_token"),
        )
        .auth(&[
            "header_profile: alb",
            &format!("assertion: {{ issuer: \"{ISS}\" }}"),
        ])
        .start()
        .await;
    let mut b = support::browser::CookieClient::new();
    let (page, hops) = b.follow(&proxy.url("/app/page")).await;
    assert_eq!(page.status, 200, "{hops:?}");
    assert_eq!(one(&page, "x-amzn-oidc-identity"), "alice");
    let data = one(&page, "x-amzn-oidc-data");
    for claims in assert_valid(&proxy.url(JWKS), "127.0.0.1", ISS, &data).await {
        assert_eq!(claims["sub"], "alice");
    }
    // The session route does not forward the access token: no header carries it.
    assert!(echoed(&page, "x-amzn-oidc-accesstoken").is_empty());
    assert!(echoed(&page, "authorization").is_empty());
    // forward_access_token: the access token in Authorization and in the profile's header.
    let api = b.api(&proxy.url("/api/data")).await;
    assert_eq!(api.status, 200);
    let auth = one(&api, "authorization");
    assert_eq!(
        Some(one(&api, "x-amzn-oidc-accesstoken").as_str()),
        auth.strip_prefix("Bearer ")
    );
}
