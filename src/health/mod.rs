//! The admin listener: `/healthz` (the process is alive), `/readyz` (ready for traffic; false
//! before serving and while draining) and `/metrics` (Prometheus text format).
//!
//! Security notes: bind it to a private address; it exposes metrics, never secrets.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::upstream::{ProxyBody, body};

/// Whether the process is ready for traffic. Later issues add conditions (usable keys).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

// === impl Readiness ===

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Reads readiness.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves the admin endpoints until `drain` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = drain.changed() => break,
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = respond(&req, &metrics, &readiness);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<ProxyBody> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", body::full("ok\n")),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "text/plain", body::full("ready\n")),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            body::full("not ready\n"),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            body::full(metrics.render()),
        ),
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
