//! The configuration file: every key is one field of one serde struct below, with its default
//! beside it; values with rules are validated newtypes ([`values`]); checks across fields are in
//! [`Config::validate`]. Errors name the file, the key path, the reason and the line.

mod dns;
mod error;
mod policy;
mod sandbox;
mod secrets;
mod values;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::{
    dns::{BindingTtl, DeniedAnswer, DnsCacheSize, DnsConfig, Upstream},
    error::{ConfigError, Position},
    policy::{NameDenial, NameRules, PolicyConfig, PolicyError, PolicyOverrides},
    sandbox::SandboxTable,
    secrets::{
        EnvName, MAX_PLACEHOLDER_LEN, Placeholder, SecretConfig, SecretName, Substitute,
        ViolationAction,
    },
    values::{CacheCapacity, FilePath, HelloTimeout, ValidityHours},
};
use crate::pattern::Pattern;

/// The commented config file printed by `gateway config default`: every key at its default.
/// A test parses it and compares it with [`Config::default`], so the two cannot drift.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub struct Config {
    /// `[tls]`: interception.
    pub tls: TlsConfig,
    /// `[policy]`: what sandboxes may reach (defaults for every sandbox).
    pub policy: PolicyConfig,
    /// `[[secrets]]`: credentials substituted for placeholders on the wire.
    pub secrets: Vec<SecretConfig>,
    /// `[[sandbox]]`: sandboxes `gateway run` serves from the start.
    pub sandbox: Vec<SandboxTable>,
    /// `[dns]`: the DNS service sandboxes' queries go to.
    pub dns: DnsConfig,
}

/// The `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub struct TlsConfig {
    /// The CA certificate (PEM) that signs forged certificates; with `ca_key`, both or neither.
    pub ca_cert: Option<FilePath>,
    /// The CA's private key (PEM).
    pub ca_key: Option<FilePath>,
    /// Validity of forged certificates.
    pub validity_hours: ValidityHours,
    /// Forged certificates kept (LRU).
    pub cache_capacity: CacheCapacity,
    /// What to do with connections whose first bytes are not TLS.
    pub plain_tcp: PlainTcp,
    /// How long to wait for a client's ClientHello and TLS handshake.
    pub hello_timeout: HelloTimeout,
    /// Names spliced raw, never intercepted.
    pub bypass: Vec<Pattern>,
    /// Splice bypassed connections in the kernel (a sockmap), once the ClientHello is
    /// replayed; off, or where the kernel refuses, they are copied in user space.
    pub kernel_splice: bool,
    /// CA files trusted for every upstream, besides the system roots.
    pub extra_ca_files: Vec<FilePath>,
    /// Per-pattern upstream settings; the most specific pattern wins.
    pub upstream: Vec<UpstreamRule>,
}

/// Upstream settings for the names that `pattern` matches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct UpstreamRule {
    /// Which upstream names the rule applies to.
    pub pattern: Pattern,
    /// CA files trusted for these upstreams, besides the global ones.
    #[serde(default)]
    pub extra_ca_files: Vec<FilePath>,
    /// Whether to verify these upstreams' certificates.
    #[serde(default = "verify_by_default")]
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_cert: None,
            ca_key: None,
            validity_hours: ValidityHours::default(),
            cache_capacity: CacheCapacity::default(),
            plain_tcp: PlainTcp::default(),
            hello_timeout: HelloTimeout::default(),
            bypass: Vec::new(),
            kernel_splice: true,
            extra_ca_files: Vec::new(),
            upstream: Vec::new(),
        }
    }
}

fn verify_by_default() -> bool {
    true
}

/// What to do with a connection whose first bytes are not a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainTcp {
    /// Close the connection.
    #[default]
    Refuse,
    /// Relay the bytes to the destination untouched.
    Relay,
}

/// The CA certificate and key files, configured together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA private key (PEM).
    pub key: PathBuf,
}

impl TlsConfig {
    /// The configured CA files; `None` when neither is set (a validated config never has one
    /// without the other).
    #[must_use]
    pub fn ca(&self) -> Option<CaFiles> {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some(CaFiles {
                cert: cert.path().to_owned(),
                key: key.path().to_owned(),
            }),
            _ => None,
        }
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `tls`, `bypass`, ...
    Name(String),
    /// `[1]`.
    Index(usize),
}

impl Key {
    fn name(name: &str) -> Key {
        Key::Name(name.to_owned())
    }
}

/// A check across fields that failed: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key the error is reported at.
    pub key: Vec<Key>,
    /// What is wrong.
    pub reason: String,
}

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, otherwise as [`Config::parse`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in error messages.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for bad TOML; [`ConfigError::Invalid`] for unknown keys, values
    /// of the wrong type or outside their rules, and failed checks across fields.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let document = error::parse_document(text, path)?;
        let config: Config = error::deserialize(&document, text, path)?;
        config
            .validate()
            .map_err(|invalid| error::locate(invalid, &document, text, path))?;
        Ok(config)
    }

    /// Checks that involve more than one value.
    ///
    /// # Errors
    /// The first check that fails, with the key to report it at.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.tls.validate()?;
        self.policy.validate()?;
        self.dns.validate()?;
        secrets::validate(&self.secrets)?;
        self.validate_sandboxes()
    }

    /// Each `[[sandbox]]` gets secrets that exist.
    fn validate_sandboxes(&self) -> Result<(), Invalid> {
        for (index, sandbox) in self.sandbox.iter().enumerate() {
            for (at, name) in sandbox.secrets.iter().enumerate() {
                if !self.secrets.iter().any(|secret| &secret.name == name) {
                    return Err(Invalid {
                        key: vec![
                            Key::name("sandbox"),
                            Key::Index(index),
                            Key::name("secrets"),
                            Key::Index(at),
                        ],
                        reason: format!("there is no [[secrets]] entry named {name}"),
                    });
                }
            }
        }
        Ok(())
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let tls = |key: &str| vec![Key::name("tls"), Key::name(key)];
        match (&self.ca_cert, &self.ca_key) {
            (Some(_), None) => {
                return Err(Invalid {
                    key: tls("ca_cert"),
                    reason: "set tls.ca_cert and tls.ca_key together (only tls.ca_cert is set)"
                        .to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(Invalid {
                    key: tls("ca_key"),
                    reason: "set tls.ca_cert and tls.ca_key together (only tls.ca_key is set)"
                        .to_owned(),
                });
            }
            _ => {}
        }
        // Two rules for one pattern would leave "most specific wins" with a tie that only
        // file order could break, silently.
        for (index, rule) in self.upstream.iter().enumerate() {
            if let Some(first) = self.upstream[..index]
                .iter()
                .position(|seen| seen.pattern == rule.pattern)
            {
                return Err(Invalid {
                    key: vec![
                        Key::name("tls"),
                        Key::name("upstream"),
                        Key::Index(index),
                        Key::name("pattern"),
                    ],
                    reason: format!(
                        "duplicates tls.upstream[{first}].pattern (both are {})",
                        rule.pattern
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
