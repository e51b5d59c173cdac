//! `upstreams.<name>`: where routes forward to. Raw struct, typed settings and their
//! validation.
//!
//! Security notes: an address is `scheme://host:port` only; a path, query, fragment or user
//! info is refused rather than dropped, so the file says exactly where requests go.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::ConfigError;
use super::env::lenient;
use super::parse::{check_authority, duration};

/// Raw `upstreams.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub ca_file: Option<String>,
    pub unhealthy_cooldown: Option<String>,
    pub pool_idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pool_max_idle: Option<u64>,
    pub client: Option<String>,
}

/// `upstreams.<name>.client`: which HTTP/1 client talks to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamClient {
    /// The own HTTP/1 codec, driven from the request's task (`upstream::h1`).
    #[default]
    Codec,
    /// hyper's HTTP/1 client connection with its connection task (the earlier path).
    Hyper,
}

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
    /// Which HTTP/1 client is used.
    pub client: UpstreamClient,
}

/// Validates `upstreams`, in name order.
pub(super) fn upstreams(
    raw: &BTreeMap<String, RawUpstream>,
) -> Result<Vec<Arc<UpstreamConfig>>, ConfigError> {
    raw.iter()
        .map(|(name, u)| upstream(name, u).map(Arc::new))
        .collect()
}

/// Validates `upstreams.<name>`.
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
        .map(|(i, a)| address(&format!("{key}.addresses[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let pool_max_idle = raw.pool_max_idle.unwrap_or(256);
    let k = |field: &str| format!("{key}.{field}");
    let secs = Duration::from_secs;
    Ok(UpstreamConfig {
        name: name.to_string(),
        addresses,
        connect_timeout: duration(&k("connect_timeout"), &raw.connect_timeout, secs(2))?,
        response_timeout: duration(&k("response_timeout"), &raw.response_timeout, secs(30))?,
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        unhealthy_cooldown: duration(&k("unhealthy_cooldown"), &raw.unhealthy_cooldown, secs(10))?,
        pool_idle_timeout: duration(&k("pool_idle_timeout"), &raw.pool_idle_timeout, secs(90))?,
        pool_max_idle: usize::try_from(pool_max_idle).unwrap_or(usize::MAX),
        client: client(&k("client"), raw.client.as_deref())?,
    })
}

/// `upstreams.<name>.client`: `codec` (the default) or `hyper`.
fn client(key: &str, value: Option<&str>) -> Result<UpstreamClient, ConfigError> {
    match value {
        None | Some("codec") => Ok(UpstreamClient::Codec),
        Some("hyper") => Ok(UpstreamClient::Hyper),
        Some(other) => Err(ConfigError::invalid(
            key,
            format!("\"{other}\" is not one of codec, hyper"),
        )),
    }
}

/// `upstreams.<name>.addresses[i]`: `http(s)://host[:port]`, nothing more.
fn address(key: &str, value: &str) -> Result<Uri, ConfigError> {
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
