//! Time, injectable so tests can move it without waiting (a leaf: the IdP client, sessions,
//! the listener and the request path all read it).
//!
//! Everything that ages or waits (key staleness, breaker open time, backoff sleeps, refresh
//! schedules) asks a [`Clock`]. Production uses [`TokioClock`]; tests use [`ManualClock`],
//! whose `sleep` returns at once after moving its time forward.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A boxed sleep.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock now (for persisted timestamps).
    fn wall(&self) -> SystemTime;
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// Real time, through tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[cfg(any(test, feature = "test-util"))]
pub use manual::ManualClock;

/// The test clock: built for the crate's own tests and with `test-util`.
#[cfg(any(test, feature = "test-util"))]
mod manual {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{Duration, SystemTime};

    use tokio::time::Instant;

    use super::{Clock, Sleep};

    /// Real time plus an offset that tests move forward. `sleep(d)` advances the offset by `d`
    /// and returns after yielding once, so code that waits runs at once in tests.
    #[derive(Debug, Default, Clone)]
    pub struct ManualClock {
        offset_ms: Arc<AtomicU64>,
        slept_ms: Arc<AtomicU64>,
    }

    // === impl ManualClock ===

    impl ManualClock {
        /// A clock at real time.
        pub fn new() -> Self {
            Self::default()
        }

        /// Moves time forward.
        pub fn advance(&self, d: Duration) {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        }

        /// Total time spent in `sleep` so far.
        pub fn slept(&self) -> Duration {
            Duration::from_millis(self.slept_ms.load(Ordering::SeqCst))
        }

        fn offset(&self) -> Duration {
            Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            Instant::now() + self.offset()
        }
        fn wall(&self) -> SystemTime {
            SystemTime::now() + self.offset()
        }
        fn sleep(&self, d: Duration) -> Sleep {
            self.advance(d);
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            self.slept_ms.fetch_add(ms, Ordering::SeqCst);
            Box::pin(tokio::task::yield_now())
        }
    }
}
