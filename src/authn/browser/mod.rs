//! Browser sessions on the request path: the session cookie, the session lookup, the sign-in
//! redirect, Portcullis's own paths (callback, sign-out, back-channel logout) and the early
//! background refresh.
//!
//! One [`Browser`] lives for the whole process (sessions survive configuration reloads); it
//! reads each issuer's current settings from the [`Authenticator`] when it needs them, so a
//! reload's new `client_id`, scopes or secret apply to the next sign-in. `sessions.*` itself
//! needs a restart. Which return targets are allowed (`auth.allowed_redirect_domains`) comes
//! with each call from the running `Proxy`, so a reload applies it too.
//!
//! The session decision for a request (see `lookup`):
//! - no cookie, a cookie that does not open under our keys, an unknown, idle or ended session,
//!   or a session of another issuer than the route's: no session (302 to sign in for a browser
//!   navigation, 401 otherwise: `oidc::navigation`);
//! - the access token is past `refresh_fraction` of its lifetime: a refresh starts in the
//!   background (one per session in this replica, one across replicas by the store's lock) and
//!   the request goes on at once with the current token;
//! - the access token has expired: the request waits for the running refresh at most
//!   [`EXPIRED_WAIT`] after it started; then, while the refresh fails transiently and until
//!   `outage_grace` past the expiry, the request is served "degraded" (marked upstream by
//!   `degraded_header`, counted); past the grace it is no session;
//! - the store is unreachable and the session is not in the in-process cache: 503.
//!
//! Security notes: the cookie holds only a random 256-bit session id, sealed (AES-256-GCM,
//! bound to the cookie's name); tokens never leave the store. A refused cookie is no session,
//! never an error that tells an attacker why. Identity headers come only from the session's
//! claims, which came from a validated ID token.

mod cookies;
mod error;
mod flow;
pub mod pages;
mod refresh;
mod sign_out;
pub mod tunnels;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Response, request};

use super::oidc::{ProviderMetadata, RedirectPolicy, TokenClient};
use super::{Authenticator, Identity};
use crate::body::ProxyBody;
use crate::clock::SharedClock;
use crate::config::{AuthPaths, Config, IssuerConfig, SessionsConfig};
use crate::idp::IdpClient;
use crate::metrics::Metrics;
use crate::session::admin::{Cause, Ended, Notice};
use crate::session::{Purpose, Sealer, Session, SessionId, SharedStore, StoreError};

pub use cookies::CookieJar;
pub use error::{LogoutError, OwnPathError, SignInError, SignInFailure};
pub use flow::OwnPath;
pub use tunnels::{EndReason, TunnelTicket, Tunnels};

/// Longest a request on a session whose access token has expired waits for the refresh it
/// started (counted from the refresh's start), before it is served in grace.
pub const EXPIRED_WAIT: Duration = Duration::from_millis(1000);

/// Last-seen is written back at most this often per session.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Lifetime of a login cookie (and of the record of its used state).
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Login cookies kept at once; starting one more clears the oldest.
pub const MAX_PENDING_LOGINS: usize = 3;

/// Login cookies of a request that starting a sign-in looks at (opens) at most.
pub const MAX_LOGIN_COOKIES_OPENED: usize = 16;

/// Login cookies that starting a sign-in clears at most (one `Set-Cookie` each).
pub const MAX_LOGIN_COOKIES_CLEARED: usize = 8;

/// Where a request came from: scheme and authority, for URLs that point back here.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The canonical `Host` (with a port when one was given): the request's own value (a
    /// reference count, not a copy; see [`Origin::of`]).
    pub authority: http::HeaderValue,
}

impl Origin {
    /// The origin of a request to `target` over `scheme`.
    pub fn of(scheme: &'static str, target: &crate::routing::target::Target) -> Self {
        let authority = match target.authority() {
            Some(a) => a.clone(),
            None => http::HeaderValue::from_str(target.host())
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
        };
        Self { scheme, authority }
    }

    /// The authority as text (a canonical host is visible ASCII).
    pub fn authority(&self) -> &str {
        self.authority.to_str().unwrap_or("")
    }
}

/// A session that may serve the request.
pub struct Found {
    /// The session as stored.
    pub session: Arc<Session>,
    /// Who it is.
    pub identity: Arc<Identity>,
    /// Served in outage grace (the access token has expired, the refresh fails transiently).
    pub degraded: bool,
}

/// What the session lookup found.
pub enum Lookup {
    /// A live session.
    Found(Found),
    /// None usable: sign in.
    Missing,
    /// The store could not answer.
    Unavailable(StoreError),
}

/// The code-flow client of one issuer, built from its discovery document.
struct IssuerClient {
    /// The settings it was built from (rebuilt when a reload replaces them).
    config: Arc<IssuerConfig>,
    /// The discovery document it was built from (rebuilt when it changes).
    discovery: Arc<serde_json::Value>,
    metadata: ProviderMetadata,
    tokens: TokenClient,
}

/// Why an issuer's code-flow client is not available.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("the issuer is not configured")]
    Unknown,
    #[error("the issuer has no client_id")]
    NoClientId,
    #[error("the issuer's discovery document has not been fetched yet")]
    NoDiscovery,
    #[error(transparent)]
    Metadata(#[from] super::oidc::MetadataError),
    #[error("TLS for the issuer: {0}")]
    Tls(#[from] crate::tls_client::TlsClientError),
}

/// Browser sessions for every session route.
pub struct Browser {
    auth: Arc<Authenticator>,
    store: SharedStore,
    sealer: Arc<Sealer>,
    settings: SessionsConfig,
    jar: CookieJar,
    metrics: Metrics,
    clock: SharedClock,
    clients: Mutex<HashMap<usize, Arc<IssuerClient>>>,
    refresher: refresh::Refresher,
    /// Identities built from sessions, by session id and the tokens' time (a refresh makes
    /// a new one); saves rebuilding one per request.
    identities: moka::sync::Cache<SessionId, (SystemTime, Arc<Identity>)>,
    /// Sessions whose last-seen write-back was started in the last minute: one write per
    /// session per minute, however many requests find it due at once.
    touched: moka::sync::Cache<SessionId, SystemTime>,
    /// Upgraded connections by session, closed when their session ends here.
    tunnels: Arc<Tunnels>,
}

// === impl Browser ===

impl Browser {
    /// Builds the session store (Redis connects lazily) and the cookie sealer.
    pub async fn new(
        config: &Config,
        auth: Arc<Authenticator>,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        let (store, sealer) =
            crate::session::build(&config.sessions, &metrics, clock.clone()).await?;
        for ic in &config.issuers {
            if ic.client_id.is_some() {
                metrics.init_session_issuer(&ic.name);
            }
        }
        Ok(Self::with_store(
            config, auth, store, sealer, metrics, clock,
        ))
    }

    /// A browser over an existing store and sealer (tests share one store between two).
    pub fn with_store(
        config: &Config,
        auth: Arc<Authenticator>,
        store: SharedStore,
        sealer: Arc<Sealer>,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Self {
        let tunnels = Arc::new(Tunnels::new(&metrics));
        follow_notices(&store, &tunnels);
        Self {
            jar: CookieJar::from_config(&config.sessions.cookie),
            settings: config.sessions.clone(),
            refresher: refresh::Refresher::default(),
            identities: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(300))
                .build(),
            touched: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TOUCH_INTERVAL)
                .build(),
            clients: Mutex::new(HashMap::new()),
            tunnels,
            auth,
            store,
            sealer,
            metrics,
            clock,
        }
    }

    /// The store (tests and the demo read it).
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The tunnels of this replica's sessions.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// Registers an upgraded connection opened with `session`: it closes when the session
    /// ends (here, or announced by another replica) or its lifetime does (`tunnels`).
    ///
    /// The session was looked up before the upstream answered; had it ended in between (its
    /// end announced before this tunnel was registered to hear of it), the tunnel would stay
    /// open. So the session is looked up again once registered, and the tunnel ends if gone.
    pub fn tunnel_ticket(&self, session: &Session) -> TunnelTicket {
        let left = tunnels::until(session.expires_at, self.clock.wall());
        let ticket = self.tunnels.register(session, left);
        let (store, tunnels, id) = (self.store.clone(), self.tunnels.clone(), session.id.clone());
        tokio::spawn(async move {
            if let Ok(None) = store.get(&id).await {
                tunnels.end(&id, EndReason::Revoked);
            }
        });
        ticket
    }

    /// Tells the other replicas that sessions ended here (Redis store: pub/sub), so they drop
    /// their cached copies and close their tunnels.
    pub async fn announce(&self, ended: Ended) {
        if !ended.hashes.is_empty() {
            self.store.announce(&ended).await;
        }
    }

    /// Ends sessions for an operator: the store, this replica's tunnels, the other replicas.
    /// Returns the hashes of the sessions ended.
    pub async fn revoke(&self, target: &Revoke) -> Result<Vec<String>, StoreError> {
        let hashes = match target {
            Revoke::Id(h) => {
                if self.store.delete_hashed(h).await? {
                    vec![h.clone()]
                } else {
                    Vec::new()
                }
            }
            Revoke::Sid { issuer, sid } => self.store.delete_by_sid(issuer, sid).await?,
            Revoke::Sub { issuer, sub } => self.store.delete_by_sub(issuer, sub).await?,
        };
        if let Revoke::Id(h) = target {
            self.tunnels.end_hashed(std::slice::from_ref(h), EndReason::Revoked);
        } else {
            self.tunnels.end_hashed(&hashes, EndReason::Revoked);
        }
        self.announce(Ended {
            cause: Cause::Revoked,
            hashes: hashes.clone(),
        })
        .await;
        Ok(hashes)
    }

    /// The session cookie's settings.
    pub fn jar(&self) -> &CookieJar {
        &self.jar
    }

    /// The browser-flow paths.
    pub fn paths(&self) -> &AuthPaths {
        &self.settings.paths
    }

    /// The header that marks requests served in grace.
    pub fn degraded_header(&self) -> Option<&http::HeaderName> {
        self.settings.degraded_header.as_ref()
    }

    /// Removes Portcullis's cookies from a request about to go upstream.
    pub fn strip_cookies(&self, headers: &mut HeaderMap) {
        self.jar.strip(headers);
    }

    /// The session id in the request's session cookie, if one opens under our keys.
    fn session_id(&self, headers: &HeaderMap) -> Option<SessionId> {
        cookies::values(headers, &self.jar.name).find_map(|v| {
            let bytes = self
                .sealer
                .open_text(Purpose::SessionCookie, self.jar.name.as_bytes(), v)
                .ok()?;
            SessionId::from_bytes(&bytes)
        })
    }

    /// `Set-Cookie` for a new session.
    fn session_cookie(&self, id: &SessionId) -> Option<HeaderValue> {
        let value = self
            .sealer
            .seal_text(
                Purpose::SessionCookie,
                self.jar.name.as_bytes(),
                id.as_str().as_bytes(),
            )
            .ok()?;
        self.jar.set(
            &self.jar.name,
            &value,
            "/",
            self.settings.lifetime.as_secs(),
        )
    }

    /// The session for a request on a route of the issuer in `slot`, named `issuer`.
    pub async fn lookup(
        self: &Arc<Self>,
        slot: usize,
        issuer: &str,
        headers: &HeaderMap,
        route: &str,
    ) -> Lookup {
        let Some(id) = self.session_id(headers) else {
            return Lookup::Missing;
        };
        let session = match self.store.get(&id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Lookup::Missing,
            Err(e) => return Lookup::Unavailable(e),
        };
        if session.issuer != issuer {
            return Lookup::Missing;
        }
        let now = self.clock.wall();
        let mut session = session;
        let mut degraded = false;
        if let Some(step) = self.refresh_step(slot, &session, now) {
            match step {
                refresh::Step::Fresh => {}
                refresh::Step::Due => {
                    self.refresher.spawn(self, slot, &session);
                }
                refresh::Step::Expired => {
                    let ended = self.refresher.spawn_and_wait(self, slot, &session).await;
                    if ended {
                        // New tokens, or a definitive failure that deleted the session.
                        match self.store.get(&id).await {
                            Ok(Some(s)) => session = s,
                            Ok(None) => return Lookup::Missing,
                            Err(e) => return Lookup::Unavailable(e),
                        }
                    }
                    let now = self.clock.wall();
                    if session.access_expires_at <= now {
                        let grace_end = session
                            .access_expires_at
                            .checked_add(self.settings.outage_grace)
                            .unwrap_or(session.access_expires_at);
                        if now >= grace_end || session.tokens.refresh.is_none() {
                            return Lookup::Missing;
                        }
                        degraded = true;
                        self.metrics
                            .session_grace_requests
                            .with_label_values(&[route])
                            .inc();
                    }
                }
            }
        }
        self.touch(&session, now);
        let Some(identity) = self.identity(slot, &session) else {
            return Lookup::Missing;
        };
        Lookup::Found(Found {
            session,
            identity,
            degraded,
        })
    }

    /// Where the session is in its access token's life (`None`: nothing to decide).
    fn refresh_step(&self, _slot: usize, s: &Session, now: SystemTime) -> Option<refresh::Step> {
        if s.access_expires_at <= now {
            return Some(refresh::Step::Expired);
        }
        s.tokens.refresh.as_ref()?;
        let life = s
            .access_expires_at
            .duration_since(s.tokens_at)
            .unwrap_or(Duration::ZERO);
        let due = s
            .tokens_at
            .checked_add(life.mul_f64(self.settings.refresh_fraction))
            .unwrap_or(s.access_expires_at);
        Some(if now >= due {
            refresh::Step::Due
        } else {
            refresh::Step::Fresh
        })
    }

    /// Writes last-seen back in the background when it is due (the store checks again).
    fn touch(&self, session: &Arc<Session>, now: SystemTime) {
        if !session.touch_due(now, TOUCH_INTERVAL) {
            return;
        }
        let started_recently = self
            .touched
            .get(&session.id)
            .is_some_and(|at| now.duration_since(at).is_ok_and(|d| d < TOUCH_INTERVAL));
        if !started_recently {
            self.touched.insert(session.id.clone(), now);
            let store = self.store.clone();
            let session = session.clone();
            tokio::spawn(async move {
                let _ = store.touch(&session).await;
            });
        }
    }

    /// The identity of a session, cached per session id and tokens.
    fn identity(&self, slot: usize, session: &Session) -> Option<Arc<Identity>> {
        if let Some((at, id)) = self.identities.get(&session.id)
            && at == session.tokens_at
        {
            return Some(id);
        }
        let identity = Arc::new(self.auth.session_identity(slot, &session.claims.to_map())?);
        self.identities
            .insert(session.id.clone(), (session.tokens_at, identity.clone()));
        Some(identity)
    }

    /// The code-flow client of the issuer in `slot`, built (again) when its settings or
    /// discovery document changed.
    fn client(&self, slot: usize) -> Result<Arc<IssuerClient>, ClientError> {
        let config = self.auth.issuer_config(slot).ok_or(ClientError::Unknown)?;
        let keys = self.auth.issuer_keys(slot).ok_or(ClientError::Unknown)?;
        let discovery = keys.discovery().ok_or(ClientError::NoDiscovery)?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&slot)
            && Arc::ptr_eq(&c.config, &config)
            && Arc::ptr_eq(&c.discovery, &discovery)
        {
            return Ok(c.clone());
        }
        let client_id = config.client_id.as_deref().ok_or(ClientError::NoClientId)?;
        let metadata = ProviderMetadata::from_json(&discovery, &config.issuer)?;
        // Reuse the running client (and its breaker) when only the document changed.
        let idp = match clients.get(&slot) {
            Some(c) if Arc::ptr_eq(&c.config, &config) => c.tokens.idp().clone(),
            _ => Arc::new(IdpClient::new(
                &config.name,
                crate::tls_client::config(config.ca_file.as_deref())?,
                config.idp.clone(),
                self.clock.clone(),
                self.metrics.clone(),
            )),
        };
        let tokens = TokenClient::new(
            &config.name,
            idp,
            metadata.token_endpoint.clone(),
            client_id,
            config
                .client_secret
                .as_ref()
                .and_then(|s| std::str::from_utf8(s.expose()).ok()),
            config.token_endpoint_auth,
            self.metrics.clone(),
        );
        let client = Arc::new(IssuerClient {
            config,
            discovery,
            metadata,
            tokens,
        });
        clients.insert(slot, client.clone());
        Ok(client)
    }

    /// The sign-in redirect for a browser navigation on a route of the issuer in `slot`;
    /// `redirects` (the running configuration's, so a reload applies) decides which return
    /// targets are kept; `max_age` asks the IdP for an authentication at most that old.
    pub fn start_login(
        &self,
        slot: usize,
        head: &request::Parts,
        return_to: &str,
        origin: &Origin,
        redirects: &RedirectPolicy,
        max_age: Option<Duration>,
    ) -> Result<Response<ProxyBody>, SignInError> {
        flow::start_login(self, slot, head, return_to, origin, redirects, max_age)
    }

    /// Whether `session`'s sign-in is older than `max` (a route's `max_auth_age`).
    pub fn signed_in_before(&self, session: &Session, max: Duration) -> bool {
        self.clock
            .wall()
            .duration_since(session.signed_in_at())
            .is_ok_and(|age| age > max)
    }

    /// Serves one of Portcullis's own paths; `redirects` decides where the callback and
    /// sign-out may send the browser.
    pub async fn serve_own(
        &self,
        path: OwnPath,
        head: &request::Parts,
        body: bytes::Bytes,
        origin: &Origin,
        redirects: &RedirectPolicy,
    ) -> Result<Response<ProxyBody>, OwnPathError> {
        flow::serve(self, path, head, body, origin, redirects).await
    }

    /// Which own path `path` is, if any.
    pub fn own_path(&self, path: &str) -> Option<OwnPath> {
        let p = &self.settings.paths;
        if path == p.callback {
            Some(OwnPath::Callback)
        } else if path == p.sign_out {
            Some(OwnPath::SignOut)
        } else if path == p.backchannel_logout {
            Some(OwnPath::BackchannelLogout)
        } else {
            None
        }
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("store", &self.store)
            .field("cookie", &self.jar.name)
            .finish_non_exhaustive()
    }
}

/// What an operator revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// One session, by the hash of its id (as listed).
    Id(String),
    /// Every session of `issuer` with this `sid`.
    Sid {
        /// The issuer's name.
        issuer: String,
        /// The `sid`.
        sid: String,
    },
    /// Every session of `issuer` with this subject.
    Sub {
        /// The issuer's name.
        issuer: String,
        /// The subject.
        sub: String,
    },
}

/// Applies what other replicas announce to this replica's tunnels: sessions that ended there
/// close their tunnels here; after the channel was down, every session with tunnels is looked
/// up again. The task ends with the store.
fn follow_notices(store: &SharedStore, tunnels: &Arc<Tunnels>) {
    let Some(mut rx) = store.notices() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (store, tunnels) = (Arc::downgrade(store), Arc::downgrade(tunnels));
    runtime.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let notice = match rx.recv().await {
                Ok(n) => n,
                Err(RecvError::Lagged(_)) => Notice::Resync,
                Err(RecvError::Closed) => return,
            };
            let (Some(store), Some(tunnels)) = (store.upgrade(), tunnels.upgrade()) else {
                return;
            };
            match notice {
                Notice::Ended(e) => {
                    tunnels.end_hashed(&e.hashes, e.cause.into());
                }
                Notice::Resync => {
                    for id in tunnels.held() {
                        if let Ok(None) = store.get_fresh(&id).await {
                            tunnels.end(&id, EndReason::Revoked);
                        }
                    }
                }
            }
        }
    });
}

/// Unix seconds of `t` (0 before the epoch).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
