//! A first end-to-end check that the harness works.
mod support;

use support::scenario::Scenario;
use support::{client, upstream};

#[tokio::test]
async fn proxies_a_get() {
    let up = upstream::start("a").await;
    let proxy = Scenario::pass_through(&up).start().await;
    let r = client::get(&proxy.url("/hello?x=1")).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["query"], "x=1");
    proxy.shutdown().await;
}
