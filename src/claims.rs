//! Who a verified caller is ([`Identity`]), how claims are addressed ([`ClaimPath`]), and
//! how an identity is built from verified claims ([`Identity::from_claims`]).
//!
//! These are plain data shared by configuration (claim paths in rules and header maps),
//! authorization (rules over the identity) and authentication (which verifies tokens and
//! sessions and builds identities with the functions here), so that none of those modules
//! has to depend on another for them.
//!
//! Security notes: an `Identity` exists only for a verified token or session; its claims are
//! never logged. An identity (and a session) keeps only the top-level claims something reads
//! ([`top_level_names`], [`session_claims`]): less to hold per cached token, nothing kept
//! that no rule or header was configured to see.

use std::sync::{Arc, Mutex, OnceLock};

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
    /// `exp` (seconds since the epoch), kept even when the claim itself is not.
    pub expires: Option<u64>,
    /// The identity headers built from these claims, kept for the next request with the
    /// same identity (a cached token or session): see
    /// `upstream::headers::identity::IdentityHeaders`.
    pub headers: HeaderCache,
    /// The claims as a CEL map, converted on the first CEL rule that reads them and kept
    /// with the identity (a cached token or session converts nothing again).
    pub cel: CelClaims,
}

/// A claim-to-header mapping (`auth.identity_headers` and the headers of
/// `auth.header_profile`), shared by everything built from one configuration.
pub type HeaderMapping = Arc<[MappedHeader]>;

/// One identity header: the claim it is built from, its name, and a fixed text sent before
/// the value (`accounts.google.com:` for Google IAP's user headers; usually empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedHeader {
    /// Where the value is read.
    pub claim: ClaimPath,
    /// The header it is sent as.
    pub header: HeaderName,
    /// Sent before the encoded value.
    pub prefix: &'static str,
}

/// The claims as a CEL value (`authz::cel`), set once.
#[derive(Default)]
pub struct CelClaims(OnceLock<Box<dyn cel::common::value::Val>>);

/// Identity headers ready to send, in the mapping's order.
pub type ReadyHeaders = Box<[(HeaderName, HeaderValue)]>;

/// Where an issuer's identity fields are read from: its `scope_claims` (first found wins),
/// `groups_claim` and `roles_claim`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimSources<'a> {
    /// Where scopes are (a space-separated string or an array).
    pub scopes: &'a [ClaimPath],
    /// Where group names are.
    pub groups: &'a ClaimPath,
    /// Where role names are.
    pub roles: &'a ClaimPath,
}

/// What is sent upstream built from one identity, kept with it for its next requests: the
/// identity headers (set once, with the mapping they were built for) and its signed
/// assertions (`crate::assertion`), at most [`MAX_KEPT_ASSERTIONS`] audiences.
#[derive(Default)]
pub struct HeaderCache {
    headers: OnceLock<(HeaderMapping, ReadyHeaders)>,
    assertions: Mutex<Vec<KeptAssertion>>,
}

/// Most signed assertions (one per audience and signer) kept per identity; beyond it the
/// oldest gives way. Bounds the memory of a cached token or session identity.
pub const MAX_KEPT_ASSERTIONS: usize = 4;

/// A signed assertion kept with its identity.
#[derive(Clone)]
pub struct KeptAssertion {
    /// The signer it was made by (`assertion::Assertions`, one per configuration).
    pub signer: u64,
    /// Its `aud`.
    pub audience: Arc<str>,
    /// The header value (the compact JWT).
    pub value: HeaderValue,
    /// When it is signed again (seconds since the epoch): half its lifetime.
    pub renew_at: u64,
}

// === impl HeaderCache ===

impl HeaderCache {
    /// The headers built for `mapping` (the same mapping or an equal one), if any.
    pub fn get(&self, mapping: &HeaderMapping) -> Option<&[(HeaderName, HeaderValue)]> {
        let (built_for, headers) = self.headers.get()?;
        (Arc::ptr_eq(built_for, mapping) || **built_for == **mapping).then_some(&**headers)
    }

    /// Keeps `headers`, built for `mapping`, unless headers were kept already.
    pub fn set(&self, mapping: &HeaderMapping, headers: ReadyHeaders) {
        let _ = self.headers.set((mapping.clone(), headers));
    }

    /// The kept assertion of `signer` for `audience`, unless it is due to be signed again
    /// at `now` (seconds since the epoch).
    pub fn assertion(&self, signer: u64, audience: &str, now: u64) -> Option<HeaderValue> {
        let kept = self.assertions.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .find(|k| k.signer == signer && &*k.audience == audience && now < k.renew_at)
            .map(|k| k.value.clone())
    }

    /// Keeps `new`, replacing the one of its signer and audience (or, with
    /// [`MAX_KEPT_ASSERTIONS`] kept, the oldest).
    pub fn keep_assertion(&self, new: KeptAssertion) {
        let mut kept = self.assertions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kept
            .iter_mut()
            .find(|k| k.signer == new.signer && k.audience == new.audience)
        {
            *k = new;
            return;
        }
        if kept.len() >= MAX_KEPT_ASSERTIONS {
            kept.remove(0);
        }
        kept.push(new);
    }
}

// === impl Identity ===

impl Identity {
    /// The identity of verified `claims` of the issuer named `issuer`: scopes, groups and
    /// roles read from `sources`, `sub` as the subject, and of the claims only the top-level
    /// ones named in `kept` (see [`top_level_names`]).
    pub fn from_claims(
        issuer: &Arc<str>,
        mut claims: Map<String, Value>,
        sources: ClaimSources<'_>,
        kept: &[String],
    ) -> Self {
        let scopes = sources
            .scopes
            .iter()
            .find_map(|p| p.get(&claims))
            .map(|v| strings(Some(v), true))
            .unwrap_or_default();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let groups = strings(sources.groups.get(&claims), false);
        let roles = strings(sources.roles.get(&claims), false);
        let expires = claims.get("exp").and_then(Value::as_u64);
        claims.retain(|k, _| kept.iter().any(|c| c == k));
        Self {
            issuer: issuer.clone(),
            subject,
            scopes,
            groups,
            roles,
            expires,
            claims,
            headers: Default::default(),
            cel: Default::default(),
        }
    }
}

/// The top-level claim names `paths` start with, each once, in first-seen order: what an
/// identity keeps of its claims for the identity headers and claim rules that read them.
pub fn top_level_names<'a>(paths: impl IntoIterator<Item = &'a ClaimPath>) -> Arc<[String]> {
    let mut kept: Vec<String> = Vec::new();
    for first in paths.into_iter().filter_map(|p| p.0.first()) {
        if !kept.contains(first) {
            kept.push(first.clone());
        }
    }
    Arc::from(kept)
}

/// The claims a session keeps from an ID token: `sub`, the top-level claims `sources` read
/// (groups, roles, scopes) and those named in `kept` (identity headers, claim rules).
pub fn session_claims(
    mut claims: Map<String, Value>,
    sources: ClaimSources<'_>,
    kept: &[String],
) -> Map<String, Value> {
    let firsts: Vec<&str> = std::iter::once(sources.groups)
        .chain(std::iter::once(sources.roles))
        .chain(sources.scopes.iter())
        .filter_map(|p| p.0.first().map(String::as_str))
        .collect();
    claims.retain(|k, _| k == "sub" || firsts.contains(&k.as_str()) || kept.iter().any(|c| c == k));
    claims
}

/// Strings from a claim that is a string (split on spaces) or an array of strings.
fn strings(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

// === impl CelClaims ===

impl CelClaims {
    /// The kept value, or `init`'s, kept.
    pub fn get_or_init(
        &self,
        init: impl FnOnce() -> Box<dyn cel::common::value::Val>,
    ) -> &dyn cel::common::value::Val {
        &**self.0.get_or_init(init)
    }
}

impl std::fmt::Debug for CelClaims {
    // Values are claims: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelClaims(..)")
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).unwrap_or(ClaimPath(vec![]))
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    struct Paths {
        scopes: Vec<ClaimPath>,
        groups: ClaimPath,
        roles: ClaimPath,
    }

    impl Paths {
        fn new() -> Self {
            Self {
                scopes: vec![path("scope"), path("scp")],
                groups: path("groups"),
                roles: path("realm_access.roles"),
            }
        }

        fn sources(&self) -> ClaimSources<'_> {
            ClaimSources {
                scopes: &self.scopes,
                groups: &self.groups,
                roles: &self.roles,
            }
        }
    }

    #[test]
    fn identity_fields_come_from_their_sources() {
        let p = Paths::new();
        let claims = map(json!({
            "sub": "alice",
            "scope": "read  write",
            "scp": ["ignored"],
            "groups": ["staff", 7, "dev"],
            "realm_access": {"roles": "admin"},
            "email": "a@x",
            "secret_stuff": "s",
        }));
        let kept = ["email".to_string()];
        let id = Identity::from_claims(&Arc::from("corp"), claims, p.sources(), &kept);
        assert_eq!(&*id.issuer, "corp");
        assert_eq!(id.subject.as_deref(), Some("alice"));
        // The first scope source found wins; a string is split on spaces.
        assert_eq!(id.scopes, ["read", "write"]);
        // Arrays keep their strings only; a single string is one entry, never split.
        assert_eq!(id.groups, ["staff", "dev"]);
        assert_eq!(id.roles, ["admin"]);
        // Only the kept top-level claims stay.
        assert_eq!(id.claims, map(json!({"email": "a@x"})));
    }

    #[test]
    fn missing_or_odd_sources_give_empty_fields() {
        let p = Paths::new();
        let claims = map(json!({"sub": 42, "scp": ["a", "b c"], "groups": {"x": 1}}));
        let id = Identity::from_claims(&Arc::from("corp"), claims, p.sources(), &[]);
        assert_eq!(id.subject, None);
        // An array of scopes is taken as is, not split.
        assert_eq!(id.scopes, ["a", "b c"]);
        assert!(id.groups.is_empty() && id.roles.is_empty() && id.claims.is_empty());
    }

    #[test]
    fn top_level_names_are_each_first_segment_once() {
        let paths = [
            path("email"),
            path("org.id"),
            path("org.name"),
            path("email"),
        ];
        assert_eq!(&*top_level_names(&paths), ["email", "org"]);
        assert!(top_level_names(&[]).is_empty());
    }

    #[test]
    fn a_session_keeps_sub_its_sources_and_the_kept_claims() {
        let p = Paths::new();
        let claims = map(json!({
            "sub": "alice", "scope": "a", "scp": "b", "groups": [], "realm_access": {},
            "email": "a@x", "nonce": "n", "at_hash": "h",
        }));
        let kept = session_claims(claims, p.sources(), &["email".to_string()]);
        let mut names: Vec<&str> = kept.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["email", "groups", "realm_access", "scope", "scp", "sub"]
        );
    }
}
