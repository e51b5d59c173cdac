//! The request handler: the steps of one proxied request, in order.
//!
//! 1. refuse ambiguous framing and dot-segment paths (400)
//! 2. route on host, path and method (404)
//! 3. rewrite headers (hop-by-hop out, `X-Forwarded-*` in, Host kept or rewritten)
//! 4. forward through the route's upstream (502 / 504), passing upgrades through
//! 5. observe: metrics and one access-log line when the response body ends
//!
//! Authentication (later issues) is a step between 2 and 3.

mod observe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::authn::Authenticator;
use crate::authn::identity::IdentityHeaders;
use crate::authz::Decision;
use crate::config::{AuthMode, Config, RewriteHost};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::routing::{Route, Router, has_dot_segments, host_without_port};
use crate::upstream::headers::{remove_hop_by_hop, set_forwarded, wants_upgrade};
use crate::upstream::{BuildError, Outgoing, ProxyBody, Upstream};

pub use observe::Observed;

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    router: Router,
    upstreams: Vec<Upstream>,
    metrics: Metrics,
    trust_forwarded: bool,
    access_log: bool,
    auth: Arc<Authenticator>,
    identity: IdentityHeaders,
    realm: String,
    /// Issuer names by authenticator slot, for metric labels.
    issuer_names: Vec<Arc<str>>,
}

/// What the handler knows about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Shared with the connection task, for the idle timeout.
    pub activity: Arc<Activity>,
    /// Where an upgraded tunnel gets its connection slot, idle timeout and close signal.
    pub upgrades: crate::listener::upgrade::Upgrades,
}

/// Per-connection activity: requests in flight and when the last one started or ended, and
/// whether the client sent a request with ambiguous framing.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    epoch: Instant,
    ambiguous_framing: AtomicBool,
}

/// A finished exchange: the response and where it came from.
struct Forwarded {
    response: Response<ProxyBody>,
    upstream: http::Uri,
}

// === impl Proxy ===

impl Proxy {
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
            .map(|u| Upstream::try_new(u.clone(), &metrics))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = config.routes.clone();
        for r in &mut routes {
            if let Some(i) = r.issuer {
                let name = config
                    .issuers
                    .get(i)
                    .map(|ic| ic.name.as_str())
                    .unwrap_or_default();
                r.issuer = Some(
                    auth.issuer_index(name)
                        .ok_or_else(|| BuildError::NewIssuer {
                            name: name.to_string(),
                        })?,
                );
            }
        }
        // Route issuers are the authenticator's slots, stable across reloads.
        let issuer_names = auth.slot_names();
        Ok(Self {
            router: Router::new(&routes),
            upstreams,
            metrics,
            trust_forwarded: config.server.trust_forwarded_headers,
            access_log: config.log.access,
            identity: IdentityHeaders::new(
                &config.auth.strip_headers,
                config.auth.identity_headers.clone(),
            ),
            realm: config.auth.realm.clone(),
            issuer_names,
            auth,
        })
    }

    /// Handles one request; never fails (errors become responses).
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut obs = Observed::start(&self.metrics, conn, &req, self.access_log, start);
        let json_errors = crate::error::accepts_json(req.headers());
        let mut route_found: Option<Arc<Route>> = None;
        // Boxed: the forward future is several KB, and hyper would otherwise move it around
        // by value (memcpy showed up in profiles).
        let result = Box::pin(self.forward(req, conn, &mut route_found)).await;
        if let Some(r) = &route_found {
            obs.set_route(r.name.clone());
        }
        match result {
            Ok(f) => {
                obs.set_upstream(f.upstream);
                obs.wrap(f.response)
            }
            Err(e) => {
                if matches!(e, ProxyError::Upstream(_)) {
                    tracing::warn!(error = %crate::upstream::error_chain(&e), "upstream request failed");
                } else {
                    tracing::debug!(error = %e, "request refused");
                }
                obs.wrap(e.into_response(json_errors, &self.realm))
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        route_out: &mut Option<Arc<Route>>,
    ) -> Result<Forwarded, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // hyper drops one of the two headers before the request gets here, so the connection's
        // byte stream is checked too (`listener::framing`).
        if conn.activity.ambiguous_framing()
            || (parts.headers.contains_key(header::CONTENT_LENGTH)
                && parts.headers.contains_key(header::TRANSFER_ENCODING))
        {
            return Err(ProxyError::AmbiguousFraming);
        }
        // HTTP/2 carries the host in the URI (:authority); HTTP/1.1 in Host.
        let host_value: Option<HeaderValue> = match parts.headers.get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(host_without_port)
            .unwrap_or("");
        let path = parts.uri.path();
        if has_dot_segments(path) {
            return Err(ProxyError::DotSegments);
        }
        let route = self
            .router
            .find(host, path, &parts.method)
            .ok_or(ProxyError::NoRoute)?
            .clone();
        *route_out = Some(route.clone());
        let upstream = self
            .upstreams
            .get(route.upstream)
            .ok_or(ProxyError::NoRoute)?;

        let upgrade = parts.version == Version::HTTP_11 && wants_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        // Identity headers are the proxy's: a client never gets to send them, on any route.
        self.identity.strip(&mut parts.headers);
        if route.auth == AuthMode::Bearer {
            self.authenticate(&route, &mut parts.headers).await?;
        }
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers, upgrade);
        set_forwarded(
            headers,
            conn.peer.ip(),
            conn.proto,
            host_value.as_ref(),
            self.trust_forwarded,
        );
        match &route.rewrite_host {
            Some(RewriteHost::Literal(v)) => {
                headers.insert(header::HOST, v.clone());
            }
            Some(RewriteHost::Upstream) => {}
            None => {
                if let Some(h) = host_value {
                    headers.insert(header::HOST, h);
                }
            }
        }
        let out = Outgoing {
            method: parts.method,
            path_and_query: parts.uri.path_and_query().cloned(),
            headers: parts.headers,
            host_from_upstream: matches!(route.rewrite_host, Some(RewriteHost::Upstream)),
        };
        let (mut resp, addr) = upstream.send(out, body).await?;
        let tunnel = match client_upgrade {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                Some((client, hyper::upgrade::on(&mut resp)))
            }
            _ => None,
        };
        let (mut rparts, rbody) = resp.into_parts();
        match tunnel {
            Some((client, upstream_side)) => {
                // Keep Connection/Upgrade on the 101 so the client switches too.
                remove_hop_by_hop(&mut rparts.headers, true);
                conn.upgrades.spawn(client, upstream_side);
            }
            None => remove_hop_by_hop(&mut rparts.headers, false),
        }
        let response = Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync());
        Ok(Forwarded {
            response,
            upstream: addr,
        })
    }
}

// === impl Proxy (authentication) ===

impl Proxy {
    /// Authenticates and authorizes; on success sets the identity headers.
    async fn authenticate(
        &self,
        route: &Route,
        headers: &mut http::HeaderMap,
    ) -> Result<(), ProxyError> {
        let result = |issuer: &str, result: &str| {
            self.metrics
                .auth_results
                .with_label_values(&[&*route.name, issuer, result])
                .inc();
        };
        let identity = match self.auth.authenticate(headers, route.issuer).await {
            Ok(id) => id,
            Err(e) => {
                // A refused token's issuer is unverified: label it with the route's issuer.
                let issuer = route
                    .issuer
                    .and_then(|i| self.issuer_names.get(i))
                    .map_or("any", |n| &**n);
                result(issuer, e.reason());
                return Err(e.into());
            }
        };
        if let Decision::Deny { scope } = route.policy.evaluate(&identity) {
            result(&identity.issuer, "forbidden");
            return Err(ProxyError::Forbidden { scope });
        }
        result(&identity.issuer, "ok");
        self.identity.apply(headers, &identity);
        if !route.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        Ok(())
    }
}

// === impl Activity ===

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// No request yet; the idle clock starts now.
    pub fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            ambiguous_framing: AtomicBool::new(false),
        }
    }

    /// The client sent a request head with both Content-Length and Transfer-Encoding (hyper
    /// hides one of them, so the connection's byte stream is checked; see
    /// `listener::framing`). Requests on this connection are refused from now on; hyper closes
    /// it after that request's response.
    pub fn set_ambiguous_framing(&self) {
        self.ambiguous_framing.store(true, Ordering::Relaxed);
    }

    /// Whether [`Activity::set_ambiguous_framing`] was called.
    pub fn ambiguous_framing(&self) -> bool {
        self.ambiguous_framing.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started on this connection.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// A request's response finished.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection becomes idle-expired, if no request is in flight.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch + last + idle)
    }
}
