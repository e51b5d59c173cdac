//! The upstream codec's response decoder (`upstream::h1`: head, interim responses, framing,
//! chunked decoder) on arbitrary bytes: it must never panic, and must decode the same
//! whether the bytes arrive whole, in pieces or byte by byte (`h1::fuzz::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::upstream::h1::fuzz::check(data);
});
