//! The path-spelling table of issue 7 (section 1): how each spelling of a protected path
//! `/admin` must come out, next to a public catch-all `/`, with Portcullis's default
//! `server.path_normalization`; and how a lenient upstream could read a path. Shared by
//! `tests/path_normalization.rs` (Portcullis itself) and `tests/external_auth_front.rs` (the
//! same spellings through real front proxies that ask Portcullis).

/// What a spelling must come to.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// 400, and no upstream sees it.
    Refused,
    /// The protected route: 401 without a token; with one, the admin upstream gets this path.
    Protected(&'static str),
    /// The public route, and its upstream gets this path (which no upstream reads as /admin).
    Public(&'static str),
}

/// How a lenient upstream (Tomcat, IIS, nginx with merge_slashes) could read a path: every
/// escape decoded, `\` as `/`, `;params` removed per segment, slashes merged, any case.
pub fn lenient_reading(path: &str) -> String {
    let mut decoded = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out = String::new();
    for seg in s.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg.split(';').next().unwrap());
    }
    out.to_ascii_lowercase()
}

pub fn reads_as_admin(path: &str) -> bool {
    let r = lenient_reading(path);
    r == "/admin" || r.starts_with("/admin/")
}

/// The default-options table: spelling -> outcome.
pub const TABLE: &[(&str, Want)] = &[
    ("/admin", Want::Protected("/admin")),
    ("/admin/x?q=1", Want::Protected("/admin/x")),
    ("//admin", Want::Protected("/admin")),
    ("///admin//x", Want::Protected("/admin/x")),
    ("/%61dmin", Want::Protected("/admin")),
    ("/%61%64%6D%69%6e/", Want::Protected("/admin/")),
    ("/admin#/../public", Want::Protected("/admin")),
    ("/admin%2Fx", Want::Refused),
    ("/admin%2fx", Want::Refused),
    ("/%2Fadmin", Want::Refused),
    ("/%5Cadmin", Want::Refused),
    ("/%5cadmin", Want::Refused),
    ("/\\admin", Want::Refused),
    ("\\admin", Want::Refused),
    ("/admin;x=1", Want::Refused),
    ("/admin;jsessionid=1/x", Want::Refused),
    ("/ad;min", Want::Refused),
    ("/public/../admin", Want::Refused),
    ("/public/%2e%2e/admin", Want::Refused),
    ("/public/%2E%2E/admin", Want::Refused),
    ("/public/.%2e/admin", Want::Refused),
    ("/public/..;/admin", Want::Refused),
    ("/public/..%2fadmin", Want::Refused),
    ("/public/..\\admin", Want::Refused),
    ("/./admin", Want::Refused),
    ("/%2e/admin", Want::Refused),
    ("/admin%00", Want::Refused),
    ("/admin%0d%0aX: y", Want::Refused),
    ("/%C0%AEadmin", Want::Refused),
    ("/%c0%afadmin", Want::Refused),
    ("/%u0061dmin", Want::Refused),
    ("/admin%", Want::Refused),
    ("/admin%252F", Want::Refused),
    ("/public/%252e%252e/admin", Want::Refused),
    ("*", Want::Refused),
    ("admin", Want::Refused),
    ("/ADMIN", Want::Public("/ADMIN")),
    ("/adminx", Want::Public("/adminx")),
    ("/admin%3Bx", Want::Refused),
    ("/admin%3Fx", Want::Public("/admin%3Fx")),
    ("/public//x", Want::Public("/public/x")),
    ("/%7e%41%2a", Want::Public("/~A%2A")),
    ("/a{b}", Want::Public("/a%7Bb%7D")),
    ("/caf%c3%a9", Want::Public("/caf%C3%A9")),
];
