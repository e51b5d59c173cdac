//! Connecting to the configured Redis: standalone (a connection manager that reconnects by
//! itself), Cluster or Sentinel, each with the password, the CA file for `rediss://` and
//! `sessions.redis.timeout` on connecting and on every response.
//!
//! Security notes: URLs and passwords are [`crate::config::Sensitive`]; setup errors name the
//! key, never the value.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError, TlsCertificates, TlsMode,
};

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisFuture, Value};

use super::{AnyConn, Conn};
use super::notices::Source;
use crate::config::{RedisConfig, RedisTarget, Sensitive};
use crate::session::StoreError;

/// The store's connection to the Sentinel master; the announcements' subscriber empties it
/// when the Sentinels name another master, so the next command looks the master up again
/// (a demoted master still answers reads, from data it is about to replace).
pub(super) type SentinelSlot =
    std::sync::Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>;

/// The CA bundle of `sessions.redis.ca_file`, when set.
pub(super) async fn ca_certs(config: &RedisConfig) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let root = tokio::fs::read(path)
        .await
        .map_err(|e| StoreError::Setup(format!("cannot read {}: {e}", path.display()), None))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(root),
    }))
}

/// The connection for the configured target. Standalone connects lazily (Redis may come up
/// after Portcullis); Cluster and Sentinel connect on first use.
pub(super) fn conn(
    config: &RedisConfig,
    certs: Option<TlsCertificates>,
) -> Result<Conn, StoreError> {
    match &config.target {
        RedisTarget::Url(url) => standalone(config, url, certs),
        RedisTarget::Cluster(addresses) => cluster(config, addresses, certs),
        RedisTarget::Sentinel { master, addresses } => sentinel(config, master, addresses, certs),
    }
}

/// Where the announcements' subscriber connects (a connection of its own): the server, each
/// cluster seed in turn, or the master the sentinels name.
pub(super) fn subscriber(
    config: &RedisConfig,
    certs: Option<TlsCertificates>,
    conn: &Conn,
) -> Result<Source, StoreError> {
    match &config.target {
        RedisTarget::Url(url) => Ok(Source::Clients(vec![client(config, url, certs)?])),
        RedisTarget::Cluster(addresses) => addresses
            .iter()
            .map(|a| client(config, a, certs.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map(Source::Clients),
        RedisTarget::Sentinel { master, addresses } => Ok(Source::Sentinel(
            Box::new(sentinel_client(config, master, addresses, certs)?),
            match conn {
                Conn::Sentinel { conn, .. } => Some(conn.clone()),
                _ => None,
            },
        )),
    }
}

/// A client for one server URL, with the configured password and CA.
fn client(
    config: &RedisConfig,
    url: &Sensitive,
    certs: Option<TlsCertificates>,
) -> Result<Client, StoreError> {
    let mut info = url
        .expose()
        .into_connection_info()
        .map_err(setup("sessions.redis.url is not a Redis URL"))?;
    if let Some(p) = &config.password {
        let settings = info.redis_settings().clone().set_password(p.expose());
        info = info.set_redis_settings(settings);
    }
    match certs {
        Some(c) => Client::build_with_tls(info, c),
        None => Client::open(info),
    }
    .map_err(setup("sessions.redis.url"))
}

/// A setup error for the key `what`.
fn setup(what: &str) -> impl Fn(RedisError) -> StoreError {
    let what = what.to_string();
    move |e: RedisError| StoreError::Setup(what.clone(), Some(e))
}

fn standalone(
    config: &RedisConfig,
    url: &Sensitive,
    certs: Option<TlsCertificates>,
) -> Result<Conn, StoreError> {
    let timeout = config.timeout;
    let client = client(config, url, certs)?;
    let mc = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(timeout);
    Ok(Conn::Standalone(
        redis::aio::ConnectionManager::new_lazy_with_config(client, mc)
            .map_err(setup("sessions.redis.url"))?,
    ))
}

fn cluster(
    config: &RedisConfig,
    addresses: &[Sensitive],
    certs: Option<TlsCertificates>,
) -> Result<Conn, StoreError> {
    let timeout = config.timeout;
    let mut b = ClusterClientBuilder::new(addresses.iter().map(|a| a.expose().to_string()))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2);
    if let Some(p) = &config.password {
        b = b.password(p.expose());
    }
    if let Some(c) = certs {
        b = b.certs(c);
    }
    Ok(Conn::Cluster {
        client: b
            .build()
            .map_err(setup("sessions.redis.cluster.addresses"))?,
        conn: tokio::sync::Mutex::new(None),
    })
}

fn sentinel(
    config: &RedisConfig,
    master: &str,
    addresses: &[Sensitive],
    certs: Option<TlsCertificates>,
) -> Result<Conn, StoreError> {
    let timeout = config.timeout;
    Ok(Conn::Sentinel {
        client: tokio::sync::Mutex::new(sentinel_client(config, master, addresses, certs)?),
        conn: std::sync::Arc::new(tokio::sync::Mutex::new(None)),
        config: AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout)),
    })
}

fn sentinel_client(
    config: &RedisConfig,
    master: &str,
    addresses: &[Sensitive],
    certs: Option<TlsCertificates>,
) -> Result<redis::sentinel::SentinelClient, StoreError> {
    let mut addrs = Vec::new();
    let mut tls = false;
    for a in addresses {
        let info = a
            .expose()
            .into_connection_info()
            .map_err(setup("sessions.redis.sentinel.addresses"))?;
        tls |= matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        addrs.push(info.addr().clone());
    }
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(setup("sessions.redis.sentinel"))?;
    if let Some(p) = &config.password {
        b = b.set_client_to_redis_password(p.expose());
    }
    if tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(c) = certs {
            b = b
                .set_client_to_redis_certificates(c.clone())
                .set_client_to_sentinel_certificates(c);
        }
    }
    b.build().map_err(setup("sessions.redis.sentinel"))
}

// === impl AnyConn ===

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Manager(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
            AnyConn::Multiplexed(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Manager(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
            AnyConn::Multiplexed(c) => c.get_db(),
        }
    }
}
