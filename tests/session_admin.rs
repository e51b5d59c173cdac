//! Session administration on the admin listener, with the memory store: the bearer token
//! (401 without or with a wrong one, 404 when `admin.token` is unset), listings and their
//! filters, revokes by id, `sid` and subject (the session refused at once, its WebSocket
//! closed and counted as `revoked`), and `portcullis sessions list|revoke` through the built
//! binary. Two replicas on one Redis are in `session_revocation.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::browser::CookieClient;
use support::client::Resp;
use support::idp::{CLIENT_SECRET, MockIdp};
use support::scenario::{Env, Route};
use support::ws::{self, Ws, closed_within, echo};
use support::{metric_value, temp_dir, wait_for};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "admin-token-0123456789abcdef";

async fn env(admin: &[&str]) -> Env {
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let idp = MockIdp::start().await;
    let issuer_extra = ["client_id: portcullis", secret.as_str(), "timeout: 1s"];
    let admin: Vec<&str> = std::iter::once("address: \"127.0.0.1:0\"")
        .chain(admin.iter().copied())
        .collect();
    Env::with_idp(idp, "k1", None, &issuer_extra, |s| {
        s.route(Route::session("/").name("app"))
            .sessions(&["cookie: { secure: false }"])
            .section("admin", &admin)
    })
    .await
}

async fn sign_in_as(e: &Env, user: &str, sid: &str) -> CookieClient {
    e.idp.set_user(user);
    e.idp.set_sid(Some(sid));
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&e.proxy.url("/app")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    b
}

/// A call to the admin listener with `authorization` (none when `None`).
async fn admin(e: &Env, method: &str, path: &str, authorization: Option<&str>) -> Resp {
    let url = format!("http://{}{path}", e.proxy.admin);
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    CookieClient::new()
        .request(method, &url, &headers, "")
        .await
}

async fn authed(e: &Env, method: &str, path: &str) -> Resp {
    admin(e, method, path, Some(&format!("Bearer {TOKEN}"))).await
}

fn subs(listing: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = listing["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sub"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

async fn open_ws(e: &Env, b: &CookieClient) -> Ws {
    let addr = e.proxy.addr.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", b.cookie_header().parse().unwrap());
    ws::open(stream, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_need_the_token_and_are_absent_without_one() {
    let e = env(&[&format!("token: \"{TOKEN}\"")]).await;
    let wrong = format!("Bearer {TOKEN}x");
    let cases = [
        None,
        Some(wrong.as_str()),
        Some("Bearer "),
        Some("Basic YWRtaW46YWRtaW4="),
        Some(TOKEN),
    ];
    for auth in cases {
        for (m, p) in [("GET", "/sessions"), ("POST", "/sessions/revoke?sub=alice")] {
            let r = admin(&e, m, p, auth).await;
            assert_eq!(r.status, 401, "{m} {p} with {auth:?}");
            assert_eq!(r.headers["www-authenticate"], "Bearer");
            assert!(!String::from_utf8_lossy(&r.body).contains(TOKEN));
        }
    }
    // The scheme is case-insensitive; the token is not.
    let ok = admin(&e, "GET", "/sessions", Some(&format!("bearer {TOKEN}"))).await;
    assert_eq!(ok.status, 200);
    let upper = format!("Bearer {}", TOKEN.to_uppercase());
    assert_eq!(
        admin(&e, "GET", "/sessions", Some(&upper)).await.status,
        401
    );
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "portcullis_admin_requests_total{endpoint=\"list\",result=\"unauthorized\"}"
        ),
        6.0
    );
    // Without admin.token, the endpoints do not exist; the rest of the admin listener does.
    let off = env(&[]).await;
    for auth in [None, Some(format!("Bearer {TOKEN}"))] {
        let r = admin(&off, "GET", "/sessions", auth.as_deref()).await;
        assert_eq!(r.status, 404);
    }
    assert_eq!(admin(&off, "GET", "/healthz", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_filter_by_sub_sid_and_issuer_and_show_no_secret() {
    let e = env(&[&format!("token: \"{TOKEN}\"")]).await;
    let alice = sign_in_as(&e, "alice", "sid-a").await;
    let _alice2 = sign_in_as(&e, "alice", "sid-a2").await;
    let _bob = sign_in_as(&e, "bob", "sid-b").await;
    let all = authed(&e, "GET", "/sessions").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.headers["cache-control"], "no-store");
    let all = all.json();
    assert_eq!(subs(&all), ["alice", "alice", "bob"]);
    assert_eq!(all["truncated"], false);
    let one = &all["sessions"][0];
    for k in [
        "id",
        "sub",
        "sid",
        "issuer",
        "created",
        "last_seen",
        "expires",
    ] {
        assert!(!one[k].is_null(), "{k} in {one}");
    }
    assert_eq!(one["issuer"], "corp");
    let text = all.to_string();
    let cookie = alice.cookies["portcullis_session"].clone();
    assert!(!text.contains(&cookie), "no cookie in a listing");
    assert!(
        !text.contains("access") && !text.contains("token"),
        "{text}"
    );
    let by_sub = authed(&e, "GET", "/sessions?sub=alice").await.json();
    assert_eq!(subs(&by_sub), ["alice", "alice"]);
    let by_sid = authed(&e, "GET", "/sessions?sid=sid-b&issuer=corp")
        .await
        .json();
    assert_eq!(subs(&by_sid), ["bob"]);
    assert_eq!(by_sid["sessions"][0]["sid"], "sid-b");
    let none = authed(&e, "GET", "/sessions?sub=carol").await.json();
    assert_eq!(subs(&none), Vec::<String>::new());
    let limited = authed(&e, "GET", "/sessions?limit=2").await.json();
    assert_eq!(limited["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(limited["truncated"], true);
    for bad in [
        "/sessions?issuer=nobody",
        "/sessions?limit=0",
        "/sessions?limit=1001",
        "/sessions?color=red",
        "/sessions?sub=a&sub=b",
    ] {
        assert_eq!(authed(&e, "GET", bad).await.status, 400, "{bad}");
    }
    assert_eq!(authed(&e, "POST", "/sessions").await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_ends_the_session_and_closes_its_tunnels() {
    let e = env(&[&format!("token: \"{TOKEN}\"")]).await;
    let mut alice = sign_in_as(&e, "alice", "sid-a").await;
    let mut bob = sign_in_as(&e, "bob", "sid-b").await;
    let mut carol = sign_in_as(&e, "carol", "sid-c").await;
    let mut ws_alice = open_ws(&e, &alice).await;
    let mut ws_bob = open_ws(&e, &bob).await;
    echo(&mut ws_alice, "a").await;
    echo(&mut ws_bob, "b").await;
    // By id (the hash a listing shows).
    let listing = authed(&e, "GET", "/sessions?sub=alice").await.json();
    let id = listing["sessions"][0]["id"].as_str().unwrap().to_string();
    let r = authed(&e, "POST", &format!("/sessions/revoke?id={id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(r.json()["ids"][0], id.as_str());
    assert_eq!(alice.api(&e.proxy.url("/x")).await.status, 401);
    closed_within(&mut ws_alice, Duration::from_secs(1)).await;
    echo(&mut ws_bob, "bob's tunnel stays").await;
    // By sid, then by subject.
    let r = authed(&e, "POST", "/sessions/revoke?sid=sid-b&issuer=corp").await;
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(bob.api(&e.proxy.url("/x")).await.status, 401);
    closed_within(&mut ws_bob, Duration::from_secs(1)).await;
    assert_eq!(carol.api(&e.proxy.url("/x")).await.status, 200);
    let r = authed(&e, "POST", "/sessions/revoke?sub=carol").await;
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(carol.api(&e.proxy.url("/x")).await.status, 401);
    // Nothing left to revoke: 0, not an error.
    let r = authed(&e, "POST", "/sessions/revoke?sub=carol").await;
    assert_eq!((r.status, r.json()["revoked"].clone()), (200, 0.into()));
    for bad in [
        "/sessions/revoke",
        "/sessions/revoke?sub=a&sid=b",
        "/sessions/revoke?id=x&issuer=corp",
        "/sessions/revoke?sub=a&limit=3",
    ] {
        assert_eq!(authed(&e, "POST", bad).await.status, 400, "{bad}");
    }
    wait_for(Duration::from_secs(5), "closures counted", || async {
        let m = e.proxy.metrics().await;
        (metric_value(
            &m,
            "portcullis_session_tunnels_closed_total{reason=\"revoked\"}",
        ) == 2.0)
            .then_some(())
    })
    .await;
}

/// Runs the built binary with `args`, the token in `PORTCULLIS_ADMIN__TOKEN` (when given).
async fn cli(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args).env_remove("PORTCULLIS_ADMIN__TOKEN");
    if let Some(t) = token {
        cmd.env("PORTCULLIS_ADMIN__TOKEN", t);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the CLI hung")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_revokes() {
    let e = env(&[&format!("token: \"{TOKEN}\"")]).await;
    let mut alice = sign_in_as(&e, "alice", "sid-a").await;
    let mut bob = sign_in_as(&e, "bob", "sid-b").await;
    let url = format!("http://{}", e.proxy.admin);
    let out = cli(&["sessions", "list", "--admin", &url], Some(TOKEN)).await;
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("ID\tSUB\tSID\tISSUER"), "{table}");
    assert!(table.contains("\talice\tsid-a\tcorp\t") && table.contains("\tbob\tsid-b\tcorp\t"));
    let out = cli(
        &[
            "sessions", "list", "--admin", &url, "--sub", "bob", "--json",
        ],
        Some(TOKEN),
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(subs(&json), ["bob"]);
    // The token from a file, a revoke by subject.
    let dir = temp_dir("session-admin-cli");
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let out = cli(
        &[
            "sessions",
            "revoke",
            "--admin",
            &url,
            "--token-file",
            file,
            "--sub",
            "alice",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("revoked 1 session(s)"));
    assert_eq!(alice.api(&e.proxy.url("/x")).await.status, 401);
    assert_eq!(bob.api(&e.proxy.url("/x")).await.status, 200);
    // A wrong token: exit 1 and a message that does not echo it; no token: usage, exit 2.
    let out = cli(
        &["sessions", "list", "--admin", &url],
        Some("wrong-token-0123456789"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && !err.contains("wrong-token"), "{err}");
    let out = cli(&["sessions", "list", "--admin", &url], None).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = cli(
        &[
            "sessions", "revoke", "--admin", &url, "--sub", "a", "--sid", "b",
        ],
        Some(TOKEN),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A small valid configuration with a session route, for the configuration errors below.
const BASE: &str = "\
listeners:
  plain: { address: \"127.0.0.1:8080\" }
upstreams:
  app: { addresses: [\"http://127.0.0.1:9000\"] }
issuers:
  corp: { issuer: \"http://127.0.0.1:1\", client_id: portcullis, audiences: [api] }
routes:
  - { path: /, upstream: app, auth: session }
";

fn config_error(yaml: &str, env: &[(&str, &str)]) -> String {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    match portcullis::Config::from_yaml(yaml, env) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn admin_token_and_max_auth_age_are_checked_at_load() {
    let c = portcullis::Config::from_yaml(BASE, []).unwrap();
    assert!(c.admin.token.is_none());
    let env = [("PORTCULLIS_ADMIN__TOKEN", TOKEN)];
    let c = portcullis::Config::from_yaml(BASE, env.map(|(k, v)| (k.into(), v.into()))).unwrap();
    assert_eq!(
        c.admin.token.as_ref().map(|t| t.expose()),
        Some(TOKEN.as_bytes())
    );
    assert!(!format!("{c:?}").contains(TOKEN), "the token is redacted");
    assert_eq!(
        config_error(BASE, &[("PORTCULLIS_ADMIN__TOKEN", "short")]),
        "admin.token: the token must be at least 16 bytes"
    );
    assert_eq!(
        config_error(
            BASE,
            &[("PORTCULLIS_ADMIN__TOKEN", "has a space in it, sixteen+")]
        ),
        "admin.token: the token must be printable ASCII without spaces (it is sent in a header)"
    );
    let dir = temp_dir("admin-token-file");
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let yaml = format!("{BASE}admin: {{ token_file: \"{}\" }}\n", file.display());
    let c = portcullis::Config::from_yaml(&yaml, []).unwrap();
    assert_eq!(
        c.admin.token.as_ref().map(|t| t.expose()),
        Some(TOKEN.as_bytes())
    );
    assert_eq!(
        config_error(&yaml, &[("PORTCULLIS_ADMIN__TOKEN", TOKEN)]),
        "admin.token_file: set admin.token or admin.token_file, not both"
    );
    let missing = format!(
        "{BASE}admin: {{ token_file: \"{}/nope\" }}\n",
        dir.display()
    );
    assert!(config_error(&missing, &[]).starts_with("admin.token_file: cannot read"));
    let route = |extra: &str| BASE.replace("auth: session }", &format!("auth: {extra} }}"));
    let c = portcullis::Config::from_yaml(&route("session, max_auth_age: 15m"), []).unwrap();
    assert_eq!(c.routes[0].max_auth_age, Some(Duration::from_secs(900)));
    assert_eq!(
        config_error(&route("bearer, max_auth_age: 15m"), &[]),
        "routes[0].max_auth_age: needs auth: session or either"
    );
    assert_eq!(
        config_error(&route("session, max_auth_age: 500ms"), &[]),
        "routes[0].max_auth_age: must be at least 1s (max_age is in seconds)"
    );
}
