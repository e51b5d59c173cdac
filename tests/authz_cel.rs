//! CEL authorize rules through the real proxy: `allow_if` / `deny_if` over claims, request
//! headers, method, path and client address; deny_if precedence; a runtime error denies and
//! is counted; a shadow rule is counted and logged, never enforced; request ids on refusals,
//! in the access log, kept from a trusted caller only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::client::{self, echoed, get_bearer, get_with};
use support::idp::{Failure, MockIdp, SigningKey, TokenBuilder};
use support::scenario::{Env, Route, Scenario};
use support::{metric_value, process, temp_dir, upstream, wait_for};

const ROUTES: &str = r#"  - name: claims
    path: /claims
    upstream: app
    auth: bearer
    authorize:
      allow_if:
        - "claims.email.endsWith('@corp.com')"
        - "'ops' in claims.groups"
  - name: hdr
    path: /hdr
    upstream: app
    auth: bearer
    authorize: { allow_if: ["request.headers['x-tenant'] == 'blue'"] }
  - name: method
    path: /method
    upstream: app
    auth: bearer
    methods: [GET, POST]
    authorize: { allow_if: ["request.method == 'GET' && request.path.startsWith('/method/ok')"] }
  - name: loopback
    path: /loopback
    upstream: app
    auth: bearer
    authorize: { allow_if: ["client.ip == '127.0.0.1'"] }
  - name: elsewhere
    path: /elsewhere
    upstream: app
    auth: bearer
    authorize: { deny_if: ["client.ip.startsWith('127.')"] }
  - name: both
    path: /both
    upstream: app
    auth: bearer
    authorize:
      groups: [ops]
      allow_if: ["true"]
      deny_if: [{ name: suspended, expr: "has(claims.suspended) && claims.suspended" }]
  - name: any
    path: /any
    upstream: app
    auth: bearer
    authorize:
      match: any
      groups: [admins]
      allow_if: ["claims.level == 'gold'"]
  - name: err
    path: /err
    upstream: app
    auth: bearer
    authorize: { allow_if: [{ name: level, expr: "claims.level > 3" }] }
  - name: shadow
    path: /shadow
    upstream: app
    auth: bearer
    authorize:
      allow_if: [{ name: mfa, expr: "'mfa' in claims.amr", mode: shadow }]
  - { name: open, path: /, upstream: app }"#;

async fn env() -> Env {
    Env::start("rsa-1", None, &[], |s| s.routes_yaml(ROUTES)).await
}

fn token(e: &Env, f: impl FnOnce(TokenBuilder) -> TokenBuilder) -> String {
    f(e.idp.token(&e.key)).build()
}

fn rule_series(route: &str, rule: &str, result: &str) -> String {
    format!(
        "portcullis_authz_rule_results_total{{result=\"{result}\",route=\"{route}\",rule=\"{rule}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_decide_over_claims_headers_method_path_and_client_ip() {
    let e = env().await;
    let good = token(&e, |t| {
        t.claim("email", "a@corp.com")
            .claim("groups", json!(["dev", "ops"]))
    });
    let outsider = token(&e, |t| {
        t.claim("email", "a@corp.com.evil")
            .claim("groups", json!(["ops"]))
    });
    let no_ops = token(&e, |t| {
        t.claim("email", "a@corp.com")
            .claim("groups", json!(["dev"]))
    });
    let status = |path: &str, tok: &str| {
        let url = e.proxy.url(path);
        let tok = tok.to_string();
        async move { get_bearer(&url, &tok).await.status }
    };
    // Every allow_if must hold.
    assert_eq!(status("/claims", &good).await, 200);
    assert_eq!(status("/claims", &outsider).await, 403);
    assert_eq!(status("/claims", &no_ops).await, 403);
    // Request headers (lower-case names).
    let auth = format!("Bearer {good}");
    let hdr = |tenant: &'static str| {
        let url = e.proxy.url("/hdr");
        let auth = auth.clone();
        async move {
            get_with(&url, &[("authorization", &auth), ("X-Tenant", tenant)])
                .await
                .status
        }
    };
    assert_eq!(hdr("blue").await, 200);
    assert_eq!(hdr("red").await, 403);
    assert_eq!(status("/hdr", &good).await, 403, "no header: no such key");
    // Method and canonical path (the path is normalised before the rule sees it).
    assert_eq!(status("/method/ok", &good).await, 200);
    assert_eq!(status("/method/x/../ok", &good).await, 400);
    assert_eq!(status("/method/other", &good).await, 403);
    let post = client::send(
        http::Request::post(e.proxy.url("/method/ok"))
            .header("authorization", &auth)
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 403);
    // The client's address.
    assert_eq!(status("/loopback", &good).await, 200);
    assert_eq!(status("/elsewhere", &good).await, 403);
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &rule_series("claims", "allow_if[0]", "allow")),
        2.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("claims", "allow_if[0]", "deny")),
        1.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("elsewhere", "deny_if[0]", "deny")),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_if_wins_over_every_allow() {
    let e = env().await;
    let ok = token(&e, |t| t.claim("groups", json!(["ops"])));
    let suspended = token(&e, |t| {
        t.claim("groups", json!(["ops"])).claim("suspended", true)
    });
    assert_eq!(get_bearer(&e.proxy.url("/both"), &ok).await.status, 200);
    let r = get_bearer(&e.proxy.url("/both"), &suspended).await;
    assert_eq!(r.status, 403);
    // The 403 says nothing about the policy.
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("suspended") && !body.contains("deny_if"),
        "{body}"
    );
    // match: any — one of groups or allow_if is enough; deny_if still first.
    let gold = token(&e, |t| t.claim("level", "gold"));
    let admin = token(&e, |t| {
        t.claim("groups", json!(["admins"])).claim("level", 1)
    });
    let neither = token(&e, |t| t.claim("level", "silver"));
    assert_eq!(get_bearer(&e.proxy.url("/any"), &gold).await.status, 200);
    assert_eq!(get_bearer(&e.proxy.url("/any"), &admin).await.status, 200);
    assert_eq!(get_bearer(&e.proxy.url("/any"), &neither).await.status, 403);
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &rule_series("both", "suspended", "deny")),
        1.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("both", "suspended", "allow")),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_error_denies_and_is_counted() {
    let e = env().await;
    let wrong_type = token(&e, |t| t.claim("level", "gold"));
    let missing = token(&e, |t| t);
    let fine = token(&e, |t| t.claim("level", 5));
    assert_eq!(
        get_bearer(&e.proxy.url("/err"), &wrong_type).await.status,
        403
    );
    assert_eq!(get_bearer(&e.proxy.url("/err"), &missing).await.status, 403);
    assert_eq!(get_bearer(&e.proxy.url("/err"), &fine).await.status, 200);
    let m = e.proxy.metrics().await;
    assert_eq!(metric_value(&m, &rule_series("err", "level", "error")), 2.0);
    assert_eq!(metric_value(&m, &rule_series("err", "level", "allow")), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_rule_is_counted_never_enforced() {
    let e = env().await;
    let pwd = token(&e, |t| t.claim("amr", json!(["pwd"])));
    let mfa = token(&e, |t| t.claim("amr", json!(["pwd", "mfa"])));
    let none = token(&e, |t| t);
    for tok in [&pwd, &mfa, &none] {
        assert_eq!(get_bearer(&e.proxy.url("/shadow"), tok).await.status, 200);
    }
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &rule_series("shadow", "mfa", "shadow_deny")),
        1.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("shadow", "mfa", "shadow_allow")),
        1.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("shadow", "mfa", "shadow_error")),
        1.0
    );
    assert_eq!(metric_value(&m, &rule_series("shadow", "mfa", "deny")), 0.0);
}

fn request_id(r: &client::Resp) -> String {
    r.headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on {}: {:?}", r.status, r.headers))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_a_generated_request_id_in_header_and_body() {
    let e = env().await;
    let r401 = client::get(&e.proxy.url("/claims")).await;
    assert_eq!(r401.status, 401);
    let a = request_id(&r401);
    let r403 = get_bearer(&e.proxy.url("/claims"), &token(&e, |t| t)).await;
    assert_eq!(r403.status, 403);
    let b = request_id(&r403);
    assert_ne!(a, b);
    let body = String::from_utf8_lossy(&r403.body);
    assert_eq!(body, format!("403 forbidden\nrequest id: {b}\n"));
    let json = get_with(
        &e.proxy.url("/claims"),
        &[
            ("authorization", &format!("Bearer {}", token(&e, |t| t))),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(json.json()["request_id"], Value::from(request_id(&json)));
    // An untrusted caller's id is replaced, on refusals and on the way to the upstream.
    let sent = get_with(&e.proxy.url("/open"), &[("x-request-id", "mine-123")]).await;
    assert_eq!(sent.status, 200);
    let upstream_saw = echoed(&sent, "x-request-id");
    assert_eq!(upstream_saw, vec![request_id(&sent)]);
    assert_ne!(request_id(&sent), "mine-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_callers_valid_id_is_kept_an_invalid_one_replaced() {
    let e = Env::start("rsa-1", None, &[], |s| {
        s.routes_yaml(ROUTES)
            .server(&["trust_forwarded_headers: true"])
    })
    .await;
    let r = get_with(&e.proxy.url("/claims"), &[("x-request-id", "edge-42")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(request_id(&r), "edge-42");
    let ok = get_with(&e.proxy.url("/open"), &[("x-request-id", "edge-43")]).await;
    assert_eq!(echoed(&ok, "x-request-id"), vec!["edge-43".to_string()]);
    assert_eq!(request_id(&ok), "edge-43");
    let long = "x".repeat(129);
    for bad in ["two words", long.as_str()] {
        let r = get_with(&e.proxy.url("/claims"), &[("x-request-id", bad)]).await;
        assert_eq!(r.status, 401);
        assert_ne!(request_id(&r), bad);
    }
    // A trusted proxy's last X-Forwarded-For entry is client.ip.
    let tok = format!("Bearer {}", token(&e, |t| t));
    let via = |xff: &'static str| {
        let url = e.proxy.url("/loopback");
        let tok = tok.clone();
        async move {
            get_with(&url, &[("authorization", &tok), ("x-forwarded-for", xff)])
                .await
                .status
        }
    };
    assert_eq!(via("127.0.0.1, 10.0.0.9").await, 403);
    assert_eq!(via("10.0.0.9, 127.0.0.1").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_for_unavailable_keys_carries_a_request_id() {
    let idp = MockIdp::start().await;
    let key: SigningKey = idp.new_key(Algorithm::RS256, "k1");
    idp.fail(Failure::Status(500));
    let up = upstream::start("app").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &["retries: 0", "refresh_interval: 1s"])
        .route(Route::bearer("/api").name("api"))
        .start_unready()
        .await;
    let r = get_bearer(&proxy.url("/api"), &idp.token(&key).build()).await;
    assert_eq!(r.status, 503);
    assert!(!request_id(&r).is_empty());
}

/// The real binary's log: the access line of a refusal has the id, the reason and the rule;
/// a shadow rule that would deny has a line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_the_id_reason_and_rule_and_shadow_would_deny() {
    let dir = temp_dir("authz-cel-log");
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let yaml = Scenario::new()
        .for_binary()
        .log("log: { access: true, format: json, level: info }")
        .state_dir(dir.join("state"))
        .upstream_exact("app", &[up.url()], &[])
        .issuer("corp", &idp, &[])
        .routes_yaml(ROUTES)
        .to_yaml();
    let bin = process::spawn(&dir, &yaml).await;
    let base = format!("http://{}", bin.addr);
    let r = get_bearer(
        &format!("{base}/both"),
        &idp.token(&key)
            .claim("groups", json!(["ops"]))
            .claim("suspended", true)
            .build(),
    )
    .await;
    assert_eq!(r.status, 403);
    let id = request_id(&r);
    let pwd = idp.token(&key).claim("amr", json!(["pwd"])).build();
    let shadowed = get_bearer(&format!("{base}/shadow"), &pwd).await;
    assert_eq!(shadowed.status, 200);
    let shadow_id = request_id(&shadowed);
    let field = |v: &Value, k: &str| -> String {
        let f = v.get("fields").unwrap_or(v);
        f.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let lines = |log: String| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    };
    // The JSON log line of request `id` whose field `key` is `value`.
    let line = async |what: &str, id: &str, key: &str, value: &str| -> Value {
        wait_for(Duration::from_secs(10), what, || {
            let found = lines(bin.log())
                .into_iter()
                .find(|v| field(v, "request_id") == id && field(v, key) == value);
            std::future::ready(found)
        })
        .await
    };
    let access = line("the access line of the 403", &id, "message", "request").await;
    assert_eq!(field(&access, "reason"), "forbidden", "{access}");
    assert_eq!(field(&access, "rule"), "suspended", "{access}");
    let shadow = line("the shadow line", &shadow_id, "result", "would deny").await;
    assert_eq!(field(&shadow, "rule"), "mfa", "{shadow}");
    assert_eq!(field(&shadow, "route"), "shadow", "{shadow}");
    // The access line of a proxied request names the upstream address that answered.
    let proxied = line("the shadowed access line", &shadow_id, "message", "request").await;
    assert!(
        field(&proxied, "upstream").starts_with(&up.url()),
        "{proxied}"
    );
    // No token or claim value in the log.
    let log = bin.log();
    assert!(!log.contains(&pwd), "the token was logged");
}

/// A session's claims (from the ID token) are `claims` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_routes_apply_cel_rules_to_the_sessions_claims() {
    use support::browser::CookieClient;
    let idp = MockIdp::start().await;
    let _key = idp.new_key(Algorithm::RS256, "k1");
    let up = upstream::start("app").await;
    let secret = format!("client_secret: \"{}\"", support::idp::CLIENT_SECRET);
    let routes = r#"  - name: app
    path: /app
    upstream: app
    auth: session
    authorize: { allow_if: ["claims.sub == 'alice' && claims.email.endsWith('@example.com')"] }
  - name: others
    path: /others
    upstream: app
    auth: session
    authorize: { deny_if: [{ name: not-alice, expr: "claims.sub == 'alice'" }] }
  - { name: open, path: /, upstream: app }"#;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .routes_yaml(routes)
        .issuer("corp", &idp, &["client_id: portcullis", &secret])
        .sessions(&["cookie: { secure: false }"])
        .start()
        .await;
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&proxy.url("/app/x")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    let refused = b.api(&proxy.url("/others/x")).await;
    assert_eq!(refused.status, 403);
    assert!(!request_id(&refused).is_empty());
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &rule_series("app", "allow_if[0]", "allow")),
        1.0
    );
    assert_eq!(
        metric_value(&m, &rule_series("others", "not-alice", "deny")),
        1.0
    );
}

/// External authorization answers carry the id of the request they decided: the one a
/// trusted decision peer sent with it (Envoy's `x-request-id`), else a new one; CEL rules
/// decide there as on the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_answers_carry_the_described_requests_id() {
    let e = Env::start("rsa-1", None, &[], |s| {
        s.routes_yaml(ROUTES).section(
            "external_auth",
            &[
                "envoy_path_prefix: /_auth/envoy",
                "nginx_path: /_auth/nginx",
            ],
        )
    })
    .await;
    let envoy = e.proxy.url("/_auth/envoy/claims/x");
    let r = get_with(
        &envoy,
        &[("host", "app.example.com"), ("x-request-id", "envoy-7")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(request_id(&r), "envoy-7");
    let outsider = format!("Bearer {}", token(&e, |t| t.claim("email", "x@else.com")));
    let r = get_with(
        &envoy,
        &[
            ("host", "app.example.com"),
            ("authorization", &outsider),
            ("x-request-id", "envoy-8"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(request_id(&r), "envoy-8");
    assert!(String::from_utf8_lossy(&r.body).contains("envoy-8"));
    let r = get_with(
        &e.proxy.url("/_auth/nginx"),
        &[
            ("x-original-url", "https://app.example.com/claims/x"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!request_id(&r).is_empty());
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &rule_series("claims", "allow_if[0]", "deny")),
        1.0
    );
}
