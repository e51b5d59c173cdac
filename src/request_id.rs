//! Request ids (`X-Request-Id`): kept from a trusted caller, otherwise generated, so a
//! user's error page leads to the access-log line of the request.
//!
//! A generated id is a per-process random prefix, the thread's number and a per-thread
//! counter (`6f1c0a9e3b2d-3-1a`): unique within the process, unlikely to repeat across
//! replicas and restarts, and made without a system call, a lock or a shared atomic per
//! request (the digits are written into a stack buffer; the header value is the one copy).
//!
//! Security notes: an id from the client is used only when the caller is trusted
//! (`server.trust_forwarded_headers`) and only if it is 1 to [`MAX_LEN`] visible ASCII
//! characters (no spaces, no controls), so it cannot break a log line or a header; any other
//! is replaced. An id is a correlation handle, never a secret.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use http::header::{HeaderName, HeaderValue};

/// `X-Request-Id`.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id kept from a caller.
pub const MAX_LEN: usize = 128;

/// 12 hex digits, '-', up to 8 for the thread, '-', up to 16 for the counter.
const BUF: usize = 12 + 1 + 8 + 1 + 16;

/// The random prefix of this process's ids.
static PREFIX: OnceLock<[u8; 12]> = OnceLock::new();

/// The next thread number.
static THREADS: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's number and its next counter value.
    static LOCAL: (u32, Cell<u64>) = (THREADS.fetch_add(1, Ordering::Relaxed), Cell::new(0));
}

/// The id of a request: the caller's when `trusted` and valid, else a new one.
pub fn for_request(sent: Option<&HeaderValue>, trusted: bool) -> HeaderValue {
    match sent {
        Some(v) if trusted && valid(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// Whether `id` may be kept: 1 to [`MAX_LEN`] visible ASCII characters.
pub fn valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A new id.
pub fn generate() -> HeaderValue {
    let prefix = PREFIX.get_or_init(|| {
        let mut raw = [0u8; 6];
        rand::fill(&mut raw);
        let mut hex = [0u8; 12];
        for (i, b) in raw.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        hex
    });
    let (thread, n) = LOCAL.with(|(thread, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        (*thread, n)
    });
    let mut buf = [0u8; BUF];
    buf[..12].copy_from_slice(prefix);
    buf[12] = b'-';
    let mut len = 13 + write_hex(&mut buf[13..], u64::from(thread));
    buf[len] = b'-';
    len += 1;
    len += write_hex(&mut buf[len..], n);
    // Hex digits and '-' only: always a valid header value.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("-"))
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// Writes `n` in lower-case hex (no leading zeros) at the start of `out`; the length.
fn write_hex(out: &mut [u8], n: u64) -> usize {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out.iter_mut().take(digits).enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[((n >> shift) & 0xf) as usize];
    }
    digits.min(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_valid_and_share_the_process_prefix() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(valid(a.as_bytes()) && valid(b.as_bytes()));
        assert_eq!(a.as_bytes()[..13], b.as_bytes()[..13]);
        let other = std::thread::spawn(generate)
            .join()
            .unwrap_or_else(|_| HeaderValue::from_static("x"));
        assert_ne!(other, a);
        assert_eq!(other.as_bytes()[..12], a.as_bytes()[..12]);
    }

    #[test]
    fn hex_is_written_without_leading_zeros() {
        let mut buf = [0u8; 16];
        assert_eq!(write_hex(&mut buf, 0), 1);
        assert_eq!(&buf[..1], b"0");
        assert_eq!(write_hex(&mut buf, 0x1a2f), 4);
        assert_eq!(&buf[..4], b"1a2f");
        assert_eq!(write_hex(&mut buf, u64::MAX), 16);
        assert_eq!(&buf[..16], b"ffffffffffffffff");
    }

    #[test]
    fn a_callers_id_is_kept_only_when_trusted_and_valid() {
        let sent = HeaderValue::from_static("abc-123");
        assert_eq!(for_request(Some(&sent), true), sent);
        assert_ne!(for_request(Some(&sent), false), sent);
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(for_request(Some(&spaced), true), spaced);
        let long = HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap_or(sent.clone());
        assert_ne!(for_request(Some(&long), true), long);
        let utf8 = HeaderValue::from_bytes("é".as_bytes()).unwrap_or(sent.clone());
        assert_ne!(for_request(Some(&utf8), true), utf8);
        assert!(!valid(b""));
    }
}
