//! A future polled only when its own waker fired: for a rare signal (the drain) selected
//! beside a busy future (the connection) in one task.
//!
//! `tokio::select!` polls every branch whenever the task wakes, so a connection task woken
//! for each request also polled its `drain.changed()` each time, and a pending watch
//! `changed()` takes a lock on a notifier shared by every connection of every worker
//! (tokio's `Notified::poll` updates the waiter under the notifier's mutex). [`Woken`] gives
//! the inner future a waker of its own: the inner future is polled on the first poll and
//! then only after that waker was used; other polls cost two atomic operations on the
//! connection's own memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker the inner future gets: marks itself used and wakes the task.
#[derive(Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// `inner`, polled on the first poll and afterwards only when its waker fired.
    pub(crate) struct Woken<'a, F> {
        #[pin]
        inner: F,
        signal: &'a Arc<Signal>,
        waker: &'a Waker,
        first: bool,
    }
}

impl<'a, F> Woken<'a, F> {
    /// `inner`, woken through `signal` (`waker` is `signal` as a waker; both made once and
    /// reused for every future the task wraps).
    pub(crate) fn new(inner: F, signal: &'a Arc<Signal>, waker: &'a Waker) -> Self {
        Self {
            inner,
            signal,
            waker,
            first: true,
        }
    }
}

/// A signal and its waker, for [`Woken`].
pub(crate) fn signal() -> (Arc<Signal>, Waker) {
    let signal = Arc::new(Signal::default());
    let waker = Waker::from(signal.clone());
    (signal, waker)
}

impl<F: Future> Future for Woken<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the check: a wake after the check wakes this task again.
        this.signal.task.register(cx.waker());
        let fired = this.signal.fired.swap(false, Ordering::AcqRel);
        if !*this.first && !fired {
            return Poll::Pending;
        }
        *this.first = false;
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Pending until `ready`, counting its polls and keeping the last waker.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            if let Ok(mut w) = self.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// Counts the task's wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_when_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        };
        let (signal, waker) = signal();
        let mut fut = std::pin::pin!(Woken::new(probe, &signal, &waker));
        let task = Arc::new(Task::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled on the first poll");
        // The task woken for something else: the inner future is not polled.
        for _ in 0..5 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not polled unless woken");
        // Its own waker fires: the task is woken and the next poll reaches it.
        ready.store(true, Ordering::SeqCst);
        let w = inner_waker.lock().ok().and_then(|mut w| w.take());
        w.expect("the inner future kept a waker").wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_watch_change_gets_through() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let (signal, waker) = signal();
        let waiting = tokio::spawn(async move {
            Woken::new(rx.changed(), &signal, &waker).await.is_ok() && *rx.borrow()
        });
        tokio::task::yield_now().await;
        let _ = tx.send(true);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the change was seen in time");
        assert!(matches!(seen, Ok(true)));
    }
}
