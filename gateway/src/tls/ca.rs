//! The gateway's local certificate authority: found, loaded or created (and persisted) at start.
//!
//! Resolution: configured cert + key paths (both or neither) → `$GATEWAY_HOME/tls/ca.{crt,key}`
//! (default home /var/lib/gateway) → a new ECDSA P-256 CA written there, the key created with
//! mode 0600. Files that exist but do not parse are errors, never silently replaced.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use gateway_proto::config::CaFiles;

/// Default `$GATEWAY_HOME`.
pub const DEFAULT_HOME: &str = "/var/lib/gateway";
/// Validity of a generated CA.
const CA_VALIDITY_DAYS: i64 = 3650;

/// Errors finding, loading or creating the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read.
    #[error("reading CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A CA file exists but is not a usable certificate or key.
    #[error("CA file {path} is not a valid {what}: {reason}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// One of the two default files exists without the other.
    #[error(
        "{present} exists but {missing} is missing; restore it, or remove both to generate a new CA"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },
    /// Writing a new CA failed.
    #[error("writing CA file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Generating the CA failed.
    #[error("generating the CA: {0}")]
    Generate(#[source] rcgen::Error),
}

/// Where the CA lives and whether it was just created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaLocation {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, mode 0600 when the gateway created it).
    pub key: PathBuf,
}

/// A loaded CA, ready to sign leaf certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    location: CaLocation,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertAuthority")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// `$GATEWAY_HOME`, or the default.
pub fn gateway_home() -> PathBuf {
    std::env::var_os("GATEWAY_HOME").map_or_else(|| PathBuf::from(DEFAULT_HOME), PathBuf::from)
}

/// Where the CA is (or will be created): the configured files, else under `home`.
pub fn locate(configured: Option<&CaFiles>, home: &Path) -> CaLocation {
    match configured {
        Some(files) => CaLocation {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        None => CaLocation {
            cert: home.join("tls/ca.crt"),
            key: home.join("tls/ca.key"),
        },
    }
}

impl CertAuthority {
    /// Loads the configured CA, or the one under `home`, creating it there if neither file exists.
    pub fn resolve(configured: Option<&CaFiles>, home: &Path) -> Result<Self, CaError> {
        let location = locate(configured, home);
        if configured.is_none() {
            match (location.cert.exists(), location.key.exists()) {
                (false, false) => return Self::create(location),
                (true, false) => {
                    return Err(CaError::HalfPresent {
                        present: location.cert,
                        missing: location.key,
                    });
                }
                (false, true) => {
                    return Err(CaError::HalfPresent {
                        present: location.key,
                        missing: location.cert,
                    });
                }
                (true, true) => {}
            }
        }
        Self::load(location)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (the last element of every forged chain).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Where the CA's files are.
    pub fn location(&self) -> &CaLocation {
        &self.location
    }

    /// Signs leaf certificates.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    fn load(location: CaLocation) -> Result<Self, CaError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.into(),
                source,
            })
        };
        let cert_pem = read(&location.cert)?;
        let key_pem = read(&location.key)?;
        let parse_err = |path: &Path, what, reason: String| CaError::Parse {
            path: path.into(),
            what,
            reason,
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| parse_err(&location.key, "private key", e.to_string()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| parse_err(&location.cert, "certificate", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| parse_err(&location.cert, "CA certificate", e.to_string()))?;
        Ok(CertAuthority {
            issuer,
            cert_pem,
            cert_der,
            location,
        })
    }

    fn create(location: CaLocation) -> Result<Self, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(CaError::Generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway local CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gateway");
        // Signs leaves only, never intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;

        if let Some(dir) = location.cert.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CaError::Write {
                    path: dir.into(),
                    source,
                })?;
        }
        // The key is created 0600 in one step, so it is never readable by others, even briefly.
        write_new(&location.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&location.cert, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(cert = %location.cert.display(), key = %location.key.display(), "created a new gateway CA");
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            location,
        })
    }
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let write_err = |source| CaError::Write {
        path: path.into(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn creates_then_reloads_the_same_ca() {
        let home = tempfile::tempdir().unwrap();
        let created = CertAuthority::resolve(None, home.path()).unwrap();
        let key = home.path().join("tls/ca.key");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = CertAuthority::resolve(None, home.path()).unwrap();
        assert_eq!(created.cert_der(), loaded.cert_der());
        assert!(
            created
                .cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(!format!("{created:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_corrupt_ca_is_an_error_not_replaced() {
        let home = tempfile::tempdir().unwrap();
        CertAuthority::resolve(None, home.path()).unwrap();
        let cert = home.path().join("tls/ca.crt");
        fs::write(&cert, "not a certificate").unwrap();
        let err = CertAuthority::resolve(None, home.path()).unwrap_err();
        assert!(
            matches!(err, CaError::Parse { ref path, .. } if *path == cert),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&cert).unwrap(), "not a certificate");
    }

    #[test]
    fn half_present_defaults_are_an_error() {
        let home = tempfile::tempdir().unwrap();
        CertAuthority::resolve(None, home.path()).unwrap();
        fs::remove_file(home.path().join("tls/ca.key")).unwrap();
        let err = CertAuthority::resolve(None, home.path()).unwrap_err();
        assert!(err.to_string().contains("ca.key is missing"), "{err}");
    }

    #[test]
    fn configured_files_are_used_and_must_exist() {
        let home = tempfile::tempdir().unwrap();
        let made = CertAuthority::resolve(None, home.path()).unwrap();
        let files = CaFiles {
            cert: made.location().cert.clone(),
            key: made.location().key.clone(),
        };
        let other_home = tempfile::tempdir().unwrap();
        let loaded = CertAuthority::resolve(Some(&files), other_home.path()).unwrap();
        assert_eq!(loaded.cert_der(), made.cert_der());
        assert!(!other_home.path().join("tls").exists());

        let missing = CaFiles {
            cert: home.path().join("nope.crt"),
            key: files.key.clone(),
        };
        let err = CertAuthority::resolve(Some(&missing), other_home.path()).unwrap_err();
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }
}
