//! `portcullis healthcheck` (the container HEALTHCHECK) against the real binary: 0 and a
//! "healthy" line when the admin /healthz answers 2xx, 1 when nothing listens or the answer is
//! not 2xx, 2 for a URL it cannot use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;

use support::scenario::Scenario;
use support::{closed_port, process, temp_dir, upstream};

fn healthcheck(dir: &std::path::Path, args: &[&str]) -> Output {
    process::command(dir)
        .arg("healthcheck")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_binary_exits_0_and_nothing_listening_exits_1() {
    let up = upstream::start("a").await;
    let dir = temp_dir("healthcheck");
    let yaml = Scenario::binary_pass_through(&up.url(), &[]).to_yaml();
    let bin = process::spawn(&dir, &yaml).await;

    let url = format!("http://{}/healthz", bin.admin);
    let ok = healthcheck(&dir, &["--url", &url]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let line = String::from_utf8_lossy(&ok.stdout);
    assert!(line.contains("healthy") && line.contains("200"), "{line}");
    assert_eq!(line.lines().count(), 1, "one line: {line}");

    // A 404 is not healthy.
    let missing = format!("http://{}/no-such-endpoint", bin.admin);
    let not_found = healthcheck(&dir, &["--url", &missing]);
    assert_eq!(not_found.status.code(), Some(1), "{}", text(&not_found));
    assert!(text(&not_found).contains("404"), "{}", text(&not_found));

    // Nothing listening.
    let closed = format!("http://{}/healthz", closed_port());
    let down = healthcheck(&dir, &["--url", &closed, "--timeout", "1s"]);
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(text(&down).contains("unhealthy"), "{}", text(&down));

    // Usage errors are 2, like every other bad argument.
    let bad = healthcheck(&dir, &["--url", "https://127.0.0.1:1/healthz"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    drop(bin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_answers_times_out_with_1() {
    // Accepts the connection, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = temp_dir("healthcheck-timeout");
    let url = format!("http://{addr}/healthz");
    let out = tokio::task::spawn_blocking(move || {
        healthcheck(&dir, &["--url", &url, "--timeout", "300ms"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no answer within"), "{}", text(&out));
    hold.abort();
}
