//! Upstream TLS connectors: which roots (and whether to verify at all) apply to which server name.
//!
//! Every connector trusts the platform's native roots plus the global extra CAs; an upstream
//! rule adds its own CA files or turns verification off for names matching its pattern. The most
//! specific matching pattern wins. Each distinct setting gets one connector, built at start.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{
    CertificateDer, ServerName as PkiServerName, UnixTime, pem::PemObject as _,
};

use gateway_proto::{
    HostName, Pattern,
    config::{FilePath, TlsConfig},
};

/// Errors building the connectors.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An extra CA file could not be read.
    #[error("reading CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An extra CA file holds no certificate (or one rustls rejects).
    #[error("CA file {path} {reason}")]
    BadCa { path: PathBuf, reason: String },
    /// rustls rejected the configuration.
    #[error("building an upstream TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The connector settings that make two rules share a connector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Setting {
    extra_ca_files: Vec<PathBuf>,
    verify: bool,
}

/// All upstream connectors, chosen by server name.
pub struct Connectors {
    default: Arc<ClientConfig>,
    /// Rules, most specific first.
    rules: Vec<(Pattern, Arc<ClientConfig>, bool)>,
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<_> = self
            .rules
            .iter()
            .map(|(p, _, verify)| format!("{p} verify={verify}"))
            .collect();
        f.debug_struct("Connectors")
            .field("rules", &rules)
            .finish_non_exhaustive()
    }
}

impl Connectors {
    /// Loads the native roots and every configured CA file, failing on the first unusable one.
    pub fn build(tls: &TlsConfig, provider: &Arc<CryptoProvider>) -> Result<Self, UpstreamError> {
        let base = base_roots(&paths(&tls.extra_ca_files))?;
        let mut built: BTreeMap<Setting, Arc<ClientConfig>> = BTreeMap::new();
        let mut connector = |setting: Setting| -> Result<Arc<ClientConfig>, UpstreamError> {
            if let Some(config) = built.get(&setting) {
                return Ok(Arc::clone(config));
            }
            let config = Arc::new(client_config(&base, &setting, provider)?);
            built.insert(setting, Arc::clone(&config));
            Ok(config)
        };
        let default = connector(Setting {
            extra_ca_files: Vec::new(),
            verify: true,
        })?;
        let mut rules = Vec::with_capacity(tls.upstream.len());
        for rule in &tls.upstream {
            let mut files = paths(&rule.extra_ca_files);
            files.sort();
            let config = connector(Setting {
                extra_ca_files: files,
                verify: rule.verify,
            })?;
            rules.push((rule.pattern.clone(), config, rule.verify));
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.0.specificity()));
        tracing::debug!(
            connectors = built.len(),
            rules = rules.len(),
            "upstream connectors built"
        );
        Ok(Connectors { default, rules })
    }

    /// The client config for `name` (no SNI → the default connector), and whether it verifies.
    pub fn for_name(&self, name: Option<&HostName>) -> (&Arc<ClientConfig>, bool) {
        name.and_then(|name| {
            self.rules
                .iter()
                .find(|(pattern, _, _)| pattern.matches(name))
        })
        .map_or((&self.default, true), |(_, config, verify)| {
            (config, *verify)
        })
    }
}

fn paths(files: &[FilePath]) -> Vec<PathBuf> {
    files.iter().map(|file| file.path().to_owned()).collect()
}

fn base_roots(extra: &[PathBuf]) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "some native root certificates could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "native roots loaded");
    for path in extra {
        add_ca_file(&mut roots, path)?;
    }
    Ok(roots)
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), UpstreamError> {
    let pem = std::fs::read(path).map_err(|source| UpstreamError::Read {
        path: path.into(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| UpstreamError::BadCa {
            path: path.into(),
            reason: format!("is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(UpstreamError::BadCa {
            path: path.into(),
            reason: "holds no certificate".into(),
        });
    }
    for cert in certs {
        roots.add(cert).map_err(|e| UpstreamError::BadCa {
            path: path.into(),
            reason: format!("holds an unusable certificate: {e}"),
        })?;
    }
    Ok(())
}

fn client_config(
    base: &RootCertStore,
    setting: &Setting,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, UpstreamError> {
    let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(UpstreamError::Config)?;
    let config = if setting.verify {
        let mut roots = base.clone();
        for path in &setting.extra_ca_files {
            add_ca_file(&mut roots, path)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(Arc::clone(provider))))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Accepts any upstream certificate (still checking the handshake signature made with it), for
/// names an operator explicitly configured with `verify = false`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &PkiServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use gateway_proto::config::UpstreamRule;

    use super::*;

    fn name(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    fn rule(pattern: &str, verify: bool) -> UpstreamRule {
        UpstreamRule {
            pattern: Pattern::parse(pattern).unwrap(),
            extra_ca_files: Vec::new(),
            verify,
        }
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let tls = TlsConfig {
            upstream: vec![
                rule("*.test", true),
                rule("*.a.test", false),
                rule("x.a.test", true),
            ],
            ..TlsConfig::default()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connectors = Connectors::build(&tls, &provider).unwrap();
        let verify = |text: Option<&str>| connectors.for_name(text.map(name).as_ref()).1;
        assert!(verify(Some("x.a.test")), "exact beats wildcard");
        assert!(!verify(Some("y.a.test")), "longer suffix beats shorter");
        assert!(!verify(Some("a.test")), "a wildcard matches its apex");
        assert!(verify(Some("b.test")));
        assert!(
            verify(Some("other.example")),
            "no rule: the default verifies"
        );
        assert!(verify(None));
    }

    #[test]
    fn identical_settings_share_one_connector() {
        let tls = TlsConfig {
            upstream: vec![
                rule("a.test", false),
                rule("b.test", false),
                rule("c.test", true),
            ],
            ..TlsConfig::default()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connectors = Connectors::build(&tls, &provider).unwrap();
        let a = connectors.for_name(Some(&name("a.test"))).0;
        let b = connectors.for_name(Some(&name("b.test"))).0;
        let c = connectors.for_name(Some(&name("c.test"))).0;
        assert!(Arc::ptr_eq(a, b));
        assert!(
            Arc::ptr_eq(c, connectors.for_name(None).0),
            "verify on, no extra CA: the default"
        );
    }

    #[test]
    fn unusable_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing\n").unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        for (path, expected) in [
            (dir.path().join("missing.pem"), "No such file"),
            (empty, "holds no certificate"),
        ] {
            let tls = TlsConfig {
                extra_ca_files: vec![FilePath::from(path.to_str().unwrap())],
                ..TlsConfig::default()
            };
            let err = Connectors::build(&tls, &provider).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains(expected),
                "{err}"
            );
        }
    }
}
