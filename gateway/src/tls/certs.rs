//! Forged leaf certificates: generation signed by the gateway CA, and the LRU cache of ready
//! rustls `ServerConfig`s keyed by subject and the ALPN protocol to offer.
//!
//! Concurrent first connections for one key share a single generation (a per-key `OnceCell`);
//! generation runs on the blocking pool, never under the cache lock; a failed generation is
//! not cached, so it cannot poison later connections.

use std::{
    fmt,
    net::IpAddr,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use lru::LruCache;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{ServerConfig, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::OnceCell;

use gateway_proto::HostName;

use super::ca::CertAuthority;
use crate::metrics::Metrics;

/// Leaves are refreshed when they expire within this margin.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How far `not_before` is backdated, for clients whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// What a forged certificate is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The SNI the client sent.
    Dns(HostName),
    /// No SNI: the original destination's address.
    Ip(IpAddr),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Dns(name) => name.fmt(f),
            Subject::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Errors forging a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not make a certificate for the subject.
    #[error("cannot issue a certificate for {subject}: {source}")]
    Generate {
        subject: Subject,
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the generated certificate and key.
    #[error("cannot serve the certificate for {subject}: {source}")]
    Config {
        subject: Subject,
        #[source]
        source: rustls::Error,
    },
    /// The blocking generation task died.
    #[error("certificate generation for {subject} was aborted")]
    Aborted { subject: Subject },
}

type Key = (Subject, Option<Vec<u8>>);

/// A generated leaf ready to serve.
#[derive(Debug)]
struct Leaf {
    config: Arc<ServerConfig>,
    not_after: SystemTime,
}

type Slot = Arc<OnceCell<Leaf>>;

/// What generates a leaf: [`forge`], or in tests one that can fail on purpose (no host name
/// makes rcgen fail, yet a failed generation must still not be cached).
type Forge = fn(
    &CertAuthority,
    &Arc<CryptoProvider>,
    &Subject,
    Option<Vec<u8>>,
    Duration,
) -> Result<Leaf, CertError>;

/// Issues and caches forged certificates.
pub struct CertCache {
    ca: Arc<CertAuthority>,
    provider: Arc<CryptoProvider>,
    validity: Duration,
    slots: Mutex<LruCache<Key, Slot>>,
    generated: AtomicU64,
    forge: Forge,
    /// Where hits, misses and generations are counted.
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for CertCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertCache")
            .field("validity", &self.validity)
            .field("generated", &self.generated())
            .finish_non_exhaustive()
    }
}

impl CertCache {
    /// A cache of at most `capacity` configs (0 is taken as 1) whose leaves are valid `validity`.
    pub fn new(
        ca: Arc<CertAuthority>,
        provider: Arc<CryptoProvider>,
        validity: Duration,
        capacity: usize,
    ) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        CertCache {
            ca,
            provider,
            validity,
            slots: Mutex::new(LruCache::new(capacity)),
            generated: AtomicU64::new(0),
            forge,
            metrics: None,
        }
    }

    /// Counts hits, misses and generations in `metrics` too.
    #[must_use]
    pub fn observed_by(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How many certificates are cached now.
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many certificates have been generated so far.
    pub fn generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// A `ServerConfig` presenting a certificate for `subject` and offering `alpn` (the protocol
    /// the upstream chose), from the cache or freshly generated.
    pub async fn server_config(
        &self,
        subject: &Subject,
        alpn: Option<&[u8]>,
    ) -> Result<Arc<ServerConfig>, CertError> {
        let key: Key = (subject.clone(), alpn.map(<[u8]>::to_vec));
        let slot = self.slot(&key);
        if let Some(metrics) = &self.metrics {
            metrics.cert_cache(slot.initialized());
        }
        let result = slot
            .get_or_try_init(|| async {
                let leaf = self.generate(subject, alpn).await?;
                self.generated.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = &self.metrics {
                    metrics.cert_generated();
                }
                tracing::info!(subject = %subject, "certificate generated");
                Ok(leaf)
            })
            .await;
        match result {
            Ok(leaf) => Ok(Arc::clone(&leaf.config)),
            Err(err) => {
                self.evict(&key, &slot);
                Err(err)
            }
        }
    }

    /// The slot for `key`: the cached one unless it is about to expire, else a new empty one.
    fn slot(&self, key: &Key) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(key) {
            let fresh = slot.get().is_none_or(|leaf| {
                leaf.not_after
                    .duration_since(SystemTime::now())
                    .is_ok_and(|left| left > REFRESH_MARGIN)
            });
            if fresh {
                return Arc::clone(slot);
            }
        }
        let slot = Slot::default();
        slots.put(key.clone(), Arc::clone(&slot));
        slot
    }

    /// Removes `slot` if it is still the one cached under `key`.
    fn evict(&self, key: &Key, slot: &Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots
            .peek(key)
            .is_some_and(|cached| Arc::ptr_eq(cached, slot))
        {
            slots.pop(key);
        }
    }

    async fn generate(&self, subject: &Subject, alpn: Option<&[u8]>) -> Result<Leaf, CertError> {
        let ca = Arc::clone(&self.ca);
        let provider = Arc::clone(&self.provider);
        let (subject_owned, alpn_owned, validity, forge) = (
            subject.clone(),
            alpn.map(<[u8]>::to_vec),
            self.validity,
            self.forge,
        );
        tokio::task::spawn_blocking(move || {
            forge(&ca, &provider, &subject_owned, alpn_owned, validity)
        })
        .await
        .map_err(|_| CertError::Aborted {
            subject: subject.clone(),
        })?
    }
}

/// Generates a key and a leaf certificate for `subject`, and the `ServerConfig` serving it.
fn forge(
    ca: &CertAuthority,
    provider: &Arc<CryptoProvider>,
    subject: &Subject,
    alpn: Option<Vec<u8>>,
    validity: Duration,
) -> Result<Leaf, CertError> {
    let generate_err = |source| CertError::Generate {
        subject: subject.clone(),
        source,
    };
    let mut params = CertificateParams::default();
    let san = match subject {
        Subject::Dns(name) => SanType::DnsName(name.as_str().try_into().map_err(generate_err)?),
        Subject::Ip(ip) => SanType::IpAddress(*ip),
    };
    params.subject_alt_names = vec![san];
    params
        .distinguished_name
        .push(DnType::CommonName, subject.to_string());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    let not_after = now + validity;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    let key = KeyPair::generate().map_err(generate_err)?;
    let cert = params.signed_by(&key, ca.issuer()).map_err(generate_err)?;

    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.cert_der().clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config_err = |source| CertError::Config {
        subject: subject.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(config_err)?;
    config.alpn_protocols = alpn.into_iter().collect();
    // Our suite order (AES-128-GCM first, see `crypto_provider`) rather than the client's.
    config.ignore_client_order = true;
    Ok(Leaf {
        config: Arc::new(config),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> (tempfile::TempDir, Arc<CertCache>) {
        let home = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertAuthority::resolve(None, home.path()).unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        (
            home,
            Arc::new(CertCache::new(
                ca,
                provider,
                Duration::from_secs(24 * 3600),
                capacity,
            )),
        )
    }

    fn dns(name: &str) -> Subject {
        Subject::Dns(HostName::parse(name).unwrap())
    }

    #[tokio::test]
    async fn concurrent_first_requests_generate_once() {
        let (_home, cache) = cache(10);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move {
                    cache
                        .server_config(&dns("a.test"), Some(b"h2"))
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(cache.generated(), 1);
        cache
            .server_config(&dns("a.test"), Some(b"h2"))
            .await
            .unwrap();
        assert_eq!(cache.generated(), 1);
        cache.server_config(&dns("a.test"), None).await.unwrap();
        assert_eq!(cache.generated(), 2, "another ALPN is another config");
    }

    /// Fails for `fail.test`, forges the rest.
    fn forge_failing_for_one_name(
        ca: &CertAuthority,
        provider: &Arc<CryptoProvider>,
        subject: &Subject,
        alpn: Option<Vec<u8>>,
        validity: Duration,
    ) -> Result<Leaf, CertError> {
        if *subject == dns("fail.test") {
            return Err(CertError::Aborted {
                subject: subject.clone(),
            });
        }
        forge(ca, provider, subject, alpn, validity)
    }

    #[tokio::test]
    async fn failures_stay_alone_and_are_not_cached() {
        let (_home, mut cache) = cache(10);
        Arc::get_mut(&mut cache).unwrap().forge = forge_failing_for_one_name;
        for _ in 0..2 {
            let err = cache
                .server_config(&dns("fail.test"), None)
                .await
                .unwrap_err();
            assert!(matches!(err, CertError::Aborted { .. }), "{err}");
        }
        assert_eq!(cache.slots.lock().unwrap().len(), 0);
        cache.server_config(&dns("ok.test"), None).await.unwrap();
        cache
            .server_config(&Subject::Ip("192.0.2.1".parse().unwrap()), None)
            .await
            .unwrap();
        assert_eq!(cache.generated(), 2);
    }

    #[tokio::test]
    async fn capacity_bounds_the_cache() {
        let (_home, cache) = cache(2);
        for name in ["a.test", "b.test", "c.test", "a.test"] {
            cache.server_config(&dns(name), None).await.unwrap();
        }
        assert_eq!(cache.slots.lock().unwrap().len(), 2);
        assert_eq!(cache.generated(), 4, "a.test was evicted and regenerated");
    }

    #[tokio::test]
    async fn leaves_near_expiry_are_regenerated() {
        let home = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertAuthority::resolve(None, home.path()).unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Valid for less than the refresh margin: every request regenerates.
        let cache = CertCache::new(ca, provider, Duration::from_secs(60), 10);
        cache.server_config(&dns("a.test"), None).await.unwrap();
        cache.server_config(&dns("a.test"), None).await.unwrap();
        assert_eq!(cache.generated(), 2);
    }
}
