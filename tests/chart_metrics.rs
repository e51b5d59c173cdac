//! Every metric the chart's alerts (charts/portcullis/templates/prometheusrule.yaml) and the
//! Grafana dashboard (charts/portcullis/dashboards/portcullis.json) read is one a running
//! Portcullis exposes on /metrics: the real binary is started with an issuer (mock IdP, with a
//! client_id and a JWKS retry), a TLS and a plain listener, a live and a dead upstream, and
//! driven with a few requests so that labelled series exist; then /metrics is scraped and
//! compared with the names the expressions use. A name that is missing fails the test.
//!
//! Two kinds of names are not Portcullis's and are listed in [`EXTERNAL`]: `up` (Prometheus
//! adds it per scrape target) and kube-state-metrics' readiness series. The browser-session
//! series that this build defines but does not serve yet (the sign-in flow that produces them
//! is being wired) are listed in [`DEFINED_NOT_YET_SERVED`]: for those the test checks that
//! src/metrics/mod.rs defines the name, and that the binary really does not serve it, so the
//! entry must be removed (and the name then checked like every other) as soon as it is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use jsonwebtoken::Algorithm;
use support::client::get_bearer;
use support::idp::{Failure, MockIdp};
use support::scenario::{Route, Scenario};
use support::{certs, client, closed_port, process, temp_dir, upstream};

/// Names the expressions may use that Portcullis does not export.
const EXTERNAL: &[(&str, &str)] = &[
    ("up", "Prometheus, per scrape target"),
    ("kube_pod_container_status_ready", "kube-state-metrics"),
];

/// Defined in src/metrics/mod.rs, not served by this build yet (no sign-in flow or session
/// store at run time): checked against the definitions, and checked to be absent from
/// /metrics so that this list cannot outlive the wiring.
const DEFINED_NOT_YET_SERVED: &[&str] = &[];

const RULES: &str = include_str!("../charts/portcullis/templates/prometheusrule.yaml");
const DASHBOARD: &str = include_str!("../charts/portcullis/dashboards/portcullis.json");
const METRICS_SRC: &str = include_str!("../src/metrics/mod.rs");

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Open,
    Close,
    Other,
}

/// Removes every `open ... close` span (not nested).
fn strip(s: &str, open: &str, close: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        out.push(' ');
        match rest[i + open.len()..].find(close) {
            Some(j) => rest = &rest[i + open.len() + j + close.len()..],
            None => panic!("unbalanced {open} in {s}"),
        }
    }
    out.push_str(rest);
    out
}

/// Removes double-quoted strings (with escapes).
fn strip_strings(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            loop {
                match chars.next() {
                    Some('\\') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => panic!("unterminated string in {s}"),
                }
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

fn tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_' || cs[i] == ':') {
                i += 1;
            }
            out.push(Tok::Ident(cs[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 1e3): not a name.
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other);
            continue;
        }
        match c {
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            c if c.is_whitespace() => {}
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// The metric names a PromQL expression selects (Helm actions, label matchers, ranges,
/// strings, functions, keywords and grouping label lists removed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Keywords besides the GROUPING ones (also keywords).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        // Aggregation operators (`sum without (x) (...)` has no "(" right after the name).
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let s = strip(expr, "{{", "}}");
    let s = strip_strings(&s);
    let s = strip(&s, "{", "}");
    let s = strip(&s, "[", "]");
    let toks = tokens(&s);
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        if let Tok::Ident(id) = &toks[i] {
            let next_open = toks.get(i + 1) == Some(&Tok::Open);
            if GROUPING.contains(&id.as_str()) && next_open {
                // Skip the label list.
                while i < toks.len() && toks[i] != Tok::Close {
                    i += 1;
                }
            } else if !next_open
                && !KEYWORDS.contains(&id.as_str())
                && !GROUPING.contains(&id.as_str())
            {
                names.insert(id.clone());
            }
        }
        i += 1;
    }
    names
}

/// `expr:` lines of the PrometheusRule template.
fn alert_exprs() -> Vec<String> {
    let exprs: Vec<String> = RULES
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert!(
        exprs.len() >= 12,
        "expected the chart's alerts, found {exprs:?}"
    );
    exprs
}

/// Every panel query of the dashboard, and the metric of each `label_values(...)` variable.
fn dashboard_names() -> (Vec<String>, BTreeSet<String>) {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "expected the dashboard's queries");
    let mut vars = BTreeSet::new();
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let arg = q
                .strip_prefix("label_values(")
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            let name: String = arg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            vars.insert(name);
        }
    }
    (exprs, vars)
}

/// Metric names on a /metrics page (sample lines).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_name_extractor_finds_names_and_only_names() {
    let got = metric_names(
        r#"(sum by (namespace, route) (rate(portcullis_a_total{ {{ $sel }}, status_class="5xx" }[5m])) / on (route) group_left sum without (x) (portcullis_b)) > {{ $r.x }} and histogram_quantile(0.99, rate(portcullis_c_bucket{le!~"a{b}"}[$__rate_interval])) unless up offset 5m"#,
    );
    let want: BTreeSet<String> = [
        "portcullis_a_total",
        "portcullis_b",
        "portcullis_c_bucket",
        "up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
    assert!(metric_names("time() - 3").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_and_dashboard_metric_is_exposed() {
    // What the expressions use.
    let mut used = BTreeSet::new();
    for e in alert_exprs() {
        let names = metric_names(&e);
        assert!(!names.is_empty(), "no metric in alert expression {e}");
        used.extend(names);
    }
    let (exprs, vars) = dashboard_names();
    for e in exprs {
        let names = metric_names(&e);
        assert!(!names.is_empty(), "no metric in dashboard query {e}");
        used.extend(names);
    }
    used.extend(vars);

    // A running Portcullis with every kind of labelled series created.
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "rsa-1");
    // The first JWKS call fails, so the start-up fetch retries (portcullis_idp_retries_total).
    idp.fail_next(Failure::Status(503), 1);
    let up = upstream::start("app").await;
    let dir = temp_dir("chart-metrics");
    // Sessions in Redis, so the store and its in-process cache report too.
    support::redis::require_redis();
    let redis = support::redis::RedisServer::tcp(&dir, support::redis::free_port(false), &[]).await;
    let cookie_key = portcullis::secret::KeyMaterial::generate()
        .unwrap()
        .to_base64();
    let cert = certs::generate(&dir, "tls", "localhost");
    // The TLS listener only has to exist (its certificate's expiry is a metric). On another
    // loopback address: config validation refuses two listeners on 127.0.0.1:0.
    let secret = format!("client_secret: \"{}\"", support::idp::CLIENT_SECRET);
    let redis_url = format!("redis: {{ url: \"{}\" }}", redis.url());
    let cookie = format!("cookie: {{ secure: false, keys: [\"{cookie_key}\"] }}");
    let yaml = Scenario::new()
        .tls_listener("public", "127.0.0.2:0", &cert.cert, &cert.key, &[])
        .for_binary()
        .state_dir(dir.join("state"))
        .upstream_exact("app", &[up.url()], &[])
        .upstream_exact(
            "dead",
            &[format!("http://{}", closed_port())],
            &["connect_timeout: 1s"],
        )
        .issuer(
            "corp",
            &idp,
            &[
                "client_id: portcullis",
                &secret,
                "retries: 2",
                "backoff_min: 10ms",
                "backoff_max: 20ms",
            ],
        )
        .sessions(&["store: redis", &redis_url, &cookie])
        .route(Route::bearer("/api").name("api"))
        .routes_yaml("  - { name: gone, path: /gone, upstream: dead }")
        .route(Route::session("/app").name("app"))
        // A CEL rule, whose result series exist from the start.
        .routes_yaml(
            "  - { name: ruled, path: /ruled, upstream: app, auth: bearer, \
             authorize: { allow_if: [\"has(claims.sub)\"] } }",
        )
        .routes_yaml("  - { name: site, path: /, upstream: app }")
        .to_yaml();
    let bin = process::spawn(&dir, &yaml).await;
    let base = format!("http://{}", bin.addr);
    let token = idp.token(&key).build();
    assert_eq!(
        get_bearer(&format!("{base}/api/x"), &token).await.status,
        200
    );
    assert_eq!(
        get_bearer(&format!("{base}/api/x"), "not-a-jwt")
            .await
            .status,
        401
    );
    assert_eq!(client::get(&format!("{base}/")).await.status, 200);
    assert_eq!(client::get(&format!("{base}/gone")).await.status, 502);
    // A browser signs in and uses its session.
    let mut browser = support::browser::CookieClient::new();
    let (page, hops) = browser.follow(&format!("{base}/app")).await;
    assert_eq!(page.status, 200, "{hops:?}");

    let admin = bin.admin;
    let page = support::wait_for(
        std::time::Duration::from_secs(10),
        "the requests are counted",
        || async move {
            let text = client::try_get(&format!("http://{admin}/metrics")).await?;
            let text = String::from_utf8(text.body.to_vec()).ok()?;
            let names = exposed(&text);
            names
                .contains("portcullis_http_request_duration_seconds_bucket")
                .then_some(names)
        },
    )
    .await;

    let mut missing = Vec::new();
    for name in &used {
        if EXTERNAL.iter().any(|(n, _)| n == name) {
            continue;
        }
        if DEFINED_NOT_YET_SERVED.contains(&name.as_str()) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                METRICS_SRC.contains(&format!("\"{family}\"")),
                "{name} is not defined in src/metrics/mod.rs"
            );
            assert!(
                !page.contains(name),
                "{name} is served now: remove it from DEFINED_NOT_YET_SERVED"
            );
            continue;
        }
        if !page.contains(name) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "used by the chart's alerts or dashboard but not on /metrics: {missing:?}\nexposed: {page:#?}"
    );
    for n in DEFINED_NOT_YET_SERVED {
        assert!(used.contains(*n), "{n} is listed but no expression uses it");
    }
    for (n, _) in EXTERNAL {
        assert!(used.contains(*n), "{n} is listed but no expression uses it");
    }
    println!(
        "{} names used; {} exposed and checked, {} defined but not yet served, {} external",
        used.len(),
        used.len() - DEFINED_NOT_YET_SERVED.len() - EXTERNAL.len(),
        DEFINED_NOT_YET_SERVED.len(),
        EXTERNAL.len()
    );
    drop(bin);
}
