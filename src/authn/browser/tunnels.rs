//! Upgraded connections (WebSocket tunnels) by session, so that a session that ends on this
//! replica takes its tunnels with it.
//!
//! A tunnel opened on a session route holds a [`TunnelTicket`] for the session it was opened
//! with (`listener::upgrade` waits on [`TunnelTicket::ended`] beside its sockets). The ticket
//! resolves, and the tunnel closes, when:
//! - the session is signed out here, ended by a back-channel logout received here (matched by
//!   issuer and `sid`, or `sub`), deleted by a refused refresh, replaced by a new sign-in in
//!   the same browser, or revoked by an operator ([`Tunnels::end`], [`Tunnels::end_matching`]);
//! - another replica announced that the session ended (Redis store: the announcement names
//!   the hash of the session id, [`Tunnels::end_hashed`]), or, after the announcements'
//!   channel was down, a fresh lookup finds the session gone ([`Tunnels::held`]);
//! - the session's absolute lifetime (`sessions.lifetime`) ends.
//!
//! The idle timeout does not end a tunnel while it is in use (a WebSocket carries no requests
//! that would touch the session; `server.upgraded_idle_timeout` closes quiet tunnels).
//!
//! Security notes: the registry holds session ids, issuers, `sid`s and subjects in process
//! memory only (never logged); it holds only sessions with open tunnels, and an entry leaves
//! with its last tunnel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::session::admin::Cause;
use crate::session::{Session, SessionId};

/// Why a session's tunnels were closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Signed out at `auth.sign_out_path`.
    SignOut,
    /// A back-channel logout token for its `sid` or subject.
    Backchannel,
    /// Its absolute lifetime ended.
    Expired,
    /// The IdP refused its refresh (or the new ID token was invalid): the session was deleted.
    RefreshRefused,
    /// A new sign-in in the same browser replaced it.
    Replaced,
    /// An operator revoked it (admin API), or it was found gone after the announcements'
    /// channel came back.
    Revoked,
}

/// Every [`EndReason`], for the metric's series.
const REASONS: [EndReason; 6] = [
    EndReason::SignOut,
    EndReason::Backchannel,
    EndReason::Expired,
    EndReason::RefreshRefused,
    EndReason::Replaced,
    EndReason::Revoked,
];

/// The sessions of this replica that have open tunnels.
pub struct Tunnels {
    sessions: Mutex<HashMap<SessionId, Entry>>,
    closed: IntCounterVec,
    /// Numbers entries, so a ticket of an ended entry never touches a later one.
    generation: std::sync::atomic::AtomicU64,
}

struct Entry {
    /// The hash of the session id, what announcements name.
    hash: String,
    issuer: String,
    sid: Option<String>,
    subject: String,
    end: watch::Sender<Option<EndReason>>,
    tunnels: usize,
    generation: u64,
}

/// A tunnel's hold on its session: resolves when the session ends; leaves the registry when
/// dropped (the tunnel ended).
pub struct TunnelTicket {
    tunnels: Arc<Tunnels>,
    id: SessionId,
    generation: u64,
    ended: watch::Receiver<Option<EndReason>>,
    deadline: Instant,
}

// === impl EndReason ===

impl EndReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::SignOut => "sign_out",
            EndReason::Backchannel => "backchannel",
            EndReason::Expired => "expired",
            EndReason::RefreshRefused => "refresh_refused",
            EndReason::Replaced => "replaced",
            EndReason::Revoked => "revoked",
        }
    }
}

impl From<Cause> for EndReason {
    fn from(c: Cause) -> Self {
        match c {
            Cause::SignOut => EndReason::SignOut,
            Cause::Backchannel => EndReason::Backchannel,
            Cause::Revoked => EndReason::Revoked,
            Cause::RefreshRefused => EndReason::RefreshRefused,
            Cause::Replaced => EndReason::Replaced,
        }
    }
}

// === impl Tunnels ===

impl Tunnels {
    /// An empty registry; creates the metric's series at 0.
    pub fn new(metrics: &Metrics) -> Self {
        for r in REASONS {
            metrics
                .session_tunnels_closed
                .with_label_values(&[r.label()]);
        }
        Self {
            sessions: Mutex::new(HashMap::new()),
            closed: metrics.session_tunnels_closed.clone(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers a tunnel of `session`, whose lifetime ends `left` from now.
    pub fn register(self: &Arc<Self>, session: &Session, left: Duration) -> TunnelTicket {
        let mut map = self.lock();
        let entry = map.entry(session.id.clone()).or_insert_with(|| Entry {
            hash: session.id.hashed(),
            issuer: session.issuer.clone(),
            sid: None,
            subject: session.subject.clone(),
            end: watch::channel(None).0,
            tunnels: 0,
            generation: self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        if session.sid.is_some() {
            entry.sid.clone_from(&session.sid);
        }
        entry.tunnels += 1;
        TunnelTicket {
            tunnels: self.clone(),
            id: session.id.clone(),
            generation: entry.generation,
            ended: entry.end.subscribe(),
            deadline: Instant::now() + left,
        }
    }

    /// Ends the tunnels of session `id`.
    pub fn end(&self, id: &SessionId, reason: EndReason) {
        let entry = self.lock().remove(id);
        if let Some(e) = entry {
            let _ = e.end.send(Some(reason));
        }
    }

    /// Ends the tunnels of the sessions whose id hashes are `hashes` (ended on another
    /// replica); returns how many sessions had tunnels here.
    pub fn end_hashed(&self, hashes: &[String], reason: EndReason) -> usize {
        let ended: Vec<Entry> = {
            let mut map = self.lock();
            let ids: Vec<SessionId> = map
                .iter()
                .filter(|(_, e)| hashes.contains(&e.hash))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for e in &ended {
            let _ = e.end.send(Some(reason));
        }
        ended.len()
    }

    /// The sessions that hold tunnels here (to look them up again).
    pub fn held(&self) -> Vec<SessionId> {
        self.lock().keys().cloned().collect()
    }

    /// Ends the tunnels of every session of `issuer` with this `sid` (or, without one, this
    /// subject): what a back-channel logout deleted in the store.
    pub fn end_matching(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) {
        let ended: Vec<Entry> = {
            let mut map = self.lock();
            let ids: Vec<SessionId> = map
                .iter()
                .filter(|(_, e)| {
                    e.issuer == issuer
                        && match (sid, sub) {
                            (Some(sid), _) => e.sid.as_deref() == Some(sid),
                            (None, Some(sub)) => e.subject == sub,
                            (None, None) => false,
                        }
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for e in ended {
            let _ = e.end.send(Some(EndReason::Backchannel));
        }
    }

    /// A refresh brought a new `sid` for session `id`: back-channel logouts for it now match.
    pub fn update_sid(&self, id: &SessionId, sid: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.sid = Some(sid.to_string());
        }
    }

    /// Sessions with open tunnels (tests).
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

// === impl TunnelTicket ===

impl TunnelTicket {
    /// Waits until the session ends (here, or its lifetime), counts the closure and says
    /// why. Cancel-safe: call it again in a loop.
    pub async fn ended(&mut self) -> EndReason {
        let reason = tokio::select! {
            r = wait(&mut self.ended) => r,
            _ = tokio::time::sleep_until(self.deadline) => EndReason::Expired,
        };
        self.tunnels
            .closed
            .with_label_values(&[reason.label()])
            .inc();
        reason
    }
}

impl Drop for TunnelTicket {
    fn drop(&mut self) {
        let mut map = self.tunnels.lock();
        if let Some(e) = map.get_mut(&self.id)
            && e.generation == self.generation
        {
            e.tunnels = e.tunnels.saturating_sub(1);
            if e.tunnels == 0 {
                map.remove(&self.id);
            }
        }
    }
}

impl std::fmt::Debug for TunnelTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTicket")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// The end sent on `rx`; pending while none was (the sender always sends before it goes).
async fn wait(rx: &mut watch::Receiver<Option<EndReason>>) -> EndReason {
    loop {
        if let Some(r) = *rx.borrow_and_update() {
            return r;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Time from `now` to `end` (zero when past).
pub fn until(end: SystemTime, now: SystemTime) -> Duration {
    end.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Token, Tokens};

    fn session(sub: &str, sid: Option<&str>) -> Session {
        let now = SystemTime::now();
        let tokens = Tokens {
            access: Token::new("a"),
            refresh: None,
            id_token: None,
        };
        let mut s = Session::new("corp", sub, tokens, now, now, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        s.sid = sid.map(str::to_string);
        s
    }

    fn value(t: &Tunnels, reason: &str) -> u64 {
        t.closed.with_label_values(&[reason]).get()
    }

    #[tokio::test]
    async fn an_ended_session_ends_its_tickets_and_leaves() {
        let t = Arc::new(Tunnels::new(
            &Metrics::try_new().unwrap_or_else(|e| panic!("{e}")),
        ));
        let a = session("alice", Some("sid-a"));
        let b = session("bob", None);
        let long = Duration::from_secs(3600);
        let mut a1 = t.register(&a, long);
        let mut a2 = t.register(&a, long);
        let b1 = t.register(&b, long);
        assert_eq!(t.sessions(), 2);
        t.end(&a.id, EndReason::SignOut);
        assert_eq!(a1.ended().await, EndReason::SignOut);
        assert_eq!(a2.ended().await, EndReason::SignOut);
        assert_eq!(value(&t, "sign_out"), 2);
        assert_eq!(t.sessions(), 1);
        // A later ticket of the same id is a new entry; the old tickets leave it alone.
        let a3 = t.register(&a, long);
        drop(a1);
        drop(a2);
        assert_eq!(t.sessions(), 2);
        drop(a3);
        drop(b1);
        assert_eq!(t.sessions(), 0, "entries leave with their last tunnel");
    }

    #[tokio::test]
    async fn back_channel_matches_issuer_and_sid_or_sub() {
        let t = Arc::new(Tunnels::new(
            &Metrics::try_new().unwrap_or_else(|e| panic!("{e}")),
        ));
        let long = Duration::from_secs(3600);
        let a = session("alice", None);
        let mut other = session("alice", Some("sid-x"));
        other.issuer = "partner".into();
        let mut ta = t.register(&a, long);
        let _to = t.register(&other, long);
        t.end_matching("corp", Some("sid-x"), None);
        assert_eq!(
            t.sessions(),
            2,
            "no sid yet; another issuer's sid-x is not ours"
        );
        t.update_sid(&a.id, "sid-x");
        t.end_matching("corp", Some("sid-x"), None);
        assert_eq!(ta.ended().await, EndReason::Backchannel);
        assert_eq!(t.sessions(), 1);
        t.end_matching("partner", None, Some("alice"));
        assert_eq!(t.sessions(), 0);
    }

    #[tokio::test]
    async fn an_announcement_ends_the_tunnels_of_its_hashes_only() {
        let t = Arc::new(Tunnels::new(
            &Metrics::try_new().unwrap_or_else(|e| panic!("{e}")),
        ));
        let long = Duration::from_secs(3600);
        let (a, b) = (session("alice", None), session("bob", None));
        let mut ta = t.register(&a, long);
        let _tb = t.register(&b, long);
        assert_eq!(t.end_hashed(&["unknown".into()], EndReason::Revoked), 0);
        assert_eq!(t.end_hashed(&[a.id.hashed()], EndReason::Revoked), 1);
        assert_eq!(ta.ended().await, EndReason::Revoked);
        assert_eq!(value(&t, "revoked"), 1);
        assert_eq!(t.held(), vec![b.id.clone()]);
    }

    #[tokio::test]
    async fn the_lifetime_ends_a_ticket() {
        let t = Arc::new(Tunnels::new(
            &Metrics::try_new().unwrap_or_else(|e| panic!("{e}")),
        ));
        let mut a = t.register(&session("alice", None), Duration::from_millis(20));
        let r = tokio::time::timeout(Duration::from_secs(10), a.ended()).await;
        assert_eq!(r.ok(), Some(EndReason::Expired));
        assert_eq!(value(&t, "expired"), 1);
    }
}
