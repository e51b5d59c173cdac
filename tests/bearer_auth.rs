//! Bearer-token authentication end to end: a mock IdP (discovery + JWKS), Portcullis, and the
//! echo upstream. Valid tokens per algorithm, every way a token can be refused (401
//! `invalid_token`), authorization rules (403 `insufficient_scope`), identity headers
//! (set from claims, never from the client) and `forward_authorization`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::assert_metric;
use support::client::{challenge, echoed, get_bearer, get_with};
use support::idp::{JWKS, MockIdp, SigningKey, TokenBuilder};
use support::scenario::{Env, Route, Scenario, auth_result};
use support::upstream;

const API_ROUTE: &str = "  - { name: api, path: /, upstream: app, auth: bearer }";

/// An IdP with one RS256 key `rsa-1`, the echo upstream, and Portcullis with issuer `corp`.
async fn env(issuer_extra: &[&str], routes: &str, extra: &str) -> Env {
    Env::start("rsa-1", None, issuer_extra, |s| {
        s.routes_yaml(routes).yaml(extra)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_per_algorithm_reaches_upstream_with_identity() {
    let idp = MockIdp::start().await;
    let keys = [
        idp.new_key(Algorithm::RS256, "rsa"),
        idp.new_key(Algorithm::PS256, "pss"),
        idp.new_key(Algorithm::ES256, "ec"),
        idp.new_key(Algorithm::EdDSA, "ed"),
    ];
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &["algorithms: [RS256, PS256, ES256, EdDSA]"])
        .routes_yaml(API_ROUTE)
        .start()
        .await;

    for key in &keys {
        let token = idp
            .token(key)
            .claim("sub", format!("user-{}", key.kid))
            .build();
        let r = get_bearer(&proxy.url("/whoami"), &token).await;
        assert_eq!(
            r.status,
            200,
            "{:?}: {}",
            key.alg,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            echoed(&r, "x-auth-request-user"),
            vec![format!("user-{}", key.kid)],
            "{:?}",
            key.alg
        );
        assert_eq!(
            echoed(&r, "x-auth-request-email"),
            vec!["alice@example.com"]
        );
        assert_eq!(echoed(&r, "x-auth-request-groups"), vec!["staff,dev"]);
        // forward_authorization defaults to true.
        assert_eq!(echoed(&r, "authorization"), vec![format!("Bearer {token}")]);
    }
    // The scheme is case-insensitive.
    let t = idp.token(&keys[0]).build();
    let r = get_with(
        &proxy.url("/"),
        &[("authorization", &format!("bearer {t}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 5);
    let m = proxy.metrics().await;
    assert_eq!(auth_result(&m, "api", "corp", "ok"), 5.0, "{m}");
    // One discovery and one JWKS fetch at start; no token needed another.
    assert_eq!(idp.hits(JWKS), 1);
    assert_metric(&m, "portcullis_jwks_keys{issuer=\"corp\"}", 4.0);
    // The refresh is counted once its state is persisted (just after the keys are in use).
    proxy
        .wait_metric(
            Duration::from_secs(10),
            "the refresh counted",
            "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"success\"}",
            1.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_authorization_is_challenged() {
    let e = env(&[], API_ROUTE, "").await;
    let url = e.proxy.url("/x");

    let r = get_with(&url, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(challenge(&r), "Bearer realm=\"portcullis\"");

    // Another scheme is no bearer token at all.
    let r = get_with(&url, &[("authorization", "Basic YWxpY2U6c2VjcmV0")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(challenge(&r), "Bearer realm=\"portcullis\"");

    // A bearer header without a token, and two Authorization headers: a malformed request.
    for headers in [
        vec![("authorization", "Bearer ")],
        vec![("authorization", "Bearer")],
        vec![
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ],
    ] {
        let r = get_with(&url, &headers).await;
        assert_eq!(r.status, 400, "{headers:?}");
        assert_eq!(
            challenge(&r),
            "Bearer realm=\"portcullis\", error=\"invalid_request\"",
            "{headers:?}"
        );
    }
    assert_eq!(e.up.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(auth_result(&m, "api", "corp", "missing"), 2.0, "{m}");
    assert_eq!(
        auth_result(&m, "api", "corp", "invalid_request"),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_get_401_invalid_token() {
    let idp = MockIdp::start().await;
    let rsa = idp.new_key(Algorithm::RS256, "rsa-1");
    // An RSA key published without `alg`: usable with any RSA algorithm the issuer allows.
    let rsa_any = SigningKey::generate(Algorithm::RS256, "rsa-any").without_jwk_alg();
    idp.add_key(rsa_any.clone());
    let attacker = MockIdp::start().await;
    let evil = attacker.new_key(Algorithm::RS256, "evil-1");
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &["algorithms: [RS256, PS256, ES256, EdDSA]"])
        .routes_yaml(API_ROUTE)
        .auth(&["max_token_bytes: 4096"])
        .start()
        .await;

    let valid = idp.token(&rsa).build();
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let mut claims = support::idp::claims_of(&valid);
        claims.insert("sub".into(), json!("admin"));
        let p = base64_url(&serde_json::to_vec(&claims).unwrap());
        format!("{}.{p}.{}", parts[0], parts[2])
    };
    let other_issuer = TokenBuilder::new("https://evil.example.com")
        .sign_with(&rsa)
        .build();

    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", idp.token(&rsa).exp_in(-3600).build(), "expired"),
        (
            "nbf in the future",
            idp.token(&rsa).nbf_in(3600).build(),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            idp.token(&rsa).iat_in(3600).build(),
            "issued_in_future",
        ),
        (
            "wrong audience",
            idp.token(&rsa).claim("aud", "another-api").build(),
            "bad_audience",
        ),
        (
            "wrong audience list",
            idp.token(&rsa).claim("aud", json!(["a", "b"])).build(),
            "bad_audience",
        ),
        (
            "no audience",
            idp.token(&rsa).without("aud").build(),
            "missing_claim",
        ),
        (
            "no exp",
            idp.token(&rsa).without("exp").build(),
            "missing_claim",
        ),
        ("unknown issuer", other_issuer, "unknown_issuer"),
        (
            "no issuer",
            idp.token(&rsa).without("iss").build(),
            "unknown_issuer",
        ),
        (
            "signed by another key",
            idp.token(&evil).kid("rsa-1").build(),
            "bad_signature",
        ),
        ("payload changed after signing", tampered, "bad_signature"),
        (
            "alg not allowed (RS512)",
            idp.token(&rsa_any).alg(Algorithm::RS512).build(),
            "disallowed_algorithm",
        ),
        (
            "alg not the key's (PS256 with an RS256 key)",
            idp.token(&rsa).alg(Algorithm::PS256).build(),
            "disallowed_algorithm",
        ),
        (
            "alg none",
            idp.token(&rsa).unsigned().build(),
            "disallowed_algorithm",
        ),
        (
            "alg None",
            idp.token(&rsa).unsigned().header("alg", "None").build(),
            "disallowed_algorithm",
        ),
        (
            "HS256 with the RSA public key as secret",
            idp.token(&rsa)
                .hmac(rsa.public_pem.as_bytes())
                .kid("rsa-1")
                .build(),
            "disallowed_algorithm",
        ),
        (
            "unknown crit",
            idp.token(&rsa)
                .header("crit", json!(["exp"]))
                .header("exp", 1)
                .build(),
            "unsupported_crit",
        ),
        (
            "empty crit",
            idp.token(&rsa).header("crit", json!([])).build(),
            "unsupported_crit",
        ),
        (
            "jku to an attacker key",
            idp.token(&evil).header("jku", attacker.url(JWKS)).build(),
            "unknown_kid",
        ),
        (
            "x5u to an attacker",
            idp.token(&evil)
                .kid("evil-2")
                .header("x5u", attacker.url("/cert.pem"))
                .build(),
            "unknown_kid",
        ),
        (
            "embedded jwk (attacker kid)",
            idp.token(&evil)
                .kid("evil-3")
                .header("jwk", evil.jwk.clone())
                .build(),
            "unknown_kid",
        ),
        (
            "embedded jwk (issuer's kid)",
            idp.token(&evil)
                .kid("rsa-1")
                .header("jwk", evil.jwk.clone())
                .build(),
            "bad_signature",
        ),
        (
            "embedded jwk, no kid",
            idp.token(&evil)
                .without_header("kid")
                .header("jwk", evil.jwk.clone())
                .build(),
            "bad_signature",
        ),
        (
            "too large",
            idp.token(&rsa).claim("pad", "x".repeat(5000)).build(),
            "too_large",
        ),
        ("garbage", "garbage".to_string(), "malformed"),
        ("two parts", "a.b".to_string(), "malformed"),
        ("four parts", format!("{valid}.x"), "malformed"),
        ("not base64", "!!!.???.***".to_string(), "malformed"),
        (
            "header not JSON",
            format!("{}.{}.sig", base64_url(b"{nope"), base64_url(b"{}")),
            "malformed",
        ),
        (
            "payload not JSON",
            format!(
                "{}.{}.sig",
                base64_url(br#"{"alg":"RS256"}"#),
                base64_url(b"[1")
            ),
            "malformed",
        ),
        (
            "no alg",
            idp.token(&rsa).without_header("alg").build(),
            "malformed",
        ),
        (
            "kid not a string",
            idp.token(&rsa).header("kid", 7).build(),
            "malformed",
        ),
    ];

    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (name, token, reason) in &cases {
        let r = get_bearer(&proxy.url("/api"), token).await;
        assert_eq!(
            r.status,
            401,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let c = challenge(&r);
        assert!(
            c.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            "{name}: {c}"
        );
        *expected.entry(reason).or_default() += 1.0;
    }
    assert_eq!(up.hits(), 0, "no refused request reaches the upstream");
    // Headers pointing elsewhere are never followed.
    assert_eq!(attacker.total_hits(), 0, "jku/x5u/jwk must not be fetched");

    let m = proxy.metrics().await;
    for (reason, n) in &expected {
        assert_eq!(
            auth_result(&m, "api", "corp", reason),
            *n,
            "reason {reason}\n{m}"
        );
    }
    // The control: the same issuer's valid token passes.
    assert_eq!(get_bearer(&proxy.url("/api"), &valid).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_issuer_and_algorithm_confusion() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-partner";
    let corp = MockIdp::start().await;
    let corp_key = corp.new_key(Algorithm::ES256, "corp-ec");
    let partner = MockIdp::start().await;
    let partner_rsa = partner.new_key(Algorithm::RS256, "partner-rsa");
    let up = upstream::start("app").await;
    let secret = format!("shared_secret: \"{SECRET}\"");
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &corp, &[])
        .issuer(
            "partner",
            &partner,
            &["algorithms: [HS256, RS256]", &secret],
        )
        .route(Route::bearer("/").name("any"))
        .route(Route::bearer("/corp").name("corp-only").issuer("corp"))
        .start()
        .await;

    // HS256 with the configured secret is accepted, as is the partner's RSA key.
    let hs = TokenBuilder::new(&partner.issuer())
        .hmac(SECRET.as_bytes())
        .claim("sub", "svc")
        .build();
    let r = get_bearer(&proxy.url("/x"), &hs).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-auth-request-user"), vec!["svc"]);
    assert_eq!(
        get_bearer(&proxy.url("/x"), &partner.token(&partner_rsa).build())
            .await
            .status,
        200
    );

    // Algorithm confusion: HS256 "signed" with the issuer's RSA public key (PEM, or its JWK
    // JSON) as the HMAC secret never verifies; the shared secret is the only HMAC key.
    for secret in [partner_rsa.public_pem.clone(), partner_rsa.jwk.to_string()] {
        let t = TokenBuilder::new(&partner.issuer())
            .hmac(secret.as_bytes())
            .kid("partner-rsa")
            .build();
        let r = get_bearer(&proxy.url("/x"), &t).await;
        assert_eq!(r.status, 401);
        assert!(challenge(&r).contains("error=\"invalid_token\""));
    }
    // An issuer without HMAC refuses HS256 outright, whatever the secret.
    let t = TokenBuilder::new(&corp.issuer())
        .hmac(SECRET.as_bytes())
        .build();
    assert_eq!(get_bearer(&proxy.url("/x"), &t).await.status, 401);

    // A route limited to one issuer refuses another's valid token (also when cached).
    let corp_token = corp.token(&corp_key).build();
    assert_eq!(
        get_bearer(&proxy.url("/corp/a"), &corp_token).await.status,
        200
    );
    assert_eq!(get_bearer(&proxy.url("/corp/a"), &hs).await.status, 401);

    let m = proxy.metrics().await;
    // A refusal is labelled with the route's issuer ("any" when the route accepts several).
    assert_eq!(auth_result(&m, "any", "any", "bad_signature"), 2.0, "{m}");
    assert_eq!(
        auth_result(&m, "any", "any", "disallowed_algorithm"),
        1.0,
        "{m}"
    );
    assert_eq!(
        auth_result(&m, "corp-only", "corp", "wrong_issuer"),
        1.0,
        "{m}"
    );
    assert_eq!(auth_result(&m, "any", "partner", "ok"), 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_rules_give_403_insufficient_scope() {
    let routes = r#"  - { name: scoped, path: /scoped, upstream: app, auth: bearer, authorize: { scopes: ["api:read", "api:write"] } }
  - { name: grouped, path: /grouped, upstream: app, auth: bearer, authorize: { groups: [admins, ops] } }
  - { name: roles, path: /roles, upstream: app, auth: bearer, authorize: { roles: [editor] } }
  - name: claims
    path: /claims
    upstream: app
    auth: bearer
    authorize:
      claims:
        - { claim: tenant, equals: acme }
        - { claim: amr, contains: mfa }
        - { claim: realm_access.roles, contains: editor }
        - { claim: level, one_of: [gold, platinum] }
  - { name: any, path: /any, upstream: app, auth: bearer, authorize: { match: any, groups: [admins], roles: [editor] } }
  - { name: all, path: /all, upstream: app, auth: bearer, authorize: { match: all, groups: [staff], roles: [editor] } }
  - { name: open, path: /, upstream: app, auth: bearer }"#;
    let e = env(&["roles_claim: realm_access.roles"], routes, "").await;
    let key = e.key.clone();
    let tok = |f: &dyn Fn(TokenBuilder) -> TokenBuilder| f(e.idp.token(&key)).build();
    let editor = json!({ "roles": ["editor"] });
    let viewer = json!({ "roles": ["viewer"] });

    let cases: Vec<(&str, String, u16)> = vec![
        // scopes: all listed, from `scope` (space separated) or `scp` (array)
        ("/scoped", tok(&|t| t.claim("scope", "api:read")), 403),
        (
            "/scoped",
            tok(&|t| t.claim("scope", "api:read api:write")),
            200,
        ),
        (
            "/scoped",
            tok(&|t| {
                t.without("scope")
                    .claim("scp", json!(["api:write", "api:read"]))
            }),
            200,
        ),
        ("/scoped", tok(&|t| t.without("scope")), 403),
        // groups: one of
        ("/grouped", tok(&|t| t), 403),
        ("/grouped", tok(&|t| t.claim("groups", json!(["ops"]))), 200),
        ("/grouped", tok(&|t| t.claim("groups", "admins")), 200),
        // roles from the nested claim realm_access.roles
        (
            "/roles",
            tok(&|t| t.claim("realm_access", viewer.clone())),
            403,
        ),
        (
            "/roles",
            tok(&|t| t.claim("realm_access", editor.clone())),
            200,
        ),
        ("/roles", tok(&|t| t.claim("roles", json!(["editor"]))), 403),
        // claim rules (all must hold by default)
        (
            "/claims",
            tok(&|t| {
                t.claim("tenant", "acme")
                    .claim("amr", json!(["pwd", "mfa"]))
                    .claim("realm_access", editor.clone())
                    .claim("level", "gold")
            }),
            200,
        ),
        (
            "/claims",
            tok(&|t| {
                t.claim("tenant", "evil")
                    .claim("amr", json!(["pwd", "mfa"]))
                    .claim("realm_access", editor.clone())
                    .claim("level", "gold")
            }),
            403,
        ),
        (
            "/claims",
            tok(&|t| {
                t.claim("tenant", "acme")
                    .claim("amr", json!(["pwd"]))
                    .claim("realm_access", editor.clone())
                    .claim("level", "gold")
            }),
            403,
        ),
        (
            "/claims",
            tok(&|t| {
                t.claim("tenant", "acme")
                    .claim("amr", json!(["mfa"]))
                    .claim("realm_access", viewer.clone())
                    .claim("level", "gold")
            }),
            403,
        ),
        (
            "/claims",
            tok(&|t| {
                t.claim("tenant", "acme")
                    .claim("amr", json!(["mfa"]))
                    .claim("realm_access", editor.clone())
                    .claim("level", "bronze")
            }),
            403,
        ),
        // match: any
        ("/any", tok(&|t| t.claim("groups", json!(["admins"]))), 200),
        (
            "/any",
            tok(&|t| t.claim("realm_access", editor.clone())),
            200,
        ),
        ("/any", tok(&|t| t), 403),
        // match: all
        (
            "/all",
            tok(&|t| t.claim("realm_access", editor.clone())),
            200,
        ),
        (
            "/all",
            tok(&|t| {
                t.claim("groups", json!(["dev"]))
                    .claim("realm_access", editor.clone())
            }),
            403,
        ),
        ("/all", tok(&|t| t), 403),
        // no rules: any valid token
        ("/open", tok(&|t| t.without("groups").without("scope")), 200),
    ];
    let mut forbidden = 0;
    for (path, token, status) in &cases {
        let r = get_bearer(&e.proxy.url(path), token).await;
        assert_eq!(
            r.status,
            *status,
            "{path} {:?}",
            support::idp::claims_of(token)
        );
        if *status == 403 {
            forbidden += 1;
            let c = challenge(&r);
            assert!(
                c.starts_with("Bearer realm=\"portcullis\", error=\"insufficient_scope\""),
                "{path}: {c}"
            );
            if *path == "/scoped" {
                assert!(c.ends_with("scope=\"api:read api:write\""), "{c}");
            } else {
                assert!(!c.contains("scope=\""), "{c}");
            }
        }
    }
    assert_eq!(e.up.hits(), cases.len() - forbidden);
    let m = e.proxy.metrics().await;
    let total: f64 = ["scoped", "grouped", "roles", "claims", "any", "all"]
        .iter()
        .map(|r| auth_result(&m, r, "corp", "forbidden"))
        .sum();
    assert_eq!(total, forbidden as f64, "{m}");
    assert_eq!(auth_result(&m, "scoped", "corp", "forbidden"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_stripped_on_every_route() {
    let routes = "  - { name: public, path: /public, upstream: app, auth: none }\n  - { name: api, path: /, upstream: app, auth: bearer }";
    let e = env(&[], routes, "").await;
    let key = e.key.clone();
    let spoofed: &[(&str, &str)] = &[
        ("x-auth-request-user", "mallory"),
        ("X-Auth-Request-Email", "mallory@evil.example"),
        ("x-auth-request-groups", "admins"),
        ("x-auth-request-preferred-username", "root"),
        ("x-auth-request-access-token", "stolen"),
        ("x-forwarded-user", "mallory"),
        ("X-Forwarded-Email", "mallory@evil.example"),
        ("x-forwarded-groups", "admins"),
        ("x-forwarded-preferred-username", "root"),
    ];
    let stripped = |r: &support::client::Resp| {
        for (name, _) in spoofed {
            let name = name.to_ascii_lowercase();
            let vals = echoed(r, &name);
            assert!(
                !vals.iter().any(|v| v == "mallory"
                    || v.contains("evil")
                    || v == "admins"
                    || v == "root"
                    || v == "stolen"),
                "{name}: {vals:?}"
            );
        }
    };

    // auth: none still strips them.
    let r = get_with(&e.proxy.url("/public/page"), spoofed).await;
    assert_eq!(r.status, 200);
    stripped(&r);
    for (name, _) in spoofed {
        assert!(echoed(&r, &name.to_ascii_lowercase()).is_empty(), "{name}");
    }

    // Bearer: the client's values are replaced by the token's; claims absent from the token
    // leave the header absent rather than the client's value.
    let token = e.idp.token(&key).without("email").build();
    let auth = format!("Bearer {token}");
    let mut headers = spoofed.to_vec();
    headers.push(("authorization", &auth));
    let r = get_with(&e.proxy.url("/api"), &headers).await;
    assert_eq!(r.status, 200);
    stripped(&r);
    assert_eq!(echoed(&r, "x-auth-request-user"), vec!["alice"]);
    assert_eq!(echoed(&r, "x-auth-request-groups"), vec!["staff,dev"]);
    assert!(echoed(&r, "x-auth-request-email").is_empty());
    assert!(echoed(&r, "x-auth-request-preferred-username").is_empty());
    assert!(echoed(&r, "x-forwarded-user").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_authorization_false_removes_it_upstream() {
    let routes = "  - { name: hidden, path: /hidden, upstream: app, auth: bearer, forward_authorization: false }\n  - { name: api, path: /, upstream: app, auth: bearer }";
    let e = env(&[], routes, "").await;
    let key = e.key.clone();
    let token = e.idp.token(&key).build();

    let r = get_bearer(&e.proxy.url("/hidden/x"), &token).await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r, "authorization").is_empty());
    assert_eq!(echoed(&r, "x-auth-request-user"), vec!["alice"]);

    let r = get_bearer(&e.proxy.url("/x"), &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "authorization"), vec![format!("Bearer {token}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_realm_identity_headers_and_required_claims() {
    let extra = "auth:\n  realm: \"corp-api\"\n  identity_headers: { sub: X-User, \"realm_access.roles\": X-Roles, tenant: X-Tenant }\n";
    let e = env(
        &["required_claims: [tenant]", "clock_skew: 0s"],
        API_ROUTE,
        extra,
    )
    .await;
    let key = e.key.clone();

    let r = get_with(&e.proxy.url("/"), &[]).await;
    assert_eq!(challenge(&r), "Bearer realm=\"corp-api\"");

    let t = e.idp.token(&key).build();
    let r = get_bearer(&e.proxy.url("/"), &t).await;
    assert_eq!(r.status, 401, "tenant is required");
    assert!(challenge(&r).starts_with("Bearer realm=\"corp-api\", error=\"invalid_token\""));

    let t = e
        .idp
        .token(&key)
        .claim("tenant", "acme")
        .claim("realm_access", json!({"roles": ["a", "b"]}))
        .build();
    let r = get_with(
        &e.proxy.url("/"),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-user", "mallory"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r, "x-user"), vec!["alice"]);
    assert_eq!(echoed(&r, "x-roles"), vec!["a,b"]);
    assert_eq!(echoed(&r, "x-tenant"), vec!["acme"]);
    // The default map no longer applies.
    assert!(echoed(&r, "x-auth-request-user").is_empty());

    // With no clock skew, a token that expired a few seconds ago is refused.
    let t = e.idp.token(&key).claim("tenant", "acme").exp_in(-5).build();
    assert_eq!(get_bearer(&e.proxy.url("/"), &t).await.status, 401);
    let m = e.proxy.metrics().await;
    assert_eq!(auth_result(&m, "api", "corp", "missing_claim"), 1.0, "{m}");
    assert_eq!(auth_result(&m, "api", "corp", "expired"), 1.0, "{m}");
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
