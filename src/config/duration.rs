//! Human durations in config: `500ms`, `30s`, `5m`, `1h`, `2d`.

use std::time::Duration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Digits only.
    #[error("\"{0}\" has no unit (use ms, s, m, h or d, e.g. \"30s\")")]
    NoUnit(String),
    /// No number before the unit.
    #[error("\"{0}\" is not a duration (e.g. \"500ms\", \"30s\", \"1h\")")]
    NotADuration(String),
    /// A unit other than ms, s, m, h, d.
    #[error("\"{text}\" has an unknown unit \"{unit}\" (use ms, s, m, h or d)")]
    UnknownUnit {
        /// The whole value.
        text: String,
        /// The unit it has.
        unit: String,
    },
    /// More milliseconds than a u64 holds.
    #[error("\"{0}\" is too large")]
    TooLarge(String),
}

/// Parses `<integer><unit>` where unit is one of ms, s, m, h, d.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(s.to_string()))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_string()))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(DurationError::UnknownUnit {
                text: s.to_string(),
                unit: unit.trim().to_string(),
            });
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| DurationError::TooLarge(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_bad() {
        assert_eq!(
            parse_duration("30"),
            Err(DurationError::NoUnit("30".into()))
        );
        assert_eq!(
            parse_duration("s"),
            Err(DurationError::NotADuration("s".into()))
        );
        assert!(matches!(
            parse_duration("3 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse_duration("3w"),
            Err(DurationError::UnknownUnit {
                text: "3w".into(),
                unit: "w".into()
            })
        );
        assert_eq!(
            parse_duration("-3s"),
            Err(DurationError::NotADuration("-3s".into()))
        );
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(
            parse_duration("999999999999999999d"),
            Err(DurationError::TooLarge("999999999999999999d".into()))
        );
    }
}
