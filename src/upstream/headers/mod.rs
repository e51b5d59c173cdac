//! Header rewriting between client and upstream.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and must not be
//! forwarded: `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade` (except when an upgrade is being forwarded) and every
//! `Proxy-*` header.
//!
//! The client's copies of the headers Portcullis owns (identity headers and the like) are
//! removed on every route, and identity headers set from verified claims, in [`identity`].
//!
//! Security notes: unless `server.trust_forwarded_headers` is set, a client's
//! `X-Forwarded-*` and `Forwarded` headers are replaced, so an upstream can't be told a false
//! client address or scheme.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub mod identity;

/// `X-Forwarded-For`
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

const FIXED_HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// A set of header names compared the way CGI, WSGI, Rack and PHP see them: ASCII case is
/// ignored and `_` equals `-` (all of them map `X_Auth_User` and `X-Auth-User` to the same
/// `HTTP_X_AUTH_USER`). Entries ending in `*` are prefixes.
#[derive(Debug, Clone, Default)]
pub struct NameSet {
    /// Normalised (lowercase, `-` for `_`) full names.
    exact: Vec<Box<[u8]>>,
    /// Normalised prefixes, without the `*`.
    prefixes: Vec<Box<[u8]>>,
}

/// Removes hop-by-hop headers. When `upgrade` is true, `Connection: upgrade` and the
/// `Upgrade` value are kept so the upgrade can be forwarded.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    remove_hop_by_hop_except(headers, upgrade, |_| false);
}

/// Like [`remove_hop_by_hop`], but a `Connection` token for which `keep` returns true removes
/// nothing: a client must not be able to make the proxy drop a header it reads or sets (such
/// as `Authorization` or an identity header) by naming it in `Connection`. `keep` gets the
/// token trimmed, as sent (any case).
pub fn remove_hop_by_hop_except(
    headers: &mut HeaderMap,
    upgrade: bool,
    keep: impl Fn(&str) -> bool,
) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Headers named by Connection are hop-by-hop too. The values are cheap clones (shared
    // bytes); removing by `&str` looks a name up without allocating a `HeaderName`, and a
    // token that is not a valid header name removes nothing.
    if headers.contains_key(header::CONNECTION) {
        let values: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for token in values
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            if !keep(token) {
                headers.remove(token);
            }
        }
    }
    for name in FIXED_HOP_BY_HOP {
        headers.remove(name);
    }
    // Proxy-Authorization, Proxy-Authenticate and any other Proxy-* header.
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
}

/// True when the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The client's address as an `X-Forwarded-For` value: made once per connection
/// (`ConnInfo::forwarded_for`), so a request sets the header without formatting or
/// allocating.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip_text(client)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`; `client` is the client's address
/// ([`client_value`]).
///
/// Trusted: the client's address is appended to an existing `X-Forwarded-For`, and existing
/// `-Proto`/`-Host` are kept. Untrusted: all three (and `Forwarded`) are replaced.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    trust: bool,
) {
    let existing_for = if trust {
        let all: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if all.is_empty() {
            None
        } else {
            Some(all.join(", "))
        }
    } else {
        headers.remove(&FORWARDED);
        None
    };
    match existing_for {
        // Appending is the trusted front proxy's case: formatted, from the String itself.
        Some(prev) => {
            let ip = client.to_str().unwrap_or("unknown");
            if let Ok(v) = HeaderValue::try_from(format!("{prev}, {ip}")) {
                headers.insert(&X_FORWARDED_FOR, v);
            }
        }
        None => {
            headers.insert(&X_FORWARDED_FOR, client.clone());
        }
    }
    if !(trust && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trust && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

// === impl NameSet ===

impl NameSet {
    /// A set from names and prefixes ending in `*` (any case, `-` or `_`).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = Self::default();
        for n in names {
            match n.strip_suffix('*') {
                Some(prefix) => set.prefixes.push(normalise(prefix)),
                None => set.exact.push(normalise(n)),
            }
        }
        set
    }

    /// Whether `name` (any case, `-` or `_`) is in the set. Allocates nothing.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.exact
            .iter()
            .any(|n| n.len() == name.len() && same_normalised(name, n))
            || self
                .prefixes
                .iter()
                .any(|p| name.len() >= p.len() && same_normalised(&name[..p.len()], p))
    }

    /// The full names in the set (lower case, `-` spelling); prefixes are not names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.exact
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok())
    }
}

fn normalise(name: &str) -> Box<[u8]> {
    name.bytes().map(normalise_byte).collect()
}

fn normalise_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `raw` (not normalised) equals `normalised` once normalised; same length assumed.
fn same_normalised(raw: &[u8], normalised: &[u8]) -> bool {
    raw.iter()
        .zip(normalised)
        .all(|(&r, &n)| normalise_byte(r) == n)
}

/// The client address as text; IPv4 without going through `fmt` (once per request).
fn ip_text(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "y"),
            ("x-keep", "z"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "z");
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([10, 9, 99, 100]),
            IpAddr::from([255, 250, 109, 110]),
            IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        ] {
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn connection_tokens_any_case_and_invalid() {
        let mut h = map(&[
            ("connection", "X-Custom, , bad name, close"),
            ("connection", "x-other"),
            ("x-custom", "1"),
            ("x-other", "2"),
            ("x-keep", "3"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "3");
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[
            ("connection", "Upgrade, x-custom"),
            ("upgrade", "websocket"),
            ("x-custom", "1"),
        ]);
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-custom"));
    }

    #[test]
    fn forwarded_untrusted_replaces() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let host = HeaderValue::from_static("app.example.com");
        set_forwarded(
            &mut h,
            &client_value("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            "http",
            Some(&host),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn forwarded_trusted_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            &client_value(IpAddr::from([10, 0, 0, 1])),
            "http",
            None,
            true,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
