//! Revocation across replicas: two Portcullis instances on one Redis (each test starts its
//! own `redis-server`), with an L1 cache TTL of a minute, so only the pub/sub announcement can
//! end a session on the other replica within a second. A revoke through one replica's admin
//! API, and a back-channel logout received by one replica, end the session on the other
//! (refused within 1 s) and close its WebSockets there within 1 s. A Redis outage keeps the
//! L1 serving; when Redis comes back (empty), sign-ins work and the subscription is back
//! within a second, and the L1 is cleared, because announcements may have been missed. The
//! same on a Redis Cluster (a node restarted) and through Sentinel (a failover).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::secret::KeyMaterial;
use support::browser::{CookieClient, backchannel_logout};
use support::idp::{CLIENT_ID, CLIENT_SECRET, MockIdp, SigningKey};
use support::redis::{Cluster, RedisServer, SentinelSet, free_port, require_redis, wait_cli};
use support::scenario::{Route, Scenario};
use support::upstream::MockUpstream;
use support::ws::{self, Ws, closed_within, echo};
use support::{Proxy, metric_value, temp_dir, wait_for};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const COOKIE: &str = "portcullis_session";
const TOKEN: &str = "admin-token-0123456789abcdef";
/// What "every replica within one second" is measured against.
const ONE_SECOND: Duration = Duration::from_secs(1);

struct Shared {
    idp: MockIdp,
    key: SigningKey,
    upstream: MockUpstream,
    redis: RedisServer,
    /// `sessions.redis`'s target (`url: ...`, `cluster: ...` or `sentinel: ...`).
    target: String,
    _cluster: Option<Cluster>,
    _sentinels: Option<SentinelSet>,
}

async fn shared() -> Shared {
    require_redis();
    let dir = temp_dir("session-revocation");
    let redis = RedisServer::tcp(&dir, free_port(false), &[]).await;
    let target = format!("url: \"{}\"", redis.url());
    with_target(redis, target, None, None).await
}

async fn with_target(
    redis: RedisServer,
    target: String,
    cluster: Option<Cluster>,
    sentinels: Option<SentinelSet>,
) -> Shared {
    let idp = MockIdp::start().await;
    let key = idp.new_key(Algorithm::RS256, "k1");
    let upstream = support::upstream::start("app").await;
    Shared {
        idp,
        key,
        upstream,
        redis,
        target,
        _cluster: cluster,
        _sentinels: sentinels,
    }
}

fn quoted(addresses: &[String]) -> String {
    let v: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    v.join(", ")
}

impl Shared {
    /// A replica on the shared Redis, its L1 cache kept for a minute.
    async fn replica(&self) -> Proxy {
        let secret = format!("client_secret: \"{CLIENT_SECRET}\"");
        let key = KeyMaterial::from_bytes(&[7; 32]).unwrap().to_base64();
        let redis = format!(
            "redis: {{ {}, timeout: 500ms, cache_ttl: 60s }}",
            self.target
        );
        let cookie = format!("cookie: {{ secure: false, keys: [\"{key}\"] }}");
        let token = format!("token: \"{TOKEN}\"");
        Scenario::new()
            .upstream("app", &self.upstream)
            .issuer(
                "corp",
                &self.idp,
                &["client_id: portcullis", &secret, "timeout: 1s"],
            )
            .route(Route::session("/").name("app"))
            .sessions(&["store: redis", &redis, &cookie])
            .section("admin", &["address: \"127.0.0.1:0\"", &token])
            .start()
            .await
    }
}

async fn sign_in(p: &Proxy) -> CookieClient {
    let mut b = CookieClient::new();
    let (resp, hops) = b.follow(&p.url("/page")).await;
    assert_eq!(resp.status, 200, "{hops:?}");
    b
}

/// `b`'s session cookie presented to another replica.
fn at(b: &CookieClient) -> CookieClient {
    let mut c = CookieClient::new();
    c.cookies.insert(COOKIE.into(), b.cookies[COOKIE].clone());
    c
}

async fn open_ws(p: &Proxy, b: &CookieClient) -> Ws {
    let addr = p.addr.unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", at(b).cookie_header().parse().unwrap());
    ws::open(stream, req).await
}

/// Waits until `p` refuses `b`'s session; panics past `deadline` (measured from `since`).
async fn refused_within(b: &CookieClient, p: &Proxy, since: Instant, deadline: Duration) {
    loop {
        if at(b).api(&p.url("/x")).await.status == 401 {
            return;
        }
        assert!(
            since.elapsed() < deadline,
            "the session was still served after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn revoke(p: &Proxy, query: &str) -> serde_json::Value {
    let url = format!("http://{}/sessions/revoke?{query}", p.admin);
    let auth = format!("Bearer {TOKEN}");
    let r = CookieClient::new()
        .request("POST", &url, &[("authorization", &auth)], "")
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Both replicas subscribed to the announcements (so a test does not race the start-up).
async fn subscribed(ps: &[&Proxy]) {
    for p in ps {
        p.wait_metric(
            Duration::from_secs(5),
            "subscribed",
            "portcullis_session_notices_subscribed",
            1.0,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_replica_ends_the_session_and_its_tunnels_on_the_other_within_a_second() {
    let s = shared().await;
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let alice = sign_in(&a).await;
    s.idp.set_user("bob");
    let bob = sign_in(&a).await;
    // B has both sessions in its L1 cache (kept a minute), and a tunnel of each.
    assert_eq!(at(&alice).api(&b.url("/x")).await.status, 200);
    assert_eq!(at(&bob).api(&b.url("/x")).await.status, 200);
    let mut ws_alice = open_ws(&b, &alice).await;
    let mut ws_bob = open_ws(&b, &bob).await;
    echo(&mut ws_alice, "a").await;
    echo(&mut ws_bob, "b").await;
    // Revoked through A's admin API.
    let started = Instant::now();
    let r = revoke(&a, "sub=alice").await;
    assert_eq!(r["revoked"], 1);
    refused_within(&alice, &b, started, ONE_SECOND).await;
    closed_within(&mut ws_alice, ONE_SECOND.saturating_sub(started.elapsed())).await;
    // Bob's session and tunnel are untouched.
    assert_eq!(at(&bob).api(&b.url("/x")).await.status, 200);
    echo(&mut ws_bob, "still here").await;
    let m = b.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "portcullis_session_tunnels_closed_total{reason=\"revoked\"}"
        ),
        1.0
    );
    assert!(metric_value(&m, "portcullis_session_notices_total{event=\"received\"}") >= 1.0);
    let m = a.metrics().await;
    assert!(metric_value(&m, "portcullis_session_notices_total{event=\"published\"}") >= 1.0);
    // By id, as listed, through B this time: A hears of it.
    let url = format!("http://{}/sessions?sub=bob", b.admin);
    let auth = format!("Bearer {TOKEN}");
    let listing = CookieClient::new()
        .request("GET", &url, &[("authorization", &auth)], "")
        .await;
    let id = listing.json()["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(at(&bob).api(&a.url("/x")).await.status, 200);
    let started = Instant::now();
    assert_eq!(revoke(&b, &format!("id={id}")).await["revoked"], 1);
    refused_within(&bob, &a, started, ONE_SECOND).await;
    closed_within(&mut ws_bob, ONE_SECOND).await;
}

/// A revoke on A ends the session on B within a second, its tunnel on B too.
async fn revoke_reaches_the_other_replica(s: &Shared) {
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let browser = sign_in(&a).await;
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    let mut ws_b = open_ws(&b, &browser).await;
    echo(&mut ws_b, "b").await;
    let started = Instant::now();
    assert_eq!(revoke(&a, "sub=alice&issuer=corp").await["revoked"], 1);
    refused_within(&browser, &b, started, ONE_SECOND).await;
    closed_within(&mut ws_b, ONE_SECOND.saturating_sub(started.elapsed())).await;
    let listing = list(&b, "sub=alice").await;
    assert_eq!(listing["sessions"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_reaches_the_other_replica_through_a_redis_cluster() {
    require_redis();
    let dir = temp_dir("session-revocation-cluster");
    let cluster = Cluster::start(&dir).await;
    let target = format!(
        "cluster: {{ addresses: [{}] }}",
        quoted(&cluster.addresses())
    );
    // The standalone server is not used by this test's replicas.
    let unused = RedisServer::tcp(&dir, free_port(false), &[]).await;
    let s = with_target(unused, target, Some(cluster), None).await;
    revoke_reaches_the_other_replica(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_reaches_the_other_replica_through_sentinel() {
    require_redis();
    let dir = temp_dir("session-revocation-sentinel");
    let set = SentinelSet::start(&dir).await;
    let target = format!(
        "sentinel: {{ master: mymaster, addresses: [{}] }}",
        quoted(&set.addresses())
    );
    let unused = RedisServer::tcp(&dir, free_port(false), &[]).await;
    let s = with_target(unused, target, None, Some(set)).await;
    revoke_reaches_the_other_replica(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_on_one_replica_reaches_the_others_cache_and_tunnels() {
    let s = shared().await;
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let browser = sign_in(&a).await;
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    let mut ws_b = open_ws(&b, &browser).await;
    echo(&mut ws_b, "b").await;
    let token = s.idp.logout_token(&s.key, CLIENT_ID, "sid-1").build();
    let started = Instant::now();
    let r = backchannel_logout(&a.url("/oauth2/backchannel_logout"), &token).await;
    assert_eq!(r.status, 200);
    refused_within(&browser, &b, started, ONE_SECOND).await;
    closed_within(&mut ws_b, ONE_SECOND.saturating_sub(started.elapsed())).await;
    wait_for(Duration::from_secs(5), "closure counted on b", || async {
        let m = b.metrics().await;
        (metric_value(
            &m,
            "portcullis_session_tunnels_closed_total{reason=\"backchannel\"}",
        ) == 1.0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_on_one_replica_closes_the_tunnels_on_the_other() {
    let s = shared().await;
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let mut browser = sign_in(&a).await;
    let mut ws_b = open_ws(&b, &browser).await;
    echo(&mut ws_b, "b").await;
    let started = Instant::now();
    let r = browser.same_origin_get(&a.url("/oauth2/sign_out")).await;
    assert_eq!(r.status, 302);
    closed_within(&mut ws_b, ONE_SECOND.saturating_sub(started.elapsed())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_the_cache_and_the_channel_comes_back_within_a_second() {
    let mut s = shared().await;
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let browser = sign_in(&a).await;
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    s.redis.kill().await;
    b.wait_metric(
        Duration::from_secs(10),
        "subscription lost",
        "portcullis_session_notices_subscribed",
        0.0,
    )
    .await;
    // Requests go on from the L1 cache while Redis is down.
    for p in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(at(&browser).api(&p.url("/x")).await.status, 200);
        }
    }
    // Redis comes back empty: subscribed again within a second, and the L1 is cleared
    // (announcements may have been missed), so the session, gone from Redis, is refused.
    s.redis.start().await;
    let back = Instant::now();
    // The store is usable again at once: a new sign-in works on each replica within a second.
    for p in [&a, &b] {
        loop {
            let mut c = CookieClient::new();
            if c.follow(&p.url("/again")).await.0.status == 200 {
                break;
            }
            assert!(
                back.elapsed() < ONE_SECOND,
                "no sign-in within 1 s of Redis returning"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for p in [&a, &b] {
        loop {
            let m = p.metrics().await;
            if metric_value(&m, "portcullis_session_notices_subscribed") == 1.0 {
                break;
            }
            assert!(
                back.elapsed() < ONE_SECOND,
                "not subscribed again within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for p in [&a, &b] {
        let m = p.metrics().await;
        assert!(metric_value(&m, "portcullis_session_notices_total{event=\"resync\"}") >= 1.0);
        assert_eq!(at(&browser).api(&p.url("/x")).await.status, 401);
    }
}

async fn list(p: &Proxy, query: &str) -> serde_json::Value {
    let url = format!("http://{}/sessions?{query}", p.admin);
    let auth = format!("Bearer {TOKEN}");
    let r = CookieClient::new()
        .request("GET", &url, &[("authorization", &auth)], "")
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn subs(listing: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = listing["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sub"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_read_the_index_or_a_bounded_scan_of_redis() {
    let s = shared().await;
    let (a, b) = (s.replica().await, s.replica().await);
    let _alice = sign_in(&a).await;
    s.idp.set_user("bob");
    s.idp.set_sid(Some("sid-b"));
    let bob = sign_in(&b).await;
    // Every replica sees every session (a SCAN of the record keys).
    for p in [&a, &b] {
        let all = list(p, "").await;
        assert_eq!(subs(&all), ["alice", "bob"]);
        assert_eq!(all["truncated"], false);
    }
    let one = list(&a, "limit=1").await;
    assert_eq!(one["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(one["truncated"], true);
    // Through the index sets, with and without the issuer.
    assert_eq!(subs(&list(&a, "sub=bob").await), ["bob"]);
    assert_eq!(subs(&list(&a, "sid=sid-b&issuer=corp").await), ["bob"]);
    assert_eq!(subs(&list(&a, "issuer=corp").await), ["alice", "bob"]);
    // A revoked session leaves the listings at once.
    revoke(&a, "sid=sid-b").await;
    assert_eq!(subs(&list(&b, "").await), ["alice"]);
    assert_eq!(subs(&list(&b, "sub=bob").await), Vec::<String>::new());
    assert_eq!(at(&bob).api(&b.url("/x")).await.status, 401);
}

/// Signs in on each replica, retrying until it works; panics when that takes a second from
/// `since`.
async fn sign_ins_work_within_a_second(ps: &[&Proxy], since: Instant) {
    for p in ps {
        loop {
            let mut c = CookieClient::new();
            if c.follow(&p.url("/again")).await.0.status == 200 {
                break;
            }
            assert!(
                since.elapsed() < ONE_SECOND,
                "no sign-in within 1 s of Redis returning"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_node_is_used_again_within_a_second() {
    require_redis();
    let dir = temp_dir("session-revocation-cluster-restart");
    let mut cluster = Cluster::start(&dir).await;
    let target = format!(
        "cluster: {{ addresses: [{}] }}",
        quoted(&cluster.addresses())
    );
    let unused = RedisServer::tcp(&dir, free_port(false), &[]).await;
    let s = with_target(unused, target, None, None).await;
    let (a, b) = (s.replica().await, s.replica().await);
    sign_ins_work_within_a_second(&[&a, &b], Instant::now() - Duration::from_millis(1)).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port.unwrap()).collect();
    cluster.nodes[1].kill().await;
    wait_cli(
        ports[0],
        &["cluster", "info"],
        "cluster_state:fail",
        Duration::from_secs(15),
    )
    .await;
    cluster.nodes[1].start().await;
    for port in &ports {
        wait_cli(
            *port,
            &["cluster", "info"],
            "cluster_state:ok",
            Duration::from_secs(15),
        )
        .await;
    }
    sign_ins_work_within_a_second(&[&a, &b], Instant::now()).await;
}

/// A Sentinel failover (manual, as in a maintenance): once the old master is demoted, sign-ins
/// work on both replicas within a second, and a revoke reaches the other replica (its store
/// and its subscriber follow the new master; until the demotion the old master still answers
/// whoever has not looked again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_sign_ins_and_revokes_work_within_a_second() {
    require_redis();
    let dir = temp_dir("session-revocation-failover");
    let set = SentinelSet::start(&dir).await;
    let target = format!(
        "sentinel: {{ master: mymaster, addresses: [{}] }}",
        quoted(&set.addresses())
    );
    let (sentinel, new_master) = (set.sentinels[0].port.unwrap(), set.replica.port.unwrap());
    let old_master = set.master.port.unwrap();
    let unused = RedisServer::tcp(&dir, free_port(false), &[]).await;
    let s = with_target(unused, target, None, Some(set)).await;
    let (a, b) = (s.replica().await, s.replica().await);
    subscribed(&[&a, &b]).await;
    let browser = sign_in(&a).await;
    let out = support::redis::cli(sentinel, &["sentinel", "failover", "mymaster"]).await;
    assert!(out.contains("OK"), "failover refused: {out}");
    wait_cli(new_master, &["role"], "master", Duration::from_secs(20)).await;
    let by_name = ["sentinel", "get-master-addr-by-name", "mymaster"];
    wait_cli(
        sentinel,
        &by_name,
        &new_master.to_string(),
        Duration::from_secs(20),
    )
    .await;
    // Until the old master is demoted it still takes writes (from clients that have not
    // looked again): the failover is over when it is a replica.
    wait_cli(old_master, &["role"], "slave", Duration::from_secs(20)).await;
    // The new master answers and the Sentinels name it: usable within a second.
    sign_ins_work_within_a_second(&[&a, &b], Instant::now()).await;
    // And announcements flow again: a revoke on A reaches B's cache within a second.
    assert_eq!(at(&browser).api(&b.url("/x")).await.status, 200);
    let started = Instant::now();
    // Alice's sessions: the first one and those of the sign-ins just made.
    assert!(revoke(&a, "sub=alice").await["revoked"].as_u64() >= Some(1));
    refused_within(&browser, &b, started, ONE_SECOND).await;
}
