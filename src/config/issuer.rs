//! `issuers.<name>`: identity providers whose tokens are accepted, and how their keys are
//! fetched and kept.
//!
//! Security notes: IdP URLs must be https, except on loopback addresses (demo and tests).
//! `none` is never an accepted algorithm; HS256/384/512 only with a `shared_secret`.
//! `shared_secret` and `client_secret` are [`Secret`]s: never printed (`Debug` redacts; the
//! summary shows only whether set).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::ConfigError;
use super::env::lenient;
use super::parse::{duration, duration_or_zero, idp_url, required};
use crate::claims::ClaimPath;
use crate::idp::{Backoff, IdpSettings};
use crate::secret::Secret;

pub use super::parse::idp_url_allowed;

/// Raw `issuers.<name>`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub clock_skew: Option<String>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    pub shared_secret: Option<Secret>,
    pub ca_file: Option<String>,
    pub refresh_interval: Option<String>,
    pub refresh_min: Option<String>,
    pub refresh_max: Option<String>,
    pub unknown_kid_cooldown: Option<String>,
    pub max_stale: Option<String>,
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub retries: Option<u64>,
    pub backoff_min: Option<String>,
    pub backoff_max: Option<String>,
    pub max_retry_after: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub breaker_threshold: Option<u64>,
    pub breaker_open_for: Option<String>,
    pub groups_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub scope_claims: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub unknown_kid_wait: Option<String>,
    pub token_endpoint_auth: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub redirect_url: Option<String>,
}

/// One issuer, validated.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Its name in the file (metric label, state file name).
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// `<issuer>/.well-known/openid-configuration`, used when `jwks_uri` is not set.
    pub discovery_uri: Uri,
    /// Fixed JWKS location (no discovery).
    pub jwks_uri: Option<Uri>,
    /// Accepted `aud` values (one must be present).
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Leeway for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Claims that must be present (besides `exp`, `iss` and `aud`).
    pub required_claims: Vec<String>,
    /// Shared secret for HS* algorithms.
    pub shared_secret: Option<Secret>,
    /// CA bundle for the IdP's TLS, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Scheduled refresh period (±10% jitter).
    pub refresh_interval: Duration,
    /// Lower bound for a `Cache-Control: max-age` schedule.
    pub refresh_min: Duration,
    /// Upper bound for a `Cache-Control: max-age` schedule.
    pub refresh_max: Duration,
    /// At most one unknown-`kid` refresh per this period.
    pub unknown_kid_cooldown: Duration,
    /// Keys stay usable this long after the last good refresh.
    pub max_stale: Duration,
    /// How the IdP is called.
    pub idp: IdpSettings,
    /// Where group names are.
    pub groups_claim: ClaimPath,
    /// Where role names are.
    pub roles_claim: ClaimPath,
    /// Where scopes are (space-separated string or array), first found wins.
    pub scope_claims: Vec<ClaimPath>,
    /// OAuth client id (browser sign-in).
    pub client_id: Option<String>,
    /// OAuth client secret (browser sign-in).
    pub client_secret: Option<Secret>,
    /// How long a request with an unknown `kid` waits for the refresh it triggered (which
    /// runs on its own task and goes on after the wait).
    pub unknown_kid_wait: Duration,
    /// How the client authenticates at the token endpoint (`client_secret_basic` default).
    pub token_endpoint_auth: TokenEndpointAuth,
    /// Scopes asked for at sign-in (`openid` always among them).
    pub scopes: Vec<String>,
    /// The callback URL registered at the IdP; `None`: the request's scheme and host plus
    /// `auth.callback_path`.
    pub redirect_url: Option<String>,
}

/// Scopes asked for at sign-in when `scopes` is not set.
pub const DEFAULT_SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// The default accepted algorithms: every asymmetric one jsonwebtoken supports.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The client authentication methods at the token endpoint Portcullis supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenEndpointAuth {
    /// HTTP Basic with the URL-encoded client id and secret (RFC 6749 §2.3.1; the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

// === impl TokenEndpointAuth ===

impl TokenEndpointAuth {
    /// The name used in config and in discovery.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    /// Parses a config/discovery name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }
}

/// Validates `issuers`, in name order: each one, and no `issuer` (`iss`) used twice.
pub(super) fn issuers(
    raw: &BTreeMap<String, RawIssuer>,
) -> Result<Vec<Arc<IssuerConfig>>, ConfigError> {
    let issuers = raw
        .iter()
        .map(|(name, i)| issuer(name, i).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for i in &issuers {
        if !seen.insert(i.issuer.as_str()) {
            return Err(ConfigError::invalid(
                format!("issuers.{}.issuer", i.name),
                format!("\"{}\" is used by another issuer", i.issuer),
            ));
        }
    }
    Ok(issuers)
}

/// Validates `issuers.<name>`, one group of keys at a time (the groups of the example file):
/// the tokens accepted, keeping keys fresh, how the IdP is called, browser sign-in.
pub fn issuer(name: &str, raw: &RawIssuer) -> Result<IssuerConfig, ConfigError> {
    let k = |field: &str| format!("issuers.{name}.{field}");
    let tokens = tokens(&k, raw)?;
    let keys = key_refresh(&k, raw)?;
    let idp = idp_calls(&k, raw)?;
    let client = client(&k, raw)?;
    Ok(IssuerConfig {
        name: name.to_string(),
        issuer: tokens.issuer,
        discovery_uri: tokens.discovery_uri,
        jwks_uri: tokens.jwks_uri,
        audiences: tokens.audiences,
        algorithms: tokens.algorithms,
        clock_skew: tokens.clock_skew,
        required_claims: tokens.required_claims,
        shared_secret: tokens.shared_secret,
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        refresh_interval: keys.refresh_interval,
        refresh_min: keys.refresh_min,
        refresh_max: keys.refresh_max,
        unknown_kid_cooldown: keys.unknown_kid_cooldown,
        max_stale: keys.max_stale,
        idp,
        groups_claim: tokens.groups_claim,
        roles_claim: tokens.roles_claim,
        scope_claims: tokens.scope_claims,
        client_id: client.client_id,
        client_secret: client.client_secret,
        unknown_kid_wait: keys.unknown_kid_wait,
        token_endpoint_auth: client.token_endpoint_auth,
        scopes: client.scopes,
        redirect_url: client.redirect_url,
    })
}

/// The key path of a field of the issuer being validated (`issuers.<name>.<field>`).
type KeyOf<'a> = &'a dyn Fn(&str) -> String;

/// Which tokens are accepted: `issuer`, `jwks_uri`, `audiences`, `algorithms`,
/// `shared_secret`, `clock_skew`, `required_claims` and where identity claims are.
struct Tokens {
    issuer: String,
    discovery_uri: Uri,
    jwks_uri: Option<Uri>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    clock_skew: Duration,
    required_claims: Vec<String>,
    shared_secret: Option<Secret>,
    groups_claim: ClaimPath,
    roles_claim: ClaimPath,
    scope_claims: Vec<ClaimPath>,
}

/// Keeping keys fresh: `refresh_*`, `unknown_kid_*`, `max_stale`.
struct KeyRefresh {
    refresh_interval: Duration,
    refresh_min: Duration,
    refresh_max: Duration,
    unknown_kid_cooldown: Duration,
    max_stale: Duration,
    unknown_kid_wait: Duration,
}

/// Browser sign-in: `client_id`, `client_secret`, `token_endpoint_auth`, `scopes`,
/// `redirect_url`.
struct Client {
    client_id: Option<String>,
    client_secret: Option<Secret>,
    token_endpoint_auth: TokenEndpointAuth,
    scopes: Vec<String>,
    redirect_url: Option<String>,
}

/// The tokens group.
fn tokens(k: KeyOf<'_>, raw: &RawIssuer) -> Result<Tokens, ConfigError> {
    let issuer = required(&k("issuer"), &raw.issuer)?.to_string();
    let discovery_uri = discovery_uri(&k("issuer"), &issuer)?;
    let jwks_uri = raw
        .jwks_uri
        .as_deref()
        .map(|v| idp_url(&k("jwks_uri"), v))
        .transpose()?;
    if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(ConfigError::invalid(
            k("audiences"),
            "at least one non-empty audience is required",
        ));
    }
    let shared_secret = raw
        .shared_secret
        .as_ref()
        .filter(|s| !s.is_empty())
        .cloned();
    let algorithms = algorithms(k, raw.algorithms.as_deref(), shared_secret.is_some())?;
    if shared_secret.as_ref().is_some_and(|s| s.len() < 32) {
        return Err(ConfigError::invalid(
            k("shared_secret"),
            "must be at least 32 bytes",
        ));
    }
    let claim_path = |field: &str, v: &Option<String>, default: &str| {
        ClaimPath::parse(v.as_deref().unwrap_or(default)).ok_or_else(|| {
            ConfigError::invalid(
                k(field),
                "must be a claim name or dotted path (e.g. realm_access.roles)",
            )
        })
    };
    Ok(Tokens {
        issuer,
        discovery_uri,
        jwks_uri,
        audiences: raw.audiences.clone(),
        algorithms,
        clock_skew: duration_or_zero(&k("clock_skew"), &raw.clock_skew, Duration::from_secs(60))?,
        required_claims: raw.required_claims.clone(),
        shared_secret,
        scope_claims: scope_claims(&k("scope_claims"), raw.scope_claims.as_deref())?,
        groups_claim: claim_path("groups_claim", &raw.groups_claim, "groups")?,
        roles_claim: claim_path("roles_claim", &raw.roles_claim, "roles")?,
    })
}

/// `issuer` (`key` is its path), checked as an IdP URL: its discovery document's URL.
fn discovery_uri(key: &str, issuer: &str) -> Result<Uri, ConfigError> {
    let issuer_uri = idp_url(key, issuer)?;
    // OpenID Connect Discovery 1.0 section 3: the issuer has no query or fragment.
    if issuer_uri.query().is_some() {
        return Err(ConfigError::invalid(
            key,
            format!("\"{issuer}\" must not have a query"),
        ));
    }
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    discovery.parse::<Uri>().map_err(|_| {
        ConfigError::invalid(key, format!("\"{issuer}\" cannot be used for discovery"))
    })
}

/// `algorithms`: the asymmetric defaults when absent; HS* only with a shared secret.
fn algorithms(
    k: KeyOf<'_>,
    raw: Option<&[String]>,
    shared_secret: bool,
) -> Result<Vec<Algorithm>, ConfigError> {
    let Some(list) = raw else {
        return Ok(DEFAULT_ALGORITHMS.to_vec());
    };
    if list.is_empty() {
        return Err(ConfigError::invalid(k("algorithms"), "must not be empty"));
    }
    let mut algs = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let alg: Algorithm = a.trim().parse().map_err(|_| {
            ConfigError::invalid(
                k(&format!("algorithms[{i}]")),
                format!("\"{a}\" is not a supported algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"),
            )
        })?;
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        if hmac && !shared_secret {
            return Err(ConfigError::invalid(
                k(&format!("algorithms[{i}]")),
                format!("{a} needs {}", k("shared_secret")),
            ));
        }
        algs.push(alg);
    }
    Ok(algs)
}

/// `scope_claims` (`key` is its path): `scope`, then `scp`, when absent.
fn scope_claims(key: &str, raw: Option<&[String]>) -> Result<Vec<ClaimPath>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![
            ClaimPath(vec!["scope".into()]),
            ClaimPath(vec!["scp".into()]),
        ]);
    };
    list.iter()
        .map(|s| {
            ClaimPath::parse(s)
                .ok_or_else(|| ConfigError::invalid(key, format!("\"{s}\" is not a claim path")))
        })
        .collect()
}

/// The keeping-keys-fresh group.
fn key_refresh(k: KeyOf<'_>, raw: &RawIssuer) -> Result<KeyRefresh, ConfigError> {
    let secs = Duration::from_secs;
    let refresh_min = duration(&k("refresh_min"), &raw.refresh_min, secs(300))?;
    let refresh_max = duration(&k("refresh_max"), &raw.refresh_max, secs(86_400))?;
    if refresh_max < refresh_min {
        return Err(ConfigError::invalid(
            k("refresh_max"),
            "must not be below refresh_min",
        ));
    }
    Ok(KeyRefresh {
        refresh_interval: duration(&k("refresh_interval"), &raw.refresh_interval, secs(3600))?,
        refresh_min,
        refresh_max,
        unknown_kid_cooldown: duration(
            &k("unknown_kid_cooldown"),
            &raw.unknown_kid_cooldown,
            secs(30),
        )?,
        max_stale: duration(&k("max_stale"), &raw.max_stale, secs(86_400))?,
        unknown_kid_wait: duration(&k("unknown_kid_wait"), &raw.unknown_kid_wait, secs(1))?,
    })
}

/// The how-the-IdP-is-called group: timeout, retries with backoff, circuit breaker.
fn idp_calls(k: KeyOf<'_>, raw: &RawIssuer) -> Result<IdpSettings, ConfigError> {
    let secs = Duration::from_secs;
    let backoff_min = duration(
        &k("backoff_min"),
        &raw.backoff_min,
        Duration::from_millis(200),
    )?;
    let backoff_max = duration(&k("backoff_max"), &raw.backoff_max, secs(5))?;
    let backoff = Backoff::try_new(backoff_min, backoff_max)
        .map_err(|e| ConfigError::invalid(k("backoff_max"), e.to_string()))?;
    let retries = raw.retries.unwrap_or(2);
    if retries > 10 {
        return Err(ConfigError::invalid(k("retries"), "must be at most 10"));
    }
    Ok(IdpSettings {
        timeout: duration(&k("timeout"), &raw.timeout, secs(5))?,
        retries: u32::try_from(retries).unwrap_or(10),
        backoff,
        max_retry_after: duration(&k("max_retry_after"), &raw.max_retry_after, secs(60))?,
        breaker_threshold: u32::try_from(raw.breaker_threshold.unwrap_or(5).max(1))
            .unwrap_or(u32::MAX),
        breaker_open_for: duration(&k("breaker_open_for"), &raw.breaker_open_for, secs(30))?,
        max_body_bytes: 1024 * 1024,
    })
}

/// The browser sign-in group.
fn client(k: KeyOf<'_>, raw: &RawIssuer) -> Result<Client, ConfigError> {
    Ok(Client {
        client_id: raw.client_id.clone().filter(|s| !s.is_empty()),
        client_secret: raw.client_secret.clone().filter(|s| !s.is_empty()),
        token_endpoint_auth: match raw.token_endpoint_auth.as_deref() {
            None => TokenEndpointAuth::default(),
            Some(s) => TokenEndpointAuth::parse(s.trim()).ok_or_else(|| {
                ConfigError::invalid(
                    k("token_endpoint_auth"),
                    format!("\"{s}\" is not client_secret_basic or client_secret_post"),
                )
            })?,
        },
        scopes: scopes(&k("scopes"), raw.scopes.as_deref())?,
        redirect_url: redirect_url(&k("redirect_url"), raw.redirect_url.as_deref())?,
    })
}

/// `scopes`: non-empty tokens without spaces or quotes; `openid` added first when missing.
fn scopes(key: &str, raw: Option<&[String]>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len() + 1);
    for (i, s) in list.iter().enumerate() {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!(
                    "\"{s}\" is not a scope token (printable ASCII, no space, quote or backslash)"
                ),
            ));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    if !out.iter().any(|s| s == "openid") {
        out.insert(0, "openid".to_string());
    }
    Ok(out)
}

/// `redirect_url`: an absolute https URL (http only on loopback), no fragment.
fn redirect_url(key: &str, raw: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(s) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let uri: Uri = s
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("\"{s}\" is not a URL")))?;
    let ok_scheme = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => idp_url_allowed(&uri),
        _ => false,
    };
    if !ok_scheme || uri.host().is_none() || s.contains('#') {
        return Err(ConfigError::invalid(
            key,
            format!(
                "\"{s}\" must be an absolute https URL (http only on loopback), without a fragment"
            ),
        ));
    }
    Ok(Some(s.to_string()))
}
