//! `auth`: token limits, identity headers, the browser-flow paths (`callback_path`,
//! `sign_out_path`, `backchannel_logout_path`) and the hosts a browser may be sent back to
//! (`allowed_redirect_domains`). Raw struct, typed settings and validation. A
//! route's own `auth`, `issuer` and `authorize` are in `routes/auth.rs`.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::Deserialize;

use super::ConfigError;
use super::assertion::{AssertionConfig, HeaderProfile, ProfileHeaders, RawAssertion};
use super::env::lenient;
use super::parse::header_patterns;
use crate::authz::cel::Limits;
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
    pub allowed_redirect_domains: Option<Vec<String>>,
    pub header_profile: Option<String>,
    pub assertion: Option<RawAssertion>,
    pub policy: Option<RawPolicyLimits>,
}

/// Raw `auth.policy`: limits of routes' CEL expressions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyLimits {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_expression_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_expression_nodes: Option<u64>,
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
    /// Hosts that absolute return targets may name (empty: same-origin paths only).
    pub allowed_redirect_domains: Vec<RedirectDomain>,
    /// `header_profile`: whose header names and value shapes are sent.
    pub header_profile: HeaderProfile,
    /// The profile's claim headers, access-token headers and owned names.
    pub profile: ProfileHeaders,
    /// The signed identity assertion (`auth.assertion`), when configured.
    pub assertion: Option<AssertionConfig>,
    /// Size limits of `allow_if` / `deny_if` expressions (`auth.policy`).
    pub policy: Limits,
}

/// One entry of `auth.allowed_redirect_domains`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectDomain {
    /// `app.example.com`: that host only (also how an IPv4 address is listed).
    Exact(String),
    /// `.example.com`: any host under `example.com` (not `example.com` itself); the value
    /// keeps its leading dot.
    Suffix(String),
}

// === impl RedirectDomain ===

impl RedirectDomain {
    /// Whether `host` (lower-case, no trailing dot, no port) is this entry. An IPv4 address
    /// matches only an exact entry.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Suffix(s) => {
                !ends_in_number(host) && host.len() > s.len() && host.ends_with(s.as_str())
            }
        }
    }
}

/// Whether a host name's last label is a number (decimal, or `0x` hex): browsers parse such
/// a host as an IPv4 address (WHATWG URL "ends in a number"), in any of its spellings.
pub fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or_default();
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `host` is a lower-case ASCII host name: dot-separated labels of letters, digits
/// and hyphens (1 to 63 bytes, no hyphen first or last), at most 253 bytes, no trailing dot.
pub fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether `host` is an IPv4 address in its one canonical spelling (`10.0.0.1`).
fn is_canonical_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.to_string() == host)
}

/// Validates `auth.allowed_redirect_domains`.
fn redirect_domains(raw: Option<&[String]>) -> Result<Vec<RedirectDomain>, ConfigError> {
    let mut out = Vec::new();
    for (i, entry) in raw.unwrap_or_default().iter().enumerate() {
        let key = format!("auth.allowed_redirect_domains[{i}]");
        let (suffix, host) = match entry.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, entry.as_str()),
        };
        if !is_host_name(host) {
            return Err(ConfigError::invalid(
                &key,
                format!(
                    "\"{entry}\" must be a lower-case host name (app.example.com) or a \
                     suffix (.example.com): letters, digits, hyphens and dots only, no \
                     scheme, port, path or *"
                ),
            ));
        }
        if ends_in_number(host) && (suffix || !is_canonical_ipv4(host)) {
            return Err(ConfigError::invalid(
                &key,
                format!(
                    "\"{entry}\" is an IP address: list it exactly, in dotted-decimal form \
                     (10.0.0.1), never as a suffix"
                ),
            ));
        }
        let domain = if suffix {
            RedirectDomain::Suffix(entry.clone())
        } else {
            RedirectDomain::Exact(entry.clone())
        };
        if !out.contains(&domain) {
            out.push(domain);
        }
    }
    Ok(out)
}

/// `auth.callback_path`, `auth.sign_out_path`, `auth.backchannel_logout_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPaths {
    /// Where the IdP redirects back with the code.
    pub callback: String,
    /// Where a browser signs out.
    pub sign_out: String,
    /// Where the IdP posts logout tokens.
    pub backchannel_logout: String,
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
    let (header_profile, profile, assertion) = super::assertion::profile_and_assertion(
        raw.header_profile.as_deref(),
        raw.assertion.as_ref(),
    )?;
    let map: Vec<(String, String)> = match &raw.identity_headers {
        Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        // Another gateway's profile sends its own headers instead of the defaults.
        None if header_profile != HeaderProfile::Portcullis => Vec::new(),
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
        allowed_redirect_domains: redirect_domains(raw.allowed_redirect_domains.as_deref())?,
        header_profile,
        profile,
        assertion,
        policy: policy_limits(raw.policy.as_ref())?,
    })
}

/// `auth.policy`: expression limits, each at least 1 and at most 64 KiB / 65536 nodes (the
/// parser's nesting limit bounds the depth on its own).
fn policy_limits(raw: Option<&RawPolicyLimits>) -> Result<Limits, ConfigError> {
    let default = Limits::default();
    let one = |key: &str, v: Option<u64>, default: usize| match v {
        None => Ok(default),
        Some(n) if (1..=65_536).contains(&n) => Ok(usize::try_from(n).unwrap_or(default)),
        Some(_) => Err(ConfigError::invalid(key, "must be between 1 and 65536")),
    };
    Ok(Limits {
        max_bytes: one(
            "auth.policy.max_expression_bytes",
            raw.and_then(|r| r.max_expression_bytes),
            default.max_bytes,
        )?,
        max_nodes: one(
            "auth.policy.max_expression_nodes",
            raw.and_then(|r| r.max_expression_nodes),
            default.max_nodes,
        )?,
    })
}

// === impl AuthConfig ===

impl AuthConfig {
    /// Every claim header sent: `identity_headers`, then the profile's.
    pub fn mapped_headers(&self) -> Vec<crate::claims::MappedHeader> {
        self.identity_headers
            .iter()
            .map(|(claim, header)| crate::claims::MappedHeader {
                claim: claim.clone(),
                header: header.clone(),
                prefix: "",
            })
            .chain(self.profile.mapped.iter().cloned())
            .collect()
    }
}

/// `auth.token_cache_bytes` when neither it nor `auth.token_cache_entries` is set: 100 MiB,
/// about 100,000 typical tokens.
pub const DEFAULT_TOKEN_CACHE_BYTES: u64 = 100 * 1024 * 1024;

/// Validates `auth.callback_path`, `auth.sign_out_path` and `auth.backchannel_logout_path`
/// (part of `sessions`, which calls this last).
pub(super) fn paths(auth: &RawAuth) -> Result<AuthPaths, ConfigError> {
    let one = |key: &str, value: &Option<String>, default: &str| -> Result<String, ConfigError> {
        let v = value
            .as_deref()
            .map(str::trim)
            .unwrap_or(default)
            .to_string();
        if !v.starts_with('/') || v.starts_with("//") {
            return Err(ConfigError::invalid(
                key,
                format!("\"{v}\" must be a path starting with /"),
            ));
        }
        if v.contains(['?', '#']) || v.split('/').any(|s| s == "." || s == "..") {
            return Err(ConfigError::invalid(
                key,
                format!("\"{v}\" must be a plain path (no query, fragment or dot segments)"),
            ));
        }
        Ok(v)
    };
    let p = AuthPaths {
        callback: one(
            "auth.callback_path",
            &auth.callback_path,
            "/oauth2/callback",
        )?,
        sign_out: one(
            "auth.sign_out_path",
            &auth.sign_out_path,
            "/oauth2/sign_out",
        )?,
        backchannel_logout: one(
            "auth.backchannel_logout_path",
            &auth.backchannel_logout_path,
            "/oauth2/backchannel_logout",
        )?,
    };
    if p.sign_out == p.callback {
        return Err(ConfigError::invalid(
            "auth.sign_out_path",
            "is the same as auth.callback_path",
        ));
    }
    if p.backchannel_logout == p.callback || p.backchannel_logout == p.sign_out {
        return Err(ConfigError::invalid(
            "auth.backchannel_logout_path",
            "is the same as another auth path",
        ));
    }
    Ok(p)
}
