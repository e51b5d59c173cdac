//! The codec's `response_timeout`: one timer per connection, armed once and moved only when
//! it fires (nginx's lazy timer), instead of a timer inserted into and removed from tokio's
//! wheel for every request.
//!
//! A pooled connection keeps its [`Timer`] between requests. A request's [`Deadline`] is
//! never earlier than one an earlier request on the same connection had (the timeout is the
//! upstream's, and requests on a connection follow each other), so the timer, if it is still
//! armed, fires no later than the request's deadline. When it fires the deadline is looked up
//! again: passed, the request times out; not yet, the timer moves to it. A connection's
//! timer so moves at most once per timeout, however many requests it carries; in between, a
//! request only registers its waker.
//!
//! A timer belongs to the runtime that made it (polled after that runtime is gone, tokio's
//! timer panics), so it is reused only in the runtime that made it: always, on a worker, whose
//! pools only its own runtime uses; elsewhere a new one is made.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::clock;
use crate::upstream::body::BodyProgress;

/// When a request's wait for its answer runs out.
pub(crate) struct Deadline<'a> {
    timeout: Duration,
    start: Instant,
    /// The request body's progress, when it has one: the clock then runs from its last
    /// piece and stands still while the client owes the next (`super::super::within`).
    progress: Option<&'a BodyProgress>,
}

/// A connection's response timer.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The runtime it was made in.
    runtime: Option<tokio::runtime::Id>,
}

/// The runtime this runs in.
fn this_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

// === impl Deadline ===

impl<'a> Deadline<'a> {
    /// `timeout` from now (to the poll), or from the body's last piece.
    pub(crate) fn new(timeout: Duration, progress: Option<&'a BodyProgress>) -> Self {
        Self {
            timeout,
            start: clock::coarse_now(),
            progress,
        }
    }

    /// The deadline as it stands; `None` while the client owes the next piece of the body.
    fn current(&self) -> Option<Instant> {
        match self.progress {
            None => Some(self.start + self.timeout),
            Some(p) => p.deadline(self.timeout),
        }
    }

    /// The deadline as it stands, or a timeout from `now` while the client owes a piece.
    pub(crate) fn at(&self, now: Instant) -> Instant {
        self.current().unwrap_or(now + self.timeout)
    }
}

// === impl Timer ===

impl Timer {
    /// The connection's timer in `slot`, ready to watch `deadline`: kept when it was made in
    /// this runtime and fires no later than the deadline; otherwise set or made for it.
    pub(crate) fn arm<'s>(slot: &'s mut Option<Timer>, deadline: &Deadline<'_>) -> &'s mut Timer {
        let at = deadline.at(deadline.start);
        let runtime = this_runtime();
        if slot
            .as_ref()
            .is_some_and(|t| t.runtime.is_none() || t.runtime != runtime)
        {
            *slot = None;
        }
        let t = slot.get_or_insert_with(|| Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            runtime,
        });
        if t.sleep.deadline() > at {
            t.sleep.as_mut().reset(at);
        }
        t
    }

    /// Ready when `deadline` has passed; otherwise the task is woken when the timer fires
    /// (and the timer moved, if the deadline had moved).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: &Deadline<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match deadline.current() {
                Some(at) if at <= now => return Poll::Ready(()),
                Some(at) => self.sleep.as_mut().reset(at),
                None => self.sleep.as_mut().reset(now + deadline.timeout),
            }
        }
    }

    /// When it fires (tests).
    #[cfg(test)]
    pub(crate) fn fires_at(&self) -> Instant {
        self.sleep.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(t: &mut Timer, d: &Deadline<'_>) -> bool {
        t.poll_expired(&mut Context::from_waker(std::task::Waker::noop()), d)
            .is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_request_moves_the_timer_only_when_it_fires() {
        let timeout = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut slot = None;
        let first = Deadline::new(timeout, None);
        assert!(!expired(Timer::arm(&mut slot, &first), &first));
        // The next request on the connection, 5 s later: the timer is left where it is.
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = Deadline::new(timeout, None);
        let t = Timer::arm(&mut slot, &second);
        assert_eq!(t.fires_at(), t0 + timeout, "armed once, not moved per request");
        // At the first request's deadline it fires, and moves to the second's.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!expired(t, &second));
        assert_eq!(t.fires_at(), t0 + Duration::from_secs(15));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(expired(t, &second));
    }

    #[test]
    fn a_timer_from_a_runtime_that_is_gone_is_replaced() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        let mut slot = None;
        let first = runtime();
        first.block_on(async {
            let d = Deadline::new(Duration::from_secs(10), None);
            Timer::arm(&mut slot, &d);
        });
        drop(first);
        // Same thread, another runtime: the old timer would panic when polled.
        runtime().block_on(async {
            let d = Deadline::new(Duration::from_secs(10), None);
            let t = Timer::arm(&mut slot, &d);
            assert!(!expired(t, &d));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_later_than_the_deadline_is_brought_forward() {
        let mut slot = None;
        let long = Deadline::new(Duration::from_secs(60), None);
        Timer::arm(&mut slot, &long);
        let short = Deadline::new(Duration::from_secs(1), None);
        let t = Timer::arm(&mut slot, &short);
        assert_eq!(t.fires_at(), Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expired(t, &short));
    }
}
