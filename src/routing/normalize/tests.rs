#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::routing::Router;

fn opts() -> PathNormalization {
    PathNormalization::default()
}

fn norm(path: &str, o: &PathNormalization) -> Result<(String, String), PathError> {
    normalize(path, o).map(|n| (n.forward().to_string(), n.route().to_string()))
}

/// Forwarded and route form with the defaults.
fn ok(path: &str) -> (String, String) {
    norm(path, &opts()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn clean_paths_are_borrowed_unchanged() {
    for p in [
        "/",
        "/admin",
        "/api/v2/users",
        "/a-b_c.d~e/x:y@z!$&'()*+,=",
        "/x/",
    ] {
        let n = normalize(p, &opts()).unwrap();
        assert!(n.unchanged(), "{p}");
        assert_eq!((n.forward(), n.route()), (p, p));
    }
}

#[test]
fn defaults_rewrite_or_refuse_each_class() {
    // Rewritten: the forwarded form is the route form.
    for (p, want) in [
        ("//admin", "/admin"),
        ("/admin//x///", "/admin/x/"),
        ("/%61dmin", "/admin"),
        ("/%41DMIN%7e", "/ADMIN~"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%3a%40", "/a%3A%40"),
        ("/a%c3%a9", "/a%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a{b}|c", "/a%7Bb%7D%7Cc"),
        ("/%25", "/%25"),
    ] {
        assert_eq!(ok(p), (want.to_string(), want.to_string()), "{p}");
    }
    for (p, e) in [
        ("/admin%2Fx", PathError::EscapedSlash),
        ("/admin%2fx", PathError::EscapedSlash),
        ("/%5Cadmin", PathError::EscapedSlash),
        ("/admin;x=1", PathError::PathParameters),
        ("/admin%3bx=1", PathError::PathParameters),
        ("/ad;min", PathError::PathParameters),
        ("\\admin", PathError::NotAbsolute),
        ("/\\admin", PathError::Backslash),
        ("/public/../admin", PathError::DotSegments),
        ("/public/%2e%2E/admin", PathError::DotSegments),
        ("/public/.%2e", PathError::DotSegments),
        ("/./admin", PathError::DotSegments),
        ("/%2e/admin", PathError::DotSegments),
        ("/a%00", PathError::ControlChar),
        ("/a%0a", PathError::ControlChar),
        ("/a%7F", PathError::ControlChar),
        ("/a%", PathError::BadEscape),
        ("/a%2", PathError::BadEscape),
        ("/a%zz", PathError::BadEscape),
        ("/%u0061dmin", PathError::BadEscape),
        ("/a%C0%AE", PathError::InvalidUtf8),
        ("/a%C0%AF", PathError::InvalidUtf8),
        ("/a%80", PathError::InvalidUtf8),
        ("/a%C3", PathError::InvalidUtf8),
        ("/a%ED%A0%80", PathError::InvalidUtf8),
        ("/a\u{e9}", PathError::BadChar),
        ("/a b", PathError::BadChar),
        ("/a\0", PathError::BadChar),
        ("/a%252F", PathError::DoubleEncoding),
        ("/a%252e%252e/admin", PathError::DoubleEncoding),
        // `%25` then decoded unreserved hex digits: a second decode sees `%2f`.
        ("/a%25%32%66", PathError::DoubleEncoding),
        ("*", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
        ("admin", PathError::NotAbsolute),
    ] {
        assert_eq!(norm(p, &opts()), Err(e), "{p}");
    }
}

#[test]
fn options_rewrite_or_keep() {
    let o = PathNormalization {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
        backslashes: Backslashes::Keep,
        path_parameters: PathParameters::Keep,
        double_encoding: DoubleEncoding::Keep,
    };
    // Kept in the forwarded form; routing acts on the decoded reading.
    for (p, f, r) in [
        ("//admin", "//admin", "/admin"),
        ("/admin%2fx", "/admin%2Fx", "/admin/x"),
        ("/%5Cadmin", "/%5Cadmin", "/admin"),
        ("/\\admin", "/\\admin", "/admin"),
        ("/admin;x=1", "/admin;x=1", "/admin"),
        ("/ad;min/x", "/ad;min/x", "/ad/x"),
        ("/a%252F", "/a%252F", "/a%252F"),
    ] {
        assert_eq!(norm(p, &o), Ok((f.to_string(), r.to_string())), "{p}");
    }
    // Dot segments stay refused whatever the options (Tomcat's `..;/`).
    for p in [
        "/public/..;/admin",
        "/public/..%2fadmin",
        "/public\\..\\admin",
    ] {
        assert_eq!(norm(p, &o), Err(PathError::DotSegments), "{p}");
    }
    let o = PathNormalization {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::UnescapeAndForward,
        backslashes: Backslashes::ToSlash,
        path_parameters: PathParameters::Strip,
        double_encoding: DoubleEncoding::Reject,
    };
    for (p, want) in [
        ("/admin%2fx", "/admin/x"),
        ("/%5Cadmin", "/admin"),
        ("\\admin", ""),
        ("/\\admin", "/admin"),
        ("/admin;x=1", "/admin"),
        ("/ad;min/x;y/", "/ad/x/"),
        ("/;x/admin", "/admin"),
    ] {
        if want.is_empty() {
            assert_eq!(norm(p, &o), Err(PathError::NotAbsolute), "{p}");
        } else {
            assert_eq!(norm(p, &o), Ok((want.to_string(), want.to_string())), "{p}");
        }
    }
}

// === property: routing on the original spelling agrees with the forwarded one ===

static ROUTER: std::sync::LazyLock<Router> = std::sync::LazyLock::new(router);

fn router() -> Router {
    let yaml = "listeners: { plain: { address: \"127.0.0.1:0\" } }\n\
         upstreams: { a: { addresses: [\"http://127.0.0.1:1\"] } }\n\
         issuers: { i: { issuer: \"https://idp.example\", audiences: [x] } }\n\
         routes:\n\
         \x20 - { name: public, path: /, upstream: a }\n\
         \x20 - { name: admin, path: /admin, upstream: a, auth: bearer }\n\
         \x20 - { name: api, path: /api/v2, upstream: a, auth: bearer }\n\
         \x20 - { name: ci, path: /Files, upstream: a, auth: bearer, case_insensitive: true }\n";
    let config = Config::from_yaml(yaml, []).unwrap_or_else(|e| panic!("{e}"));
    Router::new(&config.routes)
}

fn route_name(r: &Router, path: &str) -> String {
    r.find("x", path, &http::Method::GET)
        .map_or_else(|_| "none".to_string(), |r| r.name.to_string())
}

/// How a decoding upstream (Tomcat, IIS, nginx with merge_slashes) reads a forwarded path:
/// every separator spelling is `/`, `;params` end at the segment's end, escapes of unreserved
/// characters are decoded, repeated slashes merge.
fn upstream_reading(fwd: &str) -> String {
    let b = fwd.as_bytes();
    let mut out = String::new();
    let mut in_param = false;
    let mut i = 0;
    while i < b.len() {
        let (c, step) = match escape_at(b, i) {
            Some(h) => (Some(h), 3),
            None => (None, 1),
        };
        let sep = matches!(c, Some(b'/' | b'\\')) || (c.is_none() && matches!(b[i], b'/' | b'\\'));
        if sep {
            in_param = false;
            if !out.ends_with('/') {
                out.push('/');
            }
        } else if c.is_none() && b[i] == b';' {
            in_param = true;
        } else if !in_param {
            match c {
                Some(h) if unreserved(h) => out.push(char::from(h)),
                Some(h) => out.push_str(&format!("%{h:02X}")),
                None => out.push(char::from(b[i])),
            }
        }
        i += step;
    }
    out
}

fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("//"),
        Just("\\"),
        Just("."),
        Just(".."),
        Just("%"),
        Just(";"),
        Just(";x=1"),
        Just("%2f"),
        Just("%2F"),
        Just("%5c"),
        Just("%2e"),
        Just("%2E"),
        Just("%25"),
        Just("%61"),
        Just("%41"),
        Just("%3b"),
        Just("%C3%A9"),
        Just("%C0%AE"),
        Just("%00"),
        Just("2"),
        Just("f"),
        Just("e"),
        Just("a"),
        Just("admin"),
        Just("ADMIN"),
        Just("api"),
        Just("v2"),
        Just("files"),
        Just("{"),
        // Spellings near the protected prefixes, so many cases reach them.
        Just("/admin"),
        Just("/%61dmin"),
        Just("/api/v2"),
        Just("/api%2fv2"),
        Just("/FILES"),
        Just("/files"),
    ];
    (any::<bool>(), proptest::collection::vec(piece, 0..12)).prop_map(|(lead, pieces)| {
        let mut s = if lead {
            String::from("/")
        } else {
            String::new()
        };
        for p in pieces {
            s.push_str(p);
        }
        s
    })
}

fn options() -> impl Strategy<Value = PathNormalization> {
    (
        any::<bool>(),
        prop_oneof![
            Just(EscapedSlashes::Reject),
            Just(EscapedSlashes::UnescapeAndForward),
            Just(EscapedSlashes::Keep)
        ],
        prop_oneof![
            Just(Backslashes::Reject),
            Just(Backslashes::ToSlash),
            Just(Backslashes::Keep)
        ],
        prop_oneof![
            Just(PathParameters::Reject),
            Just(PathParameters::Strip),
            Just(PathParameters::Keep)
        ],
        prop_oneof![Just(DoubleEncoding::Reject), Just(DoubleEncoding::Keep)],
    )
        .prop_map(
            |(merge_slashes, escaped_slashes, backslashes, path_parameters, double_encoding)| {
                PathNormalization {
                    merge_slashes,
                    escaped_slashes,
                    backslashes,
                    path_parameters,
                    double_encoding,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_paths_route_as_the_upstream_reads_them(path in hostile_path(), o in options()) {
        let r = &*ROUTER;
        if let Ok(n) = normalize(&path, &o) {
            // Idempotent: the forwarded path normalises to itself and the same route form.
            let again = normalize(n.forward(), &o);
            prop_assert!(again.is_ok(), "forwarded {:?} refused: {:?}", n.forward(), again);
            let again = again.unwrap();
            prop_assert_eq!(again.forward(), n.forward());
            prop_assert_eq!(again.route(), n.route());
            // The route chosen for the original spelling is the one for what is forwarded,
            // read the way a decoding upstream reads it.
            let chosen = route_name(r, n.route());
            prop_assert_eq!(&chosen, &route_name(r, again.route()));
            prop_assert_eq!(&chosen, &route_name(r, &upstream_reading(n.forward())),
                "path {:?} forwarded {:?}", path, n.forward());
            // No dot segment survives in any reading.
            prop_assert!(!has_dot_segments(n.forward()), "{:?}", n.forward());
        }
    }
}

/// The oracle of the property above: true when a path has a `.` or `..` segment, literally or
/// percent-encoded, with segments split on `/` and also on `\\`, `%2F` and `%5C` (some
/// upstreams decode or accept those as separators: `/public/..%2Fadmin`). Written apart from
/// the normaliser, so the two do not share a mistake.
fn has_dot_segments(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    let mut dots = 0u32;
    let mut other = false;
    let at_boundary = |dots: u32, other: bool| !other && (dots == 1 || dots == 2);
    while i < b.len() {
        let (sep, dot, step) = match b[i] {
            b'/' | b'\\' => (true, false, 1),
            b'.' => (false, true, 1),
            b'%' if b.len() >= i + 3 => match (b[i + 1], b[i + 2] | 0x20) {
                (b'2', b'f') | (b'5', b'c') => (true, false, 3),
                (b'2', b'e') => (false, true, 3),
                _ => (false, false, 1),
            },
            _ => (false, false, 1),
        };
        if sep {
            if at_boundary(dots, other) {
                return true;
            }
            dots = 0;
            other = false;
        } else if dot {
            dots += 1;
        } else {
            other = true;
        }
        i += step;
    }
    at_boundary(dots, other)
}

/// The oracle finds every spelling of a dot segment, and the normalisation every request goes
/// through (default settings) refuses each of them; look-alikes are not dot segments.
#[test]
fn the_oracle_finds_dot_segments_in_every_spelling_and_the_normalisation_refuses_them() {
    let defaults = PathNormalization::default();
    for p in [
        "/a/../b",
        "/a/./b",
        "/..",
        "/a/%2e%2E/b",
        "/a/.%2e",
        "/%2e",
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public%2f..%2fadmin",
    ] {
        assert!(has_dot_segments(p), "{p}");
        assert!(normalize(p, &defaults).is_err(), "{p}");
    }
    for p in [
        "/",
        "/a/b",
        "/a/...",
        "/a/.hidden",
        "/a/b.c",
        "/%2f",
        "/a/..hidden",
        "/a%2fb",
        "/a/%2e%2e%2e",
    ] {
        assert!(!has_dot_segments(p), "{p}");
    }
}
