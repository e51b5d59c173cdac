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

thread_local! {
    /// The time at the start of the connection-task poll running on this thread, if one is.
    static POLL_NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Now, to the poll: inside a future wrapped in [`Polled`] (every client connection's task),
/// the time its current poll began, read once per poll, so the timestamps one request takes
/// (metrics, activity, the header clock, deadlines) cost a thread-local read each instead of
/// a clock read each. Elsewhere, the clock. A poll lasts microseconds; every use is a
/// duration or deadline in milliseconds or more.
pub fn coarse_now() -> Instant {
    POLL_NOW.with(std::cell::Cell::get).unwrap_or_else(Instant::now)
}

pin_project_lite::pin_project! {
    /// A future whose every poll reads the clock once, for [`coarse_now`] (see there).
    pub struct Polled<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Polled<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let outer = POLL_NOW.with(|c| c.replace(Some(Instant::now())));
        let out = self.project().inner.poll(cx);
        POLL_NOW.with(|c| c.set(outer));
        out
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
