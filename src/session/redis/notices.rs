//! Session-ended announcements between replicas over Redis pub/sub, so a session ended on one
//! replica (sign-out, back-channel logout, an operator's revoke, a refused refresh) is gone
//! from every replica's L1 cache, and its tunnels closed, within a second instead of after
//! `sessions.redis.cache_ttl`.
//!
//! One channel, [`CHANNEL`]; a message is JSON `{"o": origin, "r": cause, "h": [hashes]}`
//! (at most [`MAX_HASHES_PER_NOTICE`] hashes; more are several messages). Every replica
//! subscribes on a connection of its own (a subscribed connection can send nothing else):
//! standalone, the configured server; Sentinel, the current master (asked of the Sentinels
//! every [`MASTER_CHECK`] while subscribed: after a failover the subscriber moves to the new
//! master at once, where the announcements are now published); Cluster, the first seed address that answers, with
//! classic `SUBSCRIBE`/`PUBLISH`, which a cluster forwards to every node (sharded pub/sub
//! would need the slot owner of the channel followed through resharding, for a message that
//! is rare and tiny).
//!
//! Reconnects back off from 50 ms to at most 1 s, so the channel is back within a second of
//! Redis answering again. Announcements published while this replica was not subscribed are
//! lost, so after a reconnect the L1 cache is cleared (the next request per session reads
//! Redis, which is up, since the reconnect worked) and [`Notice::Resync`] tells the tunnels
//! to look their sessions up again. While Redis is down the L1 cache is kept: it is what
//! serves known sessions through an outage.
//!
//! Security notes: messages carry hashes of session ids only (the key names' hashes), never
//! an id, subject or `sid`. What arrives is bounded ([`MAX_MESSAGE`]) and parsed without
//! panicking; a malformed message is counted and dropped. Anyone who can publish on the
//! Redis can end sessions early (not extend them): Redis access is already trusted with the
//! sessions themselves.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use moka::sync::Cache;
use redis::sentinel::SentinelClient;
use redis::{Client, RedisError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::session::admin::{Ended, MAX_HASHES_PER_NOTICE, Notice};
use crate::session::Session;

/// The channel every replica publishes and subscribes on.
pub const CHANNEL: &str = "portcullis:sessions:ended";
/// Largest message read; bigger ones are dropped (a full one is about 7 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// First reconnect delay.
const MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest reconnect delay: the channel is back within this of Redis answering.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a quiet subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often a subscriber through Sentinel asks which node is the master.
const MASTER_CHECK: Duration = Duration::from_millis(500);
/// Notices queued for the tunnels before the slowest listener loses some.
const QUEUE: usize = 1024;

/// Where the subscriber connects.
pub(super) enum Source {
    /// The server (standalone), or each seed of a cluster in turn.
    Clients(Vec<Client>),
    /// The master the sentinels name (looked up on each connect), and the store's connection
    /// to it (emptied when the master moves).
    Sentinel(Box<SentinelClient>, Option<super::connect::SentinelSlot>),
}

/// A message on the channel.
#[derive(Serialize, Deserialize)]
struct Message {
    /// The publishing replica (its own messages are skipped: already applied).
    #[serde(rename = "o")]
    origin: String,
    #[serde(flatten)]
    ended: Ended,
}

/// What the subscriber task updates.
pub(super) struct Subscriber {
    pub(super) l1: Cache<String, Arc<Session>>,
    /// Hashes ended recently: a read that raced the announcement does not put them back in L1.
    pub(super) recent: Cache<String, ()>,
    pub(super) tx: broadcast::Sender<Notice>,
    pub(super) origin: String,
    pub(super) timeout: Duration,
    pub(super) metrics: Metrics,
}

/// A new channel for the notices.
pub(super) fn queue() -> broadcast::Sender<Notice> {
    broadcast::channel(QUEUE).0
}

/// The messages announcing `ended` from `origin` (several when it has many hashes).
pub(super) fn messages(origin: &str, ended: &Ended) -> Vec<String> {
    ended
        .hashes
        .chunks(MAX_HASHES_PER_NOTICE)
        .filter_map(|hashes| {
            serde_json::to_string(&Message {
                origin: origin.to_string(),
                ended: Ended {
                    cause: ended.cause,
                    hashes: hashes.to_vec(),
                },
            })
            .ok()
        })
        .collect()
}

// === impl Subscriber ===

impl Subscriber {
    /// Starts the subscriber task (it runs until aborted).
    pub(super) fn start(self, source: Source) -> tokio::task::AbortHandle {
        self.metrics.session_notices_subscribed.set(0);
        for event in ["published", "publish_failed", "received", "malformed", "resync"] {
            self.count_zero(event);
        }
        tokio::spawn(self.run(source)).abort_handle()
    }

    fn count_zero(&self, event: &str) {
        self.metrics.session_notices.with_label_values(&[event]);
    }

    /// Subscribes, reconnecting with backoff, until the task is aborted.
    async fn run(self, mut source: Source) {
        let mut delay = MIN_DELAY;
        let mut subscribed_before = false;
        loop {
            match tokio::time::timeout(self.timeout, connect(&mut source)).await {
                Ok(Ok((pubsub, addr))) => {
                    self.metrics.session_notices_subscribed.set(1);
                    if subscribed_before {
                        self.resync();
                    }
                    subscribed_before = true;
                    delay = MIN_DELAY;
                    self.listen(pubsub, &mut source, &addr).await;
                    self.metrics.session_notices_subscribed.set(0);
                    tracing::warn!("session announcements: subscription lost, reconnecting");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "session announcements: cannot subscribe yet");
                }
                Err(_) => tracing::debug!("session announcements: subscribing timed out"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_DELAY);
        }
    }

    /// Announcements may have been missed: forget what the cache holds, have tunnels checked.
    fn resync(&self) {
        self.l1.invalidate_all();
        self.metrics
            .session_notices
            .with_label_values(&["resync"])
            .inc();
        let _ = self.tx.send(Notice::Resync);
    }

    /// Reads messages until the connection ends, stops answering pings, or (Sentinel) its
    /// node `addr` is no longer the master.
    async fn listen(&self, pubsub: redis::aio::PubSub, source: &mut Source, addr: &str) {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut master = tokio::time::interval(MASTER_CHECK);
        master.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => self.handle(m.get_payload_bytes()),
                    None => return,
                },
                _ = master.tick(), if matches!(source, Source::Sentinel(..)) => {
                    if let Source::Sentinel(s, _) = source
                        && let Ok(Ok(now)) =
                            tokio::time::timeout(self.timeout, s.async_get_client()).await
                        && now.get_connection_info().addr().to_string() != addr
                    {
                        tracing::info!("session store: the Sentinel master moved, following it");
                        return;
                    }
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        self.timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies one message: drop the cached copies, remember the hashes, tell the tunnels.
    fn handle(&self, payload: &[u8]) {
        let parsed = (payload.len() <= MAX_MESSAGE)
            .then(|| serde_json::from_slice::<Message>(payload).ok())
            .flatten()
            .filter(|m| m.ended.hashes.iter().all(|h| h.len() <= 64));
        let Some(m) = parsed else {
            self.count("malformed");
            return;
        };
        if m.origin == self.origin {
            return;
        }
        self.count("received");
        for h in &m.ended.hashes {
            self.l1.invalidate(h);
            self.recent.insert(h.clone(), ());
        }
        let _ = self.tx.send(Notice::Ended(m.ended));
    }

    fn count(&self, event: &str) {
        self.metrics
            .session_notices
            .with_label_values(&[event])
            .inc();
    }
}

/// The subscriber task ends with its store.
impl Drop for super::RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// A subscribed connection from `source`, and the address of the node it is on.
async fn connect(source: &mut Source) -> Result<(redis::aio::PubSub, String), RedisError> {
    let mut last = None;
    let clients = match source {
        Source::Clients(clients) => clients.clone(),
        Source::Sentinel(s, store) => {
            let client = s.async_get_client().await?;
            // The store looks the master up again too (it may still be on the old one).
            if let Some(slot) = store {
                *slot.lock().await = None;
            }
            vec![client]
        }
    };
    for client in clients {
        match subscribe(&client).await {
            Ok(p) => return Ok((p, client.get_connection_info().addr().to_string())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        RedisError::from((redis::ErrorKind::Client, "no Redis address to subscribe to"))
    }))
}

async fn subscribe(client: &Client) -> Result<redis::aio::PubSub, RedisError> {
    let mut p = client.get_async_pubsub().await?;
    p.subscribe(CHANNEL).await?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::admin::Cause;

    fn subscriber() -> (Subscriber, broadcast::Receiver<Notice>) {
        let tx = queue();
        let rx = tx.subscribe();
        let s = Subscriber {
            l1: Cache::new(10),
            recent: Cache::new(10),
            tx,
            origin: "me".into(),
            timeout: Duration::from_secs(1),
            metrics: Metrics::try_new().unwrap_or_else(|e| panic!("{e}")),
        };
        (s, rx)
    }

    #[test]
    fn many_hashes_are_several_bounded_messages_naming_no_id() {
        let ended = Ended {
            cause: Cause::Revoked,
            hashes: (0..600).map(|i| format!("h{i:023}")).collect(),
        };
        let msgs = messages("o1", &ended);
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| m.len() < MAX_MESSAGE));
        let first: serde_json::Value =
            serde_json::from_str(&msgs[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first["o"], "o1");
        assert_eq!(first["r"], "revoked");
        assert_eq!(first["h"].as_array().map(Vec::len), Some(MAX_HASHES_PER_NOTICE));
    }

    #[test]
    fn a_message_drops_cached_copies_and_own_or_malformed_ones_are_skipped() {
        let (s, mut rx) = subscriber();
        let ended = Ended {
            cause: Cause::SignOut,
            hashes: vec!["abc".into()],
        };
        let own = messages("me", &ended);
        s.handle(own[0].as_bytes());
        assert!(rx.try_recv().is_err(), "own messages are already applied");
        for junk in [&b"not json"[..], b"{\"o\":\"x\",\"r\":\"nope\",\"h\":[]}", &[b'x'; 70_000]] {
            s.handle(junk);
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(
            s.metrics.session_notices.with_label_values(&["malformed"]).get(),
            3
        );
        let now = std::time::SystemTime::now();
        let tokens = crate::session::Tokens {
            access: crate::session::Token::new("a"),
            refresh: None,
            id_token: None,
        };
        let cached = Session::new("corp", "alice", tokens, now, now, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        s.l1.insert("abc".into(), Arc::new(cached));
        let theirs = messages("them", &ended);
        s.handle(theirs[0].as_bytes());
        assert!(!s.l1.contains_key("abc"), "the cached copy is gone");
        assert_eq!(rx.try_recv().ok(), Some(Notice::Ended(ended)));
        assert!(s.recent.contains_key("abc"));
    }
}
