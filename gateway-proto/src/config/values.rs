//! Config values that have rules, each a newtype validated as it is deserialized, so a value
//! that exists is a valid one.

use std::{fmt, num::NonZeroUsize, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    cidr::Cidr,
    duration::{format_duration, parse_duration},
    pattern::Pattern,
};

/// Hours a forged certificate is valid: 1 to 8760 (a year), default 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct ValidityHours(u32);

impl ValidityHours {
    /// Longest validity accepted.
    pub const MAX: u32 = 8760;

    /// The validity as a duration.
    #[must_use]
    pub fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.0) * 3600)
    }

    /// The number of hours.
    #[must_use]
    pub fn hours(self) -> u32 {
        self.0
    }
}

impl Default for ValidityHours {
    fn default() -> Self {
        ValidityHours(24)
    }
}

impl TryFrom<i64> for ValidityHours {
    type Error = String;

    fn try_from(hours: i64) -> Result<Self, String> {
        in_range(hours, 1, Self::MAX).map(ValidityHours)
    }
}

/// Forged certificates kept in the cache; 0 in the file means the default, 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct CacheCapacity(NonZeroUsize);

impl CacheCapacity {
    const DEFAULT: NonZeroUsize = NonZeroUsize::new(1000).expect("1000 is not zero");

    /// The number of entries.
    #[must_use]
    pub fn get(self) -> NonZeroUsize {
        self.0
    }
}

impl Default for CacheCapacity {
    fn default() -> Self {
        CacheCapacity(Self::DEFAULT)
    }
}

impl TryFrom<i64> for CacheCapacity {
    type Error = String;

    fn try_from(entries: i64) -> Result<Self, String> {
        if entries == 0 {
            return Ok(CacheCapacity::default());
        }
        usize::try_from(entries)
            .ok()
            .and_then(NonZeroUsize::new)
            .map(CacheCapacity)
            .ok_or_else(|| {
                format!(
                    "must be 0 (the default, {}) or a positive number of entries (got {entries})",
                    Self::DEFAULT
                )
            })
    }
}

/// How long the gateway waits for a client's first bytes (and its TLS handshake): 1 ms to
/// 60 s, default 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HelloTimeout(Duration);

impl HelloTimeout {
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_secs(60);

    /// The timeout.
    #[must_use]
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for HelloTimeout {
    fn default() -> Self {
        HelloTimeout(Duration::from_secs(10))
    }
}

impl TryFrom<String> for HelloTimeout {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let duration = parse_duration(&text).map_err(|error| error.to_string())?;
        if duration < Self::MIN || duration > Self::MAX {
            return Err(format!(
                "must be from {} to {} (got {text})",
                format_duration(Self::MIN),
                format_duration(Self::MAX)
            ));
        }
        Ok(HelloTimeout(duration))
    }
}

/// A file named in the config: any non-empty path (whether it exists is checked where it is
/// used, with the file's own error).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FilePath(PathBuf);

impl FilePath {
    /// The path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl TryFrom<String> for FilePath {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Err("must not be an empty path");
        }
        Ok(FilePath(PathBuf::from(text)))
    }
}

impl From<&str> for FilePath {
    /// For code and tests that build a config; an empty path would fail where it is opened.
    fn from(text: &str) -> Self {
        FilePath(PathBuf::from(text))
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Pattern::parse(&text)
            .map_err(|why| D::Error::custom(format!("invalid name pattern {text:?}: {why}")))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|why| D::Error::custom(format!("invalid network {text:?}: {why}")))
    }
}

/// `value` as a `T` within `min..=max`, or the reason it is not.
fn in_range<T>(value: i64, min: T, max: T) -> Result<T, String>
where
    T: Copy + fmt::Display + Into<i64> + TryFrom<i64>,
{
    if value < min.into() {
        return Err(format!("must be at least {min} (got {value})"));
    }
    if value > max.into() {
        return Err(format!("must be at most {max} (got {value})"));
    }
    T::try_from(value).map_err(|_| format!("must be at most {max} (got {value})"))
}
