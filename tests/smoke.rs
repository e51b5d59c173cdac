//! A first end-to-end check that the harness works.
mod support;

use support::scenario::Scenario;
use support::{client, upstream};

#[tokio::test]
async fn proxies_a_get() {
    let up = upstream::start("a").await;
    let proxy = Scenario::new()
        .upstream("app", &up)
        .routes_yaml("  - { path: /, upstream: app }")
        .start()
        .await;
    let r = client::get(&proxy.url("/hello?x=1")).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["query"], "x=1");
    proxy.shutdown().await;
}
