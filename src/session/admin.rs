//! What operators see of sessions and how replicas hear that one ended: the listing
//! ([`SessionSummary`], [`ListFilter`], [`Listing`]) and the announcement ([`Ended`], with
//! its [`Cause`]) that a Redis store publishes to the other replicas ([`Notice`]).
//!
//! Security notes: a summary names a session by the hash of its id ([`SessionId::hashed`]),
//! never the id itself (a bearer secret), and carries no token or claim beyond `sub` and
//! `sid`. An announcement carries hashes only, so a message read off Redis names no session
//! in the clear.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Session, SessionId};

/// Most hashes in one announcement; more are sent as several.
pub const MAX_HASHES_PER_NOTICE: usize = 256;

/// One session as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The hash of its id ([`SessionId::hashed`]): what a revoke by id takes.
    pub id: String,
    /// The `sub` claim.
    pub sub: String,
    /// The ID token's `sid`, when it had one.
    pub sid: Option<String>,
    /// The issuer's name in the configuration.
    pub issuer: String,
    /// Sign-in (Unix seconds).
    pub created: u64,
    /// Last use, as written back (at most once a minute; Unix seconds).
    pub last_seen: u64,
    /// Absolute end (Unix seconds); the idle timeout may end it earlier.
    pub expires: u64,
}

/// Which sessions a listing wants; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this issuer's (a name in `issuers`).
    pub issuer: Option<String>,
    /// Only this subject's.
    pub sub: Option<String>,
    /// Only sessions with this `sid`.
    pub sid: Option<String>,
}

/// A bounded listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The sessions found, at most the limit asked for.
    pub sessions: Vec<SessionSummary>,
    /// More sessions may match than were returned (the limit, or the store's scan bound).
    pub truncated: bool,
}

/// Why sessions ended (the tunnels' `reason` label on every replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Signed out.
    SignOut,
    /// A back-channel logout.
    Backchannel,
    /// An operator revoked it (admin API).
    Revoked,
    /// The IdP refused its refresh.
    RefreshRefused,
    /// A new sign-in in the same browser replaced it.
    Replaced,
}

/// Sessions that ended on some replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Why.
    #[serde(rename = "r")]
    pub cause: Cause,
    /// The hashes of their ids.
    #[serde(rename = "h")]
    pub hashes: Vec<String>,
}

/// What a replica hears from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Sessions ended elsewhere (their cached copies here are already dropped).
    Ended(Ended),
    /// The channel was down for a while and announcements may have been missed: the cache
    /// was cleared, and sessions with tunnels here should be looked up again.
    Resync,
}

// === impl SessionSummary ===

impl SessionSummary {
    /// The summary of a stored session.
    pub fn of(s: &Session) -> Self {
        Self {
            id: s.id.hashed(),
            sub: s.subject.clone(),
            sid: s.sid.clone(),
            issuer: s.issuer.clone(),
            created: unix(s.created_at),
            last_seen: unix(s.last_seen),
            expires: unix(s.expires_at),
        }
    }
}

// === impl ListFilter ===

impl ListFilter {
    /// Whether `s` matches.
    pub fn matches(&self, s: &Session) -> bool {
        self.issuer.as_deref().is_none_or(|i| i == s.issuer)
            && self.sub.as_deref().is_none_or(|v| v == s.subject)
            && self
                .sid
                .as_deref()
                .is_none_or(|v| s.sid.as_deref() == Some(v))
    }
}

// === impl Cause ===

impl Cause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::SignOut => "sign_out",
            Cause::Backchannel => "backchannel",
            Cause::Revoked => "revoked",
            Cause::RefreshRefused => "refresh_refused",
            Cause::Replaced => "replaced",
        }
    }
}

// === impl Ended ===

impl Ended {
    /// `ids` ended for `cause`.
    pub fn ids<'a>(cause: Cause, ids: impl IntoIterator<Item = &'a SessionId>) -> Self {
        Self {
            cause,
            hashes: ids.into_iter().map(SessionId::hashed).collect(),
        }
    }
}

/// Unix seconds of `t` (0 before the epoch).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
