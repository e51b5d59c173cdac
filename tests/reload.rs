//! Configuration reload while running: routes and upstreams swap at once; a bad file changes
//! nothing; both are counted.
mod support;

use support::{client, metric_value, simple_config, start_proxy, temp_dir, upstream};

#[tokio::test]
async fn reload_swaps_routes_and_upstreams_and_keeps_running_config_on_error() {
    let a = upstream::start("a").await;
    let b = upstream::start("b").await;
    let proxy = start_proxy(&simple_config(
        &[a.url()],
        "  - { path: /, upstream: app }",
        "",
    ))
    .await;
    assert_eq!(client::get(&proxy.url("/x")).await.json()["id"], "a");

    // A new file: same listener, upstream now b, and a new route.
    let dir = temp_dir("reload");
    let file = dir.join("portcullis.yaml");
    let good = simple_config(
        &[b.url()],
        "  - { path: /, upstream: app }\n  - { name: only-new, path: /new, upstream: app }",
        "",
    );
    std::fs::write(&file, &good).unwrap();
    proxy.reloader.reload_file(&file, []).unwrap();
    let r = client::get(&proxy.url("/new/thing")).await;
    assert_eq!(r.json()["id"], "b");
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "portcullis_reloads_total{kind=\"config\",result=\"success\"}"
        ),
        1.0
    );
    assert!(m.contains("route=\"only-new\""), "{m}");

    // A broken file is refused; b keeps serving.
    std::fs::write(&file, "routes: [ { path: nope } ]").unwrap();
    assert!(proxy.reloader.reload_file(&file, []).is_err());
    assert_eq!(client::get(&proxy.url("/x")).await.json()["id"], "b");
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "portcullis_reloads_total{kind=\"config\",result=\"failure\"}"
        ),
        1.0
    );
    proxy.shutdown().await;
}
