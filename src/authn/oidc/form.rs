//! `application/x-www-form-urlencoded` encoding and decoding (token requests, authorization
//! URLs, the callback query).
//!
//! Security notes: encoding escapes every byte outside the unreserved set, so no value can
//! inject a parameter (`&`, `=`, `#`, `+`) or a header break. Decoding never fails: malformed
//! `%` escapes are kept literally and invalid UTF-8 is replaced, so a hostile query is at worst
//! a value that later checks refuse.

/// Percent-encodes `s` for a form value or query component (space as `%20`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0x0f));
        }
    }
    out
}

/// `k1=v1&k2=v2`, each part encoded.
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// Decodes one form component (`+` is a space).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(|h| unhex(*h)),
                bytes.get(i + 2).and_then(|l| unhex(*l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `k1=v1&k2=v2` into pairs, in order (empty parts skipped).
pub fn parse(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The first value of `name` in `pairs`.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn hex(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0x0f)])
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_reserved_and_unicode() {
        for s in ["a b&c=d+e#f%g/h?i", "é☃", "", "~-._", "\r\n\0"] {
            assert_eq!(decode(&encode(s)), s);
        }
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn parses_pairs_and_survives_garbage() {
        let p = parse("a=1&b=x+y&&c&d=%zz%4&e=%41");
        assert_eq!(get(&p, "a"), Some("1"));
        assert_eq!(get(&p, "b"), Some("x y"));
        assert_eq!(get(&p, "c"), Some(""));
        assert_eq!(get(&p, "d"), Some("%zz%4"));
        assert_eq!(get(&p, "e"), Some("A"));
        assert_eq!(get(&p, "f"), None);
        assert_eq!(decode("%FF"), "\u{FFFD}");
    }
}
