//! Header rewriting on a typical browser request: `remove_hop_by_hop` then `set_forwarded`, as
//! the handler does for every request, and `IdentityHeaders::sanitize` (hop-by-hop plus the
//! owned and untrusted headers in every spelling, with the default lists). Run with `cargo bench --bench header_rewrite`.
//!
//! Cases: the header set without `Connection` (HTTP/1.1 browsers rarely send one), and with
//! `Connection: keep-alive, x-debug-trace, x-internal-hop` naming two extra headers (the path
//! that collects and removes named headers). The map is cloned outside the timed part.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis::upstream::headers::identity::IdentityHeaders;
use portcullis::upstream::headers::{client_value, remove_hop_by_hop, set_forwarded};

const BROWSER: [(&str, &str); 16] = [
    ("host", "app.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    ("accept-language", "en-GB,en;q=0.9,fr;q=0.8"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "https://app.example.com/dashboard?tab=overview"),
    (
        "cookie",
        "portcullis_session=Fe26.2**0cdd6b4e1f7a2c3d**aGVsbG8gd29ybGQ; theme=dark; _ga=GA1.2.123456789.1700000000",
    ),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"126\", \"Not.A/Brand\";v=\"24\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-user", "?1"),
    ("upgrade-insecure-requests", "1"),
    ("cache-control", "max-age=0"),
];

const CONNECTION_EXTRA: [(&str, &str); 4] = [
    ("connection", "keep-alive, x-debug-trace, x-internal-hop"),
    ("keep-alive", "timeout=5"),
    ("x-debug-trace", "1"),
    ("x-internal-hop", "edge-3"),
];

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn bench_rewrite(c: &mut Criterion) {
    let plain = map(&BROWSER);
    let with_connection = {
        let mut all = BROWSER.to_vec();
        all.extend_from_slice(&CONNECTION_EXTRA);
        map(&all)
    };
    let client = client_value(IpAddr::from([203, 0, 113, 7]));
    let host = HeaderValue::from_static("app.example.com");

    // Sanity: the rewrite does what the proxy relies on.
    let mut check = with_connection.clone();
    remove_hop_by_hop(&mut check, false);
    set_forwarded(&mut check, &client, "https", Some(&host), false);
    assert!(!check.contains_key("connection") && !check.contains_key("x-debug-trace"));
    assert_eq!(check["x-forwarded-for"], "203.0.113.7");

    let mut g = c.benchmark_group("header_rewrite");
    for (name, headers) in [
        ("no_connection", &plain),
        ("connection_names_extra", &with_connection),
    ] {
        g.bench_function(format!("remove_hop_by_hop/{name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| remove_hop_by_hop(black_box(h), false),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("both/{name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| {
                    remove_hop_by_hop(black_box(h), false);
                    set_forwarded(h, black_box(&client), "https", Some(&host), false);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("set_forwarded/untrusted", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |h| {
                set_forwarded(
                    black_box(h),
                    black_box(&client),
                    "https",
                    Some(&host),
                    false,
                )
            },
            BatchSize::SmallInput,
        )
    });
    let mut forwarded = plain.clone();
    forwarded.append("x-forwarded-for", HeaderValue::from_static("198.51.100.20"));
    forwarded.append("x-forwarded-proto", HeaderValue::from_static("https"));
    g.bench_function("set_forwarded/trusted_append", |b| {
        b.iter_batched_ref(
            || forwarded.clone(),
            |h| set_forwarded(black_box(h), black_box(&client), "https", Some(&host), true),
            BatchSize::SmallInput,
        )
    });
    // What the handler runs first on every request: hop-by-hop out, then the owned and
    // untrusted forwarded headers (default lists) out in every spelling. A browser request
    // has none of them: this path must not allocate.
    let config = portcullis::Config::from_yaml(
        "listeners: { plain: { address: \"127.0.0.1:0\" } }\n\
         upstreams: { app: { addresses: [\"http://127.0.0.1:9\"] } }\n\
         routes: [{ path: /, upstream: app }]\n",
        [],
    )
    .unwrap();
    let identity = IdentityHeaders::from_config(&config);
    let mut spoofed = plain.clone();
    spoofed.append("x_auth_request_user", HeaderValue::from_static("mallory"));
    spoofed.append("x-real-ip", HeaderValue::from_static("10.0.0.1"));
    for (name, headers) in [
        ("no_connection", &plain),
        ("connection_names_extra", &with_connection),
        ("spoofed", &spoofed),
    ] {
        g.bench_function(format!("sanitize/{name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| identity.sanitize(black_box(h), false),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rewrite);
criterion_main!(benches);
