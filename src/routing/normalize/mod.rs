//! Path normalisation: one canonical spelling of a request path decides the route.
//!
//! A path is read once, byte by byte, into two forms:
//!
//! - the **forwarded** form, what the upstream receives: unreserved characters that were
//!   percent-encoded are decoded (`%61` -> `a`, RFC 3986 section 6.2.2.2), every other escape
//!   gets uppercase hex (`%3b` -> `%3B`), characters that must be escaped (`"`, `{`, `|`, ...)
//!   are escaped, and `server.path_normalization` decides what happens to repeated slashes,
//!   `%2F`/`%5C`, `\` and `;params` (reject with 400, rewrite and forward the rewritten path, or
//!   keep);
//! - the **route** form, what the router matches: the forwarded form with every separator
//!   spelling (`/`, `\`, `%2F`, `%5C`) as one `/`, repeated slashes merged and `;params`
//!   removed from each segment.
//!
//! The two are equal unless a `keep` option (or `merge_slashes: false`) keeps a spelling in the
//! forwarded path; then routing acts on the most-decoded reading of it (the one Tomcat, IIS or
//! nginx with `merge_slashes` act on), so a kept spelling can only select the route its
//! canonical form selects. Normalising the forwarded form again gives the same route form.
//!
//! Security notes: refused with 400 (whatever the options): dot segments in any spelling
//! (`.`, `%2e`, `..;x`, after `\` or `%2F` as separators), malformed escapes (`%`, `%zz`,
//! IIS's `%u0061`), escaped control characters (`%00`, `%0A`, `%7F`), escaped bytes that are not
//! UTF-8 (overlong `%C0%AE`, lone continuation bytes), raw bytes outside ASCII, raw control
//! characters and spaces. By default also: `%2F`/`%5C` (Envoy's `REJECT_REQUEST`), `\`,
//! `;` and `%3B` (as Spring Security's `StrictHttpFirewall`), and a double-encoded escape
//! (`%252F`, which a second decode turns into `/`). A fragment
//! never reaches this code (the HTTP parser drops it), and a path that does not start with `/`
//! is refused. A clean path (only unreserved characters, sub-delimiters other than `;`, `:`,
//! `@` and single slashes, no dot segment) is returned as is, without allocating.

use std::borrow::Cow;

use crate::config::{
    Backslashes, DoubleEncoding, EscapedSlashes, PathNormalization, PathParameters,
};

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (asterisk-form, empty).
    #[error("path does not start with /")]
    NotAbsolute,
    /// A `.` or `..` segment, in any spelling.
    #[error("path has dot segments")]
    DotSegments,
    /// `%2F` or `%5C` with `escaped_slashes: reject`.
    #[error("path has an escaped slash or backslash")]
    EscapedSlash,
    /// `\` with `backslashes: reject`.
    #[error("path has a backslash")]
    Backslash,
    /// `;` with `path_parameters: reject`.
    #[error("path has path parameters")]
    PathParameters,
    /// `%25` followed by two hex digits with `double_encoding: reject`.
    #[error("path has a double-encoded escape")]
    DoubleEncoding,
    /// `%` not followed by two hex digits.
    #[error("path has a malformed percent escape")]
    BadEscape,
    /// An escaped control character (`%00`-`%1F`, `%7F`).
    #[error("path has an escaped control character")]
    ControlChar,
    /// Escaped bytes above `%7F` that are not UTF-8 (overlong forms included).
    #[error("path has escaped bytes that are not UTF-8")]
    InvalidUtf8,
    /// A raw byte that is never valid in a path (control, space, non-ASCII).
    #[error("path has a character that must be percent-encoded")]
    BadChar,
}

/// The result of [`normalize`]: the forwarded form and the route form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    forward: Cow<'a, str>,
    /// `None` when it equals `forward`.
    route: Option<String>,
}

/// One writer of [`normalize`]: a form being built.
struct Form {
    s: String,
    /// The last thing written was a literal `/`.
    last_slash: bool,
    /// Repeated literal slashes collapse.
    merge: bool,
}

// === impl NormalizedPath ===

impl NormalizedPath<'_> {
    /// The path the upstream receives.
    pub fn forward(&self) -> &str {
        &self.forward
    }

    /// The path the router matches.
    pub fn route(&self) -> &str {
        self.route.as_deref().unwrap_or(&self.forward)
    }

    /// Whether the forwarded path is the received one, unchanged.
    pub fn unchanged(&self) -> bool {
        matches!(self.forward, Cow::Borrowed(_))
    }

}

// === impl Form ===

impl Form {
    fn new(cap: usize, merge: bool) -> Self {
        Self {
            s: String::with_capacity(cap),
            last_slash: false,
            merge,
        }
    }

    fn slash(&mut self) {
        if !(self.merge && self.last_slash) {
            self.s.push('/');
        }
        self.last_slash = true;
    }

    fn raw(&mut self, c: char) {
        self.s.push(c);
        self.last_slash = false;
    }

    fn escaped(&mut self, b: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.s.push('%');
        self.s.push(char::from(HEX[usize::from(b >> 4)]));
        self.s.push(char::from(HEX[usize::from(b & 0xf)]));
        self.last_slash = false;
    }
}

/// Unreserved characters (RFC 3986 section 2.3): an escape of one is decoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters forwarded literally: unreserved, sub-delimiters other than `;`, `:` and `@`.
fn plain(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// Characters the HTTP parser lets through that RFC 3986 wants escaped.
fn needs_escape(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' | b'[' | b']'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte `%HH` at `i` encodes, if `b[i]` starts a well-formed escape.
fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    let hi = hex(*b.get(i + 1)?)?;
    let lo = hex(*b.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// A path that normalisation leaves unchanged in both forms: starts with `/`, only
/// [`plain`] bytes and single slashes, no dot segment.
fn is_clean(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        if b == b'/' {
            // An empty segment (`//`) or a dot segment ends the fast path.
            if i == seg_start || is_dot_segment(&path[seg_start..i]) {
                return false;
            }
            seg_start = i + 1;
        } else if !plain(b) {
            return false;
        }
    }
    !is_dot_segment(&path[seg_start..])
}

/// True when `s` has `%25` followed by two hex digits (a second decode would decode them).
fn has_double_encoding(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(5).any(|w| {
        w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && hex(w[3]).is_some() && hex(w[4]).is_some()
    })
}

/// Normalises `path` (without the query) as `opts` says: the forwarded form and the route
/// form, or why the request must be refused.
pub fn normalize<'a>(
    path: &'a str,
    opts: &PathNormalization,
) -> Result<NormalizedPath<'a>, PathError> {
    let b = path.as_bytes();
    if is_clean(b) {
        return Ok(NormalizedPath {
            forward: Cow::Borrowed(path),
            route: None,
        });
    }
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut fwd = Form::new(b.len(), opts.merge_slashes);
    let mut route = Form::new(b.len(), true);
    // Inside `;params`: until the next separator.
    let mut in_param = false;
    let strip = opts.path_parameters == PathParameters::Strip;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' => {
                fwd.slash();
                route.slash();
                in_param = false;
                i += 1;
            }
            b'\\' => {
                backslash(opts.backslashes, &mut fwd, &mut route)?;
                in_param = false;
                i += 1;
            }
            b'%' => {
                let (next, separator) = percent(b, i, opts, &mut fwd, &mut route, in_param)?;
                if separator {
                    in_param = false;
                }
                i = next;
            }
            b';' => {
                match opts.path_parameters {
                    PathParameters::Reject => return Err(PathError::PathParameters),
                    PathParameters::Strip => {}
                    PathParameters::Keep => fwd.raw(';'),
                }
                in_param = true;
                i += 1;
            }
            c if plain(c) => {
                unit(&mut fwd, &mut route, in_param, strip, |f| {
                    f.raw(char::from(c));
                });
                i += 1;
            }
            c if needs_escape(c) => {
                unit(&mut fwd, &mut route, in_param, strip, |f| f.escaped(c));
                i += 1;
            }
            _ => return Err(PathError::BadChar),
        }
    }
    if route.s.split('/').any(|seg| is_dot_segment(seg.as_bytes())) {
        return Err(PathError::DotSegments);
    }
    if opts.double_encoding == DoubleEncoding::Reject
        && (has_double_encoding(&fwd.s) || has_double_encoding(&route.s))
    {
        return Err(PathError::DoubleEncoding);
    }
    let route = (route.s != fwd.s).then_some(route.s);
    let forward = if fwd.s == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(fwd.s)
    };
    Ok(NormalizedPath { forward, route })
}

/// One percent escape at `b[i]` (a run of them for escaped UTF-8), written to both forms as
/// `opts` says, or why the path is refused. Returns where the walk goes on, and whether the
/// escape was a separator (an escaped slash or backslash that ends a `;param`).
fn percent(
    b: &[u8],
    mut i: usize,
    opts: &PathNormalization,
    fwd: &mut Form,
    route: &mut Form,
    in_param: bool,
) -> Result<(usize, bool), PathError> {
    let strip = opts.path_parameters == PathParameters::Strip;
    let h = escape_at(b, i).ok_or(PathError::BadEscape)?;
    match h {
        b'/' | b'\\' => {
            match opts.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::UnescapeAndForward if h == b'/' => {
                    fwd.slash();
                    route.slash();
                }
                EscapedSlashes::UnescapeAndForward => {
                    backslash(opts.backslashes, fwd, route)?;
                }
                EscapedSlashes::Keep => {
                    fwd.escaped(h);
                    route.slash();
                }
            }
            return Ok((i + 3, true));
        }
        0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
        // Some frameworks decode before they strip parameters (Spring's
        // StrictHttpFirewall refuses `%3B` for that reason): refused with `;`.
        b';' if opts.path_parameters == PathParameters::Reject => {
            return Err(PathError::PathParameters);
        }
        0x80..=0xff => {
            // A run of escaped high bytes must be whole UTF-8 characters.
            let mut run = Vec::new();
            while let Some(h) = escape_at(b, i).filter(|h| *h >= 0x80) {
                run.push(h);
                i += 3;
            }
            if std::str::from_utf8(&run).is_err() {
                return Err(PathError::InvalidUtf8);
            }
            for h in run {
                if !(in_param && strip) {
                    fwd.escaped(h);
                }
                if !in_param {
                    route.escaped(h);
                }
            }
            return Ok((i, false));
        }
        h if unreserved(h) => unit(fwd, route, in_param, strip, |f| f.raw(char::from(h))),
        h => unit(fwd, route, in_param, strip, |f| f.escaped(h)),
    }
    Ok((i + 3, false))
}

/// Writes one non-separator unit to both forms; inside `;params` the route form skips it, and
/// so does the forwarded form when parameters are stripped.
fn unit(fwd: &mut Form, route: &mut Form, in_param: bool, strip: bool, write: impl Fn(&mut Form)) {
    if !(in_param && strip) {
        write(fwd);
    }
    if !in_param {
        write(route);
    }
}

/// A backslash (literal, or `%5C` being unescaped) as `opts.backslashes` says.
fn backslash(policy: Backslashes, fwd: &mut Form, route: &mut Form) -> Result<(), PathError> {
    match policy {
        Backslashes::Reject => return Err(PathError::Backslash),
        Backslashes::ToSlash => fwd.slash(),
        Backslashes::Keep => fwd.raw('\\'),
    }
    route.slash();
    Ok(())
}

#[cfg(test)]
mod tests;
