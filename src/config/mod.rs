//! Configuration: one YAML file plus `PORTCULLIS_*` environment overrides, parsed into raw
//! structs, then validated once into the typed [`Config`].
//!
//! One layout per top-level section: the first segment of a key path names the file that
//! holds its raw struct, its typed settings and their validation (`listeners.rs`, `admin.rs`,
//! `log.rs`, `server/`, `upstreams.rs`, `routes/`, `issuer.rs` for `issuers`, `auth.rs`,
//! `session.rs` for `sessions`). `file.rs` is the whole file ([`RawConfig`]), `parse.rs` the
//! helpers every section shares (durations, addresses, URL checks), and
//! `TryFrom<RawConfig> for Config` below only calls the sections in order.
//!
//! Security notes: values from the environment may be secrets; the summary printed by
//! `check-config` lists which keys were overridden, never their values.

mod admin;
pub mod assertion;
pub mod auth;
mod duration;
mod env;
mod error;
mod external_auth;
mod file;
pub mod issuer;
mod listeners;
mod log;
mod parse;
pub mod routes;
mod server;
pub mod session;
mod upstreams;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::Figment;
use figment::providers::Format;
use http::{Method, Uri};

pub use admin::AdminConfig;
pub use assertion::{AssertionAlgorithm, AssertionConfig, HeaderProfile, RouteAssertion};
pub use auth::{AuthConfig, AuthPaths, RedirectDomain};
pub use duration::{DurationError, parse_duration};
pub use env::{CONFIG_VAR as ENV_CONFIG_VAR, EnvOverrides, PREFIX as ENV_PREFIX};
pub use error::{ConfigError, ParseProblem};
pub use external_auth::{Cidr, ExternalAuthConfig};
pub use file::RawConfig;
pub use issuer::IssuerConfig;
pub use listeners::{ListenerConfig, TlsConfig};
pub use log::{LogConfig, LogFormat};
pub use routes::{AuthMode, HostMatch, RewriteHost, RouteConfig};
pub use server::normalization::{
    Backslashes, DoubleEncoding, EscapedSlashes, PathNormalization, PathParameters,
};
pub use server::{DEFAULT_UNTRUSTED_FORWARDED_HEADERS, MAX_WORKERS, ServerConfig};
pub use session::{CookieConfig, RedisConfig, RedisTarget, Sensitive, SessionsConfig, StoreKind};
pub use upstreams::{UpstreamClient, UpstreamConfig};

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
    /// Portcullis as the authentication service of an ingress or gateway.
    pub external_auth: ExternalAuthConfig,
}

// === impl Config ===

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    /// Validates the sections in file order; a section that refers to others (admin to
    /// listeners, routes to upstreams and issuers) comes after them.
    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listeners = listeners::listeners(&raw.listeners)?;
        let admin = admin::admin(raw.admin.as_ref(), &listeners)?;
        let log = log::log(&raw.log)?;
        let server = server::server(&raw.server)?;
        let upstreams = upstreams::upstreams(&raw.upstreams)?;
        let issuers = issuer::issuers(&raw.issuers)?;
        let auth = auth::auth(&raw.auth)?;
        let sessions = session::sessions(&raw.sessions, &raw.auth)?;
        let external_auth = external_auth::external_auth(&raw.external_auth)?;
        let routes = routes::routes(
            &raw.routes,
            &upstreams,
            &issuers,
            external_auth.decides(),
            auth.policy,
        )?;
        assertion::check_routes(&auth, &routes)?;
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
            external_auth,
        })
    }
}

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
        let _ = writeln!(
            out,
            "admin on {}{}",
            self.admin.address,
            self.admin.sessions_note()
        );
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
                r.upstream
                    .and_then(|u| self.upstreams.get(u))
                    .map_or("(decisions only)", |u| u.name.as_str()),
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
