//! Session hot path: cookie seal/open (AES-256-GCM over a session id), a session lookup in
//! the memory store, a lookup answered by the Redis store's in-process cache (L1 hit), and
//! the whole per-request session step (`Browser::lookup`: cookie, store, identity) plus the
//! removal of Portcullis's cookies before forwarding.
//! Run with `cargo bench --bench session`. The L1 bench starts its own `redis-server` on a
//! unix socket (skipped with a message when redis-server is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::clock::{SharedClock, TokioClock};
use portcullis::config::{RedisConfig, RedisTarget, Sensitive};
use portcullis::metrics::Metrics;
use portcullis::secret::KeyMaterial;
use portcullis::session::memory::MemoryStore;
use portcullis::session::redis::RedisStore;
use portcullis::session::{
    Purpose, Sealer, Session, SessionId, SessionStore, StoreOptions, Token, Tokens,
};

fn session() -> Session {
    let now = SystemTime::now();
    let tokens = Tokens {
        access: Token::new("a".repeat(900)),
        refresh: Some(Token::new("r".repeat(100))),
        id_token: Some(Token::new("i".repeat(900))),
    };
    let mut s = Session::new(
        "corp",
        "00u1abcd2EFGH3ijk4l5",
        tokens,
        now + Duration::from_secs(3600),
        now,
        Duration::from_secs(86_400),
    )
    .unwrap();
    s.claims
        .insert("email".into(), serde_json::json!("jane.doe@example.com"));
    s
}

fn options() -> StoreOptions {
    StoreOptions {
        idle_timeout: Duration::from_secs(8 * 3600),
        touch_interval: Duration::from_secs(60),
        max_sessions: 1_000_000,
    }
}

fn cookie(c: &mut Criterion) {
    let sealer = Sealer::try_new(&[
        KeyMaterial::from_bytes(&[1; 32]).unwrap(),
        KeyMaterial::from_bytes(&[2; 32]).unwrap(),
    ])
    .unwrap();
    let id = SessionId::generate().unwrap();
    let sealed = sealer
        .seal_text(Purpose::SessionCookie, b"", id.as_str().as_bytes())
        .unwrap();
    c.bench_function("cookie/seal", |b| {
        b.iter(|| {
            sealer
                .seal_text(
                    Purpose::SessionCookie,
                    b"",
                    black_box(id.as_str().as_bytes()),
                )
                .unwrap()
        })
    });
    c.bench_function("cookie/open", |b| {
        b.iter(|| {
            let bytes = sealer
                .open_text(Purpose::SessionCookie, b"", black_box(&sealed))
                .unwrap();
            SessionId::from_bytes(&bytes).unwrap()
        })
    });
    c.bench_function("cookie/open_tampered", |b| {
        let mut bad = sealed.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        b.iter(|| {
            sealer
                .open_text(Purpose::SessionCookie, b"", black_box(&bad))
                .is_err()
        })
    });
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: SharedClock = Arc::new(TokioClock);
    let metrics = Metrics::try_new().unwrap();
    let memory = MemoryStore::new(options(), metrics.clone(), clock.clone());
    let s = session();
    rt.block_on(memory.put(&s)).unwrap();
    c.bench_function("lookup/memory_hit", |b| {
        b.iter(|| rt.block_on(memory.get(black_box(&s.id))).unwrap().unwrap())
    });
    let missing = SessionId::generate().unwrap();
    c.bench_function("lookup/memory_miss", |b| {
        b.iter(|| rt.block_on(memory.get(black_box(&missing))).unwrap())
    });

    let Some((_server, url)) = start_redis() else {
        eprintln!("redis-server not found: skipping lookup/redis_l1_hit");
        return;
    };
    let config = RedisConfig {
        target: RedisTarget::Url(Sensitive::new(url)),
        timeout: Duration::from_millis(250),
        password: None,
        ca_file: None,
        cache_ttl: Duration::from_secs(3600),
    };
    let sealer = Arc::new(Sealer::try_new(&[KeyMaterial::from_bytes(&[3; 32]).unwrap()]).unwrap());
    let redis = rt
        .block_on(RedisStore::connect(
            &config,
            options(),
            sealer,
            metrics,
            clock,
        ))
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while rt.block_on(redis.put(&s)).is_err() {
        assert!(
            std::time::Instant::now() < end,
            "redis-server did not come up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c.bench_function("lookup/redis_l1_hit", |b| {
        b.iter(|| rt.block_on(redis.get(black_box(&s.id))).unwrap().unwrap())
    });
    c.bench_function("lookup/redis_round_trip", |b| {
        b.iter(|| {
            redis.clear_l1();
            rt.block_on(redis.get(black_box(&s.id))).unwrap().unwrap()
        })
    });
}

/// A redis-server on a unix socket in a temp dir, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Server, String)> {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let sock = dir.join("r.sock");
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&sock)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((Server(child), format!("redis+unix://{}", sock.display())))
}

/// The whole session step of a request, as the proxy runs it.
fn request_path(c: &mut Criterion) {
    use portcullis::authn::Authenticator;
    use portcullis::authn::browser::Browser;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let yaml = "listeners:\n  plain: { address: \"127.0.0.1:0\" }\nupstreams:\n  app: { addresses: [\"http://127.0.0.1:9\"] }\n\
                issuers:\n  corp: { issuer: \"https://login.example.com\", audiences: [api], client_id: portcullis }\n\
                sessions: { cookie: { secure: false } }\n\
                routes:\n  - { name: app, path: /, upstream: app, auth: session }\n";
    let config = portcullis::Config::from_yaml(yaml, []).unwrap();
    let clock: SharedClock = Arc::new(TokioClock);
    let metrics = Metrics::try_new().unwrap();
    let auth = Arc::new(Authenticator::try_new(&config, metrics.clone(), clock.clone()).unwrap());
    let slot = auth.issuer_index("corp");
    let sealer = Arc::new(Sealer::try_new(&[KeyMaterial::from_bytes(&[4; 32]).unwrap()]).unwrap());
    let store: portcullis::session::SharedStore =
        Arc::new(MemoryStore::new(options(), metrics.clone(), clock.clone()));
    let browser = Arc::new(Browser::with_store(
        &config,
        auth,
        store.clone(),
        sealer.clone(),
        metrics,
        clock,
    ));
    let s = session();
    rt.block_on(store.put(&s)).unwrap();
    let name = browser.jar().name.clone();
    let value = sealer
        .seal_text(
            Purpose::SessionCookie,
            name.as_bytes(),
            s.id.as_str().as_bytes(),
        )
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        http::HeaderValue::from_str(&format!("theme=dark; {name}={value}; lang=en")).unwrap(),
    );
    c.bench_function("browser/lookup_memory", |b| {
        b.iter(|| {
            let found = rt.block_on(browser.lookup(slot, "corp", black_box(&headers), "app"));
            assert!(matches!(
                found,
                portcullis::authn::browser::Lookup::Found(_)
            ));
        })
    });
    c.bench_function("browser/strip_cookies", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            browser.strip_cookies(black_box(&mut h));
            h
        })
    });
    let mut plain = http::HeaderMap::new();
    plain.insert(
        http::header::COOKIE,
        http::HeaderValue::from_static("theme=dark; lang=en"),
    );
    c.bench_function("browser/strip_cookies_none_ours", |b| {
        b.iter(|| {
            let mut h = plain.clone();
            browser.strip_cookies(black_box(&mut h));
            h
        })
    });
}

criterion_group!(benches, cookie, lookups, request_path);
criterion_main!(benches);
