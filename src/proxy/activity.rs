//! Per-connection state shared between the connection task and the requests on it: requests
//! in flight and when the last one started or ended (for the idle timeout), and whether the
//! client sent a request head with ambiguous framing (see `framing.rs`).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use tokio::time::Instant;

/// Per-connection activity: requests in flight and when the last one started or ended, and
/// whether the client sent a request with ambiguous framing.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    epoch: Instant,
    ambiguous_framing: AtomicBool,
    upgraded: AtomicBool,
    io_idle: AtomicBool,
    unflushed: AtomicBool,
    /// 0 until a request head is seen, then 1 for HTTP/1 (`HTTP1`), 2 for anything else.
    protocol: AtomicU8,
}

/// `Activity::protocol` once an HTTP/1 request head came.
const HTTP1: u8 = 1;

// === impl Activity ===

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// No request yet; the idle clock starts now.
    pub fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            ambiguous_framing: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            io_idle: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            protocol: AtomicU8::new(0),
        }
    }

    /// The client sent a request head with both Content-Length and Transfer-Encoding (hyper
    /// hides one of them, so the connection's byte stream is checked; see
    /// `listener::framing`). Requests on this connection are refused from now on; hyper closes
    /// it after that request's response.
    pub fn set_ambiguous_framing(&self) {
        self.ambiguous_framing.store(true, Ordering::Relaxed);
    }

    /// Whether [`Activity::set_ambiguous_framing`] was called.
    pub fn ambiguous_framing(&self) -> bool {
        self.ambiguous_framing.load(Ordering::Relaxed)
    }

    /// The connection became a tunnel (a 101 to an upgrade the client asked for): it is no
    /// longer HTTP/1 from the next byte on.
    pub fn set_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Whether [`Activity::set_upgraded`] was called.
    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// The connection's last read found nothing, and the bytes before it end with a whole
    /// request (`listener::framing`); a read that returns bytes clears it.
    pub fn set_io_idle(&self, idle: bool) {
        self.io_idle.store(idle, Ordering::Relaxed);
    }

    /// Bytes were written to the connection and not flushed since (`listener::framing`).
    pub fn set_unflushed(&self, unflushed: bool) {
        self.unflushed.store(unflushed, Ordering::Relaxed);
    }

    /// A whole request head came on this connection: HTTP/1 (`true`), or HTTP/2's preface
    /// or a head the framing guard cannot follow (`listener::framing`).
    pub fn set_http1(&self, http1: bool) {
        self.protocol
            .store(if http1 { HTTP1 } else { HTTP1 + 1 }, Ordering::Relaxed);
    }

    /// `Some(true)` once an HTTP/1 request head came (the connection may be parked between
    /// requests), `Some(false)` for anything else, `None` before the first head.
    pub fn http1(&self) -> Option<bool> {
        match self.protocol.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p == HTTP1),
        }
    }

    /// Whether the HTTP/1 connection can be parked (`listener::conn`): no request in flight,
    /// its last read found nothing after whole requests, every response byte flushed.
    pub fn parkable(&self) -> bool {
        !self.busy()
            && self.io_idle.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
            && !self.upgraded()
    }

    fn touch(&self) {
        let since = crate::clock::coarse_now().saturating_duration_since(self.epoch);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started on this connection.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// A request's response finished.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Whether a request is in flight on this connection.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// When a request last started or ended on this connection (to the millisecond; the
    /// connection's start before the first).
    pub fn last_change(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the connection becomes idle-expired, if no request is in flight.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        (!self.busy()).then(|| self.last_change() + idle)
    }
}
