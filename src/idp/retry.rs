//! Retries: exponential backoff with full jitter, bounded attempts, and `Retry-After`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// A backoff was configured with bad values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBackoff {
    /// `min` is zero.
    #[error("backoff minimum must be greater than zero")]
    ZeroMin,
    /// `max` is below `min`.
    #[error("backoff maximum {max:?} is below the minimum {min:?}")]
    MaxBelowMin { min: Duration, max: Duration },
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, min * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// Validates `min` and `max`.
    pub fn try_new(min: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if max < min {
            return Err(InvalidBackoff::MaxBelowMin { min, max });
        }
        Ok(Self { min, max })
    }

    /// The ceiling of the `attempt`-th delay (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The `attempt`-th delay: uniform in `[0, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// `Retry-After` as a delay: seconds (`120`) or an HTTP-date, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, Duration::from_secs(1)),
            Err(InvalidBackoff::ZeroMin)
        );
        assert!(matches!(
            Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(InvalidBackoff::MaxBelowMin { .. })
        ));
    }

    #[test]
    fn grows_to_max_with_jitter_below_ceiling() {
        let b = Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(40), Duration::from_secs(1));
        for n in 0..10 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
    }

    #[test]
    fn parses_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_str(&later).unwrap_or(http::HeaderValue::from_static("x")),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&h, now), None);
    }
}
