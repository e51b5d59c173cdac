//! Human durations in config: `500ms`, `30s`, `5m`, `1h`, `2d`.

use std::time::Duration;

/// Parses `<integer><unit>` where unit is one of ms, s, m, h, d.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{s}\" has no unit (use ms, s, m, h or d, e.g. \"30s\")"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration (e.g. \"500ms\", \"30s\", \"1h\")"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "\"{s}\" has an unknown unit \"{}\" (use ms, s, m, h or d)",
                unit.trim()
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("\"{s}\" is too large"))
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
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3 s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
