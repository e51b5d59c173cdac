//! `routes[i]`: the raw struct, the typed [`RouteConfig`] and its validation, and the checks
//! over the whole table (at least one route, no two with the same host, path and methods, no
//! weaker door to a protected upstream: [`super::check_overlaps`]). A route's `auth`,
//! `issuer` and `authorize` are validated in `auth.rs` beside this file.
//!
//! Security notes: a route path must already be in the form request paths are normalised to
//! (`routing::normalize`), or no request could match it; methods a request can never have
//! (other spellings, `CONNECT`) are refused rather than kept as a route that never matches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use http::{HeaderValue, Method};
use serde::Deserialize;

use super::super::env::lenient;
use super::super::{ConfigError, IssuerConfig, UpstreamConfig};
use super::auth::{RawAuthorize, route_auth};
use super::check_overlaps;

/// Raw `routes[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub issuer: Option<String>,
    pub authorize: Option<RawAuthorize>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub forward_authorization: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub forward_access_token: Option<bool>,
    pub rewrite_host: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub case_insensitive: Option<bool>,
    pub acknowledge_overlap: Option<Vec<String>>,
    pub assertion: Option<super::super::assertion::RawRouteAssertion>,
    pub max_auth_age: Option<String>,
}

/// Which hosts a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches one or more labels before it.
    Wildcard(String),
}

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication; spoofable identity headers are still stripped.
    None,
    /// `Authorization: Bearer <JWT>` from a configured issuer.
    Bearer,
    /// A browser session (the session cookie); sign-in through the issuer's code flow.
    Session,
    /// Bearer when the request has an `Authorization` header, otherwise session.
    Either,
}

/// What the upstream sees as `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteHost {
    /// The chosen upstream address's authority.
    Upstream,
    /// This value.
    Literal(HeaderValue),
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Its name (metric label); `routes[i]` when not given.
    pub name: String,
    /// Host match.
    pub host: HostMatch,
    /// Path prefix, matched on whole segments.
    pub path: String,
    /// Methods it applies to; all when `None`.
    pub methods: Option<Vec<Method>>,
    /// Index into [`Config::upstreams`](crate::config::Config::upstreams); `None` for a
    /// route that exists only for external authorization decisions (never proxied).
    pub upstream: Option<usize>,
    /// Authentication mode.
    pub auth: AuthMode,
    /// Index into [`Config::issuers`](crate::config::Config::issuers): the only issuer
    /// accepted (any, when `None`).
    pub issuer: Option<usize>,
    /// Authorization rules.
    pub policy: crate::authz::Policy,
    /// Whether the client's `Authorization` header is forwarded (default true).
    pub forward_authorization: bool,
    /// Session requests: send `Authorization: Bearer <session access token>` upstream.
    pub forward_access_token: bool,
    /// Host rewrite; the client's Host is kept when `None`.
    pub rewrite_host: Option<RewriteHost>,
    /// Path prefix matching ignores ASCII case (for IIS-style upstreams).
    pub case_insensitive: bool,
    /// Routes with stronger authentication whose paths this route may also serve on the same
    /// upstream (see [`check_overlaps`]).
    pub acknowledge_overlap: Vec<String>,
    /// The signed assertion sent upstream (`auth.assertion`): default, off, or its `aud`.
    pub assertion: super::super::RouteAssertion,
    /// Session requests: the longest time since the user signed in (the ID token's
    /// `auth_time`, else the session's creation); older, a navigation signs in again with
    /// `max_age` and an API call gets 401.
    pub max_auth_age: Option<std::time::Duration>,
}

/// Validates `routes` against the (validated) upstreams and issuers, then the table as a
/// whole. `decides`: external authorization is served, so a route may have no upstream.
pub(in crate::config) fn routes(
    raw: &[RawRoute],
    upstreams: &[Arc<UpstreamConfig>],
    issuers: &[Arc<IssuerConfig>],
    decides: bool,
    limits: crate::authz::cel::Limits,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let by_name: BTreeMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();
    let routes = raw
        .iter()
        .enumerate()
        .map(|(i, r)| route(i, r, &by_name, issuers, (decides, limits)))
        .collect::<Result<Vec<_>, _>>()?;
    if routes.is_empty() {
        return Err(ConfigError::invalid(
            "routes",
            "at least one route is required",
        ));
    }
    let mut keys = HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        if !keys.insert((r.host.clone(), r.path.clone(), r.methods.clone())) {
            return Err(ConfigError::invalid(
                format!("routes[{i}]"),
                "same host, path and methods as an earlier route",
            ));
        }
    }
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    check_overlaps(&routes, &upstream_names)?;
    Ok(routes)
}

/// Validates `routes[i]`.
fn route(
    i: usize,
    raw: &RawRoute,
    upstreams: &BTreeMap<&str, usize>,
    issuers: &[Arc<IssuerConfig>],
    (decides, limits): (bool, crate::authz::cel::Limits),
) -> Result<RouteConfig, ConfigError> {
    let key = format!("routes[{i}]");
    let name = raw.name.clone().unwrap_or_else(|| key.clone());
    let host = match raw.host.as_deref().map(str::trim) {
        None | Some("") | Some("*") => HostMatch::Any,
        Some(h) => host_match(&format!("{key}.host"), h)?,
    };
    let path = path(&key, raw.path.as_deref())?;
    let methods = match &raw.methods {
        None => None,
        Some(list) => Some(methods(&key, list)?),
    };
    let upstream = match raw.upstream.as_deref().map(str::trim) {
        None | Some("") if decides => None,
        None | Some("") => {
            return Err(ConfigError::invalid(
                format!("{key}.upstream"),
                "is required (only a route of the external authorization mode, with an \
                 external_auth decision path set, may go without one)",
            ));
        }
        Some(up_name) => Some(*upstreams.get(up_name).ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.upstream"),
                format!("no upstream named \"{up_name}\""),
            )
        })?),
    };
    let ra = route_auth(
        &key,
        raw.auth.as_deref(),
        raw.issuer.as_deref(),
        raw.authorize.as_ref(),
        issuers,
        limits,
    )?;
    let rewrite_host = match raw.rewrite_host.as_deref() {
        None => None,
        Some(v) => Some(rewrite_host(&format!("{key}.rewrite_host"), v)?),
    };
    Ok(RouteConfig {
        name,
        host,
        path,
        methods,
        upstream,
        auth: ra.mode,
        issuer: ra.issuer,
        policy: ra.policy,
        forward_authorization: raw.forward_authorization.unwrap_or(true),
        forward_access_token: match (raw.forward_access_token, ra.mode) {
            (Some(true), AuthMode::None | AuthMode::Bearer) => {
                return Err(ConfigError::invalid(
                    format!("{key}.forward_access_token"),
                    "needs auth: session or either",
                ));
            }
            (v, _) => v.unwrap_or(false),
        },
        rewrite_host,
        case_insensitive: raw.case_insensitive.unwrap_or(false),
        acknowledge_overlap: raw.acknowledge_overlap.clone().unwrap_or_default(),
        assertion: super::super::assertion::route_assertion(&key, raw.assertion.as_ref(), ra.mode)?,
        max_auth_age: max_auth_age(&key, raw.max_auth_age.as_ref(), ra.mode)?,
    })
}

/// `routes[i].max_auth_age`: a duration of at least a second, on a route with sessions.
fn max_auth_age(
    key: &str,
    raw: Option<&String>,
    mode: AuthMode,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let Some(v) = raw else { return Ok(None) };
    let key = format!("{key}.max_auth_age");
    if matches!(mode, AuthMode::None | AuthMode::Bearer) {
        return Err(ConfigError::invalid(key, "needs auth: session or either"));
    }
    let d =
        super::super::parse_duration(v).map_err(|p| ConfigError::invalid(&key, p.to_string()))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            key,
            "must be at least 1s (max_age is in seconds)",
        ));
    }
    Ok(Some(d))
}

/// `routes[i].path` (`key` is `routes[i]`): `/` when absent; a plain prefix in normalised form.
fn path(key: &str, raw: Option<&str>) -> Result<String, ConfigError> {
    let path = raw.unwrap_or("/").to_string();
    if !path.starts_with('/') {
        return Err(ConfigError::invalid(
            format!("{key}.path"),
            format!("\"{path}\" must start with /"),
        ));
    }
    if path.contains(['?', '#']) || path.split('/').any(|s| s == "." || s == "..") {
        return Err(ConfigError::invalid(
            format!("{key}.path"),
            format!("\"{path}\" must be a plain path prefix (no query, fragment or dot segments)"),
        ));
    }
    if !normalised_route_path(&path) {
        return Err(ConfigError::invalid(
            format!("{key}.path"),
            format!(
                "\"{path}\" must be in normalised form (requests are routed on it): no //, \\, ; \
                 or %2F/%5C, and escapes only for reserved characters, in uppercase hex"
            ),
        ));
    }
    Ok(path)
}

/// `routes[i].methods` when present (`key` is `routes[i]`): not empty, each one a request can
/// have.
fn methods(key: &str, list: &[String]) -> Result<Vec<Method>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.methods"),
            "must not be empty (omit it for any method)",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(j, m)| {
            let upper = m.trim().to_ascii_uppercase();
            // Requests with other spellings are refused (400) and CONNECT always is
            // (405): a route listing one could never match.
            let usable = !upper.is_empty()
                && upper
                    .bytes()
                    .all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_')
                && upper != "CONNECT";
            Method::from_bytes(upper.as_bytes())
                .ok()
                .filter(|_| usable)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{key}.methods[{j}]"),
                        format!(
                            "\"{m}\" is not a method a request can have (letters, - and _; \
                             CONNECT is always refused)"
                        ),
                    )
                })
        })
        .collect()
}

/// `routes[i].rewrite_host` when present: `upstream`, or a literal Host value.
fn rewrite_host(key: &str, v: &str) -> Result<RewriteHost, ConfigError> {
    if v == "upstream" {
        return Ok(RewriteHost::Upstream);
    }
    HeaderValue::from_str(v)
        .map(RewriteHost::Literal)
        .map_err(|_| ConfigError::invalid(key, format!("\"{v}\" is not a valid Host value")))
}

/// Whether a route path is in the form `routing::normalize` gives a request path, so that a
/// request can match it: single slashes, unreserved characters and sub-delimiters other than
/// `;`, and `%HH` (uppercase) only for bytes that are neither unreserved, `/`, `\` nor control.
fn normalised_route_path(path: &str) -> bool {
    let b = path.as_bytes();
    if path.contains("//") {
        return false;
    }
    let upper_hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                return false;
            };
            if !upper_hex(h) || !upper_hex(l) {
                return false;
            }
            let v = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap_or(0);
            if v.is_ascii_alphanumeric()
                || matches!(v, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | 0x7f)
                || v < 0x20
            {
                return false;
            }
            i += 3;
            continue;
        }
        let ok = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'/' | b'-'
                    | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// `routes[i].host` (not empty and not `*`): a host name, or `*.` and a domain.
fn host_match(key: &str, h: &str) -> Result<HostMatch, ConfigError> {
    let lower = h.to_ascii_lowercase();
    let (wild, rest) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !rest.is_empty()
        && rest
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        return Err(ConfigError::invalid(
            key,
            format!("\"{h}\" is not a host name (e.g. \"app.example.com\" or \"*.example.com\")"),
        ));
    }
    Ok(if wild {
        HostMatch::Wildcard(format!(".{rest}"))
    } else {
        HostMatch::Exact(rest.to_string())
    })
}
