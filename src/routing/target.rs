//! The request target and `Host`, checked and put into one canonical form before routing
//! (RFC 9112 section 3.2, RFC 9113 section 8.3.1, RFC 3986 section 3.2.2).
//!
//! - The method must be an upper-case token: only the bytes `A`-`Z`, `-` and `_` (nginx's
//!   rule; no lower case, no digits). Routes match methods byte for byte, while common
//!   frameworks upper-case what they read (Django and Werkzeug take `post` for POST): a
//!   lower-case spelling would pass a route's method rule as one method and reach the
//!   application as another. Refused with 400 on HTTP/1 and HTTP/2, for every path.
//!   (CONNECT, upper-case, is refused by the handler with 405: [`crate::proxy`].)
//! - The host comes from the request target's authority when it has one (absolute-form
//!   `GET http://app.example.com/x HTTP/1.1`, or HTTP/2's `:authority`), else from `Host`.
//!   An absolute-form target's authority replaces `Host` (RFC 9112 section 3.2.2); on HTTP/2 a
//!   `Host` that names another host than `:authority` is refused.
//! - `Host` must be one header with a valid `host[:port]`: a reg-name of letters, digits, `-`,
//!   `.`, `_`, `~` (no empty label), a dotted IPv4 address, or a bracketed IPv6 address, and a
//!   port of 1-5 digits from 1 to 65535 without a leading zero (`0`, `00`, `080` are
//!   refused). HTTP/1.1 without `Host` is refused.
//! - IPv4 spellings: as the WHATWG URL host parser decides, a host whose last label is a
//!   number (all decimal digits, `0x` followed by hex digits or nothing, or octal-looking
//!   `0…`) is an IPv4 address, and resolvers (`inet_aton`) and browsers read `0x7f.1`,
//!   `0177.0.0.1`, `2130706433` or `127.1` as 127.0.0.1. Such a host must be a canonical
//!   dotted-decimal address (four decimal octets 0-255, no leading zeros); every other
//!   spelling is refused, so routing and the upstream never see one address under two
//!   names. Hosts whose last label is not a number (`1a.example.com`, `x123`, `app.0xg`)
//!   are names; `example.0x` and `example.08` end in a number and are refused.
//! - The host is lowercased and a trailing dot removed; that form is what routing matches
//!   (without the port) and what the upstream receives as `Host` and `X-Forwarded-Host`.
//! - The path is normalised by [`super::normalize`].
//! - `Upgrade: h2c` is removed (with `HTTP2-Settings`): an upstream that switched to HTTP/2
//!   on a forwarded connection would take requests that Portcullis never routed (h2c
//!   smuggling). Other upgrades, WebSocket among them, pass.
//!
//! Security notes: all of this happens before routing, so a route is never chosen from a
//! spelling the upstream reads differently; every failure is a 400 ([`TargetError`]).

use std::net::Ipv6Addr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Version};

use super::normalize::{PathError, normalize};
use crate::config::PathNormalization;

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Why a request target or `Host` is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The path cannot be put into one canonical form.
    #[error(transparent)]
    Path(#[from] PathError),
    /// An HTTP/1.1 request without `Host`.
    #[error("request has no Host header")]
    MissingHost,
    /// More than one `Host` header.
    #[error("request has more than one Host header")]
    MultipleHosts,
    /// `Host` (or the target's authority) is not a valid `host[:port]`.
    #[error("Host is not a valid host and port")]
    InvalidHost,
    /// On HTTP/2, `Host` names another host than `:authority`.
    #[error("Host does not match :authority")]
    HostConflict,
    /// The method is not an upper-case token (`A`-`Z`, `-`, `_`).
    #[error("method is not an upper-case token")]
    BadMethod,
    /// Asterisk-form, authority-form (CONNECT) or a scheme other than http/https.
    #[error("request target form is not supported")]
    Unsupported,
}

/// A checked request target: what routing matches and what the upstream receives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Canonical `host[:port]`, for `Host` and `X-Forwarded-Host`; `None` on HTTP/1.0 without
    /// `Host`.
    authority: Option<HeaderValue>,
    /// Length of the host part of `authority`.
    host_len: usize,
    /// The forwarded path and the query.
    path_and_query: PathAndQuery,
    /// The route form, when it differs from the forwarded path.
    route_path: Option<Box<str>>,
}

// === impl Target ===

impl Target {
    /// The host routing matches: lowercase, no trailing dot, no port; empty when none.
    pub fn host(&self) -> &str {
        self.authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.get(..self.host_len))
            .unwrap_or("")
    }

    /// The canonical `host[:port]` the upstream receives as `Host`.
    pub fn authority(&self) -> Option<&HeaderValue> {
        self.authority.as_ref()
    }

    /// The path routing matches (the route form of [`super::normalize::NormalizedPath`]).
    pub fn path(&self) -> &str {
        self.route_path
            .as_deref()
            .unwrap_or_else(|| self.path_and_query.path())
    }

    /// The path and query the upstream receives.
    pub fn path_and_query(&self) -> &PathAndQuery {
        &self.path_and_query
    }
}

/// Checks the request target and `Host` of `parts`, removes an `h2c` upgrade, and returns the
/// canonical target.
pub fn canonicalize(parts: &mut Parts, opts: &PathNormalization) -> Result<Target, TargetError> {
    if !method_is_upper_token(&parts.method) {
        return Err(TargetError::BadMethod);
    }
    strip_h2c(&mut parts.headers);
    let (authority, host_len) = authority(parts)?;
    let uri = &parts.uri;
    let path = match uri.path() {
        // Absolute-form with an empty path means `/` (RFC 9112 section 3.2.2).
        "" if uri.authority().is_some() => "/",
        p => p,
    };
    if path == "*" {
        return Err(TargetError::Unsupported);
    }
    let n = normalize(path, opts)?;
    let path_and_query = match (n.unchanged(), uri.path_and_query()) {
        (true, Some(pq)) if pq.path() == path && pq.as_str().starts_with('/') => pq.clone(),
        _ => {
            let mut s = n.forward().to_string();
            if let Some(q) = uri.query() {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::try_from(s).map_err(|_| TargetError::Path(PathError::BadChar))?
        }
    };
    let route_path = (n.route() != n.forward()).then(|| Box::from(n.route()));
    Ok(Target {
        authority,
        host_len,
        path_and_query,
        route_path,
    })
}

/// Whether `method` is spelled only with `A`-`Z`, `-` and `_` (nginx accepts the same bytes).
/// A lower-case method would be matched by routes as one method and read by frameworks that
/// upper-case it as another; digits appear in no registered method.
pub fn method_is_upper_token(method: &Method) -> bool {
    method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// The canonical authority and the length of its host part.
fn authority(parts: &Parts) -> Result<(Option<HeaderValue>, usize), TargetError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::MultipleHosts);
    }
    // Host is checked even when the target's authority replaces it (RFC 9112 section 3.2).
    let from_header = host_header
        .map(|h| canonical_authority(h.as_bytes(), Some(h)))
        .transpose()?;
    let Some(target) = parts.uri.authority() else {
        if parts.uri.scheme().is_some() {
            return Err(TargetError::Unsupported);
        }
        return match from_header {
            Some((v, len)) => Ok((Some(v), len)),
            None if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 => {
                Ok((None, 0))
            }
            None => Err(TargetError::MissingHost),
        };
    };
    // Authority-form (CONNECT) has no scheme; only http and https targets are proxied.
    if !matches!(parts.uri.scheme_str(), Some("http" | "https")) {
        return Err(TargetError::Unsupported);
    }
    let (v, len) = canonical_authority(target.as_str().as_bytes(), None)?;
    if parts.version == Version::HTTP_2 {
        if let Some((h, hlen)) = &from_header
            && h.as_bytes().get(..*hlen) != v.as_bytes().get(..len)
        {
            return Err(TargetError::HostConflict);
        }
    } else if from_header.is_none() && parts.version == Version::HTTP_11 {
        return Err(TargetError::MissingHost);
    }
    Ok((Some(v), len))
}

/// Checks `host[:port]` and returns it lowercased without a trailing dot, with the length of
/// the host part. `original` is reused when nothing changes.
fn canonical_authority(
    b: &[u8],
    original: Option<&HeaderValue>,
) -> Result<(HeaderValue, usize), TargetError> {
    let (host, port) = if b.first() == Some(&b'[') {
        let end = b
            .iter()
            .position(|&c| c == b']')
            .ok_or(TargetError::InvalidHost)?;
        let inner = std::str::from_utf8(&b[1..end]).map_err(|_| TargetError::InvalidHost)?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| TargetError::InvalidHost)?;
        let rest = &b[end + 1..];
        let port = match rest {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return Err(TargetError::InvalidHost),
        };
        (&b[..=end], port)
    } else {
        match b.iter().position(|&c| c == b':') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        }
    };
    if let Some(p) = port {
        // No leading zero: `0` is no port, and `080` is a spelling of 80 some parsers
        // read as octal.
        let valid = (1..=5).contains(&p.len())
            && p.first() != Some(&b'0')
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|n| n <= 65535);
        if !valid {
            return Err(TargetError::InvalidHost);
        }
    }
    let host = if host.first() == Some(&b'[') {
        host
    } else {
        reg_name_or_ipv4(host)?
    };
    let changed = host.len() != b.len() - port.map_or(0, |p| p.len() + 1)
        || host.iter().any(u8::is_ascii_uppercase);
    if !changed && let Some(v) = original {
        return Ok((v.clone(), host.len()));
    }
    let mut s = String::with_capacity(b.len());
    for &c in host {
        s.push(char::from(c.to_ascii_lowercase()));
    }
    let len = s.len();
    if let Some(p) = port {
        s.push(':');
        for &c in p {
            s.push(char::from(c));
        }
    }
    let v = HeaderValue::try_from(s).map_err(|_| TargetError::InvalidHost)?;
    Ok((v, len))
}

/// A reg-name (letters, digits, `-`, `.`, `_`, `~`; no empty label) or dotted IPv4 address,
/// without its one trailing dot.
fn reg_name_or_ipv4(host: &[u8]) -> Result<&[u8], TargetError> {
    let host = host.strip_suffix(b".").unwrap_or(host);
    let chars_ok = host
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'));
    if host.is_empty() || !chars_ok || host.split(|&c| c == b'.').any(<[u8]>::is_empty) {
        return Err(TargetError::InvalidHost);
    }
    // A host ending in a number is an IPv4 address (WHATWG): only the canonical spelling,
    // never a shorthand (`127.1`), hex, octal, a single number or an out-of-range octet.
    if ends_in_number(host) && !is_canonical_ipv4(host) {
        return Err(TargetError::InvalidHost);
    }
    Ok(host)
}

/// The WHATWG URL "ends in a number" check on a host without its trailing dot: its last label
/// is all decimal digits, or parses as an IPv4 number (`0x` + hex digits, possibly none;
/// `0` + octal digits).
fn ends_in_number(host: &[u8]) -> bool {
    let last = host.rsplit(|&c| c == b'.').next().unwrap_or_default();
    if !last.is_empty() && last.iter().all(u8::is_ascii_digit) {
        return true;
    }
    match last {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        [b'0', oct @ ..] => oct.iter().all(|c| (b'0'..=b'7').contains(c)),
        _ => false,
    }
}

/// Four decimal octets, each 0-255 without leading zeros: the one spelling of an IPv4 address
/// that every parser reads the same way.
fn is_canonical_ipv4(host: &[u8]) -> bool {
    let mut n = 0;
    let octets_ok = host.split(|&c| c == b'.').all(|o| {
        n += 1;
        let digits = !o.is_empty() && o.len() <= 3 && o.iter().all(u8::is_ascii_digit);
        let no_leading_zero = o.len() == 1 || o.first() != Some(&b'0');
        digits
            && no_leading_zero
            && std::str::from_utf8(o)
                .ok()
                .and_then(|o| o.parse::<u16>().ok())
                .is_some_and(|v| v <= 255)
    });
    n == 4 && octets_ok
}

/// Removes the `h2c` token from `Upgrade` (the header goes when nothing is left) and
/// `HTTP2-Settings`.
fn strip_h2c(headers: &mut HeaderMap) {
    if !headers.contains_key(header::UPGRADE) {
        return;
    }
    let is_h2c = |t: &str| {
        let name = t.trim().split('/').next().unwrap_or("");
        name.eq_ignore_ascii_case("h2c")
    };
    let values: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    let any_h2c = values
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).split(',').any(is_h2c));
    if !any_h2c {
        return;
    }
    let kept: Vec<String> = values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty() && !is_h2c(t))
        .collect();
    headers.remove(header::UPGRADE);
    headers.remove(&HTTP2_SETTINGS);
    if let Ok(v) = HeaderValue::try_from(kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::UPGRADE, v);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    fn host_of(req: http::request::Builder) -> Result<(String, Option<String>), TargetError> {
        let mut p = parts(req);
        canonicalize(&mut p, &PathNormalization::default()).map(|t| {
            (
                t.host().to_string(),
                t.authority().map(|a| a.to_str().unwrap().to_string()),
            )
        })
    }

    fn get(host: &str) -> http::request::Builder {
        http::Request::get("/x").header("host", host)
    }

    #[test]
    fn hosts_are_canonical() {
        for (h, host, auth) in [
            ("app.example.com", "app.example.com", "app.example.com"),
            ("APP.Example.COM.", "app.example.com", "app.example.com"),
            (
                "app.example.com.:8443",
                "app.example.com",
                "app.example.com:8443",
            ),
            ("10.0.0.1:80", "10.0.0.1", "10.0.0.1:80"),
            ("[::1]:8080", "[::1]", "[::1]:8080"),
            ("[FE80::1]", "[fe80::1]", "[fe80::1]"),
            ("my_host~1", "my_host~1", "my_host~1"),
            // Last label not a number: a name, not an IPv4 spelling.
            ("1a.example.com", "1a.example.com", "1a.example.com"),
            ("x123", "x123", "x123"),
            ("app.0xg", "app.0xg", "app.0xg"),
            ("app.0a", "app.0a", "app.0a"),
            ("0x7f.example", "0x7f.example", "0x7f.example"),
            ("127.0.0.1.nip", "127.0.0.1.nip", "127.0.0.1.nip"),
            // Canonical dotted decimal, a trailing dot removed.
            ("0.0.0.0", "0.0.0.0", "0.0.0.0"),
            ("255.255.255.255.", "255.255.255.255", "255.255.255.255"),
            ("127.0.0.1:8443", "127.0.0.1", "127.0.0.1:8443"),
            // Ports: 1-65535, no leading zero.
            ("a:1", "a", "a:1"),
            ("a:80", "a", "a:80"),
            ("a:8443", "a", "a:8443"),
            ("a:65535", "a", "a:65535"),
        ] {
            assert_eq!(
                host_of(get(h)),
                Ok((host.to_string(), Some(auth.to_string()))),
                "{h}"
            );
        }
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for h in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a@b",
            "user@a",
            "a/b",
            "a\\b",
            "a:",
            "a:x",
            "a:65536",
            "a:123456",
            "a:1:2",
            "[::1",
            "[zz]",
            "[::1]x",
            "::1",
            "127.1",
            "300.1.1.1",
            "a,b",
            "a%41",
            "a;b",
            "a\"b",
            // Every IPv4 spelling but the canonical one (WHATWG: the last label is a number).
            "0x7f.1",
            "0x7f.0.0.1",
            "0X7F.0.0.1",
            "0177.0.0.1",
            "0x7f000001",
            "017700000001",
            "2130706433",
            "127.0.0.01",
            "127.00.0.1",
            "1.2.3.0x4",
            "1.2.3.04",
            "127.0.1",
            "1.2.3.4.5",
            "1.2.3.256",
            "1.2.3.1000",
            "example.0x",
            "example.0X",
            "example.08",
            "example.0x7f",
            "example.123",
            "0x",
            "00",
            // Ports: zero, and leading zeros.
            "a:0",
            "a:00",
            "a:080",
            "a:0443",
            "127.0.0.1:0",
            "[::1]:0",
            "[::1]:080",
        ] {
            assert_eq!(host_of(get(h)), Err(TargetError::InvalidHost), "{h:?}");
        }
        let two = http::Request::get("/x")
            .header("host", "a")
            .header("host", "b");
        assert_eq!(host_of(two), Err(TargetError::MultipleHosts));
        assert_eq!(
            host_of(http::Request::get("/x")),
            Err(TargetError::MissingHost)
        );
        let old = http::Request::get("/x").version(Version::HTTP_10);
        assert_eq!(host_of(old), Ok((String::new(), None)));
    }

    #[test]
    fn absolute_form_authority_wins() {
        let req = http::Request::get("http://App.example.com./admin?q=1").header("host", "evil");
        let mut p = parts(req);
        let t = canonicalize(&mut p, &PathNormalization::default()).unwrap();
        assert_eq!(t.host(), "app.example.com");
        assert_eq!(t.authority().unwrap(), "app.example.com");
        assert_eq!(t.path_and_query().as_str(), "/admin?q=1");
        // Empty path in absolute-form is `/`; userinfo and other schemes are refused.
        let req = http::Request::get("http://app.example.com").header("host", "x");
        assert_eq!(
            canonicalize(&mut parts(req), &PathNormalization::default())
                .unwrap()
                .path(),
            "/"
        );
        let req = http::Request::get("http://u@app.example.com/").header("host", "x");
        assert_eq!(host_of(req), Err(TargetError::InvalidHost));
        let req = http::Request::get("ftp://app.example.com/").header("host", "x");
        assert_eq!(host_of(req), Err(TargetError::Unsupported));
        // The target's authority follows the same host rules as Host.
        for bad in ["http://0x7f.1/", "http://0177.0.0.1/", "http://a:080/"] {
            let req = http::Request::get(bad).header("host", "x");
            assert_eq!(host_of(req), Err(TargetError::InvalidHost), "{bad}");
        }
        // Host is checked even when the target's authority replaces it.
        let req = http::Request::get("http://a/").header("host", "2130706433");
        assert_eq!(host_of(req), Err(TargetError::InvalidHost));
        // HTTP/2: a Host naming another host is a conflict; the same host is fine.
        let req = http::Request::get("https://app.example.com/")
            .version(Version::HTTP_2)
            .header("host", "evil.example.com");
        assert_eq!(host_of(req), Err(TargetError::HostConflict));
        let req = http::Request::get("https://app.example.com/")
            .version(Version::HTTP_2)
            .header("host", "APP.example.com:443");
        assert_eq!(
            host_of(req),
            Ok(("app.example.com".into(), Some("app.example.com".into())))
        );
    }

    #[test]
    fn methods_must_be_upper_case_tokens() {
        let check = |m: &str, version: Version| {
            let req = http::Request::builder()
                .method(Method::from_bytes(m.as_bytes()).unwrap())
                .uri("/x")
                .version(version)
                .header("host", "a");
            host_of(req).map(|_| ())
        };
        for version in [Version::HTTP_11, Version::HTTP_2] {
            for ok in [
                "GET", "POST", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "M-SEARCH", "X_CUSTOM",
            ] {
                assert_eq!(check(ok, version), Ok(()), "{ok}");
            }
            for bad in [
                "get", "post", "Post", "pOST", "delete", "connect", "GET1", "H2", "GE.T", "GE!T",
                "G~T", "GE'T", "GET*", "GE+T", "GE|T", "GE`T", "GE^T", "GE#T", "GE$T", "GE%T",
                "GE&T",
            ] {
                assert_eq!(
                    check(bad, version),
                    Err(TargetError::BadMethod),
                    "{bad} on {version:?}"
                );
            }
        }
    }

    #[test]
    fn h2c_upgrade_is_removed_websocket_kept() {
        let req = http::Request::get("/x")
            .header("host", "a")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "H2C")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA");
        let mut p = parts(req);
        canonicalize(&mut p, &PathNormalization::default()).unwrap();
        assert!(p.headers.get("upgrade").is_none());
        assert!(p.headers.get("http2-settings").is_none());
        let req = http::Request::get("/x")
            .header("host", "a")
            .header("upgrade", "h2c, websocket");
        let mut p = parts(req);
        canonicalize(&mut p, &PathNormalization::default()).unwrap();
        assert_eq!(p.headers.get("upgrade").unwrap(), "websocket");
        let req = http::Request::get("/x")
            .header("host", "a")
            .header("upgrade", "websocket");
        let mut p = parts(req);
        canonicalize(&mut p, &PathNormalization::default()).unwrap();
        assert_eq!(p.headers.get("upgrade").unwrap(), "websocket");
    }
}
