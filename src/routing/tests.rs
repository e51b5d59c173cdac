use super::*;
use crate::config::Config;

fn router(routes_yaml: &str) -> Router {
    let yaml = format!(
        "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
         upstreams: {{ a: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
         routes:\n{routes_yaml}"
    );
    let config = Config::from_yaml(&yaml, []).unwrap_or_else(|e| panic!("{e}"));
    Router::new(&config.routes)
}

fn name(r: &Router, host: &str, path: &str, method: Method) -> Option<String> {
    r.find(host, path, &method).ok().map(|r| r.name.to_string())
}

#[test]
fn longest_prefix_wins_on_segments() {
    let r = router(
        "  - { name: root, path: /, upstream: a }\n\
         \x20 - { name: api, path: /api, upstream: a }\n\
         \x20 - { name: v2, path: /api/v2, upstream: a }\n",
    );
    assert_eq!(
        name(&r, "x", "/api/v2/users", Method::GET).as_deref(),
        Some("v2")
    );
    assert_eq!(name(&r, "x", "/api/v2", Method::GET).as_deref(), Some("v2"));
    assert_eq!(
        name(&r, "x", "/api/v20", Method::GET).as_deref(),
        Some("api")
    );
    assert_eq!(name(&r, "x", "/api", Method::GET).as_deref(), Some("api"));
    assert_eq!(name(&r, "x", "/apix", Method::GET).as_deref(), Some("root"));
    assert_eq!(name(&r, "x", "/", Method::GET).as_deref(), Some("root"));
}

#[test]
fn host_precedence_exact_then_wildcard_then_any() {
    let r = router(
        "  - { name: any, path: /deep/path, upstream: a }\n\
         \x20 - { name: wild, host: \"*.example.com\", path: /, upstream: a }\n\
         \x20 - { name: wild2, host: \"*.b.example.com\", path: /, upstream: a }\n\
         \x20 - { name: exact, host: app.example.com, path: /, upstream: a }\n",
    );
    assert_eq!(
        name(&r, "APP.example.com", "/deep/path", Method::GET).as_deref(),
        Some("exact")
    );
    assert_eq!(
        name(&r, "x.example.com", "/deep/path", Method::GET).as_deref(),
        Some("wild")
    );
    assert_eq!(
        name(&r, "x.b.example.com", "/", Method::GET).as_deref(),
        Some("wild2")
    );
    assert_eq!(
        name(&r, "example.com", "/deep/path", Method::GET).as_deref(),
        Some("any")
    );
    assert_eq!(name(&r, "example.com", "/", Method::GET), None);
}

#[test]
fn methods_filter_and_win_ties() {
    let r = router(
        "  - { name: all, path: /x, upstream: a }\n\
         \x20 - { name: writes, path: /x, methods: [post, PUT], upstream: a }\n",
    );
    assert_eq!(name(&r, "h", "/x", Method::POST).as_deref(), Some("writes"));
    assert_eq!(name(&r, "h", "/x", Method::GET).as_deref(), Some("all"));
}

fn allow(r: &Router, host: &str, path: &str, method: Method) -> Option<String> {
    match r.find(host, path, &method) {
        Err(Miss::Method { allow }) => Some(allow.to_str().unwrap().to_string()),
        _ => None,
    }
}

#[test]
fn a_method_never_falls_through_to_a_shorter_prefix() {
    let r = router(
        "  - { name: root, path: /, upstream: a }\n\
         \x20 - { name: api, path: /api, methods: [GET, POST], upstream: a }\n\
         \x20 - { name: api_put, path: /api, methods: [put, GET], upstream: a }\n",
    );
    assert_eq!(name(&r, "h", "/api/x", Method::GET).as_deref(), Some("api"));
    assert_eq!(
        name(&r, "h", "/api", Method::PUT).as_deref(),
        Some("api_put")
    );
    assert_eq!(
        allow(&r, "h", "/api/users/1", Method::DELETE).as_deref(),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        allow(&r, "h", "/api", Method::from_bytes(b"PATCH").unwrap()).as_deref(),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        name(&r, "h", "/apix", Method::DELETE).as_deref(),
        Some("root")
    );
}

#[test]
fn a_method_never_falls_through_to_a_less_specific_host() {
    let r = router(
        "  - { name: any, path: /, upstream: a }\n\
         \x20 - { name: wild, host: \"*.example.com\", path: /, upstream: a }\n\
         \x20 - { name: exact, host: app.example.com, path: /, methods: [GET], upstream: a }\n",
    );
    assert_eq!(
        allow(&r, "app.example.com", "/x", Method::POST).as_deref(),
        Some("GET")
    );
    assert_eq!(
        name(&r, "b.example.com", "/x", Method::POST).as_deref(),
        Some("wild")
    );
    assert_eq!(
        name(&r, "other", "/x", Method::POST).as_deref(),
        Some("any")
    );
    // A shorter prefix on the same host is no way around either.
    let r = router(
        "  - { name: root, host: app.example.com, path: /, upstream: a }\n\
         \x20 - { name: api, host: app.example.com, path: /api, methods: [GET], upstream: a }\n",
    );
    assert_eq!(
        allow(&r, "app.example.com", "/api/1", Method::DELETE).as_deref(),
        Some("GET")
    );
    assert!(matches!(
        r.find("nope", "/api/1", &Method::GET),
        Err(Miss::NoRoute)
    ));
}
