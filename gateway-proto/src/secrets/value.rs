//! A secret's real value: redacted in every Debug and Display, wiped from memory on drop.

use std::{fmt, path::Path};

use zeroize::Zeroizing;

use crate::config::SecretConfig;

/// The real value of a secret. Its bytes are only reachable through [`SecretValue::expose`],
/// which the substitution engine calls; formatting it never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps `bytes`.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(Zeroizing::new(bytes))
    }

    /// The bytes, for putting them on the wire.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret's value could not be loaded. Never carries the value, nor a part of it.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The environment variable is not set (or not UTF-8).
    #[error("secret {secret}: environment variable {var} is not set")]
    MissingEnv {
        /// The secret.
        secret: String,
        /// The variable.
        var: String,
    },
    /// The file could not be read.
    #[error("secret {secret}: reading {}: {source}", .path.display())]
    File {
        /// The secret.
        secret: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The value is empty or holds bytes that cannot go into a header.
    #[error("secret {secret}: the value from {source_name} {reason}")]
    Unusable {
        /// The secret.
        secret: String,
        /// `environment variable X` or `file Y`.
        source_name: String,
        /// What is wrong, without the value.
        reason: &'static str,
    },
}

impl SecretConfig {
    /// Reads the value from its source: the daemon's environment or the file (one trailing
    /// newline dropped).
    ///
    /// # Errors
    /// [`ValueError`] naming the secret and the source, never the value.
    pub fn load_value(&self) -> Result<SecretValue, ValueError> {
        let secret = self.name.to_string();
        let (bytes, source_name) = match (&self.value_env, &self.value_file) {
            (Some(var), _) => {
                let value =
                    std::env::var_os(var.as_str()).ok_or_else(|| ValueError::MissingEnv {
                        secret: secret.clone(),
                        var: var.as_str().to_owned(),
                    })?;
                (
                    Zeroizing::new(value.into_encoded_bytes()),
                    format!("environment variable {}", var.as_str()),
                )
            }
            (None, Some(file)) => (read_file(&secret, file.path())?, format!("file {file}")),
            (None, None) => {
                return Err(ValueError::Unusable {
                    secret,
                    source_name: "the config".into(),
                    reason: "has no source (value_env or value_file)",
                });
            }
        };
        check_value(&secret, &source_name, bytes)
    }
}

fn read_file(secret: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ValueError::File {
        secret: secret.to_owned(),
        path: path.to_owned(),
        source,
    })?);
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

fn check_value(
    secret: &str,
    source_name: &str,
    bytes: Zeroizing<Vec<u8>>,
) -> Result<SecretValue, ValueError> {
    let unusable = |reason| ValueError::Unusable {
        secret: secret.to_owned(),
        source_name: source_name.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(unusable("is empty"));
    }
    // A value goes into header fields: a line break there would start a header of its own.
    if bytes.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err(unusable("contains NUL, CR or LF"));
    }
    Ok(SecretValue(bytes))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn secret(source: &str) -> SecretConfig {
        let text = format!("[[secrets]]\nname = \"K\"\n{source}\nhosts = [\"a.test\"]\n");
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .secrets
            .remove(0)
    }

    #[test]
    fn values_never_show_in_formatting() {
        let value = SecretValue::new(b"sk-very-secret".to_vec());
        assert_eq!(format!("{value:?}"), "SecretValue(<redacted>)");
        assert_eq!(value.to_string(), "<redacted>");
        assert_eq!(value.expose(), b"sk-very-secret");
    }

    #[test]
    fn files_lose_one_trailing_newline_and_errors_name_the_source_not_the_value() {
        let dir = std::env::temp_dir().join(format!("gw-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k");
        std::fs::write(&file, "sk-file-value\n").unwrap();
        let loaded = secret(&format!("value_file = {:?}", file.display().to_string()))
            .load_value()
            .unwrap();
        assert_eq!(loaded.expose(), b"sk-file-value");
        std::fs::write(&file, "two\nlines\n").unwrap();
        let error = secret(&format!("value_file = {:?}", file.display().to_string()))
            .load_value()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("contains NUL, CR or LF") && !error.contains("lines"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = secret("value_env = \"GATEWAY_TEST_SURELY_UNSET_VAR\"")
            .load_value()
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "secret K: environment variable GATEWAY_TEST_SURELY_UNSET_VAR is not set"
        );
    }
}
