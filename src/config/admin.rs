//! `admin`: the listener for `/healthz`, `/readyz` and `/metrics`. Raw struct, typed settings
//! and their validation.
//!
//! Security notes: it binds to loopback (127.0.0.1:9090) unless told otherwise, and may not
//! share an address with a proxy listener.

use std::net::SocketAddr;

use serde::Deserialize;

use super::env::lenient;
use super::parse::socket_addr;
use super::{ConfigError, ListenerConfig};

/// Default `admin.max_connections`: probes and a few scrapers need a handful; the cap keeps a
/// flood of admin connections from taking file descriptors the proxy needs.
const DEFAULT_ADMIN_CONNECTIONS: u64 = 64;

/// Raw `admin`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_connections: Option<u64>,
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

/// Validates `admin` against the (validated) proxy `listeners`.
pub(super) fn admin(
    raw: Option<&RawAdmin>,
    listeners: &[ListenerConfig],
) -> Result<AdminConfig, ConfigError> {
    let default = RawAdmin::default();
    let raw = raw.unwrap_or(&default);
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_ADMIN_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError::invalid(
            "admin.max_connections",
            "must be at least 1",
        ));
    }
    let admin = AdminConfig {
        address: match &raw.address {
            Some(a) => socket_addr("admin.address", a)?,
            None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        },
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
    };
    // Port 0 asks the system for a free port each time: never a clash.
    if admin.address.port() != 0 && listeners.iter().any(|l| l.address == admin.address) {
        return Err(ConfigError::invalid(
            "admin.address",
            format!("{} is used by a listener", admin.address),
        ));
    }
    Ok(admin)
}
