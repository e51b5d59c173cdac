//! `log`: output format, default filter and the access log. Raw struct, typed settings and
//! their validation.

use serde::Deserialize;

use super::ConfigError;
use super::env::lenient;

/// Raw `log`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub access: Option<bool>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Human,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Default filter (`RUST_LOG` syntax), overridden by `RUST_LOG`.
    pub level: String,
    /// Whether one access-log line is written per request.
    pub access: bool,
}

/// Validates `log`.
pub(super) fn log(raw: &RawLog) -> Result<LogConfig, ConfigError> {
    Ok(LogConfig {
        format: match raw.format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("human") => LogFormat::Human,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "log.format",
                    format!("\"{other}\" is not one of auto, json, human"),
                ));
            }
        },
        level: raw.level.clone().unwrap_or_else(|| "info".to_string()),
        access: raw.access.unwrap_or(true),
    })
}
