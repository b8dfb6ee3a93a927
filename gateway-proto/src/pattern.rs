//! Host name patterns (`api.example.com`, `*.example.com`) and their matching, shared by every
//! rule that names hosts: bypass, upstream scopes, and later policy and secrets.

use std::fmt;

use crate::name::{HostName, NameError};

/// A host name pattern: exact, or `*.suffix`, which matches the suffix itself and every name
/// below it. Normalized like [`HostName`] (case and one trailing dot ignored).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Matches exactly this name.
    Exact(HostName),
    /// Matches this name and every name below it (stored without the leading `*.`).
    Suffix(HostName),
}

/// Why text is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `*` other than one leading `*.`.
    #[error("`*` is only allowed as a leading `*.` (as in `*.example.com`)")]
    Star,
    /// The name part breaks a host name rule.
    #[error(transparent)]
    Name(#[from] NameError),
}

impl Pattern {
    /// Parses and normalizes a pattern.
    ///
    /// # Errors
    /// [`PatternError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.contains('*') {
            return Err(PatternError::Star);
        }
        let name = HostName::parse(name)?;
        Ok(if wildcard {
            Pattern::Suffix(name)
        } else {
            Pattern::Exact(name)
        })
    }

    /// Whether `name` matches.
    #[must_use]
    pub fn matches(&self, name: &HostName) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Suffix(suffix) => name.is_at_or_below(suffix),
        }
    }

    /// Specificity for "most specific wins": an exact name beats any wildcard; among wildcards
    /// the longer suffix (more labels, then more bytes) wins. Greater is more specific.
    #[must_use]
    pub fn specificity(&self) -> impl Ord + use<> {
        let (kind, name) = match self {
            Pattern::Suffix(suffix) => (0u8, suffix.as_str()),
            Pattern::Exact(exact) => (1u8, exact.as_str()),
        };
        (kind, name.split('.').count(), name.len())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(exact) => write!(f, "{exact}"),
            Pattern::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pattern::parse(text)
    }
}

/// Patterns in order; answers which (if any) matches a name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet(Vec<Pattern>);

impl PatternSet {
    /// The set of `patterns`.
    #[must_use]
    pub fn new(patterns: Vec<Pattern>) -> Self {
        PatternSet(patterns)
    }

    /// The most specific pattern matching `name`.
    #[must_use]
    pub fn best_match(&self, name: &HostName) -> Option<&Pattern> {
        self.0
            .iter()
            .filter(|pattern| pattern.matches(name))
            .max_by_key(|pattern| pattern.specificity())
    }

    /// Whether any pattern matches `name`.
    #[must_use]
    pub fn matches(&self, name: &HostName) -> bool {
        self.0.iter().any(|pattern| pattern.matches(name))
    }

    /// Whether there are no patterns.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(name: &str) -> Pattern {
        Pattern::Exact(HostName::parse(name).unwrap())
    }

    fn suffix(name: &str) -> Pattern {
        Pattern::Suffix(HostName::parse(name).unwrap())
    }

    fn host(name: &str) -> HostName {
        HostName::parse(name).unwrap()
    }

    #[test]
    fn parse_normalizes() {
        let cases = [
            ("api.example.com", exact("api.example.com")),
            ("API.Example.COM", exact("api.example.com")),
            ("api.example.com.", exact("api.example.com")),
            ("*.example.com", suffix("example.com")),
            ("*.EXAMPLE.com.", suffix("example.com")),
            ("*.com", suffix("com")),
            ("10.0.0.1", exact("10.0.0.1")),
        ];
        for (text, expected) in cases {
            assert_eq!(Pattern::parse(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn parse_rejects_invalid() {
        let too_long = format!("{}.test", vec!["a".repeat(60); 5].join("."));
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
            assert!(Pattern::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn star_reason_is_specific() {
        for text in ["*", "a.*.test", "*.*.test", "**.a"] {
            assert_eq!(Pattern::parse(text), Err(PatternError::Star), "{text:?}");
        }
    }

    #[test]
    fn matches_table() {
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
            ("*.Example.COM.", "a.example.com", true),
        ];
        for (pattern, name, expected) in cases {
            let parsed = Pattern::parse(pattern).unwrap();
            assert_eq!(parsed.matches(&host(name)), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn specificity_orders_most_specific_first() {
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
        let set = PatternSet::new(
            ["*.c", "*.b.c", "a.b.c", "*.a.b.c"]
                .iter()
                .map(|text| Pattern::parse(text).unwrap())
                .collect(),
        );
        let best = |name: &str| set.best_match(&host(name)).map(ToString::to_string);
        assert_eq!(best("a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(best("x.a.b.c").as_deref(), Some("*.a.b.c"));
        assert_eq!(best("x.b.c").as_deref(), Some("*.b.c"));
        assert_eq!(best("c").as_deref(), Some("*.c"));
        assert_eq!(best("d"), None);
        assert!(set.matches(&host("x.b.c")));
        assert!(!set.matches(&host("d")));
    }

    #[test]
    fn display_round_trips() {
        for text in ["api.example.com", "*.example.com"] {
            let pattern = Pattern::parse(text).unwrap();
            assert_eq!(pattern.to_string(), text);
            assert_eq!(Pattern::parse(&pattern.to_string()), Ok(pattern));
        }
    }
}
