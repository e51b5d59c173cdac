//! One canonical path decides the route (issue 7 section 1), through real sockets with a raw
//! client, so every spelling reaches the proxy exactly as written: a protected `auth: bearer`
//! route `/admin` and a public catch-all `auth: none` route `/`, each on its own echo upstream.
//! No spelling of the protected path may reach an upstream without a token; for every accepted
//! spelling, the test checks what the upstream received. Then `server.path_normalization`
//! options, `case_insensitive` routes, Host checks, absolute-form targets, HTTP/2
//! `:authority`, and `Upgrade: h2c`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use support::Proxy;
use support::idp::{MockIdp, SigningKey};
use support::paths::{TABLE, Want, reads_as_admin};
use support::raw::{self, RawResp};
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream, seen};

/// The proxy under test, with its IdP key and the two echo upstreams.
struct Paths {
    _idp: MockIdp,
    key: SigningKey,
    idp_issuer: String,
    admin: MockUpstream,
    public: MockUpstream,
    proxy: Proxy,
}

/// The proxy with routes `admin` (`/admin`, bearer, upstream `admin`) and `public` (`/`, none,
/// upstream `public`), `extra_routes` before them, and `server` settings (lines under
/// `server:`).
async fn env(server: &[&str], extra_routes: &[Route]) -> Paths {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    let admin = upstream::start("admin").await;
    let public = upstream::start("public").await;
    let mut server_lines = vec!["idle_timeout: 30s"];
    server_lines.extend_from_slice(server);
    let mut scenario = Scenario::new()
        .server(&server_lines)
        .issuer("corp", &idp, &[])
        .upstream_raw("admin", &format!("addresses: [\"{}\"]", admin.url()))
        .upstream_raw("public", &format!("addresses: [\"{}\"]", public.url()));
    for r in extra_routes {
        scenario = scenario.route(r.clone());
    }
    let proxy = scenario
        .route(Route::bearer("/admin").name("admin").upstream("admin"))
        .routes_yaml("  - { name: public, path: /, upstream: public }")
        .start()
        .await;
    let idp_issuer = idp.issuer();
    Paths {
        _idp: idp,
        key,
        idp_issuer,
        admin,
        public,
        proxy,
    }
}

impl Paths {
    fn token(&self) -> String {
        support::idp::TokenBuilder::new(&self.idp_issuer)
            .sign_with(&self.key)
            .build()
    }

    async fn send(&self, request: &[u8]) -> RawResp {
        raw::exchange(self.proxy.addr.unwrap(), request).await
    }

    /// GET `target` (written as is) with Host `app.example.com` and `extra` header lines.
    async fn get(&self, target: &str, extra: &[&str]) -> RawResp {
        self.send(&raw::get(target, "app.example.com", extra)).await
    }

    async fn get_with_token(&self, target: &str) -> RawResp {
        let auth = format!("Authorization: Bearer {}", self.token());
        self.get(target, &[&auth]).await
    }
}

async fn check_table(e: &Paths, table: &[(&str, Want)]) {
    for &(spelling, want) in table {
        let (admin_before, public_before) = (e.admin.hits(), e.public.hits());
        let r = e.get(spelling, &[]).await;
        match want {
            Want::Refused => {
                assert_eq!(r.status, 400, "{spelling:?}: {}", r.text());
                assert_eq!(
                    (e.admin.hits(), e.public.hits()),
                    (admin_before, public_before),
                    "{spelling:?} reached an upstream"
                );
            }
            Want::Protected(path) => {
                assert_eq!(r.status, 401, "{spelling:?} without a token: {}", r.text());
                assert_eq!(
                    e.public.hits(),
                    public_before,
                    "{spelling:?} reached public"
                );
                let r = e.get_with_token(spelling).await;
                assert_eq!(r.status, 200, "{spelling:?} with a token: {}", r.text());
                assert_eq!(r.header("x-upstream-id"), Some("admin"), "{spelling:?}");
                assert_eq!(r.json()["path"], path, "{spelling:?}");
            }
            Want::Public(path) => {
                assert_eq!(r.status, 200, "{spelling:?}: {}", r.text());
                assert_eq!(r.header("x-upstream-id"), Some("public"), "{spelling:?}");
                let got = r.json()["path"].as_str().unwrap().to_string();
                assert_eq!(got, path, "{spelling:?}");
                assert!(
                    !reads_as_admin(&got) || path == "/ADMIN",
                    "{spelling:?}: public upstream got {got:?}"
                );
            }
        }
        assert_eq!(
            e.admin.hits() > admin_before,
            matches!(want, Want::Protected(_))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_the_protected_path_reaches_an_upstream_unauthenticated() {
    let e = env(&[], &[]).await;
    check_table(&e, TABLE).await;
    // Raw bytes outside ASCII and a raw NUL: refused (by the parser or by normalisation).
    for req in [
        &b"GET /admin\xc3\xa9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        &b"GET /adm\x00in HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
    ] {
        let r = e.send(req).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(req));
    }
    assert_eq!(
        e.admin.hits(),
        TABLE
            .iter()
            .filter(|(_, w)| matches!(w, Want::Protected(_)))
            .count()
    );
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_options_forward_the_form_they_route_on() {
    let e = env(
        &["path_normalization: { escaped_slashes: unescape_and_forward, backslashes: to_slash, path_parameters: strip }"],
        &[],
    )
    .await;
    check_table(
        &e,
        &[
            ("/admin%2Fx", Want::Protected("/admin/x")),
            ("/%2Fadmin", Want::Protected("/admin")),
            ("/%5Cadmin", Want::Protected("/admin")),
            ("/\\admin", Want::Protected("/admin")),
            ("/admin;x=1", Want::Protected("/admin")),
            ("/admin;jsessionid=1/x", Want::Protected("/admin/x")),
            ("/;x/admin", Want::Protected("/admin")),
            ("/ad;min", Want::Public("/ad")),
            ("/public/..;/admin", Want::Refused),
            ("/public%2F..%2Fadmin", Want::Refused),
            ("/public\\..\\admin", Want::Refused),
        ],
    )
    .await;
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_options_forward_as_received_but_route_on_the_canonical_form() {
    let e = env(
        &["path_normalization: { merge_slashes: false, escaped_slashes: keep, backslashes: keep, path_parameters: keep, double_encoding: keep }"],
        &[],
    )
    .await;
    check_table(
        &e,
        &[
            ("//admin", Want::Protected("//admin")),
            ("/admin%2fx", Want::Protected("/admin%2Fx")),
            ("/%5Cadmin", Want::Protected("/%5Cadmin")),
            ("/\\admin", Want::Protected("/\\admin")),
            ("/admin;x=1", Want::Protected("/admin;x=1")),
            ("/%61dmin;x", Want::Protected("/admin;x")),
            ("/public/..;/admin", Want::Refused),
            ("/public/%252e", Want::Public("/public/%252e")),
        ],
    )
    .await;
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_route_matches_any_case() {
    let e = env(
        &[],
        &[Route::bearer("/Files")
            .name("files")
            .upstream("admin")
            .flag("case_insensitive")],
    )
    .await;
    for p in ["/files", "/FILES/x", "/fIlEs", "/%46iles", "//FILES"] {
        let r = e.get(p, &[]).await;
        assert_eq!(r.status, 401, "{p}");
    }
    let r = e.get_with_token("/FILES/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/FILES/x");
    // Case-sensitive by default: /ADMIN is not the admin route (see the table).
    assert_eq!(
        e.get("/filesx", &[]).await.header("x-upstream-id"),
        Some("public")
    );
    e.proxy.shutdown().await;
}

// --- Host ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matches_case_trailing_dot_and_port_and_upstream_gets_the_canonical_host() {
    let e = env(
        &[],
        &[Route::bearer("/")
            .name("app")
            .host("app.example.com")
            .upstream("admin")],
    )
    .await;
    for host in [
        "app.example.com",
        "APP.Example.com",
        "app.example.com.",
        "app.example.com:8080",
        "App.Example.Com.:443",
    ] {
        let r = e.send(&raw::get("/x", host, &[])).await;
        assert_eq!(
            r.status, 401,
            "Host {host}: must be the protected host route"
        );
    }
    let auth = format!("Authorization: Bearer {}", e.token());
    let r = e
        .send(&raw::get("/x", "APP.example.com.:8080", &[&auth]))
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(seen(&j, "host"), ["app.example.com:8080"]);
    assert_eq!(seen(&j, "x-forwarded-host"), ["app.example.com:8080"]);
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_is_refused_with_400() {
    let e = env(&[], &[]).await;
    let bad: &[&[u8]] = &[
        b"GET /x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: user@app.example.com\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app.example.com/admin\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app.example.com:99999\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app.example.com:http\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app..example.com\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for req in bad {
        let r = e.send(req).await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(req),
            r.text()
        );
    }
    assert_eq!(e.public.hits() + e.admin.hits(), 0);
    // HTTP/1.0 may omit Host; it matches any-host routes.
    let r = e.send(b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_wins_over_host() {
    let e = env(
        &[],
        &[Route::bearer("/")
            .name("secure")
            .host("secure.example.com")
            .upstream("admin")],
    )
    .await;
    // Routed by the target's authority, not by the Host header that names a public host.
    let r = e
        .send(b"GET http://secure.example.com/x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // And the upstream receives the target's authority as Host.
    let r = e
        .send(b"GET http://WWW.example.com./y?q=1 HTTP/1.1\r\nHost: secure.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream-id"), Some("public"));
    let j = r.json();
    assert_eq!(seen(&j, "host"), ["www.example.com"]);
    assert_eq!(j["path"], "/y");
    assert_eq!(j["query"], "q=1");
    // The path of an absolute-form target is normalised like any other.
    let r = e
        .send(b"GET http://www.example.com//admin HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 401);
    e.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_is_the_host_and_a_conflicting_host_is_refused() {
    let e = env(
        &[],
        &[Route::bearer("/")
            .name("secure")
            .host("secure.example.com")
            .upstream("admin")],
    )
    .await;
    let addr = e.proxy.addr.unwrap();
    let req = Request::get("http://secure.example.com/x")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (_, r) = support::client::send_h2(addr, req).await;
    assert_eq!(r.status, 401);
    let req = Request::get("http://secure.example.com/x")
        .header("host", "www.example.com")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (_, r) = support::client::send_h2(addr, req).await;
    assert_eq!(r.status, 400, "a Host naming another host than :authority");
    assert_eq!(e.public.hits(), 0);
    e.proxy.shutdown().await;
}

// --- h2c ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_never_forwarded() {
    let e = env(&[], &[]).await;
    let r = e
        .get(
            "/x",
            &[
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(seen(&j, "upgrade"), Vec::<String>::new());
    assert_eq!(seen(&j, "http2-settings"), Vec::<String>::new());
    assert_eq!(j["version"], "HTTP/1.1");
    e.proxy.shutdown().await;
}

// --- the demo ---

#[test]
fn demo_double_slash_admin_is_not_the_public_route() {
    use portcullis::routing::Router;
    use portcullis::routing::target::canonicalize;
    let config = portcullis::Config::from_yaml(portcullis::demo::DEMO_CONFIG, []).unwrap();
    let router = Router::new(&config.routes);
    for spelling in ["//admin", "/%61dmin", "///admin/"] {
        let mut parts = Request::get(spelling)
            .header("host", "127.0.0.1:8080")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let t = canonicalize(&mut parts, &config.server.path_normalization).unwrap();
        let route = router.find(t.host(), t.path(), &http::Method::GET).unwrap();
        assert_eq!(&*route.name, "admin", "{spelling}");
    }
}
