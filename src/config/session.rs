//! `sessions` (the session store, its cookie and timing): raw structs, validation and the
//! typed result. The browser-flow paths it carries (`auth.*_path`) are validated in `auth.rs`.
//!
//! Security notes: the Redis password and URLs (which may carry a password) are kept in
//! [`Sensitive`], and cookie keys in [`KeyMaterial`]; neither prints its value in `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::ConfigError;
use super::auth::AuthPaths;
use super::env::lenient;
use super::parse::{duration, duration_or_zero};
use crate::secret::{KeyError, KeyMaterial};

/// Raw `sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    pub store: Option<String>,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub cookie: RawCookie,
    pub idle_timeout: Option<String>,
    pub lifetime: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub refresh_fraction: Option<f64>,
    pub outage_grace: Option<String>,
    pub degraded_header: Option<String>,
}

/// Raw `sessions.redis`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub sentinel: Option<RawSentinel>,
    pub cluster: Option<RawCluster>,
    pub timeout: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<String>,
    pub cache_ttl: Option<String>,
}

/// Raw `sessions.redis.sentinel`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Raw `sessions.redis.cluster`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Raw `sessions.cookie`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub secure: Option<bool>,
    pub domain: Option<String>,
    pub keys: Option<Vec<String>>,
}

/// A string that must not be printed (a password, or a URL that may contain one).
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

/// `sessions`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    /// Which store holds sessions.
    pub store: StoreKind,
    /// The Redis settings (present when `store` is redis).
    pub redis: Option<RedisConfig>,
    /// The session cookie.
    pub cookie: CookieConfig,
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login, however used.
    pub lifetime: Duration,
    /// Share of the access token's lifetime after which it is refreshed, in (0, 1).
    pub refresh_fraction: f64,
    /// How long past the access token's expiry a session stays usable while the IdP is down.
    pub outage_grace: Duration,
    /// Header sent upstream on requests served in grace; `None` when off.
    pub degraded_header: Option<HeaderName>,
    /// The browser-flow paths (`auth.callback_path` etc.).
    pub paths: AuthPaths,
}

/// `sessions.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process (one replica).
    Memory,
    /// Redis (shared by replicas).
    Redis,
}

/// `sessions.redis`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// Standalone, Sentinel or Cluster.
    pub target: RedisTarget,
    /// Bound on every Redis call.
    pub timeout: Duration,
    /// Password (overrides one in the URL).
    pub password: Option<Sensitive>,
    /// CA bundle (PEM) for `rediss://`, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Lifetime of the in-process cache entries in front of Redis.
    pub cache_ttl: Duration,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// One server (`redis://`, `rediss://`, `redis+unix://`).
    Url(Sensitive),
    /// A master found through Sentinels.
    Sentinel {
        /// The master's name.
        master: String,
        /// Sentinel addresses.
        addresses: Vec<Sensitive>,
    },
    /// Cluster seed nodes.
    Cluster(Vec<Sensitive>),
}

/// `sessions.cookie`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    /// Cookie name.
    pub name: String,
    /// Whether the cookie is marked Secure.
    pub secure: bool,
    /// Domain attribute; host-only when `None`.
    pub domain: Option<String>,
    /// Sealing keys: the first seals, all open. Empty with the memory store means "generate".
    pub keys: Vec<KeyMaterial>,
}

/// Default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "portcullis_session";

// === impl Sensitive ===

impl Sensitive {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value (to hand to the Redis client; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Validates `sessions` and the three `auth.*_path` keys.
pub fn sessions(
    raw: &RawSessions,
    auth: &super::auth::RawAuth,
) -> Result<SessionsConfig, ConfigError> {
    let store = match raw.store.as_deref().map(str::trim) {
        None | Some("memory") => StoreKind::Memory,
        Some("redis") => StoreKind::Redis,
        Some(other) => {
            return Err(ConfigError::invalid(
                "sessions.store",
                format!("\"{other}\" is not one of memory, redis"),
            ));
        }
    };
    let redis = match (&raw.redis, store) {
        (None, StoreKind::Redis) => {
            return Err(ConfigError::invalid(
                "sessions.redis",
                "is required when sessions.store is redis",
            ));
        }
        (None, StoreKind::Memory) => None,
        (Some(r), _) => Some(redis(r)?),
    };
    let cookie = cookie(&raw.cookie, store)?;
    let secs = Duration::from_secs;
    let idle_timeout = duration("sessions.idle_timeout", &raw.idle_timeout, secs(8 * 3600))?;
    let lifetime = duration("sessions.lifetime", &raw.lifetime, secs(24 * 3600))?;
    let refresh_fraction = raw.refresh_fraction.unwrap_or(0.5);
    if !(refresh_fraction > 0.0 && refresh_fraction < 1.0) {
        return Err(ConfigError::invalid(
            "sessions.refresh_fraction",
            format!("{refresh_fraction} must be between 0 and 1 (both excluded)"),
        ));
    }
    let outage_grace = duration_or_zero("sessions.outage_grace", &raw.outage_grace, secs(3600))?;
    let degraded_header = match raw.degraded_header.as_deref().map(str::trim) {
        None => Some(HeaderName::from_static("x-auth-degraded")),
        Some("") => None,
        Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            ConfigError::invalid(
                "sessions.degraded_header",
                format!("\"{h}\" is not a header name"),
            )
        })?),
    };
    Ok(SessionsConfig {
        store,
        redis,
        cookie,
        idle_timeout,
        lifetime,
        refresh_fraction,
        outage_grace,
        degraded_header,
        paths: super::auth::paths(auth)?,
    })
}

fn redis(raw: &RawRedis) -> Result<RedisConfig, ConfigError> {
    let ms = Duration::from_millis;
    let set = [
        raw.url.is_some(),
        raw.sentinel.is_some(),
        raw.cluster.is_some(),
    ];
    match set.iter().filter(|s| **s).count() {
        0 => {
            return Err(ConfigError::invalid(
                "sessions.redis",
                "one of url, sentinel, cluster is required",
            ));
        }
        1 => {}
        _ => {
            return Err(ConfigError::invalid(
                "sessions.redis",
                "set only one of url, sentinel, cluster",
            ));
        }
    }
    let target = if let Some(url) = &raw.url {
        RedisTarget::Url(redis_url("sessions.redis.url", url, true)?)
    } else if let Some(s) = &raw.sentinel {
        let master = s
            .master
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ConfigError::invalid("sessions.redis.sentinel.master", "is required"))?;
        RedisTarget::Sentinel {
            master: master.to_string(),
            addresses: addresses("sessions.redis.sentinel.addresses", &s.addresses)?,
        }
    } else {
        let c = raw
            .cluster
            .as_ref()
            .map(|c| c.addresses.as_slice())
            .unwrap_or(&[]);
        RedisTarget::Cluster(addresses("sessions.redis.cluster.addresses", c)?)
    };
    Ok(RedisConfig {
        target,
        timeout: duration("sessions.redis.timeout", &raw.timeout, ms(250))?,
        password: raw
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(Sensitive::new),
        ca_file: raw
            .ca_file
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from),
        cache_ttl: duration("sessions.redis.cache_ttl", &raw.cache_ttl, ms(5_000))?,
    })
}

fn addresses(key: &str, list: &[String]) -> Result<Vec<Sensitive>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "at least one address is required",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, a)| redis_url(&format!("{key}[{i}]"), a, false))
        .collect()
}

fn redis_url(key: &str, url: &str, unix_ok: bool) -> Result<Sensitive, ConfigError> {
    let url = url.trim();
    let schemes: &[&str] = if unix_ok {
        &["redis://", "rediss://", "redis+unix://", "unix://"]
    } else {
        &["redis://", "rediss://"]
    };
    if !schemes.iter().any(|s| url.starts_with(s)) {
        // The value may contain a password: name only the scheme problem.
        return Err(ConfigError::invalid(
            key,
            format!("must start with {}", schemes.join(", ")),
        ));
    }
    if redis::IntoConnectionInfo::into_connection_info(url).is_err() {
        return Err(ConfigError::invalid(key, "is not a valid Redis URL"));
    }
    Ok(Sensitive::new(url))
}

fn cookie(raw: &RawCookie, store: StoreKind) -> Result<CookieConfig, ConfigError> {
    let name = raw
        .name
        .clone()
        .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string());
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token_char) {
        return Err(ConfigError::invalid(
            "sessions.cookie.name",
            format!("\"{name}\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
        ));
    }
    let secure = raw.secure.unwrap_or(true);
    let domain = raw
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    if let Some(d) = &domain {
        let bare = d.strip_prefix('.').unwrap_or(d);
        let ok = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            return Err(ConfigError::invalid(
                "sessions.cookie.domain",
                format!("\"{d}\" is not a domain name"),
            ));
        }
    }
    // Browsers drop a __Host- cookie unless it is Secure, host-only and Path=/.
    if name.starts_with("__Host-") && (!secure || domain.is_some()) {
        return Err(ConfigError::invalid(
            "sessions.cookie.name",
            "a __Host- cookie needs secure: true and no domain",
        ));
    }
    if name.starts_with("__Secure-") && !secure {
        return Err(ConfigError::invalid(
            "sessions.cookie.name",
            "a __Secure- cookie needs secure: true",
        ));
    }
    let keys = raw
        .keys
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, k)| {
            KeyMaterial::from_base64(k).map_err(|e| {
                let problem = match e {
                    KeyError::Length(n) => {
                        format!("is {n} bytes, must be 32 (e.g. `openssl rand -base64 32`)")
                    }
                    _ => "is not base64 (e.g. `openssl rand -base64 32`)".to_string(),
                };
                ConfigError::invalid(format!("sessions.cookie.keys[{i}]"), problem)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() && store == StoreKind::Redis {
        return Err(ConfigError::invalid(
            "sessions.cookie.keys",
            "at least one key is required with store: redis (every replica must open the others' cookies and records)",
        ));
    }
    Ok(CookieConfig {
        name,
        secure,
        domain,
        keys,
    })
}

/// `Option<f64>` from a number or a numeric string (environment overrides are strings).
fn opt_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, found \"{s}\""))),
    }
}
