//! Durations as operators write them (`500ms`, `10s`, `5m`, `1h 30m`), one parser for the
//! config file and the command line.

use std::time::Duration;

/// Why text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration such as 500ms, 10s or 5m: {reason}")]
pub struct DurationError {
    /// What was given.
    pub text: String,
    /// What the parser disliked (overflow included).
    pub reason: String,
}

/// Parses a duration with units (`humantime` syntax: `ms`, `s`, `m`, `h`, `d`, combinable).
///
/// # Errors
/// [`DurationError`] for text without a unit, an unknown unit, or a value that overflows.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|error| DurationError {
        text: text.to_owned(),
        reason: error.to_string(),
    })
}

/// Formats a duration the way [`parse_duration`] reads it back.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_garbage_bare_numbers_and_overflow() {
        for text in ["ten", "", "5", "5 parsecs", "99999999999999999999999h"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.to_string().contains(&format!("`{text}`")), "{error}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for millis in [1, 500, 10_000, 300_000, 5_400_000] {
            let duration = Duration::from_millis(millis);
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }
}
