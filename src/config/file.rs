//! The whole file as it appears in YAML (and environment overrides): one field per top-level
//! section, each section's raw struct in the file that validates it (`listeners.rs`,
//! `admin.rs`, `log.rs`, `server/`, `upstreams.rs`, `routes/`, `issuer.rs`, `auth.rs`,
//! `session.rs`).
//!
//! Every struct rejects unknown keys so a typo is an error, not a silently ignored setting.
//! Nothing here is trusted: `TryFrom<RawConfig> for Config` (config/mod.rs) turns these into
//! typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::admin::RawAdmin;
use super::auth::RawAuth;
use super::external_auth::RawExternalAuth;
use super::issuer::RawIssuer;
use super::listeners::RawListener;
use super::log::RawLog;
use super::routes::RawRoute;
use super::server::RawServer;
use super::session::RawSessions;
use super::upstreams::RawUpstream;

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
    pub sessions: RawSessions,
    #[serde(default)]
    pub external_auth: RawExternalAuth,
}
