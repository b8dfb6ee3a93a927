//! A test CA, made fresh by each test, and leaf certificates it signs for upstream servers.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA and the directory its files are written to.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `common_name`; its certificate is at [`TestPki::ca_file`].
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        fs::write(dir.path().join("ca.pem"), cert.pem())?;
        Ok(TestPki {
            dir,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM), for clients' trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A self-signed server certificate (no CA at all) for `names`, as `<label>.crt/.key`.
    pub fn self_signed(&self, label: &str, names: &[&str]) -> anyhow::Result<CertFiles> {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        self.write(label, &cert, &key)
    }

    /// A gateway config (TOML) trusting this CA for every upstream.
    pub fn trusted_config(&self) -> String {
        format!("[tls]\nextra_ca_files = [{:?}]\n", self.ca_file())
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for `names` and `ips`, written as `<label>.crt`/`<label>.key`.
    pub fn issue(&self, label: &str, names: &[&str], ips: &[IpAddr]) -> anyhow::Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(label));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        self.write(label, &cert, &key)
    }

    fn write(
        &self,
        label: &str,
        cert: &rcgen::Certificate,
        key: &KeyPair,
    ) -> anyhow::Result<CertFiles> {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{label}.crt")),
            key: self.dir.path().join(format!("{label}.key")),
        };
        fs::write(&files.cert, cert.pem())?;
        fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
