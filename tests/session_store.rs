//! The session store contract, run against the memory store and real Redis (standalone on a
//! unix socket, a three-master Cluster, a Sentinel set with a forced failover, TLS with an
//! ACL user), plus Redis-only behaviour: records encrypted at rest, bounded calls while Redis
//! is down, L1-cached sessions served through an outage, recovery after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use portcullis::clock::{Clock, ManualClock, SharedClock};
use portcullis::config::{RedisConfig, RedisTarget, Sensitive};
use portcullis::metrics::Metrics;
use portcullis::secret::KeyMaterial;
use portcullis::session::memory::MemoryStore;
use portcullis::session::redis::RedisStore;
use portcullis::session::{
    OneTime, Sealer, Session, SessionId, SessionStore, StoreError, StoreOptions, Token, Tokens,
};
use support::redis::{Cluster, RedisServer, SentinelSet, cli, require_redis, wait_cli};
use support::{metric_value, temp_dir, wait_until};

const IDLE: Duration = Duration::from_secs(600);
const TOUCH: Duration = Duration::from_secs(60);

fn options() -> StoreOptions {
    StoreOptions {
        idle_timeout: IDLE,
        touch_interval: TOUCH,
        max_sessions: 10_000,
    }
}

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::try_new(&[KeyMaterial::from_bytes(&[42; 32]).unwrap()]).unwrap())
}

static N: AtomicU64 = AtomicU64::new(0);

/// A session with recognisable tokens, created at the clock's now.
fn session(clock: &ManualClock, sub: &str, sid: Option<&str>, lifetime: Duration) -> Session {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tokens = Tokens {
        access: Token::new(format!("ACCESS-TOKEN-SECRET-{n}")),
        refresh: Some(Token::new(format!("REFRESH-TOKEN-SECRET-{n}"))),
        id_token: Some(Token::new(format!("ID-TOKEN-SECRET-{n}"))),
    };
    let now = clock.wall();
    let mut s = Session::new(
        "corp",
        sub,
        tokens,
        now + Duration::from_secs(300),
        now,
        lifetime,
    )
    .unwrap();
    s.sid = sid.map(str::to_string);
    s.claims.insert(
        "email".into(),
        serde_json::json!(format!("{sub}@example.com")),
    );
    s
}

fn redis_config(target: RedisTarget) -> RedisConfig {
    RedisConfig {
        target,
        timeout: Duration::from_millis(250),
        password: None,
        ca_file: None,
        cache_ttl: Duration::from_secs(5),
    }
}

async fn redis_store(config: &RedisConfig, clock: &ManualClock, metrics: &Metrics) -> RedisStore {
    let shared: SharedClock = Arc::new(clock.clone());
    RedisStore::connect(config, options(), sealer(), metrics.clone(), shared)
        .await
        .unwrap()
}

/// What every store must do. `clock` is the store's clock; `fresh` drops any cache in front
/// (so a read really goes to the backend).
async fn contract(store: &dyn SessionStore, clock: &ManualClock, fresh: &dyn Fn()) {
    let day = Duration::from_secs(86_400);

    // get / put / delete
    let a = session(clock, "alice", Some("sid-a"), day);
    assert_eq!(store.get(&a.id).await.unwrap(), None);
    store.put(&a).await.unwrap();
    assert_eq!(store.get(&a.id).await.unwrap().as_deref(), Some(&a));
    fresh();
    assert_eq!(
        store.get(&a.id).await.unwrap().as_deref(),
        Some(&a),
        "read back from the backend"
    );
    assert!(store.delete(&a.id).await.unwrap());
    assert_eq!(store.get(&a.id).await.unwrap(), None);
    fresh();
    assert_eq!(store.get(&a.id).await.unwrap(), None);
    assert!(!store.delete(&a.id).await.unwrap());
    let unknown = SessionId::generate().unwrap();
    assert_eq!(store.get(&unknown).await.unwrap(), None);

    // touch: written back at most once per interval
    let t = session(clock, "tom", None, day);
    store.put(&t).await.unwrap();
    assert!(
        !store.touch(&t).await.unwrap(),
        "a touch right after login must not write"
    );
    clock.advance(TOUCH / 2);
    assert!(
        !store.touch(&t).await.unwrap(),
        "a touch within the interval must not write"
    );
    fresh();
    assert_eq!(
        store.get(&t.id).await.unwrap().unwrap().last_seen,
        t.last_seen
    );
    clock.advance(TOUCH / 2 + Duration::from_secs(1));
    let before = clock.wall();
    assert!(
        store.touch(&t).await.unwrap(),
        "a touch after the interval writes"
    );
    fresh();
    let touched = store.get(&t.id).await.unwrap().unwrap();
    assert!(touched.last_seen >= before && touched.last_seen <= clock.wall());
    assert!(
        !store.touch(&touched).await.unwrap(),
        "and the next one waits again"
    );

    // idle timeout: gone once unused for IDLE, however long its lifetime
    let i = session(clock, "ida", None, day);
    store.put(&i).await.unwrap();
    clock.advance(IDLE - Duration::from_secs(1));
    assert!(store.get(&i.id).await.unwrap().is_some());
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        store.get(&i.id).await.unwrap(),
        None,
        "idle past the timeout"
    );
    fresh();
    assert_eq!(store.get(&i.id).await.unwrap(), None);
    // ...and a touch does not bring it back
    assert!(!store.touch(&i).await.unwrap());
    fresh();
    assert_eq!(store.get(&i.id).await.unwrap(), None);

    // absolute lifetime: gone at expiry even while in use
    let life = Duration::from_secs(150);
    let l = session(clock, "lea", None, life);
    store.put(&l).await.unwrap();
    let mut cur = l.clone();
    for _ in 0..2 {
        clock.advance(TOUCH + Duration::from_secs(1));
        assert!(store.touch(&cur).await.unwrap());
        cur = store
            .get(&l.id)
            .await
            .unwrap()
            .map(|s| (*s).clone())
            .expect("alive while in use");
    }
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        store.get(&l.id).await.unwrap(),
        None,
        "past the absolute lifetime"
    );
    fresh();
    assert_eq!(store.get(&l.id).await.unwrap(), None);

    // delete_by_sid / delete_by_sub
    let s1 = session(clock, "bob", Some("sid-1"), day);
    let s2 = session(clock, "bob", Some("sid-2"), day);
    let s3 = session(clock, "carol", Some("sid-3"), day);
    let mut other_issuer = session(clock, "bob", Some("sid-1"), day);
    other_issuer.issuer = "partner".into();
    for s in [&s1, &s2, &s3, &other_issuer] {
        store.put(s).await.unwrap();
    }
    // Warm any cache, so the deletes must invalidate it.
    for s in [&s1, &s2, &s3] {
        assert!(store.get(&s.id).await.unwrap().is_some());
    }
    assert_eq!(store.delete_by_sid("corp", "sid-1").await.unwrap().len(), 1);
    assert_eq!(store.get(&s1.id).await.unwrap(), None);
    assert!(store.get(&s2.id).await.unwrap().is_some());
    assert_eq!(store.delete_by_sub("corp", "bob").await.unwrap().len(), 1);
    assert_eq!(store.get(&s2.id).await.unwrap(), None);
    assert!(
        store.get(&s3.id).await.unwrap().is_some(),
        "another subject is untouched"
    );
    assert!(
        store.get(&other_issuer.id).await.unwrap().is_some(),
        "the same sub and sid at another issuer is untouched"
    );
    assert_eq!(
        store.delete_by_sub("corp", "nobody").await.unwrap().len(),
        0
    );
    assert_eq!(store.delete_by_sid("corp", "sid-3").await.unwrap().len(), 1);
    assert_eq!(store.get(&s3.id).await.unwrap(), None);

    // The sid index follows a replace (a refresh whose ID token has a new sid, or a first one).
    let mut r = session(clock, "rita", None, day);
    store.put(&r).await.unwrap();
    r.sid = Some("sid-first".into());
    assert!(store.replace(&r).await.unwrap());
    fresh();
    assert_eq!(
        store
            .delete_by_sid("corp", "sid-first")
            .await
            .unwrap()
            .len(),
        1,
        "a first sid brought by a replace ends the session"
    );
    assert_eq!(store.get(&r.id).await.unwrap(), None);
    let mut r = session(clock, "rita", Some("sid-old"), day);
    store.put(&r).await.unwrap();
    r.sid = Some("sid-new".into());
    assert!(store.replace(&r).await.unwrap());
    assert_eq!(
        store.delete_by_sid("corp", "sid-old").await.unwrap().len(),
        0,
        "the old sid no longer names it"
    );
    assert!(store.get(&r.id).await.unwrap().is_some());
    assert_eq!(
        store.delete_by_sid("corp", "sid-new").await.unwrap().len(),
        1
    );
    assert_eq!(store.get(&r.id).await.unwrap(), None);
    fresh();
    assert_eq!(store.get(&r.id).await.unwrap(), None);
    // An unchanged sid stays indexed; a replace of a deleted session indexes nothing alive.
    let r = session(clock, "rita", Some("sid-same"), day);
    store.put(&r).await.unwrap();
    assert!(store.replace(&r).await.unwrap());
    assert_eq!(
        store.delete_by_sid("corp", "sid-same").await.unwrap().len(),
        1
    );
    let mut gone = session(clock, "rita", None, day);
    gone.sid = Some("sid-gone".into());
    assert!(!store.replace(&gone).await.unwrap());
    assert_eq!(
        store.delete_by_sid("corp", "sid-gone").await.unwrap().len(),
        0
    );

    // refresh lock: exclusive, released only by its owner, expires by itself
    let id = SessionId::generate().unwrap();
    let other = SessionId::generate().unwrap();
    let t1 = store
        .try_lock(&id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free lock");
    assert!(
        store
            .try_lock(&id, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    let foreign = store
        .try_lock(&other, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store.unlock(&id, &foreign).await.unwrap(),
        "a stranger's token must not release it"
    );
    assert!(
        store
            .try_lock(&id, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "still held"
    );
    assert!(store.unlock(&id, &t1).await.unwrap());
    assert!(!store.unlock(&id, &t1).await.unwrap(), "released once");
    let t2 = store
        .try_lock(&id, Duration::from_millis(150))
        .await
        .unwrap()
        .expect("free again");
    wait_until(Duration::from_secs(5), || async {
        store
            .try_lock(&id, Duration::from_secs(30))
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(
        !store.unlock(&id, &t2).await.unwrap(),
        "an expired owner no longer holds it"
    );

    // one-time values
    assert!(
        store
            .mark_used(OneTime::LoginState, b"state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_used(OneTime::LoginState, b"state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_used(OneTime::LogoutJti, b"state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_used(OneTime::LoginState, b"state-2", Duration::from_millis(150))
            .await
            .unwrap()
    );
    wait_until(Duration::from_secs(5), || async {
        store
            .mark_used(OneTime::LoginState, b"state-2", Duration::from_secs(60))
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test]
async fn memory_store_contract() {
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();
    let store = MemoryStore::new(options(), metrics.clone(), Arc::new(clock.clone()));
    contract(&store, &clock, &|| {}).await;
    let keep = session(&clock, "kim", None, Duration::from_secs(3600));
    store.put(&keep).await.unwrap();
    store.sync();
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(metric_value(&text, "portcullis_sessions_memory") >= 1.0);
    assert!(
        metric_value(
            &text,
            "portcullis_session_store_operations_total{backend=\"memory\",op=\"get\",result=\"ok\"}"
        ) > 0.0
    );
    assert!(
        metric_value(
            &text,
            "portcullis_session_lock_contention_total{backend=\"memory\"}"
        ) >= 2.0
    );
    assert!(
        metric_value(
            &text,
            "portcullis_session_store_duration_seconds_count{backend=\"memory\",op=\"put\"}"
        ) > 0.0
    );
}

#[tokio::test]
async fn redis_standalone_contract_and_encrypted_at_rest() {
    require_redis();
    let dir = temp_dir("redis-standalone");
    let server = RedisServer::unix(&dir).await;
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();
    let config = redis_config(RedisTarget::Url(Sensitive::new(server.url())));
    let store = redis_store(&config, &clock, &metrics).await;
    contract(&store, &clock, &|| store.clear_l1()).await;

    // Encrypted at rest: no token, subject, sid, claim or session id in any key or value.
    let s = session(&clock, "dora", Some("sid-dora"), Duration::from_secs(3600));
    store.put(&s).await.unwrap();
    let mut conn = server.connection().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let mut raw = Vec::new();
    for k in &keys {
        raw.extend_from_slice(k);
        let t: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        match t.as_str() {
            "string" => {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                raw.extend_from_slice(&v);
            }
            "set" => {
                let v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                v.iter().for_each(|m| raw.extend_from_slice(m));
            }
            other => panic!("unexpected key type {other}"),
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    for secret in [
        s.tokens.access.expose(),
        s.tokens.refresh.as_ref().unwrap().expose(),
        s.tokens.id_token.as_ref().unwrap().expose(),
        "TOKEN-SECRET",
        "dora",
        "sid-dora",
        s.id.as_str(),
        "example.com",
    ] {
        assert!(!raw.contains(secret), "{secret:?} readable in Redis");
    }
    // The record carries a TTL (Redis expires it by itself).
    let key = RedisStore::record_key(&s.id);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= IDLE.as_millis() as i64, "PTTL {pttl}");
    // A record tampered with in Redis is no session (and no panic).
    let mut v: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let last = v.len() - 1;
    v[last] ^= 1;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(v)
        .query_async(&mut conn)
        .await
        .unwrap();
    store.clear_l1();
    assert_eq!(store.get(&s.id).await.unwrap(), None);
    // A record moved under another session's key does not open either.
    let s2 = session(&clock, "eve", None, Duration::from_secs(3600));
    store.put(&s2).await.unwrap();
    let good: Vec<u8> = redis::cmd("GET")
        .arg(RedisStore::record_key(&s2.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(good)
        .query_async(&mut conn)
        .await
        .unwrap();
    store.clear_l1();
    assert_eq!(store.get(&s.id).await.unwrap(), None);

    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        metric_value(
            &text,
            "portcullis_session_cache_requests_total{result=\"hit\"}"
        ) > 0.0
    );
    assert!(
        metric_value(
            &text,
            "portcullis_session_cache_requests_total{result=\"miss\"}"
        ) > 0.0
    );
    assert!(
        metric_value(
            &text,
            "portcullis_session_store_operations_total{backend=\"redis\",op=\"get\",result=\"ok\"}"
        ) > 0.0
    );
    assert!(
        metric_value(
            &text,
            "portcullis_session_lock_contention_total{backend=\"redis\"}"
        ) >= 2.0
    );
}

#[tokio::test]
async fn redis_outage_fails_fast_serves_cached_and_recovers() {
    require_redis();
    let dir = temp_dir("redis-outage");
    let mut server = RedisServer::unix(&dir).await;
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();
    let mut config = redis_config(RedisTarget::Url(Sensitive::new(server.url())));
    config.cache_ttl = Duration::from_secs(60);
    let store = redis_store(&config, &clock, &metrics).await;
    let hot = session(&clock, "hot", None, Duration::from_secs(3600));
    let cold = session(&clock, "cold", None, Duration::from_secs(3600));
    store.put(&hot).await.unwrap();
    store.put(&cold).await.unwrap();
    store.clear_l1();
    assert!(store.get(&hot.id).await.unwrap().is_some(), "now in L1");

    server.kill().await;
    let bound = config.timeout + Duration::from_millis(750);
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let r = store.get(&cold.id).await;
        assert!(
            matches!(r, Err(StoreError::Redis { .. } | StoreError::Timeout(..))),
            "{r:?}"
        );
        assert!(
            started.elapsed() < bound,
            "get took {:?}",
            started.elapsed()
        );
        let started = tokio::time::Instant::now();
        assert!(
            store
                .put(&session(&clock, "new", None, Duration::from_secs(60)))
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < bound,
            "put took {:?}",
            started.elapsed()
        );
        let started = tokio::time::Instant::now();
        assert!(
            store
                .try_lock(&cold.id, Duration::from_secs(1))
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < bound,
            "lock took {:?}",
            started.elapsed()
        );
        assert_eq!(
            store.get(&hot.id).await.unwrap().map(|s| s.id.clone()),
            Some(hot.id.clone()),
            "a cached session keeps working while Redis is down"
        );
    }

    // Back up (data is gone: no persistence), the same store recovers by itself.
    server.start().await;
    let fresh = session(&clock, "after", None, Duration::from_secs(3600));
    wait_until(Duration::from_secs(10), || async {
        store.put(&fresh).await.is_ok()
    })
    .await;
    store.clear_l1();
    assert_eq!(
        store.get(&fresh.id).await.unwrap().map(|s| s.id.clone()),
        Some(fresh.id.clone())
    );
    assert!(
        store
            .try_lock(&fresh.id, Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
    let text = String::from_utf8(metrics.render()).unwrap();
    // A failed get is counted as an error or, when it ran out of time, as a timeout (whose
    // series exists only once one happened).
    let timeout = "portcullis_session_store_operations_total{backend=\"redis\",op=\"get\",result=\"timeout\"}";
    let failed = metric_value(
        &text,
        "portcullis_session_store_operations_total{backend=\"redis\",op=\"get\",result=\"error\"}",
    ) + if support::has_series(&text, timeout) {
        metric_value(&text, timeout)
    } else {
        0.0
    };
    assert!(failed >= 3.0, "failed gets counted: {failed}");
}

#[tokio::test]
async fn redis_cluster_contract() {
    require_redis();
    let dir = temp_dir("redis-cluster");
    let cluster = Cluster::start(&dir).await;
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();
    let config = redis_config(RedisTarget::Cluster(
        cluster
            .addresses()
            .into_iter()
            .map(Sensitive::new)
            .collect(),
    ));
    let store = redis_store(&config, &clock, &metrics).await;
    contract(&store, &clock, &|| store.clear_l1()).await;
    // Keys really spread over the masters (hash tags keep each session with its lock).
    let mut with_keys = 0;
    for n in &cluster.nodes {
        let out = cli(n.port.unwrap(), &["dbsize"]).await;
        if out.trim().parse::<u64>().unwrap_or(0) > 0 {
            with_keys += 1;
        }
    }
    for _ in 0..20 {
        store
            .put(&session(&clock, "many", None, Duration::from_secs(600)))
            .await
            .unwrap();
    }
    let mut after = 0;
    for n in &cluster.nodes {
        let out = cli(n.port.unwrap(), &["dbsize"]).await;
        if out.trim().parse::<u64>().unwrap_or(0) > 0 {
            after += 1;
        }
    }
    assert!(
        after >= 2 && after >= with_keys,
        "keys on {after} of 3 masters"
    );
}

#[tokio::test]
async fn redis_sentinel_failover_during_traffic() {
    require_redis();
    let dir = temp_dir("redis-sentinel");
    let set = SentinelSet::start(&dir).await;
    let first = set.master_port().await;
    assert_eq!(Some(first), set.master.port);
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();
    let mut config = redis_config(RedisTarget::Sentinel {
        master: "mymaster".into(),
        addresses: set.addresses().into_iter().map(Sensitive::new).collect(),
    });
    config.timeout = Duration::from_millis(500);
    let store = Arc::new(redis_store(&config, &clock, &metrics).await);
    let before = session(&clock, "pre", None, Duration::from_secs(3600));
    store.put(&before).await.unwrap();

    // Traffic: put + fresh get in a loop, counting successes and failures.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (store, stop, ok, failed, clock) = (
            store.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            clock.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = session(&clock, "traffic", None, Duration::from_secs(600));
                let round = async {
                    store.put(&s).await?;
                    store.clear_l1();
                    store.get(&s.id).await
                };
                match round.await {
                    Ok(Some(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_until(Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= 5
    })
    .await;

    let out = cli(
        set.sentinels[0].port.unwrap(),
        &["sentinel", "failover", "mymaster"],
    )
    .await;
    assert!(out.contains("OK"), "failover refused: {out}");
    let replica_port = set.replica.port.unwrap();
    wait_cli(replica_port, &["role"], "master", Duration::from_secs(20)).await;
    wait_until(Duration::from_secs(20), || async {
        set.master_port().await == replica_port
    })
    .await;
    // The old master is demoted (Sentinel reconfigures it and drops its clients).
    wait_cli(first, &["role"], "slave", Duration::from_secs(20)).await;

    // After the failover, traffic succeeds again against the new master.
    let ok_at_switch = ok.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(20), || async {
        ok.load(Ordering::Relaxed) >= ok_at_switch + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(5), traffic)
        .await
        .unwrap()
        .unwrap();
    // The new master holds what was written after the switch.
    let s = session(&clock, "post", None, Duration::from_secs(600));
    store.put(&s).await.unwrap();
    let got = cli(replica_port, &["exists", &RedisStore::record_key(&s.id)]).await;
    assert_eq!(got.trim(), "1", "written to the promoted replica");
    // Data from before the failover was replicated.
    store.clear_l1();
    assert!(store.get(&before.id).await.unwrap().is_some());
    eprintln!(
        "sentinel failover: {} ok, {} failed rounds",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn redis_tls_with_acl_user() {
    require_redis();
    let dir = temp_dir("redis-tls");
    let cert = support::certs::generate(&dir, "redis", "localhost");
    let password = "s3cret-acl-password";
    let server = RedisServer::tls(&dir, &cert.cert, &cert.key, password).await;
    let port = server.port.unwrap();
    let clock = ManualClock::new();
    let metrics = Metrics::try_new().unwrap();

    // User and password in the URL.
    let mut config = redis_config(RedisTarget::Url(Sensitive::new(format!(
        "rediss://portcullis:{password}@localhost:{port}"
    ))));
    config.ca_file = Some(cert.cert.clone());
    config.timeout = Duration::from_secs(2);
    let store = redis_store(&config, &clock, &metrics).await;
    let s = session(&clock, "tina", Some("sid-t"), Duration::from_secs(600));
    store.put(&s).await.unwrap();
    store.clear_l1();
    assert_eq!(store.get(&s.id).await.unwrap().as_deref(), Some(&s));
    let t = store
        .try_lock(&s.id, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(store.unlock(&s.id, &t).await.unwrap());
    assert_eq!(store.delete_by_sid("corp", "sid-t").await.unwrap().len(), 1);

    // The password from its own key (sessions.redis.password), the user from the URL.
    let mut by_key = redis_config(RedisTarget::Url(Sensitive::new(format!(
        "rediss://portcullis@localhost:{port}"
    ))));
    by_key.ca_file = Some(cert.cert.clone());
    by_key.password = Some(Sensitive::new(password));
    by_key.timeout = Duration::from_secs(2);
    let store2 = redis_store(&by_key, &clock, &metrics).await;
    store2.put(&s).await.unwrap();
    store2.clear_l1();
    assert!(store2.get(&s.id).await.unwrap().is_some());

    // A wrong password is an error, not a panic; so is an untrusted certificate.
    let mut wrong = by_key.clone();
    wrong.password = Some(Sensitive::new("wrong"));
    let bad = redis_store(&wrong, &clock, &metrics).await;
    assert!(bad.get(&s.id).await.is_err());
    let other = support::certs::generate(&dir, "other", "localhost");
    let mut untrusted = by_key.clone();
    untrusted.ca_file = Some(other.cert.clone());
    let bad = redis_store(&untrusted, &clock, &metrics).await;
    assert!(bad.get(&s.id).await.is_err());
}

#[test]
fn session_debug_redacts_tokens_and_id() {
    let clock = ManualClock::new();
    let s = session(&clock, "zed", None, Duration::from_secs(60));
    let text = format!("{s:?}");
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains(s.id.as_str()), "{text}");
    assert!(text.contains("zed"));
    let _ = SystemTime::now();
}
