//! `[[secrets]]`: credentials the sandbox only ever sees as placeholders. Each entry says where
//! the real value comes from (an environment variable of the daemon or a file, never the config
//! itself), which hosts it may go to, where in a request it is substituted, and what happens to
//! a placeholder headed anywhere else.

use serde::Deserialize;

use super::{FilePath, Invalid, Key};
use crate::Pattern;

/// Longest placeholder accepted.
pub const MAX_PLACEHOLDER_LEN: usize = 1024;
/// Shortest placeholder accepted: shorter ones would match ordinary text by chance.
pub const MIN_PLACEHOLDER_LEN: usize = 8;
/// What default placeholders start with.
pub const PLACEHOLDER_PREFIX: &str = "GATEWAY_SECRET_";

/// One `[[secrets]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct SecretConfig {
    /// The secret's name (letters, digits, `_`), used by `gateway exec --secret NAME`.
    pub name: SecretName,
    /// The daemon's environment variable holding the value.
    #[serde(default)]
    pub value_env: Option<EnvName>,
    /// The file holding the value (one trailing newline is ignored).
    #[serde(default)]
    pub value_file: Option<FilePath>,
    /// What the sandbox holds instead of the value; default `GATEWAY_SECRET_<NAME>`.
    #[serde(default)]
    pub placeholder: Option<Placeholder>,
    /// The variable `gateway exec --secret NAME` sets to the placeholder; default the name.
    #[serde(default)]
    pub env: Option<EnvName>,
    /// Hosts the value may be sent to.
    #[serde(default)]
    pub hosts: Vec<Pattern>,
    /// Send the value to any host (`hosts` then does not matter); must be said explicitly.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Where in a request the placeholder is replaced.
    #[serde(default)]
    pub substitute: Substitute,
    /// What happens to a placeholder headed for a host it is not allowed for.
    #[serde(default)]
    pub on_violation: ViolationAction,
}

/// Where a secret's placeholder is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub struct Substitute {
    /// Header values (`Authorization: Bearer …` included).
    pub headers: bool,
    /// The password or user of `Authorization: Basic` (decoded, replaced, encoded again).
    pub basic_auth: bool,
    /// The URL's query string.
    pub query: bool,
    /// Request bodies (identity encoding only).
    pub body: bool,
}

impl Default for Substitute {
    fn default() -> Self {
        Substitute {
            headers: true,
            basic_auth: true,
            query: false,
            body: false,
        }
    }
}

/// What happens to a placeholder headed for a host it is not allowed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationAction {
    /// The request fails with a 403 page naming the secret and the host.
    #[default]
    Block,
    /// The placeholder goes on unchanged (the value never does).
    Passthrough,
}

/// A secret's name: 1 to 64 ASCII letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SecretName(String);

impl SecretName {
    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SecretName {
    type Error = &'static str;

    fn try_from(name: String) -> Result<Self, &'static str> {
        if name.is_empty() || name.len() > 64 {
            return Err("must be 1 to 64 characters long");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err("may hold only ASCII letters, digits and `_`");
        }
        Ok(SecretName(name))
    }
}

impl std::str::FromStr for SecretName {
    type Err = &'static str;

    fn from_str(name: &str) -> Result<Self, &'static str> {
        SecretName::try_from(name.to_owned())
    }
}

impl std::fmt::Display for SecretName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment variable name: ASCII letters, digits and `_`, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvName(String);

impl EnvName {
    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvName {
    type Error = &'static str;

    fn try_from(name: String) -> Result<Self, &'static str> {
        let valid = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(EnvName(name))
        } else {
            Err(
                "must be an environment variable name (letters, digits, `_`; not starting with a digit)",
            )
        }
    }
}

/// A placeholder: 8 to 1024 bytes, no NUL, CR or LF (it travels in headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Placeholder(String);

impl Placeholder {
    /// The placeholder text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `GATEWAY_SECRET_<NAME>` (upper-cased).
    #[must_use]
    pub fn default_for(name: &SecretName) -> Placeholder {
        Placeholder(format!(
            "{PLACEHOLDER_PREFIX}{}",
            name.as_str().to_ascii_uppercase()
        ))
    }
}

impl TryFrom<String> for Placeholder {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.len() < MIN_PLACEHOLDER_LEN || text.len() > MAX_PLACEHOLDER_LEN {
            return Err(format!(
                "must be {MIN_PLACEHOLDER_LEN} to {MAX_PLACEHOLDER_LEN} bytes long (got {})",
                text.len()
            ));
        }
        if text.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err("must not contain NUL, CR or LF".to_owned());
        }
        Ok(Placeholder(text))
    }
}

impl SecretConfig {
    /// The placeholder, configured or default.
    #[must_use]
    pub fn placeholder(&self) -> Placeholder {
        self.placeholder
            .clone()
            .unwrap_or_else(|| Placeholder::default_for(&self.name))
    }

    /// The variable exec sets to the placeholder.
    #[must_use]
    pub fn env_name(&self) -> String {
        self.env.as_ref().map_or_else(
            || self.name.as_str().to_owned(),
            |env| env.as_str().to_owned(),
        )
    }

    fn validate(&self, index: usize) -> Result<(), Invalid> {
        let key = |name: &str| vec![Key::name("secrets"), Key::Index(index), Key::name(name)];
        let invalid = |name: &str, reason: &str| Invalid {
            key: key(name),
            reason: reason.to_owned(),
        };
        match (&self.value_env, &self.value_file) {
            (None, None) => {
                return Err(invalid(
                    "name",
                    "set value_env or value_file: where the value comes from (never the config)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "value_file",
                    "set value_env or value_file, not both",
                ));
            }
            _ => {}
        }
        if self.hosts.is_empty() && !self.allow_any_host {
            return Err(invalid(
                "hosts",
                "name the hosts the value may go to (or set allow_any_host = true)",
            ));
        }
        Ok(())
    }
}

/// Checks across secrets: names and placeholders unique, no placeholder inside another (one of
/// them could never be told apart).
pub(super) fn validate(secrets: &[SecretConfig]) -> Result<(), Invalid> {
    for (index, secret) in secrets.iter().enumerate() {
        secret.validate(index)?;
        let placeholder = secret.placeholder();
        for (earlier_index, earlier) in secrets[..index].iter().enumerate() {
            let at = |name: &str| vec![Key::name("secrets"), Key::Index(index), Key::name(name)];
            if earlier.name == secret.name {
                return Err(Invalid {
                    key: at("name"),
                    reason: format!("duplicates secrets[{earlier_index}].name ({})", secret.name),
                });
            }
            let other = earlier.placeholder();
            if other.as_str().contains(placeholder.as_str())
                || placeholder.as_str().contains(other.as_str())
            {
                return Err(Invalid {
                    key: at("placeholder"),
                    reason: format!(
                        "the placeholders of secrets {} and {} overlap; make neither contain the other",
                        earlier.name, secret.name
                    ),
                });
            }
        }
    }
    Ok(())
}
