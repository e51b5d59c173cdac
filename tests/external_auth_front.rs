//! External authorization through the real front proxies (nginx `auth_request`, Traefik
//! ForwardAuth, Caddy `forward_auth`, each as `tests/support/front.rs` runs it) with
//! Portcullis as their authentication service (issue 17):
//!
//! - no usable keys: a bearer request is never allowed and never a 401 (Traefik and Caddy
//!   pass Portcullis's 503 on; nginx turns any 5xx of the auth subrequest into its own 500);
//! - every spelling of the path-normalisation table (`tests/support/paths.rs`), sent as raw
//!   bytes: none reaches the app as the protected path without authentication, whatever the
//!   front proxy does with it; a token still works on the canonical spelling;
//! - a whole browser sign-in and sign-out in headless Chromium through the front proxy, with
//!   the callback, sign-out (and for nginx start) paths routed to Portcullis as README says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use support::client::{Resp, get_with};
use support::front::{self, Front, Own};
use support::idp::{Failure, MockIdp};
use support::paths::{TABLE, Want, reads_as_admin};
use support::raw;
use support::scenario::{Route, Scenario};
use support::upstream::{self, MockUpstream};
use support::webdriver::{Browser, available};
use support::{Proxy, metric_value, temp_dir, wait_until};

const NGINX: &str = "/_portcullis/auth/nginx";
const FORWARD: &str = "/_portcullis/auth/forward";
const START: &str = "/_portcullis/start";
const CALLBACK: &str = "/oauth2/callback";
const SIGN_OUT: &str = "/oauth2/sign_out";

/// Which front proxy, with its binary.
#[derive(Clone)]
enum Kind {
    Nginx(PathBuf),
    Traefik(PathBuf),
    Caddy(PathBuf),
}

impl Kind {
    fn nginx() -> Option<Self> {
        front::binary("nginx", &["/usr/sbin/nginx"]).map(Self::Nginx)
    }

    fn traefik() -> Option<Self> {
        front::binary("traefik", &[]).map(Self::Traefik)
    }

    fn caddy() -> Option<Self> {
        front::binary("caddy", &[]).map(Self::Caddy)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Nginx(_) => "nginx",
            Self::Traefik(_) => "traefik",
            Self::Caddy(_) => "caddy",
        }
    }

    /// The front proxy in front of `up`, asking `proxy` in its dialect; with `own`, Portcullis's
    /// browser paths routed to it (`own.portcullis` is filled in here).
    async fn start(&self, up: &MockUpstream, proxy: &Proxy, own: Option<Own<'_>>) -> Front {
        let portcullis = proxy.url("");
        let hostport = |url: &str| url.trim_start_matches("http://").to_string();
        match self {
            Self::Nginx(bin) => {
                let own = own.map(|o| Own {
                    portcullis: &portcullis,
                    ..o
                });
                front::nginx_with(bin, &up.url(), &proxy.url(NGINX), own.as_ref()).await
            }
            Self::Traefik(bin) => {
                let own = own.map(|o| Own {
                    portcullis: &portcullis,
                    ..o
                });
                front::traefik_with(bin, &up.url(), &proxy.url(FORWARD), own.as_ref()).await
            }
            Self::Caddy(bin) => {
                let own_hostport = hostport(&portcullis);
                let own = own.map(|o| Own {
                    portcullis: &own_hostport,
                    ..o
                });
                let (app, auth) = (hostport(&up.url()), hostport(&portcullis));
                front::caddy_with(bin, &app, &auth, FORWARD, own.as_ref()).await
            }
        }
    }

    /// The dialect label of its decisions.
    fn dialect(&self) -> &'static str {
        match self {
            Self::Nginx(_) => "nginx",
            Self::Traefik(_) | Self::Caddy(_) => "forward_auth",
        }
    }
}

fn decision_paths() -> [String; 2] {
    [
        format!("nginx_path: {NGINX}"),
        format!("forward_auth_path: {FORWARD}"),
    ]
}

// --- 1. No usable keys ---------------------------------------------------------------------

/// The issuer's JWKS fails (`failure`) from the start: through the front proxy, a bearer
/// request with a token the IdP would sign is refused as unavailable (never 401, never an
/// allow, never the app), while the open route keeps working.
async fn no_usable_keys_is_never_an_allow(kind: Kind, failure: Failure) {
    let name = kind.name();
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    idp.fail(failure.clone());
    let up = upstream::start("app").await;
    let [n, f] = decision_paths();
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer(
            "corp",
            &idp,
            &[
                "retries: 0",
                "breaker_threshold: 100",
                "refresh_interval: 1s",
            ],
        )
        .route(Route::bearer("/api").name("api"))
        .route(Route::open("/public").name("public"))
        .section("external_auth", &[&n, &f])
        .start_unready()
        .await;
    let refresh_failed = "portcullis_jwks_refreshes_total{issuer=\"corp\",result=\"failure\"}";
    wait_until(Duration::from_secs(10), || async {
        metric_value(&proxy.metrics().await, refresh_failed) >= 1.0
    })
    .await;
    let front = kind.start(&up, &proxy, None).await;
    let token = format!("Bearer {}", idp.token(&key).build());

    let r = get_with(
        &format!("{}/api/items", front.base),
        &[("authorization", &token)],
    )
    .await;
    let body = String::from_utf8_lossy(&r.body);
    match kind {
        // nginx takes only 2xx, 401 and 403 from the auth subrequest; Portcullis's 503 becomes
        // nginx's own 500 ("auth request unexpected status: 503" in its log), which is still
        // a refusal that sends nobody to sign in.
        Kind::Nginx(_) => {
            assert_eq!(r.status, 500, "{name} {failure:?}: {body}\n{}", front.log());
            assert!(
                front.log().contains("auth request unexpected status: 503"),
                "{}",
                front.log()
            );
        }
        // Traefik and Caddy pass the decision's answer on as is: 503 with Retry-After, and no
        // challenge that would make the client drop its token.
        Kind::Traefik(_) | Kind::Caddy(_) => {
            assert_eq!(r.status, 503, "{name} {failure:?}: {body}");
            assert_eq!(header(&r, "retry-after"), Some("5"), "{name}");
            assert_eq!(header(&r, "www-authenticate"), None, "{name}");
            assert!(
                body.contains("signing keys are unavailable"),
                "{name}: {body}"
            );
        }
    }
    assert_eq!(up.hits(), 0, "{name} {failure:?}: the app was reached");

    // The open route does not need keys.
    let r = get_with(&format!("{}/public/x", front.base), &[]).await;
    assert_eq!(r.status, 200, "{name} {failure:?}");
    assert_eq!(up.hits(), 1);
    let m = proxy.metrics().await;
    let series = format!(
        "portcullis_external_auth_decisions_total{{dialect=\"{}\",result=\"unavailable\",route=\"api\"}}",
        kind.dialect()
    );
    assert_eq!(metric_value(&m, &series), 1.0, "{series}\n{m}");
    let allowed = format!(
        "portcullis_external_auth_decisions_total{{dialect=\"{}\",result=\"allow\",route=\"api\"}}",
        kind.dialect()
    );
    assert!(!support::has_series(&m, &allowed), "{m}");
}

fn header<'r>(r: &'r Resp, name: &str) -> Option<&'r str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_usable_keys_answers_500_never_401() {
    let Some(kind) = Kind::nginx() else { return };
    no_usable_keys_is_never_an_allow(kind.clone(), Failure::Status(500)).await;
    no_usable_keys_is_never_an_allow(kind, Failure::EmptyKeys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_without_usable_keys_answers_503_never_401() {
    let Some(kind) = Kind::traefik() else { return };
    no_usable_keys_is_never_an_allow(kind.clone(), Failure::Status(500)).await;
    no_usable_keys_is_never_an_allow(kind, Failure::EmptyKeys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_without_usable_keys_answers_503_never_401() {
    let Some(kind) = Kind::caddy() else { return };
    no_usable_keys_is_never_an_allow(kind.clone(), Failure::Status(500)).await;
    no_usable_keys_is_never_an_allow(kind, Failure::EmptyKeys).await;
}

// --- 2. Path spellings ---------------------------------------------------------------------

/// Every spelling of the table, as raw bytes through the front proxy, without credentials:
/// whatever the front proxy does with it (normalise, refuse, pass it on), the app never gets a
/// request unless Portcullis's table says the spelling is the public route's, and then never
/// one a lenient app could read as `/admin`. With a token, the canonical spellings work.
async fn no_spelling_reaches_the_app_unauthenticated(kind: Kind) {
    let name = kind.name();
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    let up = upstream::start("app").await;
    let [n, f] = decision_paths();
    let proxy = Scenario::new()
        .upstream("app", &up)
        .issuer("corp", &idp, &[])
        .route(Route::bearer("/admin").name("admin"))
        .route(Route::open("/").name("public"))
        .section("external_auth", &[&n, &f])
        .start()
        .await;
    let front = kind.start(&up, &proxy, None).await;
    let addr = front.addr();
    let host = addr.to_string();

    for &(spelling, want) in TABLE {
        let what = format!("{name} {spelling:?} ({want:?})");
        let request = raw::get(spelling, &host, &[]);
        let public = matches!(want, Want::Public(_));
        unauthenticated(&up, addr, &request, public, &what).await;
    }
    // Raw bytes outside ASCII and a raw NUL: Portcullis's own parser refuses both; a front
    // proxy may pass the first on percent-encoded (`/admin%C3%A9`), which is not `/admin`.
    // nginx refuses the NUL itself (400) and passes the UTF-8 raw in X-Original-URL, which is
    // refused as the proxy refuses it, in nginx's form (403; not a broken description's 400,
    // which nginx would turn into its 500).
    for (target, at_nginx) in [(&b"/admin\xc3\xa9"[..], 403), (&b"/adm\x00in"[..], 400)] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let what = format!("{name} {:?}", String::from_utf8_lossy(target));
        let status = unauthenticated(&up, addr, &request, true, &what).await;
        if matches!(kind, Kind::Nginx(_)) {
            assert_eq!(status, Some(at_nginx), "{what}\n{}", front.log());
        }
    }

    // The converse: a token opens the canonical spellings, with the identity from it.
    let token = format!(
        "Authorization: Bearer {}",
        idp.token(&key).claim("sub", "alice").build()
    );
    for (spelling, path) in [("/admin", "/admin"), ("/admin/x?q=1", "/admin/x")] {
        let r = raw::try_exchange(addr, &raw::get(spelling, &host, &[&token]))
            .await
            .unwrap_or_else(|| panic!("{name} {spelling}: no answer"));
        assert_eq!(r.status, 200, "{name} {spelling}: {}", r.text());
        assert_eq!(r.json()["path"], path, "{name} {spelling}");
        assert_eq!(
            echoed_raw(&r, "x-auth-request-user"),
            ["alice"],
            "{name} {spelling}"
        );
    }
}

/// Sends `request` (no credentials) through the front proxy at `addr`: it is never allowed
/// unless `public` (the spelling is the public route's), and even then the app gets no
/// request a lenient app could read as `/admin`, and no identity. Returns the status, if any.
async fn unauthenticated(
    up: &MockUpstream,
    addr: std::net::SocketAddr,
    request: &[u8],
    public: bool,
    what: &str,
) -> Option<u16> {
    let before = up.hits();
    let r = raw::try_exchange(addr, request).await;
    let reached = up.hits() - before;
    let status = r.as_ref().map(|r| r.status);
    if reached == 0 {
        assert!(status.is_none_or(|s| s / 100 != 2), "{what}: {status:?}");
        return status;
    }
    assert!(public, "{what}: reached the app ({status:?})");
    let r = r.unwrap_or_else(|| panic!("{what}: the app answered, the client got nothing"));
    assert_eq!(r.status, 200, "{what}");
    let got = r.json()["path"].as_str().unwrap_or_default().to_string();
    // `/ADMIN`: routes are case-sensitive (tests/path_normalization.rs says why).
    assert!(
        !reads_as_admin(&got) || got == "/ADMIN",
        "{what}: the app got {got:?}"
    );
    assert!(echoed_raw(&r, "x-auth-request-user").is_empty(), "{what}");
    status
}

/// The values of header `name` the echo upstream received, from a raw response.
fn echoed_raw(r: &raw::RawResp, name: &str) -> Vec<String> {
    upstream::seen(&r.json(), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_lets_no_path_spelling_through_unauthenticated() {
    let Some(kind) = Kind::nginx() else { return };
    no_spelling_reaches_the_app_unauthenticated(kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_lets_no_path_spelling_through_unauthenticated() {
    let Some(kind) = Kind::traefik() else { return };
    no_spelling_reaches_the_app_unauthenticated(kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_lets_no_path_spelling_through_unauthenticated() {
    let Some(kind) = Kind::caddy() else { return };
    no_spelling_reaches_the_app_unauthenticated(kind).await;
}

// --- 3. Browser sign-in and sign-out -------------------------------------------------------

/// Headless Chromium opens an app page through the front proxy: the IdP's login form, the
/// callback (routed to Portcullis by the front proxy), the app page with the identity from the
/// session; then sign-out through the front proxy (its confirmation page, since a typed URL
/// is not provably the app's own), the IdP's end-session, and the next visit to the app signs
/// in again.
async fn a_browser_signs_in_and_out_through(kind: Kind) {
    if !available() {
        return;
    }
    // One Chromium at a time: three at once on CI's two cores would race their deadlines.
    let _one_browser = ONE_BROWSER.lock().await;
    let name = kind.name();
    let idp = MockIdp::start().await;
    let _key = idp.new_key(Algorithm::RS256, "k1");
    idp.use_login_form(true);
    let up = upstream::start("app").await;
    let [n, f] = decision_paths();
    let start = format!("start_path: {START}");
    let proxy = Scenario::new()
        .upstream("app", &up)
        .sign_in_issuer("corp", &idp, &[])
        .route(Route::session("/app").name("app"))
        .sessions(&["cookie: { secure: false }"])
        .section("external_auth", &[&n, &f, &start])
        .start()
        .await;
    // What README says to route to Portcullis: the callback and sign-out paths, and for nginx
    // (ingress-nginx auth-signin) the start path.
    let own = Own {
        portcullis: "",
        paths: &[CALLBACK, SIGN_OUT],
        start: matches!(kind, Kind::Nginx(_)).then_some(START),
    };
    let front = kind.start(&up, &proxy, Some(own)).await;
    let browser = Browser::start(&temp_dir("chromium-profile")).await;
    let page = format!("{}/app/page?view=full", front.base);

    browser.goto(&page).await;
    let at = browser.current_url().await;
    assert!(
        at.starts_with(&idp.url("/authorize")),
        "{name}: {at}\n{}",
        front.log()
    );
    assert!(
        at.contains(&urlencode(&format!("{}{CALLBACK}", front.base))),
        "{name}: the IdP comes back through the front proxy: {at}"
    );
    let user = browser.find("#username").await;
    browser.type_into(&user, "carol").await;
    let button = browser.find("#sign-in").await;
    browser.click(&button).await;
    let text = support::wait_for(Duration::from_secs(15), "the app page", || async {
        let text = browser.text().await;
        text.contains("x-auth-request-user").then_some(text)
    })
    .await;
    assert_eq!(browser.current_url().await, page, "{name}");
    let echo: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} {e}: {text}"));
    assert_eq!(echo["path"], "/app/page", "{name}");
    assert_eq!(echo["query"], "view=full", "{name}");
    assert_eq!(
        upstream::seen(&echo, "x-auth-request-user"),
        ["carol"],
        "{name}"
    );
    assert!(
        browser
            .cookie_names()
            .await
            .contains(&"portcullis_session".to_string()),
        "{name}"
    );
    assert_eq!(
        up.hits(),
        1,
        "{name}: only the signed-in page reached the app"
    );

    // Sign-out through the front proxy: typed in, so Portcullis asks to confirm.
    browser
        .goto(&format!("{}{SIGN_OUT}?rd=/app/page", front.base))
        .await;
    let confirm = browser.find("form button[type=submit]").await;
    browser.click(&confirm).await;
    // The IdP's end-session sends the browser back to /app/page, which signs in again.
    let at = support::wait_for(Duration::from_secs(15), "the IdP again", || async {
        let at = browser.current_url().await;
        at.starts_with(&idp.url("/authorize")).then_some(at)
    })
    .await;
    assert_eq!(idp.end_sessions().len(), 1, "{name}: {at}");
    assert!(
        !browser
            .cookie_names()
            .await
            .contains(&"portcullis_session".to_string()),
        "{name}"
    );
    assert_eq!(up.hits(), 1, "{name}: nothing reached the app signed out");
    let m = proxy.metrics().await;
    let series = format!(
        "portcullis_external_auth_decisions_total{{dialect=\"{}\",result=\"sign_in\",route=\"app\"}}",
        kind.dialect()
    );
    assert_eq!(metric_value(&m, &series), 2.0, "{series}\n{m}");
    browser.quit().await;
}

/// Held while a browser runs (each test has its own runtime; a tokio mutex works across them).
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `s` percent-encoded as a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_and_out_through_nginx() {
    let Some(kind) = Kind::nginx() else { return };
    a_browser_signs_in_and_out_through(kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_and_out_through_traefik() {
    let Some(kind) = Kind::traefik() else { return };
    a_browser_signs_in_and_out_through(kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_and_out_through_caddy() {
    let Some(kind) = Kind::caddy() else { return };
    a_browser_signs_in_and_out_through(kind).await;
}
