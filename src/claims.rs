//! Who a verified caller is ([`Identity`]) and how claims are addressed ([`ClaimPath`]).
//!
//! These are plain data shared by configuration (claim paths in rules and header maps),
//! authorization (rules over the identity) and authentication (which builds identities), so
//! that none of those modules has to depend on another for them.
//!
//! Security notes: an `Identity` exists only for a verified token or session; its claims are
//! never logged.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// A dotted path into the claims (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<String>);

/// Who a verified token says the caller is.
#[derive(Debug)]
pub struct Identity {
    /// The issuer's name in the config.
    pub issuer: Arc<str>,
    /// `sub`
    pub subject: Option<String>,
    /// All claims.
    pub claims: Map<String, Value>,
    /// Scopes (from `scope` or `scp`).
    pub scopes: Vec<String>,
    /// Groups (from the issuer's `groups_claim`).
    pub groups: Vec<String>,
    /// Roles (from the issuer's `roles_claim`).
    pub roles: Vec<String>,
    /// The identity headers built from these claims, kept for the next request with the
    /// same identity (a cached token or session): see `authn::identity::IdentityHeaders`.
    pub headers: HeaderCache,
}

/// A claim-to-header mapping (`auth.identity_headers`), shared by everything built from one
/// configuration.
pub type HeaderMapping = Arc<[(ClaimPath, HeaderName)]>;

/// Identity headers ready to send, in the mapping's order.
pub type ReadyHeaders = Box<[(HeaderName, HeaderValue)]>;

/// Identity headers ready to send, with the mapping they were built for; set once.
#[derive(Default)]
pub struct HeaderCache(OnceLock<(HeaderMapping, ReadyHeaders)>);

// === impl HeaderCache ===

impl HeaderCache {
    /// The headers built for `mapping` (the same mapping or an equal one), if any.
    pub fn get(&self, mapping: &HeaderMapping) -> Option<&[(HeaderName, HeaderValue)]> {
        let (built_for, headers) = self.0.get()?;
        (Arc::ptr_eq(built_for, mapping) || **built_for == **mapping).then_some(&**headers)
    }

    /// Keeps `headers`, built for `mapping`, unless headers were kept already.
    pub fn set(&self, mapping: &HeaderMapping, headers: ReadyHeaders) {
        let _ = self.0.set((mapping.clone(), headers));
    }
}

impl std::fmt::Debug for HeaderCache {
    // Values are claims: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderCache(..)")
    }
}

// === impl ClaimPath ===

impl ClaimPath {
    /// Parses `a.b.c`.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        (!parts.iter().any(String::is_empty)).then_some(Self(parts))
    }

    /// The value at this path.
    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut v = claims.get(first)?;
        for p in rest {
            v = v.as_object()?.get(p)?;
        }
        Some(v)
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}
