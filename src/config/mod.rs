//! Configuration: one YAML file plus `PORTCULLIS_*` environment overrides, parsed into raw
//! structs (`file.rs`), then validated once into the typed [`Config`] (`validate.rs`).
//!
//! Security notes: values from the environment may be secrets; the summary printed by
//! `check-config` lists which keys were overridden, never their values.

pub mod auth;
mod duration;
mod env;
mod error;
mod file;
pub mod issuer;
mod normalization;
pub mod routes;
pub mod session;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::Format;
use http::{HeaderValue, Method, Uri};

pub use auth::AuthConfig;
pub use duration::{DurationError, parse_duration};
pub use env::{CONFIG_VAR as ENV_CONFIG_VAR, EnvOverrides, PREFIX as ENV_PREFIX};
pub use error::{ConfigError, ParseProblem};
pub use file::RawConfig;
pub use issuer::IssuerConfig;
pub use normalization::{
    Backslashes, DoubleEncoding, EscapedSlashes, PathNormalization, PathParameters,
};
pub use session::{
    AuthPaths, CookieConfig, RedisConfig, RedisTarget, Sensitive, SessionsConfig, StoreKind,
};

/// The validated configuration everything runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners for proxied traffic, by name.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Connection limits and forwarding policy.
    pub server: ServerConfig,
    /// Where last-known-good IdP state is kept.
    pub state_dir: PathBuf,
    /// Upstreams by name, in name order.
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Identity providers whose tokens are accepted, in name order.
    pub issuers: Vec<Arc<IssuerConfig>>,
    /// Token limits and identity headers.
    pub auth: AuthConfig,
    /// Keys that environment variables overrode.
    pub env_overrides: Vec<String>,
    /// `PORTCULLIS_*` variables ignored because they map to no key (e.g. the ones Kubernetes
    /// injects for a Service named `portcullis`); names only, for a warning.
    pub env_ignored: Vec<String>,
    /// Browser sessions: store, cookie, timing, and the browser-flow paths.
    pub sessions: SessionsConfig,
}

/// One listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Its name in the file (`listeners.<name>`), used as a metric label.
    pub name: String,
    /// Where it binds.
    pub address: SocketAddr,
    /// TLS termination, when set.
    pub tls: Option<TlsConfig>,
}

/// TLS certificate and key for a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where it binds.
    pub address: SocketAddr,
    /// Most admin connections open at once (its own cap: a flood of proxy connections
    /// cannot starve health checks and scrapes, nor the other way round).
    pub max_connections: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Human,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Default filter (`RUST_LOG` syntax), overridden by `RUST_LOG`.
    pub level: String,
    /// Whether one access-log line is written per request.
    pub access: bool,
}

/// Limits applied to every listener, and forwarding policy.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body (own paths and proxied routes);
    /// past it the request ends with 408 and the connection (HTTP/1) or stream (HTTP/2) is
    /// closed.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (431 beyond it).
    pub max_header_bytes: usize,
    /// Most client connections open at once, over all listeners.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Whether incoming `X-Forwarded-*` headers are kept and appended to.
    pub trust_forwarded_headers: bool,
    /// Client headers removed unless `trust_forwarded_headers` (names, or prefixes ending in
    /// `*`; compared in any case, `_` equal to `-`).
    pub untrusted_forwarded_headers: Vec<String>,
    /// How request paths are normalised before routing.
    pub path_normalization: PathNormalization,
    /// An upgraded (WebSocket) tunnel with no bytes either way for this long is closed.
    pub upgraded_idle_timeout: Duration,
    /// Request worker threads: each runs its own single-threaded runtime with its own
    /// listening sockets (`SO_REUSEPORT`) and upstream connection pools. Default: one per CPU.
    pub workers: usize,
}

/// The most `server.workers` accepted: far more threads than any machine has cores only
/// adds context switches and idle pools.
pub const MAX_WORKERS: u64 = 1024;

/// Default `server.untrusted_forwarded_headers`: headers that frameworks take as the client's
/// address, scheme, host, URL or method (Spring, Symfony, Laravel, Rails, IIS, Express...).
pub const DEFAULT_UNTRUSTED_FORWARDED_HEADERS: [&str; 14] = [
    "Forwarded",
    "X-Forwarded-*",
    "X-Real-IP",
    "X-Client-IP",
    "Client-IP",
    "True-Client-IP",
    "X-Cluster-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Original-Host",
    "X-Host",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
];

/// One upstream: a set of equivalent addresses.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name in the file.
    pub name: String,
    /// `http://host:port` or `https://host:port` (no path).
    pub addresses: Vec<Uri>,
    /// Time allowed to open a connection (502 after).
    pub connect_timeout: Duration,
    /// Time allowed until the response headers arrive (504 after).
    pub response_timeout: Duration,
    /// CA bundle for `https` addresses, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// How long an address that refused a connection is skipped.
    pub unhealthy_cooldown: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per address.
    pub pool_max_idle: usize,
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
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Authentication mode.
    pub auth: AuthMode,
    /// Index into [`Config::issuers`]: the only issuer accepted (any, when `None`).
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
    /// upstream (see [`routes::check_overlaps`]).
    pub acknowledge_overlap: Vec<String>,
}

// === impl Config ===

impl Config {
    /// Loads `path` with overrides from `env` (pass `std::env::vars()` in production).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, env)
    }

    /// Parses YAML text with overrides from `env`.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = EnvOverrides::new(env);
        // An empty document is a valid (if useless) YAML file; figment wants a mapping.
        let text = if text.trim().is_empty() { "{}" } else { text };
        let raw: RawConfig = Figment::new()
            .merge(serde_saphyr::figment::Yaml::string(text))
            .merge(env.clone())
            .extract()
            .map_err(ConfigError::from_figment)?;
        let mut config = Config::try_from(raw)?;
        config.env_overrides = env.keys();
        config.env_ignored = env.ignored().to_vec();
        Ok(config)
    }

    /// A short human summary, printed by `check-config`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for l in &self.listeners {
            let tls = if l.tls.is_some() { "https" } else { "http" };
            let _ = writeln!(out, "listener {} on {} ({tls})", l.name, l.address);
        }
        let _ = writeln!(out, "admin on {}", self.admin.address);
        let _ = writeln!(out, "request workers: {}", self.server.workers);
        for u in &self.upstreams {
            let addrs: Vec<String> = u.addresses.iter().map(Uri::to_string).collect();
            let _ = writeln!(out, "upstream {}: {}", u.name, addrs.join(", "));
        }
        for r in &self.routes {
            let host = match &r.host {
                HostMatch::Any => "*".to_string(),
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Wildcard(s) => format!("*{s}"),
            };
            let methods = r.methods.as_ref().map_or_else(
                || "any method".to_string(),
                |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            );
            let _ = writeln!(
                out,
                "route {}: {host}{} ({methods}) -> {}, auth {}",
                r.name,
                r.path,
                self.upstreams[r.upstream].name,
                match (r.auth, r.issuer.and_then(|i| self.issuers.get(i))) {
                    (AuthMode::None, _) => "none".to_string(),
                    (AuthMode::Bearer, Some(i)) => format!("bearer ({})", i.name),
                    (AuthMode::Bearer, None) => "bearer (any issuer)".to_string(),
                    (AuthMode::Session, Some(i)) => format!("session ({})", i.name),
                    (AuthMode::Either, Some(i)) => format!("bearer or session ({})", i.name),
                    (AuthMode::Session | AuthMode::Either, None) => "session".to_string(),
                }
            );
        }
        for i in &self.issuers {
            let keys = match &i.jwks_uri {
                Some(u) => format!("jwks {u}"),
                None => "discovery".to_string(),
            };
            let secret = if i.client_secret.is_some() {
                ", client secret set"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "issuer {}: {} ({keys}; audiences {}{secret})",
                i.name,
                i.issuer,
                i.audiences.join(", ")
            );
        }
        if !self.env_overrides.is_empty() {
            let _ = writeln!(
                out,
                "overridden from the environment: {}",
                self.env_overrides.join(", ")
            );
        }
        if !self.env_ignored.is_empty() {
            let _ = writeln!(
                out,
                "ignored environment variables (no such configuration key): {}",
                self.env_ignored.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_server(server: &str) -> Result<Config, ConfigError> {
        let yaml = format!(
            "listeners: {{ plain: {{ address: \"127.0.0.1:0\" }} }}\n\
             upstreams: {{ app: {{ addresses: [\"http://127.0.0.1:1\"] }} }}\n\
             routes: [{{ path: /, upstream: app }}]\n{server}"
        );
        Config::from_yaml(&yaml, Vec::<(String, String)>::new())
    }

    #[test]
    fn workers_default_to_one_per_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = with_server("").map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.server.workers), Ok(cpus));
        let c = with_server("server: { workers: 3 }").map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.server.workers), Ok(3));
    }

    #[test]
    fn zero_or_absurd_workers_are_refused_with_the_key() {
        for bad in ["0", "1025", "100000000"] {
            let e = with_server(&format!("server: {{ workers: {bad} }}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("server.workers"), "{bad}: {e}");
        }
        let e = with_server("server: { workers: -2 }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("workers"), "{e}");
    }
}
