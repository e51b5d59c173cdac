//! Raw -> typed: parse every string once and check rules that span fields.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};

use super::file::{RawConfig, RawListener, RawRoute, RawUpstream};
use super::{
    AdminConfig, Config, ConfigError, HostMatch, ListenerConfig, LogConfig, LogFormat, RewriteHost,
    RouteConfig, ServerConfig, TlsConfig, UpstreamConfig, parse_duration,
};

/// hyper's HTTP/1 parser needs at least this much buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
/// Default `admin.max_connections`: probes and a few scrapers need a handful; the cap keeps a
/// flood of admin connections from taking file descriptors the proxy needs.
const DEFAULT_ADMIN_CONNECTIONS: u64 = 64;

// === impl Config ===

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listeners = raw
            .listeners
            .iter()
            .map(|(name, l)| listener(name, l))
            .collect::<Result<Vec<_>, _>>()?;
        if listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut seen = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            // Port 0 asks the system for a free port each time: never a clash.
            if l.address.port() != 0 && !seen.insert(l.address) {
                let other = listeners[..i]
                    .iter()
                    .find(|o| o.address == l.address)
                    .map_or("", |o| o.name.as_str());
                return Err(ConfigError::invalid(
                    format!("listeners.{}.address", l.name),
                    format!("{} is also used by listeners.{other}", l.address),
                ));
            }
        }
        let raw_admin = raw.admin.unwrap_or_default();
        let admin_connections = raw_admin
            .max_connections
            .unwrap_or(DEFAULT_ADMIN_CONNECTIONS);
        if admin_connections == 0 {
            return Err(ConfigError::invalid(
                "admin.max_connections",
                "must be at least 1",
            ));
        }
        let admin = AdminConfig {
            address: match raw_admin.address {
                Some(a) => socket_addr("admin.address", &a)?,
                None => SocketAddr::from(([127, 0, 0, 1], 9090)),
            },
            max_connections: usize::try_from(admin_connections).unwrap_or(usize::MAX),
        };
        if seen.contains(&admin.address) && admin.address.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.address",
                format!("{} is used by a listener", admin.address),
            ));
        }
        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None | Some("auto") => LogFormat::Auto,
                Some("json") => LogFormat::Json,
                Some("human") => LogFormat::Human,
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "log.format",
                        format!("\"{other}\" is not one of auto, json, human"),
                    ));
                }
            },
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            access: raw.log.access.unwrap_or(true),
        };
        let s = &raw.server;
        let max_header_bytes = s.max_header_bytes.unwrap_or(16 * 1024);
        if max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::invalid(
                "server.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        let max_connections = s.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match s.workers {
            None => default_workers,
            Some(n) if (1..=super::MAX_WORKERS).contains(&n) => {
                usize::try_from(n).unwrap_or(default_workers)
            }
            Some(n) => {
                return Err(ConfigError::invalid(
                    "server.workers",
                    format!(
                        "{n} is not between 1 and {} (omit it for one per CPU)",
                        super::MAX_WORKERS
                    ),
                ));
            }
        };
        let server = ServerConfig {
            tls_handshake_timeout: dur(
                "server.tls_handshake_timeout",
                &s.tls_handshake_timeout,
                10,
            )?,
            header_read_timeout: dur("server.header_read_timeout", &s.header_read_timeout, 10)?,
            body_read_timeout: dur("server.body_read_timeout", &s.body_read_timeout, 60)?,
            idle_timeout: dur("server.idle_timeout", &s.idle_timeout, 60)?,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            shutdown_grace: dur("server.shutdown_grace", &s.shutdown_grace, 30)?,
            trust_forwarded_headers: s.trust_forwarded_headers.unwrap_or(false),
            untrusted_forwarded_headers: untrusted_forwarded(&s.untrusted_forwarded_headers)?,
            path_normalization: super::normalization::path_normalization(
                s.path_normalization.as_ref(),
            )?,
            upgraded_idle_timeout: dur(
                "server.upgraded_idle_timeout",
                &s.upgraded_idle_timeout,
                600,
            )?,
            workers,
        };
        let upstreams = raw
            .upstreams
            .iter()
            .map(|(name, u)| upstream(name, u).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: BTreeMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let issuers = raw
            .issuers
            .iter()
            .map(|(name, i)| super::issuer::issuer(name, i).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen_iss = HashSet::new();
        for i in &issuers {
            if !seen_iss.insert(i.issuer.as_str()) {
                return Err(ConfigError::invalid(
                    format!("issuers.{}.issuer", i.name),
                    format!("\"{}\" is used by another issuer", i.issuer),
                ));
            }
        }
        let auth = super::auth::auth(&raw.auth)?;
        let sessions = super::session::sessions(&raw.sessions, &raw.auth)?;
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route(i, r, &by_name, &issuers))
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
        super::routes::check_overlaps(&routes, &upstream_names)?;
        Ok(Config {
            listeners,
            admin,
            log,
            server,
            state_dir: raw
                .state_dir
                .map_or_else(|| PathBuf::from("/var/lib/portcullis"), PathBuf::from),
            upstreams,
            routes,
            issuers,
            auth,
            env_overrides: Vec::new(),
            env_ignored: Vec::new(),
            sessions,
        })
    }
}

fn dur(key: &str, value: &Option<String>, default_secs: u64) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(Duration::from_secs(default_secs)),
        Some(v) => {
            let d = parse_duration(v).map_err(|p| ConfigError::invalid(key, p.to_string()))?;
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
            Ok(d)
        }
    }
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("\"{value}\" is not an IP address and port (e.g. \"0.0.0.0:8080\")"),
        )
    })
}

fn required<'a>(key: &str, value: &'a Option<String>) -> Result<&'a str, ConfigError> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ConfigError::invalid(key, "is required"))
}

fn listener(name: &str, raw: &RawListener) -> Result<ListenerConfig, ConfigError> {
    let key = format!("listeners.{name}");
    let address = socket_addr(
        &format!("{key}.address"),
        required(&format!("{key}.address"), &raw.address)?,
    )?;
    let tls = match &raw.tls {
        None => None,
        Some(t) => Some(TlsConfig {
            cert: PathBuf::from(required(&format!("{key}.tls.cert"), &t.cert)?),
            key: PathBuf::from(required(&format!("{key}.tls.key"), &t.key)?),
            reload_interval: dur(
                &format!("{key}.tls.reload_interval"),
                &t.reload_interval,
                10,
            )?,
        }),
    };
    Ok(ListenerConfig {
        name: name.to_string(),
        address,
        tls,
    })
}

fn upstream(name: &str, raw: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let key = format!("upstreams.{name}");
    if raw.addresses.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.addresses"),
            "at least one address is required",
        ));
    }
    let addresses = raw
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| upstream_address(&format!("{key}.addresses[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let pool_max_idle = raw.pool_max_idle.unwrap_or(256);
    Ok(UpstreamConfig {
        name: name.to_string(),
        addresses,
        connect_timeout: dur(&format!("{key}.connect_timeout"), &raw.connect_timeout, 2)?,
        response_timeout: dur(
            &format!("{key}.response_timeout"),
            &raw.response_timeout,
            30,
        )?,
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        unhealthy_cooldown: dur(
            &format!("{key}.unhealthy_cooldown"),
            &raw.unhealthy_cooldown,
            10,
        )?,
        pool_idle_timeout: dur(
            &format!("{key}.pool_idle_timeout"),
            &raw.pool_idle_timeout,
            90,
        )?,
        pool_max_idle: usize::try_from(pool_max_idle).unwrap_or(usize::MAX),
    })
}

fn upstream_address(key: &str, value: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("\"{value}\" is not a URL (e.g. \"http://10.0.0.5:8080\")"),
        )
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ConfigError::invalid(
                key,
                format!("\"{value}\" must start with http:// or https://"),
            ));
        }
    }
    check_authority(key, value, &uri)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || value.contains('#') {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" must not have a path or query (use scheme://host:port)"),
        ));
    }
    Ok(uri)
}

/// Checks the authority of an absolute URL: a host, no user name or password, and a port (when
/// written) that is a number from 1 to 65535. `http::Uri` accepts `host:abc`, `host:99999` and
/// `user@host`; each would fail only later, at the first request.
pub(super) fn check_authority(key: &str, value: &str, uri: &Uri) -> Result<(), ConfigError> {
    let Some(authority) = uri.authority() else {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" has no host"),
        ));
    };
    let a = authority.as_str();
    if a.contains('@') {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" must not contain a user name or password"),
        ));
    }
    // After an IPv6 literal's `]`, or after the last `:` of a name or IPv4 address.
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').map(Some).unwrap_or(None)),
            None => ("", None),
        },
        None => match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    if host.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" has no host"),
        ));
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !ok {
            return Err(ConfigError::invalid(
                key,
                format!("\"{value}\" has a port that is not a number from 1 to 65535"),
            ));
        }
    }
    Ok(())
}

fn route(
    i: usize,
    raw: &RawRoute,
    upstreams: &BTreeMap<&str, usize>,
    issuers: &[Arc<super::IssuerConfig>],
) -> Result<RouteConfig, ConfigError> {
    let key = format!("routes[{i}]");
    let name = raw.name.clone().unwrap_or_else(|| key.clone());
    let host = match raw.host.as_deref().map(str::trim) {
        None | Some("") | Some("*") => HostMatch::Any,
        Some(h) => host_match(&format!("{key}.host"), h)?,
    };
    let path = raw.path.clone().unwrap_or_else(|| "/".to_string());
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
    let methods = match &raw.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{key}.methods"),
                "must not be empty (omit it for any method)",
            ));
        }
        Some(list) => Some(
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
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let up_name = required(&format!("{key}.upstream"), &raw.upstream)?;
    let upstream = *upstreams.get(up_name).ok_or_else(|| {
        ConfigError::invalid(
            format!("{key}.upstream"),
            format!("no upstream named \"{up_name}\""),
        )
    })?;
    let ra = super::auth::route_auth(
        &key,
        raw.auth.as_deref(),
        raw.issuer.as_deref(),
        raw.authorize.as_ref(),
        issuers,
    )?;
    let rewrite_host = match raw.rewrite_host.as_deref() {
        None => None,
        Some("upstream") => Some(RewriteHost::Upstream),
        Some(v) => Some(RewriteHost::Literal(HeaderValue::from_str(v).map_err(
            |_| {
                ConfigError::invalid(
                    format!("{key}.rewrite_host"),
                    format!("\"{v}\" is not a valid Host value"),
                )
            },
        )?)),
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
            (Some(true), super::AuthMode::None | super::AuthMode::Bearer) => {
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
    })
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

/// `server.untrusted_forwarded_headers`: the default list when absent; each entry a header
/// name or a prefix ending in `*`.
fn untrusted_forwarded(list: &Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = list else {
        return Ok(super::DEFAULT_UNTRUSTED_FORWARDED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect());
    };
    for (i, s) in list.iter().enumerate() {
        let name = s.strip_suffix('*').unwrap_or(s);
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                format!("server.untrusted_forwarded_headers[{i}]"),
                format!("\"{s}\" is not a header name or prefix ending in *"),
            ));
        }
    }
    Ok(list.clone())
}
