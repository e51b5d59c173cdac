//! Cookies of the browser flow: reading the session and login cookies from `Cookie` headers,
//! removing them before a request goes upstream, and writing `Set-Cookie`.
//!
//! Security notes:
//! - Names are compared exactly when reading (RFC 6265), but removed in any ASCII case before
//!   forwarding, so no spelling of a Portcullis cookie reaches the upstream. Other cookies pass
//!   unchanged (joined into one `Cookie` header, as HTTP/1 upstreams need).
//! - Several cookies with the session name (cookie tossing from a sibling domain) are all
//!   candidates; only one that opens under our key is a session. With `Secure` and no
//!   `Domain` the name carries the `__Host-` prefix, which browsers refuse to set from
//!   anywhere but this host over https. Login cookies carry the prefix whenever the session
//!   cookie does: otherwise a sibling subdomain could toss a login cookie of its own sign-in
//!   (login CSRF: the victim's browser finishing the attacker's sign-in).
//! - Every cookie set here is `HttpOnly` and `SameSite=Lax`; `Secure` unless
//!   `sessions.cookie.secure` is false (local http only).

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

use crate::authn::oidc::login::{LOGIN_COOKIE_PREFIX, cookie_name_for};
use crate::config::CookieConfig;

/// How the flow's cookies are named and marked.
#[derive(Debug, Clone)]
pub struct CookieJar {
    /// The session cookie's effective name (with `__Host-` when it applies).
    pub name: String,
    /// Start of every login cookie's name: `__Host-portcullis_login_` when the session
    /// cookie has the `__Host-` prefix, else `portcullis_login_`.
    pub login_prefix: String,
    secure: bool,
    domain: Option<String>,
}

// === impl CookieJar ===

impl CookieJar {
    /// From `sessions.cookie`.
    pub fn from_config(c: &CookieConfig) -> Self {
        let prefixed = c.name.starts_with("__Host-") || c.name.starts_with("__Secure-");
        let name = if c.secure && c.domain.is_none() && !prefixed {
            format!("__Host-{}", c.name)
        } else {
            c.name.clone()
        };
        let login_prefix = if name.starts_with("__Host-") {
            format!("__Host-{LOGIN_COOKIE_PREFIX}")
        } else {
            LOGIN_COOKIE_PREFIX.to_string()
        };
        Self {
            name,
            login_prefix,
            secure: c.secure,
            domain: c.domain.clone(),
        }
    }

    /// The login cookie's name for `state` (see `oidc::login::cookie_name_for`), with the
    /// `__Host-` prefix when the session cookie has it.
    pub fn login_name(&self, state: &str) -> String {
        let base = cookie_name_for(state);
        match self.login_prefix.strip_suffix(LOGIN_COOKIE_PREFIX) {
            Some(host) if !host.is_empty() => format!("{host}{base}"),
            _ => base,
        }
    }

    /// `Set-Cookie` for a cookie `name=value` living `max_age` seconds on `path`.
    pub fn set(&self, name: &str, value: &str, path: &str, max_age: u64) -> Option<HeaderValue> {
        let mut s =
            format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
        self.attributes(&mut s, name);
        HeaderValue::from_str(&s).ok()
    }

    /// `Set-Cookie` that removes cookie `name` on `path`.
    pub fn clear(&self, name: &str, path: &str) -> Option<HeaderValue> {
        let mut s = format!(
            "{name}=; Path={path}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
        );
        self.attributes(&mut s, name);
        HeaderValue::from_str(&s).ok()
    }

    fn attributes(&self, s: &mut String, name: &str) {
        if self.secure || name.starts_with("__Host-") || name.starts_with("__Secure-") {
            s.push_str("; Secure");
        }
        // `__Host-` cookies must not have a Domain.
        if let Some(d) = self
            .domain
            .as_deref()
            .filter(|_| !name.starts_with("__Host-"))
        {
            s.push_str("; Domain=");
            s.push_str(d);
        }
    }

    /// Whether `name` is one of Portcullis's cookies, in any ASCII case, with or without a
    /// `__Host-` / `__Secure-` prefix.
    fn is_ours(&self, name: &str) -> bool {
        let base = strip_prefix(&self.name);
        let name = strip_prefix(name);
        name.eq_ignore_ascii_case(base)
            || name
                .get(..LOGIN_COOKIE_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(LOGIN_COOKIE_PREFIX))
    }

    /// Removes Portcullis's cookies from the request; other cookies stay, in one header.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let mut values = headers.get_all(COOKIE).iter();
        let (Some(first), rest) = (values.next(), values.next()) else {
            return;
        };
        // Fast path: one header without any of our names in it.
        if rest.is_none() {
            let lower = first.as_bytes().to_ascii_lowercase();
            let ours = [
                strip_prefix(&self.name).as_bytes(),
                LOGIN_COOKIE_PREFIX.as_bytes(),
            ];
            if !ours
                .iter()
                .any(|n| contains(&lower, &n.to_ascii_lowercase()))
            {
                return;
            }
        }
        let mut kept: Vec<&[u8]> = Vec::new();
        for v in headers.get_all(COOKIE) {
            for pair in v.as_bytes().split(|b| *b == b';') {
                let pair = trim(pair);
                if pair.is_empty() {
                    continue;
                }
                let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
                let name = std::str::from_utf8(trim(name)).unwrap_or_default();
                if !self.is_ours(name) {
                    kept.push(pair);
                }
            }
        }
        let joined = kept.join(&b"; "[..]);
        headers.remove(COOKIE);
        if !joined.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&joined)
        {
            headers.insert(COOKIE, v);
        }
    }
}

/// Every value of cookie `name` (exact name) in the request's `Cookie` headers, in order.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Names of every cookie in the request that starts with `prefix` (exact case).
pub fn names_with_prefix<'a>(headers: &'a HeaderMap, prefix: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('=').map(|(n, _)| n.trim()))
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `name` without a `__Host-` or `__Secure-` prefix (any case).
fn strip_prefix(name: &str) -> &str {
    for p in ["__host-", "__secure-"] {
        if name
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
        {
            return &name[p.len()..];
        }
    }
    name
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jar(secure: bool) -> CookieJar {
        CookieJar::from_config(&CookieConfig {
            name: "portcullis_session".into(),
            secure,
            domain: None,
            keys: Vec::new(),
        })
    }

    fn stripped(jar: &CookieJar, cookies: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        jar.strip(&mut h);
        assert!(h.get_all(COOKIE).iter().count() <= 1);
        h.get(COOKIE).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn host_prefix_with_secure_and_no_domain() {
        assert_eq!(jar(true).name, "__Host-portcullis_session");
        assert_eq!(jar(false).name, "portcullis_session");
        let set = jar(true)
            .set("__Host-portcullis_session", "v", "/", 60)
            .unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.contains("; Secure") && set.contains("HttpOnly") && set.contains("SameSite=Lax")
        );
        assert!(!set.contains("Domain"));
    }

    #[test]
    fn login_cookies_get_the_host_prefix_with_the_session_cookie() {
        let j = jar(true);
        assert_eq!(j.login_prefix, "__Host-portcullis_login_");
        let name = j.login_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(name, "__Host-portcullis_login_abcdefghijklmnop");
        let set = j.set(&name, "v", "/", 600).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.contains("; Secure") && set.contains("Path=/") && !set.contains("Domain"));
        // Without the prefix on the session cookie (http, or a Domain), none on login cookies.
        let plain = jar(false);
        assert_eq!(plain.login_name("abc"), "portcullis_login_abc");
        let domain = CookieJar::from_config(&CookieConfig {
            name: "portcullis_session".into(),
            secure: true,
            domain: Some("example.com".into()),
            keys: Vec::new(),
        });
        assert_eq!(domain.login_prefix, "portcullis_login_");
        // A configured __Host- name counts too.
        let named = CookieJar::from_config(&CookieConfig {
            name: "__Host-s".into(),
            secure: true,
            domain: None,
            keys: Vec::new(),
        });
        assert_eq!(named.login_prefix, "__Host-portcullis_login_");
    }

    #[test]
    fn our_cookies_are_removed_in_every_spelling_and_others_pass() {
        let j = jar(true);
        assert_eq!(
            stripped(&j, &["a=1; __Host-portcullis_session=x; b=2"]).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            stripped(
                &j,
                &["__HOST-PORTCULLIS_SESSION=x", "portcullis_login_abc=y; c=3"]
            )
            .as_deref(),
            Some("c=3")
        );
        assert_eq!(
            stripped(&j, &["portcullis_session=x ;  PORTCULLIS_LOGIN_q=1"]),
            None
        );
        assert_eq!(stripped(&j, &["a=1", "b=2"]).as_deref(), Some("a=1; b=2"));
        assert_eq!(stripped(&j, &["a=1"]).as_deref(), Some("a=1"));
        // A value that merely contains our name is not our cookie.
        assert_eq!(
            stripped(&j, &["x=portcullis_session"]).as_deref(),
            Some("x=portcullis_session")
        );
    }

    #[test]
    fn values_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("s=1; S=2; s = 3"));
        h.append(COOKIE, HeaderValue::from_static("s=\"4\""));
        assert_eq!(values(&h, "s").collect::<Vec<_>>(), ["1", "3", "4"]);
    }
}
