//! `auth` (token limits, identity headers) and the authentication keys of a route
//! (`auth`, `issuer`, `authorize`, `forward_authorization`).

use std::collections::BTreeMap;

use http::HeaderName;
use serde::Deserialize;

use super::env::lenient;
use super::issuer::IssuerConfig;
use super::parse::header_patterns;
use super::{AuthMode, ConfigError};
use crate::authz::{ClaimOp, Match, Policy, Rule};
use crate::claims::ClaimPath;

/// Raw `auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub realm: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_token_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub token_cache_entries: Option<u64>,
    pub identity_headers: Option<BTreeMap<String, String>>,
    pub strip_headers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub token_cache_bytes: Option<u64>,
    pub callback_path: Option<String>,
    pub sign_out_path: Option<String>,
    pub backchannel_logout_path: Option<String>,
}

/// Raw `routes[i].authorize`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorize {
    #[serde(rename = "match")]
    pub mode: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub claims: Option<Vec<RawClaimRule>>,
}

/// Raw `routes[i].authorize.claims[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub claim: Option<String>,
    pub equals: Option<serde_json::Value>,
    pub contains: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub starts_with: Option<String>,
    pub ends_with: Option<String>,
    pub email_domain: Option<String>,
}

/// `auth`, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Longest bearer token accepted.
    pub max_token_bytes: usize,
    /// Deprecated count limit: when set alone, `token_cache_bytes` is this many KiB.
    pub token_cache_entries: u64,
    /// Claim (dotted path) to header.
    pub identity_headers: Vec<(ClaimPath, HeaderName)>,
    /// Headers removed from every request (names, or prefixes ending in `*`).
    pub strip_headers: Vec<String>,
    /// Most memory the verified-token cache holds, in bytes (estimated per entry).
    pub token_cache_bytes: u64,
}

/// Default claim-to-header map.
pub const DEFAULT_IDENTITY_HEADERS: [(&str, &str); 4] = [
    ("sub", "X-Auth-Request-User"),
    ("email", "X-Auth-Request-Email"),
    ("preferred_username", "X-Auth-Request-Preferred-Username"),
    ("groups", "X-Auth-Request-Groups"),
];

/// Default headers stripped from every request.
pub const DEFAULT_STRIP_HEADERS: [&str; 5] = [
    "X-Auth-Request-*",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
];

/// Validates `auth`.
pub fn auth(raw: &RawAuth) -> Result<AuthConfig, ConfigError> {
    let map: Vec<(String, String)> = match &raw.identity_headers {
        Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => DEFAULT_IDENTITY_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let identity_headers = map
        .into_iter()
        .map(|(claim, header)| {
            let key = format!("auth.identity_headers.{claim}");
            let path = ClaimPath::parse(&claim)
                .ok_or_else(|| ConfigError::invalid(&key, "is not a claim name or dotted path"))?;
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                ConfigError::invalid(&key, format!("\"{header}\" is not a header name"))
            })?;
            Ok((path, name))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let strip_headers = raw.strip_headers.clone().unwrap_or_else(|| {
        DEFAULT_STRIP_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    header_patterns("auth.strip_headers", &strip_headers)?;
    let max_token_bytes = raw.max_token_bytes.unwrap_or(8192);
    if max_token_bytes < 256 {
        return Err(ConfigError::invalid(
            "auth.max_token_bytes",
            "must be at least 256",
        ));
    }
    let token_cache_bytes = match (raw.token_cache_bytes, raw.token_cache_entries) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "auth.token_cache_entries",
                "set auth.token_cache_bytes or auth.token_cache_entries, not both",
            ));
        }
        (Some(b), None) => b,
        // The old count limit, read as "this many typical tokens" (about 1 KiB each).
        (None, Some(n)) => n.saturating_mul(1024),
        (None, None) => DEFAULT_TOKEN_CACHE_BYTES,
    };
    if token_cache_bytes < 64 * 1024 {
        return Err(ConfigError::invalid(
            "auth.token_cache_bytes",
            "must be at least 65536",
        ));
    }
    Ok(AuthConfig {
        realm: raw
            .realm
            .clone()
            .unwrap_or_else(|| "portcullis".to_string()),
        max_token_bytes: usize::try_from(max_token_bytes).unwrap_or(usize::MAX),
        token_cache_entries: raw.token_cache_entries.unwrap_or(100_000),
        identity_headers,
        strip_headers,
        token_cache_bytes,
    })
}

/// `auth.token_cache_bytes` when neither it nor `auth.token_cache_entries` is set: 100 MiB,
/// about 100,000 typical tokens.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 100 * 1024 * 1024;

/// A route's authentication settings, validated.
pub struct RouteAuth {
    pub mode: AuthMode,
    pub issuer: Option<usize>,
    pub policy: Policy,
}

/// Validates a route's `auth`, `issuer` and `authorize`.
pub fn route_auth(
    key: &str,
    mode: Option<&str>,
    issuer: Option<&str>,
    authorize: Option<&RawAuthorize>,
    issuers: &[std::sync::Arc<IssuerConfig>],
) -> Result<RouteAuth, ConfigError> {
    let mode = match mode {
        None | Some("none") => AuthMode::None,
        Some("bearer") => AuthMode::Bearer,
        Some("session") => AuthMode::Session,
        Some("either") => AuthMode::Either,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.auth"),
                format!("\"{other}\" is not one of bearer, session, either, none"),
            ));
        }
    };
    let issuer = match (mode, issuer) {
        (_, Some(name)) => Some(issuers.iter().position(|i| i.name == name).ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.issuer"),
                format!("no issuer named \"{name}\""),
            )
        })?),
        (AuthMode::Bearer, None) if issuers.is_empty() => {
            return Err(ConfigError::invalid(
                format!("{key}.auth"),
                "bearer needs at least one entry in issuers",
            ));
        }
        // One issuer: it is the route's. Several: any configured issuer is accepted.
        (AuthMode::Bearer, None) if issuers.len() == 1 => Some(0),
        (AuthMode::Session | AuthMode::Either, None) => match issuers {
            [_] => Some(0),
            [] => {
                return Err(ConfigError::invalid(
                    format!("{key}.auth"),
                    "session needs an entry in issuers (with a client_id)",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    format!("{key}.issuer"),
                    "required with auth: session or either when several issuers are configured",
                ));
            }
        },
        _ => None,
    };
    if matches!(mode, AuthMode::Session | AuthMode::Either)
        && let Some(i) = issuer.and_then(|i| issuers.get(i))
        && i.client_id.is_none()
    {
        return Err(ConfigError::invalid(
            format!("issuers.{}.client_id", i.name),
            format!("required: {key} signs browsers in through this issuer"),
        ));
    }
    let policy = match authorize {
        None => Policy::default(),
        Some(a) => {
            if mode == AuthMode::None {
                return Err(ConfigError::invalid(
                    format!("{key}.authorize"),
                    "needs auth: bearer, session or either",
                ));
            }
            policy(&format!("{key}.authorize"), a)?
        }
    };
    Ok(RouteAuth {
        mode,
        issuer,
        policy,
    })
}

fn policy(key: &str, a: &RawAuthorize) -> Result<Policy, ConfigError> {
    let mode = match a.mode.as_deref() {
        None | Some("all") => Match::All,
        Some("any") => Match::Any,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{key}.match"),
                format!("\"{other}\" is not all or any"),
            ));
        }
    };
    let mut rules = Vec::new();
    let list = |name: &str, v: &Option<Vec<String>>| -> Result<Option<Vec<String>>, ConfigError> {
        match v {
            None => Ok(None),
            Some(l) if l.is_empty() || l.iter().any(|s| s.is_empty()) => Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "must list at least one non-empty value",
            )),
            Some(l) => Ok(Some(l.clone())),
        }
    };
    if let Some(s) = list("scopes", &a.scopes)? {
        rules.push(Rule::Scopes(s));
    }
    if let Some(g) = list("groups", &a.groups)? {
        rules.push(Rule::Groups(g));
    }
    if let Some(r) = list("roles", &a.roles)? {
        rules.push(Rule::Roles(r));
    }
    for (j, c) in a.claims.iter().flatten().enumerate() {
        let ck = format!("{key}.claims[{j}]");
        let path = c
            .claim
            .as_deref()
            .and_then(ClaimPath::parse)
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{ck}.claim"),
                    "is required (a claim name or dotted path)",
                )
            })?;
        let op = claim_op(&ck, c)?;
        rules.push(Rule::Claim(path, op));
    }
    Ok(Policy { mode, rules })
}

/// The one operator of `routes[i].authorize.claims[j]` (meanings in `crate::authz`).
fn claim_op(ck: &str, c: &RawClaimRule) -> Result<ClaimOp, ConfigError> {
    let given = [
        c.equals.is_some(),
        c.contains.is_some(),
        c.one_of.is_some(),
        c.starts_with.is_some(),
        c.ends_with.is_some(),
        c.email_domain.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::invalid(
            ck,
            "needs exactly one of equals, one_of, contains, starts_with, ends_with, email_domain",
        ));
    }
    let text = |op: &str, v: &str| {
        if v.is_empty() {
            Err(ConfigError::invalid(
                format!("{ck}.{op}"),
                "must not be empty (it would match every string)",
            ))
        } else {
            Ok(v.to_string())
        }
    };
    if let Some(v) = &c.equals {
        return Ok(ClaimOp::Equals(v.clone()));
    }
    if let Some(v) = &c.one_of {
        if v.is_empty() {
            return Err(ConfigError::invalid(
                format!("{ck}.one_of"),
                "must list at least one value",
            ));
        }
        return Ok(ClaimOp::OneOf(v.clone()));
    }
    if let Some(v) = &c.contains {
        if matches!(
            v,
            serde_json::Value::Array(_) | serde_json::Value::Object(_) | serde_json::Value::Null
        ) {
            return Err(ConfigError::invalid(
                format!("{ck}.contains"),
                "must be one string, number or boolean (an array claim must have an element equal to it; for several values use one rule each, or one_of for a single-valued claim)",
            ));
        }
        return Ok(ClaimOp::Contains(v.clone()));
    }
    if let Some(v) = &c.starts_with {
        return Ok(ClaimOp::StartsWith(text("starts_with", v)?));
    }
    if let Some(v) = &c.ends_with {
        return Ok(ClaimOp::EndsWith(text("ends_with", v)?));
    }
    let d = c.email_domain.as_deref().unwrap_or_default();
    let d = text("email_domain", d)?;
    if d.contains('@') || d.starts_with('.') || d.ends_with('.') || d.contains(char::is_whitespace)
    {
        return Err(ConfigError::invalid(
            format!("{ck}.email_domain"),
            format!("\"{d}\" is not a domain (e.g. corp.example.com, without @)"),
        ));
    }
    Ok(ClaimOp::EmailDomain(d.to_ascii_lowercase()))
}
