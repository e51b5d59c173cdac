//! Where the browser may be sent after sign-in and sign-out: same-origin relative paths, and
//! absolute `http(s)` URLs on the hosts of `auth.allowed_redirect_domains` (none by default).
//!
//! Security notes (open redirects): a relative return target must start with exactly one `/`
//! and contain only visible ASCII (no spaces, tabs, newlines or other control characters,
//! which browsers strip, so `/\t/evil` would become `//evil`). Backslashes are refused
//! anywhere (browsers read `\` as `/`, so `/\evil` is `//evil`, another host). The same rules
//! are applied again after percent-decoding (up to three rounds), so `/%2F%2Fevil`, `/%5Cevil`
//! and `/%252F%252Fevil` are refused too. Scheme-relative URLs and `javascript:` never start
//! with a single `/`. An absolute target ([`RedirectPolicy`]) is accepted only as
//! `http(s)://HOST[:PORT]` followed by nothing or by `/`, `?` or `#` and the rest, all of it
//! visible ASCII without `\`; the authority holds no `@` (userinfo) and no `%`; HOST is a
//! host name of letters, digits, hyphens and dots (compared lower-cased, no trailing dot, no
//! IPv6 literal) that an entry names: exactly, or under a `.suffix` entry (never the suffix's
//! own domain, never a host that ends in a number: an IPv4 address matches only an exact
//! entry). The authority is parsed again with `http::Uri` and with the WHATWG URL parser
//! browsers implement (`url`), which must both find the same host and port, and the URL is sent rebuilt from what was checked (scheme and host lower-cased).
//! Anything refused becomes `/`; targets are at most [`MAX_RETURN_TARGET`] bytes. The one kept
//! in a login cookie is at most [`MAX_LOGIN_RETURN_TARGET`] bytes ([`login_return_target`]: a
//! longer one keeps only the part before its query, checked again, or becomes `/`), so three
//! pending login cookies stay far below the 8 KB request header limits of common servers and
//! proxies.

use super::form;
use crate::config::auth::is_host_name;
use crate::config::{AuthConfig, RedirectDomain};

/// Longest return target kept (longer ones become `/`).
pub const MAX_RETURN_TARGET: usize = 2048;

/// Longest return target kept in a login cookie.
pub const MAX_LOGIN_RETURN_TARGET: usize = 512;

/// Rounds of percent-decoding checked.
const DECODE_ROUNDS: usize = 3;

/// The hosts absolute return targets may name (`auth.allowed_redirect_domains`); the default
/// allows none, so only same-origin paths are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectPolicy {
    domains: Vec<RedirectDomain>,
}

// === impl RedirectPolicy ===

impl RedirectPolicy {
    /// A policy over `domains` (validated by the configuration).
    pub fn new(domains: Vec<RedirectDomain>) -> Self {
        Self { domains }
    }

    /// The policy of `auth.allowed_redirect_domains`.
    pub fn from_config(auth: &AuthConfig) -> Self {
        Self::new(auth.allowed_redirect_domains.clone())
    }

    /// Whether `host` (lower-case, no port) is one an entry names.
    pub fn allows_host(&self, host: &str) -> bool {
        self.domains.iter().any(|d| d.matches(host))
    }

    /// `candidate` rebuilt from its checked parts when it is an absolute URL this policy
    /// allows (see the module notes).
    fn absolute(&self, candidate: &str) -> Option<String> {
        if self.domains.is_empty()
            || candidate.len() > MAX_RETURN_TARGET
            || !candidate.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        {
            return None;
        }
        let (scheme, rest) = candidate.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains(['@', '%', '[', ']']) {
            return None;
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        if !is_host_name(&host) || !self.allows_host(&host) {
            return None;
        }
        let authority = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        // Two other parsers must see the same host and port: `http::Uri`, and the WHATWG URL
        // parser browsers implement (which also refuses what no browser would go to, such as
        // an `xn--` label that is not valid punycode).
        let rebuilt = format!("{scheme}://{authority}/");
        let uri: http::Uri = rebuilt.parse().ok()?;
        if uri.scheme_str() != Some(scheme.as_str())
            || uri.host() != Some(host.as_str())
            || uri.port_u16() != port
        {
            return None;
        }
        let url = url::Url::parse(&rebuilt).ok()?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        if url.scheme() != scheme
            || url.host_str() != Some(host.as_str())
            || url.port_or_known_default() != Some(port.unwrap_or(default_port))
        {
            return None;
        }
        Some(format!("{scheme}://{authority}{tail}"))
    }
}

/// A port: 1 to 5 digits, 1 to 65535.
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `candidate` when it is a safe same-origin relative path or an absolute URL that `policy`
/// allows (rebuilt from its checked parts), else `/`.
pub fn return_target(candidate: Option<&str>, policy: &RedirectPolicy) -> String {
    match candidate {
        Some(c) if is_safe_return_target(c) => c.to_string(),
        Some(c) => policy.absolute(c).unwrap_or_else(|| "/".to_string()),
        None => "/".to_string(),
    }
}

/// The return target a sign-in keeps in its login cookie: [`return_target`] of `candidate`,
/// and when that is longer than [`MAX_LOGIN_RETURN_TARGET`], the part before its query
/// (checked again), or `/` when that alone is too long. Never cut mid-path: a cut could land
/// on another page.
pub fn login_return_target(candidate: &str, policy: &RedirectPolicy) -> String {
    let target = return_target(Some(candidate), policy);
    if target.len() <= MAX_LOGIN_RETURN_TARGET {
        return target;
    }
    let path = target.split('?').next().unwrap_or("/");
    if path.len() <= MAX_LOGIN_RETURN_TARGET {
        return_target(Some(path), policy)
    } else {
        "/".to_string()
    }
}

/// Whether `candidate` is a same-origin relative path (see the module notes); absolute URLs
/// are [`RedirectPolicy`]'s.
pub fn is_safe_return_target(candidate: &str) -> bool {
    if candidate.len() > MAX_RETURN_TARGET || !safe_form(candidate) {
        return false;
    }
    let mut current = candidate.to_string();
    for _ in 0..DECODE_ROUNDS {
        if !current.contains('%') {
            return true;
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            return true;
        }
        if !safe_decoded(&decoded) {
            return false;
        }
        current = decoded;
    }
    // Still changing after several rounds: nobody needs that.
    !current.contains('%') || percent_decode(&current) == current
}

/// The raw form: one leading `/`, then visible ASCII without `\`.
fn safe_form(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && b.iter().all(|c| c.is_ascii_graphic() && *c != b'\\')
}

/// A decoded form: the same rules, but any byte may appear that a browser keeps as is.
fn safe_decoded(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !b.iter().any(|c| c.is_ascii_control() || *c == b'\\')
}

/// Percent-decoding only (a `+` in a path is not a space).
fn percent_decode(s: &str) -> String {
    form::decode(&s.replace('+', "%2B"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let none = RedirectPolicy::default();
        let long_ok = format!("/{}", "a".repeat(MAX_RETURN_TARGET - 1));
        let too_long = format!("/{}", "a".repeat(MAX_RETURN_TARGET));
        let accepted = [
            "/",
            "/app",
            "/app/page?x=1&y=%20z#frag",
            "/a/b/../c",
            "/@evil.example",
            "/javascript:alert(1)",
            "/path%2Fwith%2Fencoded%2Fslashes",
            "/%7Euser",
            "/a+b",
            "/a//b",
            long_ok.as_str(),
        ];
        for t in accepted {
            assert_eq!(return_target(Some(t), &none), t, "{t:?} should be accepted");
        }
        let refused = [
            "",
            "app",
            "//evil.example",
            "//evil.example/path",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "/a\\b",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%5cevil.example",
            "/%252F%252Fevil.example",
            "/%25252F%25252Fevil.example",
            "/%2525252F%2525252Fevil.example",
            "https://evil.example",
            "http://evil.example/",
            "HTTPS://evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "/%09/evil.example",
            "/%0A/evil.example",
            "/%0d%0aSet-Cookie:x=1",
            "/%00",
            "/a b",
            "/caf\u{e9}",
            "/\u{7f}",
            " /app",
            too_long.as_str(),
        ];
        for t in refused {
            assert_eq!(return_target(Some(t), &none), "/", "{t:?} should be refused");
        }
        assert_eq!(return_target(None, &none), "/");
    }

    #[test]
    fn login_targets_are_short() {
        let none = RedirectPolicy::default();
        assert_eq!(login_return_target("/app?x=1", &none), "/app?x=1");
        let query = format!("/app/page?q={}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&query, &none), "/app/page");
        let path = format!("/{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&path, &none), "/");
        let long_path = format!("{path}?x=1");
        assert_eq!(login_return_target(&long_path, &none), "/");
        let exact = format!("/{}", "a".repeat(MAX_LOGIN_RETURN_TARGET - 1));
        assert_eq!(login_return_target(&exact, &none), exact);
        assert_eq!(login_return_target("//evil.example", &none), "/");
        let evil = format!("//evil.example?{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&evil, &none), "/");
    }

    fn allowing(entries: &[&str]) -> RedirectPolicy {
        RedirectPolicy::new(
            entries
                .iter()
                .map(|e| match e.strip_prefix('.') {
                    Some(_) => RedirectDomain::Suffix(e.to_string()),
                    None => RedirectDomain::Exact(e.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn absolute_targets_only_on_allowed_hosts() {
        let policy = allowing(&[".example.com", "exact.test", "10.0.0.1"]);
        let too_long = format!("https://app.example.com/{}", "a".repeat(MAX_RETURN_TARGET));
        let long_ok = format!(
            "https://app.example.com/{}",
            "a".repeat(MAX_RETURN_TARGET - "https://app.example.com/".len())
        );
        // (candidate, what is sent)
        let accepted = [
            ("https://app.example.com/x", "https://app.example.com/x"),
            ("https://app.example.com", "https://app.example.com"),
            ("http://app.example.com/x?y=1#z", "http://app.example.com/x?y=1#z"),
            ("https://a.b.example.com:8443/", "https://a.b.example.com:8443/"),
            ("https://app.example.com:0443/", "https://app.example.com:443/"),
            ("HTTPS://APP.EXAMPLE.COM/Path", "https://app.example.com/Path"),
            ("https://app.example.com?q=1", "https://app.example.com?q=1"),
            ("https://app.example.com#frag", "https://app.example.com#frag"),
            // Query bytes a browser keeps (and `http::Uri` would not parse): found by CI.
            ("https://app.example.com?\"", "https://app.example.com?\""),
            ("https://app.example.com/a?{x}|y", "https://app.example.com/a?{x}|y"),
            ("https://app.example.com/%2F%2Fx", "https://app.example.com/%2F%2Fx"),
            ("https://xn--bcher-kva.example.com/", "https://xn--bcher-kva.example.com/"),
            ("https://exact.test/", "https://exact.test/"),
            ("https://10.0.0.1/", "https://10.0.0.1/"),
            (long_ok.as_str(), long_ok.as_str()),
            // Same-origin paths as before.
            ("/app?x=1", "/app?x=1"),
        ];
        for (t, want) in accepted {
            assert_eq!(return_target(Some(t), &policy), want, "{t:?} should be accepted");
        }
        let refused = [
            // Not listed.
            "https://evil.com/",
            "https://example.com/",
            "https://badexample.com/",
            "https://app.example.com.evil.com/",
            "https://example.com.evil.com/",
            "https://sub.exact.test/",
            "https://xn--80ak6aa92e.com/",
            "https://10.0.0.2/",
            "https://1.example.com.10.0.0.1/",
            // Userinfo, backslashes, what comes after # or ?.
            "https://evil.com\\@app.example.com",
            "https://evil.com\\.app.example.com/",
            "https://app.example.com\\@evil.com",
            "https://evil.com#@app.example.com",
            "https://evil.com?@app.example.com",
            "https://evil.com/@app.example.com",
            "https://app.example.com:443@evil.com",
            "https://app.example.com@evil.com",
            "https://user@app.example.com/",
            "https://user:pass@app.example.com/",
            "https://@app.example.com/",
            // Scheme forms.
            "//app.example.com",
            "//app.example.com/x",
            "https:app.example.com",
            "https:/app.example.com",
            "https:///app.example.com",
            "https:\\\\app.example.com",
            "ftp://app.example.com/",
            "javascript://app.example.com/%0Aalert(1)",
            "javascript:alert(1)",
            "data:text/html,https://app.example.com",
            " https://app.example.com/",
            "https ://app.example.com/",
            // Host spellings.
            "https://APP.EXAMPLE.COM./",
            "https://app.example.com./",
            "https://app..example.com/",
            "https://.example.com/",
            "https://-app.example.com/",
            "https://app%2eexample.com/",
            "https://app.example.com%2f@evil.com/",
            "https://%61pp.example.com/",
            "https://app.example.com:/",
            "https://app.example.com:0/",
            "https://app.example.com:65536/",
            "https://app.example.com:1x/",
            "https://app.example.com:443:443/",
            "https://[::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://0x0a.0.0.1/",
            "https://10.1/",
            "https://167772161/",
            "https://1.example.com.0x1/",
            "https://caf\u{e9}.example.com/",
            "https://app.example.com\u{3002}evil.com/",
            "https://app_1.example.com/",
            "https://xn--app.example.com/",
            // Whitespace and control characters anywhere.
            "https://app.example.com/a b",
            "https://app.exa\tmple.com/",
            "https://app.example.com/\n",
            "https://evil.com\t@app.example.com",
            "https:\t//app.example.com/",
            "https://app.example.com/\u{7f}",
            "https://app.example.com/\u{0}",
            too_long.as_str(),
        ];
        for t in refused {
            assert_eq!(return_target(Some(t), &policy), "/", "{t:?} should be refused");
        }
        // Without a policy nothing absolute is accepted.
        let none = RedirectPolicy::default();
        assert_eq!(return_target(Some("https://app.example.com/x"), &none), "/");
    }

    #[test]
    fn absolute_login_targets_are_short() {
        let policy = allowing(&[".example.com"]);
        let url = "https://app.example.com/page";
        assert_eq!(login_return_target(url, &policy), url);
        let query = format!("{url}?q={}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&query, &policy), url);
        let path = format!("{url}/{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&path, &policy), "/");
        let evil = format!("https://evil.com?{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&evil, &policy), "/");
    }

    /// Pieces attackers combine.
    const PIECES: [&str; 30] = [
        "https://", "http://", "HTTPS://", "//", "/", "\\", "@", ":", ":443", "#", "?", ".",
        "app.example.com", "APP.example.com", "example.com", "badexample.com", "evil.com",
        "exact.test", "10.0.0.1", "%2e", "%40", "%2F", "\t", "\n", " ", "xn--", "javascript:",
        "user", "[::1]", "0x",
    ];

    /// The host a browser finds in an absolute target: the WHATWG URL parser (`url`), which
    /// is independent of ours and, unlike `http::Uri`, accepts every query byte a browser
    /// does (`"`, `{`, `|`, ...), so an accepted `https://app.example.com?"` is judged by
    /// its host, not refused by a stricter request-target grammar.
    fn parsed_host(target: &str) -> Option<String> {
        let url = url::Url::parse(target).ok()?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return None;
        }
        Some(url.host_str()?.to_ascii_lowercase())
    }

    fn check_never_elsewhere(candidate: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let policy = allowing(&[".example.com", "exact.test", "10.0.0.1"]);
        let out = return_target(Some(candidate), &policy);
        if out.starts_with('/') {
            // Same-origin: exactly today's rule.
            proptest::prop_assert!(out == "/" || (out == candidate && is_safe_return_target(candidate)));
            proptest::prop_assert!(!out.starts_with("//") && !out.starts_with("/\\"));
            return Ok(());
        }
        proptest::prop_assert!(out.starts_with("https://") || out.starts_with("http://"), "{out:?}");
        proptest::prop_assert!(out.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
        let host = parsed_host(&out);
        proptest::prop_assert!(host.as_deref().is_some_and(|h| policy.allows_host(h)), "{candidate:?} -> {out:?}");
        // The candidate itself names that host too (only case and the port's zeros change).
        proptest::prop_assert_eq!(parsed_host(candidate), host);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn only_allowed_hosts_from_pieces(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..10)
        ) {
            check_never_elsewhere(&pieces.concat())?;
        }

        #[test]
        fn only_allowed_hosts_after_a_scheme_and_host(
            scheme in proptest::sample::select(vec!["https://", "http://", "HTTPS://", "//", "https:", ""]),
            host in proptest::sample::select(vec![
                "app.example.com", "APP.EXAMPLE.COM", "example.com", "badexample.com",
                "evil.com", "exact.test", "sub.exact.test", "10.0.0.1", "10.0.0.1.example.com",
            ]),
            rest in proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..6)
        ) {
            check_never_elsewhere(&format!("{scheme}{host}{}", rest.concat()))?;
        }

        #[test]
        fn only_allowed_hosts_from_any_string(s in proptest::prelude::any::<String>()) {
            check_never_elsewhere(&s)?;
            check_never_elsewhere(&format!("https://{s}"))?;
            check_never_elsewhere(&format!("https://app.example.com{s}"))?;
        }

        #[test]
        fn only_allowed_hosts_from_ascii(s in "[ -~\t\n]{0,60}") {
            check_never_elsewhere(&s)?;
            check_never_elsewhere(&format!("https://{s}"))?;
            check_never_elsewhere(&format!("https://app.example.com{s}"))?;
        }
    }
}
