//! Configuration reload while running: routes and upstreams swap at once; a bad file changes
//! nothing; both are counted.
mod support;

use std::path::PathBuf;

use portcullis::reload::ReloadError;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use support::client::get_bearer;
use support::idp::{JWKS, MockIdp};
use support::scenario::{Scenario, auth_result};
use support::upstream::MockUpstream;
use support::{Proxy, assert_metric, client, start_proxy, temp_dir, upstream, wait_until};

#[tokio::test]
async fn reload_swaps_routes_and_upstreams_and_keeps_running_config_on_error() {
    let a = upstream::start("a").await;
    let b = upstream::start("b").await;
    let proxy = Scenario::pass_through(&a).start().await;
    assert_eq!(client::get(&proxy.url("/x")).await.json()["id"], "a");

    // A new file: same listener, upstream now b, and a new route.
    let dir = temp_dir("reload");
    let file = dir.join("portcullis.yaml");
    let good = Scenario::new()
        .upstream("app", &b)
        .routes_yaml(
            "  - { path: /, upstream: app }\n  - { name: only-new, path: /new, upstream: app }",
        )
        .to_yaml();
    std::fs::write(&file, &good).unwrap();
    proxy.reloader.reload_file(&file, []).unwrap();
    let r = client::get(&proxy.url("/new/thing")).await;
    assert_eq!(r.json()["id"], "b");
    let m = proxy.metrics().await;
    assert_metric(
        &m,
        "portcullis_reloads_total{kind=\"config\",result=\"success\"}",
        1.0,
    );
    assert!(m.contains("route=\"only-new\""), "{m}");

    // A broken file is refused; b keeps serving.
    std::fs::write(&file, "routes: [ { path: nope } ]").unwrap();
    assert!(proxy.reloader.reload_file(&file, []).is_err());
    assert_eq!(client::get(&proxy.url("/x")).await.json()["id"], "b");
    assert_metric(
        &proxy.metrics().await,
        "portcullis_reloads_total{kind=\"config\",result=\"failure\"}",
        1.0,
    );
    proxy.shutdown().await;
}

/// One issuer entry, by hand (so audiences and secrets can change between files).
fn issuer(name: &str, idp: &MockIdp, audiences: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    issuer: \"{}\"\n    audiences: [{audiences}]\n{extra}",
        idp.issuer()
    )
}

/// The echo upstream `app` and a state directory holding the config file a test reloads.
struct ConfigFile {
    up: MockUpstream,
    state: PathBuf,
    file: PathBuf,
}

impl ConfigFile {
    async fn new(tag: &str) -> Self {
        let state = temp_dir(tag);
        let file = state.join("portcullis.yaml");
        let up = upstream::start("app").await;
        ConfigFile { up, state, file }
    }

    /// The config: upstream `app`, `routes`, the state directory and `issuers` (entries).
    fn config(&self, issuers: &str, routes: &str) -> String {
        Scenario::new()
            .upstream_at("app", &[self.up.url()], &[])
            .routes_yaml(routes)
            .state_dir(&self.state)
            .yaml(&format!("issuers:\n{issuers}"))
            .to_yaml()
    }

    /// Writes [`ConfigFile::config`] to the file and has `proxy` reload it.
    fn reload(&self, proxy: &Proxy, issuers: &str, routes: &str) -> Result<(), ReloadError> {
        std::fs::write(&self.file, self.config(issuers, routes)).expect("write the config file");
        proxy.reloader.reload_file(&self.file, [])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_issuer_changes_without_a_restart() {
    let (corp_idp, corp_key) = MockIdp::start_with_key(Algorithm::RS256, "corp-1").await;
    let (partner_idp, partner_key) = MockIdp::start_with_key(Algorithm::ES256, "partner-1").await;
    let f = ConfigFile::new("reload-issuers").await;
    let corp_route =
        "  - { name: corp-api, path: /corp, upstream: app, auth: bearer, issuer: corp }";
    let partner_route =
        "  - { name: partner-api, path: /partner, upstream: app, auth: bearer, issuer: partner }";
    let secret = "shared-secret-one-0123456789abcdef";
    let hs = |s: &str| format!("    algorithms: [RS256, HS256]\n    shared_secret: \"{s}\"\n");

    let first = f.config(&issuer("corp", &corp_idp, "api", &hs(secret)), corp_route);
    let proxy = start_proxy(&first).await;
    let token = corp_idp.token(&corp_key).build();
    let r = get_bearer(&proxy.url("/corp/x"), &token).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let hs_token = support::idp::TokenBuilder::new(&corp_idp.issuer())
        .hmac(secret.as_bytes())
        .build();
    assert_eq!(
        get_bearer(&proxy.url("/corp/x"), &hs_token).await.status,
        200
    );
    let jwks_fetches = corp_idp.hits(JWKS);
    assert!(jwks_fetches >= 1);

    // 1. The audience the token carries is removed, the shared secret rotated: the token that
    // is in the verified-token cache is refused at once, and the keys were not fetched again.
    let rotated = "shared-secret-two-0123456789abcdef";
    f.reload(
        &proxy,
        &issuer("corp", &corp_idp, "other", &hs(rotated)),
        corp_route,
    )
    .unwrap();
    let r = get_bearer(&proxy.url("/corp/x"), &token).await;
    assert_eq!(r.status, 401, "cached token served under the old audiences");
    let other = corp_idp.token(&corp_key).claim("aud", "other").build();
    assert_eq!(get_bearer(&proxy.url("/corp/x"), &other).await.status, 200);
    let hs_other = |s: &str| {
        support::idp::TokenBuilder::new(&corp_idp.issuer())
            .claim("aud", "other")
            .hmac(s.as_bytes())
            .build()
    };
    assert_eq!(
        get_bearer(&proxy.url("/corp/x"), &hs_other(secret))
            .await
            .status,
        401
    );
    assert_eq!(
        get_bearer(&proxy.url("/corp/x"), &hs_other(rotated))
            .await
            .status,
        200
    );
    assert_eq!(corp_idp.hits(JWKS), jwks_fetches, "keys fetched again");
    let m = proxy.metrics().await;
    assert_eq!(auth_result(&m, "corp-api", "corp", "bad_audience"), 1.0);

    // 2. An issuer is added whose name sorts first (config indices shift), with its own
    // route; the corp route keeps its labels.
    let both = format!(
        "{}{}",
        issuer(
            "a-partner",
            &partner_idp,
            "api",
            "    algorithms: [ES256]\n"
        ),
        issuer("corp", &corp_idp, "other", &hs(rotated)),
    );
    let routes2 = format!(
        "{corp_route}\n{}",
        partner_route.replace("issuer: partner", "issuer: a-partner")
    );
    f.reload(&proxy, &both, &routes2).unwrap();
    let ptoken = partner_idp.token(&partner_key).build();
    wait_until(Duration::from_secs(10), || async {
        get_bearer(&proxy.url("/partner/x"), &ptoken).await.status == 200
    })
    .await;
    // A partner token on the corp route is the wrong issuer, labelled with corp's name.
    assert_eq!(get_bearer(&proxy.url("/corp/x"), &ptoken).await.status, 401);
    assert_eq!(get_bearer(&proxy.url("/corp/x"), &other).await.status, 200);
    let m = proxy.metrics().await;
    assert_eq!(auth_result(&m, "corp-api", "corp", "wrong_issuer"), 1.0);
    assert!(auth_result(&m, "partner-api", "a-partner", "ok") >= 1.0);
    assert_eq!(auth_result(&m, "corp-api", "corp", "ok"), 5.0);
    assert!(
        m.contains("portcullis_jwks_age_seconds{issuer=\"a-partner\"}"),
        "{m}"
    );
    assert_eq!(corp_idp.hits(JWKS), jwks_fetches, "keys fetched again");

    // 3. corp is removed: its tokens are refused as an unknown issuer on the remaining
    // route, its key gauges disappear, and its keys are no longer refreshed.
    f.reload(
        &proxy,
        &issuer(
            "a-partner",
            &partner_idp,
            "api",
            "    algorithms: [ES256]\n",
        ),
        &partner_route.replace("issuer: partner", "issuer: a-partner"),
    )
    .unwrap();
    assert_eq!(
        get_bearer(&proxy.url("/partner/x"), &other).await.status,
        401
    );
    assert_eq!(
        get_bearer(&proxy.url("/partner/x"), &ptoken).await.status,
        200
    );
    let m = proxy.metrics().await;
    assert!(
        !m.contains("portcullis_jwks_age_seconds{issuer=\"corp\"}"),
        "{m}"
    );
    assert_metric(
        &m,
        "portcullis_reloads_total{kind=\"config\",result=\"success\"}",
        3.0,
    );

    // 4. An invalid file is refused, logged and counted; the running issuers stay.
    let e = f
        .reload(
            &proxy,
            &issuer("a-partner", &partner_idp, "", ""),
            &partner_route.replace("issuer: partner", "issuer: a-partner"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("issuers.a-partner.audiences"), "{e}");
    assert_eq!(
        get_bearer(&proxy.url("/partner/x"), &ptoken).await.status,
        200
    );
    assert_metric(
        &proxy.metrics().await,
        "portcullis_reloads_total{kind=\"config\",result=\"failure\"}",
        1.0,
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_new_key_source_fetches_the_new_keys() {
    let (old_idp, old_key) = MockIdp::start_with_key(Algorithm::RS256, "k1").await;
    let (new_idp, new_key) = MockIdp::start_with_key(Algorithm::RS256, "k1").await;
    let f = ConfigFile::new("reload-source").await;
    let route = "  - { name: api, path: /, upstream: app, auth: bearer, issuer: corp }";
    let proxy = start_proxy(&f.config(&issuer("corp", &old_idp, "api", ""), route)).await;
    let old = old_idp.token(&old_key).build();
    assert_eq!(get_bearer(&proxy.url("/x"), &old).await.status, 200);

    // Same name, another IdP (issuer URL changed): the old keys must not verify its tokens.
    f.reload(&proxy, &issuer("corp", &new_idp, "api", ""), route)
        .unwrap();
    assert_eq!(get_bearer(&proxy.url("/x"), &old).await.status, 401);
    let new = new_idp.token(&new_key).build();
    wait_until(Duration::from_secs(10), || async {
        get_bearer(&proxy.url("/x"), &new).await.status == 200
    })
    .await;
    assert!(new_idp.hits(JWKS) >= 1);
    proxy.shutdown().await;
}
