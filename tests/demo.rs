//! `portcullis demo` does what the README says: bearer tokens from the development IdP, and
//! the browser flow through its login form to the echo app's identity headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::browser::{CookieClient, query_param};

async fn demo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut config, intro) = portcullis::demo::prepare(Vec::new(), any, any)
        .await
        .unwrap();
    assert!(intro.contains("/app"), "{intro}");
    config.state_dir = support::temp_dir("demo-state");
    let server = portcullis::Server::bind(config).await.unwrap();
    let addr = server.local_addr("plain").unwrap();
    let admin = server.admin_addr().unwrap();
    let task = tokio::spawn(server.run(std::future::pending()));
    support::wait_until(Duration::from_secs(10), || async {
        support::client::try_get(&format!("http://{admin}/readyz"))
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    (addr, task)
}

#[tokio::test]
async fn the_demo_signs_a_browser_in_through_the_login_form() {
    let (addr, task) = demo().await;
    let base = format!("http://{addr}");
    let mut b = CookieClient::new();
    // The app sends the browser to the development IdP ...
    let r = b.navigate(&format!("{base}/app/hello")).await;
    assert_eq!(r.status, 302);
    let authorize = r.headers["location"].to_str().unwrap().to_string();
    // ... which shows a login form carrying the request along.
    let form = b.navigate(&authorize).await;
    assert_eq!(form.status, 200);
    let html = String::from_utf8_lossy(&form.body).to_string();
    assert!(
        html.contains("<form") && html.contains("username"),
        "{html}"
    );
    let idp = authorize.split("/authorize").next().unwrap().to_string();
    let q = authorize.split_once('?').unwrap().1;
    let posted = b
        .request(
            "POST",
            &format!("{idp}/authorize"),
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("{q}&username=bob"),
        )
        .await;
    assert_eq!(
        posted.status,
        302,
        "{:?}",
        String::from_utf8_lossy(&posted.body)
    );
    let callback = posted.headers["location"].to_str().unwrap().to_string();
    assert!(query_param(&callback, "code").is_some());
    let back = b.navigate(&callback).await;
    assert_eq!(
        back.status,
        302,
        "{:?}",
        String::from_utf8_lossy(&back.body)
    );
    assert_eq!(back.headers["location"], "/app/hello");
    // The page shows the identity headers the app received, and the forwarded access token.
    let page = b.navigate(&format!("{base}/app/hello")).await;
    assert_eq!(page.status, 200);
    let echo = page.json();
    let h = &echo["headers"];
    assert_eq!(h["x-auth-request-user"], "bob", "{echo}");
    assert_eq!(h["x-auth-request-email"], "bob@example.com");
    assert!(h["authorization"].as_str().unwrap().starts_with("Bearer "));
    assert!(h.get("cookie").is_none(), "{echo}");
    // Sign-out (a link on the app's page: same-origin) goes through the IdP's end-session
    // endpoint and back.
    let out = b
        .request(
            "GET",
            &format!("{base}/oauth2/sign_out"),
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "same-origin"),
            ],
            "",
        )
        .await;
    assert_eq!(out.status, 302);
    let end = out.headers["location"].to_str().unwrap().to_string();
    assert!(end.starts_with(&format!("{idp}/end_session")));
    let back = b.navigate(&end).await;
    assert_eq!(back.status, 302);
    assert_eq!(b.api(&format!("{base}/app/hello")).await.status, 401);
    task.abort();
}

#[tokio::test]
async fn the_demo_bearer_commands_work() {
    let (addr, task) = demo().await;
    let base = format!("http://{addr}");
    assert_eq!(
        support::client::get(&format!("{base}/api/orders"))
            .await
            .status,
        401
    );
    assert_eq!(
        support::client::get(&format!("{base}/hello")).await.status,
        200
    );
    task.abort();
}
