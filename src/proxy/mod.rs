//! The request handler: the steps of one proxied request, in order.
//!
//! 1. refuse CONNECT in every form (405) and ambiguous framing (400); check the method (an
//!    upper-case token), Host and the path, put them into canonical form, or 400
//!    (`routing::target`). On HTTP/1 a refused CONNECT or method spelling also closes the
//!    connection (`Connection: close`): nothing after it on that connection is read as a
//!    request
//!    Portcullis's own paths are answered here, on any host, never routed: the assertion's
//!    JWKS, external authorization's sign-in start, the browser-session paths
//! 2. route on host, path and method (404)
//! 3. sanitize headers (every route): hop-by-hop out (a `Connection` naming a protected
//!    header is ignored), then the client's copies of owned identity headers and untrusted
//!    forwarding headers out, in every spelling
//! 4. authenticate and authorize (`authenticate::AuthnStep`): forward as an identity, or answer here
//!    (401 / 403, or a response of the step's own such as a sign-in redirect)
//! 5. rewrite headers (`X-Forwarded-*` in, Host kept or rewritten), then set identity headers
//!    last, so nothing the client sent can remove or replace them
//! 6. forward through the route's upstream (502 / 504), passing upgrades through; the body
//!    goes through `body_timeout` (408 when the client stops sending it)
//! 7. observe: metrics and one access-log line when the response body ends
//!
//! The handler is generic over the request body (`ClientBody`): hyper's `Incoming` when
//! serving, in-memory bodies in service tests that call [`Proxy::handle`] without sockets.

mod activity;
pub mod authenticate;
pub mod authorize;
mod body_timeout;
pub mod external;
pub mod grpc;
mod identity;
mod observe;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version, request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::authn::Authenticator;
use crate::authn::browser::{Browser, Origin};
use crate::authn::oidc::RedirectPolicy;
use crate::body::ProxyBody;
use crate::config::{Config, PathNormalization, RewriteHost};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::request_id;
use crate::routing::target::{Target, TargetError, canonicalize};
use crate::routing::{Miss, Route, Router};
use crate::upstream::headers::identity::IdentityHeaders;
use crate::upstream::headers::{remove_hop_by_hop, set_forwarded, wants_upgrade};
use crate::upstream::{BuildError, ClientBody, Outgoing, Upstream, UpstreamBody, UpstreamUpgrade};

pub use activity::Activity;
pub use authenticate::{AuthnStep, Forwarding, Outcome};
pub use authorize::RequestView;
use body_timeout::{BodyTimeout, BodyTimer, TimedBody};
pub use observe::{Observed, ObservedBody};

/// Where a request's upgraded connections go once the upstream switched protocols: the
/// listener joins the two into a tunnel that keeps the client connection's slot, idle
/// timeout and close signal (`listener::upgrade`). A trait, so the handler does not depend on
/// the listener that serves it.
pub trait Tunnels: Send + Sync {
    /// Joins `client` and `upstream` once both are upgraded (bytes the upstream sent past its
    /// 101 go to the client first); `session` ends the tunnel when its session ends.
    fn spawn(
        &self,
        client: OnUpgrade,
        upstream: UpstreamUpgrade,
        session: Option<crate::authn::browser::TunnelTicket>,
    );
}

/// Everything a request needs, shared by all connections. `B` is the request body type.
pub struct Proxy<B = Incoming> {
    router: Router,
    /// Request bodies reach the upstream through the body-read timeout.
    upstreams: Vec<Upstream<TimedBody<B>>>,
    /// The request series, resolved once (see `observe::Series`).
    series: Arc<observe::Series>,
    trust_forwarded: bool,
    access_log: bool,
    authn: AuthnStep,
    identity: IdentityHeaders,
    realm: String,
    path_normalization: PathNormalization,
    /// Browser sessions, when some route uses them (own paths, cookie stripping).
    sessions: Option<Arc<Browser>>,
    session_routes: bool,
    /// `server.body_read_timeout`.
    body_read_timeout: std::time::Duration,
    /// `portcullis_request_body_timeouts_total`.
    body_timeouts: prometheus::IntCounterVec,
    /// `external_auth.*`: the decision paths and who may call them.
    external: crate::config::ExternalAuthConfig,
    /// `portcullis_external_auth_decisions_total`.
    external_decisions: prometheus::IntCounterVec,
    /// `portcullis_external_auth_decision_duration_seconds`.
    external_decision_seconds: prometheus::HistogramVec,
    /// Signs the identity assertion (`auth.assertion`), when configured.
    assertions: Option<Arc<crate::assertion::Assertions>>,
    /// The profile's access-token headers (`auth.header_profile`).
    access_token_headers: Vec<http::HeaderName>,
}

/// The `route` label of Portcullis's own paths (callback, sign-out, back-channel logout).
pub const OWN_ROUTE: &str = "portcullis";

/// `Allow` on the 405 for CONNECT: the methods an ordinary route serves. CONNECT is refused
/// before routing (its authority-form target names no route), so this is not any one route's
/// list.
const CONNECT_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Largest request body an own path reads (a back-channel logout token).
const OWN_BODY_LIMIT: usize = 64 * 1024;

/// What the handler knows about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Shared with the connection task, for the idle timeout.
    pub activity: Arc<Activity>,
    /// Where an upgraded tunnel gets its connection slot, idle timeout and close signal
    /// (`None` off a real connection, as in service tests: no tunnel is joined).
    pub upgrades: Option<Arc<dyn Tunnels>>,
    /// The request worker serving the connection (its upstream connection pools).
    pub worker: usize,
    /// The peer's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: HeaderValue,
}

/// One request's context: what the steps learned, for the response and the record.
struct RequestCtx<'a> {
    conn: &'a ConnInfo,
    obs: Observed,
    json_errors: bool,
    /// `X-Request-Id`: the trusted caller's, or generated.
    id: HeaderValue,
}

// === impl Proxy ===

impl<B: ClientBody> Proxy<B> {
    /// Builds routes and upstream clients. `auth` is shared across reloads (it holds the keys);
    /// routes name issuers by their index in `config.issuers`, mapped here to `auth`'s.
    pub fn try_new(
        config: &Config,
        metrics: Metrics,
        auth: Arc<Authenticator>,
    ) -> Result<Self, BuildError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::try_new(u.clone(), &metrics, config.server.workers))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = config.routes.clone();
        for r in &mut routes {
            if let Some(i) = r.issuer {
                let name = config
                    .issuers
                    .get(i)
                    .map(|ic| ic.name.as_str())
                    .unwrap_or_default();
                r.issuer = Some(auth.issuer_index(name));
            }
        }
        for r in &routes {
            if matches!(
                r.auth,
                crate::config::AuthMode::Session | crate::config::AuthMode::Either
            ) {
                metrics.session_grace_requests.with_label_values(&[&r.name]);
            }
        }
        for name in routes.iter().map(|r| r.name.as_str()).chain([OWN_ROUTE]) {
            metrics.request_body_timeouts.with_label_values(&[name]);
        }
        // Route issuers are the authenticator's slots, stable across reloads.
        let issuer_names = auth.slot_names();
        Ok(Self {
            series: observe::Series::new(&metrics, routes.iter().map(|r| r.name.as_str())),
            router: Router::new(&routes),
            upstreams,
            trust_forwarded: config.server.trust_forwarded_headers,
            access_log: config.log.access,
            identity: IdentityHeaders::from_config(config),
            realm: config.auth.realm.clone(),
            authn: AuthnStep::new(
                auth,
                metrics.clone(),
                issuer_names,
                routes.iter().map(|r| (r.name.as_str(), r.issuer)),
            )
            .with_redirects(RedirectPolicy::from_config(&config.auth))
            .with_rules(routes.iter().map(|r| (r.name.as_str(), &r.policy))),
            path_normalization: config.server.path_normalization,
            sessions: None,
            session_routes: config.routes.iter().any(|r| {
                matches!(
                    r.auth,
                    crate::config::AuthMode::Session | crate::config::AuthMode::Either
                )
            }),
            body_read_timeout: config.server.body_read_timeout,
            body_timeouts: metrics.request_body_timeouts.clone(),
            external: config.external_auth.clone(),
            external_decisions: metrics.external_auth_decisions.clone(),
            external_decision_seconds: metrics.external_auth_decision_duration.clone(),
            assertions: None,
            access_token_headers: config.auth.profile.access_token.clone(),
        })
    }

    /// The handler for `config` with the shared authenticator and browser sessions, and the
    /// assertion keys loaded for it (`assertion::Keys::load`): the one way it is built, at
    /// start and on every reload.
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        auth: &Arc<Authenticator>,
        browser: &Arc<Browser>,
        keys: Option<Arc<crate::assertion::KeySet>>,
    ) -> Result<Self, BuildError> {
        let assertions = keys
            .zip(config.auth.assertion.as_ref())
            .map(|(k, a)| crate::assertion::Assertions::new(a, k, auth.clock(), metrics));
        Ok(Self::try_new(config, metrics.clone(), auth.clone())?
            .with_browser(Some(browser.clone()))
            .with_assertions(assertions))
    }

    /// Adds the signer of identity assertions.
    pub fn with_assertions(mut self, assertions: Option<crate::assertion::Assertions>) -> Self {
        self.assertions = assertions.map(Arc::new);
        self
    }

    /// The assertion keys this handler signs with (to publish on the admin listener).
    pub fn assertion_keys(&self) -> Option<Arc<crate::assertion::KeySet>> {
        self.assertions.as_ref().map(|a| a.keys().clone())
    }

    /// Adds browser sessions: used when some route has `auth: session` or `either`.
    pub fn with_browser(mut self, browser: Option<Arc<Browser>>) -> Self {
        let needed = self.session_routes;
        self.sessions = browser.clone().filter(|_| needed);
        self.authn = self.authn.with_browser(browser);
        self
    }

    /// Handles one request; never fails (errors become responses).
    pub async fn handle(&self, req: Request<B>, conn: &ConnInfo) -> Response<ObservedBody> {
        let id = request_id::for_request(req.headers().get(request_id::HEADER), self.trust_forwarded);
        let mut obs = Observed::start(
            &self.series,
            conn,
            &req,
            self.access_log,
            crate::clock::coarse_now(),
        );
        obs.set_request_id(&id);
        let mut ctx = RequestCtx {
            conn,
            obs,
            json_errors: crate::error::accepts_json(req.headers()),
            id,
        };
        let http1 = req.version() < Version::HTTP_2;
        let connect = req.method() == Method::CONNECT;
        // Boxed: the serve future is several KB, and hyper would otherwise move it around by
        // value (memcpy showed up in profiles).
        let result = Box::pin(self.serve(req, &mut ctx)).await;
        let response = match result {
            Ok(mut response) => {
                if let http::header::Entry::Vacant(v) =
                    response.headers_mut().entry(request_id::HEADER)
                {
                    v.insert(ctx.id.clone());
                }
                response
            }
            Err(e) => {
                ctx.obs.set_refusal(&e);
                if matches!(e, ProxyError::Upstream(_)) {
                    tracing::warn!(
                        error = %crate::upstream::error_chain(&e),
                        request_id = ctx.id.to_str().unwrap_or(""),
                        "upstream request failed"
                    );
                } else {
                    tracing::debug!(error = %e, "request refused");
                }
                // On HTTP/1 the connection closes after these: a client that sends CONNECT or
                // a method no client library spells that way is probing, and after a body
                // timeout the rest of the body may still come; nothing more on that connection
                // is read as a request.
                let close = http1
                    && (connect
                        || matches!(
                            e,
                            ProxyError::Target(TargetError::BadMethod) | ProxyError::BodyTimeout
                        ));
                let mut response = e.respond(ctx.json_errors, &self.realm, Some(&ctx.id));
                if close {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        ctx.obs.wrap(response)
    }

    /// The steps, in order; any refusal ends the request as an error response.
    async fn serve(
        &self,
        req: Request<B>,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // Envoy's gRPC ext_authz: a Check call, decided as the request it describes.
        if grpc::is_check(&self.external, &req) {
            ctx.obs.set_own_route(Arc::from(OWN_ROUTE));
            return Ok(self.serve_check(req, ctx.conn).await);
        }
        let (mut head, body) = req.into_parts();
        // A decision request of the external authorization mode: found by its exact path (an
        // Envoy prefix, the original path after it), decided as the request it describes.
        if let Some((dialect, envoy_rest)) = external::dialect_of(&self.external, &head.uri) {
            ctx.obs.set_own_route(Arc::from(OWN_ROUTE));
            check_framing(&head, ctx.conn)?;
            drop(body);
            return Ok(self
                .decide(dialect, &head, envoy_rest, ctx.conn, ctx.json_errors)
                .await);
        }
        let target = self.check_target(&mut head, ctx.conn)?;
        if let Some(answer) = self.own_answer(&head, &target, ctx.conn).await {
            ctx.obs.set_own_route(Arc::from(OWN_ROUTE));
            return answer;
        }
        if let Some((b, own)) = (self.sessions.as_ref())
            .and_then(|b| Some((b, b.own_path(target.path())?)))
        {
            ctx.obs.set_own_route(Arc::from(OWN_ROUTE));
            return self.session_path(b, own, &head, body, &target, ctx.conn).await;
        }
        let route = self.route(&head, &target, ctx)?;
        // A route of external authorization decisions only is never proxied (and never
        // starts a sign-in here): as if it did not exist.
        let upstream = route
            .upstream
            .and_then(|u| self.upstreams.get(u))
            .ok_or(ProxyError::NoRoute)?;
        let upgrade = head.version == Version::HTTP_11 && wants_upgrade(&head.headers);
        // Hop-by-hop out, then the headers the proxy owns, before authentication sets any:
        // a client never gets to send them (on any route) nor to remove them via Connection.
        self.identity.sanitize(&mut head.headers, upgrade);
        let origin = self.origin(&head, &target, ctx.conn);
        let view = self.view(&target, &head.headers, ctx);
        let forwarding = match self.authn.run(&route, &head, &view, &origin).await? {
            Outcome::Forward(f) => f,
            Outcome::Respond(response) => return Ok(response),
        };
        let client_upgrade = if upgrade {
            head.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        self.rewrite_headers(&mut head, &route, &target, ctx.conn, &forwarding);
        // The upstream can log the id the client's error page would show (the client's own
        // copy is replaced unless it was kept as the id).
        head.headers.insert(request_id::HEADER, ctx.id.clone());
        let out = Outgoing {
            method: head.method,
            path_and_query: Some(target.path_and_query().clone()),
            headers: head.headers,
            host_from_upstream: matches!(route.rewrite_host, Some(RewriteHost::Upstream)),
        };
        let body = TimedBody::new(body, || self.body_timer(route.name.clone(), ctx.conn));
        let (resp, addr) = upstream
            .send(out, body, ctx.conn.worker)
            .await
            .map_err(upstream_error)?;
        ctx.obs.set_upstream(|| upstream.address(addr).cloned());
        // A tunnel opened with a session is registered under it (closed when it ends).
        let session = self.sessions.as_ref().zip(forwarding.session.as_deref());
        let mut response = response_from_upstream(resp, client_upgrade, ctx.conn, session);
        response.headers_mut().extend(forwarding.response_headers);
        Ok(response)
    }

    /// Portcullis's own paths that need no body: the assertion's JWKS, and external
    /// authorization's sign-in start. `None`: neither.
    async fn own_answer(
        &self,
        head: &request::Parts,
        target: &Target,
        conn: &ConnInfo,
    ) -> Option<Result<Response<ProxyBody>, ProxyError>> {
        if let Some(answer) = self.jwks(target.path(), &head.method) {
            return Some(answer);
        }
        if external::is_start(&self.external, &head.uri) {
            let origin = self.origin(head, target, conn);
            return Some(self.start_sign_in(head, &origin).await);
        }
        None
    }

    /// A browser-session own path (callback, sign-out, back-channel logout).
    async fn session_path(
        &self,
        b: &Browser,
        own: crate::authn::browser::OwnPath,
        head: &request::Parts,
        body: B,
        target: &Target,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The method first: a body is read only where one is used, so a request that
        // announces a body and never sends it cannot hold a connection here.
        if !own.allows(&head.method) {
            return Err(ProxyError::MethodNotAllowed {
                allow: http::HeaderValue::from_static(own.allow()),
            });
        }
        let bytes = if own.reads_body() {
            self.read_own_body(body, conn).await?
        } else {
            bytes::Bytes::new()
        };
        let origin = self.origin(head, target, conn);
        Ok(b.serve_own(own, head, bytes, &origin, self.authn.redirects())
            .await?)
    }

    /// The request body of an own path that uses one (a back-channel logout token): at most
    /// `OWN_BODY_LIMIT` bytes (413), each piece within `server.body_read_timeout` (408).
    async fn read_own_body(&self, body: B, conn: &ConnInfo) -> Result<bytes::Bytes, ProxyError> {
        let body = TimedBody::new(body, || self.body_timer(Arc::from(OWN_ROUTE), conn));
        match http_body_util::Limited::new(body, OWN_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if BodyTimeout::caused(&*e) => Err(ProxyError::BodyTimeout),
            Err(_) => Err(ProxyError::BadBody),
        }
    }

    /// The body-read timeout of a request on `route` from `conn`.
    fn body_timer(&self, route: Arc<str>, conn: &ConnInfo) -> BodyTimer {
        BodyTimer {
            timeout: self.body_read_timeout,
            counter: self.body_timeouts.clone(),
            route,
            peer: conn.peer,
        }
    }

    /// Step 1: framing checks, then Host and path in one canonical form (or 400) before
    /// routing: `routing::target`.
    fn check_target(
        &self,
        head: &mut request::Parts,
        conn: &ConnInfo,
    ) -> Result<Target, ProxyError> {
        // A tunnel is never opened, whatever the target's form (authority-form, origin-form
        // `CONNECT /x`, HTTP/2 CONNECT): refused first, before own paths and routing (and
        // before a conflict the framing guard saw in bytes pipelined after it).
        if head.method == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed {
                allow: HeaderValue::from_static(CONNECT_ALLOW),
            });
        }
        check_framing(head, conn)?;
        Ok(canonicalize(head, &self.path_normalization)?)
    }

    /// Scheme and authority of the request as the client addressed it (`X-Forwarded-Proto`
    /// only when forwarded headers are trusted).
    fn origin(&self, head: &request::Parts, target: &Target, conn: &ConnInfo) -> Origin {
        let forwarded = self
            .trust_forwarded
            .then(|| head.headers.get("x-forwarded-proto"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        let scheme = match forwarded {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ => conn.proto,
        };
        Origin::of(scheme, target)
    }

    /// What authorization reads of the request besides its head.
    fn view<'a>(
        &self,
        target: &'a Target,
        headers: &http::HeaderMap,
        ctx: &'a RequestCtx<'_>,
    ) -> RequestView<'a> {
        RequestView {
            target,
            client_ip: self.client_ip(headers, ctx.conn),
            request_id: &ctx.id,
        }
    }

    /// The client's address for `client.ip`: the connection's peer, or, when forwarded
    /// headers are trusted, the last `X-Forwarded-For` entry (the one the trusted proxy in
    /// front added; earlier ones are the client's own claims).
    fn client_ip(&self, headers: &http::HeaderMap, conn: &ConnInfo) -> std::net::IpAddr {
        let forwarded = self
            .trust_forwarded
            .then(|| headers.get_all("x-forwarded-for").iter().next_back())
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        forwarded.unwrap_or(conn.peer.ip())
    }

    /// Step 2: the route for the canonical host and path, and the method.
    fn route(
        &self,
        head: &request::Parts,
        target: &Target,
        ctx: &mut RequestCtx<'_>,
    ) -> Result<Arc<Route>, ProxyError> {
        let route = self
            .router
            .find(target.host(), target.path(), &head.method)
            .map_err(|miss| match miss {
                Miss::NoRoute => ProxyError::NoRoute,
                Miss::Method { allow } => ProxyError::MethodNotAllowed { allow },
            })?;
        ctx.obs.set_route(route.name.clone(), route.index);
        Ok(route.clone())
    }

    /// Step 5: what the upstream receives (hop-by-hop headers are already out: `sanitize`).
    /// Identity headers go on last.
    fn rewrite_headers(
        &self,
        head: &mut request::Parts,
        route: &Route,
        target: &Target,
        conn: &ConnInfo,
        forwarding: &Forwarding,
    ) {
        let headers = &mut head.headers;
        set_forwarded(
            headers,
            &conn.forwarded_for,
            conn.proto,
            target.authority(),
            self.trust_forwarded,
        );
        match &route.rewrite_host {
            Some(RewriteHost::Literal(v)) => {
                headers.insert(header::HOST, v.clone());
            }
            Some(RewriteHost::Upstream) => {}
            None => {
                if let Some(h) = target.authority() {
                    headers.insert(header::HOST, h.clone());
                }
            }
        }
        if let Some(b) = &self.sessions {
            b.strip_cookies(headers);
        }
        if forwarding.strip_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(a) = &forwarding.authorization {
            headers.insert(header::AUTHORIZATION, a.clone());
        }
        self.send_identity(headers, forwarding, self.audience(route, target));
        if forwarding.degraded
            && let Some(h) = self.sessions.as_ref().and_then(|b| b.degraded_header())
        {
            headers.insert(h.clone(), http::HeaderValue::from_static("1"));
        }
    }
}

/// Both Content-Length and Transfer-Encoding: never served. hyper drops one of the two
/// headers before the request gets here, so the connection's byte stream is checked too
/// (`listener::framing`).
fn check_framing(head: &request::Parts, conn: &ConnInfo) -> Result<(), ProxyError> {
    if conn.activity.ambiguous_framing()
        || (head.headers.contains_key(header::CONTENT_LENGTH)
            && head.headers.contains_key(header::TRANSFER_ENCODING))
    {
        return Err(ProxyError::AmbiguousFraming);
    }
    Ok(())
}

/// An upstream exchange's failure: the client's body too slow (408), or the upstream's.
fn upstream_error(e: crate::upstream::UpstreamError) -> ProxyError {
    if BodyTimeout::caused(&e) {
        ProxyError::BodyTimeout
    } else {
        ProxyError::Upstream(e)
    }
}

// === impl ConnInfo ===

impl ConnInfo {
    /// A connection from `peer` over `proto` (`http` / `https`), with fresh activity (the
    /// listener builds its own; this is for service tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        Self {
            peer,
            proto,
            activity: Arc::new(Activity::new()),
            upgrades: None,
            worker: 0,
            forwarded_for: crate::upstream::headers::client_value(peer.ip()),
        }
    }
}

/// Step 6's second half: hop-by-hop headers out of the upstream's response; on a 101 for an
/// upgrade the client asked for, the two upgraded connections are joined (a tunnel that keeps
/// the connection's slot: `listener::upgrade`; one opened with a session closes when the
/// session ends: `authn::browser::tunnels`).
fn response_from_upstream<B: ClientBody>(
    mut resp: Response<UpstreamBody<B>>,
    client_upgrade: Option<OnUpgrade>,
    conn: &ConnInfo,
    session: Option<(&Arc<Browser>, &crate::session::Session)>,
) -> Response<ProxyBody> {
    let tunnel = match (client_upgrade, &conn.upgrades) {
        (Some(client), Some(upgrades)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Some((client, UpstreamBody::upgrade(&mut resp), upgrades))
        }
        _ => None,
    };
    let (mut parts, body) = resp.into_parts();
    match tunnel {
        Some((client, upstream_side, upgrades)) => {
            // Keep Connection/Upgrade on the 101 so the client switches too.
            remove_hop_by_hop(&mut parts.headers, true);
            // Set before the 101 is written, so the framing guard stops reading the
            // client's bytes as HTTP before the first tunnel byte can come.
            conn.activity.set_upgraded();
            let ticket = session.map(|(b, s)| b.tunnel_ticket(s));
            upgrades.spawn(client, upstream_side, ticket);
        }
        None => remove_hop_by_hop(&mut parts.headers, false),
    }
    Response::from_parts(parts, body.boxed_unsync())
}
