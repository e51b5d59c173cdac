//! `portcullis demo` does what the README says: bearer tokens from the development IdP, and
//! the browser flow through its login form to the echo app's identity headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::browser::{CookieClient, query_param};
use support::process::Binary;

async fn demo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let demo = portcullis::demo::prepare(Vec::new(), any, any)
        .await
        .unwrap();
    assert!(demo.intro.contains("/app"), "{}", demo.intro);
    let mut config = demo.config;
    config.state_dir = support::temp_dir("demo-state");
    let server = portcullis::Server::bind(config).await.unwrap();
    let addr = server.local_addr("plain").unwrap();
    let admin = server.admin_addr().unwrap();
    let task = tokio::spawn(server.run(std::future::pending()));
    support::client::wait_status(
        Duration::from_secs(10),
        &format!("http://{admin}/readyz"),
        200,
    )
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
    let out = b.follow_link(&format!("{base}/oauth2/sign_out")).await;
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

/// Runs `portcullis demo` as a newcomer does (the real binary, its human log), with its
/// temporary files under `tmp` (`TMPDIR`), until it is ready; then stops it with SIGTERM and
/// returns what it printed (stdout, then stderr, colours removed).
async fn run_demo_binary(tmp: &Path, work: &Path, run: usize) -> String {
    const START: Duration = Duration::from_secs(30);
    let stdout = work.join(format!("stdout-{run}.log"));
    let stderr = work.join(format!("stderr-{run}.log"));
    let child = support::process::command(work)
        .env("TMPDIR", tmp)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let unset = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut bin = Binary {
        child,
        addr: unset,
        admin: unset,
        stderr,
    };
    let admin = support::wait_for(START, "the demo logs its admin address", || {
        if let Some(e) = bin.exited_early() {
            panic!("{e}");
        }
        std::future::ready(admin_address(&without_colours(&bin.log())))
    })
    .await;
    let url = format!("http://{admin}/readyz");
    support::client::wait_status(START, &url, 200).await;
    bin.signal("TERM");
    assert_eq!(bin.wait_exit(START).await, Some(0), "{}", bin.log());
    let printed = std::fs::read_to_string(&stdout).unwrap() + &bin.log();
    without_colours(&printed)
}

/// The admin address from the human log line `listening listener="admin" address=...`.
fn admin_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains(" listening ") && l.contains("listener=\"admin\""))
        .find_map(|l| {
            l.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// The development IdP gets a new port and key on every run: state kept from an earlier run
// could only be ignored with a warning, which a newcomer's second run used to start with.
#[tokio::test]
async fn every_demo_run_starts_without_warnings_and_leaves_no_state_behind() {
    let tmp = support::temp_dir("demo-tmpdir");
    let work = support::temp_dir("demo-work");
    for run in 1..=2 {
        let printed = run_demo_binary(&tmp, &work, run).await;
        assert!(
            printed.contains("Portcullis demo on"),
            "run {run}:\n{printed}"
        );
        assert!(
            !printed
                .lines()
                .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
            "run {run}:\n{printed}"
        );
        // The run's state directory went with it.
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "run {run} left {left:?} in its TMPDIR");
    }
}
