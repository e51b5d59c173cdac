//! A circuit breaker per issuer: after `threshold` consecutive failures it opens and calls
//! fail at once for `open_for`; then one probe is let through (half-open). A successful probe
//! closes it, a failed one opens it again.
//!
//! A call that may go out holds a [`Permit`] and reports its outcome through it. A probe whose
//! future is dropped before it reports (the caller went away, an HTTP/2 reset) counts as a
//! failed probe when the permit drops, so the breaker can never stay half-open with no probe
//! in flight: it opens again, and the next probe goes out after `open_for`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::SharedClock;

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

/// Leave to make one call, from [`Breaker::allow`]. Report the outcome with
/// [`Permit::record`]; dropped without a report, a probe counts as failed (a call made while
/// closed counts as nothing: the IdP did not fail).
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
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

    /// A permit when a call may go out now, else None. Moves Open to HalfOpen when the open
    /// time is over (that caller is the probe).
    pub fn allow(&self) -> Option<Permit<'_>> {
        let mut g = self.lock();
        let probe = match g.state {
            BreakerState::Closed => false,
            BreakerState::HalfOpen => return None,
            BreakerState::Open => {
                let over = g
                    .opened_at
                    .is_none_or(|t| self.clock.now() >= t + self.open_for);
                if !over {
                    return None;
                }
                g.state = BreakerState::HalfOpen;
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    /// Records a call's outcome (see also [`Permit::record`]).
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

// === impl Permit ===

impl Permit<'_> {
    /// Whether this call is the half-open probe.
    #[cfg(test)]
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the call's outcome.
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            // The probe never reported: count it as failed so the breaker opens again (and
            // lets the next probe out after `open_for`) instead of staying half-open.
            self.breaker.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn opens_probes_and_closes() {
        let clock = ManualClock::new();
        let b = Breaker::new(3, Duration::from_secs(30), Arc::new(clock.clone()));
        for _ in 0..2 {
            b.allow().unwrap_or_else(|| panic!("closed")).record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow().is_none());
        clock.advance(Duration::from_secs(31));
        let probe = b.allow().unwrap_or_else(|| panic!("probe after open time"));
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow().is_none(), "only one probe");
        probe.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(31));
        b.allow().unwrap_or_else(|| panic!("probe")).record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_some());
    }

    #[tokio::test]
    async fn a_dropped_probe_counts_as_failed_and_a_new_probe_follows() {
        let clock = ManualClock::new();
        let b = Breaker::new(1, Duration::from_secs(30), Arc::new(clock.clone()));
        b.allow().unwrap_or_else(|| panic!("closed")).record(false);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(31));
        // The probe's caller goes away before the call ends.
        drop(b.allow().unwrap_or_else(|| panic!("probe")));
        assert_eq!(b.state(), BreakerState::Open, "not stuck half-open");
        assert!(b.allow().is_none(), "open again for open_for");
        clock.advance(Duration::from_secs(31));
        let probe = b
            .allow()
            .unwrap_or_else(|| panic!("a new probe after open_for"));
        probe.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_dropped_call_while_closed_counts_as_nothing() {
        let clock = ManualClock::new();
        let b = Breaker::new(1, Duration::from_secs(30), Arc::new(clock.clone()));
        drop(b.allow().unwrap_or_else(|| panic!("closed")));
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
