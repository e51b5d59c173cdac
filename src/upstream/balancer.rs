//! Round-robin over an upstream's addresses with passive health: an address that refused a
//! connection is skipped until its cool-down ends. When every address is cooling down, the
//! next one in turn is tried anyway (better a likely failure than a certain one).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

/// The addresses of one upstream and their health.
#[derive(Debug)]
pub struct Balancer {
    addresses: Vec<Address>,
    next: AtomicUsize,
    cooldown: Duration,
    epoch: Instant,
}

/// One address.
#[derive(Debug)]
pub struct Address {
    /// `scheme://authority`
    pub uri: Uri,
    /// Milliseconds since `epoch` until which it is skipped (0 = healthy).
    down_until_ms: AtomicU64,
}

// === impl Balancer ===

impl Balancer {
    /// A balancer over `addresses`, skipping a failed one for `cooldown`.
    pub fn new(addresses: &[Uri], cooldown: Duration) -> Self {
        Self {
            addresses: addresses
                .iter()
                .map(|uri| Address {
                    uri: uri.clone(),
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            cooldown,
            epoch: Instant::now(),
        }
    }

    /// How many addresses there are (never none, after validation).
    pub(crate) fn len(&self) -> usize {
        self.addresses.len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The index of the next healthy address not in `exclude`, in round-robin order. The
    /// position is shared by all request workers (one order over the process, as before
    /// workers); with one address nothing is written.
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.addresses.len();
        if n == 0 || exclude.len() >= n {
            return None;
        }
        if n == 1 {
            // The only address, healthy or not (as the fallback below would pick it): no
            // shared counter written, no clock read.
            return Some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if exclude.contains(&i) {
                continue;
            }
            if self.addresses[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// The address at `i`.
    pub fn get(&self, i: usize) -> Option<&Address> {
        self.addresses.get(i)
    }

    /// Marks `i` as refusing connections for the cool-down.
    pub fn mark_down(&self, i: usize) {
        if let Some(a) = self.addresses.get(i) {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX));
            a.down_until_ms.store(until.max(1), Ordering::Relaxed);
        }
    }

    /// Marks `i` healthy again (a request through it succeeded).
    pub fn mark_up(&self, i: usize) {
        if let Some(a) = self.addresses.get(i)
            && a.down_until_ms.load(Ordering::Relaxed) != 0
        {
            a.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(n: usize) -> Vec<Uri> {
        (0..n)
            .map(|i| Uri::try_from(format!("http://127.0.0.1:{}", 1000 + i)).unwrap_or_default())
            .collect()
    }

    #[test]
    fn round_robin() {
        let b = Balancer::new(&uris(3), Duration::from_secs(10));
        let picks: Vec<_> = (0..6).filter_map(|_| b.pick(&[])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn skips_down_until_cooldown_ends() {
        let b = Balancer::new(&uris(2), Duration::from_secs(10));
        b.mark_down(0);
        for _ in 0..4 {
            assert_eq!(b.pick(&[]), Some(1));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        let picks: Vec<_> = (0..4).filter_map(|_| b.pick(&[])).collect();
        assert!(picks.contains(&0));
    }

    #[test]
    fn all_down_still_picks_and_excludes() {
        let b = Balancer::new(&uris(2), Duration::from_secs(10));
        b.mark_down(0);
        b.mark_down(1);
        assert!(b.pick(&[]).is_some());
        assert_eq!(b.pick(&[0]), Some(1));
        assert_eq!(b.pick(&[0, 1]), None);
    }
}
