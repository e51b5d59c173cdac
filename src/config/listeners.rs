//! `listeners.<name>` (and its `tls`): raw structs, typed settings and their validation.
//!
//! Two listeners may not bind the same address (port 0 aside); the admin listener's own
//! check against these addresses is in `admin.rs`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::parse::{duration, required, socket_addr};

/// Raw `listeners.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<String>,
    pub tls: Option<RawTls>,
}

/// Raw `listeners.<name>.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub reload_interval: Option<String>,
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

/// Validates `listeners`: at least one, each valid, no address bound twice.
pub(super) fn listeners(
    raw: &BTreeMap<String, RawListener>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let listeners = raw
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
    Ok(listeners)
}

/// Validates `listeners.<name>`.
fn listener(name: &str, raw: &RawListener) -> Result<ListenerConfig, ConfigError> {
    let key = format!("listeners.{name}");
    let address = socket_addr(
        &format!("{key}.address"),
        required(&format!("{key}.address"), &raw.address)?,
    )?;
    let tls = match &raw.tls {
        None => None,
        Some(t) => Some(tls(&format!("{key}.tls"), t)?),
    };
    Ok(ListenerConfig {
        name: name.to_string(),
        address,
        tls,
    })
}

/// Validates `listeners.<name>.tls` (`key` is its path).
fn tls(key: &str, raw: &RawTls) -> Result<TlsConfig, ConfigError> {
    Ok(TlsConfig {
        cert: PathBuf::from(required(&format!("{key}.cert"), &raw.cert)?),
        key: PathBuf::from(required(&format!("{key}.key"), &raw.key)?),
        reload_interval: duration(
            &format!("{key}.reload_interval"),
            &raw.reload_interval,
            Duration::from_secs(10),
        )?,
    })
}
