//! TLS termination: a rustls server config whose certificate can be swapped while running.
//!
//! The certificate and key are read at startup (a failure stops startup) and again on SIGHUP
//! or when either file's modification time changes. A failed reload keeps the certificate in
//! use and is counted in `portcullis_reloads_total{kind="certificate",result="failure"}`.
//! The leaf certificate's notAfter is `portcullis_tls_certificate_not_after_seconds{cert}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;

use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    /// The key was refused or does not match the certificate.
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Serves the current certificate.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

// === impl CertStore ===

impl CertStore {
    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads and checks a certificate chain and its key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            problem: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            problem: "no certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        problem: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })
}

/// A listener's TLS state: the acceptor config and the store its certificate comes from.
pub struct Tls {
    /// For `tokio_rustls::TlsAcceptor`.
    pub server_config: Arc<rustls::ServerConfig>,
    store: Arc<CertStore>,
    config: TlsConfig,
    /// The files' modification times just before the startup load: the watcher's baseline,
    /// so a change made after loading but before the watcher starts is not missed.
    loaded_mtimes: Mtimes,
}

type Mtimes = (Option<SystemTime>, Option<SystemTime>);

// === impl Tls ===

impl Tls {
    /// Loads the certificate (failing startup if it is unusable) and builds the server config
    /// with ALPN h2 and http/1.1, TLS 1.2 and 1.3.
    pub fn try_new(config: &TlsConfig) -> Result<Self, TlsError> {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let loaded_mtimes = (mtime(&config.cert), mtime(&config.key));
        let key = load_certified_key(&config.cert, &config.key)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        });
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            server_config: Arc::new(server_config),
            store,
            config: config.clone(),
            loaded_mtimes,
        })
    }

    /// Reloads now. On failure the certificate in use stays.
    pub async fn reload(&self, metrics: &Metrics) -> bool {
        let (cert, key) = (self.config.cert.clone(), self.config.key.clone());
        let loaded = tokio::task::spawn_blocking(move || load_certified_key(&cert, &key)).await;
        match loaded {
            Ok(Ok(k)) => {
                self.export_not_after(&k, metrics);
                self.store.set(Arc::new(k));
                metrics
                    .reloads
                    .with_label_values(&["certificate", "success"])
                    .inc();
                tracing::info!(cert = %self.config.cert.display(), "certificate reloaded");
                true
            }
            Ok(Err(e)) => {
                metrics
                    .reloads
                    .with_label_values(&["certificate", "failure"])
                    .inc();
                tracing::error!(error = %e, "certificate reload failed; keeping the current certificate");
                false
            }
            Err(e) => {
                metrics
                    .reloads
                    .with_label_values(&["certificate", "failure"])
                    .inc();
                tracing::error!(error = %e, "certificate reload task failed");
                false
            }
        }
    }

    /// Reloads when `trigger` is notified (SIGHUP) or either file's mtime changes.
    pub async fn watch(self: Arc<Self>, trigger: Arc<Notify>, metrics: Metrics) {
        self.export_not_after(&self.store.get(), &metrics);
        let mut last = self.loaded_mtimes;
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = trigger.notified() => {
                    // Sampled before reading, so a change during the reload is seen next tick.
                    last = self.mtimes().await;
                    self.reload(&metrics).await;
                }
                _ = tick.tick() => {
                    let now = self.mtimes().await;
                    if now != last {
                        last = now;
                        self.reload(&metrics).await;
                    }
                }
            }
        }
    }

    /// Sets the leaf certificate's notAfter metric (left as it was if it cannot be read).
    fn export_not_after(&self, key: &CertifiedKey, metrics: &Metrics) {
        let cert = self.config.cert.display().to_string();
        match key.cert.first().and_then(not_after) {
            Some(t) => metrics
                .tls_cert_not_after
                .with_label_values(&[cert.as_str()])
                .set(t as f64),
            None => tracing::warn!(cert, "cannot read the certificate's expiry (notAfter)"),
        }
    }

    async fn mtimes(&self) -> Mtimes {
        async fn mtime(p: &Path) -> Option<SystemTime> {
            tokio::fs::metadata(p).await.ok()?.modified().ok()
        }
        (
            mtime(&self.config.cert).await,
            mtime(&self.config.key).await,
        )
    }
}

/// The certificate's notAfter as Unix seconds: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, ... }, ... } (RFC 5280 section 4.1).
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use simple_asn1::ASN1Block::{Explicit, GeneralizedTime, Sequence, UTCTime, Unknown};
    let blocks = simple_asn1::from_der(cert.as_ref()).ok()?;
    let Some(Sequence(_, certificate)) = blocks.first() else {
        return None;
    };
    let Some(Sequence(_, tbs)) = certificate.first() else {
        return None;
    };
    let fields = match tbs.first()? {
        Explicit(..) | Unknown(..) => tbs.get(1..)?,
        _ => tbs.as_slice(),
    };
    let Some(Sequence(_, validity)) = fields.get(3) else {
        return None;
    };
    match validity.get(1)? {
        UTCTime(_, t) | GeneralizedTime(_, t) => Some(t.assume_utc().unix_timestamp()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_expiry() {
        assert_eq!(
            not_after(&CertificateDer::from(vec![0x30, 0x03, 0x02])),
            None
        );
        assert_eq!(not_after(&CertificateDer::from(Vec::new())), None);
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
