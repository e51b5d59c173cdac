//! The background refresh of a session's access token.
//!
//! - One refresh per session at a time in this replica ([`Refresher`]: requests that find one
//!   running join it), and one across replicas: the store's lock (Redis `SET NX PX` with a
//!   random token, released only by its holder). The holder reads the record past every cache
//!   and refreshes only if its tokens are still the ones the request saw, so a rotating
//!   refresh token is redeemed exactly once; a replica that finds the lock held waits for it
//!   and then reads the winner's result.
//! - The token endpoint is called through the issuer's `IdpClient` (timeouts, retries with
//!   jitter, `Retry-After`, breaker) with the refresh-token grant and no `scope`.
//! - A transient failure keeps the session and schedules the next attempt after a growing,
//!   jittered delay (or the IdP's `Retry-After`): one refresh per session per step, never
//!   one per request. A definitive one (`invalid_grant`, an invalid new ID token) deletes the
//!   session.
//! - The refreshed record is written back only if the session still exists (a logout on
//!   another replica meanwhile stays a logout).
//!
//! Security notes: a new ID token must validate (signature, `iss`, `aud`, `azp`, `exp`) and
//! keep the session's `sub`; otherwise the session ends. Tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Browser, IssuerClient};
use crate::authn::oidc::TokenResponse;
use crate::authn::oidc::id_token::{Expected, validate_id_token};
use crate::session::{Claims, Session, SessionId, Token};

/// Where a session is in its access token's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before the refresh point.
    Fresh,
    /// Past `refresh_fraction` of the lifetime, not expired.
    Due,
    /// Expired.
    Expired,
}

/// How one refresh run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// New tokens are stored.
    Refreshed,
    /// Another task or replica had refreshed already.
    AlreadyDone,
    /// The session is gone (deleted meanwhile, or by a definitive failure).
    Gone,
    /// The IdP (or the store) failed transiently; try again later.
    Transient(Option<Duration>),
    /// The lock stayed held by someone else.
    Busy,
}

/// Per-session refresh state in this replica.
#[derive(Default)]
pub struct Refresher {
    states: Mutex<HashMap<SessionId, State>>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    failures: u32,
    next_attempt: Option<Instant>,
}

#[derive(Clone)]
struct Running {
    started: Instant,
    /// `Some(ok)` when it ended.
    done: watch::Receiver<Option<bool>>,
    failed_before: bool,
}

/// First delay before a failed refresh is tried again (then doubling).
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between refresh attempts of one session.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Entries kept before old ones are pruned.
const PRUNE_AT: usize = 10_000;

/// How long a replica waits for a lock another one holds.
const LOCK_WAIT: Duration = Duration::from_millis(2000);
const LOCK_POLL: Duration = Duration::from_millis(25);

// === impl Refresher ===

impl Refresher {
    /// Starts a refresh of `session` unless one is running or its next attempt is not due.
    fn begin(
        &self,
        browser: &Arc<Browser>,
        slot: usize,
        session: &Arc<Session>,
    ) -> Option<Running> {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if states.len() > PRUNE_AT {
            states.retain(|_, s| s.running.is_some() || s.next_attempt.is_some_and(|t| t > now));
        }
        let st = states.entry(session.id.clone()).or_default();
        if let Some(r) = &st.running {
            return Some(r.clone());
        }
        if st.next_attempt.is_some_and(|t| t > now) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let running = Running {
            started: now,
            done: rx,
            failed_before: st.failures > 0,
        };
        st.running = Some(running.clone());
        drop(states);
        let browser = browser.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let guard = Guard {
                browser: browser.clone(),
                id: session.id.clone(),
                tx,
                ran: None,
            };
            let ran = run(&browser, slot, &session).await;
            let mut guard = guard;
            guard.ran = Some(ran);
        });
        Some(running)
    }

    /// Starts a refresh in the background (the request goes on with the current token).
    pub fn spawn(&self, browser: &Arc<Browser>, slot: usize, session: &Arc<Session>) {
        let _ = self.begin(browser, slot, session);
    }

    /// For an expired access token: starts or joins the refresh and waits for it, at most
    /// until [`super::EXPIRED_WAIT`] after it started, and not at all when its previous
    /// attempt failed (the IdP is known to be in trouble). True when the refresh ended
    /// (the store then tells how: new tokens, or no session), false when it is still running
    /// or was not started (backoff).
    pub async fn spawn_and_wait(
        &self,
        browser: &Arc<Browser>,
        slot: usize,
        session: &Arc<Session>,
    ) -> bool {
        let Some(mut running) = self.begin(browser, slot, session) else {
            return false;
        };
        if running.failed_before {
            return false;
        }
        let deadline = running.started + super::EXPIRED_WAIT;
        let wait = running.done.wait_for(Option::is_some);
        matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(_)))
    }

    fn finish(&self, id: &SessionId, ran: Option<Ran>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match ran {
            Some(Ran::Refreshed | Ran::AlreadyDone | Ran::Gone) => {
                states.remove(id);
            }
            Some(Ran::Busy) => {
                if let Some(st) = states.get_mut(id) {
                    st.running = None;
                    st.next_attempt = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            // A transient failure, or the task ended without a result (shutdown).
            Some(Ran::Transient(_)) | None => {
                if let Some(st) = states.get_mut(id) {
                    st.running = None;
                    st.failures = st.failures.saturating_add(1);
                    let retry_after = match ran {
                        Some(Ran::Transient(r)) => r,
                        _ => None,
                    };
                    let backoff = RETRY_MIN
                        .saturating_mul(1u32 << st.failures.saturating_sub(1).min(16))
                        .min(RETRY_MAX);
                    // Half fixed, half jitter: never a tight loop, never in lock-step.
                    let delay = backoff / 2 + backoff.mul_f64(rand::random::<f64>() / 2.0);
                    let delay = delay.max(retry_after.unwrap_or(Duration::ZERO));
                    st.next_attempt = Some(Instant::now() + delay);
                }
            }
        }
    }
}

/// Reports the end of a run (also when the task is dropped) and updates the state.
struct Guard {
    browser: Arc<Browser>,
    id: SessionId,
    tx: watch::Sender<Option<bool>>,
    ran: Option<Ran>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.browser.refresher.finish(&self.id, self.ran);
        let ok = matches!(self.ran, Some(Ran::Refreshed | Ran::AlreadyDone));
        let _ = self.tx.send(Some(ok));
    }
}

/// How long the cross-replica lock is held at most: one refresh with all its retries.
fn lock_ttl(browser: &Browser, slot: usize) -> Duration {
    browser
        .auth
        .issuer_config(slot)
        .map(|c| {
            let attempts = c.idp.retries.saturating_add(1);
            c.idp.timeout.saturating_mul(attempts)
                + c.idp
                    .backoff
                    .ceiling(c.idp.retries)
                    .saturating_mul(c.idp.retries)
        })
        .unwrap_or(Duration::from_secs(30))
        .clamp(Duration::from_secs(5), Duration::from_secs(120))
}

/// One refresh: lock, read past caches, call the token endpoint, store, unlock.
async fn run(browser: &Arc<Browser>, slot: usize, seen: &Session) -> Ran {
    let store = &browser.store;
    let ttl = lock_ttl(browser, slot);
    let wait_until = Instant::now() + LOCK_WAIT;
    let token = loop {
        match store.try_lock(&seen.id, ttl).await {
            Ok(Some(t)) => break t,
            Ok(None) if Instant::now() < wait_until => tokio::time::sleep(LOCK_POLL).await,
            Ok(None) => return Ran::Busy,
            Err(_) => return Ran::Transient(None),
        }
    };
    let ran = locked(browser, slot, seen).await;
    let _ = store.unlock(&seen.id, &token).await;
    ran
}

/// The refresh itself, under the lock: the session as stored now, the token endpoint, the
/// refreshed session, stored.
async fn locked(browser: &Arc<Browser>, slot: usize, seen: &Session) -> Ran {
    let current = match browser.store.get_fresh(&seen.id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ran::Gone,
        Err(_) => return Ran::Transient(None),
    };
    if current.tokens_at != seen.tokens_at {
        return Ran::AlreadyDone;
    }
    let Some(refresh_token) = current.tokens.refresh.clone() else {
        return Ran::Gone;
    };
    let r = Refreshing {
        browser,
        slot,
        current: &current,
    };
    let refreshed = async {
        let (client, resp) = r.call(refresh_token.expose()).await?;
        let next = r.next(&client, &resp).await?;
        Ok::<_, Ran>(r.store(&next).await)
    };
    refreshed.await.unwrap_or_else(|ran| ran)
}

/// One session's refresh, under its lock.
struct Refreshing<'a> {
    browser: &'a Arc<Browser>,
    slot: usize,
    /// The session as stored when the lock was taken.
    current: &'a Session,
}

// === impl Refreshing ===

impl Refreshing<'_> {
    fn count(&self, result: &str) {
        self.browser
            .metrics
            .session_refreshes
            .with_label_values(&[&self.current.issuer, result])
            .inc();
    }

    /// The IdP refused: the session ends here, everywhere, with its tunnels.
    async fn end(&self) -> Ran {
        self.count("definitive");
        let _ = self.browser.store.delete(&self.current.id).await;
        self.browser
            .tunnels
            .end(&self.current.id, super::EndReason::RefreshRefused);
        self.browser
            .announce(crate::session::Ended::ids(
                crate::session::admin::Cause::RefreshRefused,
                [&self.current.id],
            ))
            .await;
        Ran::Gone
    }

    /// The token endpoint's answer to `refresh_token`.
    async fn call(&self, refresh_token: &str) -> Result<(Arc<IssuerClient>, TokenResponse), Ran> {
        let issuer = &self.current.issuer;
        let client = self.browser.client(self.slot).map_err(|e| {
            tracing::warn!(issuer = %issuer, error = %e, "session refresh: no token endpoint");
            self.count("transient");
            Ran::Transient(None)
        })?;
        match client.tokens.refresh(refresh_token).await {
            Ok(resp) => Ok((client, resp)),
            Err(e) if e.is_definitive() => {
                tracing::info!(issuer = %issuer, error = %e, "session refresh refused: session ended");
                Err(self.end().await)
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer, error = %e, "session refresh failed; kept in grace");
                self.count("transient");
                let retry_after = match &e {
                    crate::authn::oidc::TokenError::Transient(idp) => idp.retry_after(),
                    _ => None,
                };
                Err(Ran::Transient(retry_after))
            }
        }
    }

    /// The session with the new tokens; a new ID token must be valid and of the same subject.
    async fn next(&self, client: &IssuerClient, resp: &TokenResponse) -> Result<Session, Ran> {
        let now = self.browser.clock.wall();
        let mut next = self.current.clone();
        if let Some(id_token) = &resp.id_token {
            let expected = Expected {
                client_id: client.config.client_id.as_deref().unwrap_or_default(),
                nonce: None,
                subject: Some(&self.current.subject),
            };
            let auth = &self.browser.auth;
            match validate_id_token(auth, self.slot, id_token, expected).await {
                Ok(v) => {
                    next.claims = Claims::from_map(&auth.session_claims(self.slot, v.claims));
                    if let Some(sid) = v.sid {
                        next.sid = Some(sid);
                    }
                    next.tokens.id_token = Some(Token::new(id_token.clone()));
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.current.issuer, error = %e, "refreshed ID token refused: session ended");
                    return Err(self.end().await);
                }
            }
        }
        if let Some(scope) = &resp.scope {
            next.claims
                .insert("scope".into(), serde_json::Value::String(scope.clone()));
        }
        next.tokens.access = Token::new(resp.access_token.clone());
        if let Some(r) = &resp.refresh_token {
            next.tokens.refresh = Some(Token::new(r.clone()));
        }
        next.access_expires_at = super::flow::access_expiry(resp, now);
        next.tokens_at = now;
        Ok(next)
    }

    /// Stores `next` in place of the current session (unless it ended meanwhile).
    async fn store(&self, next: &Session) -> Ran {
        match self.browser.store.replace(next).await {
            Ok(true) => {
                if let Some(sid) = next
                    .sid
                    .as_deref()
                    .filter(|s| self.current.sid.as_deref() != Some(*s))
                {
                    self.browser.tunnels.update_sid(&next.id, sid);
                }
                self.count("ok");
                Ran::Refreshed
            }
            Ok(false) => {
                self.count("ok");
                Ran::Gone
            }
            Err(e) => {
                // The IdP may have rotated the refresh token: the session cannot be refreshed
                // again; it lives until its access token (plus grace) ends.
                tracing::warn!(issuer = %self.current.issuer, error = %e, "refreshed session could not be stored");
                self.count("transient");
                Ran::Transient(None)
            }
        }
    }
}
