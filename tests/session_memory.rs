//! Memory per session in the memory store at 100k sessions (a measurement, not a check):
//! `cargo test --release --test session_memory -- --ignored --nocapture`. Reads VmRSS from
//! /proc/self/status before and after inserting 100k typical sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::clock::{SharedClock, TokioClock};
use portcullis::metrics::Metrics;
use portcullis::session::memory::MemoryStore;
use portcullis::session::{Session, SessionStore, StoreOptions, Token, Tokens};

const SESSIONS: usize = 100_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sizes of a typical Entra ID / Keycloak sign-in: JWT access and ID tokens of ~900 bytes,
/// an opaque refresh token, and the claims used for headers.
fn typical(i: usize, sizes: (usize, usize, usize)) -> Session {
    let now = SystemTime::now();
    let tokens = Tokens {
        access: Token::new(format!("{i:08}{}", "a".repeat(sizes.0 - 8))),
        refresh: (sizes.1 > 0).then(|| Token::new(format!("{i:08}{}", "r".repeat(sizes.1 - 8)))),
        id_token: (sizes.2 > 0).then(|| Token::new(format!("{i:08}{}", "i".repeat(sizes.2 - 8)))),
    };
    let mut s = Session::new(
        "corp",
        format!("00u{i:017}"),
        tokens,
        now + Duration::from_secs(3600),
        now,
        Duration::from_secs(86_400),
    )
    .unwrap();
    s.sid = Some(format!("sid-{i:012}"));
    s.claims.insert(
        "email".into(),
        serde_json::json!(format!("user{i}@example.com")),
    );
    s.claims.insert(
        "preferred_username".into(),
        serde_json::json!(format!("user{i}")),
    );
    s.claims
        .insert("groups".into(), serde_json::json!(["staff", "app-users"]));
    s
}

fn measure(label: &str, sizes: (usize, usize, usize)) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: SharedClock = Arc::new(TokioClock);
    let store = MemoryStore::new(
        StoreOptions {
            idle_timeout: Duration::from_secs(8 * 3600),
            touch_interval: Duration::from_secs(60),
            max_sessions: 1_000_000,
        },
        Metrics::try_new().unwrap(),
        clock,
    );
    // Warm the allocator and moka's internals with a few sessions first.
    rt.block_on(async {
        for i in 0..1000 {
            store.put(&typical(SESSIONS + i, sizes)).await.unwrap();
        }
    });
    store.sync();
    let before = rss_kib();
    // Each session is built, inserted (the store keeps its own copy) and its original freed,
    // so RSS grows by what the store holds.
    rt.block_on(async {
        for i in 0..SESSIONS {
            store.put(&typical(i, sizes)).await.unwrap();
        }
    });
    store.sync();
    let after = rss_kib();
    assert_eq!(store.len(), SESSIONS as u64 + 1000);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / SESSIONS as f64;
    println!(
        "{label}: tokens {sizes:?} bytes: RSS {before} -> {after} KiB, {per:.0} bytes per session"
    );
}

#[test]
#[ignore = "measurement: run with --release --ignored --nocapture"]
fn memory_per_session_at_100k() {
    // One measurement per process: a second one would reuse the first's freed memory.
    let sizes = match std::env::var("SESSION_TOKEN_SIZES").ok().as_deref() {
        Some("small") => (400, 40, 400),
        // "a,r,i": explicit sizes (each at least 8, or 0 for no refresh / ID token).
        Some(list) if list.contains(',') => {
            let v: Vec<usize> = list.split(',').map(|n| n.trim().parse().unwrap()).collect();
            (v[0], v[1], v[2])
        }
        _ => (900, 100, 900),
    };
    measure("memory store", sizes);
}
