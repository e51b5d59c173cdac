//! The persisted last-known-good IdP state: one JSON file per issuer under
//! `<state_dir>/issuers/`, holding the discovery document and the JWKS of the last good
//! refresh, so a restart during an IdP outage still validates tokens.
//!
//! Security notes: the directories Portcullis creates are 0700 and every file is 0600 (the
//! keys in it decide which tokens are accepted, so nobody else may replace them). Each write
//! goes to its own temp file (unique name, `O_EXCL`), is fsync'ed and renamed over the old
//! file, so concurrent writers never tear it: a reader sees one whole document. A document is
//! used only if it is for the configured issuer and its `jwks_uri` is one the configuration
//! would allow (https or loopback http; the configured one when `jwks_uri` is fixed);
//! otherwise it is ignored with a warning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use http::Uri;
use serde::{Deserialize, Serialize};

use super::keys::JwksError;
use crate::config::IssuerConfig;
use crate::config::issuer::idp_url_allowed;

/// Why a persisted document was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// Not a state document.
    #[error("not valid")]
    NotValid(#[source] serde_json::Error),
    /// A state document for another issuer.
    #[error("it is for issuer \"{0}\"")]
    OtherIssuer(String),
    /// Its `jwks_uri` is not one the configuration allows.
    #[error("its jwks_uri \"{0}\" is not allowed (https, or http on loopback only)")]
    JwksUriNotAllowed(String),
    /// The issuer has a fixed `jwks_uri`, and the document came from another one.
    #[error("its jwks_uri \"{persisted}\" is not the configured {configured}")]
    JwksUriNotConfigured { persisted: String, configured: Uri },
    /// The keys in it are unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// The state file, one per issuer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Persisted {
    /// The issuer's `iss`.
    pub issuer: String,
    /// When the keys were fetched (Unix seconds).
    pub fetched_at_unix: u64,
    /// Where they were fetched from.
    pub jwks_uri: String,
    /// The discovery document, when discovery was used.
    pub discovery: Option<serde_json::Value>,
    /// The JWKS.
    pub jwks: serde_json::Value,
}

// === impl Persisted ===

impl Persisted {
    /// Parses a state file and checks it against `config`; returns it with its `jwks_uri`.
    pub fn parse_for(bytes: &[u8], config: &IssuerConfig) -> Result<(Self, Uri), StateError> {
        let p: Self = serde_json::from_slice(bytes).map_err(StateError::NotValid)?;
        if p.issuer != config.issuer {
            return Err(StateError::OtherIssuer(p.issuer));
        }
        let uri = p
            .jwks_uri
            .parse::<Uri>()
            .ok()
            .filter(|u| u.host().is_some_and(|h| !h.is_empty()) && idp_url_allowed(u))
            .ok_or_else(|| StateError::JwksUriNotAllowed(p.jwks_uri.clone()))?;
        if let Some(configured) = &config.jwks_uri
            && *configured != uri
        {
            return Err(StateError::JwksUriNotConfigured {
                persisted: p.jwks_uri,
                configured: configured.clone(),
            });
        }
        Ok((p, uri))
    }
}

/// The state file of issuer `name` under `state_dir`.
pub fn state_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("issuers").join(format!("{name}.json"))
}

/// Writes `bytes` to `path` so a reader sees the old or the new file, never a torn one, even
/// with concurrent writers: a temp file of its own in the same directory (created 0600, never
/// an existing file), fsync, rename, fsync the directory. Missing directories are created 0700.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A temp name next to `path` that no other write (in this process or another) uses.
fn temp_path(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}-{n}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "portcullis-state-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// A document of `size` bytes that says who wrote it, so a torn file cannot parse.
    fn document(writer: usize, round: usize, size: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "writer": writer,
            "round": round,
            "padding": "x".repeat(size),
        }))
        .unwrap()
    }

    #[test]
    fn concurrent_writes_never_tear_the_file() {
        let dir = temp_dir("concurrent");
        let path = dir.join("issuers").join("corp.json");
        let (writers, rounds, size) = (16, 40, 64 * 1024);
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for r in 0..rounds {
                        write_atomic(&path, &document(w, r, size))
                            .unwrap_or_else(|e| panic!("writer {w} round {r}: {e}"));
                        // Whatever is there now is one whole document.
                        let read = std::fs::read(&path).unwrap();
                        let v: serde_json::Value = serde_json::from_slice(&read)
                            .unwrap_or_else(|e| panic!("torn file ({} bytes): {e}", read.len()));
                        assert_eq!(v["padding"].as_str().map(str::len), Some(size));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["round"], rounds - 1, "the last write of some writer");
        // No temp files left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("corp.json")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn directories_are_created_0700_and_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("modes");
        let path = state_file(&dir, "corp");
        write_atomic(&path, b"{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "state_dir");
        assert_eq!(mode(&dir.join("issuers")), 0o700, "state_dir/issuers");
        assert_eq!(mode(&path), 0o600, "state file");
        // A rewrite keeps the file private.
        write_atomic(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(mode(&path), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
