//! The route table's semantics, in one place for the router and for the configuration check:
//! how host, path and method select a route ([`select`]), and the check that no route with
//! weaker authentication reaches a protected route's upstream for the same paths
//! ([`check_overlaps`]).
//!
//! Selection: host and path alone pick the most specific routes (exact host, then the longest
//! wildcard suffix, then any host; then the longest path prefix); the method only chooses
//! among those. A method none of them accepts is [`Selection::Method`] (405), never a less
//! specific route. Hosts match ignoring ASCII case and the port: routes do not depend on the
//! port or the listener a request came on.
//!
//! Security notes: most upstreams ignore `Host`, so two routes that reach the same upstream
//! for the same path are two doors to the same resource. When one of them asks less (no
//! authentication, another credential kind, any issuer, fewer rules), whatever decides between
//! them (another `Host`, no `Host` on HTTP/1.0, an absolute-form target naming another host,
//! another method) walks around the stronger one. [`check_overlaps`] finds every such pair by
//! trying a representative of every class of request the table distinguishes, and refuses the
//! configuration unless the weaker route acknowledges the stronger one by name
//! (`acknowledge_overlap`).

mod auth;
mod parse;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;

use super::ConfigError;

pub use parse::{AuthMode, HostMatch, RewriteHost, RouteConfig};
pub(super) use parse::{RawRoute, routes};

/// What selection reads of a route.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// The host it matches.
    pub host: &'a HostMatch,
    /// Its path prefix (matched on whole segments).
    pub path: &'a str,
    /// The methods it lists (`None`: any method).
    pub methods: Option<&'a [Method]>,
    /// Whether the prefix matches in any ASCII case.
    pub case_insensitive: bool,
}

// === impl Shape ===

impl<'a> Shape<'a> {
    /// The shape of a route with these fields.
    pub fn new(
        host: &'a HostMatch,
        path: &'a str,
        methods: Option<&'a [Method]>,
        case_insensitive: bool,
    ) -> Self {
        Self {
            host,
            path,
            methods,
            case_insensitive,
        }
    }
}

/// A route selection can read: the configuration's and the router's.
pub trait RouteShape {
    /// Its host, prefix and methods.
    fn shape(&self) -> Shape<'_>;
}

impl<T: RouteShape + ?Sized> RouteShape for &T {
    fn shape(&self) -> Shape<'_> {
        (**self).shape()
    }
}

impl<T: RouteShape + ?Sized> RouteShape for Arc<T> {
    fn shape(&self) -> Shape<'_> {
        (**self).shape()
    }
}

impl RouteShape for RouteConfig {
    fn shape(&self) -> Shape<'_> {
        Shape::new(
            &self.host,
            &self.path,
            self.methods.as_deref(),
            self.case_insensitive,
        )
    }
}

/// What [`select`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection<'a, R> {
    /// This route serves the request.
    Route(&'a R),
    /// Host and path select routes, none of them for this method (405); `allow` is what they
    /// list, without repeats, in table order.
    Method {
        /// The methods the selected routes accept.
        allow: Vec<&'a Method>,
    },
    /// No route matches host and path (404).
    NoRoute,
}

/// Sorts a table most specific first (stable: file order among equals; among equally specific
/// routes, those that list methods first).
pub fn sort<R: RouteShape>(routes: &mut [R]) {
    routes.sort_by_key(|r| Reverse((specificity(r), r.shape().methods.is_some())));
}

/// The route for `host` (lowercase, no port; empty when the request has none), `path` (the
/// route form of the normalised path) and `method`, in a table sorted by [`sort`].
pub fn select<'a, R: RouteShape>(
    sorted: &'a [R],
    host: &str,
    path: &str,
    method: &Method,
) -> Selection<'a, R> {
    let Some(first) = sorted.iter().position(|r| selects(r, host, path)) else {
        return Selection::NoRoute;
    };
    let best = specificity(&sorted[first]);
    let group = sorted[first..]
        .iter()
        .take_while(|r| specificity(*r) == best)
        .filter(|r| selects(*r, host, path));
    if let Some(r) = group
        .clone()
        .find(|r| r.shape().methods.is_none_or(|m| m.contains(method)))
    {
        return Selection::Route(r);
    }
    let mut allow: Vec<&Method> = Vec::new();
    for m in group.filter_map(|r| r.shape().methods).flatten() {
        if !allow.contains(&m) {
            allow.push(m);
        }
    }
    Selection::Method { allow }
}

/// How specific a route's host and path are: host kind, wildcard suffix length, prefix
/// length. Equally specific routes that select a request compete on its method only.
fn specificity<R: RouteShape>(r: &R) -> (u8, usize, usize) {
    let shape = r.shape();
    let (host_rank, suffix_len) = match shape.host {
        HostMatch::Exact(_) => (2, 0),
        HostMatch::Wildcard(s) => (1, s.len()),
        HostMatch::Any => (0, 0),
    };
    (host_rank, suffix_len, shape.path.len())
}

/// Whether host and path select `r` (the method aside).
fn selects<R: RouteShape>(r: &R, host: &str, path: &str) -> bool {
    let shape = r.shape();
    shape.host.matches(host) && prefix_matches(shape.path, path, shape.case_insensitive)
}

// === impl HostMatch ===

impl HostMatch {
    /// Whether `host` (lowercase or not, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Wildcard(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// Whether `prefix` matches `path` on whole segments (`/api` matches `/api` and `/api/x`, not
/// `/apix`; a prefix ending in `/` matches anything below it).
pub fn prefix_matches(prefix: &str, path: &str, case_insensitive: bool) -> bool {
    let (p, b) = (prefix.as_bytes(), path.as_bytes());
    if b.len() < p.len() {
        return false;
    }
    let (head, rest) = b.split_at(p.len());
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    same && (prefix.ends_with('/') || rest.is_empty() || rest.first() == Some(&b'/'))
}

/// Refuses a table in which a route that asks less than another ([`at_least_as_strict`])
/// reaches the same upstream for some path the other one serves: a request for that path
/// would pick the weaker route by its host (another one, none, an absolute-form target) or its
/// method. The weaker route may acknowledge the other by name in `acknowledge_overlap`.
/// `upstream_names` names the upstreams by index, for the message.
pub(crate) fn check_overlaps(
    routes: &[RouteConfig],
    upstream_names: &[&str],
) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        for (j, name) in r.acknowledge_overlap.iter().enumerate() {
            if !routes.iter().any(|o| &o.name == name) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].acknowledge_overlap[{j}]"),
                    format!("no route named \"{name}\""),
                ));
            }
        }
    }
    let mut table: Vec<&RouteConfig> = routes.iter().collect();
    sort(&mut table);
    let hosts = probe_hosts(routes);
    let methods = probe_methods(routes);
    for path in probe_paths(routes) {
        // Which routes serve this path, through which hosts (with the first method each).
        let mut seen: BTreeMap<usize, Vec<(&Probe, &Method)>> = BTreeMap::new();
        for host in &hosts {
            for method in &methods {
                if let Selection::Route(r) = select(&table, &host.host, &path, method)
                    && let Some(i) = routes.iter().position(|o| std::ptr::eq(o, *r))
                {
                    let ways = seen.entry(i).or_default();
                    if !ways.iter().any(|(h, _)| h.host == host.host) {
                        ways.push((host, method));
                    }
                }
            }
        }
        for (&s, s_ways) in &seen {
            for (&w, w_ways) in &seen {
                let (strong, weak) = (&routes[s], &routes[w]);
                if s == w
                    // Routes without an upstream are decided for an ingress, which chose
                    // the app by the same host and path: nothing to walk around.
                    || strong.upstream.is_none()
                    || strong.upstream != weak.upstream
                    || at_least_as_strict(weak, strong)
                    || weak.acknowledge_overlap.contains(&strong.name)
                {
                    continue;
                }
                return Err(overlap_error(
                    (w, weak, w_ways),
                    (strong, s_ways),
                    &path,
                    upstream_names,
                ));
            }
        }
    }
    Ok(())
}

type Ways<'a> = [(&'a Probe, &'a Method)];

/// The refusal of weaker route `w` reaching `path` on the stronger one's upstream: every
/// host (and, on a host both are reached by, the method) that leads to it.
fn overlap_error(
    (w, weak, w_ways): (usize, &RouteConfig, &Ways<'_>),
    (strong, s_ways): (&RouteConfig, &Ways<'_>),
    path: &str,
    upstream_names: &[&str],
) -> ConfigError {
    let way = w_ways
        .iter()
        .map(|(h, m)| {
            if s_ways.iter().any(|(sh, _)| sh.host == h.host) {
                format!("{} and method {m}", h.describe)
            } else {
                h.describe.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; or ");
    let (s_host, s_method) = s_ways[0];
    let (wn, sn) = (&weak.name, &strong.name);
    ConfigError::invalid(
        format!("routes[{w}]"),
        format!(
            "route \"{wn}\" (auth {}) reaches upstream \"{}\" for the paths of route \"{sn}\" \
             (auth {}): {path} goes to \"{wn}\" with {way}; but to \"{sn}\" with {} and method \
             {s_method}. Most upstreams ignore Host, so this walks around \"{sn}\". Give the \
             routes the same host (or methods), or, if \"{wn}\" is meant to serve these \
             requests, set routes[{w}].acknowledge_overlap: [\"{sn}\"]",
            auth_label(weak),
            weak.upstream
                .and_then(|u| upstream_names.get(u).copied())
                .unwrap_or("?"),
            auth_label(strong),
            s_host.describe,
        ),
    )
}

/// Whether `w` lets through nothing that `p` refuses: the same or a narrower credential kind,
/// the same issuer when `p` names one, and `p`'s rules when it has any.
pub(crate) fn at_least_as_strict(w: &RouteConfig, p: &RouteConfig) -> bool {
    if p.auth == AuthMode::None {
        return true;
    }
    let credentials = match (w.auth, p.auth) {
        (AuthMode::None, _) => false,
        (a, b) if a == b => true,
        (AuthMode::Bearer | AuthMode::Session, AuthMode::Either) => true,
        _ => false,
    };
    credentials
        && (p.issuer.is_none() || w.issuer == p.issuer)
        && (p.policy.is_empty() || w.policy == p.policy)
}

fn auth_label(r: &RouteConfig) -> String {
    let mode = match r.auth {
        AuthMode::None => "none",
        AuthMode::Bearer => "bearer",
        AuthMode::Session => "session",
        AuthMode::Either => "either",
    };
    let rules = if r.policy.is_empty() {
        ""
    } else {
        " with authorize rules"
    };
    format!("{mode}{rules}")
}

/// One representative host of a class the table distinguishes.
struct Probe {
    host: String,
    describe: String,
}

/// A host per class of hosts the table tells apart: each exact host, a name under each
/// wildcard, a host no route names, and none at all (HTTP/1.0 without `Host`).
fn probe_hosts(routes: &[RouteConfig]) -> Vec<Probe> {
    let mut out = vec![
        Probe {
            host: "other.invalid".to_string(),
            describe: "another Host (any a route does not name, or an absolute-form target \
                       naming it), e.g. other.invalid"
                .to_string(),
        },
        Probe {
            host: String::new(),
            describe: "no Host (HTTP/1.0)".to_string(),
        },
    ];
    for r in routes {
        let (host, describe) = match &r.host {
            HostMatch::Any => continue,
            HostMatch::Exact(h) => (h.clone(), format!("Host {h}")),
            HostMatch::Wildcard(s) => (format!("x{s}"), format!("Host x{s}")),
        };
        if !out.iter().any(|p| p.host == host) {
            out.push(Probe { host, describe });
        }
    }
    out
}

/// Every method a route lists, plus GET and methods none lists.
fn probe_methods(routes: &[RouteConfig]) -> Vec<Method> {
    let mut out = vec![Method::GET];
    for m in routes.iter().filter_map(|r| r.methods.as_ref()).flatten() {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    for m in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ] {
        if !out.contains(&m) {
            out.push(m);
            break;
        }
    }
    out
}

/// A path per class of paths the table tells apart: each prefix, a path below it that no
/// longer prefix matches, in the spellings case-insensitive routes read alike, and a path no
/// prefix matches.
fn probe_paths(routes: &[RouteConfig]) -> Vec<String> {
    let any_ci = routes.iter().any(|r| r.case_insensitive);
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: String| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    push(format!("/{}", fresh_segment(routes, "/")));
    for r in routes {
        let base = r.path.trim_end_matches('/');
        let below = format!("{base}/{}", fresh_segment(routes, &format!("{base}/")));
        for p in [r.path.clone(), below] {
            if any_ci {
                push(p.to_ascii_uppercase());
                push(p.to_ascii_lowercase());
            }
            push(p);
        }
    }
    out
}

/// A segment that, after `dir`, starts no route's prefix.
fn fresh_segment(routes: &[RouteConfig], dir: &str) -> String {
    let mut seg = String::from("x");
    while routes.iter().any(|r| {
        r.path
            .to_ascii_lowercase()
            .starts_with(&format!("{dir}{seg}").to_ascii_lowercase())
    }) {
        seg.push('x');
    }
    seg
}

#[cfg(test)]
mod tests;
