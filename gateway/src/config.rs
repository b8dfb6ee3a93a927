//! Gateway configuration file: parsing and validation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

const DEFAULT_VALIDITY_HOURS: u32 = 24;
const MAX_VALIDITY_HOURS: u32 = 8760;
const DEFAULT_CACHE_CAPACITY: usize = 1000;
const DEFAULT_HELLO_TIMEOUT_MS: u32 = 10_000;
const MAX_HELLO_TIMEOUT_MS: u32 = 60_000;
/// The longest host name DNS allows, without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// Name patterns: exact (`api.example.com`) or wildcard (`*.example.com`,
/// which also matches the apex `example.com`), case-insensitive, one
/// trailing dot ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Matches exactly this name (lower-case, no trailing dot).
    Exact(String),
    /// Matches this name and every name below it; stored without the
    /// leading `*.`, lower-case, no trailing dot.
    Suffix(String),
}

impl Pattern {
    /// Parses and normalizes a pattern; `None` when it is invalid (empty,
    /// `*` alone, `*.` alone, a `*` anywhere except a leading `*.`, empty
    /// labels, characters other than ASCII letters, digits, `-`, `_` and
    /// `.`, or longer than 253 bytes).
    #[must_use]
    pub fn parse(text: &str) -> Option<Pattern> {
        parse_pattern(text).ok()
    }

    /// Whether `name` (already normalized: lower-case, no trailing dot)
    /// matches.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                // The remainder must end on a label boundary, or
                // `*.example.com` would match `badexample.com`.
                .is_some_and(|rest| rest.is_empty() || (rest.len() > 1 && rest.ends_with('.'))),
        }
    }

    /// Specificity for "most specific wins": an exact name beats any
    /// wildcard; among wildcards the longer suffix (more labels, then more
    /// bytes) wins. Greater is more specific.
    #[must_use]
    pub fn specificity(&self) -> impl Ord + use<> {
        let (kind, name) = match self {
            Pattern::Suffix(suffix) => (0u8, suffix),
            Pattern::Exact(exact) => (1u8, exact),
        };
        (kind, name.split('.').count(), name.len())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(exact) => f.write_str(exact),
            Pattern::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Like [`Pattern::parse`], but says why a pattern was rejected so the
/// configuration error can tell the user what to fix.
fn parse_pattern(text: &str) -> Result<Pattern, String> {
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    let without_dot = text.strip_suffix('.').unwrap_or(text);
    let (wildcard, name) = match without_dot.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, without_dot),
    };
    check_host_name(name)?;
    let name = name.to_ascii_lowercase();
    Ok(if wildcard {
        Pattern::Suffix(name)
    } else {
        Pattern::Exact(name)
    })
}

/// Checks the part of a pattern after any leading `*.` and trailing dot.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains('*') {
        return Err("`*` is only allowed as a leading `*.` (as in `*.example.com`)".to_owned());
    }
    if let Some(bad) = name.chars().find(|&c| !is_host_name_char(c)) {
        return Err(bad_char_reason(bad));
    }
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err("has an empty label".to_owned());
    }
    Ok(())
}

// Catches the usual slips (a URL, a port, a space) as well as Unicode
// names, which never appear un-punycoded in SNI and so could never match.
fn bad_char_reason(bad: char) -> String {
    if bad.is_ascii() {
        format!(
            "contains {bad:?}; write a bare host name such as `api.example.com` or `*.example.com`"
        )
    } else {
        format!("contains {bad:?}; write internationalized names in their `xn--` form")
    }
}

fn is_host_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// What to do with a connection whose first bytes are not a TLS `ClientHello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainTcp {
    /// Close the connection (the default).
    #[default]
    Refuse,
    /// Relay the bytes to the destination untouched.
    Relay,
}

/// Upstream settings for the names that `pattern` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRule {
    /// Which upstream names the rule applies to.
    pub pattern: Pattern,
    /// CA files trusted for these upstreams, besides the global ones.
    pub extra_ca_files: Vec<PathBuf>,
    /// Whether to verify the upstream's certificate.
    pub verify: bool,
}

/// The `[tls]` section, validated and with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA that signs forged leaf certificates; `None` when not configured.
    pub ca: Option<CaFiles>,
    /// Validity of forged leaf certificates, in hours (1..=8760).
    pub validity_hours: u32,
    /// Certificate cache entries; a 0 in the file is already resolved to 1000.
    pub cache_capacity: usize,
    /// What to do with non-TLS first bytes.
    pub plain_tcp: PlainTcp,
    /// How long to wait for the `ClientHello`.
    pub hello_timeout: Duration,
    /// Names spliced raw, never intercepted.
    pub bypass: Vec<Pattern>,
    /// CA files trusted for every upstream, besides the native roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Per-pattern upstream settings, in file order.
    pub upstream: Vec<UpstreamRule>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca: None,
            validity_hours: DEFAULT_VALIDITY_HOURS,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            plain_tcp: PlainTcp::default(),
            hello_timeout: Duration::from_millis(DEFAULT_HELLO_TIMEOUT_MS.into()),
            bypass: Vec::new(),
            extra_ca_files: Vec::new(),
            upstream: Vec::new(),
        }
    }
}

/// The CA certificate and private key files, always configured together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA private key (PEM).
    pub key: PathBuf,
}

/// The whole configuration file, validated and with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The `[tls]` section.
    pub tls: TlsConfig,
}

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, otherwise as
    /// [`Config::parse`].
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
    /// [`ConfigError::Parse`] for bad syntax, wrong types and unknown keys;
    /// [`ConfigError::Invalid`] for values outside what is allowed.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = deserialize_raw(text, path)?;
        Validator { path }.config(raw)
    }
}

/// Why a configuration file was rejected. Display is
/// `<file>: <field>: <reason>` (field omitted for `Read`, and for syntax
/// errors, whose reason starts with the line and column instead).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, a value of the wrong type, or an unknown key.
    #[error("{}", located(.path, .field, .reason))]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// Dotted path of the offending key (`tls.upstream[0].verify`);
        /// empty for syntax errors.
        field: String,
        /// What is wrong, with the line and column when known.
        reason: String,
    },
    /// A value that parsed but is not allowed.
    #[error("{}", located(.path, .field, .reason))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Dotted path of the offending value (`tls.bypass[1]`).
        field: String,
        /// What is wrong and, where it helps, the offending value.
        reason: String,
    },
}

fn located(path: &Path, field: &str, reason: &str) -> String {
    if field.is_empty() {
        format!("{}: {reason}", path.display())
    } else {
        format!("{}: {field}: {reason}", path.display())
    }
}

// The raw structs mirror the file one to one. Numbers are i64 (TOML's own
// integer type) so out-of-range values get the same "must be at least /
// at most" message as in-range-but-disallowed ones, instead of a serde
// "expected u32".

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTls {
    ca_cert: Option<String>,
    ca_key: Option<String>,
    validity_hours: Option<i64>,
    cache_capacity: Option<i64>,
    plain_tcp: Option<RawPlainTcp>,
    hello_timeout_ms: Option<i64>,
    bypass: Option<Vec<String>>,
    extra_ca_files: Option<Vec<String>>,
    upstream: Option<Vec<RawUpstream>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawPlainTcp {
    Refuse,
    Relay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawUpstream {
    pattern: String,
    extra_ca_files: Option<Vec<String>>,
    verify: Option<bool>,
}

fn deserialize_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| ConfigError::Parse {
        path: path.to_owned(),
        field: String::new(),
        reason: syntax_reason(&error, text),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        // A quoted key may hold a line break ("a\nb" = 1), and the field names it raw.
        let field = one_line(&field_path(error.path()));
        let reason = value_reason(error.inner(), text);
        ConfigError::Parse {
            path: path.to_owned(),
            field,
            reason,
        }
    })
}

/// `serde_path_to_error` writes the root as "."; the file's root has no name.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Syntax errors have no field to name, so the position leads.
fn syntax_reason(error: &toml::de::Error, text: &str) -> String {
    let message = one_line(error.message());
    match error.span().and_then(|span| line_column(text, span.start)) {
        Some((line, column)) => format!("line {line}, column {column}: {message}"),
        None => message,
    }
}

/// The field already says where; the position still helps in long files.
fn value_reason(error: &toml::de::Error, text: &str) -> String {
    let message = one_line(error.message());
    match error.span().and_then(|span| line_column(text, span.start)) {
        Some((line, column)) => format!("{message} (line {line}, column {column})"),
        None => message,
    }
}

/// Keeps each error on one log line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    Some((line, column))
}

/// Turns the raw file into the public types; every error names its field.
struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        Ok(Config {
            tls: self.tls(raw.tls.unwrap_or_default())?,
        })
    }

    fn tls(&self, raw: RawTls) -> Result<TlsConfig, ConfigError> {
        let defaults = TlsConfig::default();
        Ok(TlsConfig {
            ca: self.ca_files(raw.ca_cert, raw.ca_key)?,
            validity_hours: self.validity_hours(raw.validity_hours)?,
            cache_capacity: self.cache_capacity(raw.cache_capacity)?,
            plain_tcp: raw.plain_tcp.as_ref().map_or(defaults.plain_tcp, plain_tcp),
            hello_timeout: self.hello_timeout(raw.hello_timeout_ms)?,
            bypass: self.patterns("tls.bypass", &raw.bypass.unwrap_or_default())?,
            extra_ca_files: self
                .file_list("tls.extra_ca_files", raw.extra_ca_files.unwrap_or_default())?,
            upstream: self.upstream_rules(raw.upstream.unwrap_or_default())?,
        })
    }

    fn ca_files(
        &self,
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Option<CaFiles>, ConfigError> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(self.ca_pair_error("tls.ca_cert")),
            (None, Some(_)) => return Err(self.ca_pair_error("tls.ca_key")),
        };
        Ok(Some(CaFiles {
            cert: self.file("tls.ca_cert", cert)?,
            key: self.file("tls.ca_key", key)?,
        }))
    }

    fn ca_pair_error(&self, the_one_set: &str) -> ConfigError {
        self.invalid(
            the_one_set,
            format!("set tls.ca_cert and tls.ca_key together (only {the_one_set} is set)"),
        )
    }

    fn validity_hours(&self, raw: Option<i64>) -> Result<u32, ConfigError> {
        let Some(hours) = raw else {
            return Ok(DEFAULT_VALIDITY_HOURS);
        };
        self.in_range("tls.validity_hours", hours, 1, MAX_VALIDITY_HOURS)
    }

    fn cache_capacity(&self, raw: Option<i64>) -> Result<usize, ConfigError> {
        match raw {
            None | Some(0) => Ok(DEFAULT_CACHE_CAPACITY),
            Some(entries) => usize::try_from(entries).map_err(|_| {
                self.invalid(
                    "tls.cache_capacity",
                    format!(
                        "must be 0 (the default, {DEFAULT_CACHE_CAPACITY}) \
                         or a positive number of entries (got {entries})"
                    ),
                )
            }),
        }
    }

    fn hello_timeout(&self, raw: Option<i64>) -> Result<Duration, ConfigError> {
        let Some(millis) = raw else {
            return Ok(Duration::from_millis(DEFAULT_HELLO_TIMEOUT_MS.into()));
        };
        let millis = self.in_range("tls.hello_timeout_ms", millis, 1, MAX_HELLO_TIMEOUT_MS)?;
        Ok(Duration::from_millis(millis.into()))
    }

    fn in_range<T>(&self, field: &str, value: i64, min: T, max: T) -> Result<T, ConfigError>
    where
        T: Copy + fmt::Display + Into<i64> + TryFrom<i64>,
    {
        let too_big = || self.invalid(field, format!("must be at most {max} (got {value})"));
        if value < min.into() {
            return Err(self.invalid(field, format!("must be at least {min} (got {value})")));
        }
        if value > max.into() {
            return Err(too_big());
        }
        T::try_from(value).map_err(|_| too_big())
    }

    fn pattern(&self, field: &str, text: &str) -> Result<Pattern, ConfigError> {
        parse_pattern(text)
            .map_err(|why| self.invalid(field, format!("invalid name pattern {text:?}: {why}")))
    }

    fn patterns(&self, field: &str, texts: &[String]) -> Result<Vec<Pattern>, ConfigError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| self.pattern(&format!("{field}[{index}]"), text))
            .collect()
    }

    fn file(&self, field: &str, text: String) -> Result<PathBuf, ConfigError> {
        if text.is_empty() {
            return Err(self.invalid(field, "must not be an empty path"));
        }
        Ok(PathBuf::from(text))
    }

    fn file_list(&self, field: &str, texts: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
        texts
            .into_iter()
            .enumerate()
            .map(|(index, text)| self.file(&format!("{field}[{index}]"), text))
            .collect()
    }

    fn upstream_rules(&self, raw: Vec<RawUpstream>) -> Result<Vec<UpstreamRule>, ConfigError> {
        let mut rules: Vec<UpstreamRule> = Vec::with_capacity(raw.len());
        for (index, raw_rule) in raw.into_iter().enumerate() {
            let rule = self.upstream_rule(index, raw_rule)?;
            // Two rules for one pattern would leave "most specific wins"
            // with a tie that only file order could break, silently.
            if let Some(first) = rules.iter().position(|seen| seen.pattern == rule.pattern) {
                return Err(self.invalid(
                    format!("tls.upstream[{index}].pattern"),
                    format!(
                        "duplicates tls.upstream[{first}].pattern (both are {})",
                        rule.pattern
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    fn upstream_rule(&self, index: usize, raw: RawUpstream) -> Result<UpstreamRule, ConfigError> {
        let field = format!("tls.upstream[{index}]");
        Ok(UpstreamRule {
            pattern: self.pattern(&format!("{field}.pattern"), &raw.pattern)?,
            extra_ca_files: self.file_list(
                &format!("{field}.extra_ca_files"),
                raw.extra_ca_files.unwrap_or_default(),
            )?,
            verify: raw.verify.unwrap_or(true),
        })
    }
}

fn plain_tcp(raw: &RawPlainTcp) -> PlainTcp {
    match raw {
        RawPlainTcp::Refuse => PlainTcp::Refuse,
        RawPlainTcp::Relay => PlainTcp::Relay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/gateway.toml";

    const FULL_EXAMPLE: &str = r#"
[tls]
ca_cert = "/path/ca.crt"        # optional; with ca_key (both or neither)
ca_key = "/path/ca.key"
validity_hours = 24              # forged leaf validity, >= 1, <= 8760 (default 24)
cache_capacity = 1000            # cert cache entries; 0 means the default 1000
plain_tcp = "refuse"             # "refuse" (default) | "relay": what to do with non-TLS first bytes
hello_timeout_ms = 10000         # ClientHello wait, 1..=60000 (default 10000)
bypass = ["pinned.example.com", "*.bank.test"]   # names spliced raw, never intercepted
extra_ca_files = ["/etc/gateway/corp-ca.pem"]    # trusted for every upstream, besides native roots

[[tls.upstream]]                 # per-pattern upstream settings, repeatable
pattern = "*.internal.test"
extra_ca_files = ["/etc/gateway/internal-ca.pem"]   # default []
verify = true                    # default true; false = do not verify that upstream's certificate
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE))
    }

    fn tls(body: &str) -> Result<TlsConfig, ConfigError> {
        parse(&format!("[tls]\n{body}\n")).map(|config| config.tls)
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn tls_error(body: &str) -> String {
        error_text(&format!("[tls]\n{body}\n"))
    }

    /// The field of a Parse error, which must be what `text` produces.
    fn parse_error_field(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Parse { field, .. } => field,
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }

    fn exact(name: &str) -> Pattern {
        Pattern::Exact(name.to_owned())
    }

    fn suffix(name: &str) -> Pattern {
        Pattern::Suffix(name.to_owned())
    }

    #[test]
    fn empty_file_gives_defaults() {
        for text in ["", "\n\n", "# only a comment\n", "[tls]\n"] {
            assert_eq!(parse(text).unwrap(), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let tls = TlsConfig::default();
        assert_eq!(tls.ca, None);
        assert_eq!(tls.validity_hours, 24);
        assert_eq!(tls.cache_capacity, 1000);
        assert_eq!(tls.plain_tcp, PlainTcp::Refuse);
        assert_eq!(tls.hello_timeout, Duration::from_secs(10));
        assert!(tls.bypass.is_empty());
        assert!(tls.extra_ca_files.is_empty());
        assert!(tls.upstream.is_empty());
    }

    #[test]
    fn full_example_parses_into_expected_struct() {
        let expected = Config {
            tls: TlsConfig {
                ca: Some(CaFiles {
                    cert: PathBuf::from("/path/ca.crt"),
                    key: PathBuf::from("/path/ca.key"),
                }),
                validity_hours: 24,
                cache_capacity: 1000,
                plain_tcp: PlainTcp::Refuse,
                hello_timeout: Duration::from_secs(10),
                bypass: vec![exact("pinned.example.com"), suffix("bank.test")],
                extra_ca_files: vec![PathBuf::from("/etc/gateway/corp-ca.pem")],
                upstream: vec![UpstreamRule {
                    pattern: suffix("internal.test"),
                    extra_ca_files: vec![PathBuf::from("/etc/gateway/internal-ca.pem")],
                    verify: true,
                }],
            },
        };
        assert_eq!(parse(FULL_EXAMPLE).unwrap(), expected);
    }

    #[test]
    fn non_default_values_are_kept() {
        let tls = tls(r#"
validity_hours = 8760
cache_capacity = 5
plain_tcp = "relay"
hello_timeout_ms = 60000
bypass = ["API.Example.COM."]
[[tls.upstream]]
pattern = "self-signed.test"
verify = false
[[tls.upstream]]
pattern = "*.self-signed.test"
"#)
        .unwrap();
        assert_eq!(tls.validity_hours, 8760);
        assert_eq!(tls.cache_capacity, 5);
        assert_eq!(tls.plain_tcp, PlainTcp::Relay);
        assert_eq!(tls.hello_timeout, Duration::from_secs(60));
        assert_eq!(tls.bypass, vec![exact("api.example.com")]);
        assert_eq!(
            tls.upstream,
            vec![
                UpstreamRule {
                    pattern: exact("self-signed.test"),
                    extra_ca_files: vec![],
                    verify: false,
                },
                UpstreamRule {
                    pattern: suffix("self-signed.test"),
                    extra_ca_files: vec![],
                    verify: true,
                },
            ]
        );
    }

    #[test]
    fn minimal_bounds_are_accepted() {
        let tls = tls("validity_hours = 1\nhello_timeout_ms = 1").unwrap();
        assert_eq!(tls.validity_hours, 1);
        assert_eq!(tls.hello_timeout, Duration::from_millis(1));
    }

    #[test]
    fn cache_capacity_zero_means_default() {
        assert_eq!(tls("cache_capacity = 0").unwrap().cache_capacity, 1000);
    }

    #[test]
    fn negative_cache_capacity_is_rejected() {
        assert_eq!(
            tls_error("cache_capacity = -3"),
            "/etc/gateway.toml: tls.cache_capacity: must be 0 (the default, 1000) \
             or a positive number of entries (got -3)"
        );
    }

    #[test]
    fn validity_hours_out_of_range() {
        let cases = [
            ("0", "must be at least 1 (got 0)"),
            ("-1", "must be at least 1 (got -1)"),
            ("8761", "must be at most 8760 (got 8761)"),
            ("99999999999", "must be at most 8760 (got 99999999999)"),
        ];
        for (value, reason) in cases {
            assert_eq!(
                tls_error(&format!("validity_hours = {value}")),
                format!("/etc/gateway.toml: tls.validity_hours: {reason}")
            );
        }
    }

    #[test]
    fn hello_timeout_out_of_range() {
        let cases = [
            ("0", "must be at least 1 (got 0)"),
            ("-5", "must be at least 1 (got -5)"),
            ("60001", "must be at most 60000 (got 60001)"),
        ];
        for (value, reason) in cases {
            assert_eq!(
                tls_error(&format!("hello_timeout_ms = {value}")),
                format!("/etc/gateway.toml: tls.hello_timeout_ms: {reason}")
            );
        }
    }

    #[test]
    fn ca_key_without_cert() {
        assert_eq!(
            tls_error(r#"ca_key = "/path/ca.key""#),
            "/etc/gateway.toml: tls.ca_key: set tls.ca_cert and tls.ca_key together \
             (only tls.ca_key is set)"
        );
    }

    #[test]
    fn ca_cert_without_key() {
        assert_eq!(
            tls_error(r#"ca_cert = "/path/ca.crt""#),
            "/etc/gateway.toml: tls.ca_cert: set tls.ca_cert and tls.ca_key together \
             (only tls.ca_cert is set)"
        );
    }

    #[test]
    fn empty_ca_paths_are_rejected() {
        assert_eq!(
            tls_error("ca_cert = \"\"\nca_key = \"/k\""),
            "/etc/gateway.toml: tls.ca_cert: must not be an empty path"
        );
        assert_eq!(
            tls_error("ca_cert = \"/c\"\nca_key = \"\""),
            "/etc/gateway.toml: tls.ca_key: must not be an empty path"
        );
    }

    #[test]
    fn empty_path_in_extra_ca_files() {
        assert_eq!(
            tls_error(r#"extra_ca_files = ["/a.pem", ""]"#),
            "/etc/gateway.toml: tls.extra_ca_files[1]: must not be an empty path"
        );
    }

    #[test]
    fn empty_path_in_upstream_extra_ca_files() {
        let text = "[[tls.upstream]]\npattern = \"a.test\"\nextra_ca_files = [\"\"]\n";
        assert_eq!(
            error_text(text),
            "/etc/gateway.toml: tls.upstream[0].extra_ca_files[0]: must not be an empty path"
        );
    }

    #[test]
    fn invalid_bypass_pattern_names_index_and_value() {
        assert_eq!(
            tls_error(r#"bypass = ["ok.test", "a b"]"#),
            "/etc/gateway.toml: tls.bypass[1]: invalid name pattern \"a b\": contains ' '; \
             write a bare host name such as `api.example.com` or `*.example.com`"
        );
        assert_eq!(
            tls_error(r#"bypass = ["*"]"#),
            "/etc/gateway.toml: tls.bypass[0]: invalid name pattern \"*\": \
             `*` is only allowed as a leading `*.` (as in `*.example.com`)"
        );
    }

    #[test]
    fn invalid_upstream_pattern_names_field() {
        let text =
            "[[tls.upstream]]\npattern = \"a.test\"\n[[tls.upstream]]\npattern = \"a..test\"\n";
        assert_eq!(
            error_text(text),
            "/etc/gateway.toml: tls.upstream[1].pattern: invalid name pattern \"a..test\": \
             has an empty label"
        );
    }

    #[test]
    fn duplicate_upstream_pattern_names_both_rules() {
        let text = r#"
[[tls.upstream]]
pattern = "*.internal.test"
[[tls.upstream]]
pattern = "internal.test"
[[tls.upstream]]
pattern = "*.Internal.TEST."
verify = false
"#;
        assert_eq!(
            error_text(text),
            "/etc/gateway.toml: tls.upstream[2].pattern: duplicates tls.upstream[0].pattern \
             (both are *.internal.test)"
        );
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        assert_eq!(parse_error_field("foo = 1\n"), "foo");
        assert!(error_text("foo = 1\n").starts_with("/etc/gateway.toml: foo: unknown field `foo`"));
    }

    #[test]
    fn unknown_tls_key_is_named() {
        assert_eq!(parse_error_field("[tls]\nvalidity = 3\n"), "tls.validity");
    }

    #[test]
    fn unknown_upstream_key_is_named() {
        let text = "[[tls.upstream]]\npattern = \"a.test\"\nverfy = false\n";
        assert_eq!(parse_error_field(text), "tls.upstream[0].verfy");
        assert!(
            error_text(text)
                .starts_with("/etc/gateway.toml: tls.upstream[0].verfy: unknown field `verfy`")
        );
    }

    #[test]
    fn missing_upstream_pattern_is_named() {
        let text = "[[tls.upstream]]\nverify = false\n";
        assert_eq!(parse_error_field(text), "tls.upstream[0]");
        assert!(error_text(text).contains("missing field `pattern`"));
    }

    #[test]
    fn wrong_type_names_field_and_line() {
        assert_eq!(
            parse_error_field("[tls]\nvalidity_hours = \"x\"\n"),
            "tls.validity_hours"
        );
        assert_eq!(
            tls_error(r#"validity_hours = "x""#),
            "/etc/gateway.toml: tls.validity_hours: invalid type: string \"x\", expected i64 \
             (line 2, column 18)"
        );
    }

    #[test]
    fn wrong_type_inside_list_names_index() {
        assert_eq!(
            parse_error_field("[tls]\nbypass = [\"a\", 3]\n"),
            "tls.bypass[1]"
        );
        assert_eq!(parse_error_field("tls = 5\n"), "tls");
    }

    #[test]
    fn unknown_plain_tcp_value_lists_choices() {
        assert_eq!(
            tls_error(r#"plain_tcp = "drop""#),
            "/etc/gateway.toml: tls.plain_tcp: unknown variant `drop`, \
             expected `refuse` or `relay` (line 2, column 13)"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column_but_no_field() {
        let text = "[tls]\nvalidity_hours = = 3\n";
        match parse(text).unwrap_err() {
            ConfigError::Parse { field, reason, .. } => {
                assert_eq!(field, "");
                assert!(reason.starts_with("line 2, column 18: "), "{reason}");
            }
            other => panic!("expected a Parse error, got {other:?}"),
        }
        assert!(error_text(text).starts_with("/etc/gateway.toml: line 2, column 18: "));
    }

    #[test]
    fn duplicate_key_is_a_syntax_error_with_line() {
        let text = "[tls]\nvalidity_hours = 1\nvalidity_hours = 2\n";
        assert!(error_text(text).starts_with("/etc/gateway.toml: line 3, "));
    }

    #[test]
    fn errors_stay_on_one_line() {
        let texts = ["[tls\n", "[tls]\nbypass = [\n", "[tls]\nfoo = 1\n"];
        for text in texts {
            assert!(!error_text(text).contains('\n'), "{text:?}");
        }
    }

    #[test]
    fn load_missing_file_names_the_file() {
        let path = std::env::temp_dir().join(format!(
            "gateway-config-test-missing-{}.toml",
            std::process::id()
        ));
        let error = Config::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let path = std::env::temp_dir().join(format!(
            "gateway-config-test-load-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "[tls]\nvalidity_hours = 48\n").unwrap();
        let loaded = Config::load(&path);
        std::fs::write(&path, "[tls]\nvalidity_hours = 0\n").unwrap();
        let rejected = Config::load(&path);
        std::fs::remove_file(&path).unwrap();

        assert_eq!(loaded.unwrap().tls.validity_hours, 48);
        assert_eq!(
            rejected.unwrap_err().to_string(),
            format!(
                "{}: tls.validity_hours: must be at least 1 (got 0)",
                path.display()
            )
        );
    }

    #[test]
    fn pattern_parse_normalizes() {
        let cases = [
            ("api.example.com", exact("api.example.com")),
            ("API.Example.COM", exact("api.example.com")),
            ("api.example.com.", exact("api.example.com")),
            ("*.example.com", suffix("example.com")),
            ("*.EXAMPLE.com.", suffix("example.com")),
            ("localhost", exact("localhost")),
            ("*.com", suffix("com")),
            ("_acme.x-y.test", exact("_acme.x-y.test")),
            ("10.0.0.1", exact("10.0.0.1")),
            ("xn--bcher-kva.de", exact("xn--bcher-kva.de")),
        ];
        for (text, expected) in cases {
            assert_eq!(Pattern::parse(text), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn pattern_parse_rejects_invalid() {
        let too_long = format!("{}.test", "a".repeat(MAX_NAME_LEN - 4));
        let cases = [
            "",
            ".",
            "*",
            "*.",
            "*..",
            "**.a",
            "*a.test",
            "a*.test",
            "a.*.test",
            "*.*.test",
            "test.*",
            "a..test",
            ".a.test",
            "a.test..",
            "a b.test",
            " a.test",
            "a.test ",
            "a\tb.test",
            "a\u{0}.test",
            "https://a.test",
            "a.test:443",
            "bücher.de",
            &too_long,
        ];
        for text in cases {
            assert_eq!(Pattern::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn pattern_length_limit_is_253() {
        let longest = format!("{}.test", "a".repeat(MAX_NAME_LEN - 5));
        assert_eq!(longest.len(), 253);
        assert!(Pattern::parse(&longest).is_some());
        assert!(Pattern::parse(&format!("{longest}.")).is_some());
        assert!(Pattern::parse(&format!("*.{longest}")).is_some());
    }

    #[test]
    fn pattern_matches_table() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "example.com", false),
            ("api.example.com", "x.api.example.com", false),
            ("API.Example.com.", "api.example.com", true),
            ("*.example.com", "example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "example.com.evil", false),
            ("*.example.com", "com", false),
            ("*.example.com", ".example.com", false),
            ("*.Example.COM.", "a.example.com", true),
        ];
        for (pattern, name, expected) in cases {
            let parsed = Pattern::parse(pattern).unwrap();
            assert_eq!(parsed.matches(name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn pattern_specificity_orders_most_specific_first() {
        let most_to_least = ["a.b.c", "*.a.b.c", "*.bb.c", "*.b.c", "*.c"];
        let patterns: Vec<Pattern> = most_to_least
            .iter()
            .map(|text| Pattern::parse(text).unwrap())
            .collect();
        for pair in patterns.windows(2) {
            assert!(
                pair[0].specificity() > pair[1].specificity(),
                "{} should beat {}",
                pair[0],
                pair[1]
            );
        }
        // A short exact name still beats a long wildcard.
        assert!(exact("c").specificity() > suffix("a.b.c").specificity());
    }

    #[test]
    fn most_specific_matching_pattern_wins() {
        let patterns: Vec<Pattern> = ["*.c", "*.b.c", "a.b.c", "*.a.b.c"]
            .iter()
            .map(|text| Pattern::parse(text).unwrap())
            .collect();
        let best = |name: &str| {
            patterns
                .iter()
                .filter(|pattern| pattern.matches(name))
                .max_by_key(|pattern| pattern.specificity())
                .map(ToString::to_string)
        };
        assert_eq!(best("a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(best("x.a.b.c").as_deref(), Some("*.a.b.c"));
        assert_eq!(best("x.b.c").as_deref(), Some("*.b.c"));
        assert_eq!(best("c").as_deref(), Some("*.c"));
        assert_eq!(best("d"), None);
    }

    #[test]
    fn pattern_display_round_trips() {
        for text in ["api.example.com", "*.example.com"] {
            let pattern = Pattern::parse(text).unwrap();
            assert_eq!(pattern.to_string(), text);
            assert_eq!(Pattern::parse(&pattern.to_string()), Some(pattern));
        }
    }
}
