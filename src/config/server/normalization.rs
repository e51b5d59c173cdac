//! `server.path_normalization`: how request paths are put into one canonical form before
//! routing (see `routing::normalize`). Raw struct, typed settings and their validation.
//!
//! Security notes: every default is the secure choice (Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action: REJECT_REQUEST` are the anchor). The
//! `keep` choices forward a spelling unchanged, but routing still acts on the canonical form,
//! so a kept spelling can only select the route its canonical form selects.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::env::lenient;

/// `server.path_normalization`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathNormalization {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<String>,
    pub backslashes: Option<String>,
    pub path_parameters: Option<String>,
    pub double_encoding: Option<String>,
}

/// How request paths are normalised (`server.path_normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNormalization {
    /// `//` becomes `/` in the forwarded path (routing always merges).
    pub merge_slashes: bool,
    /// What `%2F` and `%5C` do.
    pub escaped_slashes: EscapedSlashes,
    /// What a literal `\` does.
    pub backslashes: Backslashes,
    /// What `;params` in a segment do.
    pub path_parameters: PathParameters,
    /// What a double-encoded escape (`%252F`) does.
    pub double_encoding: DoubleEncoding,
}

/// `server.path_normalization.escaped_slashes`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400 (default).
    Reject,
    /// Decode to `/` (and `%5C` to `\`, then handled as a backslash) and forward that.
    UnescapeAndForward,
    /// Forward unchanged; routing treats them as separators.
    Keep,
}

/// `server.path_normalization.backslashes`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backslashes {
    /// 400 (default).
    Reject,
    /// Turn into `/` and forward that (what IIS and Windows do).
    ToSlash,
    /// Forward unchanged; routing treats them as separators.
    Keep,
}

/// `server.path_normalization.path_parameters`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathParameters {
    /// 400 when a path has a `;` (default, as Spring Security's `StrictHttpFirewall`).
    Reject,
    /// Remove `;...` up to the end of each segment (what Tomcat/Spring act on) and forward that.
    Strip,
    /// Forward unchanged; routing acts on the path without them.
    Keep,
}

/// `server.path_normalization.double_encoding`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoubleEncoding {
    /// 400 for `%25` followed by two hex digits (default).
    Reject,
    /// Forward unchanged (`%25` stays an escaped `%`).
    Keep,
}

// === impl PathNormalization ===

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            backslashes: Backslashes::Reject,
            path_parameters: PathParameters::Reject,
            double_encoding: DoubleEncoding::Reject,
        }
    }
}

/// Validates `server.path_normalization`.
pub(crate) fn path_normalization(
    raw: Option<&RawPathNormalization>,
) -> Result<PathNormalization, ConfigError> {
    let d = PathNormalization::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    const KEY: &str = "server.path_normalization";
    Ok(PathNormalization {
        merge_slashes: raw.merge_slashes.unwrap_or(d.merge_slashes),
        escaped_slashes: choice(
            &format!("{KEY}.escaped_slashes"),
            raw.escaped_slashes.as_deref(),
            &[
                ("reject", EscapedSlashes::Reject),
                ("unescape_and_forward", EscapedSlashes::UnescapeAndForward),
                ("keep", EscapedSlashes::Keep),
            ],
            d.escaped_slashes,
        )?,
        backslashes: choice(
            &format!("{KEY}.backslashes"),
            raw.backslashes.as_deref(),
            &[
                ("reject", Backslashes::Reject),
                ("to_slash", Backslashes::ToSlash),
                ("keep", Backslashes::Keep),
            ],
            d.backslashes,
        )?,
        path_parameters: choice(
            &format!("{KEY}.path_parameters"),
            raw.path_parameters.as_deref(),
            &[
                ("reject", PathParameters::Reject),
                ("strip", PathParameters::Strip),
                ("keep", PathParameters::Keep),
            ],
            d.path_parameters,
        )?,
        double_encoding: choice(
            &format!("{KEY}.double_encoding"),
            raw.double_encoding.as_deref(),
            &[
                ("reject", DoubleEncoding::Reject),
                ("keep", DoubleEncoding::Keep),
            ],
            d.double_encoding,
        )?,
    })
}

fn choice<T: Copy>(
    key: &str,
    value: Option<&str>,
    options: &[(&str, T)],
    default: T,
) -> Result<T, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    options
        .iter()
        .find(|(name, _)| *name == v.trim())
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            ConfigError::invalid(key, format!("\"{v}\" is not one of {}", names.join(", ")))
        })
}
