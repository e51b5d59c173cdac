//! The admin listener: `/healthz` (the process is alive), `/readyz` (ready for traffic; false
//! before serving and while draining) and `/metrics` (Prometheus text format).
//!
//! `/readyz` is a start-up latch: it turns 200 once the listeners serve and every issuer has
//! had usable keys (fetched, or loaded from the state directory), and after that only
//! draining turns it 503. An issuer whose keys later go stale answers 503 on its own routes
//! and shows in `portcullis_issuer_keys_usable`, but does not take the replica out of the
//! load balancer: in an IdP outage every replica would go at once, `auth: none` routes too.
//!
//! It also serves the assertion's JWKS (`auth.assertion.jwks_path`, the keys the running
//! configuration publishes), for upstreams that reach the admin port rather than a proxy
//! listener. With `admin.token` set it also serves the session administration endpoints
//! (`sessions`): list and revoke, behind that bearer token; without it they are absent (404).
//!
//! Security notes: bind it to a private address; it exposes metrics and public keys, never
//! secrets. The session endpoints answer only to the token (it is reachable from the cluster
//! for scrapes).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::authn::Authenticator;
use crate::body::{self, ProxyBody};
use crate::metrics::Metrics;

mod sessions;

pub use sessions::SessionAdmin;

/// The `listener` label of the admin listener's connection metrics.
const ADMIN_LISTENER: &str = "admin";

/// Whether the process is ready for traffic: serving (not starting, not draining), and every
/// issuer had usable keys once since start (latched: staleness later does not undo it).
#[derive(Clone)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    /// Set once every issuer had usable keys; never cleared.
    keys_once: Arc<AtomicBool>,
    auth: Arc<Authenticator>,
}

// === impl Readiness ===

impl Readiness {
    /// Not serving yet.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self {
            serving: Arc::new(AtomicBool::new(false)),
            keys_once: Arc::new(AtomicBool::new(false)),
            auth,
        }
    }

    /// Sets whether the listeners are serving.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Reads readiness.
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Relaxed) && self.keys_latched()
    }

    fn keys_latched(&self) -> bool {
        if self.keys_once.load(Ordering::Relaxed) {
            return true;
        }
        let ready = self.auth.ready();
        if ready {
            self.keys_once.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Why not ready, one line per reason; when ready, the issuers whose routes answer 503
    /// for now (empty when there are none).
    pub fn reasons(&self) -> String {
        let mut out = String::new();
        if !self.serving.load(Ordering::Relaxed) {
            out.push_str("not serving (starting or draining)\n");
        }
        for i in self.auth.issuers() {
            if !i.usable() {
                let age = i
                    .age()
                    .map_or_else(|| "none".to_string(), |a| format!("{}s old", a.as_secs()));
                out.push_str(&format!(
                    "issuer {}: no usable keys ({age})\n",
                    i.config.name
                ));
            }
        }
        out
    }
}

/// What the admin listener serves from: metrics, readiness, the authenticator (key gauges),
/// the assertion's published keys and, with `admin.token`, session administration.
pub struct AdminParts {
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub auth: Arc<Authenticator>,
    pub keys: Arc<crate::assertion::Keys>,
    pub sessions: Option<SessionAdmin>,
}

/// Serves the admin endpoints until `drain` turns true, at most `max_connections` connections
/// at once (`admin.max_connections`: more are closed at once and counted, as on the proxy
/// listeners).
pub async fn serve(
    listener: TcpListener,
    max_connections: usize,
    parts: AdminParts,
    mut drain: watch::Receiver<bool>,
) {
    let AdminParts {
        metrics,
        readiness,
        auth,
        keys,
        sessions,
    } = parts;
    let slots = Arc::new(Semaphore::new(max_connections));
    metrics.init_listener(ADMIN_LISTENER, false);
    loop {
        // Backs off on accept errors (EMFILE) like the proxy listeners, instead of spinning.
        let (stream, _) = tokio::select! {
            a = crate::listener::accept_with_backoff(&listener, ADMIN_LISTENER) => a,
            _ = drain.changed() => break,
        };
        let Some(slot) = crate::listener::take_slot(&slots, &metrics, ADMIN_LISTENER) else {
            drop(stream);
            continue;
        };
        let (metrics, readiness, auth) = (metrics.clone(), readiness.clone(), auth.clone());
        let keys = keys.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            let svc = service_fn(move |req: Request<Incoming>| {
                let admin = sessions
                    .clone()
                    .filter(|_| SessionAdmin::handles(req.uri().path()));
                let resp = match keys.published().filter(|k| k.path() == req.uri().path()) {
                    Some(k) => Some(jwks(&k, req.method())),
                    None if admin.is_some() => None,
                    None => Some(respond(&req, &metrics, &readiness, &auth)),
                };
                async move {
                    Ok::<_, Infallible>(match (resp, admin) {
                        (Some(r), _) => r,
                        (None, Some(a)) => a.handle(&req).await,
                        (None, None) => not_found(),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The JWKS (GET, HEAD), else 405.
fn jwks(keys: &crate::assertion::KeySet, method: &http::Method) -> Response<ProxyBody> {
    use crate::assertion::jwks;
    if jwks::allows(method) {
        return jwks::response(keys, method);
    }
    let mut resp = Response::new(body::full("method not allowed\n"));
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(jwks::ALLOW));
    resp
}

fn not_found() -> Response<ProxyBody> {
    let mut resp = Response::new(body::full("not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
    auth: &Authenticator,
) -> Response<ProxyBody> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", body::full("ok\n")),
        "/readyz" if readiness.is_ready() => (
            StatusCode::OK,
            "text/plain",
            body::full(format!("ready\n{}", readiness.reasons())),
        ),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            body::full(format!("not ready\n{}", readiness.reasons())),
        ),
        "/metrics" => {
            auth.update_gauges();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                body::full(metrics.render()),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            body::full("not found\n"),
        ),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}
