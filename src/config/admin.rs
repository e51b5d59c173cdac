//! `admin`: the listener for `/healthz`, `/readyz` and `/metrics`, and the session
//! administration endpoints when `admin.token` (or `admin.token_file`) is set. Raw struct,
//! typed settings and their validation.
//!
//! Security notes: it binds to loopback (127.0.0.1:9090) unless told otherwise, and may not
//! share an address with a proxy listener. The token is a [`Secret`] (never printed); at
//! least [`MIN_TOKEN_LEN`] bytes, so it cannot be guessed through the listener.

use std::net::SocketAddr;

use serde::Deserialize;

use super::env::lenient;
use super::parse::socket_addr;
use super::{ConfigError, ListenerConfig};
use crate::secret::Secret;

/// Shortest `admin.token`, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

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
    pub token: Option<Secret>,
    pub token_file: Option<String>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where it binds.
    pub address: SocketAddr,
    /// Most admin connections open at once (its own cap: a flood of proxy connections
    /// cannot starve health checks and scrapes, nor the other way round).
    pub max_connections: usize,
    /// The bearer token of the session administration endpoints (`/sessions`); without it
    /// they are absent (404).
    pub token: Option<Secret>,
}

// === impl AdminConfig ===

impl AdminConfig {
    /// What `check-config` adds to the admin line (never the token).
    pub fn sessions_note(&self) -> &'static str {
        if self.token.is_some() {
            " (session administration on: admin token set)"
        } else {
            ""
        }
    }
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
        token: token(raw)?,
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

/// `admin.token`, or the contents of `admin.token_file` (without a trailing newline).
fn token(raw: &RawAdmin) -> Result<Option<Secret>, ConfigError> {
    let token = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "admin.token_file",
                "set admin.token or admin.token_file, not both",
            ));
        }
        (Some(t), None) => t.clone(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(path).map_err(|e| {
                ConfigError::invalid("admin.token_file", format!("cannot read {path}: {e}"))
            })?;
            while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                bytes.pop();
            }
            Secret::new(bytes)
        }
        (None, None) => return Ok(None),
    };
    let key = if raw.token.is_some() {
        "admin.token"
    } else {
        "admin.token_file"
    };
    if token.len() < MIN_TOKEN_LEN {
        return Err(ConfigError::invalid(
            key,
            format!("the token must be at least {MIN_TOKEN_LEN} bytes"),
        ));
    }
    if token.expose().iter().any(|b| !b.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            key,
            "the token must be printable ASCII without spaces (it is sent in a header)",
        ));
    }
    Ok(Some(token))
}
