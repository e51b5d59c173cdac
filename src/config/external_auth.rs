//! `external_auth`: Portcullis as the authentication service of an ingress or gateway that
//! already fronts the apps (nginx `auth_request` / ingress-nginx `auth-url`, Traefik
//! ForwardAuth, Caddy `forward_auth`, Envoy's ext_authz over HTTP or gRPC). Each dialect
//! answers on a path of the proxy listeners (any host), off by default. Raw struct, typed
//! settings and their validation.
//!
//! Security notes: the headers that describe the original request are believed only from
//! `trusted_peers` (default loopback): anyone else who calls a decision path is refused (403),
//! so a client that can reach Portcullis directly cannot ask it to vouch for a request it
//! describes itself.

use std::net::IpAddr;

use serde::Deserialize;

use super::ConfigError;

/// Raw `external_auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalAuth {
    pub nginx_path: Option<String>,
    pub forward_auth_path: Option<String>,
    pub envoy_path_prefix: Option<String>,
    pub envoy_grpc: Option<bool>,
    pub start_path: Option<String>,
    pub trusted_peers: Option<Vec<String>>,
    pub cache_max_age: Option<String>,
}

/// The external authorization endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalAuthConfig {
    /// nginx `auth_request` / ingress-nginx `auth-url`: the original request in
    /// `X-Original-URL` and `X-Original-Method`.
    pub nginx_path: Option<String>,
    /// Traefik ForwardAuth and Caddy `forward_auth`: the original request in
    /// `X-Forwarded-Method`, `-Proto`, `-Host` and `-Uri`.
    pub forward_auth_path: Option<String>,
    /// Envoy's HTTP ext_authz service (`path_prefix`): the original path follows the prefix,
    /// the original method, `Host` and headers are the request's own.
    pub envoy_path_prefix: Option<String>,
    /// Envoy's gRPC ext_authz service (`grpc_service`; Envoy Gateway `extAuth.grpc`, Istio
    /// `envoyExtAuthzGrpc`): `envoy.service.auth.v3.Authorization/Check` over HTTP/2 (h2c or
    /// TLS) on the proxy listeners.
    pub envoy_grpc: bool,
    /// Starts a sign-in for the page `rd` names (ingress-nginx `auth-signin`): a 302 to the
    /// IdP with a login cookie, for the issuer of `rd`'s session route.
    pub start_path: Option<String>,
    /// Who may describe an original request (CIDRs).
    pub trusted_peers: Vec<Cidr>,
    /// Opt-in: a bearer allow may be cached by the caller this long at most (and never past
    /// the token's `exp`); `None`: every answer is `no-store`.
    pub cache_max_age: Option<std::time::Duration>,
}

// === impl ExternalAuthConfig ===

impl ExternalAuthConfig {
    /// Whether any decision path is served (a route may then exist only for decisions,
    /// without an upstream).
    pub fn decides(&self) -> bool {
        self.nginx_path.is_some()
            || self.forward_auth_path.is_some()
            || self.envoy_path_prefix.is_some()
            || self.envoy_grpc
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

// === impl Cidr ===

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (all of its bits).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|n| *n <= max)?
            }
            Some(_) => return None,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Validates `external_auth`.
pub(super) fn external_auth(raw: &RawExternalAuth) -> Result<ExternalAuthConfig, ConfigError> {
    let path = |key: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(p) if plain_path(p) => Ok(Some(p.to_string())),
            Some(p) => Err(ConfigError::invalid(
                format!("external_auth.{key}"),
                format!(
                    "\"{p}\" must be an absolute path in canonical form, like /_portcullis/auth \
                     (letters, digits, - _ . ~ between single slashes, no dot segments, no \
                     trailing slash)"
                ),
            )),
        }
    };
    let nginx_path = path("nginx_path", &raw.nginx_path)?;
    let forward_auth_path = path("forward_auth_path", &raw.forward_auth_path)?;
    let envoy_path_prefix = path("envoy_path_prefix", &raw.envoy_path_prefix)?;
    let start_path = path("start_path", &raw.start_path)?;
    let paths: Vec<&String> = [
        &nginx_path,
        &forward_auth_path,
        &envoy_path_prefix,
        &start_path,
    ]
    .into_iter()
    .flatten()
    .collect();
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            let under = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|r| r.starts_with('/'));
            if a == b || under(a, b) || under(b, a) {
                return Err(ConfigError::invalid(
                    "external_auth",
                    format!("the decision paths {a} and {b} overlap"),
                ));
            }
        }
    }
    let trusted_peers = trusted_peers(raw.trusted_peers.as_deref())?;
    let cache_max_age = cache_max_age(raw.cache_max_age.as_deref())?;
    Ok(ExternalAuthConfig {
        nginx_path,
        forward_auth_path,
        envoy_path_prefix,
        envoy_grpc: raw.envoy_grpc.unwrap_or(false),
        start_path,
        trusted_peers,
        cache_max_age,
    })
}

/// `external_auth.trusted_peers`: CIDRs; loopback when not set.
fn trusted_peers(raw: Option<&[String]>) -> Result<Vec<Cidr>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![
            Cidr {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                prefix: 128,
            },
        ]);
    };
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s).ok_or_else(|| {
                ConfigError::invalid(
                    format!("external_auth.trusted_peers[{i}]"),
                    format!("\"{s}\" is not an address or a CIDR block (10.0.0.0/8, fd00::/8)"),
                )
            })
        })
        .collect()
}

/// `external_auth.cache_max_age`: at least 1s; `None` when not set.
fn cache_max_age(raw: Option<&str>) -> Result<Option<std::time::Duration>, ConfigError> {
    const KEY: &str = "external_auth.cache_max_age";
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => match super::duration::parse_duration(s) {
            Ok(d) if d.as_secs() >= 1 => Ok(Some(d)),
            Ok(_) => Err(ConfigError::invalid(
                KEY,
                "must be at least 1s (leave it out to make every answer no-store)",
            )),
            Err(e) => Err(ConfigError::invalid(KEY, e.to_string())),
        },
    }
}

/// `/a/b`: segments of unreserved characters, none empty or a dot segment (so the path is its
/// own canonical form and an exact match on the canonical path finds it).
fn plain_path(p: &str) -> bool {
    p.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
        assert!(!cidr("fd00::/8").contains(ip("fe80::1")));
        // An IPv4 client on a dual-stack socket.
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::1")));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for s in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
            "::/129",
            "x/8",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
        ] {
            assert!(Cidr::parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn off_by_default_and_trusting_loopback_only() {
        let c = external_auth(&RawExternalAuth::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.nginx_path, None);
        assert!(!c.envoy_grpc);
        assert!(
            c.trusted_peers
                .iter()
                .any(|b| b.contains([127, 0, 0, 1].into()))
        );
        assert!(
            c.trusted_peers
                .iter()
                .any(|b| b.contains("::1".parse().unwrap_or_else(|e| panic!("{e}"))))
        );
        assert!(
            !c.trusted_peers
                .iter()
                .any(|b| b.contains([10, 0, 0, 1].into()))
        );
    }
}
