//! Raw configuration as it appears in the YAML file (and environment overrides).
//!
//! Every struct rejects unknown keys so a typo is an error, not a silently ignored setting.
//! Nothing here is trusted: `validate.rs` turns these into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::auth::{RawAuth, RawAuthorize};
use super::env::lenient;
use super::issuer::RawIssuer;
use super::normalization::RawPathNormalization;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: BTreeMap<String, RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub server: RawServer,
    pub state_dir: Option<String>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub issuers: BTreeMap<String, RawIssuer>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub sessions: super::session::RawSessions,
}

/// `listeners.<name>`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<String>,
    pub tls: Option<RawTls>,
}

/// `listeners.<name>.tls`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub reload_interval: Option<String>,
}

/// `admin`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_connections: Option<u64>,
}

/// `log`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub access: Option<bool>,
}

/// `server`: connection limits and forwarding policy shared by all listeners.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub tls_handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_connections: Option<u64>,
    pub shutdown_grace: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub trust_forwarded_headers: Option<bool>,
    pub untrusted_forwarded_headers: Option<Vec<String>>,
    pub path_normalization: Option<RawPathNormalization>,
    pub upgraded_idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub workers: Option<u64>,
}

/// `upstreams.<name>`
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
}

/// `routes[i]`
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
}
