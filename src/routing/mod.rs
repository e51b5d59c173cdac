//! Route selection: host (exact, `*.suffix`, any), then the longest path prefix, then methods.
//!
//! Precedence follows nginx: the most specific host wins first (exact, then the longest
//! wildcard suffix, then any host); among routes for that host the longest path prefix wins; a
//! route that lists methods beats one that doesn't. Path prefixes match whole segments, so
//! `/api` matches `/api` and `/api/x` but not `/apix`.
//!
//! Security notes: the path is matched as received (percent-encoded). Requests whose path has
//! dot segments (`.`/`..`, also percent-encoded) are refused before routing (see
//! [`has_dot_segments`]) so that `/public/../admin` can't select the `/public` route while the
//! upstream serves `/admin`.

use std::sync::Arc;

use http::Method;

use crate::authz::Policy;
use crate::config::{AuthMode, HostMatch, RewriteHost, RouteConfig};

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Name used in metrics and logs.
    pub name: Arc<str>,
    /// Index of the upstream it forwards to.
    pub upstream: usize,
    /// Authentication mode.
    pub auth: AuthMode,
    /// Host rewrite.
    pub rewrite_host: Option<RewriteHost>,
    /// The only issuer accepted (index into the config's issuers), if limited.
    pub issuer: Option<usize>,
    /// Authorization rules.
    pub policy: Policy,
    /// Whether the client's `Authorization` header is forwarded.
    pub forward_authorization: bool,
    host: HostMatch,
    path: String,
    methods: Option<Vec<Method>>,
}

/// Finds the route for a request.
#[derive(Debug)]
pub struct Router {
    /// Most specific first, so the first match is the best.
    routes: Vec<Arc<Route>>,
}

// === impl Router ===

impl Router {
    /// Builds the router from validated routes.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<Arc<Route>> = routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    name: Arc::from(r.name.as_str()),
                    upstream: r.upstream,
                    auth: r.auth,
                    rewrite_host: r.rewrite_host.clone(),
                    issuer: r.issuer,
                    policy: r.policy.clone(),
                    forward_authorization: r.forward_authorization,
                    host: r.host.clone(),
                    path: r.path.clone(),
                    methods: r.methods.clone(),
                })
            })
            .collect();
        // Stable sort keeps file order among equals.
        routes.sort_by_key(|r| std::cmp::Reverse(r.rank()));
        Self { routes }
    }

    /// The best route for `host` (without port, any case), `path` and `method`.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path, method))
    }
}

// === impl Route ===

impl Route {
    fn rank(&self) -> (u8, usize, usize, bool) {
        let (host_rank, suffix_len) = match &self.host {
            HostMatch::Exact(_) => (2, 0),
            HostMatch::Wildcard(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        };
        (
            host_rank,
            suffix_len,
            self.path.len(),
            self.methods.is_some(),
        )
    }

    fn matches(&self, host: &str, path: &str, method: &Method) -> bool {
        host_matches(&self.host, host)
            && prefix_matches(&self.path, path)
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Any => true,
        HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
        HostMatch::Wildcard(suffix) => {
            let (h, s) = (host.as_bytes(), suffix.as_bytes());
            h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Strips the port from a `Host` value (`example.com:8080`, `[::1]:8080`).
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: keep the brackets' content with brackets.
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) => &authority[..i],
        None => authority,
    }
}

/// True when a path has a `.` or `..` segment, literally or percent-encoded. Segments are
/// split on `/` and also on `\\`, `%2F` and `%5C`, since some upstreams decode or accept those
/// as separators (`/public/..%2Fadmin`).
pub fn has_dot_segments(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    let mut dots = 0u32;
    let mut other = false;
    let at_boundary = |dots: u32, other: bool| !other && (dots == 1 || dots == 2);
    while i < b.len() {
        let (sep, dot, step) = match b[i] {
            b'/' | b'\\' => (true, false, 1),
            b'.' => (false, true, 1),
            b'%' if b.len() >= i + 3 => match (b[i + 1], b[i + 2] | 0x20) {
                (b'2', b'f') | (b'5', b'c') => (true, false, 3),
                (b'2', b'e') => (false, true, 3),
                _ => (false, false, 1),
            },
            _ => (false, false, 1),
        };
        if sep {
            if at_boundary(dots, other) {
                return true;
            }
            dots = 0;
            other = false;
        } else if dot {
            dots += 1;
        } else {
            other = true;
        }
        i += step;
    }
    at_boundary(dots, other)
}

#[cfg(test)]
mod tests;
