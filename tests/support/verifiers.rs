//! Independent verifiers of Portcullis's identity assertion: the snippets of the README
//! (`docs/verify/verify.py` with PyJWT + cryptography, `verify.mjs` with Node's `jose`,
//! `verify.go` with Go's standard library), run as processes that fetch the JWKS from the
//! running Portcullis over loopback.
//!
//! With `CI=true` a missing Python/PyJWT or Node/jose fails the test (they are installed
//! there: `pip install pyjwt cryptography`, `npm ci` in tests/verifiers); locally the
//! missing ones are skipped with a printed reason. Go runs only where `go` is installed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

/// What a verifier said.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Verified: the claims.
    Valid(Value),
    /// Refused: why (its stderr).
    Refused(String),
}

/// One verifier: its name and how to run it.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub name: &'static str,
    program: &'static str,
    args: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `program args` runs and exits 0.
fn runs(program: &str, args: &[&str], dir: &Path) -> bool {
    std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Node's `jose` in tests/verifiers: installed by `npm ci` (once per test process) when
/// Node is present and it is missing.
fn jose_ready(dir: &Path) -> bool {
    if dir.join("node_modules/jose/package.json").exists() {
        return true;
    }
    runs("npm", &["ci", "--no-audit", "--no-fund"], dir)
        && dir.join("node_modules/jose/package.json").exists()
}

/// The verifiers this machine can run (each found once per test process). Python and Node
/// are required under CI: missing there, this panics.
pub fn available() -> &'static [Verifier] {
    static FOUND: OnceLock<Vec<Verifier>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let verify = root().join("docs/verify");
        let node_dir = root().join("tests/verifiers");
        let mut found = Vec::new();
        let mut missing = Vec::new();
        if runs("python3", &["-c", "import jwt, cryptography"], &verify) {
            found.push(Verifier {
                name: "python-pyjwt",
                program: "python3",
                args: vec![verify.join("verify.py").display().to_string()],
            });
        } else {
            missing.push("python3 with PyJWT and cryptography (pip install pyjwt cryptography)");
        }
        if runs("node", &["--version"], &node_dir) && jose_ready(&node_dir) {
            // The committed symlink to docs/verify/verify.mjs, run as itself so that
            // `jose` resolves from tests/verifiers/node_modules.
            found.push(Verifier {
                name: "node-jose",
                program: "node",
                args: vec![
                    "--preserve-symlinks-main".into(),
                    node_dir.join("verify.mjs").display().to_string(),
                ],
            });
        } else {
            missing.push("node with jose (npm ci in tests/verifiers)");
        }
        if runs("go", &["version"], &verify) {
            found.push(Verifier {
                name: "go-stdlib",
                program: "go",
                args: vec!["run".into(), verify.join("verify.go").display().to_string()],
            });
        } else {
            eprintln!("assertion verifiers: go is not installed; verify.go not run");
        }
        if !missing.is_empty() {
            let msg = format!("assertion verifiers missing: {}", missing.join("; "));
            assert!(!in_ci(), "{msg} (CI=true: they are required)");
            eprintln!("{msg}; skipped");
        }
        found
    })
}

// === impl Verifier ===

impl Verifier {
    /// Verifies `assertion` for `audience` and `issuer` against the JWKS at `jwks_url`.
    pub async fn verify(
        &self,
        jwks_url: &str,
        audience: &str,
        issuer: &str,
        assertion: &str,
    ) -> Verdict {
        let mut cmd = Command::new(self.program);
        cmd.args(&self.args)
            .args([jwks_url, audience, issuer, assertion])
            .current_dir(root())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{} took over 60s", self.name))
            .unwrap_or_else(|e| panic!("{} did not run: {e}", self.name));
        if out.status.success() {
            let claims = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{} printed no claims ({e}): {}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            Verdict::Valid(claims)
        } else {
            Verdict::Refused(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// Every available verifier's verdict, by name.
pub async fn verify_all(
    jwks_url: &str,
    audience: &str,
    issuer: &str,
    assertion: &str,
) -> Vec<(&'static str, Verdict)> {
    let mut out = Vec::new();
    for v in available() {
        out.push((
            v.name,
            v.verify(jwks_url, audience, issuer, assertion).await,
        ));
    }
    out
}

/// Asserts that every available verifier accepts `assertion`; returns the claims of each.
pub async fn assert_valid(
    jwks_url: &str,
    audience: &str,
    issuer: &str,
    assertion: &str,
) -> Vec<Value> {
    verify_all(jwks_url, audience, issuer, assertion)
        .await
        .into_iter()
        .map(|(name, v)| match v {
            Verdict::Valid(c) => c,
            Verdict::Refused(why) => panic!("{name} refused a valid assertion: {why}"),
        })
        .collect()
}

/// Asserts that every available verifier refuses `assertion`, each saying something that
/// contains one of `because` (any case).
pub async fn assert_refused(
    jwks_url: &str,
    audience: &str,
    issuer: &str,
    assertion: &str,
    because: &[&str],
) {
    for (name, v) in verify_all(jwks_url, audience, issuer, assertion).await {
        match v {
            Verdict::Valid(c) => panic!("{name} accepted it: {c}"),
            Verdict::Refused(why) => {
                let lower = why.to_lowercase();
                assert!(
                    because.iter().any(|b| lower.contains(&b.to_lowercase())),
                    "{name} refused for another reason than {because:?}: {why}"
                );
            }
        }
    }
}
