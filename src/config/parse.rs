//! Parse helpers shared by every section: durations, socket addresses, required strings,
//! header-name patterns and URL checks. Each error names the key path it was given.
//!
//! Security notes: URLs for IdPs must be https, except on loopback hosts
//! ([`idp_url_allowed`]); [`check_authority`] refuses user info and ports that would fail only
//! at the first request.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Uri};

use super::{ConfigError, parse_duration};

/// A duration at `key`: `default` when absent; zero is refused.
pub(super) fn duration(
    key: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration_or_zero(key, value, default)?;
    if value.is_some() && d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// A duration at `key`: `default` when absent; zero allowed (a leeway or a grace period).
pub(super) fn duration_or_zero(
    key: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|p| ConfigError::invalid(key, p.to_string())),
    }
}

/// An IP address and port at `key`.
pub(super) fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("\"{value}\" is not an IP address and port (e.g. \"0.0.0.0:8080\")"),
        )
    })
}

/// The value at `key`, which must be present and not blank.
pub(super) fn required<'a>(key: &str, value: &'a Option<String>) -> Result<&'a str, ConfigError> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ConfigError::invalid(key, "is required"))
}

/// A list of header names, or prefixes ending in `*` (`key[i]` names a bad entry).
pub(super) fn header_patterns(key: &str, list: &[String]) -> Result<(), ConfigError> {
    for (i, s) in list.iter().enumerate() {
        let name = s.strip_suffix('*').unwrap_or(s);
        if name.is_empty() || HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("\"{s}\" is not a header name or prefix ending in *"),
            ));
        }
    }
    Ok(())
}

/// Checks the authority of an absolute URL: a host, no user name or password, and a port (when
/// written) that is a number from 1 to 65535. `http::Uri` accepts `host:abc`, `host:99999` and
/// `user@host`; each would fail only later, at the first request.
pub(super) fn check_authority(key: &str, value: &str, uri: &Uri) -> Result<(), ConfigError> {
    let Some(authority) = uri.authority() else {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" has no host"),
        ));
    };
    let a = authority.as_str();
    if a.contains('@') {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" must not contain a user name or password"),
        ));
    }
    // After an IPv6 literal's `]`, or after the last `:` of a name or IPv4 address.
    let (host, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').map(Some).unwrap_or(None)),
            None => ("", None),
        },
        None => match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    if host.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" has no host"),
        ));
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !ok {
            return Err(ConfigError::invalid(
                key,
                format!("\"{value}\" has a port that is not a number from 1 to 65535"),
            ));
        }
    }
    Ok(())
}

/// Whether `uri` may be used to reach an IdP: https, or http on a loopback host.
pub fn idp_url_allowed(uri: &Uri) -> bool {
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => match uri.host() {
            Some("localhost") => true,
            Some(h) => h
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

/// A URL at `key` for calling an IdP: a valid authority, no fragment, https (http on
/// loopback only).
pub(super) fn idp_url(key: &str, value: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("\"{value}\" is not a URL")))?;
    check_authority(key, value, &uri)?;
    if value.contains('#') {
        return Err(ConfigError::invalid(
            key,
            format!("\"{value}\" must not have a fragment"),
        ));
    }
    if !idp_url_allowed(&uri) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "\"{value}\" must use https:// (http:// is allowed only on loopback addresses)"
            ),
        ));
    }
    Ok(uri)
}
