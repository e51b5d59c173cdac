//! A first end-to-end check that the harness works.
mod support;

use support::{client, start_proxy, upstream};

#[tokio::test]
async fn proxies_a_get() {
    let up = upstream::start("a").await;
    let proxy = start_proxy(&support::simple_config(
        &[up.url()],
        "  - { path: /, upstream: app }",
        "",
    ))
    .await;
    let r = client::get(&proxy.url("/hello?x=1")).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["query"], "x=1");
    proxy.shutdown().await;
}
