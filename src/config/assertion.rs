//! `auth.assertion`, `auth.header_profile` and `routes[i].assertion`: the signed identity
//! assertion Portcullis sends upstream, and the header names and value shapes of the gateways
//! an application may have been written for. Raw structs, typed settings and validation,
//! including the size budget (a configuration whose budget cannot hold the fixed claims is
//! refused here, never a request later).
//!
//! Security notes: key files are only named here; they are read (and their contents kept in
//! redacting types) by `crate::assertion::keys`. Every header a profile sets is owned: the
//! client's copies are stripped in every spelling (`upstream::headers::identity`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::env::lenient;
use super::parse::{duration, required};
use super::routes::{AuthMode, HostMatch, RouteConfig};
use super::{AuthConfig, ConfigError};
use crate::claims::{ClaimPath, MappedHeader};

/// Raw `auth.assertion`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    pub issuer: Option<String>,
    pub header: Option<String>,
    pub lifetime: Option<String>,
    pub algorithm: Option<String>,
    pub keys: Option<Vec<String>>,
    pub claims: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_bytes: Option<u64>,
    pub jwks_path: Option<String>,
    pub jwks_max_age: Option<String>,
}

/// Raw `routes[i].assertion`: `off`, or `{ audience: ... }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRouteAssertion {
    /// `off` / `false` (or `on` / `true`: the default).
    Switch(Switch),
    /// `{ audience: ... }`.
    Settings(RawRouteAssertionSettings),
}

/// A boolean or a word, as YAML and environment overrides write it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Switch {
    Bool(bool),
    Word(String),
}

/// Raw `routes[i].assertion` as a map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAssertionSettings {
    pub audience: Option<String>,
}

/// Which gateway's headers Portcullis sends (`auth.header_profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderProfile {
    /// `auth.identity_headers` and `auth.assertion.header`.
    #[default]
    Portcullis,
    /// oauth2-proxy's `X-Auth-Request-*` and `X-Forwarded-User` / `-Email`.
    Oauth2Proxy,
    /// Google Cloud IAP's `x-goog-iap-jwt-assertion` and `x-goog-authenticated-user-*`.
    Iap,
    /// AWS ALB's `x-amzn-oidc-data`, `-identity` and `-accesstoken`.
    Alb,
    /// Pomerium's `X-Pomerium-Jwt-Assertion` and `X-Pomerium-Claim-<name>`.
    Pomerium,
}

/// The assertion's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

// === impl AssertionAlgorithm ===

impl AssertionAlgorithm {
    /// Its JOSE name (`ES256`, `EdDSA`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// `auth.assertion`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AssertionConfig {
    /// `iss`.
    pub issuer: String,
    /// Where it is sent: `auth.assertion.header`, or the profile's header.
    pub header: HeaderName,
    /// `exp - iat`.
    pub lifetime: Duration,
    /// For a generated key; configured keys say their own (the first must match when set).
    pub algorithm: AssertionAlgorithm,
    /// Whether `algorithm` was written (then the signing key must have it).
    pub algorithm_set: bool,
    /// PEM files: the first signs, all are published.
    pub keys: Vec<PathBuf>,
    /// Further claims: the assertion's claim name and where it is read in the verified claims.
    pub claims: Vec<(String, ClaimPath)>,
    /// Longest assertion sent, in bytes (optional claims that do not fit are left out).
    pub max_bytes: usize,
    /// The own path of the JWKS, on the proxy listeners and the admin listener.
    pub jwks_path: String,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
}

/// What a route sends as its assertion (`routes[i].assertion`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteAssertion {
    /// With `auth.assertion`: `aud` is the request's canonical host.
    #[default]
    Default,
    /// None on this route.
    Off,
    /// With this `aud`.
    Audience(String),
}

/// The headers of a profile: what it sets from claims, where access tokens go, and which
/// names (and prefixes ending in `*`) it owns.
#[derive(Debug, Clone, Default)]
pub struct ProfileHeaders {
    /// Claim headers, after `auth.identity_headers`.
    pub mapped: Vec<MappedHeader>,
    /// The access token (where the route forwards one), in each of these.
    pub access_token: Vec<HeaderName>,
    /// Stripped from every request, in every spelling.
    pub owned: Vec<String>,
}

/// One claim header of a profile: claim, header name (lower case), value prefix.
type Row = (&'static str, &'static str, &'static str);

/// What Google IAP writes before a user's email and id.
const IAP_PREFIX: &str = "accounts.google.com:";

/// Claims Portcullis sets or leaves to the JWT standard: not configurable by name.
const RESERVED_CLAIMS: [&str; 9] = [
    "iss", "sub", "aud", "iat", "exp", "nbf", "jti", "email", "groups",
];

/// Longest `sub` OpenID Connect allows (Core 1.0, section 2): the budget reserves it.
pub const MAX_SUB_BYTES: usize = 255;

/// Longest host name: the budget reserves it for a route whose `aud` is the request's host.
const MAX_HOST_BYTES: usize = 253;

/// `auth.assertion.header` when not set.
pub const DEFAULT_HEADER: &str = "X-Portcullis-Assertion";

/// `auth.assertion.jwks_path` when not set.
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";

// === impl HeaderProfile ===

impl HeaderProfile {
    fn parse(v: Option<&str>) -> Result<Self, ConfigError> {
        Ok(match v.map(str::trim) {
            None | Some("portcullis") => Self::Portcullis,
            Some("oauth2-proxy") => Self::Oauth2Proxy,
            Some("iap") => Self::Iap,
            Some("alb") => Self::Alb,
            Some("pomerium") => Self::Pomerium,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "auth.header_profile",
                    format!(
                        "\"{other}\" is not one of portcullis, oauth2-proxy, iap, alb, pomerium"
                    ),
                ));
            }
        })
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portcullis => "portcullis",
            Self::Oauth2Proxy => "oauth2-proxy",
            Self::Iap => "iap",
            Self::Alb => "alb",
            Self::Pomerium => "pomerium",
        }
    }

    /// The header the profile sends its signed assertion in, if it has its own.
    pub fn assertion_header(self) -> Option<&'static str> {
        match self {
            Self::Portcullis | Self::Oauth2Proxy => None,
            Self::Iap => Some("x-goog-iap-jwt-assertion"),
            Self::Alb => Some("x-amzn-oidc-data"),
            Self::Pomerium => Some("x-pomerium-jwt-assertion"),
        }
    }

    /// The profile's claim headers (claim, header, value prefix), access-token headers and
    /// owned names (prefixes end in `*`).
    fn table(
        self,
    ) -> (
        &'static [Row],
        &'static [&'static str],
        &'static [&'static str],
    ) {
        match self {
            Self::Portcullis => (&[], &[], &[]),
            Self::Oauth2Proxy => (
                &[
                    ("sub", "x-auth-request-user", ""),
                    ("email", "x-auth-request-email", ""),
                    ("groups", "x-auth-request-groups", ""),
                    (
                        "preferred_username",
                        "x-auth-request-preferred-username",
                        "",
                    ),
                    ("sub", "x-forwarded-user", ""),
                    ("email", "x-forwarded-email", ""),
                ],
                &["x-auth-request-access-token"],
                &[
                    "X-Auth-Request-*",
                    "X-Forwarded-User",
                    "X-Forwarded-Email",
                    "X-Forwarded-Groups",
                    "X-Forwarded-Preferred-Username",
                    "X-Forwarded-Access-Token",
                ],
            ),
            Self::Iap => (
                &[
                    ("email", "x-goog-authenticated-user-email", IAP_PREFIX),
                    ("sub", "x-goog-authenticated-user-id", IAP_PREFIX),
                ],
                &[],
                &["X-Goog-Authenticated-User-*", "X-Goog-Iap-*"],
            ),
            Self::Alb => (
                &[("sub", "x-amzn-oidc-identity", "")],
                &["x-amzn-oidc-accesstoken"],
                &["X-Amzn-Oidc-*"],
            ),
            Self::Pomerium => (
                &[
                    ("sub", "x-pomerium-claim-user", ""),
                    ("email", "x-pomerium-claim-email", ""),
                    ("groups", "x-pomerium-claim-groups", ""),
                ],
                &[],
                &["X-Pomerium-*"],
            ),
        }
    }

    /// The claim headers, access-token headers and owned names of the profile;
    /// `claims` are `auth.assertion.claims` (Pomerium sends each as a header too).
    fn headers(self, claims: &[(String, ClaimPath)]) -> ProfileHeaders {
        let (rows, access, owned) = self.table();
        let mut mapped: Vec<MappedHeader> = rows
            .iter()
            .filter_map(|&(claim, header, prefix)| {
                Some(MappedHeader {
                    claim: ClaimPath::parse(claim)?,
                    header: HeaderName::from_static(header),
                    prefix,
                })
            })
            .collect();
        if self == Self::Pomerium {
            for (name, path) in claims {
                let header = format!("x-pomerium-claim-{}", name.to_ascii_lowercase());
                if let Ok(header) = HeaderName::from_bytes(header.as_bytes()) {
                    mapped.push(MappedHeader {
                        claim: path.clone(),
                        header,
                        prefix: "",
                    });
                }
            }
        }
        let access_token: Vec<HeaderName> =
            access.iter().map(|&h| HeaderName::from_static(h)).collect();
        // The exact names too, not only the prefixes: an ext_authz allow lists exact names
        // for the gateway to remove.
        let owned = owned
            .iter()
            .map(|s| s.to_string())
            .chain(mapped.iter().map(|m| m.header.as_str().to_string()))
            .chain(access_token.iter().map(|h| h.as_str().to_string()))
            .chain(self.assertion_header().map(str::to_string))
            .collect();
        ProfileHeaders {
            mapped,
            access_token,
            owned,
        }
    }
}

/// Validates `auth.header_profile` and `auth.assertion`: the profile, its headers and the
/// assertion settings (`None` when `auth.assertion` is absent).
pub(super) fn profile_and_assertion(
    profile: Option<&str>,
    raw: Option<&RawAssertion>,
) -> Result<(HeaderProfile, ProfileHeaders, Option<AssertionConfig>), ConfigError> {
    let profile = HeaderProfile::parse(profile)?;
    let assertion = match raw {
        None => None,
        Some(raw) => Some(assertion(profile, raw)?),
    };
    if let (Some(header), None) = (profile.assertion_header(), &assertion) {
        return Err(ConfigError::invalid(
            "auth.header_profile",
            format!(
                "{} sends a signed assertion ({header}): set auth.assertion (at least its issuer)",
                profile.name()
            ),
        ));
    }
    let claims = assertion.as_ref().map_or(&[][..], |a| &a.claims[..]);
    let mut headers = profile.headers(claims);
    if let Some(a) = &assertion {
        headers.owned.push(a.header.as_str().to_string());
    }
    Ok((profile, headers, assertion))
}

/// Validates `auth.assertion` under `profile`.
fn assertion(profile: HeaderProfile, raw: &RawAssertion) -> Result<AssertionConfig, ConfigError> {
    let issuer = required("auth.assertion.issuer", &raw.issuer)?
        .trim()
        .to_string();
    let header = match (profile.assertion_header(), raw.header.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "auth.assertion.header",
                format!(
                    "auth.header_profile {} names the assertion's header; remove this key",
                    profile.name()
                ),
            ));
        }
        (Some(h), None) => HeaderName::from_static(h),
        (None, h) => {
            let h = h.unwrap_or(DEFAULT_HEADER);
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid(
                    "auth.assertion.header",
                    format!("\"{h}\" is not a header name"),
                )
            })?
        }
    };
    let lifetime = duration(
        "auth.assertion.lifetime",
        &raw.lifetime,
        Duration::from_secs(120),
    )?;
    if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "auth.assertion.lifetime",
            "must be between 1s and 1h",
        ));
    }
    let algorithm = match raw.algorithm.as_deref().map(str::trim) {
        None | Some("ES256") => AssertionAlgorithm::Es256,
        Some("EdDSA") => AssertionAlgorithm::EdDsa,
        Some(other) => {
            return Err(ConfigError::invalid(
                "auth.assertion.algorithm",
                format!("\"{other}\" is not one of ES256, EdDSA"),
            ));
        }
    };
    let max_bytes = raw.max_bytes.unwrap_or(4096);
    if !(256..=65536).contains(&max_bytes) {
        return Err(ConfigError::invalid(
            "auth.assertion.max_bytes",
            "must be between 256 and 65536",
        ));
    }
    Ok(AssertionConfig {
        issuer,
        header,
        lifetime,
        algorithm,
        algorithm_set: raw.algorithm.is_some(),
        keys: keys(raw.keys.as_deref())?,
        claims: claims(raw.claims.as_ref())?,
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        jwks_path: jwks_path(raw.jwks_path.as_deref())?,
        jwks_max_age: super::parse::duration_or_zero(
            "auth.assertion.jwks_max_age",
            &raw.jwks_max_age,
            Duration::from_secs(300),
        )?,
    })
}

fn keys(raw: Option<&[String]>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    for (i, k) in raw.unwrap_or_default().iter().enumerate() {
        let k = k.trim();
        if k.is_empty() {
            return Err(ConfigError::invalid(
                format!("auth.assertion.keys[{i}]"),
                "must be the path of a PEM file",
            ));
        }
        out.push(PathBuf::from(k));
    }
    Ok(out)
}

fn claims(raw: Option<&BTreeMap<String, String>>) -> Result<Vec<(String, ClaimPath)>, ConfigError> {
    let mut out = Vec::new();
    for (name, path) in raw.into_iter().flatten() {
        let key = format!("auth.assertion.claims.{name}");
        if RESERVED_CLAIMS.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                &key,
                "is a claim Portcullis sets itself (iss, sub, aud, iat, exp, email, groups) or \
                 leaves out (nbf, jti)",
            ));
        }
        // Pomerium sends each as `X-Pomerium-Claim-<name>`: a name must work in a header.
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plain {
            return Err(ConfigError::invalid(
                &key,
                "a claim name must be letters, digits, _ and -",
            ));
        }
        let path = ClaimPath::parse(path.trim()).ok_or_else(|| {
            ConfigError::invalid(
                &key,
                format!("\"{path}\" is not a claim name or dotted path"),
            )
        })?;
        out.push((name.clone(), path));
    }
    Ok(out)
}

fn jwks_path(raw: Option<&str>) -> Result<String, ConfigError> {
    let p = raw.map(str::trim).unwrap_or(DEFAULT_JWKS_PATH);
    let plain = p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains(['?', '#', '%', '\\', ';'])
        && !p.split('/').any(|s| s == "." || s == "..");
    if !plain {
        return Err(ConfigError::invalid(
            "auth.assertion.jwks_path",
            format!(
                "\"{p}\" must be a plain path starting with / (no query, escapes or dot segments)"
            ),
        ));
    }
    Ok(p.to_string())
}

/// Validates `routes[i].assertion` (`key` is `routes[i]`) for a route authenticating by `mode`.
pub(super) fn route_assertion(
    key: &str,
    raw: Option<&RawRouteAssertion>,
    mode: AuthMode,
) -> Result<RouteAssertion, ConfigError> {
    let key = format!("{key}.assertion");
    let out = match raw {
        None => return Ok(RouteAssertion::Default),
        Some(RawRouteAssertion::Switch(Switch::Bool(false))) => RouteAssertion::Off,
        Some(RawRouteAssertion::Switch(Switch::Bool(true))) => RouteAssertion::Default,
        Some(RawRouteAssertion::Switch(Switch::Word(w))) => match w.trim() {
            "off" | "false" => RouteAssertion::Off,
            "on" | "true" => RouteAssertion::Default,
            other => {
                return Err(ConfigError::invalid(
                    &key,
                    format!("\"{other}\" is not off, on or {{ audience: ... }}"),
                ));
            }
        },
        Some(RawRouteAssertion::Settings(s)) => match s.audience.as_deref().map(str::trim) {
            None => RouteAssertion::Default,
            Some("") => {
                return Err(ConfigError::invalid(
                    format!("{key}.audience"),
                    "must not be empty",
                ));
            }
            Some(a) => RouteAssertion::Audience(a.to_string()),
        },
    };
    if mode == AuthMode::None && out != RouteAssertion::Off {
        return Err(ConfigError::invalid(
            key,
            "needs authentication (auth: bearer, session or either): a route without it has \
             no identity to assert",
        ));
    }
    Ok(out)
}

/// The checks that need the routes: a route's `assertion` needs `auth.assertion`, and the
/// size budget must hold the fixed claims of every route's assertion (with the longest `sub`
/// OpenID Connect allows, and the longest host name where `aud` is the request's host).
pub(super) fn check_routes(auth: &AuthConfig, routes: &[RouteConfig]) -> Result<(), ConfigError> {
    let Some(a) = &auth.assertion else {
        if let Some(i) = routes
            .iter()
            .position(|r| !matches!(r.assertion, RouteAssertion::Default | RouteAssertion::Off))
        {
            return Err(ConfigError::invalid(
                format!("routes[{i}].assertion"),
                "needs auth.assertion (at least its issuer)",
            ));
        }
        return Ok(());
    };
    for (i, r) in routes.iter().enumerate() {
        let audience = match (&r.assertion, &r.host) {
            (RouteAssertion::Off, _) => continue,
            _ if r.auth == AuthMode::None => continue,
            (RouteAssertion::Audience(aud), _) => aud.len(),
            (RouteAssertion::Default, HostMatch::Exact(h)) => h.len(),
            (RouteAssertion::Default, _) => MAX_HOST_BYTES,
        };
        let fixed = fixed_size(&a.issuer, audience);
        if fixed > a.max_bytes {
            return Err(ConfigError::invalid(
                "auth.assertion.max_bytes",
                format!(
                    "{} bytes cannot hold the fixed claims of routes[{i}]'s assertion ({fixed} \
                     bytes with the longest sub and aud)",
                    a.max_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// The size of an assertion with only its fixed claims, the longest `sub` and an `aud` of
/// `audience` bytes: header, payload and signature, base64url-encoded.
pub fn fixed_size(issuer: &str, audience: usize) -> usize {
    // {"alg":"ES256","typ":"JWT","kid":"<43>"}
    let header = 40 + 43;
    // {"iss":"..","sub":"..","aud":"..","iat":..,"exp":..} with 10-digit times, plus
    // room for escapes.
    let payload = 52 + issuer.len() + MAX_SUB_BYTES + audience + 20 + 16;
    b64_len(header) + 1 + b64_len(payload) + 1 + b64_len(64)
}

/// The unpadded base64url length of `n` bytes.
pub fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}
