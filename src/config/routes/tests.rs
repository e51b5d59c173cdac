#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::routing::{Miss, Router};

const HEAD: &str = "listeners: { plain: { address: \"127.0.0.1:0\" } }\n\
     upstreams: { app: { addresses: [\"http://127.0.0.1:1\"] }, other: { addresses: [\"http://127.0.0.1:2\"] } }\n\
     issuers:\n\
     \x20 corp: { issuer: \"https://corp.example\", audiences: [x], client_id: portcullis }\n\
     \x20 partner: { issuer: \"https://partner.example\", audiences: [x], client_id: portcullis }\n\
     routes:\n";

fn load(routes: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!("{HEAD}{routes}"), [])
}

/// The refusal's text, for a table that must be refused.
fn refused(routes: &str) -> String {
    match load(routes) {
        Ok(_) => panic!("accepted:\n{routes}"),
        Err(e) => e.to_string(),
    }
}

fn accepted(routes: &str) {
    if let Err(e) = load(routes) {
        panic!("refused: {e}\n{routes}");
    }
}

#[test]
fn the_shipped_shape_is_refused_naming_both_routes_and_the_way() {
    // config/portcullis.yaml before issue 15: a protected exact-host route and a public
    // any-host catch-all on the same upstream.
    let e = refused(
        "  - { name: api, host: app.example.com, path: /api, methods: [GET, POST], upstream: app, auth: bearer, issuer: corp }\n\
         \x20 - { name: public, path: /, upstream: app }\n",
    );
    assert!(e.contains("routes[1]"), "{e}");
    assert!(e.contains("\"public\"") && e.contains("\"api\""), "{e}");
    assert!(e.contains("another Host"), "{e}");
    assert!(e.contains("acknowledge_overlap"), "{e}");
}

#[test]
fn every_way_to_another_route_is_refused() {
    for (way, routes, expect) in [
        (
            "no Host on HTTP/1.0: only any-host routes match an empty host",
            "  - { name: api, host: \"*.example.com\", path: /api, upstream: app, auth: bearer }\n\
             \x20 - { name: public, path: /, upstream: app }\n",
            "no Host",
        ),
        (
            "a more specific host with a shorter prefix",
            "  - { name: api, path: /api, upstream: app, auth: bearer }\n\
             \x20 - { name: public, host: www.example.com, path: /, upstream: app }\n",
            "Host www.example.com",
        ),
        (
            "a wildcard host beats any host",
            "  - { name: api, path: /api, upstream: app, auth: bearer }\n\
             \x20 - { name: public, host: \"*.example.com\", path: /, upstream: app }\n",
            "Host x.example.com",
        ),
        (
            "a method the protected route does not list, on an equally specific route",
            "  - { name: api, path: /api, methods: [GET], upstream: app, auth: bearer }\n\
             \x20 - { name: public, path: /api, upstream: app }\n",
            "method",
        ),
        (
            "a case-insensitive protected prefix, spelled in another case on another host",
            "  - { name: admin, host: app.example.com, path: /admin, upstream: app, auth: bearer, case_insensitive: true }\n\
             \x20 - { name: public, path: /, upstream: app }\n",
            "another Host",
        ),
        (
            "a route accepting any issuer next to one limited to corp",
            "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer, issuer: corp }\n\
             \x20 - { name: wide, path: /api, upstream: app, auth: bearer }\n",
            "another Host",
        ),
        (
            "the same issuer without the authorize rules",
            "  - { name: admin, host: app.example.com, path: /, upstream: app, auth: bearer, issuer: corp, authorize: { groups: [admins] } }\n\
             \x20 - { name: staff, path: /, upstream: app, auth: bearer, issuer: corp }\n",
            "another Host",
        ),
        (
            "either (sessions too) next to bearer only: the weaker door is either",
            "  - { name: either, host: app.example.com, path: /, upstream: app, auth: either, issuer: corp }\n\
             \x20 - { name: api, path: /, upstream: app, auth: bearer, issuer: corp }\n",
            "route \"either\"",
        ),
        (
            "a bearer-only route next to a session route (another credential kind)",
            "  - { name: api, host: api.example.com, path: /, upstream: app, auth: bearer, issuer: corp }\n\
             \x20 - { name: portal, host: app.example.com, path: /, upstream: app, auth: session, issuer: corp }\n",
            "Host api.example.com",
        ),
    ] {
        let e = match load(routes) {
            Ok(_) => panic!("{way}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(expect), "{way}: {e}");
    }
}

#[test]
fn safe_tables_are_accepted() {
    // The fixed shipped shape: every route names the host.
    accepted(
        "  - { name: api, host: app.example.com, path: /api, methods: [GET, POST], upstream: app, auth: bearer, issuer: corp }\n\
         \x20 - { name: portal, host: app.example.com, path: /portal, upstream: app, auth: session, issuer: corp }\n\
         \x20 - { name: public, host: app.example.com, path: /, upstream: app }\n",
    );
    // Any-host routes: the longer prefix always wins, whatever the host.
    accepted(
        "  - { name: api, path: /api, methods: [GET], upstream: app, auth: bearer }\n\
         \x20 - { name: public, path: /, upstream: app }\n",
    );
    // A public carve-out below a protected prefix is chosen by its path, not a way around.
    accepted(
        "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer }\n\
         \x20 - { name: health, host: app.example.com, path: /api/health, upstream: app }\n",
    );
    // Another upstream is another resource.
    accepted(
        "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer }\n\
         \x20 - { name: public, path: /, upstream: other }\n",
    );
    // Two doors that ask the same (credential kind, issuer, rules) may overlap.
    accepted(
        "  - { name: a, host: app.example.com, path: /, upstream: app, auth: either, issuer: corp }\n\
         \x20 - { name: b, path: /, upstream: app, auth: either, issuer: corp }\n",
    );
    accepted(
        "  - { name: a, host: app.example.com, path: /, upstream: app, auth: bearer, authorize: { groups: [admins] } }\n\
         \x20 - { name: b, path: /, upstream: app, auth: bearer, authorize: { groups: [admins] } }\n",
    );
}

#[test]
fn an_acknowledged_overlap_is_accepted_and_must_name_a_route() {
    accepted(
        "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer }\n\
         \x20 - { name: public, path: /, upstream: app, acknowledge_overlap: [api] }\n",
    );
    // Acknowledging one route does not cover another.
    let e = refused(
        "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer }\n\
         \x20 - { name: admin, host: app.example.com, path: /admin, upstream: app, auth: bearer }\n\
         \x20 - { name: public, path: /, upstream: app, acknowledge_overlap: [api] }\n",
    );
    assert!(e.contains("\"admin\""), "{e}");
    let e = refused(
        "  - { name: api, host: app.example.com, path: /api, upstream: app, auth: bearer }\n\
         \x20 - { name: public, path: /, upstream: app, acknowledge_overlap: [apii] }\n",
    );
    assert!(e.contains("routes[1].acknowledge_overlap[0]"), "{e}");
}

// === property: no path reaches one upstream through a weaker route and a stronger one ===

#[derive(Debug, Clone)]
struct R {
    host: &'static str,
    path: &'static str,
    methods: Option<&'static str>,
    upstream: &'static str,
    auth: &'static str,
    ci: bool,
}

fn route() -> impl Strategy<Value = R> {
    (
        prop::sample::select(vec!["", "a.example.com", "b.example.com", "*.example.com"]),
        prop::sample::select(vec!["/", "/api", "/api/v1", "/API", "/api/"]),
        prop::sample::select(vec![
            None,
            Some("[GET]"),
            Some("[GET, POST]"),
            Some("[DELETE]"),
        ]),
        prop::sample::select(vec!["app", "other"]),
        prop::sample::select(vec![
            "none",
            "bearer",
            "bearer, issuer: corp",
            "bearer, authorize: { groups: [admins] }",
            "session, issuer: corp",
            "either, issuer: corp",
        ]),
        any::<bool>(),
    )
        .prop_map(|(host, path, methods, upstream, auth, ci)| R {
            host,
            path,
            methods,
            upstream,
            auth,
            ci,
        })
}

fn yaml(routes: &[R]) -> String {
    let mut y = String::new();
    for (i, r) in routes.iter().enumerate() {
        y.push_str(&format!(
            "  - {{ name: r{i}, path: \"{}\", upstream: {}, auth: {}, case_insensitive: {}",
            r.path, r.upstream, r.auth, r.ci
        ));
        if !r.host.is_empty() {
            y.push_str(&format!(", host: \"{}\"", r.host));
        }
        if let Some(m) = r.methods {
            y.push_str(&format!(", methods: {m}"));
        }
        y.push_str(" }\n");
    }
    y
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["api", "API", "Api", "v1", "x", "apix"]),
        0..4,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

const HOSTS: [&str; 8] = [
    "",
    "a.example.com",
    "b.example.com",
    "x.example.com",
    "y.x.example.com",
    "example.com",
    "other.org",
    "a.example.com.evil",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For a table the check accepts, no request path reaches an upstream through a route and
    /// also (with another host or method) through a weaker route to the same upstream; and
    /// the router never hands a request to a less specific route on a method mismatch.
    #[test]
    fn accepted_tables_have_no_weaker_door(
        routes in prop::collection::vec(route(), 1..5),
        paths in prop::collection::vec(request_path(), 1..6),
    ) {
        let Ok(config) = load(&yaml(&routes)) else {
            return Ok(());
        };
        let router = Router::new(&config.routes);
        let methods = [Method::GET, Method::POST, Method::DELETE, Method::PATCH];
        for path in &paths {
            let mut reached: Vec<usize> = Vec::new();
            for host in HOSTS {
                for m in &methods {
                    let best = config.routes.iter().filter(|r| selects(*r, host, path)).map(specificity).max();
                    match router.find(host, path, m) {
                        Ok(r) => {
                            prop_assert_eq!(Some(specificity(&config.routes[r.index])), best);
                            if !reached.contains(&r.index) {
                                reached.push(r.index);
                            }
                        }
                        Err(Miss::Method { .. }) => prop_assert!(best.is_some()),
                        Err(Miss::NoRoute) => prop_assert!(best.is_none()),
                    }
                }
            }
            for &s in &reached {
                for &w in &reached {
                    let (strong, weak) = (&config.routes[s], &config.routes[w]);
                    prop_assert!(
                        s == w || strong.upstream != weak.upstream || at_least_as_strict(weak, strong),
                        "{path} reaches {} and the weaker {}\n{}", strong.name, weak.name, yaml(&routes)
                    );
                }
            }
        }
    }
}
