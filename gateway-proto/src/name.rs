//! Host names as the gateway compares them: the one normalizer for SNI, name patterns, config
//! values, and anything else that names a host.

use std::fmt;

/// The longest host name DNS allows in presentation form, without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;
/// The longest label DNS allows.
pub const MAX_LABEL_LEN: usize = 63;

/// A normalized host name: ASCII letters, digits, `-`, `_` and `.`; lower-case; one trailing
/// dot removed; non-empty labels of at most 63 bytes; at most 253 bytes in all.
///
/// Two spellings of one host (`API.Example.COM.`, `api.example.com`) give equal values, so
/// every comparison (bypass, upstream rules, certificates) sees one name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

/// Why text is not a host name; Display is a short reason for a config error or a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing left after removing one trailing dot.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// A character outside ASCII letters, digits, `-`, `_` and `.`.
    #[error("{}", bad_char_reason(*.0))]
    BadChar(char),
    /// Two dots in a row, or a leading dot.
    #[error("has an empty label")]
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("has a label longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
}

// Catches the usual slips (a URL, a port, a space) as well as Unicode names, which never
// appear un-punycoded on the wire and so could never match.
fn bad_char_reason(bad: char) -> String {
    if bad.is_ascii() {
        format!(
            "contains {bad:?}; write a bare host name such as `api.example.com` or `*.example.com`"
        )
    } else {
        format!("contains {bad:?}; write internationalized names in their `xn--` form")
    }
}

impl HostName {
    /// Validates and normalizes `text`.
    ///
    /// # Errors
    /// [`NameError`] saying which rule `text` breaks.
    pub fn parse(text: &str) -> Result<HostName, NameError> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(bad) = name.chars().find(|&c| !is_name_char(c)) {
            return Err(NameError::BadChar(bad));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong);
            }
        }
        Ok(HostName(name.to_ascii_lowercase()))
    }

    /// [`HostName::parse`] for bytes off the wire (SNI, DNS, Host): not UTF-8 is a bad char.
    ///
    /// # Errors
    /// As [`HostName::parse`].
    pub fn from_bytes(bytes: &[u8]) -> Result<HostName, NameError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => HostName::parse(text),
            Err(_) => Err(NameError::BadChar(char::REPLACEMENT_CHARACTER)),
        }
    }

    /// The normalized name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this name is `suffix` or lies below it (`a.b.example` under `example`): whole
    /// labels only, so `badexample.com` is not under `example.com`.
    #[must_use]
    pub fn is_at_or_below(&self, suffix: &HostName) -> bool {
        self.0
            .strip_suffix(suffix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostName {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        HostName::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    #[test]
    fn normalizes_case_and_one_trailing_dot() {
        let cases = [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("localhost", "localhost"),
            ("_acme.x-y.test", "_acme.x-y.test"),
            ("10.0.0.1", "10.0.0.1"),
            ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ];
        for (text, normalized) in cases {
            assert_eq!(name(text).as_str(), normalized, "{text:?}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_a_host_name_with_the_reason() {
        let long_label = format!("{}.test", "a".repeat(MAX_LABEL_LEN + 1));
        let too_long = format!("{}.test", vec!["a".repeat(60); 5].join("."));
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Empty),
            ("a..test", NameError::EmptyLabel),
            (".a.test", NameError::EmptyLabel),
            ("a.test..", NameError::EmptyLabel),
            ("a b.test", NameError::BadChar(' ')),
            ("a/b", NameError::BadChar('/')),
            ("a.test:443", NameError::BadChar(':')),
            ("*.test", NameError::BadChar('*')),
            ("a\u{0}.test", NameError::BadChar('\0')),
            ("bücher.de", NameError::BadChar('ü')),
            (long_label.as_str(), NameError::LabelTooLong),
            (too_long.as_str(), NameError::TooLong),
        ];
        for (text, error) in cases {
            assert_eq!(HostName::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn length_limits_are_inclusive() {
        let label = "a".repeat(MAX_LABEL_LEN);
        assert!(HostName::parse(&format!("{label}.test")).is_ok());
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253.
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), MAX_NAME_LEN);
        assert!(HostName::parse(&longest).is_ok());
        assert!(HostName::parse(&format!("{longest}.")).is_ok());
        assert_eq!(
            HostName::parse(&format!("{longest}b")),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_rejected() {
        assert!(HostName::from_bytes(b"a\xff.test").is_err());
        assert_eq!(HostName::from_bytes(b"A.test").unwrap().as_str(), "a.test");
    }

    #[test]
    fn below_means_whole_labels() {
        let example = name("example.com");
        assert!(name("example.com").is_at_or_below(&example));
        assert!(name("a.example.com").is_at_or_below(&example));
        assert!(name("a.b.example.com").is_at_or_below(&example));
        assert!(!name("badexample.com").is_at_or_below(&example));
        assert!(!name("com").is_at_or_below(&example));
        assert!(!name("example.com.evil").is_at_or_below(&example));
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            NameError::BadChar(' ').to_string(),
            "contains ' '; write a bare host name such as `api.example.com` or `*.example.com`"
        );
        assert_eq!(
            NameError::BadChar('ü').to_string(),
            "contains 'ü'; write internationalized names in their `xn--` form"
        );
    }
}
