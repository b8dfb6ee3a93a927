//! TLS interception: ClientHello peeking, the local CA, forged certificates, upstream
//! connectors, and the per-connection flow that ties them together.

pub mod ca;
pub mod certs;
pub mod hello;
pub mod intercept;
pub mod upstream;

use std::{sync::Arc, time::Duration};

use rustls::crypto::CryptoProvider;

use crate::config::{Pattern, PlainTcp, TlsConfig};

/// Errors preparing TLS state at start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// An upstream connector could not be built.
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
}

/// Everything the listener needs to intercept, bypass or refuse a connection.
#[derive(Debug)]
pub struct TlsContext {
    /// The CA, for exporting its certificate.
    pub ca: Arc<ca::CertAuthority>,
    /// Forged certificates.
    pub certs: certs::CertCache,
    /// Upstream connectors by server name.
    pub connectors: upstream::Connectors,
    /// Names spliced raw instead of intercepted.
    pub bypass: Vec<Pattern>,
    /// What to do with connections that do not start with a ClientHello.
    pub plain_tcp: PlainTcp,
    /// How long to wait for the ClientHello (and for the client's handshake).
    pub hello_timeout: Duration,
}

impl TlsContext {
    /// Loads or creates the CA (under `home` unless configured) and builds every connector.
    pub fn new(config: &TlsConfig, home: &std::path::Path) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(crypto_provider());
        let ca = Arc::new(ca::CertAuthority::resolve(config.ca.as_ref(), home)?);
        let validity = Duration::from_secs(u64::from(config.validity_hours) * 3600);
        Ok(TlsContext {
            certs: certs::CertCache::new(
                Arc::clone(&ca),
                Arc::clone(&provider),
                validity,
                config.cache_capacity,
            ),
            connectors: upstream::Connectors::build(config, &provider)?,
            ca,
            bypass: config.bypass.clone(),
            plain_tcp: config.plain_tcp,
            hello_timeout: config.hello_timeout,
        })
    }

    /// Whether `name` is to be spliced rather than intercepted.
    pub fn is_bypassed(&self, name: &str) -> bool {
        self.bypass.iter().any(|pattern| pattern.matches(name))
    }
}

/// rustls' ring provider with AES-128-GCM preferred: every intercepted byte is decrypted and
/// encrypted again, and AES-128 does that markedly faster than AES-256 at a security level
/// nobody disputes. All the provider's suites stay available.
fn crypto_provider() -> CryptoProvider {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
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
