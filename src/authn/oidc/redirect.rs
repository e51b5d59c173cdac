//! Where the browser may be sent after sign-in: only same-origin relative paths.
//!
//! Security notes (open redirects): a return target must start with exactly one `/` and
//! contain only visible ASCII (no spaces, tabs, newlines or other control characters, which
//! browsers strip, so `/\t/evil` would become `//evil`). Backslashes are refused anywhere
//! (browsers read `\` as `/`, so `/\evil` is `//evil`, another host). The same rules are applied
//! again after percent-decoding (up to three rounds), so `/%2F%2Fevil`, `/%5Cevil` and
//! `/%252F%252Fevil` are refused too. Absolute URLs, scheme-relative URLs and `javascript:`
//! never start with a single `/`. Anything refused becomes `/`; targets are at most
//! [`MAX_RETURN_TARGET`] bytes. The one kept in a login cookie is at most
//! [`MAX_LOGIN_RETURN_TARGET`] bytes ([`login_return_target`]: a longer one keeps only its
//! path, or becomes `/`), so three pending login cookies stay far below the 8 KB request
//! header limits of common servers and proxies.

use super::form;

/// Longest return target kept (longer ones become `/`).
pub const MAX_RETURN_TARGET: usize = 2048;

/// Longest return target kept in a login cookie.
pub const MAX_LOGIN_RETURN_TARGET: usize = 512;

/// Rounds of percent-decoding checked.
const DECODE_ROUNDS: usize = 3;

/// `candidate` when it is a safe same-origin relative path, else `/`.
pub fn return_target(candidate: Option<&str>) -> String {
    match candidate {
        Some(c) if is_safe_return_target(c) => c.to_string(),
        _ => "/".to_string(),
    }
}

/// The return target a sign-in keeps in its login cookie: [`return_target`] of `candidate`,
/// and when that is longer than [`MAX_LOGIN_RETURN_TARGET`], its path without the query
/// (checked again), or `/` when the path alone is too long. Never cut mid-path: a cut could
/// land on another page.
pub fn login_return_target(candidate: &str) -> String {
    let target = return_target(Some(candidate));
    if target.len() <= MAX_LOGIN_RETURN_TARGET {
        return target;
    }
    let path = target.split('?').next().unwrap_or("/");
    if path.len() <= MAX_LOGIN_RETURN_TARGET {
        return_target(Some(path))
    } else {
        "/".to_string()
    }
}

/// Whether `candidate` is a same-origin relative path (see the module notes).
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
            assert_eq!(return_target(Some(t)), t, "{t:?} should be accepted");
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
            assert_eq!(return_target(Some(t)), "/", "{t:?} should be refused");
        }
        assert_eq!(return_target(None), "/");
    }

    #[test]
    fn login_targets_are_short() {
        assert_eq!(login_return_target("/app?x=1"), "/app?x=1");
        let query = format!("/app/page?q={}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&query), "/app/page");
        let path = format!("/{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&path), "/");
        let long_path = format!("{path}?x=1");
        assert_eq!(login_return_target(&long_path), "/");
        let exact = format!("/{}", "a".repeat(MAX_LOGIN_RETURN_TARGET - 1));
        assert_eq!(login_return_target(&exact), exact);
        assert_eq!(login_return_target("//evil.example"), "/");
        let evil = format!("//evil.example?{}", "a".repeat(MAX_LOGIN_RETURN_TARGET));
        assert_eq!(login_return_target(&evil), "/");
    }
}
