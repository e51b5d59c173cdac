//! A circuit breaker per issuer: after `threshold` consecutive failures it opens and calls
//! fail at once for `open_for`; then one probe is let through (half-open). A successful probe
//! closes it, a failed one opens it again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::SharedClock;

/// The breaker's state, as exported in `portcullis_idp_breaker_state` (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// Calls fail at once.
    Open = 1,
    /// One probe is in flight.
    HalfOpen = 2,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u32,
    open_for: Duration,
    clock: SharedClock,
}

// === impl Breaker ===

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `open_for`.
    pub fn new(threshold: u32, open_for: Duration, clock: SharedClock) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
            }),
            threshold: threshold.max(1),
            open_for,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Never held across an await; a poisoned lock still holds a usable state.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go out now. Moves Open to HalfOpen when the open time is over
    /// (that caller is the probe).
    pub fn allow(&self) -> bool {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => false,
            BreakerState::Open => {
                let over = g
                    .opened_at
                    .is_none_or(|t| self.clock.now() >= t + self.open_for);
                if over {
                    g.state = BreakerState::HalfOpen;
                }
                over
            }
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, success: bool) {
        let mut g = self.lock();
        if success {
            g.state = BreakerState::Closed;
            g.failures = 0;
            g.opened_at = None;
            return;
        }
        g.failures = g.failures.saturating_add(1);
        if g.state == BreakerState::HalfOpen || g.failures >= self.threshold {
            g.state = BreakerState::Open;
            g.opened_at = Some(self.clock.now());
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::idp::clock::ManualClock;

    #[tokio::test]
    async fn opens_probes_and_closes() {
        let clock = ManualClock::new();
        let b = Breaker::new(3, Duration::from_secs(30), Arc::new(clock.clone()));
        for _ in 0..2 {
            assert!(b.allow());
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        clock.advance(Duration::from_secs(31));
        assert!(b.allow(), "probe after open time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe");
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(31));
        assert!(b.allow());
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }
}
