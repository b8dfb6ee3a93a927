//! TLS mechanics: the local CA, forged certificates, upstream connectors, and the interception
//! handshake. What to do with a connection is decided in `policy`, not here.

pub mod ca;
pub mod certs;
pub mod intercept;
pub mod upstream;

use std::{path::Path, sync::Arc};

use gateway_proto::config::TlsConfig;
use rustls::crypto::CryptoProvider;

use crate::metrics::Metrics;

/// Errors preparing TLS state at start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
}

/// The CA and the forged-certificate cache, shared by every sandbox.
#[derive(Debug)]
pub struct TlsContext {
    /// The CA, for exporting its certificate.
    pub ca: Arc<ca::CertAuthority>,
    /// Forged certificates.
    pub certs: certs::CertCache,
}

impl TlsContext {
    /// Loads or creates the CA (under `home` unless configured).
    pub fn new(
        config: &TlsConfig,
        home: &Path,
        provider: &Arc<CryptoProvider>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsSetupError> {
        let ca = Arc::new(ca::CertAuthority::resolve(config.ca().as_ref(), home)?);
        Ok(TlsContext {
            certs: certs::CertCache::new(
                Arc::clone(&ca),
                Arc::clone(provider),
                config.validity_hours.duration(),
                config.cache_capacity.get().get(),
            )
            .observed_by(metrics),
            ca,
        })
    }
}

/// rustls' ring provider (aws-lc-rs with the `aws-lc-rs` feature) with AES-128-GCM preferred:
/// every intercepted byte is decrypted and encrypted again, and AES-128 does that markedly
/// faster than AES-256 at a security level nobody disputes. All the provider's suites stay
/// available.
pub fn crypto_provider() -> CryptoProvider {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    #[cfg(not(feature = "aws-lc-rs"))]
    let mut provider = rustls::crypto::ring::default_provider();
    #[cfg(feature = "aws-lc-rs")]
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let fast = [
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    // Stable: the provider's own order is kept within each group.
    provider
        .cipher_suites
        .sort_by_key(|suite| !fast.contains(&suite.suite()));
    provider
}
