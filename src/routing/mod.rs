//! Route selection: host (exact, `*.suffix`, any), then the longest path prefix, then methods.
//!
//! Precedence follows nginx: the most specific host wins first (exact, then the longest
//! wildcard suffix, then any host); among routes for that host the longest path prefix wins.
//! Host and path alone select the most specific route(s); the method only chooses among
//! those (a route that lists methods beats one that doesn't). A method none of them accepts is
//! refused with 405 and `Allow` ([`Miss::Method`]): it never falls through to a shorter prefix
//! or a less specific host, where a weaker route could serve the same path. Path prefixes match
//! whole segments, so `/api` matches `/api` and `/api/x` but not `/apix`.
//!
//! Security notes: the router never sees a path as received. [`target::canonicalize`] first
//! checks the request target and `Host` and puts the path into one canonical form
//! ([`normalize`]): repeated slashes, escaped unreserved characters, `%2F`/`%5C`, `\`,
//! `;params` and lowercase hex all have one spelling, or the request is refused with 400. The
//! route is chosen on that form, and what the upstream receives is either that form or (with a
//! `keep` option) a spelling whose decoded reading is that form, so no spelling of a protected
//! path selects a less protected route while the upstream serves the protected one. Dot
//! segments (`.`/`..`, in every encoding) are refused. Hosts match ignoring ASCII case, a
//! trailing dot and the port. A route with `case_insensitive: true` matches its path prefix
//! ignoring ASCII case (IIS serves `/ADMIN` as `/admin`); without it, matching is exact.

pub mod normalize;
pub mod target;

use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::authz::Policy;
use crate::config::routes::{self, RouteShape, Selection, Shape};
use crate::config::{AuthMode, HostMatch, RewriteHost, RouteConfig};

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Name used in metrics and logs.
    pub name: Arc<str>,
    /// Its position in the configuration's `routes` (for series resolved per route).
    pub index: usize,
    /// Index of the upstream it forwards to; `None` for a route of external authorization
    /// decisions only (the proxy answers 404 for it, before authentication).
    pub upstream: Option<usize>,
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
    /// Session requests carry the session's access token upstream.
    pub forward_access_token: bool,
    /// The signed assertion sent upstream: default, off, or its `aud`.
    pub assertion: crate::config::RouteAssertion,
    /// Session requests: the longest time since sign-in (step-up beyond it).
    pub max_auth_age: Option<std::time::Duration>,
    host: HostMatch,
    path: String,
    methods: Option<Vec<Method>>,
    case_insensitive: bool,
}

/// Why no route serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No route matches the host and path (404).
    NoRoute,
    /// Host and path select routes, none of them for this method (405); `allow` is the
    /// `Allow` value: the methods those routes list.
    Method {
        /// `GET, POST`, ...
        allow: HeaderValue,
    },
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
            .enumerate()
            .map(|(index, r)| {
                Arc::new(Route {
                    name: Arc::from(r.name.as_str()),
                    index,
                    upstream: r.upstream,
                    auth: r.auth,
                    rewrite_host: r.rewrite_host.clone(),
                    issuer: r.issuer,
                    policy: r.policy.clone(),
                    forward_authorization: r.forward_authorization,
                    forward_access_token: r.forward_access_token,
                    assertion: r.assertion.clone(),
                    max_auth_age: r.max_auth_age,
                    host: r.host.clone(),
                    path: r.path.clone(),
                    methods: r.methods.clone(),
                    case_insensitive: r.case_insensitive,
                })
            })
            .collect();
        routes::sort(&mut routes);
        Self { routes }
    }

    /// The route for `host` (without port, any case), `path` and `method`. `path` is the route
    /// form from [`normalize`] (see [`target::Target::path`]). Host and path select the most
    /// specific routes; the first of them that accepts `method` serves it, and when none does
    /// the answer is [`Miss::Method`], never a less specific route (`config::routes::select`).
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Result<&Arc<Route>, Miss> {
        match routes::select(&self.routes, host, path, method) {
            Selection::Route(r) => Ok(r),
            Selection::NoRoute => Err(Miss::NoRoute),
            Selection::Method { allow } => {
                let list: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
                // Methods are tokens, always a valid header value.
                let allow =
                    HeaderValue::from_str(&list.join(", ")).unwrap_or(HeaderValue::from_static(""));
                Err(Miss::Method { allow })
            }
        }
    }
}

// === impl Route ===

impl RouteShape for Route {
    fn shape(&self) -> Shape<'_> {
        Shape::new(
            &self.host,
            &self.path,
            self.methods.as_deref(),
            self.case_insensitive,
        )
    }
}

#[cfg(test)]
mod tests;
