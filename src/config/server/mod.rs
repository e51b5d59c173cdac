//! `server`: connection limits, timeouts and forwarding policy shared by every listener. Raw
//! struct, typed settings and their validation; `path_normalization` has its own file.
//!
//! Security notes: client `X-Forwarded-*` and similar headers are dropped unless
//! `trust_forwarded_headers` (the default list names what frameworks take as the client's
//! address, scheme, host, URL or method).

pub(super) mod normalization;

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::env::lenient;
use super::parse::{duration, header_patterns};
use normalization::{PathNormalization, RawPathNormalization};

/// hyper's HTTP/1 parser needs at least this much buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// The most `server.workers` accepted: far more threads than any machine has cores only
/// adds context switches and idle pools.
pub const MAX_WORKERS: u64 = 1024;

/// Default `server.untrusted_forwarded_headers`: headers that frameworks take as the client's
/// address, scheme, host, URL or method (Spring, Symfony, Laravel, Rails, IIS, Express...).
pub const DEFAULT_UNTRUSTED_FORWARDED_HEADERS: [&str; 14] = [
    "Forwarded",
    "X-Forwarded-*",
    "X-Real-IP",
    "X-Client-IP",
    "Client-IP",
    "True-Client-IP",
    "X-Cluster-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Original-Host",
    "X-Host",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
];

/// Raw `server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub tls_handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_connections: Option<u64>,
    pub shutdown_grace: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub trust_forwarded_headers: Option<bool>,
    pub untrusted_forwarded_headers: Option<Vec<String>>,
    pub path_normalization: Option<RawPathNormalization>,
    pub upgraded_idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub workers: Option<u64>,
}

/// Limits applied to every listener, and forwarding policy.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body (own paths and proxied routes);
    /// past it the request ends with 408 and the connection (HTTP/1) or stream (HTTP/2) is
    /// closed.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (431 beyond it).
    pub max_header_bytes: usize,
    /// Most client connections open at once, over all listeners.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Whether incoming `X-Forwarded-*` headers are kept and appended to.
    pub trust_forwarded_headers: bool,
    /// Client headers removed unless `trust_forwarded_headers` (names, or prefixes ending in
    /// `*`; compared in any case, `_` equal to `-`).
    pub untrusted_forwarded_headers: Vec<String>,
    /// How request paths are normalised before routing.
    pub path_normalization: PathNormalization,
    /// An upgraded (WebSocket) tunnel with no bytes either way for this long is closed.
    pub upgraded_idle_timeout: Duration,
    /// Request worker threads: each runs its own single-threaded runtime with its own
    /// listening sockets (`SO_REUSEPORT`) and upstream connection pools. Default: one per CPU.
    pub workers: usize,
}

/// Validates `server`.
pub(super) fn server(s: &RawServer) -> Result<ServerConfig, ConfigError> {
    let max_header_bytes = s.max_header_bytes.unwrap_or(16 * 1024);
    if max_header_bytes < MIN_HEADER_BYTES {
        return Err(ConfigError::invalid(
            "server.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}"),
        ));
    }
    let max_connections = s.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(ConfigError::invalid(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    let workers = workers(s.workers)?;
    let secs = Duration::from_secs;
    Ok(ServerConfig {
        tls_handshake_timeout: duration(
            "server.tls_handshake_timeout",
            &s.tls_handshake_timeout,
            secs(10),
        )?,
        header_read_timeout: duration(
            "server.header_read_timeout",
            &s.header_read_timeout,
            secs(10),
        )?,
        body_read_timeout: duration("server.body_read_timeout", &s.body_read_timeout, secs(60))?,
        idle_timeout: duration("server.idle_timeout", &s.idle_timeout, secs(60))?,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        shutdown_grace: duration("server.shutdown_grace", &s.shutdown_grace, secs(30))?,
        trust_forwarded_headers: s.trust_forwarded_headers.unwrap_or(false),
        untrusted_forwarded_headers: untrusted_forwarded(&s.untrusted_forwarded_headers)?,
        path_normalization: normalization::path_normalization(s.path_normalization.as_ref())?,
        upgraded_idle_timeout: duration(
            "server.upgraded_idle_timeout",
            &s.upgraded_idle_timeout,
            secs(600),
        )?,
        workers,
    })
}

/// `server.workers`: one per CPU when absent, else from 1 to [`MAX_WORKERS`].
fn workers(raw: Option<u64>) -> Result<usize, ConfigError> {
    let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    match raw {
        None => Ok(default_workers),
        Some(n) if (1..=MAX_WORKERS).contains(&n) => {
            Ok(usize::try_from(n).unwrap_or(default_workers))
        }
        Some(n) => Err(ConfigError::invalid(
            "server.workers",
            format!("{n} is not between 1 and {MAX_WORKERS} (omit it for one per CPU)"),
        )),
    }
}

/// `server.untrusted_forwarded_headers`: the default list when absent; each entry a header
/// name or a prefix ending in `*`.
fn untrusted_forwarded(list: &Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(list) = list else {
        return Ok(DEFAULT_UNTRUSTED_FORWARDED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect());
    };
    header_patterns("server.untrusted_forwarded_headers", list)?;
    Ok(list.clone())
}
