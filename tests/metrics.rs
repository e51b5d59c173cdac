//! The admin listener after a known mix of requests: exact request counts per
//! route/method/status class, matching histogram counts, upstream error counts, build info,
//! the open-connections gauge, and the health endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::scenario::Scenario;
use support::{assert_metric, client, closed_port, metric_value, upstream, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every sample line of metric family `name` (exact name, any labels).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mix_is_counted_exactly() {
    let up = upstream::start("a").await;
    let dead = closed_port();
    let proxy = Scenario::new()
        .upstream_exact("app", &[up.url()], &[])
        .upstream_exact(
            "dead",
            &[format!("http://{dead}")],
            &["connect_timeout: 1s"],
        )
        .routes_yaml("  - { name: route-a, path: /a, upstream: app }")
        .routes_yaml("  - { name: route-b, path: /b, upstream: dead }")
        .start()
        .await;
    let admin = proxy.admin;

    // Nothing counted yet: only the series resolved at start-up (GET 2xx per route), at 0.
    let before = proxy.metrics().await;
    let mut at_start = samples(&before, "portcullis_http_requests_total");
    at_start.sort_unstable();
    assert_eq!(
        at_start,
        [
            "portcullis_http_requests_total{method=\"GET\",route=\"route-a\",status_class=\"2xx\"} 0",
            "portcullis_http_requests_total{method=\"GET\",route=\"route-b\",status_class=\"2xx\"} 0",
        ],
        "{before}"
    );

    // 3 x 200 on route-a (two GET, one POST), 2 x 404 (no route), 1 x 502 on route-b.
    for path in ["/a", "/a/x?y=1"] {
        assert_eq!(client::get(&proxy.url(path)).await.status, 200);
    }
    let post = Request::post(proxy.url("/a/submit"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(client::send(post).await.status, 200);
    assert_eq!(client::get(&proxy.url("/nowhere")).await.status, 404);
    assert_eq!(client::get(&proxy.url("/ab")).await.status, 404);
    assert_eq!(client::get(&proxy.url("/b/thing")).await.status, 502);

    // Requests are recorded when their response body ends, which can be just after the
    // client has read it: wait until nothing is in flight, then compare exactly.
    wait_until(Duration::from_secs(10), || async {
        let m = proxy.metrics().await;
        metric_value(&m, "portcullis_http_requests_in_flight ") == 0.0
            && samples(&m, "portcullis_http_requests_total")
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
                == 6.0
    })
    .await;
    let m = proxy.metrics().await;
    println!("{m}");

    // Labels render in alphabetical order: method, route, status_class.
    let expected = [
        ("GET", "route-a", "2xx", 2.0),
        ("POST", "route-a", "2xx", 1.0),
        ("GET", "none", "4xx", 2.0),
        ("GET", "route-b", "5xx", 1.0),
        // Resolved at start-up, never counted.
        ("GET", "route-b", "2xx", 0.0),
    ];
    let mut series = samples(&m, "portcullis_http_requests_total");
    series.sort_unstable();
    assert_eq!(
        series.len(),
        expected.len(),
        "unexpected series: {series:#?}"
    );
    for (method, route, class, n) in expected {
        let labels = format!("{{method=\"{method}\",route=\"{route}\",status_class=\"{class}\"}}");
        assert_eq!(
            metric_value(&m, &format!("portcullis_http_requests_total{labels}")),
            n,
            "{labels}"
        );
        assert_eq!(
            metric_value(
                &m,
                &format!("portcullis_http_request_duration_seconds_count{labels}")
            ),
            n,
            "histogram count {labels}"
        );
        // The +Inf bucket holds every observation too.
        let inf = format!(
            "portcullis_http_request_duration_seconds_bucket{{method=\"{method}\",route=\"{route}\",status_class=\"{class}\",le=\"+Inf\"}}"
        );
        assert_eq!(metric_value(&m, &inf), n, "{inf}");
    }
    assert_eq!(
        samples(&m, "portcullis_http_request_duration_seconds_count").len(),
        expected.len()
    );

    // One connect failure on the dead upstream; none on the live one.
    assert_metric(
        &m,
        "portcullis_upstream_errors_total{kind=\"connect\",upstream=\"dead\"}",
        1.0,
    );
    // Every upstream's error series exist from the start (at 0); only that one moved.
    let errors = samples(&m, "portcullis_upstream_errors_total");
    assert_eq!(errors.len(), 8, "{errors:?}");
    let nonzero: Vec<&&str> = errors.iter().filter(|l| !l.ends_with(" 0")).collect();
    assert_eq!(nonzero.len(), 1, "{errors:?}");

    // Bytes forwarded to the upstream: the POST body only.
    assert_metric(
        &m,
        "portcullis_upstream_bytes_total{direction=\"request\"}",
        7.0,
    );

    assert_eq!(
        metric_value(
            &m,
            &format!(
                "portcullis_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(
        m.contains("# TYPE portcullis_connections_open gauge"),
        "{m}"
    );

    // The gauge follows a held-open connection.
    let mut held = TcpStream::connect(proxy.addr.unwrap()).await.unwrap();
    held.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), held.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        metric_value(
            &proxy.metrics().await,
            "portcullis_connections_open{listener=\"plain\"}",
        ) >= 1.0
    })
    .await;
    drop(held);
    proxy
        .wait_metric(
            Duration::from_secs(10),
            "no connection open",
            "portcullis_connections_open{listener=\"plain\"}",
            0.0,
        )
        .await;

    // Health endpoints.
    let r = client::get(&format!("http://{admin}/healthz")).await;
    assert_eq!(r.status, 200);
    let r = client::get(&format!("http://{admin}/readyz")).await;
    assert_eq!(r.status, 200);
    let r = client::get(&format!("http://{admin}/metrics")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type().starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    proxy.shutdown().await;
}
