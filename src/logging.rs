//! Logging with tracing: human-readable on a terminal, JSON lines otherwise.
//!
//! Security notes: nothing in Portcullis logs header values, cookies, tokens or query strings.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
/// Returns false if one was already installed (tests).
pub fn init(config: &LogConfig) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
            .is_ok()
    } else {
        builder.try_init().is_ok()
    }
}
