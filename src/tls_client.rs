//! TLS client configuration shared by upstreams and IdPs: the system roots, or only the
//! certificates of a configured CA file. aws-lc-rs is the provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("ca_file {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client config trusting `ca_file` only, or the system roots when it is `None`.
/// Missing system roots are not an error: connections to https URLs will then fail to verify.
pub fn config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |problem: String| TlsClientError::CaFile {
                path: path.to_owned(),
                problem,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(err("holds no usable certificate".to_string()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "some system root certificates could not be loaded");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config with no trusted roots, for connectors that never use TLS.
pub fn without_roots() -> Result<rustls::ClientConfig, TlsClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}
