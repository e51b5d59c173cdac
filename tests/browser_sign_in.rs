//! One sign-in in a real headless browser (Debian's chromium and chromium-driver, driven over
//! WebDriver): the redirect to the IdP's login form, typing a user name, the callback, the
//! session cookie, and the app page with the identity the upstream received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use jsonwebtoken::Algorithm;
use support::idp::{CLIENT_SECRET, MockIdp};
use support::scenario::{Route, Scenario};
use support::temp_dir;
use support::webdriver::{Browser, available};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_signs_in_and_sees_the_app() {
    if !available() {
        return;
    }
    let idp = MockIdp::start().await;
    let _key = idp.new_key(Algorithm::RS256, "k1");
    idp.use_login_form(true);
    let upstream = support::upstream::start("app").await;
    let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
    let proxy = Scenario::new()
        .upstream("app", &upstream)
        .issuer("corp", &idp, &["client_id: portcullis", &secret])
        .route(Route::session("/").name("app"))
        .sessions(&["cookie: { secure: false }"])
        .start()
        .await;
    let browser = Browser::start(&temp_dir("chromium-profile")).await;

    browser.goto(&proxy.url("/reports/q3?view=full")).await;
    // The IdP's login form.
    assert!(
        browser
            .current_url()
            .await
            .starts_with(&idp.url("/authorize")),
        "{}",
        browser.current_url().await
    );
    let user = browser.find("#username").await;
    browser.type_into(&user, "carol").await;
    let button = browser.find("#sign-in").await;
    browser.click(&button).await;
    // Back at the page first asked for, signed in as the user typed.
    let page = support::wait_for(
        std::time::Duration::from_secs(15),
        "the app page",
        || async {
            let text = browser.text().await;
            text.contains("x-auth-request-user").then_some(text)
        },
    )
    .await;
    assert_eq!(
        browser.current_url().await,
        proxy.url("/reports/q3?view=full")
    );
    let echo: serde_json::Value =
        serde_json::from_str(&page).unwrap_or_else(|e| panic!("{e}: {page}"));
    assert_eq!(
        support::upstream::seen(&echo, "x-auth-request-user"),
        ["carol"]
    );
    assert!(
        support::upstream::seen(&echo, "cookie").is_empty(),
        "{echo}"
    );
    let cookies = browser.cookie_names().await;
    assert!(
        cookies.contains(&"portcullis_session".to_string()),
        "{cookies:?}"
    );
    assert!(
        cookies.iter().all(|c| !c.starts_with("portcullis_login_")),
        "{cookies:?}"
    );
    // A reload is served from the session.
    let calls = idp.token_requests().len();
    browser.goto(&proxy.url("/reports/q4")).await;
    assert!(browser.text().await.contains("carol"));
    assert_eq!(idp.token_requests().len(), calls);
    browser.quit().await;
}
