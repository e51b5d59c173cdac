//! Configuration errors. Each names the key path and the problem, so a user can fix the file
//! without reading code.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML (or an environment override) did not parse into the expected shape: every
    /// problem, each with its key path.
    #[error("{}", ParseProblem::join(.0))]
    Parse(Vec<ParseProblem>),
    /// A value parsed but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// One problem of a file or override that did not parse: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem {
    /// The key path (`routes[0].path`); empty for the document itself (a YAML syntax error).
    pub key: String,
    /// What is wrong there.
    pub problem: String,
}

// === impl ParseProblem ===

impl ParseProblem {
    /// `key: problem; key: problem`, as one line.
    fn join(problems: &[ParseProblem]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

// === impl ConfigError ===

impl ConfigError {
    /// A value at `key` is not acceptable, because of `problem`.
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Turns a figment error into one problem per key.
    pub(crate) fn from_figment(err: figment::Error) -> Self {
        let problems: Vec<ParseProblem> = err
            .into_iter()
            .map(|e| {
                // List positions as `routes[0]`, the way validation errors name them.
                let mut key = String::new();
                for seg in &e.path {
                    if seg.parse::<usize>().is_ok() && !key.is_empty() {
                        key.push_str(&format!("[{seg}]"));
                    } else {
                        if !key.is_empty() {
                            key.push('.');
                        }
                        key.push_str(seg);
                    }
                }
                let kind = match &e.kind {
                    figment::error::Kind::UnknownField(field, expected) => {
                        format!(
                            "unknown key \"{field}\" (expected one of: {})",
                            expected.join(", ")
                        )
                    }
                    // Usually a duration written without its unit (`idle_timeout: 30`).
                    figment::error::Kind::InvalidType(
                        actual @ (figment::error::Actual::Unsigned(_)
                        | figment::error::Actual::Signed(_)
                        | figment::error::Actual::Float(_)),
                        expected,
                    ) if expected == "a string" => {
                        let n = match actual {
                            figment::error::Actual::Unsigned(n) => n.to_string(),
                            figment::error::Actual::Signed(n) => n.to_string(),
                            figment::error::Actual::Float(n) => n.to_string(),
                            _ => String::new(),
                        };
                        format!(
                            "expected text, found the number {n} (a duration needs a unit, e.g. \"{n}s\")"
                        )
                    }
                    other => other.to_string(),
                };
                ParseProblem { key, problem: kind }
            })
            .collect();
        Self::Parse(problems)
    }
}
